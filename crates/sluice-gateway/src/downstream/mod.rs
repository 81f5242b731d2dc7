//! One client's HTTP/1.1 connection: read a request, answer it, and again while the client
//! keeps the connection.
//!
//! Why not hyper's server connection: on the gateway's path (a JSON POST in, a JSON or SSE
//! answer out) hyper's dispatcher, its `HeaderMap` and `Uri` for every request, and its
//! per-request service plumbing cost more than the gateway's own work (docs/benchmarks-log.md).
//! The chat path gets a [`HeadView`] over the head's bytes; everything else goes to the axum
//! router as a full `http::Request`, built only then. This code is frozen: security fixes and
//! tests only; TLS connections are served by hyper into the same request path (`tls`), and
//! HTTP/2 would come the same way.
//!
//! What it implements of RFC 9112: request bodies framed by `Content-Length` or the
//! `chunked` coding (both at once, another coding, or a conflicting length are refused),
//! `Expect: 100-continue`, persistence by version and `Connection`, pipelined requests
//! answered in order, responses framed by length, chunks, or (for HTTP/1.0 clients) the end
//! of the connection, and no body for HEAD, 1xx, 204 and 304; origin-form and absolute-form
//! targets; exactly one `Host` on HTTP/1.1; 505 for other versions.
//!
//! Bounds (`ClientLimits`): a request head must arrive within the header timeout of the
//! connection being ready for it; a body within the body timeout, with no read waiting
//! longer than the body-read timeout (408 and close); every write of an answer within the
//! write timeout, and a stream's writes within its total deadline too (the client is
//! dropped). Bodies are capped (32 MiB on the chat path, 64 KiB elsewhere). While a request
//! is answered, the connection watches the client: if it goes away, the answer is dropped,
//! which cancels the upstream call. On drain, idle connections close at once and busy ones
//! after their answer.

// pub(crate) for the differential tests, which drive the parser without a connection.
pub(crate) mod request;
mod response;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use tokio::time::Instant;

use crate::chat::{self, ChatAnswer, HeadView, RequestCtx, MAX_REQUEST_BYTES};
use crate::config::ClientLimits;
use crate::error::GatewayError;
use crate::http1::HeadScan;
use crate::http1::{decode, Chunked, Decoded, Framing, FramingError};
use crate::request_id::{RequestId, RequestIdLayer};
use crate::state::{ConnectionSlot, WorkerState};
use request::{BodyFraming, HeadError, RequestHead};
use response::{encode_chunk, encode_head, encode_ok_head, ResponseFraming, LAST_CHUNK};

/// Largest body accepted on routes other than chat (they take none worth the name).
const MAX_OTHER_BODY: usize = 64 * 1024;
/// Room asked of each read.
const READ_CHUNK: usize = 8 * 1024;
/// How long a connection that is closed after refusing a request keeps reading (and
/// discarding) what the client still sends, so that the client reads the answer instead
/// of a reset.
const LINGER: Duration = Duration::from_secs(1);

const CHAT_PATH: &[u8] = b"/v1/chat/completions";

/// What every connection of a gateway shares.
#[derive(Clone)]
pub struct ConnectionContext {
    pub worker: Arc<WorkerState>,
    /// Every route but the chat path's POST, which is answered without routing.
    pub router: Router,
    /// Cancelled when the gateway begins to drain.
    pub drain: CancellationToken,
}

/// How a request's exchange ended.
enum Exchange {
    /// Answered; the connection may carry another request.
    KeepAlive,
    /// Answered (or not answerable); close the connection.
    Close,
    /// Refused before the body was read: close, but let the client read the answer first.
    CloseLingering,
}

