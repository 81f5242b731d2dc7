//! One client's HTTP/1.1 connection: read a request, answer it, and again while the client
//! keeps the connection.
//!
//! Why not hyper's server connection: on the gateway's path (a JSON POST in, a JSON or SSE
//! answer out) hyper's dispatcher, its `HeaderMap` and `Uri` for every request, and its
//! per-request service plumbing were about a quarter of the gateway's instructions per
//! proxied request (docs/benchmarks.md). The chat path here reads only the path and
//! `x-request-id` from the head; everything else goes to the axum router as a full
//! `http::Request`, built only then.
//!
//! What it implements of RFC 9112: request bodies framed by `Content-Length` or the
//! `chunked` coding (both at once, another coding, or a conflicting length are refused),
//! `Expect: 100-continue`, persistence by version and `Connection`, pipelined requests
//! answered in order, responses framed by length, chunks, or (for HTTP/1.0 clients) the end
//! of the connection, and no body for HEAD, 1xx, 204 and 304. A request head must arrive
//! within [`HEADER_READ_TIMEOUT`] of the connection being ready for it. While a request is
//! answered, the connection watches the client: if it goes away, the answer is dropped,
//! which cancels the upstream call. On drain, idle connections close at once and busy ones
//! after their answer.

mod request;
mod response;
#[cfg(test)]
mod tests;

use std::future::{poll_fn, Future};
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

use crate::chat::{self, ChatAnswer, MAX_REQUEST_BYTES};
use crate::error::GatewayError;
use crate::request_id::{RequestId, RequestIdLayer};
use crate::server::GatewayState;
use crate::upstream::h1::{decode, Chunk, Decoded, Framing, ResponseError};
use request::{BodyFraming, HeadError, RequestHead};
use response::{encode_chunk, encode_head, encode_ok_head, ResponseFraming, LAST_CHUNK};

/// A client that does not finish its next request head within this closes the connection:
/// an idle keep-alive connection, or a head sent too slowly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
    pub state: Arc<GatewayState>,
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
pub async fn serve_connection(mut stream: TcpStream, cx: ConnectionContext) {
    let (mut rd, mut wr) = stream.split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(4096);
    let drain = cx.drain.clone();
    let mut drained = pin!(drain.cancelled());
    let mut head_deadline = pin!(tokio::time::sleep(HEADER_READ_TIMEOUT));
    let ending = loop {
        head_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
        let head = tokio::select! {
            biased;
            head = read_head(&mut rd, &mut buf) => head,
            () = &mut drained => break Exchange::Close,
            () = &mut head_deadline => {
                if !buf.is_empty() {
                    let e = HeadError {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: format!(
                            "the request head did not arrive within {} s",
                            HEADER_READ_TIMEOUT.as_secs()
                        ),
                    };
                    let _ = write_refusal(&mut wr, &mut out, e).await;
                }
                break Exchange::Close;
            }
        };
        let head = match head {
            HeadRead::Head(head) => head,
            HeadRead::Closed => break Exchange::Close,
            HeadRead::Refused(e) => {
                let _ = write_refusal(&mut wr, &mut out, e).await;
                break Exchange::CloseLingering;
            }
        };
        match exchange(&cx, head, &mut rd, &mut wr, &mut buf, &mut out).await {
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

/// Reads the body of the request `head` starts, answers it, and says what comes next.
async fn exchange(
    cx: &ConnectionContext,
    head: RequestHead,
    rd: &mut ReadHalf<'_>,
    wr: &mut WriteHalf<'_>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Exchange {
    let is_chat = head.method == Method::POST && head.path() == CHAT_PATH;
    let body = match read_body(&head, rd, wr, buf).await {
        Ok(body) => body,
        Err(BodyError::Closed) => return Exchange::Close,
        Err(BodyError::Refused(e)) => {
            if is_chat {
                chat::count_refused(&cx.state, e.status());
            }
            let _ = write_response(wr, rd, buf, out, e.into_response(), &head, false).await;
            return Exchange::CloseLingering;
        }
    };
    let keep_alive = head.keep_alive && !cx.drain.is_cancelled();

    let answer = if is_chat {
        let id = head
            .request_id()
            .and_then(RequestId::from_client_bytes)
            .unwrap_or_else(RequestId::generate);
        let span = tracing::debug_span!("request", request_id = %id.as_str(), path = "/v1/chat/completions");
        let answer =
            pin!(chat::chat_completions(cx.state.clone(), id.clone(), body).instrument(span));
        match until_client_gone(answer, rd, buf).await {
            None => return Exchange::Close,
            Some(ChatAnswer::Completion { content_type, body }) => Answer::Completion {
                content_type: content_type.unwrap_or(ChatAnswer::DEFAULT_CONTENT_TYPE),
                request_id: id,
                body,
            },
            Some(ChatAnswer::Response(mut response)) => {
                if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                    response.headers_mut().insert(crate::request_id::HEADER, v);
                }
                Answer::Response(response)
            }
        }
    } else {
        let request = match routed_request(&head, body) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_refusal(wr, out, e).await;
                return Exchange::Close;
            }
        };
        let answer = RequestIdLayer.layer(cx.router.clone()).call(request);
        match until_client_gone(pin!(answer), rd, buf).await {
            Some(Ok(response)) => Answer::Response(response),
            Some(Err(never)) => match never {},
            None => return Exchange::Close,
        }
    };
    // A draining gateway tells the client on the answer that the connection ends.
    let keep_alive = keep_alive && !cx.drain.is_cancelled();
    let written = match answer {
        Answer::Completion {
            content_type,
            request_id,
            body,
        } => {
            out.clear();
            // Request ids are visible ASCII (`RequestId`), valid as a field value.
            encode_ok_head(
                out,
                &[
                    (b"content-type", content_type.as_bytes()),
                    (
                        crate::request_id::HEADER.as_bytes(),
                        request_id.as_str().as_bytes(),
                    ),
                ],
                body.len() as u64,
                keep_alive,
                head.version,
            );
            out.extend_from_slice(&body);
            wr.write_all(out).await.map(|()| keep_alive).map_err(drop)
        }
        Answer::Response(response) => {
            write_response(wr, rd, buf, out, response, &head, keep_alive).await
        }
    };
    match written {
        Ok(true) => Exchange::KeepAlive,
        _ => Exchange::Close,
    }
}

