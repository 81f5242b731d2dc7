//! Differential tests of the gateway's parsers of network bytes against hyper 1.x.
//!
//! The gateway reads HTTP/1.1 with its own code on both sides: request heads
//! (`downstream::request::parse`), chunked and length-framed bodies (`http1::decode`), and
//! response heads and bodies (`upstream::h1::Connection`). Two HTTP parsers that disagree on
//! where a message ends are how requests get smuggled, so each of them is run on generated
//! inputs next to hyper, in memory:
//!
//! - [`requests`]: the bytes a client sends, to hyper's server connection (a service that
//!   collects each body) and to sluice's request parser and body decoder, fed in pieces.
//! - [`chunked`]: chunked bodies alone, under a request head (as above) and under a response
//!   head (as below), so that mutations land in the chunked framing.
//! - [`responses`]: the bytes an upstream answers a POST with, to hyper's client connection
//!   and to sluice's upstream connection, over a duplex stream written in pieces.
//!
//! A side *accepts* an input when it reads a whole first message (a request's head, or a
//! response's final head after any interim ones) and its whole body under the framing it
//! chose (a response without length or chunking: up to the close); it *rejects* it when it
//! refuses it or the input ends first. Off the chat path sluice also builds the `Uri` and
//! `HeaderMap` the router is given, as its connection does. Inputs are the corpus seeds
//! (RFC 9112's examples, what clients and upstreams send, and request-smuggling payloads),
//! each as it is and mutated; messages built from parts (mostly valid), as they are and
//! mutated; and random bytes.
//!
//! For every input: neither side panics or hangs, and the verdicts are the same. Where both
//! accept, they read the same message: method and path, or status; and the same body bytes.
//! Where both read a first request and then the head of a second, it is the same head (the
//! first request ended at the same byte). Each test prints its counts and fails if it
//! compared too little: under 15% of inputs accepted by both or 10% rejected by both, a
//! corpus seed not drawn both as it is and mutated, or a listed difference that never
//! showed.
//!
//! A difference is allowed only in a listed direction, where the listed predicate over the
//! input holds and the refusing side's reason says so. sluice accepting what hyper refuses,
//! or both accepting and reading different messages, is a framing sluice reads more loosely
//! than hyper and fails the test, unless it is a listed case of hyper being the strict one.
//! Three such differences were sluice's bugs and are fixed: an HTTP/1.0 answer with
//! `Transfer-Encoding` read as chunked (and pooled with `keep-alive`), an absolute-form
//! target whose authority was not a URL, and a target with a fragment (read with it for the
//! chat path, without it by the router).
//!
//! # Where sluice is deliberately stricter, and why
//!
//! | Parser | sluice refuses | hyper | Why |
//! |---|---|---|---|
//! | request | an HTTP/1.1 request without exactly one `Host`, or any with two | accepts | RFC 9112 §3.2 (400); with two, a hop in front and the gateway can each take another |
//! | request | `Transfer-Encoding` other than exactly one field saying `chunked` (501) | reads `gzip, chunked` and a repeated `chunked` as chunked | a coding the gateway cannot decode; lists and repeats are the TE.TE obfuscations that make one hop see chunked and another not |
//! | request | both `Content-Length` and `Transfer-Encoding` | reads it as chunked, drops the length | CL.TE and TE.CL smuggling; RFC 9112 §6.3 lets a server refuse it |
//! | request, response | `Content-Length` other than one value of 1 to 19 digits | any `u64` (leading zeros past 19 digits); equal lists (`5, 5`) in answers; does not read a length after `Transfer-Encoding` in a request, beside it in an answer, nor in an answer without a body | a length the gateway does not read plainly is one a neighbour can read otherwise; 19 digits fit a `u64` without overflow checks |
//! | request | `Expect` other than `100-continue` (417) | ignores it | RFC 9110 §10.1.1 lets a server answer 417: an expectation the gateway cannot meet is refused rather than silently dropped |
//! | request | a target neither a path nor an absolute `http(s)` URL with a host | accepts `*`, authority form, other schemes | the gateway serves no `OPTIONS *`, no `CONNECT`, and is no proxy |
//! | request | a fragment in the target | drops it | no target form has one (RFC 9112 §3.2); kept, the chat path and the router read the target two ways |
//! | chunked bodies | a bare LF anywhere in the framing | refuses it after a size or data, keeps it inside a trailer line | CRLF only (RFC 9112 §7.1): a bare LF read as a line end by one hop and not by another is the chunked desync |
//! | chunked bodies | a control character (but HTAB) in a chunk extension | any byte but LF | a CR in an extension splits the size line differently for a lenient hop |
//! | chunked bodies | a chunk size of more than 15 hex digits | any number of leading zeros | a size fits a `u64` without overflow checks; no sender needs the zeros |
//! | chunked bodies | a chunk-size or trailer line longer than 4096 bytes | 16 KiB of extensions per body, 16 KiB of trailers | extensions and trailers carry nothing the gateway uses; a long line is a peer stalling |
//! | chunked bodies | more than 16 trailer fields | 100 | as above |
//! | response | a transfer coding other than exactly one `chunked`, in any head (interim ones too) | reads an answer under another coding until the close, `gzip, chunked` as chunked, and ignores the framing fields of interim and bodiless answers | the gateway asked for no coding and would pass encoded bytes on unlabelled; an answer with inconsistent framing fields is not read on a pooled connection |
//! | response | `101 Switching Protocols` | takes it as an upgrade | the gateway asked for none |
//!
//! # Where hyper is stricter, and why that is not sluice's bug
//!
//! | Parser | hyper refuses | sluice | Why it is fine |
//! |---|---|---|---|
//! | request | a chat-path target whose query its `Uri` does not take (`?q="x"`, `{`) | accepts | the chat path builds no `Uri` (the module `downstream` says why) and never reads or forwards the query; httparse has already refused spaces and controls in the target, so where the head, and so the message, ends is the same for both |
//!
//! One more parser of network bytes is compared here with a reference of its own:
//! [`trace_context`], the `traceparent` header against OpenTelemetry's W3C propagator.
//!
//! Set `SLUICE_DIFFERENTIAL_EXPLORE=1` to have a run print every unexplained difference
//! (then fail) instead of stopping and shrinking at the first; `PROPTEST_RNG_SEED=n` draws
//! other inputs than the fixed default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chunked;
mod gen;
mod hyper_side;
mod requests;
mod responses;
mod sluice_side;
mod trace_context;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use proptest::test_runner::TestCaseError;