/// Serves `stream` until the client closes it, a request ends it, or the gateway drains.
/// `_slot` counts the connection against `max_connections` while it is open.
pub async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cx: ConnectionContext,
    _slot: ConnectionSlot,
) {
    let limits = cx.worker.shared.client_limits;
    let (mut rd, mut wr) = stream.split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(4096);
    let mut scan = HeadScan::default();
    let drain = cx.drain.clone();
    let mut drained = pin!(drain.cancelled());
    let mut head_deadline = pin!(tokio::time::sleep(limits.header_timeout));
    let ending = loop {
        head_deadline
            .as_mut()
            .reset(Instant::now() + limits.header_timeout);
        let head = tokio::select! {
            biased;
            head = read_head(&mut rd, &mut buf, &mut scan) => head,
            () = &mut drained => break Exchange::Close,
            () = &mut head_deadline => {
                if !buf.is_empty() {
                    let e = HeadError {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: format!(
                            "the request head did not arrive within {} s",
                            limits.header_timeout.as_secs()
                        ),
                    };
                    let _ = write_refusal(&mut wr, &mut out, e, &limits).await;
                }
                break Exchange::Close;
            }
        };
        let head = match head {
            HeadRead::Head(head) => head,
            HeadRead::Closed => break Exchange::Close,
            HeadRead::Refused(e) => {
                let _ = write_refusal(&mut wr, &mut out, e, &limits).await;
                break Exchange::CloseLingering;
            }
        };
        let io = Io {
            rd: &mut rd,
            wr: &mut wr,
            buf: &mut buf,
            out: &mut out,
            limits: &limits,
        };
        match exchange(&cx, head, peer, io).await {
            Exchange::KeepAlive => continue,
            other => break other,
        }
    };
    let _ = wr.shutdown().await;
    if let Exchange::CloseLingering = ending {
        let mut discard = [0u8; 8192];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(rd.read(&mut discard).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The connection's halves and buffers, lent to one exchange.
struct Io<'a, 'c> {
    rd: &'a mut ReadHalf<'c>,
    wr: &'a mut WriteHalf<'c>,
    /// Read and not yet consumed.
    buf: &'a mut BytesMut,
    /// The answer being written.
    out: &'a mut Vec<u8>,
    limits: &'a ClientLimits,
}

/// Reads the body of the request `head` starts, answers it, and says what comes next.
async fn exchange(
    cx: &ConnectionContext,
    head: RequestHead,
    peer: SocketAddr,
    mut io: Io<'_, '_>,
) -> Exchange {
    if head.method == Method::POST && head.path() == CHAT_PATH {
        return chat_exchange(cx, head, peer, io).await;
    }
    let body = match read_body(&head, MAX_OTHER_BODY, &mut io).await {
        Ok(body) => body,
        Err(BodyError::Closed) => return Exchange::Close,
        Err(BodyError::Refused(e)) => {
            let _ = write_response(&mut io, e.into_response(), &head, false).await;
            return Exchange::CloseLingering;
        }
    };
    let request = match routed_request(&head, body) {
        Ok(r) => r,
        Err(e) => {
            let _ = write_refusal(io.wr, io.out, e, io.limits).await;
            return Exchange::Close;
        }
    };
    let answer = RequestIdLayer.layer(cx.router.clone()).call(request);
    let response = match until_client_gone(pin!(answer), io.rd, io.buf).await {
        Some(Ok(response)) => response,
        Some(Err(never)) => match never {},
        None => return Exchange::Close,
    };
    // A draining gateway tells the client on the answer that the connection ends.
    let keep_alive = head.keep_alive && !cx.drain.is_cancelled();
    match write_response(&mut io, response, &head, keep_alive).await {
        Ok(true) => Exchange::KeepAlive,
        _ => Exchange::Close,
    }
}

/// The chat path: a context on the head, authentication before the body is read, then the
/// body and the phases (`chat`).
async fn chat_exchange(
    cx: &ConnectionContext,
    head: RequestHead,
    peer: SocketAddr,
    mut io: Io<'_, '_>,
) -> Exchange {
    let id = head
        .request_id()
        .and_then(RequestId::from_client_bytes)
        .unwrap_or_else(RequestId::generate);
    let view = HeadView::new(
        head.bytes.clone(),
        head.method.clone(),
        head.target_range(),
        peer,
    );
    let mut ctx = RequestCtx::new(cx.worker.shared.clone(), view, id.clone());
    let body = match chat::authenticate(&mut ctx).err() {
        Some(e) => Err(BodyError::Refused(e)),
        None => read_body(&head, MAX_REQUEST_BYTES, &mut io).await,
    };
    let body = match body {
        Ok(body) => body,
        Err(BodyError::Closed) => return Exchange::Close,
        Err(BodyError::Refused(e)) => {
            // Refused before the body was read (or while): answer, then close.
            let answer = chat::refuse(ctx, e);
            let _ = write_chat_answer(&mut io, answer, &head, &id, false).await;
            return Exchange::CloseLingering;
        }
    };
    let span =
        tracing::debug_span!("request", request_id = %id.as_str(), path = "/v1/chat/completions");
    let answer = pin!(chat::chat_completions(&cx.worker, ctx, body).instrument(span));
    let Some(answer) = until_client_gone(answer, io.rd, io.buf).await else {
        return Exchange::Close;
    };
    let keep_alive = head.keep_alive && !cx.drain.is_cancelled();
    match write_chat_answer(&mut io, answer, &head, &id, keep_alive).await {
        Ok(true) => Exchange::KeepAlive,
        _ => Exchange::Close,
    }
}

/// Writes a chat answer: a completion with the head built here (no `Response`), anything
/// else through [`write_response`]. Both carry the request id.
async fn write_chat_answer(
    io: &mut Io<'_, '_>,
    answer: ChatAnswer,
    head: &RequestHead,
    id: &RequestId,
    keep_alive: bool,
) -> Result<bool, ()> {
    match answer {
        ChatAnswer::Completion {
            content_type,
            body,
            headers,
        } => {
            let out = &mut *io.out;
            out.clear();
            let fixed: [(&[u8], &[u8]); 2] = [
                (b"content-type", content_type.as_bytes()),
                // Request ids are visible ASCII (`RequestId`), valid as a field value.
                (crate::request_id::HEADER.as_bytes(), id.as_str().as_bytes()),
            ];
            let length = body.len() as u64;
            if headers.is_empty() {
                encode_ok_head(out, &fixed, length, keep_alive, head.version);
            } else {
                let phases = headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                let fields: Vec<(&[u8], &[u8])> = fixed.into_iter().chain(phases).collect();
                encode_ok_head(out, &fields, length, keep_alive, head.version);
            }
            out.extend_from_slice(&body);
            write_by(io.wr, out, || Instant::now() + io.limits.write_timeout).await?;
            Ok(keep_alive)
        }
        ChatAnswer::Response(mut response) => {
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                response.headers_mut().insert(crate::request_id::HEADER, v);
            }
            write_response(io, response, head, keep_alive).await
        }
    }
}

/// The request for the axum router, with everything the head carried.
fn routed_request(head: &RequestHead, body: Bytes) -> Result<Request<Body>, HeadError> {
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri()?;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers()?;
    Ok(request)
}

enum HeadRead {
    Head(RequestHead),
    /// The client closed the connection (or it failed) before a whole head.
    Closed,
    Refused(HeadError),
}

async fn read_head(rd: &mut ReadHalf<'_>, buf: &mut BytesMut, scan: &mut HeadScan) -> HeadRead {
    loop {
        if !buf.is_empty() {
            match request::parse(buf, scan) {
                Ok(Some(head)) => return HeadRead::Head(head),
                Ok(None) => {}
                Err(e) => return HeadRead::Refused(e),
            }
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
}

enum BodyError {
    /// The client closed the connection (or it failed) before the whole body.
    Closed,
    /// Answer with this, then close.
    Refused(GatewayError),
}

/// Reads the body `head` announces, at most `max` bytes, each read within the body-read
/// timeout and all of it within the body timeout.
async fn read_body(
    head: &RequestHead,
    max: usize,
    io: &mut Io<'_, '_>,
) -> Result<Bytes, BodyError> {
    let (wr, buf, limits) = (&mut *io.wr, &mut *io.buf, io.limits);
    let too_large = || {
        BodyError::Refused(GatewayError::PayloadTooLarge {
            limit_mib: max / (1024 * 1024),
        })
    };
    let mut reader = BodyReader {
        rd: &mut *io.rd,
        deadline: Instant::now() + limits.body_timeout,
        limits,
    };
    match head.framing {
        BodyFraming::Length(0) => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(too_large)?;
            if head.expects_continue && buf.len() < n {
                send_continue(wr, limits).await?;
            }
            while buf.len() < n {
                buf.reserve((n - buf.len()).min(1024 * 1024));
                reader.read(buf).await?;
            }
            Ok(buf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            if head.expects_continue && buf.is_empty() {
                send_continue(wr, limits).await?;
            }
            let mut framing = Framing::Chunked(Chunked::START);
            let mut body = BytesMut::new();
            loop {
                match decode(buf, &mut framing) {
                    Ok(Decoded::Data(data)) => {
                        if body.len() + data.len() > max {
                            return Err(too_large());
                        }
                        body.extend_from_slice(&data);
                    }
                    Ok(Decoded::End) => return Ok(body.freeze()),
                    Ok(Decoded::NeedMore) => {
                        buf.reserve(READ_CHUNK);
                        reader.read(buf).await?;
                    }
                    Err(FramingError(why)) => {
                        return Err(BodyError::Refused(GatewayError::invalid_request(
                            format!("the chunked request body is malformed: {why}"),
                            None,
                        )))
                    }
                }
            }
        }
    }
}

/// Reads of one request body, under its two deadlines.
struct BodyReader<'a, 'c> {
    rd: &'a mut ReadHalf<'c>,
    /// The whole body's.
    deadline: Instant,
    limits: &'a ClientLimits,
}

impl BodyReader<'_, '_> {
    async fn read(&mut self, buf: &mut BytesMut) -> Result<(), BodyError> {
        let next_read = Instant::now() + self.limits.body_read_timeout;
        let (deadline, what, limit) = if next_read < self.deadline {
            (
                next_read,
                "no part of it arrived within the body read timeout",
                self.limits.body_read_timeout,
            )
        } else {
            (
                self.deadline,
                "the whole body did not arrive within the body timeout",
                self.limits.body_timeout,
            )
        };
        match tokio::time::timeout_at(deadline, self.rd.read_buf(buf)).await {
            Err(_) => Err(BodyError::Refused(GatewayError::RequestTimeout {
                what,
                limit,
            })),
            Ok(Ok(0) | Err(_)) => Err(BodyError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

async fn send_continue(wr: &mut WriteHalf<'_>, limits: &ClientLimits) -> Result<(), BodyError> {
    write_by(wr, b"HTTP/1.1 100 Continue\r\n\r\n", || {
        Instant::now() + limits.write_timeout
    })
    .await
    .map_err(|()| BodyError::Closed)
}

/// Writes all of `bytes` by `deadline`; `Err` when the client failed or did not take them in
/// time (then the connection is closed, which drops whatever answer was being written).
async fn write_by(
    wr: &mut WriteHalf<'_>,
    bytes: &[u8],
    deadline: impl FnOnce() -> Instant,
) -> Result<(), ()> {
    // Most writes fit in the socket's buffer at once: then no clock is read and no timer
    // armed. Only what the client is slow to take waits, under the deadline.
    let written = match wr.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(()),
    };
    if written == bytes.len() {
        return Ok(());
    }
    match tokio::time::timeout_at(deadline(), wr.write_all(&bytes[written..])).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// `future`'s output, or `None` if the client closes the connection first (then `future`
/// is dropped, which cancels whatever it was doing). Bytes the client sends meanwhile (a
/// pipelined request) are kept in `buf`.
///
/// Takes the future pinned where the caller made it: a chat request's future is some 4 KiB,
/// and each move by value (into this function's state, then into a local) was a copy of
/// all of it.
async fn until_client_gone<F: Future>(
    mut future: Pin<&mut F>,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
) -> Option<F::Output> {
    let mut gone = pin!(client_gone(rd, buf));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Completes when the client has closed the connection (or it failed).
async fn client_gone(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) {
    loop {
        if buf.len() >= request::MAX_HEAD_BYTES {
            // Enough read ahead: stop reading until this answer is out.
            std::future::pending::<()>().await;
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A refusal of a request whose head could not be read: JSON, then the connection closes.
async fn write_refusal(
    wr: &mut WriteHalf<'_>,
    out: &mut Vec<u8>,
    e: HeadError,
    limits: &ClientLimits,
) -> Result<(), ()> {
    let kind = if e.status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let response = crate::error::json_error(
        e.status,
        &sluice_api::ErrorResponse::new(kind, None, e.message),
    );
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    out.clear();
    encode_head(
        out,
        &parts,
        ResponseFraming::Length(body.len() as u64),
        false,
        axum::http::Version::HTTP_11,
    );
    out.extend_from_slice(&body);
    write_by(wr, out, || Instant::now() + limits.write_timeout).await
}

/// Writes `response` to the request `head` started. `Ok(true)` if the connection may carry
/// another request. Each write must finish within the write timeout, and within the answer's
/// own deadline (`AnswerDeadline`: a stream's total timeout) when it has one.
async fn write_response(
    io: &mut Io<'_, '_>,
    response: Response,
    head: &RequestHead,
    keep_alive: bool,
) -> Result<bool, ()> {
    let Io {
        rd,
        wr,
        buf,
        out,
        limits,
    } = io;
    let (parts, mut body) = response.into_parts();
    let answer_deadline = parts.extensions.get::<chat::AnswerDeadline>().map(|d| d.0);
    let by = || {
        let next = Instant::now() + limits.write_timeout;
        answer_deadline.map_or(next, |d| d.min(next))
    };
    let length = hyper::body::Body::size_hint(&body).exact();
    let framing = ResponseFraming::choose(
        parts.status,
        length,
        head.method == Method::HEAD,
        head.version,
    );
    let keep_alive = keep_alive && framing != ResponseFraming::UntilClose;
    out.clear();
    encode_head(out, &parts, framing, keep_alive, head.version);
    match framing {
        ResponseFraming::None { .. } => {
            write_by(wr, out, by).await?;
        }
        ResponseFraming::Length(_) => {
            // A body of known length is (in the gateway) already in memory: one write with
            // the head.
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(drop)?.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            write_by(wr, out, by).await?;
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            // Each piece goes out as it comes: an event stream's tokens must not wait.
            write_by(wr, out, by).await?;
            loop {
                let Some(frame) = until_client_gone(pin!(body.frame()), rd, buf).await else {
                    return Err(());
                };
                let Some(frame) = frame else { break };
                // A body that fails midway cannot be ended cleanly: closing tells the client.
                let Ok(data) = frame.map_err(drop)?.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                out.clear();
                if framing == ResponseFraming::Chunked {
                    encode_chunk(out, &data);
                } else {
                    out.extend_from_slice(&data);
                }
                write_by(wr, out, by).await?;
            }
            if framing == ResponseFraming::Chunked {
                write_by(wr, LAST_CHUNK, by).await?;
            }
        }
    }
    Ok(keep_alive)
}
