//! `SseParser` against a reference: the WHATWG event-stream algorithm written out plainly
//! over the whole input, with the semantics `sse.rs` promises where they depart from the
//! standard. Generated streams (field lines, comments, blank lines, CR/LF/CRLF mixes, BOMs,
//! invalid UTF-8, random bytes) are fed to `SseParser` in random pieces; the events, the
//! line-length error and the partial-event flag must match the reference's.
//!
//! What sluice promises beyond, or instead of, the standard, and the reference does too:
//! - an event's `id` is the last `id` field of that event, not the stream's last event ID
//!   carried over (the gateway relays events one by one; it does not reconnect);
//! - `event` is the last `event` field's value as sent (`Some("")` for `event:`), with no
//!   default of `message`;
//! - `retry` and unknown fields are read and dropped;
//! - an event left without its blank line when the stream ends is not dispatched, and
//!   `has_partial_event` says whether any field, or any byte of an unfinished line, came
//!   after the last blank line;
//! - a line is at most `SseParser::MAX_LINE` bytes *while it is unfinished*: a push after
//!   which more than that many bytes wait for their line end fails. A longer line that ends
//!   within the same push is read (the limit bounds the buffer, not the line).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use sluice_api::sse::{SseEvent, SseLineTooLong, SseParser};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a whole stream, pushed in pieces, comes to.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<SseEvent>,
    /// The push (by index) that failed with a line too long, if one did.
    too_long_at: Option<usize>,
    /// `has_partial_event` at the end (when no push failed).
    partial: bool,
}

/// The reference: the stream split into lines once, then the lines interpreted in order.
fn reference(input: &[u8], cuts: &[usize]) -> Outcome {
    // A stream starts with at most one BOM, which is not part of the first line.
    let body = input.strip_prefix(BOM).unwrap_or(input);
    let offset = input.len() - body.len();
    // Lines end at CRLF, LF or CR. Each line with where its terminator starts (in `input`);
    // what follows the last terminator is an unfinished line.
    let mut lines: Vec<(&[u8], usize)> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' | b'\n' => {
                lines.push((&body[start..i], offset + i));
                i += if body[i..].starts_with(b"\r\n") { 2 } else { 1 };
                start = i;
            }
            _ => i += 1,
        }
    }
    let unfinished = &body[start..];

    // The line-length limit applies at the end of each push, to the unfinished line: the
    // bytes since the last CR or LF (or since the BOM).
    let line_start_before = |cut: usize| {
        if cut <= offset {
            return cut;
        }
        input[offset..cut]
            .iter()
            .rposition(|&b| b == b'\r' || b == b'\n')
            .map_or(offset, |j| offset + j + 1)
    };
    let too_long_at = cuts
        .iter()
        .position(|&cut| cut.saturating_sub(line_start_before(cut)) > SseParser::MAX_LINE);
    let read_up_to = too_long_at.map_or(usize::MAX, |k| cuts[k]);

    let mut events = Vec::new();
    let (mut event, mut data, mut id): (Option<String>, Option<String>, Option<String>) =
        (None, None, None);
    let mut touched = false;
    for (raw, end) in lines {
        if end >= read_up_to {
            break;
        }
        let line = String::from_utf8_lossy(raw);
        if line.is_empty() {
            if let Some(data) = data.take() {
                events.push(SseEvent {
                    event: event.take(),
                    data,
                    id: id.take(),
                });
            }
            (event, id, touched) = (None, None, false);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        touched = true;
        match name {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "event" => event = Some(value.to_owned()),
            "id" if !value.contains('\0') => id = Some(value.to_owned()),
            _ => {}
        }
    }
    Outcome {
        events,
        too_long_at,
        partial: too_long_at.is_none() && (touched || !unfinished.is_empty()),
    }
}

