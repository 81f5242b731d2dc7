//! Serving a stored answer in the shape the request asks for: a stored stream to a
//! non-streaming request ([`completion_from_events`]), a stored completion to a streaming one
//! ([`events_from_completion`]), and fresh `id`/`created` on whatever is replayed
//! ([`Refresh`]), since OpenAI clients take a chunk id as naming one generation.
//!
//! Both conversions work on JSON values and keep fields they do not know (`logprobs`,
//! `reasoning_content`, provider extras): a cache must give back what the upstream said.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// A stored answer that cannot be converted (it is then served as stored, or missed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored answer cannot be replayed: {0}")]
pub struct ReplayError(pub String);

fn bad(what: impl Into<String>) -> ReplayError {
    ReplayError(what.into())
}

/// Delta fields that are pieces of one text, joined in order.
const TEXT_FIELDS: &[&str] = &["content", "refusal", "reasoning_content", "reasoning"];

/// The `chat.completion` a stream's events add up to: texts joined, tool calls assembled by
/// index (arguments joined), the last finish reason, log probabilities joined, the usage of
/// the chunk that carried it.
pub fn completion_from_events(events: &[Bytes]) -> Result<Bytes, ReplayError> {
    let mut top = Map::new();
    let mut choices: Vec<(u64, Map<String, Value>)> = Vec::new();
    let mut usage = Value::Null;
    for event in events {
        let chunk: Value =
            serde_json::from_slice(event).map_err(|e| bad(format!("an event is not JSON: {e}")))?;
        let Value::Object(chunk) = chunk else {
            return Err(bad("an event is not a JSON object"));
        };
        for (k, v) in &chunk {
            match k.as_str() {
                "choices" | "object" | "usage" => {}
                _ if !top.contains_key(k) && !v.is_null() => {
                    top.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let Some(Value::Array(parts)) = chunk.get("choices") else {
            continue;
        };
        for part in parts {
            let index = part.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match choices.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    choices.push((index, Map::new()));
                    choices.len() - 1
                }
            };
            merge_choice(&mut choices[at].1, part)?;
        }
    }
    choices.sort_by_key(|(i, _)| *i);
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, mut c)| {
            let message = c.remove("message").unwrap_or_else(|| json!({}));
            let mut message = match message {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            message
                .entry("role")
                .or_insert_with(|| Value::from("assistant"));
            message.entry("content").or_insert(Value::Null);
            // The index orders a stream's pieces; a completion's calls are a plain list.
            if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                for call in calls.iter_mut().filter_map(Value::as_object_mut) {
                    call.remove("index");
                }
            }
            let mut choice = Map::new();
            choice.insert("index".into(), Value::from(index));
            choice.insert("message".into(), Value::Object(message));
            choice.insert(
                "finish_reason".into(),
                c.remove("finish_reason").unwrap_or(Value::Null),
            );
            if let Some(lp) = c.remove("logprobs") {
                choice.insert("logprobs".into(), lp);
            }
            Value::Object(choice)
        })
        .collect();
    let mut completion = top;
    completion.insert("object".into(), Value::from("chat.completion"));
    completion.insert("choices".into(), Value::Array(choices));
    if !usage.is_null() {
        completion.insert("usage".into(), usage);
    }
    serde_json::to_vec(&Value::Object(completion))
        .map(Bytes::from)
        .map_err(|e| bad(e.to_string()))
}

