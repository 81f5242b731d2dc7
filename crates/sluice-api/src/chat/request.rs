//! The chat-completion request: its types, the lenient parse that types the fields sluice
//! acts on and keeps the rest, and the serialisation back to JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request field that is missing or has the wrong type. `param` is the JSON path of the
/// field (`messages[0].content`), as OpenAI reports it in `error.param`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub param: Option<String>,
    pub message: String,
}

impl RequestError {
    fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Legacy name of the output cap; still what most engines read.
    pub max_tokens: Option<u32>,
    /// Current OpenAI name of the output cap.
    pub max_completion_tokens: Option<u32>,
    pub seed: Option<i64>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<Value>,
    /// Every other top-level field, forwarded as received.
    pub extra: Map<String, Value>,
}

/// `stream_options`; unknown keys are kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    pub extra: Map<String, Value>,
}

/// One chat message. `content` is a string, an array of content parts, or absent/null
/// (an assistant turn that only calls tools). Other keys (`name`, `tool_calls`,
/// `tool_call_id`, ...) are kept in `extra`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`, images, audio), kept as received.
    Parts(Vec<Value>),
}

/// A tool offered to the model. Only `function` tools are typed; others pass through.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub kind: String,
    pub function: Option<FunctionDefinition>,
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDefinition {
    pub name: String,
    /// JSON schema of the arguments, when given.
    pub parameters: Option<Value>,
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// Parses a request body. Malformed JSON and wrong field types are both reported as a
    /// [`RequestError`] whose message says what to change.
    pub fn from_slice(body: &[u8]) -> Result<Self, RequestError> {
        // One UTF-8 check of the whole body (its ASCII fast path takes a word at a time), so
        // serde can skip checking each string it reads, string by string, more slowly.
        let text = std::str::from_utf8(body).map_err(|e| RequestError {
            param: None,
            message: format!("request body is not valid UTF-8: {e}"),
        })?;
        let top: TopLevelJson = serde_json::from_str(text).map_err(|e| RequestError {
            param: None,
            message: format!("request body is not valid JSON: {e}"),
        })?;
        match top {
            TopLevelJson::Object(fields) => fields.into_request(),
            TopLevelJson::Other(kind) => Err(RequestError {
                param: None,
                message: format!("request body must be a JSON object, got {kind}"),
            }),
        }
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for a final usage chunk on a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The output cap the client set, preferring the current field name.
    pub fn output_cap(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn to_json_vec(&self) -> Vec<u8> {
        let map: Map<String, Value> = self.clone().into();
        // A map of JSON values always serialises.
        serde_json::to_vec(&map).unwrap_or_default()
    }
}

impl MessageContent {
    /// The text a model reads from this content: the string, or the `text` of every text part
    /// joined by newlines. Non-text parts contribute nothing.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(s) => s.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// What kind of JSON value `v` is, as an error message says it ("an object", "null").
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> RequestError {
    wrong_kind(path, expected, json_type_name(got))
}

fn wrong_kind(path: &str, expected: &str, kind: &str) -> RequestError {
    RequestError::field(path, format!("`{path}` must be {expected}, got {kind}"))
}

/// `path` is built only when there is an error to report: on success nothing is formatted.
fn string_field(
    value: Option<Value>,
    path: impl FnOnce() -> String,
) -> Result<String, RequestError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(&path(), "a string", &other)),
        None => {
            let path = path();
            Err(RequestError::field(&path, format!("`{path}` is required")))
        }
    }
}

fn opt_bool(value: Option<Value>, key: &str) -> Result<Option<bool>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(wrong_type(key, "a boolean", &other)),
    }
}

