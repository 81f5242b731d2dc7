//! The gateway's prompt tokens for Qwen2.5 equal what vLLM computes: the chat template's
//! text and the token ids match those `transformers` produced for the same conversations
//! (`tests/python/tokenizer_reference.py --write`; `test_tokenizer_reference.py` checks the
//! same against the Python packages on every CI run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value;
use sluice_api::ChatCompletionRequest;
use sluice_routing::{HfChatTokenizer, PromptTokenizer};

#[path = "support/qwen.rs"]
mod qwen;
use qwen::{fixtures, qwen_dir};

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn qwen_prompts_match_transformers_text_and_ids() {
    let dir = qwen_dir();
    let tokenizer = PromptTokenizer::load(
        dir.path().to_str().unwrap(),
        sluice_routing::DEFAULT_TOKENIZER_CACHE_BYTES,
    )
    .unwrap();
    let conversations = read_json(fixtures().join("conversations.json"));
    let expected = read_json(fixtures().join("qwen2.5/expected.json"));
    let conversations = conversations.as_array().unwrap();
    assert_eq!(conversations.len(), expected.as_array().unwrap().len());
    assert!(conversations.len() >= 5);
    // Twice: the first pass tokenizes each piece between special tokens alone (the cache
    // is empty), the second takes them all from the cache; both must give the whole's ids.
    let pairs = conversations.iter().zip(expected.as_array().unwrap());
    for (c, want) in pairs.clone().chain(pairs) {
        let name = c["name"].as_str().unwrap();
        assert_eq!(want["name"], c["name"]);
        let request =
            ChatCompletionRequest::from_slice(c["request"].to_string().as_bytes()).unwrap();
        let text = tokenizer.render(&request).unwrap().unwrap();
        assert_eq!(
            text,
            want["text"].as_str().unwrap(),
            "{name}: rendered text"
        );
        let ids = tokenizer.prompt_tokens(&request).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "{name}: token ids");
    }
}

#[test]
fn a_conversation_s_next_turn_extends_its_prompt_tokens() {
    // What prefix routing relies on: turn n+1's prompt starts with turn n's whole prompt
    // up to the generation prompt (and so with its blocks).
    let dir = qwen_dir();
    let tokenizer = PromptTokenizer::load(
        dir.path().to_str().unwrap(),
        sluice_routing::DEFAULT_TOKENIZER_CACHE_BYTES,
    )
    .unwrap();
    let turn = |messages: Value| {
        let body = serde_json::json!({"model": "qwen", "messages": messages});
        let request = ChatCompletionRequest::from_slice(body.to_string().as_bytes()).unwrap();
        tokenizer.prompt_tokens(&request).unwrap()
    };
    let first = turn(serde_json::json!([{"role": "user", "content": "Name three rivers."}]));
    let second = turn(serde_json::json!([
        {"role": "user", "content": "Name three rivers."},
        {"role": "assistant", "content": "Nile, Amazon, Danube."},
        {"role": "user", "content": "Which is longest?"}
    ]));
    assert!(second.len() > first.len());
    // The first prompt ends with the generation prompt `<|im_start|>assistant\n` (3 ids);
    // the second goes on from there with the answer.
    assert_eq!(second[..first.len()], first[..]);
}

/// What a chat template writes and clients send, in pieces that meet at every boundary:
/// Qwen's added tokens, strings that start like them, whitespace runs (the pre-tokenizer's
/// pattern treats them by what follows), combining accents (NFC joins them to what precedes)
/// and a few scripts.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
            "<|fim_prefix|>", "<|im_", "<|im_start|", "|>", "<", "user\n", "assistant\n",
            "system", "\n", "\n\n", " ", "  ", "\t", "\r\n", "e", "\u{301}", "café",
            "日本語", "123", "'s", "'LL", " world", "Hello", "👍🏽", "\u{a0}", "{\"a\": 1}",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The oracle: a prompt cut into pieces, its pieces tokenized alone or taken from the
    /// cache, gives the ids of the whole text through the tokenizer.
    #[test]
    fn pieces_tokenized_apart_or_cached_give_the_whole_s_ids(
        texts in prop::collection::vec(prop::collection::vec(fragment(), 0..24), 1..4)
    ) {
        let (whole, pieces) = qwen_pair();
        for fragments in texts {
            let text = fragments.concat();
            let want = whole.encode(&text).unwrap();
            prop_assert_eq!(&pieces.encode(&text).unwrap(), &want, "{:?}", text);
            // Again: now from the cache.
            prop_assert_eq!(&pieces.encode(&text).unwrap(), &want, "{:?} (cached)", text);
        }
    }
}

