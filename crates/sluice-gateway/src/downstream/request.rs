//! A client's request head: parsed, and its body framing decided (RFC 9112 §6).

use std::mem::MaybeUninit;
use std::ops::Range;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use bytes::Bytes;

use crate::http1::{connection_persistence, content_length, HeadScan};

/// Largest request head (request line and header fields) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a request head.
const MAX_HEADERS: usize = 100;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length` bytes (0 when the request has neither framing field).
    Length(u64),
    Chunked,
}

/// The parts of a request head the connection acts on. The target and the header fields
/// stay in the head's bytes: the chat path needs only the path and `x-request-id`, and
/// building a `Uri` and a `HeaderMap` for every request (a lookup, an allocation and a hash
/// per field) cost more than parsing the head. [`RequestHead::uri`] and
/// [`RequestHead::headers`] build them for the router's requests.
#[derive(Debug)]
pub struct RequestHead {
    /// The head as received, request line to the blank line.
    pub bytes: Bytes,
    pub method: Method,
    target: Range<usize>,
    pub version: Version,
    /// The raw value of the last `x-request-id` field.
    request_id: Option<Range<usize>>,
    pub framing: BodyFraming,
    /// The client asked for `100 Continue` before it sends the body.
    pub expects_continue: bool,
    /// The client keeps the connection for another request (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// A head the gateway refuses: the status to answer with and why, after which the
/// connection closes (its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    pub message: String,
}

impl HeadError {
    fn bad(message: impl Into<String>) -> Self {
        HeadError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl RequestHead {
    /// The request target's path, without the query (for an absolute-form target, the path
    /// after its authority).
    pub fn path(&self) -> &[u8] {
        let target = self.origin_form();
        let end = memchr::memchr(b'?', target).unwrap_or(target.len());
        &target[..end]
    }

    /// The target in origin form: path and query (`/` when an absolute-form target has no
    /// path).
    pub fn origin_form(&self) -> &[u8] {
        match &self.bytes[self.target.clone()] {
            b"" => b"/",
            target => target,
        }
    }

    /// Where the target lies in [`RequestHead::bytes`] (origin form).
    pub fn target_range(&self) -> Range<usize> {
        self.target.clone()
    }

    pub fn request_id(&self) -> Option<&[u8]> {
        self.request_id.clone().map(|r| &self.bytes[r])
    }

    pub fn uri(&self) -> Result<Uri, HeadError> {
        let target = match &self.bytes[self.target.clone()] {
            b"" => Bytes::from_static(b"/"),
            // An absolute-form target with a query but no path (`http://h?q`): its path is `/`.
            query if query.starts_with(b"?") => Bytes::from([b"/", query].concat()),
            _ => self.bytes.slice(self.target.clone()),
        };
        Uri::from_maybe_shared(target).map_err(|_| {
            HeadError::bad(format!(
                "request target `{}` is not a valid path",
                String::from_utf8_lossy(&self.bytes[self.target.clone()])
            ))
        })
    }

    /// Every header field, in order.
    pub fn headers(&self) -> Result<HeaderMap, HeadError> {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        // The same bytes parsed before, so this cannot fail differently.
        httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut request, &self.bytes, &mut fields)
            .map_err(|e| HeadError::bad(format!("malformed request head: {e}")))?;
        let mut headers = HeaderMap::with_capacity(request.headers.len());
        for field in request.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| HeadError::bad(format!("invalid header name `{}`", field.name)))?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| HeadError::bad(format!("invalid value of header `{}`", field.name)))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// Parses a complete head at the start of `buf` and splits it off, or returns `None` (and
