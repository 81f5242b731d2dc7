//! `x-request-id`: taken from the client when it sends a usable one, generated otherwise;
//! carried in the request's extensions and tracing span, forwarded upstream, and echoed on the
//! response.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A client id is kept when it is 1–200 visible ASCII characters: enough for every
    /// tracing scheme in use, and safe to put in logs and headers as is.
    fn from_client(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let ok = !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| RequestId(Arc::from(s)))
    }

    fn generate() -> Self {
        // Encoded on the stack: `to_string` would go through the formatter and a String.
        let mut buf = uuid::Uuid::encode_buffer();
        RequestId(Arc::from(
            &*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf),
        ))
    }
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(RequestId::from_client)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = %id.as_str(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
