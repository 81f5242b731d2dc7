//! OpenAI-shaped error answers.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_api::chat::RequestError;
use sluice_api::error::ErrorResponse;

use crate::faults::Faults;

#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorResponse,
    /// Boxed: rare, and errors travel in `Result`s.
    headers: Option<Box<ErrorHeaders>>,
}

/// Header fields some errors carry.
#[derive(Debug, Clone, Default)]
struct ErrorHeaders {
    retry_after_secs: Option<u64>,
    rate: Option<crate::provider_limits::RateHeaders>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, body: ErrorResponse) -> Self {
        ApiError {
            status,
            body,
            headers: None,
        }
    }

    /// A 400 whose `param` names the offending field, when known.
    pub(crate) fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut body = ErrorResponse::new("invalid_request_error", None, message);
        body.error.param = param.map(str::to_owned);
        ApiError::new(StatusCode::BAD_REQUEST, body)
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorResponse::new("invalid_request_error", Some("invalid_api_key"), message),
        )
    }

    pub(crate) fn not_found(path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorResponse::new(
                "invalid_request_error",
                Some("unknown_url"),
                format!("Unknown request URL: {path}"),
            ),
        )
    }

    /// The error a fault injection answers with, shaped like the real provider's.
    pub(crate) fn injected(faults: &Faults) -> Self {
        let (status, kind, code, message) = match faults.error_status {
            429 => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                "Rate limit reached for requests (injected by sluice mock).",
            ),
            502 => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                "bad_gateway",
                "Bad gateway (injected by sluice mock).",
            ),
            503 => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                "The engine is currently overloaded, please try again later (injected by sluice mock).",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "The server had an error while processing your request (injected by sluice mock).",
            ),
        };
        let mut error = ApiError::new(status, ErrorResponse::new(kind, Some(code), message));
        if status == StatusCode::TOO_MANY_REQUESTS && faults.retry_after_secs > 0 {
            error.headers = Some(Box::new(ErrorHeaders {
                retry_after_secs: Some(faults.retry_after_secs),
                rate: None,
            }));
        }
        error
    }
}

impl ApiError {
    /// A provider-side limit refused the request: 429 as OpenAI answers it, with
    /// `retry-after` (whole seconds, rounded up) and the `x-ratelimit-*` fields.
    pub(crate) fn rate_limited(l: &crate::provider_limits::Limited) -> Self {
        let wait = l.retry_after.as_secs_f64();
        let message = format!(
            "Rate limit reached on {} (sluice mock): limit {}. Please try again in {:.3}s.",
            match l.what {
                "tokens" => "tokens per min (TPM)",
                "requests" => "requests per min (RPM)",
                _ => "requests in flight",
            },
            l.limit,
            wait
        );
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorResponse::new(l.what, Some("rate_limit_exceeded"), message),
        );
        e.headers = Some(Box::new(ErrorHeaders {
            retry_after_secs: Some(wait.ceil().max(1.0) as u64),
            rate: Some(l.headers),
        }));
        e
    }
}

impl From<BytesRejection> for ApiError {
    /// An unreadable or oversized body, in the same envelope as every other error.
    fn from(r: BytesRejection) -> Self {
        ApiError::new(
            r.status(),
            ErrorResponse::new("invalid_request_error", None, r.body_text()),
        )
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::invalid_request(e.message, e.param.as_deref())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body.to_json(),
        )
            .into_response();
        let extra = self.headers.as_deref().cloned().unwrap_or_default();
        if let Some(secs) = extra.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(rate) = &extra.rate {
            rate.apply(response.headers_mut());
        }
        response
    }
}
