//! One error type for the request path. Each variant records which side failed and whether
//! trying another endpoint is safe, decided where the error happens; status codes, retries and
//! metric labels are all read off it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_api::ErrorResponse;

/// Which side of the gateway an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    Client,
    Upstream,
    Internal,
}

/// Which deadline expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    FirstByte,
    Total,
}

impl TimeoutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Total => "total",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },

    #[error("the request body is larger than the {limit_mib} MiB limit")]
    PayloadTooLarge { limit_mib: usize },

    #[error("model `{model}` is not configured on this gateway; available models: {}", available.join(", "))]
    ModelNotFound {
        model: String,
        available: Vec<String>,
    },

    /// The upstream answered 4xx: the client's request was at fault, so its answer is passed
    /// through unchanged.
    #[error("upstream {endpoint} answered {status}")]
    UpstreamRejected {
        endpoint: String,
        status: StatusCode,
        body: Bytes,
        content_type: Option<HeaderValue>,
        retry_after: Option<HeaderValue>,
    },

    #[error("upstream {endpoint} failed with {status}: {excerpt}")]
    UpstreamFailed {
        endpoint: String,
        status: StatusCode,
        excerpt: String,
    },

    #[error("upstream {endpoint} is unreachable: {reason}")]
    UpstreamUnreachable { endpoint: String, reason: String },

    #[error("upstream {endpoint} did not answer within the {} timeout ({:?})", phase.as_str(), limit)]
    UpstreamTimeout {
        endpoint: String,
        phase: TimeoutPhase,
        limit: std::time::Duration,
    },

    #[error("upstream {endpoint} sent an invalid response: {reason}")]
    UpstreamProtocol { endpoint: String, reason: String },
}

impl GatewayError {
    pub fn invalid_request(message: impl Into<String>, param: Option<String>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::UpstreamRejected { status, .. } => *status,
            GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn side(&self) -> ErrorSide {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::ModelNotFound { .. } => ErrorSide::Client,
            GatewayError::UpstreamRejected { .. }
            | GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamProtocol { .. } => ErrorSide::Upstream,
        }
    }

    /// Whether the request may be sent to another endpoint: only when it provably never
    /// reached this one, so a retry cannot run a generation twice.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnreachable { .. }
                | GatewayError::UpstreamTimeout {
                    phase: TimeoutPhase::Connect,
                    ..
                }
        )
    }

    /// The `kind` label of `sluice_upstream_errors_total`, or `None` for client errors.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::ModelNotFound { .. } => return None,
            GatewayError::UpstreamRejected { .. } => "status_4xx",
            GatewayError::UpstreamFailed { .. } => "status_5xx",
            GatewayError::UpstreamUnreachable { .. } => "connect",
            GatewayError::UpstreamTimeout { phase, .. } => match phase {
                TimeoutPhase::Connect => "timeout_connect",
                TimeoutPhase::FirstByte => "timeout_first_byte",
                TimeoutPhase::Total => "timeout_total",
            },
            GatewayError::UpstreamProtocol { .. } => "protocol",
        })
    }

    /// The OpenAI-shaped body for this error.
    pub fn to_body(&self) -> ErrorResponse {
        let message = self.to_string();
        match self {
            GatewayError::InvalidRequest { param, .. } => {
                let e = ErrorResponse::new("invalid_request_error", None, message);
                match param {
                    Some(p) => e.with_param(p.clone()),
                    None => e,
                }
            }
            GatewayError::PayloadTooLarge { .. } => {
                ErrorResponse::new("invalid_request_error", Some("request_too_large"), message)
            }
            GatewayError::ModelNotFound { .. } => {
                ErrorResponse::new("invalid_request_error", Some("model_not_found"), message)
                    .with_param("model")
            }
            GatewayError::UpstreamRejected { .. } | GatewayError::UpstreamFailed { .. } => {
                ErrorResponse::new("upstream_error", Some("upstream_error"), message)
            }
            GatewayError::UpstreamUnreachable { .. } => {
                ErrorResponse::new("upstream_error", Some("upstream_unreachable"), message)
            }
            GatewayError::UpstreamTimeout { .. } => {
                ErrorResponse::new("upstream_error", Some("upstream_timeout"), message)
            }
            GatewayError::UpstreamProtocol { .. } => {
                ErrorResponse::new("upstream_error", Some("upstream_protocol_error"), message)
            }
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::UpstreamRejected {
            status,
            body,
            content_type,
            retry_after,
            ..
        } = self
        {
            let mut resp = (status, body).into_response();
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            if let Some(ra) = retry_after {
                headers.insert(header::RETRY_AFTER, ra);
            }
            return resp;
        }
        let status = self.status();
        json_error(status, &self.to_body())
    }
}

pub fn json_error(status: StatusCode, body: &ErrorResponse) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_json(),
    )
        .into_response()
}