/// leaves `buf` alone) while it has not all arrived. `scan` remembers how far earlier calls
/// looked for the head's end.
pub fn parse(
    buf: &mut bytes::BytesMut,
    scan: &mut HeadScan,
) -> Result<Option<RequestHead>, HeadError> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2): httparse skips
    // them, so the end-of-head scan must too.
    let leading = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if !scan.worth_parsing(&buf[leading..]) && !buf.is_empty() {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(too_large());
        }
        return Ok(None);
    }
    let data: &[u8] = buf;
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        data,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => {
            scan.reset();
            n
        }
        Ok(httparse::Status::Partial) => {
            if data.len() > MAX_HEAD_BYTES {
                return Err(too_large());
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                message: format!("the request has more than {MAX_HEADERS} header fields"),
            })
        }
        Err(httparse::Error::Version) if names_another_version(data) => {
            return Err(HeadError {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                message: "this port speaks HTTP/1.1 (and 1.0) only".into(),
            })
        }
        Err(e) => return Err(HeadError::bad(format!("malformed request head: {e}"))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(too_large());
    }
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let method = request
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| HeadError::bad("invalid request method"))?;
    let target = origin_form(request.path.unwrap_or_default())?;
    let target = range_in(data, target.as_bytes());
    let mut hosts = 0;
    let mut request_id = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expects_continue = false;
    let http11 = version == Version::HTTP_11;
    let mut keep_alive = http11;
    for field in request.headers.iter() {
        let name_bytes = field.name.as_bytes();
        if name_bytes.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(field.value)?;
            if length.is_some_and(|m| m != n) {
                return Err(HeadError::bad("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if name_bytes.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked` alone: a body under another coding cannot be read (RFC 9112
            // §6.1), and a repeated field could hide one.
            if chunked || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError {
                    status: StatusCode::NOT_IMPLEMENTED,
                    message: "only the `chunked` transfer coding is supported".into(),
                });
            }
            chunked = true;
        } else if name_bytes.eq_ignore_ascii_case(b"connection") {
            if let Some(persistent) = connection_persistence(field.value, http11) {
                keep_alive = persistent;
            }
        } else if name_bytes.eq_ignore_ascii_case(b"expect") {
            if !field
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(HeadError {
                    status: StatusCode::EXPECTATION_FAILED,
                    message: "the only expectation supported is `100-continue`".into(),
                });
            }
            expects_continue = http11;
        } else if name_bytes.eq_ignore_ascii_case(crate::request_id::HEADER.as_bytes()) {
            request_id = Some(range_in(data, field.value));
        } else if name_bytes.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; none has two.
    if (http11 && hosts != 1) || hosts > 1 {
        return Err(HeadError::bad(if hosts == 0 {
            "an HTTP/1.1 request must carry a Host header field"
        } else {
            "a request must not carry more than one Host header field"
        }));
    }
    let framing = match (chunked, length) {
        // Both framings: a request smuggling attempt or a broken client (RFC 9112 §6.3).
        (true, Some(_)) => {
            return Err(HeadError::bad(
                "a request cannot have both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if !http11 => {
            return Err(HeadError::bad(
                "Transfer-Encoding is not defined for HTTP/1.0 requests",
            ))
        }
        (true, None) => BodyFraming::Chunked,
        (false, n) => BodyFraming::Length(n.unwrap_or(0)),
    };
    Ok(Some(RequestHead {
        bytes: buf.split_to(len).freeze(),
        method,
        target,
        version,
        request_id,
        framing,
        expects_continue,
        keep_alive,
    }))
}

/// The origin form (path and query) of a request target: the target itself, or the part of
/// an absolute-form target after its authority (RFC 9112 §3.2.2: servers accept both).
/// `*` (OPTIONS) and authority form (CONNECT) are not for a gateway.
fn origin_form(target: &str) -> Result<&str, HeadError> {
    // No form of request target has a fragment (RFC 9112 §3.2). Kept, the chat path would
    // be matched against the target with it and the router's `Uri` would drop it: two
    // readings of one target.
    if target.contains('#') {
        return Err(HeadError::bad(format!(
            "request target `{target}` has a fragment"
        )));
    }
    if target.starts_with('/') {
        return Ok(target);
    }
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    });
    let Some(rest) = rest else {
        return Err(HeadError::bad(format!(
            "request target `{target}` is neither a path nor an absolute http(s) URL"
        )));
    };
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_start == 0 {
        return Err(HeadError::bad(format!(
            "request target `{target}` has no host"
        )));
    }
    // The authority is dropped, but a target that is not a URI makes the request line
    // invalid (RFC 9112 §3.2), and a hop in front that routes by it would read it otherwise.
    // Rare enough (clients send origin form) to parse whole.
    if target.parse::<Uri>().is_err() {
        return Err(HeadError::bad(format!(
            "request target `{target}` is not a valid URL"
        )));
    }
    Ok(&rest[path_start..])
}