fn opt_u32(value: Option<Value>, key: &str) -> Result<Option<u32>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) => Ok(Some(v)),
            None => Err(RequestError::field(
                key,
                format!("`{key}` must be a non-negative integer below 2^32, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type(key, "an integer", &other)),
    }
}

fn opt_i64(value: Option<Value>, key: &str) -> Result<Option<i64>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Some(v)),
            None => Err(RequestError::field(
                key,
                format!("`{key}` must be a 64-bit integer, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type(key, "an integer", &other)),
    }
}

impl TryFrom<Map<String, Value>> for ChatCompletionRequest {
    type Error = RequestError;

    fn try_from(mut map: Map<String, Value>) -> Result<Self, RequestError> {
        let mut fields = RequestFields::default();
        // `shift_remove`, not `remove` (a swap under `preserve_order`): the other fields stay
        // in the order received, as `from_slice` keeps them.
        for key in RequestFields::TYPED {
            if let (Some(value), Some(slot)) = (map.shift_remove(key), fields.slot(key)) {
                *slot = Some(value);
            }
        }
        fields.messages = map.shift_remove("messages").map(MessagesJson::from_value);
        fields.extra = map;
        fields.into_request()
    }
}

/// A request body's top level: an object split into its typed fields (still as JSON) and
/// the rest, or the kind of the non-object it was instead.
///
/// Parsing straight into this, rather than into a `serde_json::Map` first, skips hashing and
/// then removing every typed key: the gateway parses each request it proxies, and that map
/// work was a tenth of its instructions per request.
enum TopLevelJson {
    Object(Box<RequestFields>),
    Other(&'static str),
}

/// The typed top-level fields of a request, last occurrence winning (as in a JSON map), and
/// every other field in order.
#[derive(Default)]
struct RequestFields {
    model: Option<Value>,
    messages: Option<MessagesJson>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    seed: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    extra: Map<String, Value>,
}

impl RequestFields {
    /// The fields parsed as JSON values first (`messages` has its own parse).
    const TYPED: [&'static str; 8] = [
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "tools",
        "tool_choice",
    ];

    fn slot(&mut self, key: &str) -> Option<&mut Option<Value>> {
        Some(match key {
            "model" => &mut self.model,
            "stream" => &mut self.stream,
            "stream_options" => &mut self.stream_options,
            "max_tokens" => &mut self.max_tokens,
            "max_completion_tokens" => &mut self.max_completion_tokens,
            "seed" => &mut self.seed,
            "tools" => &mut self.tools,
            "tool_choice" => &mut self.tool_choice,
            _ => return None,
        })
    }

    fn into_request(self) -> Result<ChatCompletionRequest, RequestError> {
        let model = string_field(self.model, || "model".to_owned())?;
        let messages = match self.messages {
            Some(MessagesJson::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, m)| parse_message(i, m))
                .collect::<Result<Vec<_>, _>>()?,
            Some(MessagesJson::Other(kind)) => {
                return Err(wrong_kind("messages", "an array of messages", kind))
            }
            None => {
                return Err(RequestError::field(
                    "messages",
                    "`messages` is required: an array of {\"role\", \"content\"} objects",
                ))
            }
        };
        if messages.is_empty() {
            return Err(RequestError::field(
                "messages",
                "`messages` must hold at least one message",
            ));
        }
        let stream = opt_bool(self.stream, "stream")?;
        let stream_options = match self.stream_options {
            None | Some(Value::Null) => None,
            Some(Value::Object(mut o)) => {
                let include_usage = match o.shift_remove("include_usage") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(b),
                    Some(other) => {
                        return Err(wrong_type(
                            "stream_options.include_usage",
                            "a boolean",
                            &other,
                        ))
                    }
                };
                Some(StreamOptions {
                    include_usage,
                    extra: o,
                })
            }
            Some(other) => return Err(wrong_type("stream_options", "an object", &other)),
        };
        let max_tokens = opt_u32(self.max_tokens, "max_tokens")?;
        let max_completion_tokens = opt_u32(self.max_completion_tokens, "max_completion_tokens")?;
        let seed = opt_i64(self.seed, "seed")?;
        let tools = match self.tools {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| parse_tool(i, v))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => return Err(wrong_type("tools", "an array of tools", &other)),
        };
        let tool_choice = self.tool_choice.filter(|v| !v.is_null());
        Ok(ChatCompletionRequest {
            model,
            messages,
            stream,
            stream_options,
            max_tokens,
            max_completion_tokens,
            seed,
            tools,
            tool_choice,
            extra: self.extra,
        })
    }
}