use gen::{Input, Origin};

/// Room in each direction of an in-memory connection: more than any generated input.
const DUPLEX_BYTES: usize = 1 << 20;
/// Largest body either side collects (generated bodies are far smaller).
const MAX_BODY: usize = 1 << 20;
/// How long one input may take before the test calls it a hang: a guard, not a measure.
const HANG: Duration = Duration::from_secs(30);
/// Set, a run prints every unexplained difference and fails at its end, instead of failing
/// (and shrinking) at the first.
const EXPLORE: &str = "SLUICE_DIFFERENTIAL_EXPLORE";

/// What a parser made of an input.
#[derive(Clone, PartialEq, Eq)]
enum Verdict {
    /// A whole message: what it was (a request's method and path, a response's status) and
    /// its whole body.
    Accept { what: String, body: Vec<u8> },
    /// Refused, or incomplete when the input ended; why, for the failure message.
    Reject(String),
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Accept { what, body } => {
                write!(f, "Accept({what}, body b\"{}\")", body.escape_ascii())
            }
            Verdict::Reject(why) => write!(f, "Reject({why})"),
        }
    }
}

/// A corpus entry: a message, and whether sluice accepts it (checked, so a seed meant to
/// be refused stays refused for the reason it was written for).
struct Seed {
    name: &'static str,
    bytes: &'static [u8],
    sluice_accepts: bool,
}

/// A rule by which one side refuses what the other accepts: a predicate over the input,
/// and what the refusing side's reason says (so that a rule cannot excuse a refusal made
/// for some other reason on an input it happens to hold for).
struct Rule {
    name: &'static str,
    says: &'static str,
    holds: fn(&[u8]) -> bool,
}

/// What a run saw; printed, and asserted on so that it cannot pass vacuously.
#[derive(Default)]
struct Tally {
    cases: usize,
    both_accept: usize,
    both_reject: usize,
    /// Inputs sluice refused and hyper accepted, by the rule that allowed it.
    stricter: BTreeMap<&'static str, usize>,
    /// Inputs hyper refused and sluice accepted, by the rule that allowed it.
    hyper_stricter: BTreeMap<&'static str, usize>,
    /// Per seed: (unchanged, mutated) inputs drawn from it.
    per_seed: BTreeMap<usize, (usize, usize)>,
    built: usize,
    random: usize,
    /// Differences no rule explains (counted only when exploring).
    unexplained: usize,
    /// Inputs where both read a first request and the start of a second one, compared.
    second_requests: usize,
}

