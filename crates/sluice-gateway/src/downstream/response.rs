//! A response head as bytes, and the framing of the body that follows it.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, response::Parts, HeaderName, StatusCode, Version};

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD requests, 1xx, 204 and 304. A known length (HEAD) is still announced.
    None {
        length: Option<u64>,
    },
    Length(u64),
    Chunked,
    /// HTTP/1.0 clients with a body of unknown length: it ends when the connection does.
    UntilClose,
}

impl ResponseFraming {
    /// The framing for a response with `status` and a body of `length` (if known), to a
    /// request with `method_is_head` in `version`.
    pub fn choose(
        status: StatusCode,
        length: Option<u64>,
        method_is_head: bool,
        version: Version,
    ) -> Self {
        if crate::http1::is_bodyless(status.as_u16()) {
            return ResponseFraming::None { length: None };
        }
        match (method_is_head, length) {
            // The router empties the body of an answer to HEAD: a length of 0 is that, not
            // the length a GET would get.
            (true, length) => ResponseFraming::None {
                length: length.filter(|&n| n > 0),
            },
            (false, Some(n)) => ResponseFraming::Length(n),
            (false, None) if version == Version::HTTP_11 => ResponseFraming::Chunked,
            (false, None) => ResponseFraming::UntilClose,
        }
    }
}

/// Header fields the connection writes itself: its framing and persistence are its own.
const CONNECTION_FIELDS: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
];

/// Appends the status line and header fields of `parts` to `out`, with `date`, the framing
/// fields and `connection` as the connection decided them.
pub fn encode_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    framing: ResponseFraming,
    keep_alive: bool,
    request_version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if CONNECTION_FIELDS.contains(name) {
            continue;
        }
        has_date |= name == header::DATE;
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    end_head(out, !has_date, framing, keep_alive, request_version);
}

/// Appends the head of a `200 OK` whose body is `length` bytes, with `fields` (names and
/// values the caller knows are valid) and the fields the connection adds to every head.
pub fn encode_ok_head(
    out: &mut Vec<u8>,
    fields: &[(&[u8], &[u8])],
    length: u64,
    keep_alive: bool,
    request_version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in fields {
        push_field(out, name, value);
    }
    end_head(
        out,
        true,
        ResponseFraming::Length(length),
        keep_alive,
        request_version,
    );
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `date` (unless the response had one), framing, `connection`, and the empty line.
fn end_head(
    out: &mut Vec<u8>,
    add_date: bool,
    framing: ResponseFraming,
    keep_alive: bool,
    request_version: Version,
) {
    if add_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) | ResponseFraming::None { length: Some(n) } => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::None { length: None } | ResponseFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if request_version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body (RFC 9112 §7.1).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    push_hex(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lowercase hexadecimal, without leading zeros (`0` for zero).
fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) & 0xf]);
    }
}

/// The last chunk of a chunked body, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

thread_local! {
    /// The `date` value for the current second. Each worker thread keeps its own: formatting
    /// a date for every response would cost more than the rest of the head.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_are_hexadecimal_as_format_writes_them() {
        for n in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            65_536,
            1 << 40,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            super::push_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").into_bytes(), "{n}");
        }
    }
}
