//! Server-sent events (the `text/event-stream` format of the WHATWG HTML standard).
//!
//! [`SseParser`] is incremental: feed it bytes as they arrive, in chunks split anywhere (inside
//! a line, between `\r` and `\n`, inside a UTF-8 sequence), and it yields whole events. An event
//! left unfinished when the stream ends is discarded, as the standard requires — a caller that
//! needs to know a stream was cut short checks [`SseParser::has_partial_event`] at the end.

/// One dispatched event. `data` joins multiple `data:` lines with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Incremental event-stream parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// Where the search for the next line end resumes: the unfinished line's bytes before it
    /// hold none. Without it, a long line arriving in small pieces is searched again from its
    /// start on every push: quadratic (a 16 MiB line in 8 KiB reads cost 11 s).
    scanned: usize,
    /// Bytes searched for a line end, over all pushes: what the linear-cost test counts.
    #[cfg(test)]
    examined: usize,
    /// The previous chunk ended in `\r`: a `\n` opening the next chunk belongs to it.
    skip_lf: bool,
    bom_checked: bool,
    pending: PendingEvent,
}

#[derive(Debug, Default)]
struct PendingEvent {
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    touched: bool,
}

/// The byte stream is not an event stream (a line exceeded the limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event-stream line longer than {limit} bytes")]
pub struct SseLineTooLong {
    pub limit: usize,
}

impl SseParser {
    /// Upper bound on one line, so a peer that never sends a newline cannot grow the buffer
    /// without limit.
    pub const MAX_LINE: usize = 16 * 1024 * 1024;

    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends every event completed by them to `out`.
    pub fn push(
        &mut self,
        mut chunk: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), SseLineTooLong> {
        // Only the first byte after the `\r` can be its `\n`: once a chunk with any byte has
        // come, the pair is settled (an empty chunk settles nothing).
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        self.buf.extend_from_slice(chunk);
        if !self.bom_checked {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(());
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.start = 3;
            }
            self.bom_checked = true;
        }
        loop {
            let from = self.scanned.max(self.start);
            let rest = &self.buf[from..];
            #[cfg(test)]
            {
                self.examined += rest.len();
            }
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.scanned = self.buf.len();
                break;
            };
            let line_end = from + pos;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    // `\r` is the last byte we have: a `\n` may follow in the next chunk.
                    None => self.skip_lf = true,
                }
            }
            // Borrowed when valid UTF-8 (always, from a sane peer): no copy per line. The
            // strict check first: its ASCII fast path is far quicker than the lossy decoder's.
            let bytes = &self.buf[self.start..line_end];
            let line = match std::str::from_utf8(bytes) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(bytes),
            };
            if let Some(ev) = self.pending.take_line(&line) {
                out.push(ev);
            }
            self.start = next;
        }
        // Compact once the consumed prefix dominates, so the buffer stays proportional to
        // one line.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.start > Self::MAX_LINE {
            return Err(SseLineTooLong {
                limit: Self::MAX_LINE,
            });
        }
        Ok(())
    }

    /// True when bytes or fields of an event were received but the blank line that ends the
    /// event was not: at end of stream this means the stream was cut mid-event.
    pub fn has_partial_event(&self) -> bool {
        self.pending.touched || self.buf.len() > self.start
    }
}

impl PendingEvent {
    /// Takes one line of the stream; a blank line completes the event, if it has data.
    fn take_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let p = std::mem::take(self);
            if !p.has_data {
                return None;
            }
            return Some(SseEvent {
                event: p.event,
                data: p.data,
                id: p.id,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        self.touched = true;
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// Frames `data` as one event: a `data:` line per line of `data`, then a blank line.
pub fn encode_event(event: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    encode_event_into(&mut out, event, data);
    out
}

/// [`encode_event`], appended to `out` (a relay framing many events into one write).
pub fn encode_event_into(out: &mut String, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    let mut rest = data;
    // Lines found with memchr: a chunk's data is one long line, where `split` would test
    // every character.
    loop {
        let (line, next) = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.push('\n');
}

/// The OpenAI end-of-stream sentinel, framed.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        let evs =
            parse_all(&[b": keep-alive\r\nevent: error\rdata: a\r\ndata:b\n\ndata: [DONE]\n\n"]);
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: Some("error".into()),
                    data: "a\nb".into(),
                    id: None
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn cr_split_from_lf_across_chunks_is_one_line_end() {
        let evs = parse_all(&[b"data: x\r", b"\n\r", b"\ndata: y\n\n"]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "x");
        assert_eq!(evs[1].data, "y");
    }

    /// Found by the differential test against a reference parser: the `\n` of a CRLF cut
    /// from its `\r` left the parser still waiting for one, so the blank line after it was
    /// swallowed and the event held back (and merged with the next one).
    #[test]
    fn the_line_after_a_split_crlf_is_its_own_line() {
        let evs = parse_all(&[b"data: x\r", b"\n", b"\n", b"data: y\n\n"]);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!((&*evs[0].data, &*evs[1].data), ("x", "y"));
        let evs = parse_all(&[b"data: x\r", b"", b"\n", b"", b"\n"]);
        assert_eq!(evs.len(), 1, "{evs:?}");
    }

    /// A line that arrives in small pieces is searched for its end once, not once per piece.
    #[test]
    fn a_long_line_dripped_in_pieces_is_searched_once() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.push(b"data: 1\n\ndata: ", &mut out).unwrap();
        let piece = [b'x'; 1024];
        for _ in 0..1024 {
            p.push(&piece, &mut out).unwrap();
        }
        p.push(b"\r", &mut out).unwrap();
        p.push(b"\n\ndata: 3\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].data.len(), 1024 * 1024);
        let total = 15 + 1024 * 1024 + 1 + 13;
        assert!(p.examined <= 2 * total, "{} bytes searched", p.examined);
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let evs = parse_all(&[b"\xEF", b"\xBB\xBFdata: x\n\n"]);
        assert_eq!(evs[0].data, "x");
    }

    #[test]
    fn unfinished_event_is_reported_not_dispatched() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.push(b"data: {\"a\":1}\n\ndata: {\"trunc", &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(p.has_partial_event());
        let mut q = SseParser::new();
        q.push(b"data: x\n\n", &mut out).unwrap();
        assert!(!q.has_partial_event());
    }

    #[test]
    fn encode_splits_lines() {
        assert_eq!(encode_event(None, "a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(
            encode_event(Some("error"), "{}"),
            "event: error\ndata: {}\n\n"
        );
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_events(
            datas in proptest::collection::vec("[a-z{}\":, \\n]{0,40}", 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
            crlf in any::<bool>(),
        ) {
            let mut wire = String::new();
            for d in &datas {
                wire.push_str(&encode_event(None, d));
            }
            if crlf {
                wire = wire.replace('\n', "\r\n");
            }
            let bytes = wire.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = SseParser::new();
            let mut out = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                p.push(&bytes[prev..c], &mut out).unwrap();
                prev = c;
            }
            let got: Vec<String> = out.into_iter().map(|e| e.data).collect();
            prop_assert_eq!(got, datas);
            prop_assert!(!p.has_partial_event());
        }
    }
}
