//! One keep-alive HTTP/1.1 connection to an upstream, carrying one request at a time and
//! driven by the task of the request that holds it.
//!
//! Why not hyper's client connection: hyper runs every connection as a task of its own and
//! passes the request, the response head and each body chunk between that task and the
//! request's task through channels, waking one from the other several times per request.
//! On the gateway's path (one POST, one JSON or SSE answer) that hand-off and hyper's general
//! dispatcher cost more instructions than everything the gateway itself does with a request
//! (docs/benchmarks-log.md). Here the request's task writes the request and reads the answer.
//!
//! What it implements of RFC 9112: requests framed by `Content-Length`; responses framed by
//! `Content-Length`, the `chunked` transfer coding (extensions and trailers skipped) or the
//! end of the connection; interim 1xx answers skipped; 204 and 304 without a body; a
//! connection is kept for the next request unless the upstream says `Connection: close`,
//! answers in HTTP/1.0, frames the body by closing, or sends more than the response.

use std::future::poll_fn;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::http1::{connection_persistence, content_length, is_bodyless, HeadScan};
pub use crate::http1::{Chunked, Decoded, Framing};

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Room asked of each read.
const READ_CHUNK: usize = 8 * 1024;

/// What went wrong reading a response.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection {0}")]
    Closed(&'static str),
    #[error("the upstream's response is not valid HTTP/1.1: {0}")]
    Invalid(String),
}

/// Writing a request failed.
#[derive(Debug, thiserror::Error)]
#[error("{io}")]
pub struct WriteError {
    pub io: std::io::Error,
    /// Whether any byte of the request was handed to the connection. When none was, the
    /// upstream cannot have seen the request, so it may go elsewhere.
    pub sent_any: bool,
}

/// A response's status line and headers, and how its body is framed.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// Of the answer's header fields, those in [`KEPT_HEADERS`]: the only ones the gateway
    /// reads (the client's answer gets headers of its own). Copying every field into a
    /// `HeaderMap` (a name lookup, an allocation and a hash each) cost more than parsing the
    /// head, and real providers send twenty or more.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
    /// The body's content coding, when it is not `identity` (the gateway asks for identity
    /// and refuses anything else rather than forward encoded bytes unlabelled).
    pub content_coding: Option<String>,
}

/// The upstream header fields [`ResponseHead::headers`] keeps: the content type, and what
/// providers say about their rate limits (`retry-after`, OpenAI's and Anthropic's
/// `*ratelimit*` fields), which the admission phase learns from.
pub static KEPT_HEADERS: [HeaderName; 14] = {
    use sluice_api::ratelimit::{
        ANTHROPIC_REQUESTS_HEADERS as AR, ANTHROPIC_TOKENS_HEADERS as AT, REQUESTS_HEADERS as R,
        TOKENS_HEADERS as T,
    };
    [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        HeaderName::from_static(R[0]),
        HeaderName::from_static(R[1]),
        HeaderName::from_static(R[2]),
        HeaderName::from_static(T[0]),
        HeaderName::from_static(T[1]),
        HeaderName::from_static(T[2]),
        HeaderName::from_static(AR[0]),
        HeaderName::from_static(AR[1]),
        HeaderName::from_static(AR[2]),
        HeaderName::from_static(AT[0]),
        HeaderName::from_static(AT[1]),
        HeaderName::from_static(AT[2]),
    ]
};

