//! One TLS client connection: the handshake, then HTTP/1.1 served by hyper into the same
//! request path as the plaintext connection (`downstream`), under the same bounds.
//!
//! Bounds (`ClientLimits`, as on plaintext): the handshake and each request head within the
//! header timeout; a body within the body timeout, no read of it waiting longer than the
//! body-read timeout (408); every write within the write timeout (`WriteDeadline`, below),
//! and a stream's writes within its total deadline (`AnswerDeadline`); bodies capped at
//! 32 MiB on the chat path and 64 KiB elsewhere; heads at 64 KiB and 100 fields. A client
//! that goes away mid-answer drops the answer (hyper drops the request's future), which
//! cancels the upstream call and accounts the request as 499.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response};
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::chat::{self, AnswerDeadline, ChatAnswer, HeadView, RequestCtx, MAX_REQUEST_BYTES};
use crate::config::ClientLimits;
use crate::downstream::ConnectionContext;
use crate::error::GatewayError;
use crate::request_id::{RequestId, RequestIdLayer};
use crate::state::ConnectionSlot;

/// As on plaintext connections (`downstream`).
const MAX_OTHER_BODY: usize = 64 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const CHAT_PATH: &str = "/v1/chat/completions";

/// Serves one TLS connection until the client closes it or the gateway drains.
pub(crate) async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    cx: ConnectionContext,
    _slot: ConnectionSlot,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let limits = cx.worker.shared.client_limits;
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake did not finish within the header timeout");
            return;
        }
    };
    let drain = cx.drain.clone();
    let io = TokioIo::new(WriteDeadline::new(tls, limits.write_timeout));
    let service = hyper::service::service_fn(move |request| answer(cx.clone(), peer, request));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let mut connection = pin!(builder.serve_connection(io, service));
    tokio::select! {
        _ = connection.as_mut() => {}
        () = drain.cancelled() => {
            // Idle: closes now; busy: after the answer being written.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn answer(
    cx: ConnectionContext,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let limits = cx.worker.shared.client_limits;
    if request.method() == Method::POST && request.uri().path() == CHAT_PATH {
        return Ok(chat_exchange(&cx, peer, request, &limits).await);
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body, MAX_OTHER_BODY, &limits).await {
        Ok(body) => body,
        Err(e) => return Ok(e.into_response()),
    };
    let request = Request::from_parts(parts, Body::from(body));
    let response = RequestIdLayer.layer(cx.router.clone()).call(request).await;
    Ok(response.unwrap_or_else(|never| match never {}))
}

/// The chat path, as the plaintext connection runs it: a context on the head,
/// authentication before the body is read, then the body and the phases.
async fn chat_exchange(
    cx: &ConnectionContext,
    peer: SocketAddr,
    request: Request<Incoming>,
    limits: &ClientLimits,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let id = parts
        .headers
        .get(crate::request_id::HEADER)
        .and_then(|v| RequestId::from_client_bytes(v.as_bytes()))
        .unwrap_or_else(RequestId::generate);
    let (head, target) = head_bytes(&parts);
    let view = HeadView::new(head, parts.method.clone(), target, peer);
    let mut ctx = RequestCtx::new(cx.worker.shared.clone(), view, id.clone());
    let answer = match chat::authenticate(&mut ctx) {
        Err(e) => chat::refuse(ctx, e),
        Ok(()) => match read_body(body, MAX_REQUEST_BYTES, limits).await {
            Ok(body) => chat::chat_completions(&cx.worker, ctx, body).await,
            Err(BodyError::Refused(e)) => chat::refuse(ctx, e),
            // The client is gone: the context, dropped unfinished, counts it as 499; the
            // answer is never written.
            Err(BodyError::Closed) => return Response::new(Body::empty()),
        },
    };
    chat_response(answer, &id)
}

/// The head as the chat path reads it (`HeadView`): request line and fields, as bytes.
/// hyper has already checked them; a `HeaderValue` holds no CR or LF.
fn head_bytes(parts: &axum::http::request::Parts) -> (Bytes, Range<usize>) {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let start = head.len();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    let end = head.len();
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    (Bytes::from(head), start..end)
}

fn chat_response(answer: ChatAnswer, id: &RequestId) -> Response<Body> {
    let mut response = match answer {
        ChatAnswer::Completion {
            content_type,
            body,
            headers,
        } => {
            let mut response = Response::new(Body::from(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            headers.apply(response.headers_mut());
            response
        }
        ChatAnswer::Response(response) => response,
    };
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(crate::request_id::HEADER, v);
    }
    match response.extensions().get::<AnswerDeadline>().copied() {
        Some(AnswerDeadline(deadline)) => response.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            })
        }),
        None => response,
    }
}

enum BodyError {
    /// Answer with this error (and the connection closes: its body was not read to the end).
    Refused(GatewayError),
    /// The client went away.
    Closed,
}

impl IntoResponse for BodyError {
    fn into_response(self) -> axum::response::Response {
        match self {
            BodyError::Refused(e) => e.into_response(),
            BodyError::Closed => Response::new(Body::empty()),
        }
    }
}

/// Reads a request body whole: at most `max` bytes, within the body timeout, no read
/// waiting longer than the body-read timeout.
async fn read_body(
    mut body: Incoming,
    max: usize,
    limits: &ClientLimits,
) -> Result<Bytes, BodyError> {
    let too_large = || {
        BodyError::Refused(GatewayError::PayloadTooLarge {
            limit_mib: max / (1024 * 1024),
        })
    };
    // A declared length over the limit is refused before a byte of it is read.
    if hyper::body::Body::size_hint(&body).lower() > max as u64 {
        return Err(too_large());
    }
    let deadline = Instant::now() + limits.body_timeout;
    let mut collected = BytesMut::new();
    loop {
        let next_read = Instant::now() + limits.body_read_timeout;
        let (by, what, limit) = if next_read < deadline {
            (
                next_read,
                "no part of it arrived within the body read timeout",
                limits.body_read_timeout,
            )
        } else {
            (
                deadline,
                "the whole body did not arrive within the body timeout",
                limits.body_timeout,
            )
        };
        let frame = match tokio::time::timeout_at(by, body.frame()).await {
            Err(_) => {
                return Err(BodyError::Refused(GatewayError::RequestTimeout {
                    what,
                    limit,
                }))
            }
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(e))) if e.is_incomplete_message() => return Err(BodyError::Closed),
            Ok(Some(Err(e))) => {
                return Err(BodyError::Refused(GatewayError::invalid_request(
                    format!("the request body is malformed: {e}"),
                    None,
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > max {
                return Err(too_large());
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// A streamed answer's body that fails when the answer's deadline passes: hyper then closes
/// the connection, so a client that reads slowly cannot keep a stream past its total timeout.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let late = io::Error::new(io::ErrorKind::TimedOut, "the answer's deadline passed");
            return Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection under a write deadline: a write (or flush) the client does not take within
/// `limit` fails, and hyper closes the connection. Reads are bounded by hyper's header
/// timeout and the body deadlines above.
struct WriteDeadline<T> {
    io: T,
    limit: Duration,
    /// Armed while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(io: T, limit: Duration) -> Self {
        WriteDeadline {
            io,
            limit,
            timer: None,
        }
    }

    /// `Pending` from the inner writer: still pending, or failed if the deadline passed.
    fn waited<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not take the answer within the write timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.waited(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.waited(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.waited(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.waited(cx, polled)
    }
}