impl Tally {
    fn print(&self, parser: &str, seeds: &[Seed]) {
        eprintln!(
            "{parser}: {} inputs: accepted by both {}, rejected by both {}, sluice stricter {} {:?}, hyper stricter {} {:?}; built {}, random {}",
            self.cases,
            self.both_accept,
            self.both_reject,
            self.stricter.values().sum::<usize>(),
            self.stricter,
            self.hyper_stricter.values().sum::<usize>(),
            self.hyper_stricter,
            self.built,
            self.random,
        );
        if self.second_requests > 0 {
            eprintln!("  second requests compared: {}", self.second_requests);
        }
        for (i, seed) in seeds.iter().enumerate() {
            let (unchanged, mutated) = self.per_seed.get(&i).copied().unwrap_or_default();
            eprintln!(
                "  seed {i:>2} {:<44} unchanged {unchanged:>3} mutated {mutated:>4}",
                seed.name
            );
        }
    }

    /// The run exercised both verdicts, every seed, and every listed rule.
    fn assert_meaningful(&self, seeds: &[Seed], stricter: &[Rule], hyper_stricter: &[Rule]) {
        assert_eq!(
            self.unexplained, 0,
            "differences no rule explains (printed above)"
        );
        assert!(
            self.both_accept * 100 >= self.cases * 15,
            "fewer than 15% of the inputs were accepted by both: too few to compare framing on"
        );
        assert!(
            self.both_reject * 10 >= self.cases,
            "fewer than a tenth of the inputs were rejected by both"
        );
        for (i, seed) in seeds.iter().enumerate() {
            let (unchanged, mutated) = self.per_seed.get(&i).copied().unwrap_or_default();
            assert!(
                unchanged > 0 && mutated > 0,
                "seed `{}` was not exercised",
                seed.name
            );
        }
        for rule in stricter {
            assert!(
                self.stricter.contains_key(rule.name),
                "the listed difference `{}` never showed: is it still a difference?",
                rule.name
            );
        }
        for rule in hyper_stricter {
            assert!(
                self.hyper_stricter.contains_key(rule.name),
                "the listed difference `{}` never showed: is it still a difference?",
                rule.name
            );
        }
    }

    fn count(&mut self, origin: Origin) {
        self.cases += 1;
        match origin {
            Origin::Seed(i) => self.per_seed.entry(i).or_default().0 += 1,
            Origin::Mutated(i) => self.per_seed.entry(i).or_default().1 += 1,
            Origin::Built => self.built += 1,
            Origin::Random => self.random += 1,
        }
    }
}

/// Compares the two verdicts on `input`: equal, or different only as a listed rule allows.
fn judge(
    input: &Input,
    hyper: &Verdict,
    sluice: &Verdict,
    stricter: &[Rule],
    hyper_stricter: &[Rule],
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let mut tally = tally.borrow_mut();
    tally.count(input.origin);
    let allowed = |rules: &[Rule], why: &str| {
        rules
            .iter()
            .find(|r| why.contains(r.says) && (r.holds)(&input.bytes))
            .map(|r| r.name)
    };
    let explore = std::env::var_os(EXPLORE).is_some();
    let mut fail = |m: String| {
        if explore {
            eprintln!("DIFFERENCE {m}");
            tally.unexplained += 1;
            Ok(())
        } else {
            Err(TestCaseError::fail(m))
        }
    };
    match (hyper, sluice) {
        (Verdict::Accept { .. }, Verdict::Accept { .. }) => {
            if hyper != sluice {
                return fail(format!(
                    "both accept {input:?}, and read it differently: hyper {hyper:?}, sluice {sluice:?}"
                ));
            }
            tally.both_accept += 1;
        }
        (Verdict::Reject(_), Verdict::Reject(_)) => tally.both_reject += 1,
        (Verdict::Accept { .. }, Verdict::Reject(why)) => match allowed(stricter, why) {
            Some(rule) => *tally.stricter.entry(rule).or_default() += 1,
            None => {
                return fail(format!(
                    "sluice rejects ({why}) what hyper accepts ({hyper:?}), and no listed rule says why: {input:?}"
                ))
            }
        },
        (Verdict::Reject(why), Verdict::Accept { .. }) => match allowed(hyper_stricter, why) {
            Some(rule) => *tally.hyper_stricter.entry(rule).or_default() += 1,
            None => {
                return fail(format!(
                    "sluice accepts ({sluice:?}) what hyper rejects ({why}): a framing sluice reads more loosely than hyper: {input:?}"
                ))
            }
        },
    }
    Ok(())
}

