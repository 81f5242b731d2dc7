//! Generated inputs: a seed of the corpus, mutated; two seeds spliced; or random bytes.

use std::fmt;

use proptest::prelude::*;

use super::Seed;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};

/// Bytes that change how HTTP/1.1 framing reads: line ends, separators, digits, controls.
const INTERESTING_BYTES: &[u8] = b"\r\n \t:;,0019aAfFxX+-=\"\x00\x01\x0b\x0c\x7f\x80\xff";

/// Fragments that turn one framing into another when dropped into a message.
const INTERESTING_FRAGMENTS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"chunked",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Host: h\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=1",
    b"x-trailer: t\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b" chunked",
    b"ffffffffffffffff",
    b"0000000000000000001",
];

/// Whole lines, inserted where a line starts.
const INTERESTING_LINES: &[&[u8]] = &[
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 1\r\n",
    b"Content-Length: 5\r\n",
    b"Host: h\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b"x-t: 1\r\n",
    b"\r\n",
    b"\n",
    b"0\r\n",
    b"1\r\nx\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
];

/// Where a generated input came from (what the counts are broken down by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A corpus seed, unchanged.
    Seed(usize),
    /// A corpus seed with mutations (and maybe a second seed spliced in).
    Mutated(usize),
    /// Built from parts (and maybe mutated).
    Built,
    Random,
}

/// One generated input, and how the network splits it for the side that reads incrementally.
#[derive(Clone)]
pub(super) struct Input {
    pub origin: Origin,
    pub bytes: Vec<u8>,
    /// The sluice parser is fed this many bytes at a time (the last piece may be shorter).
    pub piece: usize,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} piece {} b\"{}\"",
            self.origin,
            self.piece,
            self.bytes.escape_ascii()
        )
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Replace {
        at: Index,
        with: Index,
    },
    InsertByte {
        at: Index,
        byte: Index,
    },
    InsertFragment {
        at: Index,
        fragment: Index,
    },
    Delete {
        at: Index,
        len: usize,
    },
    InsertLine {
        line: Index,
        fragment: Index,
    },
    DuplicateLine {
        line: Index,
    },
    DeleteLine {
        line: Index,
    },
    /// The front of this input up to one point, then another seed from another point.
    Splice {
        seed: Index,
        at: Index,
        from: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<Index>(), any::<Index>()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        (any::<Index>(), any::<Index>()).prop_map(|(at, byte)| Mutation::InsertByte { at, byte }),
        (any::<Index>(), any::<Index>())
            .prop_map(|(at, fragment)| Mutation::InsertFragment { at, fragment }),
        (any::<Index>(), 1usize..4).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<Index>(), any::<Index>())
            .prop_map(|(line, fragment)| Mutation::InsertLine { line, fragment }),
        any::<Index>().prop_map(|line| Mutation::DuplicateLine { line }),
        any::<Index>().prop_map(|line| Mutation::DeleteLine { line }),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(seed, at, from)| Mutation::Splice { seed, at, from }),
    ]
}

/// `at` as a position in `0..=len` (an insertion point).
fn point(at: &Index, len: usize) -> usize {
    at.index(len + 1)
}

/// Where each line (up to and including its LF) lies.
fn lines(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push(start..bytes.len());
    }
    out
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, seeds: &[Seed]) {
    match m {
        Mutation::FlipBit { at, bit } => {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
        }
        Mutation::Replace { at, with } => {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = *with.get(INTERESTING_BYTES);
            }
        }
        Mutation::InsertByte { at, byte } => {
            let i = point(at, bytes.len());
            bytes.insert(i, *byte.get(INTERESTING_BYTES));
        }
        Mutation::InsertFragment { at, fragment } => {
            let i = point(at, bytes.len());
            let fragment = fragment.get(INTERESTING_FRAGMENTS);
            bytes.splice(i..i, fragment.iter().copied());
        }
        Mutation::Delete { at, len } => {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
        }
        Mutation::InsertLine { line, fragment } => {
            let starts: Vec<usize> = std::iter::once(0)
                .chain(lines(bytes).iter().map(|l| l.end))
                .collect();
            let at = *line.get(&starts);
            let fragment = fragment.get(INTERESTING_LINES);
            bytes.splice(at..at, fragment.iter().copied());
        }
        Mutation::DuplicateLine { line } => {
            let lines = lines(bytes);
            if !lines.is_empty() {
                let line = line.get(&lines).clone();
                let copy = bytes[line.clone()].to_vec();
                bytes.splice(line.end..line.end, copy);
            }
        }
        Mutation::DeleteLine { line } => {
            let lines = lines(bytes);
            if !lines.is_empty() {
                bytes.drain(line.get(&lines).clone());
            }
        }
        Mutation::Splice { seed, at, from } => {
            let other = seed.get(seeds).bytes;
            let cut = point(at, bytes.len());
            let from = point(from, other.len());
            bytes.truncate(cut);
            bytes.extend_from_slice(&other[from..]);
        }
    }
}