/// `SseParser` fed `input` cut at `cuts` (ascending, the last one `input.len()`).
fn sluice(input: &[u8], cuts: &[usize]) -> Outcome {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut from = 0;
    for (k, &cut) in cuts.iter().enumerate() {
        match parser.push(&input[from..cut], &mut events) {
            Ok(()) => {}
            Err(SseLineTooLong { limit }) => {
                assert_eq!(limit, SseParser::MAX_LINE);
                return Outcome {
                    events,
                    too_long_at: Some(k),
                    partial: false,
                };
            }
        }
        from = cut;
    }
    Outcome {
        events,
        too_long_at: None,
        partial: parser.has_partial_event(),
    }
}

/// Pieces of `len` bytes: cut points from `raw`, sorted, ending at `len`.
fn cuts(raw: &[usize], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    cuts.push(len);
    cuts.sort_unstable();
    cuts
}

fn compare(input: &[u8], raw_cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    let cuts = cuts(raw_cuts, input.len());
    let expected = reference(input, &cuts);
    let got = sluice(input, &cuts);
    // A stream near the line limit is 16 MiB: show its start.
    let shown = &input[..input.len().min(400)];
    prop_assert_eq!(
        &got,
        &expected,
        "input ({} bytes) b\"{}\" cut at {:?}",
        input.len(),
        shown.escape_ascii(),
        cuts
    );
    Ok(got)
}

fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        4 => Just(&b"\n"[..]),
        2 => Just(&b"\r\n"[..]),
        2 => Just(&b"\r"[..]),
    ]
}

/// Field values: text with the bytes that matter (colons, spaces, NUL, a BOM, CR-free
/// non-ASCII) and now and then invalid UTF-8.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => "[a-z0-9 :{}\"\\[\\]]{0,12}".prop_map(String::into_bytes),
        1 => Just(b" lead".to_vec()),
        1 => Just(b"  two".to_vec()),
        1 => Just(b"a\0b".to_vec()),
        1 => Just("\u{feff}x \u{e9}\u{1f600}".as_bytes().to_vec()),
        1 => proptest::collection::vec(
            proptest::sample::select(&b"\x80\xbf\xc3\xe2\xef\xbb\xf0\xff a"[..]),
            1..6
        ),
    ]
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    let name = proptest::sample::select(
        &[
            "data", "data", "data", "data", "data", "event", "id", "retry", "", "Data", "data ",
            "dat", "x",
        ][..],
    );
    let separator = proptest::sample::select(&[":", ":", ": ", ":  ", ""][..]);
    let field = (name, separator, value()).prop_map(|(name, separator, value)| {
        let mut line = format!("{name}{separator}").into_bytes();
        // A line without a colon is all name: a value after it would join the name.
        if !separator.is_empty() {
            line.extend_from_slice(&value);
        }
        line
    });
    prop_oneof![
        8 => field,
        2 => value().prop_map(|v| [&b":"[..], &v].concat()),
        6 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|v| v.into_iter().filter(|&b| b != b'\r' && b != b'\n').collect()),
    ]
}

/// How a stream starts: mostly without a BOM; with one, two, or the start of one.
const STARTS: &[&[u8]] = &[
    b"",
    b"",
    b"",
    BOM,
    b"\xEF\xBB\xBF\xEF\xBB\xBF",
    b"\xEF\xBB",
    b"\xEF",
];

/// A stream: an optional BOM, lines each with its own line end, maybe an unfinished line.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let start = proptest::sample::select(STARTS);
    let structured = (
        start,
        proptest::collection::vec((line(), line_end()), 0..16),
        proptest::option::weighted(0.6, line_end()),
        proptest::option::weighted(0.3, line()),
    )
        .prop_map(|(start, lines, blank, unfinished)| {
            let mut out = start.to_vec();
            for (line, end) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(end);
            }
            // Most streams end their last event.
            out.extend_from_slice(blank.unwrap_or_default());
            out.extend(unfinished.unwrap_or_default());
            out
        });
    let random = proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(&b"\r\n:a \xEF\xBB\xBF"[..]),
            1 => any::<u8>(),
        ],
        0..120,
    )
    .prop_map(|bytes| {
        // Random bytes as lines: `data:` now and then keeps events coming.
        let mut out = Vec::new();
        for (i, b) in bytes.into_iter().enumerate() {
            if i % 7 == 0 {
                out.extend_from_slice(b"data:");
            }
            out.push(b);
        }
        out
    });
    prop_oneof![6 => structured, 1 => random]
}

