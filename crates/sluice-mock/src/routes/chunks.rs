//! Encoding of `chat.completion.chunk` events.
//!
//! Token chunks differ only in their content, and a fast mock sends hundreds of thousands a
//! second, so they are spliced into a template made once per request from a serialized
//! [`ChatCompletionChunk`] instead of being serialized one by one.

use sluice_api::chat::{ChatCompletionChunk, ChunkChoice, Delta, FinishReason, UsageField};
use sluice_api::sse::encode_event;

const MARKER: &str = "__sluice_mock_token__";

pub(crate) struct ChunkEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The serialized token chunk around its content string, when the split worked.
    token_template: Option<(String, String)>,
}

impl ChunkEncoder {
    pub(crate) fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        let mut encoder = ChunkEncoder {
            id,
            created,
            model,
            include_usage,
            token_template: None,
        };
        let sample = encoder.chunk(content_delta(MARKER.to_owned()), None);
        let quoted_marker = format!("\"content\":\"{MARKER}\"");
        // Only the delta holds an unescaped `"content":"`; any other string in the chunk
        // has its quotes escaped, so the split cannot land in the model name.
        encoder.token_template = serde_json::to_string(&sample).ok().and_then(|json| {
            let at = json.find(&quoted_marker)?;
            let head = format!("data: {}\"content\":", json.get(..at)?);
            let tail = format!("{}\n\n", json.get(at + quoted_marker.len()..)?);
            Some((head, tail))
        });
        encoder
    }

    pub(crate) fn chunk(
        &self,
        delta: Delta,
        finish_reason: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
            usage: if self.include_usage {
                UsageField::Null
            } else {
                UsageField::Absent
            },
            system_fingerprint: Some(super::chat::SYSTEM_FINGERPRINT.to_owned()),
        }
    }

    /// Appends one event carrying `chunk`.
    pub(crate) fn push_chunk(&self, out: &mut Vec<u8>, chunk: &ChatCompletionChunk) {
        // Serializing these types cannot fail: all keys are strings, all numbers integers.
        let json = serde_json::to_string(chunk).unwrap_or_default();
        out.extend_from_slice(encode_event(None, &json).as_bytes());
    }

    /// Appends the event of a chunk whose delta is the content `token`.
    pub(crate) fn push_token(&self, out: &mut Vec<u8>, token: &str) {
        match &self.token_template {
            Some((head, tail)) => {
                out.extend_from_slice(head.as_bytes());
                // A string always serializes; the JSON escapes keep it on one line.
                let _ = serde_json::to_writer(&mut *out, token);
                out.extend_from_slice(tail.as_bytes());
            }
            None => self.push_chunk(out, &self.chunk(content_delta(token.to_owned()), None)),
        }
    }
}

pub(crate) fn content_delta(content: String) -> Delta {
    Delta {
        content: Some(content),
        ..Delta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_tokens_equal_serialized_chunks() {
        for (model, usage) in [
            ("mock", true),
            ("m\"content\":\"__sluice_mock_token__\"", false),
        ] {
            let enc = ChunkEncoder::new("chatcmpl-1".into(), 42, model.into(), usage);
            assert!(enc.token_template.is_some());
            for token in [" word", "\"", "\n", "é", "", "\\u0000"] {
                let mut spliced = Vec::new();
                enc.push_token(&mut spliced, token);
                let mut serialized = Vec::new();
                enc.push_chunk(
                    &mut serialized,
                    &enc.chunk(content_delta(token.into()), None),
                );
                assert_eq!(
                    String::from_utf8(spliced).unwrap(),
                    String::from_utf8(serialized).unwrap()
                );
            }
        }
    }
}
