//! One recording: the redacted request, and the response or the stream of events, as a
//! human-readable JSON document.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::{KeyBody, NormalisedRequest, KEY_VERSION};

/// The file stored per recorded exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key_version: u32,
    /// Full hex request key.
    pub key: String,
    /// Milliseconds since the Unix epoch when the response finished; `read-old-write-new`
    /// compares it with the proxy's start.
    pub recorded_at_unix_ms: u64,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

/// The request as it counts in the key: secrets removed, only allow-listed headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `scheme://host:port` for forward-proxy and CONNECT requests; absent for reverse
    /// routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub method: String,
    pub path: String,
    /// The normalised query string (`a=1&b=2`), empty when there is none.
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(flatten)]
    pub body: StoredBody,
}

impl RecordedRequest {
    /// The recorded form of a request. The body is stored whole (ignored fields included):
    /// ignoring a field means it does not select the answer, not that it is secret.
    pub fn new(normalised: &NormalisedRequest, body: &[u8]) -> Self {
        RecordedRequest {
            origin: normalised.origin.clone(),
            method: normalised.method.clone(),
            path: normalised.path.clone(),
            query: normalised.query_string(),
            headers: crate::headers::join_repeated(normalised.headers.iter().cloned()),
            body: match &normalised.body {
                KeyBody::Empty => StoredBody::default(),
                _ => StoredBody::from_bytes(body),
            },
        }
    }
}

impl RecordedRequest {
    /// What the recording's file name is made from: the path, preceded by the origin's
    /// host (and non-default port) for forward requests, so files of different hosts are
    /// told apart at a glance.
    pub fn name_path(&self) -> String {
        match &self.origin {
            Some(origin) => format!("{}{}", crate::route::origin_label(origin), self.path),
            None => self.path.clone(),
        }
    }
}

/// How many characters of the last message a [`RecordedRequest::label`] shows.
const LABEL_TEXT_CHARS: usize = 48;

impl RecordedRequest {
    /// What a person recognises the request by: its model and the start of its last
    /// message (`gpt-4o-mini: "What is the capital of…"`), from the JSON body of a chat,
    /// messages, completions, embeddings or responses request. `None` for other bodies.
    pub fn label(&self) -> Option<String> {
        let body = self.body.body.as_ref()?.as_object()?;
        let model = body.get("model").and_then(Value::as_str);
        let text = body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("content"))
            .or_else(|| body.get("input"))
            .or_else(|| body.get("prompt"))
            .and_then(first_text);
        let text = text.map(|t| {
            let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
            match t.char_indices().nth(LABEL_TEXT_CHARS) {
                Some((cut, _)) => format!("{:?}", format!("{}…", &t[..cut])),
                None => format!("{t:?}"),
            }
        });
        match (model, text) {
            (Some(m), Some(t)) => Some(format!("{m}: {t}")),
            (Some(m), None) => Some(m.to_owned()),
            (None, Some(t)) => Some(t),
            (None, None) => None,
        }
    }
}

/// The first text of a message's content: the string itself, or the first text part of a
/// list of parts (`[{"type": "text", "text": ...}]`), or the first string of a list.
fn first_text(content: &Value) -> Option<&str> {
    match content {
        Value::String(s) => Some(s),
        Value::Array(items) => items.iter().find_map(|item| match item {
            Value::String(s) => Some(s.as_str()),
            Value::Object(part) => part
                .get("text")
                .and_then(Value::as_str)
                .or_else(|| part.get("content").and_then(first_text)),
            _ => None,
        }),
        _ => None,
    }
}

/// A response: status, headers, and either a body or the events of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    /// Lowercase names; a header sent more than once has its values joined with `, `.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(flatten)]
    pub body: StoredBody,
    /// Present for `text/event-stream` responses, instead of a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<RecordedEvent>>,
}

/// One server-sent event and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Milliseconds from the response head to the arrival of the bytes completing the event.
    pub offset_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub data: String,
}

