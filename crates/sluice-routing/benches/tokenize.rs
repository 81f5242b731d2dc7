//! What prefix-aware routing spends turning a chat request into prompt tokens: Qwen2.5's
//! chat template and tokenizer (the vendored files) on a short and a long conversation —
//! whole (no cache), its pieces all cached (the same request again), and a next turn (the
//! earlier turns cached, the last exchange new) — the mock engine's tokenizer beside them,
//! and the template alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_api::ChatCompletionRequest;
use sluice_routing::PromptTokenizer;

/// The allocator `sluice` runs with: tokenizing allocates per word, and glibc's malloc made
/// it a third slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/support/qwen.rs"]
mod support;

fn qwen(cache_bytes: u64) -> (tempfile::TempDir, PromptTokenizer) {
    let dir = support::qwen_dir();
    let t = PromptTokenizer::load(dir.path().to_str().unwrap(), cache_bytes).unwrap();
    (dir, t)
}

/// A conversation of `turns` turns under a system prompt of about `system_words` words.
fn conversation(system_words: usize, turns: usize) -> ChatCompletionRequest {
    salted(system_words, turns, None)
}

/// The same, its last exchange starting with `salt` (a turn no cache has seen).
fn salted(system_words: usize, turns: usize, salt: Option<u64>) -> ChatCompletionRequest {
    let words = [
        "route", "the", "request", "to", "engine", "holding", "its", "prefix,", "café", "日本",
    ];
    let text = |n: usize, salt: usize| {
        (0..n)
            .map(|i| words[(i * 7 + salt) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": text(system_words, 0)})];
    for t in 0..turns {
        let salt = salt
            .filter(|_| t + 1 == turns)
            .map_or(String::new(), |s| format!("{s} "));
        messages.push(serde_json::json!({"role": "user", "content": salt.clone() + &text(40, t)}));
        messages.push(serde_json::json!({"role": "assistant", "content": salt + &text(60, t + 1)}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "and now?"}));
    let body = serde_json::json!({"model": "m", "messages": messages});
    ChatCompletionRequest::from_slice(body.to_string().as_bytes()).unwrap()
}

fn bench(c: &mut Criterion) {
    let (_dir_whole, whole) = qwen(0);
    let (_dir, qwen) = qwen(sluice_routing::DEFAULT_TOKENIZER_CACHE_BYTES);
    let mut g = c.benchmark_group("prompt_tokens");
    for (name, request) in [
        ("short", conversation(20, 1)),
        ("long", conversation(1500, 8)),
    ] {
        let tokens = qwen.prompt_tokens(&request).unwrap().len() as u64;
        eprintln!("{name}: {tokens} Qwen tokens");
        g.throughput(Throughput::Elements(tokens));
        g.bench_function(format!("qwen2.5_whole/{name}"), |b| {
            b.iter(|| whole.prompt_tokens(&request).unwrap())
        });
        g.bench_function(format!("qwen2.5/{name}"), |b| {
            b.iter(|| qwen.prompt_tokens(&request).unwrap())
        });
        g.bench_function(format!("qwen2.5_template_only/{name}"), |b| {
            b.iter(|| qwen.render(&request).unwrap().unwrap())
        });
        g.bench_function(format!("mock/{name}"), |b| {
            b.iter(|| PromptTokenizer::Mock.prompt_tokens(&request).unwrap())
        });
    }
    // A conversation's next turn: its earlier turns were tokenized when they were sent.
    let mut salt = 0;
    qwen.prompt_tokens(&conversation(1500, 8)).unwrap();
    g.bench_function("qwen2.5_next_turn/long", |b| {
        b.iter_batched(
            || {
                salt += 1;
                salted(1500, 8, Some(salt))
            },
            |request| qwen.prompt_tokens(&request).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
