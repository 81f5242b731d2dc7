//! Import of ShareGPT-style conversation dumps (the format vLLM's and other serving
//! benchmarks sample prompts from) into the JSONL request file `--workload file` replays.
//!
//! Input: a JSON array of conversations, each `{"conversations": [{"from": "human",
//! "value": "..."}, {"from": "gpt", "value": "..."}, ...]}` (`conversation` and `messages`
//! are accepted for the list, `role`/`content` for the turn's fields; `human`/`user`,
//! `gpt`/`assistant`/`chatgpt`/`bard` and `system` for the speaker). Each conversation whose
//! first user turn has an answer becomes one request: the system turn (if any) and the first
//! user turn as messages, and `max_tokens` set to the recorded answer's length, so the
//! target is asked for as much output as the real conversation had. With the target model's
//! tokenizer (`--tokenizer`) that length is exact; without one it is estimated as one token
//! per 4 characters (at least 1), the usual rule of thumb for English. Either way the count
//! the target reports is what the run measures.

use serde_json::{json, Value};
use sluice_api::chat::json_type_name;

use crate::tokenizer::TokenCounter;

/// Characters per token of the length estimate.
const CHARS_PER_TOKEN: usize = 4;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Take at most this many requests (in file order).
    pub limit: Option<usize>,
    /// Skip conversations whose answer is longer than this.
    pub max_output_tokens: u32,
    /// Count answers with the target model's tokenizer instead of estimating.
    pub tokenizer: Option<TokenCounter>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            limit: None,
            max_output_tokens: 4096,
            tokenizer: None,
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// One chat request body per line.
    pub jsonl: String,
    pub requests: usize,
    /// Conversations left out, by reason.
    pub skipped_no_answer: usize,
    pub skipped_too_long: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("expected a JSON array of conversations at the top level, found {0}")]
    NotAnArray(&'static str),
    #[error("no conversation had a user turn followed by an answer")]
    Nothing,
}

/// Converts a ShareGPT dump (`text`) into request lines for `model`.
pub fn import(text: &str, model: &str, options: ImportOptions) -> Result<Imported, ImportError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ImportError::Json(e.to_string()))?;
    let Value::Array(conversations) = root else {
        return Err(ImportError::NotAnArray(json_type_name(&root)));
    };
    let mut out = Imported {
        jsonl: String::new(),
        requests: 0,
        skipped_no_answer: 0,
        skipped_too_long: 0,
    };
    for conversation in &conversations {
        if options.limit.is_some_and(|l| out.requests >= l) {
            break;
        }
        let Some((messages, answer)) = first_exchange(conversation) else {
            out.skipped_no_answer += 1;
            continue;
        };
        let output_tokens = match options.tokenizer.as_ref().and_then(|t| t.count(answer)) {
            Some(n) => n.max(1),
            None => estimate_tokens(answer),
        };
        if output_tokens > options.max_output_tokens {
            out.skipped_too_long += 1;
            continue;
        }
        let body = json!({
            "model": model,
            "messages": messages,
            "max_tokens": output_tokens,
        });
        out.jsonl.push_str(&body.to_string());
        out.jsonl.push('\n');
        out.requests += 1;
    }
    if out.requests == 0 {
        return Err(ImportError::Nothing);
    }
    Ok(out)
}

/// The messages up to the first user turn, and the answer that follows it.
fn first_exchange(conversation: &Value) -> Option<(Vec<Value>, &str)> {
    let turns = ["conversations", "conversation", "messages"]
        .iter()
        .find_map(|k| conversation.get(k)?.as_array())?;
    let mut messages = Vec::new();
    let mut iter = turns.iter().filter_map(turn);
    for (role, text) in iter.by_ref() {
        match role {
            Role::System => messages.push(json!({"role": "system", "content": text})),
            Role::User if !text.trim().is_empty() => {
                messages.push(json!({"role": "user", "content": text}));
                break;
            }
            // An answer before any question, or an empty question: not a usable start.
            _ => return None,
        }
    }
    match iter.next() {
        Some((Role::Assistant, answer)) if !answer.trim().is_empty() => Some((messages, answer)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

fn turn(value: &Value) -> Option<(Role, &str)> {
    let speaker = value
        .get("from")
        .or_else(|| value.get("role"))?
        .as_str()?
        .to_ascii_lowercase();
    let text = value
        .get("value")
        .or_else(|| value.get("content"))?
        .as_str()?;
    let role = match speaker.as_str() {
        "human" | "user" => Role::User,
        "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => Role::Assistant,
        "system" => Role::System,
        _ => return None,
    };
    Some((role, text))
}

/// One token per [`CHARS_PER_TOKEN`] characters, at least one.
fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(CHARS_PER_TOKEN).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"[
      {"id": "a", "conversations": [
        {"from": "human", "value": "Name three rivers."},
        {"from": "gpt", "value": "The Nile, the Amazon and the Yangtze."},
        {"from": "human", "value": "And lakes?"},
        {"from": "gpt", "value": "Baikal."}]},
      {"id": "b", "conversations": [{"from": "gpt", "value": "answer first"}]},
      {"id": "c", "conversations": [{"from": "human", "value": "no answer"}]},
      {"id": "d", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]},
      {"id": "e", "conversations": [
        {"from": "human", "value": "write a lot"},
        {"from": "gpt", "value": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}
    ]"#;

    #[test]
    fn conversations_become_first_exchange_requests_sized_by_their_answers() {
        let out = import(
            DUMP,
            "m",
            ImportOptions {
                limit: None,
                max_output_tokens: 10,
                tokenizer: None,
            },
        )
        .unwrap();
        assert_eq!(out.requests, 2);
        assert_eq!(out.skipped_no_answer, 2);
        assert_eq!(out.skipped_too_long, 1);
        let lines: Vec<Value> = out
            .jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"model": "m", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "Name three rivers."}]})
        );
        assert_eq!(lines[1]["messages"][0]["role"], "system");
        assert_eq!(lines[1]["messages"][1]["content"], "hi");
        assert_eq!(lines[1]["max_tokens"], 2);
        // Every line is a request the dataset loader accepts.
        for l in &lines {
            assert!(serde_json::from_value::<sluice_api::ChatCompletionRequest>(l.clone()).is_ok());
        }
    }

    #[test]
    fn limits_and_bad_input() {
        let one = import(
            DUMP,
            "m",
            ImportOptions {
                limit: Some(1),
                ..ImportOptions::default()
            },
        )
        .unwrap();
        assert_eq!(one.requests, 1);
        assert_eq!(
            import("{}", "m", ImportOptions::default()),
            Err(ImportError::NotAnArray("an object"))
        );
        assert_eq!(
            import("[]", "m", ImportOptions::default()),
            Err(ImportError::Nothing)
        );
        assert!(matches!(
            import("[", "m", ImportOptions::default()),
            Err(ImportError::Json(_))
        ));
    }
}