/// Adds one chunk's choice to the choice being assembled (`message`, `finish_reason`,
/// `logprobs`).
fn merge_choice(into: &mut Map<String, Value>, part: &Value) -> Result<(), ReplayError> {
    if let Some(reason) = part.get("finish_reason").filter(|r| !r.is_null()) {
        into.insert("finish_reason".into(), reason.clone());
    }
    if let Some(Value::Object(lp)) = part.get("logprobs") {
        let joined = into
            .entry("logprobs")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| bad("logprobs is not an object"))?;
        for (k, v) in lp {
            match (joined.get_mut(k), v) {
                (Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
                (None, v) => {
                    joined.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
    }
    let Some(Value::Object(delta)) = part.get("delta") else {
        return Ok(());
    };
    let message = into
        .entry("message")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("message is not an object"))?;
    for (k, v) in delta {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("tool_calls", Value::Array(calls)) => {
                let assembled = message
                    .entry("tool_calls")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or_else(|| bad("tool_calls is not an array"))?;
                for call in calls {
                    merge_tool_call(assembled, call)?;
                }
            }
            (field, Value::String(piece)) if TEXT_FIELDS.contains(&field) => {
                match message.get_mut(field) {
                    Some(Value::String(text)) => text.push_str(piece),
                    _ => {
                        message.insert(field.to_owned(), Value::String(piece.clone()));
                    }
                }
            }
            _ => {
                message.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    Ok(())
}

/// A tool call's piece: the call at its `index` gets the id, type and name it names, and
/// the piece of its arguments appended.
fn merge_tool_call(assembled: &mut Vec<Value>, piece: &Value) -> Result<(), ReplayError> {
    let index = piece
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("a tool call piece has no index"))?;
    let at = match assembled
        .iter()
        .position(|c| c.get("index").and_then(Value::as_u64) == Some(index))
    {
        Some(at) => at,
        None => {
            assembled.push(json!({"index": index, "function": {"arguments": ""}}));
            assembled.len() - 1
        }
    };
    let call = assembled[at]
        .as_object_mut()
        .ok_or_else(|| bad("a tool call is not an object"))?;
    for key in ["id", "type"] {
        if let Some(v) = piece.get(key).filter(|v| !v.is_null()) {
            call.entry(key).or_insert_with(|| v.clone());
        }
    }
    if let Some(Value::Object(f)) = piece.get("function") {
        let function = call
            .entry("function")
            .or_insert_with(|| json!({"arguments": ""}))
            .as_object_mut()
            .ok_or_else(|| bad("a tool call's function is not an object"))?;
        if let Some(Value::String(name)) = f.get("name") {
            match function.get_mut("name") {
                Some(Value::String(have)) => have.push_str(name),
                _ => {
                    function.insert("name".into(), Value::String(name.clone()));
                }
            }
        }
        if let Some(Value::String(args)) = f.get("arguments") {
            match function.get_mut("arguments") {
                Some(Value::String(have)) => have.push_str(args),
                _ => {
                    function.insert("arguments".into(), Value::String(args.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The events a stream of `completion` would have had: per choice, a chunk with the whole
/// message as its delta (tool calls indexed), then one with its finish reason; then a
/// usage-only chunk when the completion has usage. (Without `[DONE]`, as stored streams.)
pub fn events_from_completion(completion: &[u8]) -> Result<Vec<Bytes>, ReplayError> {
    let value: Value =
        serde_json::from_slice(completion).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(bad("not a JSON object"));
    };
    let choices = match top.remove("choices") {
        Some(Value::Array(c)) => c,
        _ => return Err(bad("no choices")),
    };
    let usage = top.remove("usage").filter(|u| !u.is_null());
    top.insert("object".into(), Value::from("chat.completion.chunk"));
    let chunk = |choices: Value| {
        let mut c = top.clone();
        c.insert("choices".into(), choices);
        serde_json::to_vec(&Value::Object(c)).map(Bytes::from)
    };
    let mut events = Vec::new();
    for choice in &choices {
        let index = choice.get("index").cloned().unwrap_or(Value::from(0));
        let mut delta = match choice.get("message") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
            for (i, call) in calls.iter_mut().enumerate() {
                if let Value::Object(call) = call {
                    call.insert("index".into(), Value::from(i));
                }
            }
        }
        let mut first = json!({"index": index, "delta": delta, "finish_reason": null});
        if let Some(lp) = choice.get("logprobs").filter(|l| !l.is_null()) {
            first["logprobs"] = lp.clone();
        }
        events.push(chunk(json!([first])).map_err(|e| bad(e.to_string()))?);
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        events.push(
            chunk(json!([{"index": index, "delta": {}, "finish_reason": finish}]))
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    if let Some(usage) = usage {
        let mut c = top.clone();
        c.insert("choices".into(), json!([]));
        c.insert("usage".into(), usage);
        events.push(Bytes::from(
            serde_json::to_vec(&Value::Object(c)).map_err(|e| bad(e.to_string()))?,
        ));
    }
    Ok(events)
}

/// Whether an event is the usage-only chunk (`choices` empty, `usage` set), which a client
/// that did not ask for usage must not get.
pub fn is_usage_only(event: &[u8]) -> bool {
    serde_json::from_slice::<Value>(event).is_ok_and(|v| {
        v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && v.get("usage").is_some_and(|u| !u.is_null())
    })
}

/// A replayed answer's identity: the `id` and `created` every chunk (or the completion)
/// gets, so that a client never sees two generations under one id.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub id: String,
    pub created: u64,
}

impl Refresh {
    /// Rewrites `id` and `created` at the top of a chunk or completion (other bytes as they
    /// were, re-serialised).
    pub fn apply(&self, json: &[u8]) -> Result<Bytes, ReplayError> {
        let mut value: Value =
            serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(top) = &mut value else {
            return Err(bad("not a JSON object"));
        };
        if top.contains_key("id") {
            top.insert("id".into(), Value::from(self.id.clone()));
        }
        if top.contains_key("created") {
            top.insert("created".into(), Value::from(self.created));
        }
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| bad(e.to_string()))
    }
}

/// The extension of `usage` on a hit: what the stored answer's generation used, which this
/// answer did not.
pub const SAVED_USAGE_FIELD: &str = "sluice_cache_saved";

impl Refresh {
    /// A stored completion (or chunk) as a hit's answer: fresh identity, and its `usage`
    /// zeroed (no upstream tokens were spent) with what was saved under
    /// [`SAVED_USAGE_FIELD`]. A usage already in that form (a [`hit_template`]) is kept.
    pub fn hit(&self, completion: &[u8]) -> Result<Bytes, ReplayError> {
        let mut value: Value =
            serde_json::from_slice(completion).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(top) = &mut value else {
            return Err(bad("not a JSON object"));
        };
        top.insert("id".into(), Value::from(self.id.clone()));
        top.insert("created".into(), Value::from(self.created));
        if let Some(Value::Object(usage)) = top
            .get_mut("usage")
            .filter(|u| u.get(SAVED_USAGE_FIELD).is_none())
        {
            let saved = json!({
                "prompt_tokens": usage.get("prompt_tokens").cloned().unwrap_or(Value::from(0)),
                "completion_tokens": usage.get("completion_tokens").cloned().unwrap_or(Value::from(0)),
            });
            usage.clear();
            usage.insert("prompt_tokens".into(), Value::from(0));
            usage.insert("completion_tokens".into(), Value::from(0));
            usage.insert("total_tokens".into(), Value::from(0));
            usage.insert(SAVED_USAGE_FIELD.into(), saved);
        }
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| bad(e.to_string()))
    }
}

/// The fixed start of a [`hit_template`]: `{"id":"` then the id's place.
const TEMPLATE_ID_AT: usize = br#"{"id":""#.len();
/// `chatcmpl-` and 32 hex digits: the ids the gateway gives replays.
pub const REPLAY_ID_LEN: usize = 41;
const TEMPLATE_CREATED_AT: usize = TEMPLATE_ID_AT + REPLAY_ID_LEN + br#"","created":"#.len();
/// Unix seconds have ten digits until the year 2286.
const CREATED_DIGITS: usize = 10;

/// A completion as hits will serve it, written once when it is stored: usage zeroed with
/// what it saved beside it, and `id` and `created` first, at fixed places, so that a hit
/// only copies the bytes and writes its own identity over them ([`stamp`]) instead of
/// parsing and writing the JSON again.
pub fn hit_template(completion: &[u8]) -> Result<Bytes, ReplayError> {
    let placeholder = Refresh {
        id: format!("chatcmpl-{}", "0".repeat(REPLAY_ID_LEN - 9)),
        created: 1_000_000_000,
    };
    let rewritten = placeholder.hit(completion)?;
    let Value::Object(mut top) =
        serde_json::from_slice::<Value>(&rewritten).map_err(|e| bad(e.to_string()))?
    else {
        return Err(bad("not a JSON object"));
    };
    top.shift_remove("id");
    top.shift_remove("created");
    let rest = serde_json::to_vec(&Value::Object(top)).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(rest.len() + 80);
    out.extend_from_slice(br#"{"id":""#);
    out.extend_from_slice(placeholder.id.as_bytes());
    out.extend_from_slice(br#"","created":"#);
    out.extend_from_slice(placeholder.created.to_string().as_bytes());
    if rest.len() > 2 {
        out.push(b',');
        out.extend_from_slice(&rest[1..]);
    } else {
        out.push(b'}');
    }
    Ok(Bytes::from(out))
}

/// A [`hit_template`] with `refresh`'s identity written in: `None` when `template` is not
/// one, or the identity does not fit its places (then [`Refresh::hit`] serves).
pub fn stamp(template: &[u8], refresh: &Refresh) -> Option<Bytes> {
    let created = refresh.created.to_string();
    let fits = refresh.id.len() == REPLAY_ID_LEN
        && refresh
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && created.len() == CREATED_DIGITS
        && template.len() > TEMPLATE_CREATED_AT + CREATED_DIGITS
        && template.starts_with(br#"{"id":"chatcmpl-"#)
        && template[TEMPLATE_CREATED_AT - br#"","created":"#.len()..TEMPLATE_CREATED_AT]
            == *br#"","created":"#
        && template[TEMPLATE_CREATED_AT..TEMPLATE_CREATED_AT + CREATED_DIGITS]
            .iter()
            .all(u8::is_ascii_digit)
        && matches!(template[TEMPLATE_CREATED_AT + CREATED_DIGITS], b',' | b'}');
    if !fits {
        return None;
    }
    let mut out = template.to_vec();
    out[TEMPLATE_ID_AT..TEMPLATE_ID_AT + REPLAY_ID_LEN].copy_from_slice(refresh.id.as_bytes());
    out[TEMPLATE_CREATED_AT..TEMPLATE_CREATED_AT + CREATED_DIGITS]
        .copy_from_slice(created.as_bytes());
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn events(chunks: &[Value]) -> Vec<Bytes> {
        chunks
            .iter()
            .map(|c| Bytes::from(serde_json::to_vec(c).unwrap()))
            .collect()
    }

    fn base(choices: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
               "model": "m", "system_fingerprint": "fp", "choices": choices})
    }

    #[test]
    fn a_stream_with_split_tool_calls_adds_up_to_its_completion() {
        let stream = events(&[
            base(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            base(json!([{"index": 0, "delta": {"content": "Let me "}, "finish_reason": null}])),
            base(json!([{"index": 0, "delta": {"content": "check."}, "finish_reason": null}])),
            base(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]),
            ),
            base(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}]),
            ),
            base(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "get_time", "arguments": "{}"}}]}}]),
            ),
            base(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]),
            ),
            base(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
            base(json!([]))
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain([(
                    "usage".to_owned(),
                    json!({"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}),
                )])
                .collect::<Map<String, Value>>()
                .into(),
        ]);
        let completion: Value =
            serde_json::from_slice(&completion_from_events(&stream).unwrap()).unwrap();
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["id"], "chatcmpl-1");
        assert_eq!(completion["system_fingerprint"], "fp");
        let message = &completion["choices"][0]["message"];
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["content"], "Let me check.");
        assert_eq!(message["tool_calls"][0]["id"], "call_a");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(message["tool_calls"][1]["function"]["name"], "get_time");
        assert!(message["tool_calls"][0].get("index").is_none());
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(completion["usage"]["completion_tokens"], 12);
    }

    #[test]
    fn a_completion_streamed_and_added_up_again_is_the_same_answer() {
        let completion = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 5,
            "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi there", "refusal": null},
                 "finish_reason": "stop", "logprobs": null},
                {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                 "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        let events = events_from_completion(&serde_json::to_vec(&completion).unwrap()).unwrap();
        assert_eq!(events.len(), 5, "two chunks per choice and the usage chunk");
        assert!(is_usage_only(&events[4]));
        assert!(!is_usage_only(&events[0]));
        let back: Value =
            serde_json::from_slice(&completion_from_events(&events).unwrap()).unwrap();
        for i in 0..2 {
            assert_eq!(
                back["choices"][i]["finish_reason"],
                completion["choices"][i]["finish_reason"]
            );
            assert_eq!(
                back["choices"][i]["message"]["content"],
                completion["choices"][i]["message"]["content"]
            );
        }
        let call = &back["choices"][1]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(back["usage"], completion["usage"]);
        assert_eq!(back["id"], "chatcmpl-9");
    }

    #[test]
    fn unknown_fields_are_kept() {
        let stream = events(&[
            base(
                json!([{"index": 0, "delta": {"role": "assistant", "reasoning_content": "think "}}]),
            ),
            base(
                json!([{"index": 0, "delta": {"reasoning_content": "more", "content": "ok"},
                         "logprobs": {"content": [{"token": "ok", "logprob": -0.1}]}}]),
            ),
            base(json!([{"index": 0, "delta": {}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "!", "logprob": -0.2}]}}])),
        ]);
        let c: Value = serde_json::from_slice(&completion_from_events(&stream).unwrap()).unwrap();
        assert_eq!(
            c["choices"][0]["message"]["reasoning_content"],
            "think more"
        );
        assert_eq!(
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn refresh_rewrites_only_the_identity() {
        let r = Refresh {
            id: "chatcmpl-new".into(),
            created: 99,
        };
        let out: Value = serde_json::from_slice(
            &r.apply(br#"{"id":"old","created":1,"model":"m","choices":[{"index":0}]}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"id": "chatcmpl-new", "created": 99, "model": "m", "choices": [{"index": 0}]})
        );
        assert!(r.apply(b"[]").is_err());
    }

    #[test]
    fn a_hit_spends_no_tokens_and_says_what_it_saved() {
        let r = Refresh {
            id: "chatcmpl-hit".into(),
            created: 5,
        };
        let stored = br#"{"id":"a","created":1,"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let hit: Value = serde_json::from_slice(&r.hit(stored).unwrap()).unwrap();
        assert_eq!(hit["id"], "chatcmpl-hit");
        assert_eq!(
            hit["usage"],
            json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
            "sluice_cache_saved": {"prompt_tokens": 9, "completion_tokens": 4}})
        );
    }

    #[test]
    fn a_stamped_template_is_what_a_full_rewrite_gives() {
        let stored = br#"{"id":"chatcmpl-up","object":"chat.completion","created":17,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#;
        let r = Refresh {
            id: format!("chatcmpl-{}", "ab12".repeat(8)),
            created: 1_764_000_000,
        };
        let template = hit_template(stored).unwrap();
        let fast: Value = serde_json::from_slice(&stamp(&template, &r).unwrap()).unwrap();
        let slow: Value = serde_json::from_slice(&r.hit(stored).unwrap()).unwrap();
        assert_eq!(fast, slow);
        // The template serves streams too, and a second rewrite keeps what was saved.
        let again: Value = serde_json::from_slice(&r.hit(&template).unwrap()).unwrap();
        assert_eq!(again, slow);
        // What is not a template, or an identity that does not fit, is left to the rewrite.
        assert!(stamp(stored, &r).is_none());
        let short = Refresh {
            id: "chatcmpl-1".into(),
            created: 5,
        };
        assert!(stamp(&template, &short).is_none());
        // Cut anywhere, a template is refused or stamped without a panic.
        for n in 0..template.len() {
            let _ = stamp(&template[..n], &r);
        }
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(completion_from_events(&[Bytes::from_static(b"{")]).is_err());
        assert!(completion_from_events(&[Bytes::from_static(b"[1]")]).is_err());
        assert!(events_from_completion(b"{\"choices\": 3}").is_err());
        let odd = events(&[
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {}}]}}]}),
        ]);
        assert!(completion_from_events(&odd).is_err());
    }
}