impl<'de> Deserialize<'de> for TopLevelJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevelJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevelJson, A::Error> {
        let mut fields = RequestFields::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "messages" {
                fields.messages = Some(map.next_value()?);
                continue;
            }
            let value: Value = map.next_value()?;
            match fields.slot(&key) {
                Some(slot) => *slot = Some(value),
                None => {
                    fields.extra.insert(key.into_owned(), value);
                }
            }
        }
        Ok(TopLevelJson::Object(Box::new(fields)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevelJson, A::Error> {
        // Read as JSON values, not skipped: see `KindOf`.
        while seq.next_element::<Value>()?.is_some() {}
        Ok(TopLevelJson::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevelJson, E> {
        Ok(TopLevelJson::Other("a string"))
    }
}

fn parse_message(index: usize, message: MessageJson) -> Result<ChatMessage, RequestError> {
    let path = || format!("messages[{index}]");
    let (role, content, mut extra) = match message {
        MessageJson::Object {
            role,
            content,
            extra,
        } => (role, content, extra),
        MessageJson::Other(kind) => return Err(wrong_kind(&path(), "an object", kind)),
    };
    let role = string_field(role, || format!("{}.role", path()))?;
    let content = match content {
        None => None,
        // An explicit null is meaningful to some providers (assistant turns with tool calls):
        // keep it so the forwarded message is the one received.
        Some(Value::Null) => {
            extra.insert("content".into(), Value::Null);
            None
        }
        Some(Value::String(s)) => Some(MessageContent::Text(s)),
        Some(Value::Array(parts)) => Some(MessageContent::Parts(parts)),
        Some(other) => {
            return Err(wrong_type(
                &format!("{}.content", path()),
                "a string or an array of content parts",
                &other,
            ))
        }
    };
    Ok(ChatMessage {
        role,
        content,
        extra,
    })
}

/// `messages` as parsed: each message object split into `role`, `content` and the rest while
/// it is read, so that no map is built (and hashed into) only to take two keys out again.
enum MessagesJson {
    Array(Vec<MessageJson>),
    /// Not an array: the kind of JSON it was, for the error.
    Other(&'static str),
}

enum MessageJson {
    Object {
        role: Option<Value>,
        content: Option<Value>,
        /// Every other key, in order; a repeated key keeps its first position and last value.
        extra: Map<String, Value>,
    },
    Other(&'static str),
}

impl MessagesJson {
    fn from_value(value: Value) -> MessagesJson {
        match value {
            Value::Array(items) => {
                MessagesJson::Array(items.into_iter().map(MessageJson::from_value).collect())
            }
            other => MessagesJson::Other(json_type_name(&other)),
        }
    }
}

impl MessageJson {
    fn from_value(value: Value) -> MessageJson {
        match value {
            Value::Object(mut map) => MessageJson::Object {
                role: map.shift_remove("role"),
                content: map.shift_remove("content"),
                extra: map,
            },
            other => MessageJson::Other(json_type_name(&other)),
        }
    }
}

/// What a JSON value other than the expected kind was, read past and named for the error.
///
/// It is read as JSON values, as everywhere else in the request, not skipped with
/// `IgnoredAny`: that accepts what a `Value` refuses (`1e400`, a lone surrogate, nesting past
/// serde_json's depth limit), so a body the map path calls "not valid JSON" would get a field
/// error here instead, or be accepted when a later repeat of the key was valid. Only a body
/// that is already wrong pays for building the values.
struct KindOf;

impl KindOf {
    fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<&'static str, A::Error> {
        while map.next_entry::<String, Value>()?.is_some() {}
        Ok("an object")
    }

    fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<&'static str, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok("an array")
    }
}

/// The `visit_*` methods of a visitor that accepts one kind of JSON value and turns every
/// other kind into `$other(kind name)`.
macro_rules! other_kinds {
    ($other:path) => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other("null"))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other("a string"))
        }
    };
}

