//! The OpenAI error envelope.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`, the body of every non-2xx answer of an OpenAI-compatible API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

/// The error object. `type` is the broad class (`invalid_request_error`, `api_error`, ...);
/// `code` a stable machine-readable reason; `param` the request field at fault, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorResponse {
    pub fn new(kind: impl Into<String>, code: Option<&str>, message: impl Into<String>) -> Self {
        ErrorResponse {
            error: ErrorObject {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: code.map(str::to_owned),
            },
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    /// Serialises to JSON. Infallible for this type: every field is a string or null.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(
                r#"{"error":{"message":"error","type":"api_error","param":null,"code":null}}"#,
            )
        })
    }
}