pub struct Connection<T> {
    io: T,
    /// Received and not yet consumed.
    buf: BytesMut,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    pub fn new(io: T) -> Self {
        Connection {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can still carry a request: the upstream has not closed it
    /// and has sent nothing unasked. Never waits (at most one non-blocking read).
    pub fn is_open_while_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        // Ready means end of stream, an error, or bytes nobody asked for: not usable.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Writes `parts` (head and body) in as few writes as the connection takes, then
    /// flushes.
    pub async fn write_request<const N: usize>(
        &mut self,
        parts: [&[u8]; N],
    ) -> Result<(), WriteError> {
        let mut slices = parts.map(IoSlice::new);
        let mut rest: &mut [IoSlice<'_>] = &mut slices;
        IoSlice::advance_slices(&mut rest, 0);
        let mut sent = 0;
        while !rest.is_empty() {
            let written = poll_fn(|cx| Pin::new(&mut self.io).poll_write_vectored(cx, rest)).await;
            let n = match written {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                other => other,
            }
            .map_err(|io| WriteError {
                io,
                sent_any: sent > 0,
            })?;
            sent += n;
            IoSlice::advance_slices(&mut rest, n);
        }
        self.io
            .flush()
            .await
            .map_err(|io| WriteError { io, sent_any: true })
    }

    /// Reads up to the end of a final (non-1xx) response head.
    pub async fn read_head(&mut self) -> Result<ResponseHead, ResponseError> {
        let mut scan = HeadScan::default();
        loop {
            // The full parse runs on the first read and then once the head's end has arrived
            // (a head dripped byte by byte costs linear time), or at once when the bytes
            // cannot be a status line.
            let not_http = self.buf.len() >= 5 && !self.buf.starts_with(b"HTTP/");
            let head = if not_http || scan.worth_parsing(&self.buf) {
                self.parse_head()?
            } else {
                None
            };
            if let Some(head) = head {
                // A 1xx head was consumed; the next one starts afresh.
                scan.reset();
                match head.status.as_u16() {
                    101 => {
                        return Err(ResponseError::Invalid(
                            "101 Switching Protocols to a request that asked for no upgrade".into(),
                        ))
                    }
                    100..=199 => continue,
                    _ => return Ok(head),
                }
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(ResponseError::Invalid(format!(
                    "the response head is larger than {} KiB",
                    MAX_HEAD_BYTES / 1024
                )));
            }
            if poll_fn(|cx| self.poll_read_more(cx)).await? == 0 {
                return Err(ResponseError::Closed(if self.buf.is_empty() {
                    "without answering"
                } else {
                    "in the middle of the response head"
                }));
            }
        }
    }

    /// Reads what the connection has into the buffer; `Ok(0)` is the end of the stream.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether bytes beyond the current response have arrived (then the connection is not
    /// reused: they belong to no request).
    pub fn has_unread(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next piece of body under `framing` from what is buffered.
    pub fn decode(&mut self, framing: &mut Framing) -> Result<Decoded, ResponseError> {
        crate::http1::decode(&mut self.buf, framing).map_err(|e| ResponseError::Invalid(e.0))
    }

    /// Parses a complete head at the start of the buffer and consumes it.
    fn parse_head(&mut self) -> Result<Option<ResponseHead>, ResponseError> {
        // Uninitialised: initialising 128 fields cost more than parsing a typical head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &self.buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ResponseError::Invalid(format!(
                    "more than {MAX_HEADERS} header fields"
                )))
            }
            Err(e) => return Err(ResponseError::Invalid(format!("malformed head: {e}"))),
        };
        let status = response
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| ResponseError::Invalid("invalid status code".into()))?;
        let http11 = response.version == Some(1);
        let mut headers = HeaderMap::new();
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = !http11;
        let mut content_coding: Option<String> = None;
        for field in response.headers.iter() {
            let name = field.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_content_length(field.value)?;
                if length.is_some_and(|m| m != n) {
                    return Err(ResponseError::Invalid(
                        "conflicting Content-Length values".into(),
                    ));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // `chunked` alone: a body under another transfer coding (`gzip, chunked`)
                // would have to be decoded, and the gateway asked for none.
                let value = field.value.trim_ascii();
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(ResponseError::Invalid(format!(
                        "unsupported Transfer-Encoding `{}` (only `chunked` is accepted)",
                        String::from_utf8_lossy(value)
                    )));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"content-encoding") {
                let value = field.value.trim_ascii();
                if !value.is_empty() && !value.eq_ignore_ascii_case(b"identity") {
                    content_coding = Some(String::from_utf8_lossy(value).into_owned());
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                if let Some(persistent) = connection_persistence(field.value, http11) {
                    close = !persistent;
                }
            } else {
                let kept = KEPT_HEADERS
                    .iter()
                    .find(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()));
                if let Some(kept) = kept {
                    let value = HeaderValue::from_bytes(field.value).map_err(|_| {
                        ResponseError::Invalid(format!("invalid value of header {}", field.name))
                    })?;
                    headers.append(kept.clone(), value);
                }
            }
        }
        self.buf.advance(len);
        let framing = if is_bodyless(status.as_u16()) {
            Framing::Done
        } else if chunked {
            // RFC 9112 §6.1: an HTTP/1.0 message has no transfer codings, and one that says
            // it has is faulty framing. Read as chunked, it ends where an HTTP/1.0 hop in
            // between (which frames it by its length or the close) does not think it ends.
            if !http11 {
                return Err(ResponseError::Invalid(
                    "Transfer-Encoding in an HTTP/1.0 response".into(),
                ));
            }
            // Transfer-Encoding overrides Content-Length; a message with both may have been
            // smuggled past something, so the connection is not reused.
            close |= length.is_some();
            Framing::Chunked(Chunked::START)
        } else {
            match length {
                Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            keep_alive: !close && framing != Framing::UntilClose,
            content_coding,
        }))
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, ResponseError> {
    content_length(value)
        .ok_or_else(|| ResponseError::Invalid(format!("invalid Content-Length {value:?}")))
}

#[cfg(test)]
mod tests;
