//! The three request fields a proxy acts on, read from a body that is checked as the full
//! parse would check it but not built into a [`ChatCompletionRequest`].
//!
//! The gateway forwards the client's bytes unchanged in the common case and reads only
//! `model`, `stream` and `stream_options.include_usage`. Building the whole request (every
//! message's strings, every unknown field as a JSON value) is work a relay throws away, and
//! it grows with the prompt (docs/benchmarks-log.md has the measurement). [`ProxyFields::read`]
//! walks the same JSON with serde, borrowing instead of building, and applies the same
//! type rules.
//!
//! It answers only for bodies it is sure about. Anything unusual — a repeated typed key,
//! `tools`, an escaped string where it wants a borrowed one, a number of another kind, any
//! error at all — makes it answer `None`, and the caller runs
//! [`ChatCompletionRequest::from_slice`], which stays the one authority on what a valid
//! request is and on the words of every error. The promise, checked by the tests against
//! that parse: when `read` returns fields, `from_slice` accepts the body and agrees on them.
//!
//!
//! A stream that did not ask for usage gets `stream_options.include_usage` added by
//! [`ProxyFields::with_stream_usage`]: an insertion into the client's bytes, where the full
//! parse would rebuild and re-serialise the whole request.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::ChatCompletionRequest;

/// `model`, `stream` and `stream_options.include_usage` of a valid chat request. The default
/// is what a request with none of them would say (an empty model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyFields {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`, false when absent or null.
    pub include_usage: bool,
    /// Whether the body is known to have no `stream_options` key at all (not even `null`).
    no_stream_options: bool,
}

impl ProxyFields {
    /// The fields of `body` when it is certainly a valid request; `None` when the full
    /// parse must decide (which includes every invalid body).
    pub fn read(body: &[u8]) -> Option<ProxyFields> {
        // The same whole-body UTF-8 check as the full parse, so the two see the same text.
        let text = std::str::from_utf8(body).ok()?;
        serde_json::from_str::<TopLevel>(text).ok().map(|t| t.0)
    }

    /// The fields of a request the full parse built.
    pub fn of(request: &ChatCompletionRequest) -> ProxyFields {
        ProxyFields {
            model: request.model.clone(),
            stream: request.is_stream(),
            include_usage: request.wants_stream_usage(),
            // The parse maps `"stream_options": null` to `None`, so the key may be there.
            no_stream_options: false,
        }
    }

    /// `body` (the one these fields were read from) asking for a final usage chunk, when
    /// that takes only an insertion: the body has no `stream_options` key. The client's
    /// bytes stay as they were around the inserted member, which goes first.
    pub fn with_stream_usage(&self, body: &[u8]) -> Option<Vec<u8>> {
        if !self.no_stream_options {
            return None;
        }
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' {
            return None;
        }
        // `model` and `messages` are there, so a comma after the new member is right.
        const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
        let mut out = Vec::with_capacity(body.len() + MEMBER.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(&body[open + 1..]);
        Some(out)
    }
}

/// Any error: "let the full parse decide". Its text is never shown.
fn undecided<E: de::Error>() -> E {
    E::custom("left to the full parse")
}

struct TopLevel(ProxyFields);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a chat request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut model: Option<String> = None;
        let mut messages = false;
        let mut stream: Option<Option<bool>> = None;
        let mut stream_options: Option<Option<StreamOptionsCheck>> = None;
        // Typed keys seen so far; a repeat is left to the full parse (there, the last wins).
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "model" => {
                    seen.first(0)?;
                    model = Some(map.next_value()?);
                }
                "messages" => {
                    seen.first(1)?;
                    map.next_value::<MessagesCheck>()?;
                    messages = true;
                }
                "stream" => {
                    seen.first(2)?;
                    stream = Some(map.next_value()?);
                }
                "stream_options" => {
                    seen.first(3)?;
                    stream_options = Some(map.next_value()?);
                }
                "max_tokens" => {
                    seen.first(4)?;
                    map.next_value::<Option<U32Check>>()?;
                }
                "max_completion_tokens" => {
                    seen.first(5)?;
                    map.next_value::<Option<U32Check>>()?;
                }
                "seed" => {
                    seen.first(6)?;
                    map.next_value::<Option<I64Check>>()?;
                }
                "tools" => {
                    // Tools have rules of their own; offered tools are rare on the hot path.
                    seen.first(7)?;
                    map.next_value::<NullCheck>()?;
                }
                "tool_choice" => {
                    seen.first(8)?;
                    map.next_value::<AnyCheck>()?;
                }
                _ => {
                    map.next_value::<AnyCheck>()?;
                }
            }
        }
        if !messages {
            return Err(undecided());
        }
        let Some(model) = model else {
            return Err(undecided());
        };
        Ok(TopLevel(ProxyFields {
            model,
            stream: stream.flatten().unwrap_or(false),
            no_stream_options: stream_options.is_none(),
            include_usage: stream_options
                .flatten()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        }))
    }
}

