//! One error type for the request path. Each variant decides, where the error is made, its
//! status, whether trying another endpoint is safe, and its metric kind; retries, status
//! codes and metric labels are all read off it. Messages name an endpoint by its configured
//! label, never by its URL or address: they reach clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_api::ErrorResponse;

impl From<crate::services::AuthError> for GatewayError {
    fn from(e: crate::services::AuthError) -> Self {
        use crate::services::AuthError;
        GatewayError::Unauthorized {
            reason: match e {
                AuthError::Missing => {
                    "this gateway needs an API key: send `Authorization: Bearer KEY`"
                }
                AuthError::Invalid => {
                    "the API key is not valid (unknown or revoked); ask your gateway's admin for a key"
                }
                AuthError::Expired => {
                    "the API key has expired; ask your gateway's admin for a new one"
                }
            },
        }
    }
}

/// Which deadline expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    /// Waiting for a connection of the endpoint's pool (none idle, connects at their limit):
    /// nothing was sent.
    PoolWait,
    FirstByte,
    Total,
}

impl TimeoutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::PoolWait => "pool_wait",
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

    #[error("the request body did not arrive in time: {what} ({limit:?})")]
    RequestTimeout {
        what: &'static str,
        limit: std::time::Duration,
    },

    #[error("{reason}")]
    Unauthorized { reason: &'static str },

    #[error("this API key may not use model `{model}`")]
    ModelNotAllowed { model: String },

    #[error("this API key lacks the `{scope}` scope this route needs; ask your gateway's admin for a key with it")]
    ScopeMissing { scope: crate::auth::Scope },

    /// A resource the caller may not see is reported as absent: another tenant's key looks
    /// exactly like no key at all.
    #[error("no {what} `{name}`")]
    NotFound { what: &'static str, name: String },

    /// The gateway's own store failed (not the caller's doing, not an upstream's).
    #[error(
        "the gateway's store failed; try again, and tell the gateway's operator if it persists"
    )]
    StoreFailed,

    #[error("rate limit reached: {reason}; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited {
        reason: String,
        retry_after: std::time::Duration,
    },

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
        /// Boxed: every phase returns a `Result` with this error, which would otherwise be
        /// as large as this rare variant.
        answer: Box<RejectedAnswer>,
    },

    #[error("upstream {endpoint} failed with {status}: {excerpt}")]
    UpstreamFailed {
        endpoint: String,
        status: StatusCode,
        excerpt: String,
    },

    #[error("upstream {endpoint} is unreachable: {reason}")]
    UpstreamUnreachable { endpoint: String, reason: String },

    #[error("{}", timeout_message(endpoint, *phase, *limit))]
    UpstreamTimeout {
        endpoint: String,
        phase: TimeoutPhase,
        limit: std::time::Duration,
    },

    #[error("upstream {endpoint} sent an invalid response: {reason}")]
    UpstreamProtocol { endpoint: String, reason: String },
}

fn timeout_message(endpoint: &str, phase: TimeoutPhase, limit: std::time::Duration) -> String {
    match phase {
        TimeoutPhase::PoolWait => format!(
            "no connection to upstream {endpoint} came free within the first_byte timeout ({limit:?}); the request was not sent"
        ),
        _ => format!(
            "upstream {endpoint} did not answer within the {} timeout ({limit:?})",
            phase.as_str()
        ),
    }
}

/// What of an upstream's 4xx answer is passed to the client.
#[derive(Debug)]
pub struct RejectedAnswer {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
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
            GatewayError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::ModelNotAllowed { .. } | GatewayError::ScopeMissing { .. } => {
                StatusCode::FORBIDDEN
            }
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::StoreFailed => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::UpstreamRejected { status, .. } => *status,
            GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the request may be sent to another endpoint: only when it provably never
    /// reached this one, so a retry cannot run a generation twice.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnreachable { .. }
                | GatewayError::UpstreamTimeout {
                    phase: TimeoutPhase::Connect | TimeoutPhase::PoolWait,
                    ..
                }
        )
    }

    /// The `kind` label of `sluice_upstream_errors_total`, or `None` for client errors.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout { .. }
            | GatewayError::Unauthorized { .. }
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::ScopeMissing { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::StoreFailed
            | GatewayError::RateLimited { .. }
            | GatewayError::ModelNotFound { .. } => return None,
            GatewayError::UpstreamRejected { .. } => "status_4xx",
            GatewayError::UpstreamFailed { .. } => "status_5xx",
            GatewayError::UpstreamUnreachable { .. } => "connect",
            GatewayError::UpstreamTimeout { phase, .. } => match phase {
                TimeoutPhase::Connect => "timeout_connect",
                TimeoutPhase::PoolWait => "timeout_pool_wait",
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
            GatewayError::RequestTimeout { .. } => {
                ErrorResponse::new("invalid_request_error", Some("request_timeout"), message)
            }
            GatewayError::Unauthorized { .. } => {
                ErrorResponse::new("authentication_error", Some("invalid_api_key"), message)
            }
            GatewayError::ModelNotAllowed { .. } => {
                ErrorResponse::new("permission_error", Some("model_not_allowed"), message)
                    .with_param("model")
            }
            GatewayError::ScopeMissing { .. } => {
                ErrorResponse::new("permission_error", Some("insufficient_scope"), message)
            }
            GatewayError::NotFound { .. } => {
                ErrorResponse::new("invalid_request_error", Some("not_found"), message)
            }
            GatewayError::StoreFailed => {
                ErrorResponse::new("server_error", Some("store_failed"), message)
            }
            GatewayError::RateLimited { .. } => {
                ErrorResponse::new("rate_limit_error", Some("rate_limit_exceeded"), message)
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
        if let GatewayError::UpstreamRejected { status, answer, .. } = self {
            let RejectedAnswer {
                body,
                content_type,
                retry_after,
            } = *answer;
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
        let mut response = json_error(status, &self.to_body());
        if let GatewayError::RateLimited { retry_after, .. } = &self {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
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
