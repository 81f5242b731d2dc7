//! Body framing, and the chunked transfer coding (RFC 9112 §7.1) decoded strictly, the same
//! for requests and responses: lines end in CRLF only; a chunk size is hex digits with no
//! whitespace before them; an extension holds no control character; trailer lines are header
//! fields (a token, a colon, a clean value), at most [`MAX_TRAILER_FIELDS`] of them.
//! Leniency here is what request smuggling feeds on: two parsers that disagree on where a
//! chunk ends disagree on where the next request starts.

use bytes::{Bytes, BytesMut};

use super::{
    is_field_value, is_token_byte, MAX_EXTENSION_BYTES, MAX_LINE_BYTES, MAX_TRAILER_FIELDS,
};

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the peer closes the connection (responses only).
    UntilClose,
    /// The body has ended.
    Done,
}

/// The chunked decoder's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    pub at: Chunk,
    /// Extension bytes seen so far in this body.
    extension_bytes: usize,
    /// Trailer fields seen so far.
    trailers: u8,
}

impl Chunked {
    /// At the start of a chunked body.
    pub const START: Chunked = Chunked {
        at: Chunk::Size,
        extension_bytes: 0,
        trailers: 0,
    };
}

/// Where in a chunked body the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF that ends chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
}

/// One piece of decoded body.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Nothing decodable is buffered: read more.
    NeedMore,
    End,
}

/// The body's bytes break the framing; the connection cannot be trusted after this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FramingError(pub String);

fn invalid(message: impl Into<String>) -> FramingError {
    FramingError(message.into())
}

/// The next piece of body in `buf` under `framing`; consumes what it returns.
pub fn decode(buf: &mut BytesMut, framing: &mut Framing) -> Result<Decoded, FramingError> {
    loop {
        let chunked = match framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::UntilClose => {
                return Ok(if buf.is_empty() {
                    Decoded::NeedMore
                } else {
                    Decoded::Data(buf.split().freeze())
                });
            }
            Framing::Length(remaining) => {
                let Some(data) = take_data(buf, remaining) else {
                    return Ok(Decoded::NeedMore);
                };
                if *remaining == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Decoded::Data(data));
            }
            Framing::Chunked(chunked) => chunked,
        };
        match &mut chunked.at {
            Chunk::Data(remaining) => {
                let Some(data) = take_data(buf, remaining) else {
                    return Ok(Decoded::NeedMore);
                };
                if *remaining == 0 {
                    chunked.at = Chunk::DataEnd;
                }
                return Ok(Decoded::Data(data));
            }
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                let (size, extension) = parse_size_line(&line)?;
                chunked.extension_bytes += extension;
                if chunked.extension_bytes > MAX_EXTENSION_BYTES {
                    return Err(invalid(format!(
                        "more than {MAX_EXTENSION_BYTES} bytes of chunk extensions"
                    )));
                }
                chunked.at = if size == 0 {
                    Chunk::Trailer
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::DataEnd => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                if !line.is_empty() {
                    return Err(invalid("chunk data longer than its size"));
                }
                chunked.at = Chunk::Size;
            }
            Chunk::Trailer => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                if line.is_empty() {
                    *framing = Framing::Done;
                    continue;
                }
                if chunked.trailers >= MAX_TRAILER_FIELDS {
                    return Err(invalid(format!(
                        "more than {MAX_TRAILER_FIELDS} trailer fields"
                    )));
                }
                check_trailer_field(&line)?;
                chunked.trailers += 1;
            }
        }
    }
}

/// Up to `remaining` buffered bytes, or `None` when nothing is buffered.
fn take_data(buf: &mut BytesMut, remaining: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
    *remaining -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// A whole line (without its CRLF) from the front of `buf`, or `None` if it has not all
/// arrived. A line ending in a bare LF is refused.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
    let window = &buf[..buf.len().min(MAX_LINE_BYTES + 2)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "a chunk line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(invalid("a chunk line must end with CRLF, not a bare LF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// `1a;name=value` → (26, extension length). The size is 1 to 15 hex digits with nothing
/// before them; spaces or tabs may follow; then extensions, without control characters.
fn parse_size_line(line: &[u8]) -> Result<(u64, usize), FramingError> {
    let shown = || String::from_utf8_lossy(line).into_owned();
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(invalid(format!("invalid chunk size line {:?}", shown())));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from(char::from(d).to_digit(16).unwrap_or(0))
    });
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    match rest.first() {
        None => Ok((size, 0)),
        Some(b';') => {
            if rest.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
                return Err(invalid(format!(
                    "a chunk extension holds a control character: {:?}",
                    shown()
                )));
            }
            Ok((size, rest.len()))
        }
        Some(_) => Err(invalid(format!("invalid chunk size line {:?}", shown()))),
    }
}

/// A trailer line is a header field: `name: value`.
fn check_trailer_field(line: &[u8]) -> Result<(), FramingError> {
    let colon = memchr::memchr(b':', line);
    let ok = colon.is_some_and(|c| {
        c > 0 && line[..c].iter().copied().all(is_token_byte) && is_field_value(&line[c + 1..])
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "a trailer line is not a header field: {:?}",
            String::from_utf8_lossy(line)
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Decodes `wire` fed `piece` bytes at a time; the body, or the first error.
    fn decode_all(wire: &[u8], piece: usize) -> Result<Vec<u8>, FramingError> {
        let mut framing = Framing::Chunked(Chunked::START);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decode(&mut buf, &mut framing)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End => return Ok(body),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(invalid("incomplete"));
                    }
                    let n = piece.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn a_body_decodes_the_same_under_every_split() {
        let wire = b"5;a=b\r\nhello\r\n1a \t\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for piece in 1..wire.len() {
            let body = decode_all(wire, piece).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "piece {piece}");
        }
    }

    #[test]
    fn loose_framing_is_refused() {
        for (wire, says) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], "bare LF"),
            (b"5\r\nhello\n0\r\n\r\n", "bare LF"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "chunk size"),
            (b"5 x\r\nhello\r\n0\r\n\r\n", "chunk size"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "chunk size"),
            (b"5;a=\x01\r\nhello\r\n0\r\n\r\n", "control character"),
            (b"5;a=\rb\r\nhello\r\n0\r\n\r\n", "control character"),
            (b"5\r\nhelloX\r\n0\r\n\r\n", "longer than its size"),
            (b"0\r\nno colon\r\n\r\n", "not a header field"),
            (b"0\r\nbad name: v\r\n\r\n", "not a header field"),
            (b"0\r\n: v\r\n\r\n", "not a header field"),
            (b"0\r\nx: a\x00b\r\n\r\n", "not a header field"),
            (b"1000000000000000\r\n", "chunk size"),
        ] {
            let e = decode_all(wire, 64).unwrap_err();
            assert!(
                e.0.contains(says),
                "{:?}: {e}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let extension = format!(";{}", "e".repeat(4000));
        let mut wire = Vec::new();
        for _ in 0..5 {
            wire.extend_from_slice(format!("1{extension}\r\nx\r\n").as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let e = decode_all(&wire, 4096).unwrap_err();
        assert!(e.0.contains("chunk extensions"), "{e}");

        let trailers: String = (0..17).map(|i| format!("x-{i}: v\r\n")).collect();
        let e = decode_all(format!("0\r\n{trailers}\r\n").as_bytes(), 64).unwrap_err();
        assert!(e.0.contains("trailer fields"), "{e}");
        let trailers: String = (0..16).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(decode_all(format!("0\r\n{trailers}\r\n").as_bytes(), 64).is_ok());
    }
}