/// Which of a few keys an object has had.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first<E: de::Error>(&mut self, bit: u32) -> Result<(), E> {
        if self.0 & (1 << bit) != 0 {
            return Err(undecided());
        }
        self.0 |= 1 << bit;
        Ok(())
    }
}

/// `messages`: a non-empty array of message objects.
struct MessagesCheck;

impl<'de> Deserialize<'de> for MessagesCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessagesCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessagesCheck, A::Error> {
                let mut count = 0usize;
                while seq.next_element::<MessageCheck>()?.is_some() {
                    count += 1;
                }
                if count == 0 {
                    return Err(undecided());
                }
                Ok(MessagesCheck)
            }
        }
        d.deserialize_any(V)
    }
}

/// One message: an object with a string `role`, a `content` that is a string, an array of
/// parts or null, and any other keys.
struct MessageCheck;

impl<'de> Deserialize<'de> for MessageCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessageCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageCheck, A::Error> {
                let mut seen = Seen::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "role" => {
                            seen.first(0)?;
                            map.next_value::<StrCheck>()?;
                        }
                        "content" => {
                            seen.first(1)?;
                            map.next_value::<ContentCheck>()?;
                        }
                        _ => {
                            map.next_value::<AnyCheck>()?;
                        }
                    }
                }
                if seen.0 & 1 == 0 {
                    return Err(undecided());
                }
                Ok(MessageCheck)
            }
        }
        d.deserialize_any(V)
    }
}

/// `stream_options`: an object whose `include_usage` is a boolean or null.
struct StreamOptionsCheck {
    include_usage: Option<bool>,
}

impl<'de> Deserialize<'de> for StreamOptionsCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptionsCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a stream_options object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StreamOptionsCheck, A::Error> {
                let mut include_usage = None;
                let mut seen = Seen::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "include_usage" {
                        seen.first(0)?;
                        include_usage = map.next_value::<Option<bool>>()?;
                    } else {
                        map.next_value::<AnyCheck>()?;
                    }
                }
                Ok(StreamOptionsCheck { include_usage })
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON string.
struct StrCheck;

impl<'de> Deserialize<'de> for StrCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrCheck, E> {
                Ok(StrCheck)
            }
        }
        d.deserialize_any(V)
    }
}

/// Message content: a string, an array of parts (any JSON each), or null.
struct ContentCheck;

impl<'de> Deserialize<'de> for ContentCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("message content")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ContentCheck, E> {
                Ok(ContentCheck)
            }
            fn visit_unit<E: de::Error>(self) -> Result<ContentCheck, E> {
                Ok(ContentCheck)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentCheck, A::Error> {
                while seq.next_element::<AnyCheck>()?.is_some() {}
                Ok(ContentCheck)
            }
        }
        d.deserialize_any(V)
    }
}

/// A non-negative integer that fits in 32 bits, read as serde_json reads an unsigned one.
struct U32Check;

impl<'de> Deserialize<'de> for U32Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = U32Check;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an unsigned integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U32Check, E> {
                u32::try_from(v).map(|_| U32Check).map_err(|_| undecided())
            }
        }
        d.deserialize_any(V)
    }
}

/// A 64-bit signed integer.
struct I64Check;

impl<'de> Deserialize<'de> for I64Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = I64Check;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<I64Check, E> {
                Ok(I64Check)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<I64Check, E> {
                i64::try_from(v).map(|_| I64Check).map_err(|_| undecided())
            }
        }
        d.deserialize_any(V)
    }
}