/// How many mutations an input gets: mostly one, so that many stay valid.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![4 => 1usize..2, 2 => 2usize..3, 1 => 3usize..6]
        .prop_flat_map(|n| proptest::collection::vec(mutation(), n))
}

/// Corpus seeds, mutated (most inputs) or unchanged; messages built from parts by `built`,
/// as they are or mutated; and random bytes.
pub(super) fn inputs(
    seeds: &'static [Seed],
    built: BoxedStrategy<Vec<u8>>,
) -> impl Strategy<Value = Input> {
    let pieces = prop_oneof![Just(usize::MAX), Just(1usize), 2usize..8, 8usize..200];
    let mutated =
        (0..seeds.len(), mutations(), pieces.clone()).prop_map(move |(seed, mutations, piece)| {
            let mut bytes = seeds[seed].bytes.to_vec();
            for m in &mutations {
                apply(&mut bytes, m, seeds);
            }
            Input {
                origin: Origin::Mutated(seed),
                bytes,
                piece,
            }
        });
    let unchanged = (0..seeds.len(), pieces.clone()).prop_map(move |(seed, piece)| Input {
        origin: Origin::Seed(seed),
        bytes: seeds[seed].bytes.to_vec(),
        piece,
    });
    let built_mutated = (
        built,
        prop_oneof![Just(Vec::new()), mutations()],
        pieces.clone(),
    )
        .prop_map(move |(mut bytes, mutations, piece)| {
            for m in &mutations {
                apply(&mut bytes, m, seeds);
            }
            Input {
                origin: Origin::Built,
                bytes,
                piece,
            }
        });
    let random =
        (proptest::collection::vec(any::<u8>(), 0..300), pieces).prop_map(|(bytes, piece)| Input {
            origin: Origin::Random,
            bytes,
            piece,
        });
    prop_oneof![10 => mutated, 8 => built_mutated, 1 => unchanged, 1 => random]
}

/// Bytes chunk data and bodies are drawn from: framing bytes among plain ones.
fn data() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        proptest::sample::select(&b"abcxyz0123 \r\n\t;:\x00\x7f\xff"[..]),
        0..24,
    )
}

/// What may follow a chunk size on its line.
const SIZE_SUFFIXES: &[&str] = &[
    "",
    "",
    "",
    " ",
    "\t",
    ";a=b",
    " ;x",
    ";q=\"a;b\"",
    ";",
    ";x;y=1",
];
const TRAILER_FIELDS: &[&str] = &[
    "x-t: 1",
    "Expires: never",
    "x-empty:",
    "a:\tb c",
    "x-high: \u{e9}",
];

