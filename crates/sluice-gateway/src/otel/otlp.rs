//! Spans as OTLP/HTTP wants them: an `ExportTraceServiceRequest` in protobuf's binary
//! encoding (opentelemetry-proto's `collector/trace/v1`). Written by hand: the messages are
//! small and fixed, and a protobuf code generator would be a build step for five of them.
//! The test receiver decodes what this writes with the generated types of the OpenTelemetry
//! project (`sluice-testkit`'s `otlp`), so the field numbers are checked against the real
//! schema.

use std::borrow::Cow;

use super::context::{SpanId, TraceId};

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// `Status`: unset, or an error with a message (OpenTelemetry leaves `Ok` to applications).
#[derive(Debug, Clone, PartialEq)]
pub enum SpanStatus {
    Unset,
    Error(Cow<'static, str>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttrValue {
    fn from(s: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(s))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Cow::Owned(s))
    }
}

impl From<u64> for AttrValue {
    fn from(n: u64) -> Self {
        AttrValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub trace_state: Option<Box<str>>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Unix time in nanoseconds.
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: SpanStatus,
    pub sampled: bool,
}

/// What every batch says about who sent it (`Resource`) and which code made the spans
/// (`InstrumentationScope`).
#[derive(Debug, Clone)]
pub struct Resource {
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub scope_name: &'static str,
    pub scope_version: &'static str,
}

/// The body of one export request holding `spans`.
pub fn export_request(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
    // A span with its attributes is some 400 bytes.
    let mut request = Proto(Vec::with_capacity(256 + spans.len() * 512));
    // ExportTraceServiceRequest.resource_spans = 1
    request.message(1, |rs| {
        // ResourceSpans.resource = 1
        rs.message(1, |r| {
            for (key, value) in &resource.attributes {
                r.message(1, |kv| key_value(kv, key, value));
            }
        });
        // ResourceSpans.scope_spans = 2
        rs.message(2, |ss| {
            // ScopeSpans.scope = 1
            ss.message(1, |scope| {
                scope.string(1, resource.scope_name);
                scope.string(2, resource.scope_version);
            });
            for span in spans {
                // ScopeSpans.spans = 2
                ss.message(2, |s| write_span(s, span));
            }
        });
    });
    request.0
}

fn write_span(s: &mut Proto, span: &SpanData) {
    s.bytes(1, &span.trace_id.0);
    s.bytes(2, &span.span_id.0);
    if let Some(state) = &span.trace_state {
        s.string(3, state);
    }
    if let Some(parent) = span.parent {
        s.bytes(4, &parent.0);
    }
    s.string(5, &span.name);
    s.varint_field(6, span.kind as u64);
    s.fixed64(7, span.start);
    s.fixed64(8, span.end.max(span.start));
    for (key, value) in &span.attributes {
        s.message(9, |kv| key_value(kv, key, value));
    }
    if let SpanStatus::Error(message) = &span.status {
        // Status.message = 2, Status.code = 3 (STATUS_CODE_ERROR = 2)
        s.message(15, |st| {
            st.string(2, message);
            st.varint_field(3, 2);
        });
    }
    // Span.flags = 16: the W3C trace flags in the low byte, and bit 8 set to say that
    // whether the parent is remote is known (bit 9 says it is).
    let remote_known = 0x100;
    let remote = if span.parent.is_some() && span.kind == SpanKind::Server {
        0x200
    } else {
        0
    };
    s.fixed32(16, u32::from(span.sampled) | remote_known | remote);
}

fn key_value(kv: &mut Proto, key: &str, value: &AttrValue) {
    kv.string(1, key);
    // KeyValue.value = 2: AnyValue { string_value = 1, bool_value = 2, int_value = 3 }
    kv.message(2, |v| match value {
        AttrValue::Str(s) => v.string(1, s),
        AttrValue::Bool(b) => v.varint_field(2, u64::from(*b)),
        AttrValue::Int(n) => v.varint_field(3, *n as u64),
    });
}

/// A protobuf message being written.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;
    const FIXED32: u64 = 5;

    fn tag(&mut self, field: u64, wire_type: u64) {
        self.varint(field << 3 | wire_type);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn varint_field(&mut self, field: u64, n: u64) {
        self.tag(field, Self::VARINT);
        self.varint(n);
    }

    fn fixed64(&mut self, field: u64, n: u64) {
        self.tag(field, Self::FIXED64);
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn fixed32(&mut self, field: u64, n: u32) {
        self.tag(field, Self::FIXED32);
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.tag(field, Self::LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u64, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A nested message, written in place: its length goes in front once it is known. One
    /// byte is set aside for it (enough below 128 bytes: attributes, values); a longer
    /// message moves over by the few bytes more its length takes. One buffer for the whole
    /// request, instead of one per nested message.
    fn message(&mut self, field: u64, write: impl FnOnce(&mut Proto)) {
        self.tag(field, Self::LEN);
        let at = self.0.len();
        self.0.push(0);
        write(self);
        let len = self.0.len() - at - 1;
        if len < 0x80 {
            self.0[at] = len as u8;
            return;
        }
        let mut prefix = Proto(Vec::with_capacity(10));
        prefix.varint(len as u64);
        self.0.splice(at..at + 1, prefix.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut p = Proto::default();
        p.varint(1);
        p.varint(300);
        p.varint(u64::MAX);
        assert_eq!(
            p.0,
            [1, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn nested_lengths_take_as_many_bytes_as_they_need() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut p = Proto::default();
            p.message(2, |m| m.0.extend(std::iter::repeat_n(7u8, len)));
            let mut expected = Proto::default();
            expected.tag(2, Proto::LEN);
            expected.varint(len as u64);
            expected.0.extend(std::iter::repeat_n(7u8, len));
            assert_eq!(p.0, expected.0, "{len}");
        }
    }

    #[test]
    fn a_negative_int_attribute_takes_ten_bytes_as_protobuf_says() {
        let mut p = Proto::default();
        key_value(&mut p, "n", &AttrValue::Int(-1));
        // key (3 bytes) + value tag, length, then field 3: tag + 10 varint bytes.
        assert_eq!(p.0.len(), 3 + 2 + 1 + 10);
    }
}
