//! W3C Trace Context (`traceparent`, `tracestate`): read from a client's request, written on
//! the request to the upstream. The header is network input: the reading is strict (the
//! W3C rules), bounded, and checked against OpenTelemetry's own propagator on generated
//! input (`differential/trace_context.rs`).

use std::cell::Cell;

/// A trace's id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

/// Bit 0 of `trace-flags`: the caller records this trace.
const SAMPLED: u8 = 0x01;

/// Longest `tracestate` passed on. The W3C limit for what a vendor must propagate; a longer
/// one is dropped rather than cut (cutting can split a member).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A caller's `traceparent`: the trace it belongs to, the caller's span, its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` value: `VV-<32 hex>-<16 hex>-<2 hex>`, lowercase hex. Version
    /// `00` is exactly that; a later version may append `-…` fields, which are ignored;
    /// version `ff`, zero ids and anything else are refused (`None`: the request starts a
    /// trace of its own).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = value.trim_ascii();
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The `traceparent` value (version 00) naming `span` of `trace` as the parent.
pub fn traceparent_value(trace: TraceId, span: SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(&trace.0, &mut out[3..35]);
    write_hex(&span.0, &mut out[36..52]);
    write_hex(&[if sampled { SAMPLED } else { 0 }], &mut out[53..55]);
    out
}

/// A `tracestate` worth passing on: within the size bound and made only of characters a
/// header value may hold. Its list members are not checked: it is the caller's, passed on.
pub fn tracestate_to_forward(value: &[u8]) -> Option<Box<str>> {
    let value = value.trim_ascii();
    let ok = !value.is_empty()
        && value.len() <= MAX_TRACESTATE_BYTES
        && value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    ok.then(|| String::from_utf8_lossy(value).into())
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

pub(super) fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

thread_local! {
    /// SplitMix64 state, seeded from the OS once per thread. Trace and span ids need to be
    /// unique and unguessable enough to not collide, not secret: a system call per id would
    /// cost more than the rest of a span.
    static ID_STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock and the thread still make ids unlikely to repeat.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let place = &bytes as *const [u8; 8] as usize as u64;
        bytes = (nanos ^ place.rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

fn next_u64() -> u64 {
    ID_STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl TraceId {
    pub fn random() -> TraceId {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next_u64().to_le_bytes());
            id[8..].copy_from_slice(&next_u64().to_le_bytes());
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }

    /// The id's last 8 bytes as a number, the part ratio sampling compares (as the W3C
    /// "random" flag and OpenTelemetry's ratio sampler do): callers that sample by ratio on
    /// the same id agree.
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            let id = next_u64();
            if id != 0 {
                return SpanId(id.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_w3c_example_and_writes_it_back() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(hex(&p.trace_id.0), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent_id.0), "00f067aa0ba902b7");
        assert!(p.sampled());
        assert_eq!(
            &traceparent_value(p.trace_id, p.parent_id, true)[..],
            EXAMPLE
        );
        let unsampled = traceparent_value(p.trace_id, p.parent_id, false);
        assert!(unsampled.ends_with(b"-00"));
    }

    #[test]
    fn refuses_what_the_w3c_rules_refuse() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{}", hex(value));
        }
        // A later version may carry more fields.
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        assert!(!TraceParent::parse(future).unwrap().sampled());
    }

    #[test]
    fn tracestate_is_passed_on_only_when_it_fits_a_header() {
        assert_eq!(
            tracestate_to_forward(b" rojo=00f067aa0ba902b7,congo=t61rcWkgMzE ").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(tracestate_to_forward(b"a=b\r\nx-injected: 1"), None);
        assert_eq!(tracestate_to_forward(&[b'a'; 513]), None);
        assert_eq!(tracestate_to_forward(b"  "), None);
    }

    #[test]
    fn ids_are_never_zero_and_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| SpanId::random().0).collect();
        assert_eq!(ids.len(), 10_000);
        assert_ne!(TraceId::random().0, [0; 16]);
    }
}
