//! Request heads and the bodies they frame: `downstream::request::parse`, then
//! `http1::decode`, against hyper's server connection.

use std::cell::RefCell;

use proptest::prop_assert_eq;
use proptest::test_runner::TestCaseError;

use super::gen::{self, Input};
use super::run_against_hyper;
use super::with_chunk_rules;
use super::{
    block_on, hyper_side, judge, padded, runtime, sluice_side, Head, Rule, Seed, Tally, Verdict,
};

const CASES: u32 = 3000;

/// RFC 9112's examples, what clients send the gateway, and request-smuggling payloads.
const CORPUS: &[Seed] = &[
    Seed {
        name: "simple GET",
        bytes: b"GET /hello.txt HTTP/1.1\r\nUser-Agent: curl/7.64.1\r\nHost: www.example.com\r\nAccept-Language: en, mi\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "chat POST with Content-Length",
        bytes: b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}",
        sluice_accepts: true,
    },
    Seed {
        name: "chunked, extensions and a trailer",
        bytes: b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value\r\nWiki\r\n5;a;b=\"q\"\r\npedia\r\ne \t\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "HTTP/1.0 without Host",
        bytes: b"GET / HTTP/1.0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "HTTP/1.0 keep-alive with a body",
        bytes: b"POST /form HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
        sluice_accepts: true,
    },
    Seed {
        name: "pipelined: a second request follows",
        bytes: b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "pipelined after a chunked body",
        bytes: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nDELETE /c HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
        sluice_accepts: true,
    },
    Seed {
        name: "absolute-form target",
        bytes: b"GET http://www.example.org/pub/WWW/TheProject.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "empty lines before the request line",
        bytes: b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "Expect: 100-continue",
        bytes: b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        sluice_accepts: true,
    },
    Seed {
        name: "bare LF line ends in the head",
        bytes: b"POST /x HTTP/1.1\nHost: h\nContent-Length: 2\n\nok",
        sluice_accepts: true,
    },
    Seed {
        name: "Content-Length twice, the same",
        bytes: b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        sluice_accepts: true,
    },
    Seed {
        name: "Content-Length with leading zeros",
        bytes: b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0005\r\n\r\nhello",
        sluice_accepts: true,
    },
    Seed {
        name: "Transfer-Encoding:\\tchunked, upper case",
        bytes: b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tCHUNKED\r\n\r\n5 ;x\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "chat path with a query",
        bytes: b"POST /v1/chat/completions?stream=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        sluice_accepts: true,
    },
    Seed {
        name: "chat path with a query hyper's Uri refuses",
        bytes: b"POST /v1/chat/completions?q=\"{x}\" HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        sluice_accepts: true,
    },
    Seed {
        name: "CL.TE: both framings",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.CL: both framings",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: space before the colon",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: xchunked",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: chunked, identity",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: gzip, chunked",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: chunked twice",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: chunked then identity",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "TE.TE: obs-fold",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "HTTP/1.0 with Transfer-Encoding",
        bytes: b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length twice, different",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length: +5",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length: 0x5",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length: 5, 5",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length of 21 digits",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 000000000000000000005\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "invalid Content-Length after Transfer-Encoding",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0x5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "NUL in a field value",
        bytes: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "CR inside a field name",
        bytes: b"GET / HTTP/1.1\r\nHost: h\r\nX\rA: b\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF in chunked framing",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF inside a trailer",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\n\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk size 0x5",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk size after a space",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk size of 17 digits, leading zeros",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk size overflowing 64 bits",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "huge chunk size, short data",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "CR alone ends a chunk-size line",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "missing final CRLF",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "control character in a chunk extension",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk extension past 4096 bytes",
        bytes: &padded::<4200>(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;e=",
            b'e',
            b"\r\nhello\r\n0\r\n\r\n",
        ),
        sluice_accepts: false,
    },
    Seed {
        name: "17 trailer fields",
        bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\nl: 1\r\nm: 1\r\nn: 1\r\no: 1\r\np: 1\r\nq: 1\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "HTTP/1.1 without Host",
        bytes: b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "two Host fields",
        bytes: b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "Expect other than 100-continue",
        bytes: b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, x\r\nContent-Length: 2\r\n\r\nok",
        sluice_accepts: false,
    },
    Seed {
        name: "absolute-form ftp target",
        bytes: b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "asterisk-form OPTIONS",
        bytes: b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "authority-form CONNECT",
        bytes: b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "absolute-form target with a query and no path",
        bytes: b"GET http://h?stream=1 HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "fragment in the target",
        bytes: b"POST /v1/chat/completions#x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        sluice_accepts: false,
    },
    Seed {
        name: "HTTP/2.0 request line",
        bytes: b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        sluice_accepts: false,
    },
];

