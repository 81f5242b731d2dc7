//! `sluice load import` turns a ShareGPT dump into a request file that `sluice load
//! --workload file` replays against a server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use sluice_mock::{MockOptions, MockServer};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// `sluice load import DUMP --out REQUESTS [EXTRA...]`.
fn import(
    dump: &std::path::Path,
    requests: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    Command::new(BIN)
        .args(["load", "import"])
        .arg(dump)
        .arg("--out")
        .arg(requests)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_sharegpt_dump_is_imported_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("sharegpt.json");
    std::fs::write(
        &dump,
        r#"[
          {"id": "1", "conversations": [{"from": "human", "value": "Name a river."}, {"from": "gpt", "value": "The Danube flows through ten countries."}]},
          {"id": "2", "conversations": [{"from": "human", "value": "Only a question"}]},
          {"id": "3", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Name a lake."}, {"from": "gpt", "value": "Baikal."}]}
        ]"#,
    )
    .unwrap();
    let requests = dir.path().join("requests.jsonl");
    let out = import(&dump, &requests, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("wrote 2 requests") && said.contains("skipped 1"),
        "{said}"
    );

    let mock = MockServer::start(
        MockOptions::zero_timing(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let report = dir.path().join("run.json");
    let url = mock.base_url();
    let (requests_c, report_c) = (requests.clone(), report.clone());
    let ran = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["load", "--url", &url, "--model", "m", "--requests", "4"])
            .arg("--dataset")
            .arg(&requests_c)
            .arg("--json")
            .arg(&report_c)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let s = &report["runs"][0]["summary"];
    assert_eq!(s["requests"]["succeeded"], 4);
    // max_tokens came from the recorded answers: 39 and 7 characters, 10 and 2 tokens.
    assert_eq!(s["tokens"]["requested_output_mean"], 6.0);
    mock.shutdown().await;
}

#[test]
fn with_a_tokenizer_answers_are_counted_not_estimated() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_path = dir.path().join("tokenizer.json");
    let tokenizer = sluice_testkit::tokenizer::write_small_bpe_tokenizer(&tokenizer_path).unwrap();
    let answer = "The Danube flows through ten countries.";
    let dump = dir.path().join("sharegpt.json");
    std::fs::write(
        &dump,
        serde_json::json!([{"conversations": [
            {"from": "human", "value": "Name a river."},
            {"from": "gpt", "value": answer}]}])
        .to_string(),
    )
    .unwrap();
    let requests = dir.path().join("requests.jsonl");
    let out = import(
        &dump,
        &requests,
        &["--tokenizer".as_ref(), tokenizer_path.as_os_str()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("counted with --tokenizer"));
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&requests).unwrap().trim()).unwrap();
    let counted = sluice_testkit::tokenizer::count(&tokenizer, answer);
    // The estimate would have been 39 characters / 4 = 10.
    assert_ne!(counted, 10);
    assert_eq!(line["max_tokens"], counted);

    // A file that is not a tokenizer is refused with the flag and the file named.
    let out = import(
        &dump,
        &requests,
        &["--tokenizer".as_ref(), dump.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "--tokenizer {}: not a Hugging Face tokenizer.json",
            dump.display()
        )),
        "{said}"
    );
}
