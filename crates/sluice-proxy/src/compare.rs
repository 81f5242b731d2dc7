//! Field-by-field comparison of two responses to one request (a recording and a live
//! answer, or an old and a new recording), ignoring what differs on every call.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::entry::{RecordedEvent, RecordedResponse, StoredBody};
use crate::fields::{diff, flatten_json};
use crate::key::remove_ignored;

/// One field whose value differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDrift {
    /// `status`, `kind`, `body.PATH`, `body`, `events.count`, `events[i].PATH`, `text`.
    pub path: String,
    /// `null` when the field is absent on that side.
    pub recorded: Value,
    pub live: Value,
}

/// Every differing field between `recorded` and `live`, most telling first: status, body
/// kind, event count and reassembled text, then the individual fields in path order.
/// `ignore` is [`crate::ProxyConfig::diff_ignore`].
pub fn compare_responses(
    recorded: &RecordedResponse,
    live: &RecordedResponse,
    ignore: &[String],
) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    if recorded.status != live.status {
        out.push(FieldDrift {
            path: "status".to_owned(),
            recorded: recorded.status.into(),
            live: live.status.into(),
        });
    }
    match (&recorded.events, &live.events) {
        (Some(old), Some(new)) => out.extend(compare_events(old, new, ignore)),
        (None, None) => out.extend(compare_fields(
            body_fields(&recorded.body, ignore),
            body_fields(&live.body, ignore),
        )),
        (old, new) => out.push(FieldDrift {
            path: "kind".to_owned(),
            recorded: kind_of(old.as_deref()),
            live: kind_of(new.as_deref()),
        }),
    }
    out
}

fn kind_of(events: Option<&[RecordedEvent]>) -> Value {
    match events {
        Some(events) => format!("event stream ({} events)", events.len()).into(),
        None => "body".into(),
    }
}

fn compare_events(
    old: &[RecordedEvent],
    new: &[RecordedEvent],
    ignore: &[String],
) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    if old.len() != new.len() {
        out.push(FieldDrift {
            path: "events.count".to_owned(),
            recorded: old.len().into(),
            live: new.len().into(),
        });
    }
    let (old_text, new_text) = (reassembled_text(old), reassembled_text(new));
    if old_text != new_text {
        out.push(FieldDrift {
            path: "text".to_owned(),
            recorded: old_text.map(Value::String).unwrap_or(Value::Null),
            live: new_text.map(Value::String).unwrap_or(Value::Null),
        });
    }
    out.extend(compare_fields(
        event_fields(old, ignore),
        event_fields(new, ignore),
    ));
    out
}

fn compare_fields(old: BTreeMap<String, Value>, new: BTreeMap<String, Value>) -> Vec<FieldDrift> {
    diff(&old, &new)
        .into_iter()
        .map(|d| FieldDrift {
            path: d.path,
            recorded: d.recorded,
            live: d.requested,
        })
        .collect()
}

fn body_fields(body: &StoredBody, ignore: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(json) = &body.body {
        let mut json = json.clone();
        strip_ignored(&mut json, ignore);
        flatten_json(&json, "body".to_owned(), &mut out);
    } else if let Some(text) = &body.body_text {
        out.insert("body".to_owned(), Value::String(text.clone()));
    } else if let Some(b64) = &body.body_base64 {
        out.insert("body_base64".to_owned(), Value::String(b64.clone()));
    }
    out
}

/// Each event's payload as `events[i].PATH` leaves (JSON data) or `events[i].data` (any
/// other data), plus `events[i].event` for named events.
fn event_fields(events: &[RecordedEvent], ignore: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let prefix = format!("events[{i}]");
        if let Some(name) = &event.event {
            out.insert(format!("{prefix}.event"), Value::String(name.clone()));
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(mut json) if json.is_object() || json.is_array() => {
                strip_ignored(&mut json, ignore);
                flatten_json(&json, prefix, &mut out);
            }
            _ => {
                out.insert(format!("{prefix}.data"), Value::String(event.data.clone()));
            }
        }
    }
    out
}

/// The text a client would show: the `content` deltas (chat) or `text` pieces
/// (completions) of every chunk, concatenated. `None` when no chunk carries text.
fn reassembled_text(events: &[RecordedEvent]) -> Option<String> {
    let mut text = String::new();
    let mut any = false;
    for event in events {
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            continue;
        };
        for choice in choices {
            let piece = choice
                .get("delta")
                .and_then(|d| d.get("content"))
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str);
            if let Some(piece) = piece {
                text.push_str(piece);
                any = true;
            }
        }
    }
    any.then_some(text)
}

/// Removes the ignored fields: a bare name (`id`) wherever it occurs, a dotted path
/// (`usage.total_tokens`, `choices[*].logprobs`) from the root only.
pub fn strip_ignored(value: &mut Value, ignore: &[String]) {
    let (names, paths): (Vec<&String>, Vec<&String>) = ignore
        .iter()
        .partition(|p| !p.contains('.') && !p.contains('['));
    if !names.is_empty() {
        remove_names_everywhere(value, &names);
    }
    let paths: Vec<String> = paths.into_iter().cloned().collect();
    remove_ignored(value, &paths);
}

