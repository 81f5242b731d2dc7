//! Stream chunks (`chat.completion.chunk`) and the summary the gateway reads from them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::response::{FinishReason, Usage};

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// OpenAI sends `"usage": null` on every chunk when usage was requested and the usage
    /// object on the last, choice-less chunk; absent otherwise.
    #[serde(default, skip_serializing_if = "UsageField::is_absent")]
    pub usage: UsageField,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

/// The three states of a chunk's `usage` key: absent, `null`, or present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UsageField {
    #[default]
    Absent,
    Null,
    Present(Usage),
}

impl UsageField {
    pub fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            UsageField::Present(u) => Some(*u),
            _ => None,
        }
    }
}

impl Serialize for UsageField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Present(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for UsageField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<Usage>::deserialize(d)? {
            Some(u) => UsageField::Present(u),
            None => UsageField::Null,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<FinishReason>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl Delta {
    /// Whether this delta carries a token: non-empty content or a tool-call fragment.
    /// This is the event TTFT is measured to (see the LLM metric definitions).
    pub fn carries_token(&self) -> bool {
        self.content.as_deref().is_some_and(|c| !c.is_empty())
            || self.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
    }
}

/// What the gateway reads from a stream chunk it forwards: whether it carries a token, and
/// its usage. Parsing only this much keeps per-chunk cost low; every other field is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChunkSummary {
    #[serde(default)]
    pub choices: Vec<ChunkChoiceSummary>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChunkChoiceSummary {
    #[serde(default)]
    pub delta: Option<Delta>,
}

impl ChunkSummary {
    pub fn carries_token(&self) -> bool {
        self.choices
            .iter()
            .any(|c| c.delta.as_ref().is_some_and(Delta::carries_token))
    }

    /// The last chunk of a stream with `include_usage`: usage and no choices.
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunk_usage_field_has_three_states() {
        let absent: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []
        }))
        .unwrap();
        assert_eq!(absent.usage, UsageField::Absent);
        assert!(!serde_json::to_string(&absent).unwrap().contains("usage"));
        let null: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": null
        }))
        .unwrap();
        assert_eq!(null.usage, UsageField::Null);
        assert!(serde_json::to_string(&null)
            .unwrap()
            .contains("\"usage\":null"));
    }

    #[test]
    fn chunk_summary_finds_tokens_and_usage() {
        let s: ChunkSummary = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        )
        .unwrap();
        assert!(!s.carries_token());
        let s: ChunkSummary =
            serde_json::from_str(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#).unwrap();
        assert!(s.carries_token());
        let s: ChunkSummary = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        )
        .unwrap();
        assert!(s.is_usage_only());
        assert_eq!(s.usage.unwrap().completion_tokens, 2);
    }
}