/// Qwen's tokenizer twice: without the cache, and with one small enough to turn over
/// during the test (64 KiB).
fn qwen_pair() -> &'static (HfChatTokenizer, HfChatTokenizer) {
    static PAIR: std::sync::OnceLock<(HfChatTokenizer, HfChatTokenizer)> =
        std::sync::OnceLock::new();
    PAIR.get_or_init(|| {
        let dir = qwen_dir();
        (
            HfChatTokenizer::load(dir.path(), 0).unwrap(),
            HfChatTokenizer::load(dir.path(), 64 << 10).unwrap(),
        )
    })
}

#[test]
fn the_cache_serves_a_conversation_s_earlier_turns() {
    // Its own, so that the counts are this test's alone.
    let dir = qwen_dir();
    let tokenizer = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
    let request = |messages: Value| {
        let body = serde_json::json!({"model": "qwen", "messages": messages});
        ChatCompletionRequest::from_slice(body.to_string().as_bytes()).unwrap()
    };
    let first = request(serde_json::json!([
        {"role": "system", "content": "You route requests."},
        {"role": "user", "content": "Name three rivers of Europe, from the longest."}
    ]));
    let before = tokenizer.cache_stats().unwrap();
    tokenizer.prompt_tokens(&first).unwrap();
    let after_first = tokenizer.cache_stats().unwrap();
    let second = request(serde_json::json!([
        {"role": "system", "content": "You route requests."},
        {"role": "user", "content": "Name three rivers of Europe, from the longest."},
        {"role": "assistant", "content": "Volga, Danube, Ural."},
        {"role": "user", "content": "Which one crosses the most countries?"}
    ]));
    tokenizer.prompt_tokens(&second).unwrap();
    let after_second = tokenizer.cache_stats().unwrap();
    // Qwen's template: `<|im_start|>ROLE\nCONTENT<|im_end|>\n` a message, then
    // `<|im_start|>assistant\n`. The first turn's pieces: two messages, two "\n" (the second
    // found kept), the generation prompt.
    assert_eq!(after_first.misses - before.misses, 4);
    assert_eq!(after_first.hits - before.hits, 1);
    // The second turn tokenizes only its two new messages.
    assert_eq!(after_second.misses - after_first.misses, 2);
    assert!(after_second.bytes > after_first.bytes);
}

#[test]
fn threads_sharing_the_cache_get_the_whole_s_ids() {
    // The gateway's workers and its blocking pool share one tokenizer: conversations that
    // overlap (the same system prompt, the same early turns), tokenized from four threads
    // in different orders through a cache small enough to turn over meanwhile.
    let (whole, pieces) = qwen_pair();
    let conversations: Vec<ChatCompletionRequest> = (0..24)
        .map(|i| {
            let mut messages = vec![serde_json::json!({"role": "system",
                "content": format!("You are assistant {}. Answer briefly.", i % 3)})];
            for t in 0..=(i % 6) {
                messages.push(serde_json::json!({"role": "user",
                    "content": format!("Question {t} about café prices in 日本, {}?", t * 7)}));
                messages.push(serde_json::json!({"role": "assistant",
                    "content": format!("Answer {t}:\n\n  {} yen.", t * 130)}));
            }
            let body = serde_json::json!({"model": "qwen", "messages": messages});
            ChatCompletionRequest::from_slice(body.to_string().as_bytes()).unwrap()
        })
        .collect();
    let want: Vec<Vec<u32>> = conversations
        .iter()
        .map(|c| whole.prompt_tokens(c).unwrap())
        .collect();
    std::thread::scope(|s| {
        for thread in 0..4 {
            let (conversations, want) = (&conversations, &want);
            s.spawn(move || {
                for round in 0..5 {
                    for k in 0..conversations.len() {
                        let i = (k * (thread * 2 + 1) + round) % conversations.len();
                        let ids = pieces.prompt_tokens(&conversations[i]).unwrap();
                        assert_eq!(ids, want[i], "thread {thread}, conversation {i}");
                    }
                }
            });
        }
    });
}