/// A single-threaded runtime for one test's inputs.
/// Runs `check` on every seed (whole, and a byte at a time: each seed's expected verdict is
/// asserted), then on generated inputs; prints the tally and asserts the run was meaningful.
/// Returns the tally for a parser's own checks.
fn run_against_hyper(
    parser: &str,
    seeds: &'static [Seed],
    built: proptest::strategy::BoxedStrategy<Vec<u8>>,
    cases: u32,
    rules: (&[Rule], &[Rule]),
    check: impl Fn(&Input, &RefCell<Tally>) -> Result<Verdict, TestCaseError>,
) -> Tally {
    let tally = RefCell::new(Tally::default());
    for (i, seed) in seeds.iter().enumerate() {
        for piece in [usize::MAX, 1] {
            let input = Input {
                origin: Origin::Seed(i),
                bytes: seed.bytes.to_vec(),
                piece,
            };
            let sluice = check(&input, &tally).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                matches!(sluice, Verdict::Accept { .. }),
                seed.sluice_accepts,
                "seed `{}`: {sluice:?}",
                seed.name
            );
        }
    }
    let result = gen::runner(cases).run(&gen::inputs(seeds, built), |input| {
        check(&input, &tally).map(drop)
    });
    let tally = tally.into_inner();
    tally.print(parser, seeds);
    if let Err(e) = result {
        panic!("{e}");
    }
    tally.assert_meaningful(seeds, rules.0, rules.1);
    tally
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `future` to its end, or fails the input if it does not end (a hang, not a slow
/// input: every exchange here is in memory).
fn block_on<F: Future>(rt: &tokio::runtime::Runtime, input: &Input, future: F) -> F::Output {
    rt.block_on(async {
        match tokio::time::timeout(HANG, future).await {
            Ok(output) => output,
            Err(_) => panic!("no end within {HANG:?}: {input:?}"),
        }
    })
}

/// `before`, then `filler` repeated, then `after`: `N` bytes (a seed too long to write out).
const fn padded<const N: usize>(before: &[u8], filler: u8, after: &[u8]) -> [u8; N] {
    let mut out = [filler; N];
    let mut i = 0;
    while i < before.len() {
        out[i] = before[i];
        i += 1;
    }
    let mut j = 0;
    while j < after.len() {
        out[N - after.len() + j] = after[j];
        j += 1;
    }
    out
}

/// Header fields of a head as httparse splits them (the same splitting both sides use),
/// for the rules' predicates. `None` when the head is not whole or not valid.
struct Head<'a> {
    version: u8,
    /// A request's method and target.
    method: &'a str,
    target: &'a str,
    /// A response's status.
    status: u16,
    fields: Vec<(&'a str, &'a [u8])>,
    /// Where the body starts.
    len: usize,
}

impl<'a> Head<'a> {
    fn request(bytes: &'a [u8]) -> Option<Head<'a>> {
        let mut fields = vec![httparse::EMPTY_HEADER; 256];
        let mut request = httparse::Request::new(&mut fields);
        let httparse::Status::Complete(len) = request.parse(bytes).ok()? else {
            return None;
        };
        Some(Head {
            version: request.version?,
            method: request.method?,
            target: request.path?,
            status: 0,
            fields: request.headers.iter().map(|f| (f.name, f.value)).collect(),
            len,
        })
    }

    fn response(bytes: &'a [u8]) -> Option<Head<'a>> {
        let mut fields = vec![httparse::EMPTY_HEADER; 256];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(len) = response.parse(bytes).ok()? else {
            return None;
        };
        Some(Head {
            version: response.version?,
            method: "",
            target: "",
            status: response.code?,
            fields: response.headers.iter().map(|f| (f.name, f.value)).collect(),
            len,
        })
    }

    /// Whether its `Content-Length` fields are not one number of 1 to 19 digits.
    fn content_length_invalid_or_conflicting(&self) -> bool {
        let number = |v: &[u8]| {
            let v = v.trim_ascii();
            let digits = !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit);
            digits.then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())?
        };
        let numbers: Vec<Option<u64>> = self.values("content-length").map(number).collect();
        numbers.iter().any(Option::is_none) || numbers.windows(2).any(|w| w[0] != w[1])
    }