impl<'de> Deserialize<'de> for MessagesJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MessagesJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MessagesJson, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(m) = seq.next_element()? {
                    items.push(m);
                }
                Ok(MessagesJson::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<MessagesJson, A::Error> {
                KindOf::skip_map(map).map(MessagesJson::Other)
            }
            other_kinds!(MessagesJson::Other);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for MessageJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MessageJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MessageJson, A::Error> {
                let (mut role, mut content, mut extra) = (None, None, Map::new());
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value: Value = map.next_value()?;
                    match &*key {
                        "role" => role = Some(value),
                        "content" => content = Some(value),
                        _ => {
                            extra.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(MessageJson::Object {
                    role,
                    content,
                    extra,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<MessageJson, A::Error> {
                KindOf::skip_seq(seq).map(MessageJson::Other)
            }
            other_kinds!(MessageJson::Other);
        }
        d.deserialize_any(V)
    }
}

fn parse_tool(index: usize, value: Value) -> Result<Tool, RequestError> {
    let path = || format!("tools[{index}]");
    let Value::Object(mut map) = value else {
        return Err(wrong_type(&path(), "an object", &value));
    };
    let kind = string_field(map.shift_remove("type"), || format!("{}.type", path()))?;
    let function = match map.shift_remove("function") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut f)) => {
            let name = string_field(f.shift_remove("name"), || {
                format!("{}.function.name", path())
            })?;
            let parameters = f.shift_remove("parameters").filter(|p| !p.is_null());
            Some(FunctionDefinition {
                name,
                parameters,
                extra: f,
            })
        }
        Some(other) => {
            return Err(wrong_type(
                &format!("{}.function", path()),
                "an object",
                &other,
            ))
        }
    };
    Ok(Tool {
        kind,
        function,
        extra: map,
    })
}

fn insert_opt<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        map.insert(key.to_owned(), v.into());
    }
}

impl From<ChatCompletionRequest> for Map<String, Value> {
    fn from(r: ChatCompletionRequest) -> Self {
        let mut map = Map::new();
        map.insert("model".into(), Value::String(r.model));
        map.insert(
            "messages".into(),
            Value::Array(r.messages.into_iter().map(Value::from).collect()),
        );
        insert_opt(&mut map, "stream", r.stream);
        if let Some(o) = r.stream_options {
            let mut m = o.extra;
            insert_opt(&mut m, "include_usage", o.include_usage);
            map.insert("stream_options".into(), Value::Object(m));
        }
        insert_opt(&mut map, "max_tokens", r.max_tokens);
        insert_opt(&mut map, "max_completion_tokens", r.max_completion_tokens);
        insert_opt(&mut map, "seed", r.seed);
        if let Some(tools) = r.tools {
            map.insert(
                "tools".into(),
                Value::Array(tools.into_iter().map(Value::from).collect()),
            );
        }
        insert_opt(&mut map, "tool_choice", r.tool_choice);
        for (k, v) in r.extra {
            map.insert(k, v);
        }
        map
    }
}

impl From<ChatMessage> for Value {
    fn from(m: ChatMessage) -> Self {
        let mut map = Map::new();
        map.insert("role".into(), Value::String(m.role));
        match m.content {
            Some(MessageContent::Text(s)) => {
                map.insert("content".into(), Value::String(s));
            }
            Some(MessageContent::Parts(p)) => {
                map.insert("content".into(), Value::Array(p));
            }
            None => {}
        }
        map.extend(m.extra);
        Value::Object(map)
    }
}