/// The head and, when it is chunked, the body of a request hyper accepted.
fn chunked_body(input: &[u8]) -> Option<&[u8]> {
    let head = Head::request(input)?;
    let chunked = head.values("transfer-encoding").next().is_some();
    chunked.then(|| &input[head.len..])
}

fn no_single_host(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        let hosts = h.values("host").count();
        (h.version == 1 && hosts != 1) || hosts > 1
    })
}

fn te_not_exactly_chunked(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        h.values("transfer-encoding").count() > 1
            || h.values("transfer-encoding")
                .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    })
}

fn both_framings(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        h.values("transfer-encoding").next().is_some()
            && h.values("content-length").next().is_some()
    })
}

fn content_length_invalid_or_conflicting(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| h.content_length_invalid_or_conflicting())
}

fn expect_other_than_continue(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        h.values("expect")
            .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    })
}

fn target_neither_path_nor_http_url(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        let t = h.target.as_bytes();
        let lower = t.to_ascii_lowercase();
        let host_after = |scheme: &[u8]| {
            lower
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty() && rest[0] != b'/' && rest[0] != b'?')
        };
        !(t.starts_with(b"/") || host_after(b"http://") || host_after(b"https://"))
    })
}
fn fragment_in_target(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| h.target.contains('#'))
}

/// Where sluice refuses a request hyper's server accepts (the module's table says why).
const STRICTER: &[Rule] = with_chunk_rules![chunked_body;
    Rule {
        name: "HTTP/1.1 request without exactly one Host, or any request with two",
        says: "Host header field",
        holds: no_single_host,
    },
    Rule {
        name: "Transfer-Encoding other than exactly one `chunked`",
        says: "transfer coding is supported",
        holds: te_not_exactly_chunked,
    },
    Rule {
        name: "both Content-Length and Transfer-Encoding",
        says: "both Content-Length and Transfer-Encoding",
        holds: both_framings,
    },
    Rule {
        name: "Content-Length other than one value of 1 to 19 digits",
        says: "Content-Length",
        holds: content_length_invalid_or_conflicting,
    },
    Rule {
        name: "Expect other than 100-continue",
        says: "expectation",
        holds: expect_other_than_continue,
    },
    Rule {
        name: "target neither a path nor an absolute http(s) URL with a host",
        says: "neither a path nor an absolute",
        holds: target_neither_path_nor_http_url,
    },
    Rule {
        name: "fragment in the target",
        says: "has a fragment",
        holds: fragment_in_target,
    },
];

fn chat_target_hyper_cannot_parse(input: &[u8]) -> bool {
    Head::request(input).is_some_and(|h| {
        let path = h.target.split('?').next().unwrap_or_default();
        h.method == "POST"
            && path == "/v1/chat/completions"
            && h.target.parse::<http::Uri>().is_err()
    })
}

/// Where hyper's server refuses a request sluice accepts (the module's table says why).
const HYPER_STRICTER: &[Rule] = &[Rule {
    name: "chat-path query that hyper's `Uri` refuses",
    says: "invalid URI",
    holds: chat_target_hyper_cannot_parse,
}];

/// Both verdicts on `input`, compared; sluice's.
fn check(
    rt: &tokio::runtime::Runtime,
    input: &Input,
    tally: &RefCell<Tally>,
) -> Result<Verdict, TestCaseError> {
    let (served, error) = block_on(rt, input, hyper_side::serve(&input.bytes));
    let hyper = hyper_side::first_request(&served, error.as_deref());
    let (sluice, rest) = sluice_side::request(&input.bytes, input.piece);
    judge(input, &hyper, &sluice, STRICTER, HYPER_STRICTER, tally)?;
    // Where the first request ends decides where the next starts: the one place a
    // disagreement smuggles a request.
    if let (Verdict::Accept { .. }, Verdict::Accept { .. }, Some(second)) =
        (&hyper, &sluice, served.get(1))
    {
        if let Some(next) = sluice_side::next_head(&rest) {
            tally.borrow_mut().second_requests += 1;
            prop_assert_eq!(
                format!("{} {}", second.method, second.path),
                next,
                "the second request differs: {:?}",
                input
            );
        }
    }
    Ok(sluice)
}

#[test]
fn requests_read_as_hyper_reads_them_or_stricter_by_a_listed_rule() {
    let rt = runtime();
    let tally = run_against_hyper(
        "requests",
        CORPUS,
        gen::request(),
        CASES,
        (STRICTER, HYPER_STRICTER),
        |input, tally| check(&rt, input, tally),
    );
    assert!(
        tally.second_requests > 0,
        "no input had a second request both sides read"
    );
}