/// Whether a request line httparse refused for its version names another HTTP version
/// (`HTTP/2.0`, `HTTP/3`): answered 505 rather than 400.
fn names_another_version(data: &[u8]) -> bool {
    let line_end = memchr::memchr(b'\n', data).unwrap_or(data.len());
    let line = data[..line_end].trim_ascii_end();
    line.rsplit(|&b| b == b' ')
        .next()
        .and_then(|v| v.strip_prefix(b"HTTP/"))
        .is_some_and(|v| !v.is_empty() && v[0].is_ascii_digit() && !v.starts_with(b"1."))
}

/// Where `part`, a slice of `buf`, lies in it.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn too_large() -> HeadError {
    HeadError {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        message: format!(
            "the request head is larger than {} KiB",
            MAX_HEAD_BYTES / 1024
        ),
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    content_length(value).ok_or_else(|| {
        HeadError::bad(format!(
            "invalid Content-Length `{}`",
            String::from_utf8_lossy(value)
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A head that arrives a byte at a time is scanned in linear time: each byte is looked
    /// at a bounded number of times, and the full parse runs once.
    #[test]
    fn a_head_dripped_byte_by_byte_is_scanned_once() {
        let fields: String = (0..90)
            .map(|i| format!("x-field-{i}: {}\r\n", "v".repeat(400)))
            .collect();
        let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{fields}content-length: 2\r\n\r\n{{}}");
        assert!(head.len() > 30_000);
        let mut buf = bytes::BytesMut::new();
        let mut scan = HeadScan::default();
        let mut parsed = None;
        for &b in head.as_bytes() {
            buf.extend_from_slice(&[b]);
            if let Some(h) = parse(&mut buf, &mut scan).unwrap() {
                parsed = Some(h);
                break;
            }
        }
        let parsed = parsed.expect("the head parses once complete");
        assert_eq!(parsed.path(), b"/v1/chat/completions");
        assert_eq!(parsed.framing, BodyFraming::Length(2));
        assert!(buf.is_empty(), "the body had not been fed yet");
        let len = head.len() - 2;
        assert!(
            scan.examined <= 4 * len,
            "{} bytes examined for a {len}-byte head",
            scan.examined
        );
    }

    #[test]
    fn leading_empty_lines_and_lf_only_heads_are_found() {
        for head in [
            "\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.1\nhost: x\n\n",
        ] {
            let mut buf = bytes::BytesMut::from(head);
            let h = parse(&mut buf, &mut HeadScan::default()).unwrap().unwrap();
            assert_eq!(h.path(), b"/");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn absolute_form_targets_give_their_origin_form() {
        for (target, origin) in [
            ("http://h/v1/x?q=1", "/v1/x?q=1"),
            ("HTTPS://h:8080", ""),
            ("http://h?q", "?q"),
            ("/p", "/p"),
        ] {
            assert_eq!(origin_form(target).unwrap(), origin, "{target}");
        }
        // From `http://"h/x` on, accepted until the differential test against hyper found
        // them: an authority left unread, a fragment read one way for the chat path and
        // another (dropped) by the router's `Uri`.
        for bad in [
            "*",
            "h/x",
            "ftp://h/x",
            "http:///x",
            "http://\"h/x",
            "http://exampl%.org/x",
            "http://h h/x",
            "/v1/chat/completions#x",
            "http://h/x#y",
        ] {
            assert!(origin_form(bad).is_err(), "{bad}");
        }
    }
}
