//! HTTP/1.1 pieces both sides of the gateway share: the client connection (`downstream`) and
//! the upstream client (`upstream::h1`). Body framing and the chunked coding, field values
//! both sides read the same way, and the limits that bound them. Like the connections that
//! use it, this code is frozen: security fixes and tests only.

pub mod chunked;

pub use chunked::{decode, Chunked, Decoded, Framing, FramingError};

/// Longest chunk-size or trailer line accepted.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most trailer fields after a chunked body.
pub const MAX_TRAILER_FIELDS: u8 = 16;
/// Most chunk-extension bytes in one body (extensions carry nothing the gateway uses; a peer
/// sending many is stalling or probing).
pub const MAX_EXTENSION_BYTES: usize = 16 * 1024;

/// Where the search for the end of a head resumes: the bytes before it hold no end of head,
/// so a head that arrives a byte at a time is scanned once in all, not once per byte (for
/// request heads from clients and response heads from upstreams alike).
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
    /// Bytes looked at so far, over all calls: what the linear-cost tests count.
    pub examined: usize,
}

impl HeadScan {
    /// Whether the full parse should look at `buf` now. On the first look at a head, yes:
    /// most heads arrive whole in one read, and then the parse is all the work. After a
    /// first look that found the head incomplete, the bytes it saw hold no end of head, so
    /// only bytes not scanned before are searched, and the parse runs again once they hold
    /// the head's end (an empty line). Call [`HeadScan::reset`] when the head is consumed.
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        if self.scanned == 0 {
            self.scanned = buf.len();
            self.examined += buf.len();
            return true;
        }
        // Resume a little before the end: a line break may have been cut in two.
        let from = self.scanned.saturating_sub(3);
        self.scanned = buf.len();
        let window = &buf[from.min(buf.len())..];
        self.examined += window.len();
        // httparse accepts LF as well as CRLF line endings.
        memchr::memchr_iter(b'\n', window).any(|i| {
            let rest = &window[i + 1..];
            rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
        })
    }

    pub fn reset(&mut self) {
        self.scanned = 0;
    }
}

/// A `Content-Length` value: 1 to 19 ASCII digits, surrounding whitespace allowed.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// What a `Connection` field value says about persistence, for either side of a connection:
/// `Some(false)` when it lists `close` (which wins over anything else listed), `Some(true)`
/// when an HTTP/1.0 message lists `keep-alive`, `None` when it says nothing about it.
pub fn connection_persistence(value: &[u8], http11: bool) -> Option<bool> {
    let mut persistent = None;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            return Some(false);
        }
        if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
            persistent = Some(true);
        }
    }
    persistent
}

/// Statuses whose responses never have a body (RFC 9112 §6.3): 1xx, 204, 304.
pub fn is_bodyless(status: u16) -> bool {
    matches!(status, 100..=199 | 204 | 304)
}

/// RFC 9110 `tchar`: what a field name (and a transfer coding) is made of.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `value` is a valid field value: visible ASCII, obs-text, spaces and tabs; no
/// other control character.
pub fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    /// Fed a byte at a time, the scan looks at each byte a bounded number of times, and the
    /// full parse runs twice: on the first byte, and once the head is whole.
    #[test]
    fn a_head_scan_is_linear_in_the_bytes_fed() {
        let head = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-a: b\r\n".repeat(3000));
        let whole = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
        let mut scan = HeadScan::default();
        let (mut parses, mut parsed_at) = (0, None);
        for n in 1..=head.len() {
            let buf = &head.as_bytes()[..n];
            if scan.worth_parsing(buf) {
                parses += 1;
                if whole(buf) {
                    parsed_at = Some(n);
                    break;
                }
            }
        }
        assert_eq!(parsed_at, Some(head.len()));
        assert_eq!(parses, 2);
        assert!(
            scan.examined <= 4 * head.len(),
            "{} for {}",
            scan.examined,
            head.len()
        );
    }

    #[test]
    fn close_wins_and_keep_alive_counts_only_for_http_10() {
        assert_eq!(
            connection_persistence(b"keep-alive, close", false),
            Some(false)
        );
        assert_eq!(connection_persistence(b"Keep-Alive", false), Some(true));
        assert_eq!(connection_persistence(b"keep-alive", true), None);
        assert_eq!(connection_persistence(b"upgrade", true), None);
    }
}
