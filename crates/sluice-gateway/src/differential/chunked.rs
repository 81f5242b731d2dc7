//! Chunked bodies alone (`http1::decode` from `Chunked::START`), mutated where heads cannot
//! get in the way: each input is a body, sent once under a request head to hyper's server
//! and sluice's client connection, and once under a response head to hyper's client and
//! sluice's upstream connection.

use std::cell::RefCell;

use proptest::test_runner::TestCaseError;

use super::gen::{self, Input, Origin};
use super::with_chunk_rules;
use super::{
    block_on, hyper_side, judge, padded, runtime, sluice_side, Rule, Seed, Tally, Verdict,
};

const CASES: u32 = 2500;

const REQUEST_HEAD: &[u8] =
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

const CORPUS: &[Seed] = &[
    Seed {
        name: "RFC 9112: extensions and a trailer",
        bytes: b"4;name=value\r\nWiki\r\n5;a;b=\"q\"\r\npedia\r\ne \t\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "one chunk",
        bytes: b"5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "no chunk",
        bytes: b"0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "upper-case hex, leading zeros",
        bytes: b"00A\r\n0123456789\r\n0000\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "whitespace after the size",
        bytes: b"3 \t;x=\"a b\"\r\nabc\r\n0 \r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "data holding CRLF and bare LF",
        bytes: b"6\r\na\r\nb\nc\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "trailer fields",
        bytes: b"0\r\nx-a: 1\r\nx-b: two words\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "16 trailer fields",
        bytes: b"0\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\nl: 1\r\nm: 1\r\nn: 1\r\no: 1\r\np: 1\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "quoted extension holding a semicolon",
        bytes: b"1;a=\"x;y\"\r\n!\r\n1;\r\n?\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "the next message after the body",
        bytes: b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "NUL and high bytes in data",
        bytes: b"4\r\n\x00\xff\r\x80\r\n0\r\n\r\n",
        sluice_accepts: true,
    },
    Seed {
        name: "data longer than its size",
        bytes: b"3\r\nabcd\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "data shorter than its size",
        bytes: b"5\r\nabc\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF after the size",
        bytes: b"5\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF after the data",
        bytes: b"3\r\nabc\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF inside a trailer",
        bytes: b"0\r\nx: 1\n\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "bare LF ends the body",
        bytes: b"0\r\n\n",
        sluice_accepts: false,
    },
    Seed {
        name: "0x prefix",
        bytes: b"0x5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "space before the size",
        bytes: b" 5\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "17 hex digits, leading zeros",
        bytes: b"00000000000000005\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "size overflowing 64 bits",
        bytes: b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "huge size, short data",
        bytes: b"fffffffffffffff\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "CR alone after the size",
        bytes: b"5\rhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "CR CR LF after the size",
        bytes: b"5\r\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "missing final CRLF",
        bytes: b"5\r\nhello\r\n0\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "control character in an extension",
        bytes: b"5;a=\x0b\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "CR inside an extension",
        bytes: b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "extension past 4096 bytes",
        bytes: &padded::<4150>(b"5;e=", b'e', b"\r\nhello\r\n0\r\n\r\n"),
        sluice_accepts: false,
    },
    Seed {
        name: "17 trailer fields",
        bytes: b"0\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\nl: 1\r\nm: 1\r\nn: 1\r\no: 1\r\np: 1\r\nq: 1\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "trailer without a colon",
        bytes: b"0\r\nno colon\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "folded trailer",
        bytes: b"0\r\nx: a\r\n b\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "space before a trailer's colon",
        bytes: b"0\r\nx : a\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "garbage after the size",
        bytes: b"5x\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
    Seed {
        name: "extension without a size",
        bytes: b";a\r\nhello\r\n0\r\n\r\n",
        sluice_accepts: false,
    },
];

/// Where sluice refuses a chunked body hyper accepts (the module's table says why).
const STRICTER: &[Rule] = with_chunk_rules![Some;
];

/// Where hyper refuses a chunked body sluice accepts.
const HYPER_STRICTER: &[Rule] = &[];

fn with_head(head: &[u8], body: &[u8]) -> Vec<u8> {
    [head, body].concat()
}

/// Both verdicts on `input` as a request body and as a response body, compared; sluice's
/// two.
fn check(
    rt: &tokio::runtime::Runtime,
    input: &Input,
    requests: &RefCell<Tally>,
    responses: &RefCell<Tally>,
) -> Result<(Verdict, Verdict), TestCaseError> {
    let request = with_head(REQUEST_HEAD, &input.bytes);
    let (served, error) = block_on(rt, input, hyper_side::serve(&request));
    let hyper = hyper_side::first_request(&served, error.as_deref());
    let (sluice_request, _) = sluice_side::request(&request, input.piece);
    judge(
        input,
        &hyper,
        &sluice_request,
        STRICTER,
        HYPER_STRICTER,
        requests,
    )?;

    let response = with_head(RESPONSE_HEAD, &input.bytes);
    let hyper = block_on(rt, input, hyper_side::fetch(&response, input.piece));
    let sluice_response = block_on(rt, input, sluice_side::fetch(&response, input.piece));
    judge(
        input,
        &hyper,
        &sluice_response,
        STRICTER,
        HYPER_STRICTER,
        responses,
    )?;
    Ok((sluice_request, sluice_response))
}

#[test]
fn chunked_bodies_read_as_hyper_reads_them_or_stricter_by_a_listed_rule() {
    let rt = runtime();
    let requests = RefCell::new(Tally::default());
    let responses = RefCell::new(Tally::default());
    for (i, seed) in CORPUS.iter().enumerate() {
        for piece in [usize::MAX, 1] {
            let input = Input {
                origin: Origin::Seed(i),
                bytes: seed.bytes.to_vec(),
                piece,
            };
            let verdicts =
                check(&rt, &input, &requests, &responses).unwrap_or_else(|e| panic!("{e}"));
            for sluice in [verdicts.0, verdicts.1] {
                assert_eq!(
                    matches!(sluice, Verdict::Accept { .. }),
                    seed.sluice_accepts,
                    "seed `{}`: {sluice:?}",
                    seed.name
                );
            }
        }
    }
    let result = gen::runner(CASES).run(&gen::inputs(CORPUS, gen::chunked_body()), |input| {
        check(&rt, &input, &requests, &responses).map(drop)
    });
    let (requests, responses) = (requests.into_inner(), responses.into_inner());
    requests.print("chunked request bodies", CORPUS);
    responses.print("chunked response bodies", CORPUS);
    if let Err(e) = result {
        panic!("{e}");
    }
    requests.assert_meaningful(CORPUS, STRICTER, HYPER_STRICTER);
    responses.assert_meaningful(CORPUS, STRICTER, HYPER_STRICTER);
}