impl From<Tool> for Value {
    fn from(t: Tool) -> Self {
        let mut map = Map::new();
        map.insert("type".into(), Value::String(t.kind));
        if let Some(f) = t.function {
            let mut fm = Map::new();
            fm.insert("name".into(), Value::String(f.name));
            insert_opt(&mut fm, "parameters", f.parameters);
            fm.extend(f.extra);
            map.insert("function".into(), Value::Object(fm));
        }
        map.extend(t.extra);
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatCompletionRequest, RequestError> {
        ChatCompletionRequest::from_slice(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi", "name": "bob"},
                         {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}],
            "response_format": {"type": "json_object"},
            "logprobs": true,
            "vendor_extra": {"deep": [1, 2, 3]},
            "stream": true,
            "stream_options": {"include_usage": true, "continuous_usage_stats": false},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": "auto",
            "max_tokens": 7,
            "seed": -3
        });
        let req = parse(body.clone()).unwrap();
        assert_eq!(req.model, "m");
        assert!(req.is_stream());
        assert!(req.wants_stream_usage());
        assert_eq!(req.output_cap(), Some(7));
        assert_eq!(req.seed, Some(-3));
        let back: Value = serde_json::from_slice(&req.to_json_vec()).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(json!({"messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(json!({"model": "m"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse(json!({"model": "m", "messages": [{"content": "x"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e =
            parse(json!({"model": "m", "messages": [{"role": "user", "content": 5}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse(json!({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream"));
        assert!(e.message.contains("boolean"), "{}", e.message);
        let e = parse(json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -1}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = ChatCompletionRequest::from_slice(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = ChatCompletionRequest::from_slice(b"[1]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        // Invalid UTF-8, inside a string or out of one, names the byte where it starts.
        for (body, at) in [
            (&b"{\"model\":\"m\xff\",\"messages\":[]}"[..], "index 11"),
            (&b"{\"model\":\"m\",\xc3}"[..], "index 13"),
        ] {
            let e = ChatCompletionRequest::from_slice(body).unwrap_err();
            assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
            assert!(e.message.contains(at), "{}", e.message);
            assert_eq!(e.param, None);
        }
        // Escaped non-ASCII and real non-ASCII text are fine.
        let r = ChatCompletionRequest::from_slice(
            "{\"model\":\"m\\u00e9\",\"messages\":[{\"role\":\"user\",\"content\":\"h\u{e9}llo \u{1f600}\"}]}"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.model, "m\u{e9}");
    }

    #[test]
    fn the_fast_parse_agrees_with_the_map_parse() {
        // `from_slice` reads the top level field by field; deserializing the type goes through
        // a JSON map. Both must accept, reject and keep exactly the same things.
        let bodies = [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
            r#"{"temperature":1,"model":"a","model":"b","messages":[{"role":"user"}],"x":1,"x":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":null,"name":"n"}],"stream":true,"stream_options":{"include_usage":true,"k":1}}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":null,"seed":-3}"#,
            r#"{"m\u006fdel":"m","messages":[{"role":"user"}]}"#,
            r#"{"model":5,"messages":[]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"type":"function","function":7}]}"#,
            r#"{"model":"m","messages":[1]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_completion_tokens":4294967296}"#,
            r#"{"model":"m","messages":{"role":"user"}}"#,
            r#"{"model":"m","messages":"hi"}"#,
            r#"{"model":"m","messages":null}"#,
            r#"{"model":"m","messages":[[{"role":"user"}]]}"#,
            r#"{"model":"m","messages":[{"name":"a","role":"x","content":"c","role":"user","tool_call_id":"t"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},{"role":7}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":{"text":"x"}}]}"#,
            r#"{"user":"u","model":"m","x":1,"messages":[{"role":"user"}],"temperature":0}"#,
        ];
        for body in bodies {
            let fast = ChatCompletionRequest::from_slice(body.as_bytes());
            let via_map: Result<ChatCompletionRequest, _> =
                serde_json::from_str::<Map<String, Value>>(body)
                    .unwrap()
                    .try_into();
            assert_eq!(fast, via_map, "{body}");
            // `==` on a map ignores its order; the bytes forwarded do not.
            if let (Ok(fast), Ok(via_map)) = (&fast, &via_map) {
                assert_eq!(fast.to_json_vec(), via_map.to_json_vec(), "{body}");
            }
        }
        // Taking the typed fields out of the map keeps the others in order (a `remove` under
        // `preserve_order` swapped the last field into the gap: `user`, `temperature`, `x`).
        let m: ChatCompletionRequest = serde_json::from_str(bodies[16]).unwrap();
        assert_eq!(
            m.extra.keys().collect::<Vec<_>>(),
            ["user", "x", "temperature"]
        );
        let m = ChatCompletionRequest::from_slice(bodies[13].as_bytes()).unwrap();
        assert_eq!(
            m.messages[0].role, "user",
            "a repeated key's last value wins"
        );
        assert_eq!(
            m.messages[0].extra.keys().collect::<Vec<_>>(),
            ["name", "tool_call_id"],
            "other message keys keep their order"
        );
        let e = ChatCompletionRequest::from_slice(bodies[10].as_bytes()).unwrap_err();
        assert_eq!(
            e.message,
            "`messages` must be an array of messages, got a string"
        );
        let e = ChatCompletionRequest::from_slice(bodies[12].as_bytes()).unwrap_err();
        assert_eq!(e.message, "`messages[0]` must be an object, got an array");
        let dup = ChatCompletionRequest::from_slice(bodies[1].as_bytes()).unwrap();
        assert_eq!(dup.model, "b");
        assert_eq!(dup.extra.get("x"), Some(&json!(2)));
        assert_eq!(
            dup.extra.keys().collect::<Vec<_>>(),
            ["temperature", "x"],
            "unknown fields keep their first position"
        );
        for (body, kind) in [
            ("null", "null"),
            ("\"s\"", "a string"),
            ("3", "a number"),
            ("true", "a boolean"),
        ] {
            let e = ChatCompletionRequest::from_slice(body.as_bytes()).unwrap_err();
            assert_eq!(
                e.message,
                format!("request body must be a JSON object, got {kind}")
            );
        }
    }

    /// A value serde_json refuses (`1e400`, a lone surrogate, nesting past its depth limit)
    /// makes the body "not valid JSON" wherever it sits, as it does for the map parse: also
    /// inside a `messages` or a message of the wrong kind, which `from_slice` once skipped
    /// unchecked and reported as a field error instead, or accepted when a later `messages`
    /// was valid.
    #[test]
    fn what_serde_json_refuses_is_not_json_wherever_it_sits() {
        // serde_json refuses a 128th nested container: here the top level, `messages`, `n`.
        let nested = |n: usize| {
            format!(
                r#"{{"model":"m","messages":[{}1{}]}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let deep = nested(126);
        for body in [
            r#"{"model":"m","messages":{"x":1e400}}"#,
            r#"{"model":"m","messages":[["\ud800"]]}"#,
            r#"{"model":"m","messages":{"\ud800":1}}"#,
            r#"{"messages":[{"role":"user"},[{"b":"\udc00"}]]}"#,
            r#"{"model":"m","messages":{"x":"\ud800"},"messages":[{"role":"user"}]}"#,
            &deep,
            "[1e400]",
        ] {
            assert!(serde_json::from_str::<Value>(body).is_err(), "{body}");
            let e = ChatCompletionRequest::from_slice(body.as_bytes()).unwrap_err();
            assert_eq!(e.param, None, "{body}");
            assert!(
                e.message.starts_with("request body is not valid JSON"),
                "{body}: {}",
                e.message
            );
        }
        // One level less deep, the body is JSON and its `messages[0]` is wrong.
        let e = ChatCompletionRequest::from_slice(nested(125).as_bytes()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0]"), "{}", e.message);
    }

    #[test]
    fn content_parts_give_their_text() {
        let req = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "b"}]}]}),
        )
        .unwrap();
        assert_eq!(req.messages[0].content.as_ref().unwrap().text(), "a\nb");
    }

    /// Rewriting a request (a renamed model, usage asked for) keeps every unknown key of
    /// tools, functions and `stream_options` where the client put it.
    #[test]
    fn unknown_keys_inside_tools_and_stream_options_keep_their_order() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":false,"z":1,"a":2},"tools":[{"type":"function","z":1,"a":2,"function":{"name":"f","y":1,"b":2}}]}"#;
        let request = ChatCompletionRequest::from_slice(body).unwrap();
        let out = String::from_utf8(request.to_json_vec()).unwrap();
        for (first, second) in [(r#""z":1"#, r#""a":2"#), (r#""y":1"#, r#""b":2"#)] {
            for part in [out.find("stream_options"), out.find("tools")] {
                let from = part.unwrap();
                let (Some(f), Some(s)) = (out[from..].find(first), out[from..].find(second)) else {
                    continue;
                };
                assert!(f < s, "{out}");
            }
        }
    }
}