/// An answer ready to be written to the client.
enum Answer {
    /// A chat completion: its head is written here, without a `Response` (see `ChatAnswer`).
    Completion {
        content_type: HeaderValue,
        request_id: RequestId,
        body: Bytes,
    },
    Response(Response),
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

async fn read_head(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) -> HeadRead {
    loop {
        if !buf.is_empty() {
            match request::parse(buf) {
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

async fn read_body(
    head: &RequestHead,
    rd: &mut ReadHalf<'_>,
    wr: &mut WriteHalf<'_>,
    buf: &mut BytesMut,
) -> Result<Bytes, BodyError> {
    let too_large = || {
        BodyError::Refused(GatewayError::PayloadTooLarge {
            limit_mib: MAX_REQUEST_BYTES / (1024 * 1024),
        })
    };
    match head.framing {
        BodyFraming::Length(0) => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_REQUEST_BYTES)
                .ok_or_else(too_large)?;
            if head.expects_continue && buf.len() < n {
                send_continue(wr).await?;
            }
            while buf.len() < n {
                buf.reserve((n - buf.len()).min(1024 * 1024));
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => return Err(BodyError::Closed),
                    Ok(_) => {}
                }
            }
            Ok(buf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            if head.expects_continue && buf.is_empty() {
                send_continue(wr).await?;
            }
            let mut framing = Framing::Chunked(Chunk::Size);
            let mut body = BytesMut::new();
            loop {
                match decode(buf, &mut framing) {
                    Ok(Decoded::Data(data)) => {
                        if body.len() + data.len() > MAX_REQUEST_BYTES {
                            return Err(too_large());
                        }
                        body.extend_from_slice(&data);
                    }
                    Ok(Decoded::End) => return Ok(body.freeze()),
                    Ok(Decoded::NeedMore) => {
                        buf.reserve(READ_CHUNK);
                        match rd.read_buf(buf).await {
                            Ok(0) | Err(_) => return Err(BodyError::Closed),
                            Ok(_) => {}
                        }
                    }
                    Err(ResponseError::Invalid(why)) => {
                        return Err(BodyError::Refused(GatewayError::invalid_request(
                            format!("the chunked request body is malformed: {why}"),
                            None,
                        )))
                    }
                    Err(_) => return Err(BodyError::Closed),
                }
            }
        }
    }
}

async fn send_continue(wr: &mut WriteHalf<'_>) -> Result<(), BodyError> {
    wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .map_err(|_| BodyError::Closed)
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
) -> std::io::Result<()> {
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
    wr.write_all(out).await
}

/// Writes `response` to the request `head` started. `Ok(true)` if the connection may carry
/// another request.
async fn write_response(
    wr: &mut WriteHalf<'_>,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    response: Response,
    head: &RequestHead,
    keep_alive: bool,
) -> Result<bool, ()> {
    let (parts, mut body) = response.into_parts();
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
            wr.write_all(out).await.map_err(drop)?;
        }
        ResponseFraming::Length(_) => {
            // A body of known length is (in the gateway) already in memory: one write with
            // the head.
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(drop)?.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            wr.write_all(out).await.map_err(drop)?;
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            // Each piece goes out as it comes: an event stream's tokens must not wait.
            wr.write_all(out).await.map_err(drop)?;
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
                wr.write_all(out).await.map_err(drop)?;
            }
            if framing == ResponseFraming::Chunked {
                wr.write_all(LAST_CHUNK).await.map_err(drop)?;
            }
        }
    }
    Ok(keep_alive)
}