    /// The values of every field named `name`.
    fn values(&self, name: &str) -> impl Iterator<Item = &'a [u8]> + '_ {
        let name = name.to_owned();
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| *v)
    }
}

/// The framing lines of a chunked body as hyper reads them: lines end at CRLF (a bare LF
/// stays inside its line), chunk data is skipped by its size.
struct ChunkLines<'a> {
    sizes: Vec<&'a [u8]>,
    trailers: Vec<&'a [u8]>,
}

impl ChunkLines<'_> {
    fn all(&self) -> impl Iterator<Item = &&[u8]> {
        self.sizes.iter().chain(&self.trailers)
    }
}

/// `None` when the body does not get as far as its end.
fn chunk_lines(body: &[u8]) -> Option<ChunkLines<'_>> {
    fn line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        *rest = &rest[end + 2..];
        Some(line)
    }
    let mut rest = body;
    let mut sizes = Vec::new();
    loop {
        let size_line = line(&mut rest)?;
        sizes.push(size_line);
        let size = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .try_fold(0u64, |n, &d| {
                n.checked_mul(16)?
                    .checked_add(u64::from(char::from(d).to_digit(16)?))
            })?;
        if size == 0 {
            break;
        }
        rest = rest.get(usize::try_from(size).ok()?..)?;
        rest = rest.strip_prefix(b"\r\n")?;
    }
    let mut trailers = Vec::new();
    loop {
        let trailer = line(&mut rest)?;
        if trailer.is_empty() {
            return Some(ChunkLines { sizes, trailers });
        }
        trailers.push(trailer);
    }
}

/// The rules where sluice's chunked decoder is stricter than hyper's, for any parser:
/// `$body` picks the chunked body out of an input (the identity for a bare body). Listed
/// after the parser's own rules, in one array.
macro_rules! with_chunk_rules {
    ($body:expr; $($rule:expr),* $(,)?) => {
        &[
            $($rule,)*
            Rule {
                name: "bare LF in chunked framing",
                says: "bare LF",
                holds: |input| $body(input).is_some_and(crate::differential::chunk_rules::bare_lf),
            },
            Rule {
                name: "control character in a chunk extension",
                says: "control character",
                holds: |input| $body(input).is_some_and(crate::differential::chunk_rules::control_in_extension),
            },
            Rule {
                name: "chunk size of more than 15 hex digits",
                says: "invalid chunk size line",
                holds: |input| $body(input).is_some_and(crate::differential::chunk_rules::over_15_size_digits),
            },
            Rule {
                name: "chunk-size or trailer line longer than 4096 bytes",
                says: "longer than 4096 bytes",
                holds: |input| $body(input).is_some_and(crate::differential::chunk_rules::line_over_4096),
            },
            Rule {
                name: "more than 16 trailer fields",
                says: "more than 16 trailer fields",
                holds: |input| $body(input).is_some_and(crate::differential::chunk_rules::over_16_trailers),
            },
        ]
    };
}
use with_chunk_rules;

/// The chunked-framing rules sluice holds a body to that hyper does not, given the body.
mod chunk_rules {
    use super::chunk_lines;

    pub(super) fn bare_lf(body: &[u8]) -> bool {
        chunk_lines(body).is_some_and(|c| c.all().any(|l| l.contains(&b'\n')))
    }

    pub(super) fn control_in_extension(body: &[u8]) -> bool {
        chunk_lines(body).is_some_and(|c| {
            c.sizes.iter().any(|l| {
                l.iter()
                    .skip_while(|&&b| b != b';')
                    .any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f))
            })
        })
    }

    pub(super) fn over_15_size_digits(body: &[u8]) -> bool {
        chunk_lines(body).is_some_and(|c| {
            c.sizes
                .iter()
                .any(|l| l.iter().take_while(|b| b.is_ascii_hexdigit()).count() > 15)
        })
    }

    pub(super) fn line_over_4096(body: &[u8]) -> bool {
        chunk_lines(body).is_some_and(|c| c.all().any(|l| l.len() > 4096))
    }

    pub(super) fn over_16_trailers(body: &[u8]) -> bool {
        chunk_lines(body).is_some_and(|c| c.trailers.len() > 16)
    }
}