/// JSON null.
struct NullCheck;

impl<'de> Deserialize<'de> for NullCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NullCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<NullCheck, E> {
                Ok(NullCheck)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value that would parse as a `serde_json::Value`. It is read through
/// `deserialize_any`, as `Value` is, so the same numbers (`1e400` is refused), string escapes
/// and nesting depth are refused; `IgnoredAny` would skip some of those unchecked.
struct AnyCheck;

impl<'de> Deserialize<'de> for AnyCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = AnyCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_unit<E: de::Error>(self) -> Result<AnyCheck, E> {
        Ok(AnyCheck)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyCheck, A::Error> {
        while seq.next_element::<AnyCheck>()?.is_some() {}
        Ok(AnyCheck)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyCheck, A::Error> {
        while map.next_key::<StrCheck>()?.is_some() {
            map.next_value::<AnyCheck>()?;
        }
        Ok(AnyCheck)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The promise: whenever `read` answers, the full parse accepts the body and agrees.
    fn agrees(body: &str) -> Option<ProxyFields> {
        let fields = ProxyFields::read(body.as_bytes())?;
        let full = ChatCompletionRequest::from_slice(body.as_bytes())
            .unwrap_or_else(|e| panic!("read answered for a body the parse refuses ({e}): {body}"));
        assert_eq!(fields.model, full.model, "{body}");
        assert_eq!(fields.stream, full.is_stream(), "{body}");
        assert_eq!(fields.include_usage, full.wants_stream_usage(), "{body}");
        Some(fields)
    }

    #[test]
    fn plain_requests_are_read() {
        let f =
            agrees(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#)
                .unwrap();
        assert_eq!(
            f,
            ProxyFields {
                model: "m".into(),
                stream: false,
                include_usage: false,
                no_stream_options: true,
            }
        );
        let f = agrees(
            r#" {"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"x"}],"name":"n"},{"role":"assistant","content":null,"tool_calls":[{"id":"1","function":{"arguments":"{}"}}]}],
                "model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false},
                "temperature":0.2,"top_p":1,"seed":-3,"max_completion_tokens":4294967295,"tool_choice":"auto","tools":null,
                "response_format":{"type":"json_object"},"logit_bias":{"50256":-100},"stop":["\n\u00e9"],"user":"\ud83d\ude00"} "#,
        )
        .unwrap();
        assert_eq!(f.model, "gpt-4o");
        assert!(f.stream && f.include_usage);
        let f = agrees(
            r#"{"model":"m\u00e9","messages":[{"role":"user"}],"stream":null,"stream_options":null,"seed":9223372036854775807}"#,
        )
        .unwrap();
        assert_eq!(f.model, "m\u{e9}", "an escaped model name is unescaped");
        assert!(!f.stream && !f.include_usage);
    }

    #[test]
    fn what_it_is_unsure_of_goes_to_the_full_parse() {
        // Each of these is valid, but `read` leaves it to `from_slice`.
        for body in [
            r#"{"model":"a","model":"b","messages":[{"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"x","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"stream":"x","stream":true}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        ] {
            assert!(
                ChatCompletionRequest::from_slice(body.as_bytes()).is_ok(),
                "{body}"
            );
            assert_eq!(ProxyFields::read(body.as_bytes()), None, "{body}");
        }
    }

    #[test]
    fn invalid_requests_are_never_read() {
        let deep = format!(
            r#"{{"model":"m","messages":[{{"role":"user"}}],"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let bodies: Vec<&str> = vec![
            "",
            "null",
            "[]",
            "{}",
            "{not json",
            r#"{"model":"m","messages":[{"role":"user"}]} x"#,
            r#"{"model":"m","messages":[{"role":"user"}],}"#,
            r#"{"messages":[{"role":"user"}]}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[1]}"#,
            r#"{"model":"m","messages":[[]]}"#,
            r#"{"model":"m","messages":[{"content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":1}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":{"text":"x"}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[1e400]}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"temperature":1e400}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"x":"\ud800"}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"x":"\q"}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"x":{"\q":1}}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"stream":1}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"stream_options":true}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":"yes"}}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":1.0}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-0}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":4294967296}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"max_completion_tokens":"8"}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"seed":9223372036854775808}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"seed":0.5}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"tools":{}}"#,
            r#"{"model":5,"messages":[{"role":"user"}]}"#,
            &deep,
        ];
        for body in bodies {
            assert!(
                ChatCompletionRequest::from_slice(body.as_bytes()).is_err(),
                "{body}"
            );
            assert_eq!(ProxyFields::read(body.as_bytes()), None, "{body}");
        }
        let not_utf8 = b"{\"model\":\"m\xff\",\"messages\":[{\"role\":\"user\"}]}";
        assert!(ChatCompletionRequest::from_slice(not_utf8).is_err());
        assert_eq!(ProxyFields::read(not_utf8), None);
    }

    /// Every field of a plain request, in turn, set to each kind of JSON value: whatever
    /// `read` answers for, the full parse accepts with the same fields.
    #[test]
    fn read_agrees_with_the_full_parse_on_every_value_kind_in_every_place() {
        let template = r#"{"model":@0,"messages":[{"role":@1,"content":@2,"name":@3},{"role":"user","content":[@4]}],"stream":@5,"stream_options":{"include_usage":@6,"k":@7},"max_tokens":@8,"max_completion_tokens":@9,"seed":@10,"tools":@11,"tool_choice":@12,"temperature":@13}"#;
        let plain = [
            r#""m""#,
            r#""user""#,
            r#""hi""#,
            r#""n""#,
            r#"{"type":"text","text":"x"}"#,
            "true",
            "true",
            "1",
            "16",
            "16",
            "7",
            "null",
            r#""auto""#,
            "0.5",
        ];
        let kinds = [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "1.5",
            "4294967296",
            "18446744073709551616",
            "1e400",
            r#""s""#,
            r#""\u00e9""#,
            r#""\ud800""#,
            "[]",
            "[1]",
            "{}",
            r#"{"a":[null]}"#,
        ];
        let fill = |values: &[&str]| {
            let mut s = template.to_owned();
            for (i, v) in values.iter().enumerate().rev() {
                s = s.replace(&format!("@{i}"), v);
            }
            s
        };
        assert!(
            agrees(&fill(&plain)).is_some(),
            "the template itself is read"
        );
        let (mut read, mut left) = (0, 0);
        for slot in 0..plain.len() {
            for kind in kinds {
                let mut values = plain;
                values[slot] = kind;
                match agrees(&fill(&values)) {
                    Some(_) => read += 1,
                    None => left += 1,
                }
            }
        }
        // Both outcomes occur, so the comparison above was made on real answers.
        assert!(read > 40 && left > 40, "read {read}, left {left}");
    }

    #[test]
    fn stream_usage_is_asked_for_by_an_insertion() {
        let body = " \n{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"x\":{\"y\":[1,2]}} ";
        let fields = agrees(body).unwrap();
        assert!(fields.stream && !fields.include_usage);
        let asked = fields.with_stream_usage(body.as_bytes()).unwrap();
        let asked = std::str::from_utf8(&asked).unwrap();
        let after = agrees(asked).unwrap();
        assert!(after.stream && after.include_usage, "{asked}");
        let full = ChatCompletionRequest::from_slice(asked.as_bytes()).unwrap();
        let original = ChatCompletionRequest::from_slice(body.as_bytes()).unwrap();
        assert_eq!(full.messages, original.messages);
        assert_eq!(full.extra, original.extra);
        assert_eq!(
            asked.replace(r#""stream_options":{"include_usage":true},"#, ""),
            body,
            "nothing else changes"
        );
        // With the key present, even as null or without `include_usage`, there is no insertion.
        for body in [
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":null}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":{"k":1}}"#,
        ] {
            let fields = agrees(body).unwrap();
            assert_eq!(fields.with_stream_usage(body.as_bytes()), None, "{body}");
        }
        // Fields from the full parse never insert: there, a `null` key cannot be told apart.
        let parsed = ChatCompletionRequest::from_slice(body.as_bytes()).unwrap();
        assert_eq!(
            ProxyFields::of(&parsed).with_stream_usage(body.as_bytes()),
            None
        );
    }
}
