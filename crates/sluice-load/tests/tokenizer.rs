//! `--tokenizer`: prompts sized in the target model's tokens and answers without `usage`
//! counted with it, checked against the Hugging Face implementation itself (a small
//! byte-level BPE trained by the testkit, in which most words are several tokens, so a word
//! count or a chunk count cannot pass for a token count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::capture::{capture_server, capture_server_streaming};
use common::config;
use sluice_load::record::TokenSource;
use sluice_load::{LengthDist, WorkloadSpec};
use sluice_testkit::tokenizer::{count, write_small_bpe_tokenizer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_sized_in_the_tokenizers_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = write_small_bpe_tokenizer(&path).unwrap();
    let (addr, log) = capture_server().await;
    let mut c = config(format!("http://{addr}/v1"), 8);
    c.stream = false;
    c.workload = WorkloadSpec::SharedPrefix {
        system_prompts: 2,
        users_per_prompt: 3,
        system_prompt_tokens: 60,
        input_tokens: LengthDist::Fixed(40),
        output_tokens: LengthDist::Fixed(8),
    };
    c.tokenizer = Some(path);
    c.bound.requests = Some(8);
    let result = sluice_load::run(c).await.unwrap();

    let log = log.lock().unwrap();
    assert_eq!(log.len(), 8);
    let mut words_differ = 0;
    let mut expected_total = 0;
    for r in log.iter() {
        let system = r.body["messages"][0]["content"].as_str().unwrap();
        let question = r.body["messages"][1]["content"].as_str().unwrap();
        assert_eq!(count(&tokenizer, system), 60, "{system:?}");
        // The question is "user N asks " and then a prompt of exactly 40 tokens.
        let own = question.splitn(4, ' ').nth(3).unwrap();
        assert_eq!(count(&tokenizer, own), 40, "{own:?}");
        if own.split(' ').count() != 40 {
            words_differ += 1;
        }
        expected_total += count(&tokenizer, system) + count(&tokenizer, question);
    }
    assert!(
        words_differ > 0,
        "the test tokenizer should split words into several tokens"
    );
    let records = &result.records[0].1;
    let reported: u64 = records
        .iter()
        .map(|r| u64::from(r.approx_input_tokens.unwrap()))
        .sum();
    assert_eq!(reported, expected_total as u64);
    let s = &result.report.runs[0].summary;
    assert_eq!(s.tokens.input_unit, "tokens");
    assert_eq!(
        s.tokens.approx_input_mean,
        Some(expected_total as f64 / 8.0)
    );
}

const CHUNKS: &[&str] = &["The quick", " brown fox jumps", " over the lazy dog."];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_usage_are_counted_with_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = write_small_bpe_tokenizer(&path).unwrap();
    let want = count(&tokenizer, &CHUNKS.concat()) as u64;
    assert_ne!(want, CHUNKS.len() as u64);
    let (addr, _log) = capture_server_streaming(CHUNKS).await;

    let mut with = config(format!("http://{addr}/v1"), 8);
    with.tokenizer = Some(path);
    with.bound.requests = Some(5);
    let result = sluice_load::run(with).await.unwrap();
    for r in &result.records[0].1 {
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.token_source, TokenSource::Tokenizer);
        assert_eq!(r.output_tokens, Some(want));
        assert_eq!(r.token_chunks, 3);
    }
    let s = &result.report.runs[0].summary;
    assert_eq!(s.tokens.output_from_tokenizer, 5);
    assert_eq!(s.tokens.output_total, 5 * want);
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("5 from the answer text through --tokenizer")),
        "{:?}",
        s.notes
    );

    // Without the tokenizer, the same answers count one token per chunk.
    let mut without = config(format!("http://{addr}/v1"), 8);
    without.bound.requests = Some(5);
    let result = sluice_load::run(without).await.unwrap();
    for r in &result.records[0].1 {
        assert_eq!(r.token_source, TokenSource::Chunks);
        assert_eq!(r.output_tokens, Some(3));
    }
    assert_eq!(result.report.runs[0].summary.tokens.input_unit, "words");
}

#[tokio::test]
async fn a_file_that_is_not_a_tokenizer_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at this address: the tokenizer is checked before the target is.
    let url = "http://127.0.0.1:9/v1".to_owned();

    let junk = dir.path().join("tokenizer.json");
    std::fs::write(&junk, r#"{"version": "1.0", "model": 3}"#).unwrap();
    let mut c = config(url.clone(), 8);
    c.tokenizer = Some(junk.clone());
    let e = sluice_load::run(c).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "--tokenizer {}: not a Hugging Face tokenizer.json",
            junk.display()
        )),
        "{e}"
    );

    let missing = dir.path().join("absent.json");
    let mut c = config(url, 8);
    c.tokenizer = Some(missing.clone());
    let e = sluice_load::run(c).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "--tokenizer {}: cannot read it",
            missing.display()
        )),
        "{e}"
    );
}