fn remove_names_everywhere(value: &mut Value, names: &[&String]) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !names.contains(&k));
            for child in map.values_mut() {
                remove_names_everywhere(child, names);
            }
        }
        Value::Array(items) => {
            for item in items {
                remove_names_everywhere(item, names);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DIFF_IGNORE;
    use serde_json::json;

    fn defaults() -> Vec<String> {
        DEFAULT_DIFF_IGNORE
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn unary(status: u16, body: Value) -> RecordedResponse {
        RecordedResponse {
            status,
            headers: BTreeMap::new(),
            body: StoredBody::from_bytes(&serde_json::to_vec(&body).unwrap()),
            events: None,
        }
    }

    fn stream(datas: &[&str]) -> RecordedResponse {
        RecordedResponse {
            status: 200,
            headers: BTreeMap::new(),
            body: StoredBody::default(),
            events: Some(
                datas
                    .iter()
                    .map(|d| RecordedEvent {
                        offset_ms: 1.0,
                        event: None,
                        id: None,
                        data: (*d).to_owned(),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn ids_and_timestamps_do_not_count_but_content_does() {
        let a = unary(
            200,
            json!({"id": "a", "created": 1, "choices": [{"message": {"content": "hi", "tool_calls": [{"id": "call_1"}]}}]}),
        );
        let b = unary(
            200,
            json!({"id": "b", "created": 2, "choices": [{"message": {"content": "hi", "tool_calls": [{"id": "call_2"}]}}]}),
        );
        assert!(compare_responses(&a, &b, &defaults()).is_empty());
        let c = unary(
            201,
            json!({"id": "c", "choices": [{"message": {"content": "ho"}}]}),
        );
        let d = compare_responses(&a, &c, &defaults());
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths[0], "status");
        assert!(
            paths.contains(&"body.choices[0].message.content"),
            "{paths:?}"
        );
        assert!(!paths
            .iter()
            .any(|p| p.ends_with(".id") || p.contains("created")));
    }

    #[test]
    fn prompt_cache_counts_do_not_count_in_bodies_or_stream_events() {
        let usage = |cached: u64| json!({"prompt_tokens": 20, "prompt_tokens_details": {"cached_tokens": cached}});
        let a = unary(200, json!({"choices": [], "usage": usage(0)}));
        let b = unary(200, json!({"choices": [], "usage": usage(16)}));
        assert!(compare_responses(&a, &b, &defaults()).is_empty());
        let a = stream(&[
            &json!({"choices": [], "usage": usage(0)}).to_string(),
            "[DONE]",
        ]);
        let b = stream(&[
            &json!({"choices": [], "usage": usage(16)}).to_string(),
            "[DONE]",
        ]);
        assert!(compare_responses(&a, &b, &defaults()).is_empty());
        // The other counts still do.
        let c = unary(
            200,
            json!({"choices": [], "usage": {"prompt_tokens": 21, "prompt_tokens_details": {"cached_tokens": 0}}}),
        );
        let d = compare_responses(
            &unary(200, json!({"choices": [], "usage": usage(0)})),
            &c,
            &defaults(),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "body.usage.prompt_tokens");
    }

    #[test]
    fn drift_paths_come_in_event_order() {
        let datas: Vec<String> = (0..12).map(|i| json!({"n": i}).to_string()).collect();
        let other: Vec<String> = (0..12).map(|i| json!({"n": i + 100}).to_string()).collect();
        let datas: Vec<&str> = datas.iter().map(String::as_str).collect();
        let other: Vec<&str> = other.iter().map(String::as_str).collect();
        let d = compare_responses(&stream(&datas), &stream(&other), &defaults());
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        let expected: Vec<String> = (0..12).map(|i| format!("events[{i}].n")).collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn dotted_ignores_match_from_the_root_only() {
        let a = unary(
            200,
            json!({"usage": {"total_tokens": 1}, "x": {"usage": {"total_tokens": 1}}}),
        );
        let b = unary(
            200,
            json!({"usage": {"total_tokens": 2}, "x": {"usage": {"total_tokens": 2}}}),
        );
        let d = compare_responses(&a, &b, &["usage.total_tokens".to_owned()]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "body.x.usage.total_tokens");
    }

    #[test]
    fn streams_compare_count_text_and_payloads() {
        let a = stream(&[
            r#"{"id":"1","choices":[{"delta":{"content":"he"}}]}"#,
            r#"{"id":"1","choices":[{"delta":{"content":"llo"}}]}"#,
            "[DONE]",
        ]);
        let same = stream(&[
            r#"{"id":"2","choices":[{"delta":{"content":"he"}}]}"#,
            r#"{"id":"2","choices":[{"delta":{"content":"llo"}}]}"#,
            "[DONE]",
        ]);
        assert!(compare_responses(&a, &same, &defaults()).is_empty());
        let other = stream(&[
            r#"{"id":"3","choices":[{"delta":{"content":"bye"}}]}"#,
            "[DONE]",
        ]);
        let d = compare_responses(&a, &other, &defaults());
        assert_eq!(d[0].path, "events.count");
        assert_eq!(d[1].path, "text");
        assert_eq!(d[1].recorded, "hello");
        assert_eq!(d[1].live, "bye");
        assert!(d
            .iter()
            .any(|f| f.path == "events[1].data" || f.path.starts_with("events[1].")));
        let kind = compare_responses(&a, &unary(200, json!({})), &defaults());
        assert_eq!(kind[0].path, "kind");
    }
}