fn runner(cases: u32) -> TestRunner {
    let mut config = Config {
        cases,
        rng_algorithm: RngAlgorithm::XorShift,
        failure_persistence: None,
        ..Config::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x55e);
    }
    eprintln!(
        "proptest seed {} (PROPTEST_RNG_SEED=n explores another)",
        config.rng_seed
    );
    TestRunner::new(config)
}

#[test]
fn sse_streams_parse_as_the_reference_does_whatever_the_pieces() {
    // Streams, events, streams with an event, streams ending mid-event.
    let counts = Cell::new([0usize; 4]);
    let strategy = (stream(), proptest::collection::vec(any::<usize>(), 0..8));
    let result = runner(3000).run(&strategy, |(input, raw_cuts)| {
        let outcome = compare(&input, &raw_cuts)?;
        // A byte at a time: every CRLF and every UTF-8 sequence cut in two.
        let every: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(&compare(&input, &every)?, &outcome);
        let [inputs, events, with_events, partial] = counts.get();
        counts.set([
            inputs + 1,
            events + outcome.events.len(),
            with_events + usize::from(!outcome.events.is_empty()),
            partial + usize::from(outcome.partial),
        ]);
        Ok(())
    });
    let [inputs, events, with_events, partial] = counts.get();
    eprintln!(
        "sse: {inputs} streams, {events} events, {with_events} streams with an event, {partial} ending mid-event"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(with_events * 10 >= inputs * 4, "too few events to compare");
    assert!(
        partial * 10 >= inputs && partial * 10 <= inputs * 9,
        "streams ending mid-event should be neither rare nor the rule"
    );
}

/// A line of `len` bytes near `MAX_LINE`, after a BOM or not, then `end`; pushes end at
/// these offsets from the line's end; whether a push fails.
struct NearLimit {
    bom: bool,
    len: usize,
    end: &'static [u8],
    pushes: &'static [isize],
    fails: bool,
}

/// Lines around `MAX_LINE`: unfinished at the end of a push, or finished within it; after
/// a BOM (which is not part of the line); ended by a CR that closes one push while its LF
/// opens the next.
#[test]
fn lines_near_the_limit_fail_only_while_unfinished_past_it() {
    let max = SseParser::MAX_LINE;
    const HALF_BACK: isize = -(SseParser::MAX_LINE as isize) / 2;
    let case = |bom, len, end, pushes, fails| NearLimit {
        bom,
        len,
        end,
        pushes,
        fails,
    };
    let cases = [
        case(false, max + 1, b"\n\n", &[], false),
        case(false, max + 1, b"\n\n", &[0], true),
        case(false, max, b"\n\n", &[0], false),
        case(true, max, b"\n\n", &[0], false),
        case(true, max + 1, b"\n\n", &[0], true),
        case(false, max + 1, b"\r\n\r\n", &[1], false),
        case(false, max, b"\r\n\r\n", &[1, 2], false),
        case(false, max + 1, b"\n\n", &[HALF_BACK, 0], true),
    ];
    for NearLimit {
        bom,
        len,
        end,
        pushes,
        fails,
    } in cases
    {
        let mut input = if bom { BOM.to_vec() } else { Vec::new() };
        let start = input.len();
        input.extend_from_slice(b"data: ");
        input.resize(start + len, b'x');
        let line_end = input.len();
        input.extend_from_slice(end);
        input.extend_from_slice(b"data: after\n\n");
        let raw: Vec<usize> = pushes
            .iter()
            .map(|&p| line_end.checked_add_signed(p).unwrap())
            .collect();
        let outcome = compare(&input, &raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            outcome.too_long_at.is_some(),
            fails,
            "BOM {bom}, line of {len}, pushes end at {pushes:?}: {:?}",
            outcome.too_long_at
        );
    }
}