/// A chunked body built from parts: chunks of random sizes and spellings, extensions,
/// trailers; valid unless a mutation breaks it.
pub(super) fn chunked_body() -> BoxedStrategy<Vec<u8>> {
    let chunk = (
        data().prop_filter("a chunk is not empty", |d| !d.is_empty()),
        0usize..3,
        any::<bool>(),
        proptest::sample::select(SIZE_SUFFIXES),
    );
    (
        proptest::collection::vec(chunk, 0..5),
        proptest::sample::select(SIZE_SUFFIXES),
        proptest::collection::vec(proptest::sample::select(TRAILER_FIELDS), 0..4),
    )
        .prop_map(|(chunks, last, trailers)| {
            let mut out = Vec::new();
            for (data, zeros, upper, suffix) in chunks {
                let size = if upper {
                    format!("{:X}", data.len())
                } else {
                    format!("{:x}", data.len())
                };
                out.extend_from_slice(
                    format!("{}{size}{suffix}\r\n", "0".repeat(zeros)).as_bytes(),
                );
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("0{last}\r\n").as_bytes());
            for t in trailers {
                out.extend_from_slice(format!("{t}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
        .boxed()
}

/// How a built message frames its body.
#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    /// `Content-Length` off by this much from the body's length.
    Length(i8),
    Chunked,
    /// Both fields: `Content-Length` for the chunked body's length.
    Both,
}

fn body_framing() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::None),
        4 => Just(Body::Length(0)),
        1 => (-1i8..=1).prop_map(Body::Length),
        4 => Just(Body::Chunked),
        1 => Just(Body::Both),
    ]
}

/// A message from a start line, fields, a framed body, and what follows it.
fn message(
    start: &str,
    fields: &[&str],
    framing: Body,
    data: &[u8],
    chunked: &[u8],
    after: &str,
) -> Vec<u8> {
    let mut out = format!("{start}\r\n").into_bytes();
    for f in fields {
        out.extend_from_slice(format!("{f}\r\n").as_bytes());
    }
    let body: &[u8] = match framing {
        Body::None => data,
        Body::Length(off) => {
            let n = (data.len() as i64 + i64::from(off)).max(0);
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
            data
        }
        Body::Chunked => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            chunked
        }
        Body::Both => {
            out.extend_from_slice(
                format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    chunked.len()
                )
                .as_bytes(),
            );
            chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(after.as_bytes());
    out
}

const REQUEST_LINES: &[&str] = &[
    "POST /v1/chat/completions HTTP/1.1",
    "POST /v1/chat/completions?x=1 HTTP/1.1",
    "GET / HTTP/1.1",
    "PUT /a/b?c=d HTTP/1.1",
    "DELETE /x HTTP/1.1",
    "POST http://h/p HTTP/1.1",
    "POST / HTTP/1.0",
    "OPTIONS * HTTP/1.1",
];
const REQUEST_FIELDS: &[&str] = &[
    "Host: h",
    "Connection: close",
    "Connection: keep-alive",
    "Expect: 100-continue",
    "Content-Type: application/json",
    "Accept: */*",
    "x-request-id: abc",
    "Content-Length: 3",
    "Transfer-Encoding: chunked",
    "Upgrade: websocket",
];
const NEXT_REQUESTS: &[&str] = &["", "", "GET /next HTTP/1.1\r\nHost: h\r\n\r\n", "0\r\n\r\n"];

/// A request built from parts: usually a valid one (with `Host` first, most of the time).
pub(super) fn request() -> BoxedStrategy<Vec<u8>> {
    (
        proptest::sample::select(REQUEST_LINES),
        proptest::option::weighted(0.9, Just("Host: h")),
        proptest::collection::vec(proptest::sample::select(REQUEST_FIELDS), 0..3),
        body_framing(),
        data(),
        chunked_body(),
        proptest::sample::select(NEXT_REQUESTS),
    )
        .prop_map(|(line, host, mut fields, framing, data, chunked, after)| {
            fields.splice(0..0, host);
            message(line, &fields, framing, &data, &chunked, after)
        })
        .boxed()
}

const STATUS_LINES: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 429 Too Many Requests",
    "HTTP/1.1 500 ",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
];
const RESPONSE_FIELDS: &[&str] = &[
    "Content-Type: text/event-stream",
    "Connection: close",
    "Connection: keep-alive",
    "Retry-After: 3",
    "Content-Encoding: identity",
    "Content-Length: 3",
    "Transfer-Encoding: chunked",
];
const INTERIM: &[&str] = &[
    "",
    "",
    "",
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
];
const NEXT_RESPONSES: &[&str] = &["", "", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"];

/// A response built from parts: usually a valid one, after an interim answer sometimes.
pub(super) fn response() -> BoxedStrategy<Vec<u8>> {
    (
        proptest::sample::select(INTERIM),
        proptest::sample::select(STATUS_LINES),
        proptest::collection::vec(proptest::sample::select(RESPONSE_FIELDS), 0..3),
        body_framing(),
        data(),
        chunked_body(),
        proptest::sample::select(NEXT_RESPONSES),
    )
        .prop_map(|(interim, line, fields, framing, data, chunked, after)| {
            let mut out = interim.as_bytes().to_vec();
            out.extend(message(line, &fields, framing, &data, &chunked, after));
            out
        })
        .boxed()
}

/// A runner for `cases` inputs: XorShift (ChaCha is slow in a debug build), no failure
/// files, and a fixed seed unless `PROPTEST_RNG_SEED` names another, so that a run is
/// repeatable and the counts asserted on do not vary from run to run.
pub(super) fn runner(cases: u32) -> TestRunner {
    let mut config = Config {
        cases,
        rng_algorithm: RngAlgorithm::XorShift,
        failure_persistence: None,
        ..Config::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(DEFAULT_SEED);
    }
    eprintln!(
        "proptest seed {} (PROPTEST_RNG_SEED=n explores another)",
        config.rng_seed
    );
    TestRunner::new(config)
}

const DEFAULT_SEED: u64 = 0x51u64 << 32 | 0xce;
