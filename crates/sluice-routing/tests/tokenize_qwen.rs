//! The gateway's prompt tokens for Qwen2.5 equal what vLLM computes: the chat template's
//! text and the token ids match those `transformers` produced for the same conversations
//! (`tests/python/tokenizer_reference.py --write`; `test_tokenizer_reference.py` checks the
//! same against the Python packages on every CI run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;
use sluice_api::ChatCompletionRequest;
use sluice_routing::PromptTokenizer;

#[path = "support/qwen.rs"]
mod qwen;
use qwen::{fixtures, qwen_dir};

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn qwen_prompts_match_transformers_text_and_ids() {
    let dir = qwen_dir();
    let tokenizer = PromptTokenizer::load(dir.path().to_str().unwrap()).unwrap();
    let conversations = read_json(fixtures().join("conversations.json"));
    let expected = read_json(fixtures().join("qwen2.5/expected.json"));
    let conversations = conversations.as_array().unwrap();
    assert_eq!(conversations.len(), expected.as_array().unwrap().len());
    assert!(conversations.len() >= 5);
    for (c, want) in conversations.iter().zip(expected.as_array().unwrap()) {
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
    let tokenizer = PromptTokenizer::load(dir.path().to_str().unwrap()).unwrap();
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
