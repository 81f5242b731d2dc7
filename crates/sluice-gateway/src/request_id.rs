//! `x-request-id`: taken from the client when it sends a usable one, generated otherwise;
//! carried in the request's extensions and tracing span, forwarded upstream, and echoed on the
//! response.

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{HeaderValue, Request};
use axum::response::Response;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::instrument::Instrumented;
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
        Self::from_client_bytes(value.as_bytes())
    }

    /// The same rule on a field's raw value.
    pub fn from_client_bytes(value: &[u8]) -> Option<Self> {
        let ok = !value.is_empty() && value.len() <= 200 && value.iter().all(u8::is_ascii_graphic);
        // Visible ASCII is UTF-8.
        let s = std::str::from_utf8(value).ok().filter(|_| ok)?;
        Some(RequestId(Arc::from(s)))
    }

    pub fn generate() -> Self {
        // Encoded on the stack: `to_string` would go through the formatter and a String.
        let mut buf = uuid::Uuid::encode_buffer();
        RequestId(Arc::from(
            &*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf),
        ))
    }
}

/// Gives every request its id (extension and tracing span) and echoes it on the response.
///
/// A hand-written layer rather than `middleware::from_fn`, which boxes the rest of the
/// request's future and clones the router state on every request: work for nothing on
/// every routed request (measured in docs/benchmarks-log.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EchoRequestId<Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(HEADER)
            .and_then(RequestId::from_client)
            .unwrap_or_else(RequestId::generate);
        // A debug span: at the default `info` level an enabled span formats and stores its
        // fields for every request (a measurable cost, docs/benchmarks-log.md), while the
        // request path's own warnings name their `request_id` themselves.
        let span =
            tracing::debug_span!("request", request_id = %id.as_str(), path = %req.uri().path());
        req.extensions_mut().insert(id.clone());
        EchoRequestId {
            inner: self.inner.call(req).instrument(span),
            id,
        }
    }
}

pin_project! {
    /// The inner service's response future, which puts the request id on the response.
    pub struct EchoRequestId<F> {
        #[pin]
        inner: F,
        id: RequestId,
    }
}

impl<F, E> Future for EchoRequestId<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Ok(v) = HeaderValue::from_str(this.id.as_str()) {
            resp.headers_mut().insert(HEADER, v);
        }
        Poll::Ready(Ok(resp))
    }
}
