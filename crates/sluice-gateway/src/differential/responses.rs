//! Response heads and the bodies they frame: `upstream::h1::Connection::read_head`, then
//! its `decode` and `poll_read_more`, against hyper's client connection.

use std::cell::RefCell;

use proptest::test_runner::TestCaseError;

use super::gen::{self, Input};
use super::run_against_hyper;
use super::with_chunk_rules;
use super::{
    block_on, hyper_side, judge, padded, runtime, sluice_side, Head, Rule, Seed, Tally, Verdict,
};

const CASES: u32 = 2500;

/// What upstreams answer, RFC 9112's framings, and the response-side smuggling payloads.
const CORPUS: &[Seed] = &[
    Seed {
        name: "200 with Content-Length",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"id\":\"x\"}",
        sluice_accepts: true,
    },
    Seed {
        name: "chunked event stream",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "chunked, extensions and trailers",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value\r\nWiki\r\n5 ;a;b=\"q\"\r\npedia\r\n0\r\nExpires: never\r\nx-t: 1\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "HTTP/1.0, framed by the close",
        bytes: b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        sluice_accepts: true,
    },
    Seed {
        name: "HTTP/1.1, framed by the close",
        bytes: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody to EOF\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "204 with a Content-Length",
        bytes: b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "304 with Transfer-Encoding",
        bytes: b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "100 Continue, then the answer",
        bytes: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        sluice_accepts: true,
    },
    Seed {
        name: "103 Early Hints, then the answer",
        bytes: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "Content-Length and Transfer-Encoding",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "empty reason phrase",
        bytes: b"HTTP/1.1 503 \r\nContent-Length: 4\r\n\r\nbusy",
        sluice_accepts: true,
    },
    Seed {
        name: "bare LF line ends in the head",
        bytes: b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        sluice_accepts: true,
    },
    Seed {
        name: "bytes after the body",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "Content-Encoding: gzip (refused later, not by the parser)",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
        sluice_accepts: true,
    },
    Seed {
        name: "HTTP/1.0 with Transfer-Encoding",
        bytes: b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "HTTP/1.0 keep-alive with Transfer-Encoding",
        bytes: b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 22\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "Transfer-Encoding: gzip, chunked",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "Transfer-Encoding: identity",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Transfer-Encoding: chunked twice",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length: 5, 5",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length twice, different",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "Content-Length: +5",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "invalid Content-Length beside Transfer-Encoding",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0x5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "interim answer with Transfer-Encoding: identity",
        bytes: b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: identity\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        sluice_accepts: false,
    },
    Seed {
        name: "204 with conflicting Content-Lengths",
        bytes: b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "body shorter than its Content-Length",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        sluice_accepts: false,
    },
    Seed {
        name: "101 Switching Protocols",
        bytes: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "interim answer only",
        bytes: b"HTTP/1.1 100 Continue\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF in chunked framing",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF inside a trailer",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\n\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk size of 17 digits, leading zeros",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "control character in a chunk extension",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x7f\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "chunk extension past 4096 bytes",
        bytes: &padded::<4200>(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=",
            b'e',
            b"\r\nhello\r\n0\r\n\r\n",
        ),
        sluice_accepts: false,
    },
    Seed {
        name: "17 trailer fields",
        bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\nl: 1\r\nm: 1\r\nn: 1\r\no: 1\r\np: 1\r\nq: 1\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "obs-fold in the head",
        bytes: b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        sluice_accepts: false,
    },
    Seed {
        name: "space before a colon",
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        sluice_accepts: false,
    },
    Seed {
        name: "HTTP/2 status line",
        bytes: b"HTTP/2 200\r\ncontent-length: 2\r\n\r\nok",
        sluice_accepts: false,
    },
];

/// The heads of a response, interim ones first, and where the final one's body starts.
fn heads(input: &[u8]) -> Option<(Vec<Head<'_>>, &[u8])> {
    let mut rest = input;
    let mut heads = Vec::new();
    loop {
        let head = Head::response(rest)?;
        rest = &rest[head.len..];
        let interim = matches!(head.status, 100 | 102..=199);
        heads.push(head);
        if !interim {
            return Some((heads, rest));
        }
    }
}

/// The final (not interim) head of a response, and where its body starts.
fn final_head(input: &[u8]) -> Option<(Head<'_>, &[u8])> {
    let (mut heads, body) = heads(input)?;
    Some((heads.pop()?, body))
}

/// sluice reads the framing fields of every head, interim ones too; hyper only those of
/// the final one, and only where they frame its body.
fn transfer_coding_not_exactly_chunked(input: &[u8]) -> bool {
    heads(input).is_some_and(|(heads, _)| {
        heads.iter().any(|h| {
            h.values("transfer-encoding").count() > 1
                || h.values("transfer-encoding")
                    .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        })
    })
}

fn content_length_invalid_or_conflicting(input: &[u8]) -> bool {
    heads(input).is_some_and(|(heads, _)| {
        heads
            .iter()
            .any(Head::content_length_invalid_or_conflicting)
    })
}

fn switching_protocols(input: &[u8]) -> bool {
    final_head(input).is_some_and(|(h, _)| h.status == 101)
}

/// The body of a response hyper read as chunked.
fn chunked_body(input: &[u8]) -> Option<&[u8]> {
    let (head, body) = final_head(input)?;
    let chunked = head
        .values("transfer-encoding")
        .last()
        .is_some_and(|v| v.trim_ascii().to_ascii_lowercase().ends_with(b"chunked"));
    chunked.then_some(body)
}

/// Where sluice refuses an answer hyper's client accepts (the module's table says why).
const STRICTER: &[Rule] = with_chunk_rules![chunked_body;
    Rule {
        name: "transfer coding other than exactly one `chunked`",
        says: "unsupported Transfer-Encoding",
        holds: transfer_coding_not_exactly_chunked,
    },
    Rule {
        name: "Content-Length other than one value of 1 to 19 digits",
        says: "Content-Length",
        holds: content_length_invalid_or_conflicting,
    },
    Rule {
        name: "101 Switching Protocols to a request that asked for no upgrade",
        says: "101 Switching Protocols",
        holds: switching_protocols,
    },
];

/// Where hyper's client refuses an answer sluice accepts.
const HYPER_STRICTER: &[Rule] = &[];

/// Both verdicts on `input`, compared; sluice's.
fn check(
    rt: &tokio::runtime::Runtime,
    input: &Input,
    tally: &RefCell<Tally>,
) -> Result<Verdict, TestCaseError> {
    let hyper = block_on(rt, input, hyper_side::fetch(&input.bytes, input.piece));
    let sluice = block_on(rt, input, sluice_side::fetch(&input.bytes, input.piece));
    judge(input, &hyper, &sluice, STRICTER, HYPER_STRICTER, tally)?;
    Ok(sluice)
}

#[test]
fn responses_read_as_hyper_reads_them_or_stricter_by_a_listed_rule() {
    let rt = runtime();
    run_against_hyper(
        "responses",
        CORPUS,
        gen::response(),
        CASES,
        (STRICTER, HYPER_STRICTER),
        |input, tally| check(&rt, input, tally),
    );
}