impl RecordedEvent {
    /// The event framed for the wire.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        out.push_str(&sluice_api::sse::encode_event(
            self.event.as_deref(),
            &self.data,
        ));
        out
    }
}

/// A body in the most readable form that round-trips: JSON, else UTF-8 text, else base64.
/// At most one field is set; none means an empty body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoredBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl StoredBody {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return StoredBody::default();
        }
        // A bare `null` would read back as "no body", so it is kept as text.
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            if !v.is_null() {
                return StoredBody {
                    body: Some(v),
                    ..StoredBody::default()
                };
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => StoredBody {
                body_text: Some(text.to_owned()),
                ..StoredBody::default()
            },
            Err(_) => StoredBody {
                body_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                ..StoredBody::default()
            },
        }
    }

    /// The bytes to send. JSON is re-serialized compactly in its recorded key order.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EntryBodyError> {
        if let Some(v) = &self.body {
            return serde_json::to_vec(v).map_err(|e| EntryBodyError(e.to_string()));
        }
        if let Some(t) = &self.body_text {
            return Ok(t.as_bytes().to_vec());
        }
        if let Some(b) = &self.body_base64 {
            return base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| EntryBodyError(format!("body_base64 is not valid base64: {e}")));
        }
        Ok(Vec::new())
    }
}

/// A stored body that cannot be turned back into bytes (hand-edited file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recorded body cannot be decoded: {0}")]
pub struct EntryBodyError(pub String);

impl Entry {
    pub fn new(
        key: &crate::key::RequestKey,
        request: RecordedRequest,
        response: RecordedResponse,
    ) -> Self {
        Entry {
            key_version: KEY_VERSION,
            key: key.as_str().to_owned(),
            recorded_at_unix_ms: now_unix_ms(),
            request,
            response,
        }
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_in_their_readable_form() {
        for bytes in [
            &b"{\"a\":[1,2]}"[..],
            b"plain text",
            b"\xff\x00\x01",
            b"",
            b"null",
        ] {
            let stored = StoredBody::from_bytes(bytes);
            assert_eq!(stored.to_bytes().unwrap(), bytes);
        }
        assert!(StoredBody::from_bytes(b"{\"a\":1}").body.is_some());
        assert!(StoredBody::from_bytes(b"\xff").body_base64.is_some());
    }

    fn request(body: Value) -> RecordedRequest {
        RecordedRequest {
            origin: None,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            query: String::new(),
            headers: BTreeMap::new(),
            body: StoredBody {
                body: Some(body),
                ..StoredBody::default()
            },
        }
    }

    #[test]
    fn labels_show_the_model_and_the_start_of_the_last_message() {
        use serde_json::json;
        let chat = request(json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is\nthe capital of France, and what is its population today?"}
        ]}));
        assert_eq!(
            chat.label().unwrap(),
            "gpt-4o-mini: \"What is the capital of France, and what is its p…\""
        );
        let parts = request(json!({"model": "claude", "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}
        ]}));
        assert_eq!(parts.label().unwrap(), "claude: \"describe\"");
        let tool_result = request(json!({"model": "claude", "messages": [
            {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "42"}]}]}
        ]}));
        assert_eq!(tool_result.label().unwrap(), "claude: \"42\"");
        let embed = request(json!({"model": "e", "input": ["a", "b"]}));
        assert_eq!(embed.label().unwrap(), "e: \"a\"");
        assert_eq!(request(json!({"model": "m"})).label().unwrap(), "m");
        assert_eq!(request(json!([1])).label(), None);
    }

    #[test]
    fn events_frame_with_id_and_name() {
        let ev = RecordedEvent {
            offset_ms: 0.0,
            event: Some("error".into()),
            id: Some("7".into()),
            data: "x".into(),
        };
        assert_eq!(ev.encode(), "id: 7\nevent: error\ndata: x\n\n");
    }
}
