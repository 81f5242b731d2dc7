//! sluice's own parsers, driven the way its connections drive them.

use std::future::poll_fn;

use bytes::BytesMut;
use http::Method;

use super::hyper_side::{upstream, UPSTREAM_REQUEST};
use super::{Verdict, DUPLEX_BYTES};
use crate::downstream::request::{self, BodyFraming};
use crate::http1::HeadScan;
use crate::http1::{decode, Chunked, Decoded, Framing};
use crate::upstream::h1::Connection;

/// The path the downstream connection answers itself, without the router (and without
/// building a `Uri` or a `HeaderMap`).
const CHAT_PATH: &[u8] = b"/v1/chat/completions";

/// What sluice's client connection makes of the first request in `input`, fed `piece`
/// bytes at a time: the head parsed, its body decoded to the end under the framing the
/// head chose, and, off the chat path, the `Uri` and `HeaderMap` the router is given. With
/// it, what the connection would read next (the bytes after the request).
pub(super) fn request(input: &[u8], piece: usize) -> (Verdict, Vec<u8>) {
    let mut pieces = input.chunks(piece.max(1));
    let mut buf = BytesMut::new();
    let mut scan = HeadScan::default();
    let rest = |buf: &BytesMut, pieces: std::slice::Chunks<'_, u8>| {
        let mut rest = buf.to_vec();
        pieces.for_each(|p| rest.extend_from_slice(p));
        rest
    };
    let head = loop {
        // The connection parses only once it holds bytes.
        if !buf.is_empty() {
            match request::parse(&mut buf, &mut scan) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    return (
                        Verdict::Reject(format!("head: {} {}", e.status, e.message)),
                        Vec::new(),
                    )
                }
            }
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return (Verdict::Reject("head: incomplete".into()), Vec::new()),
        }
    };
    let mut framing = match head.framing {
        BodyFraming::Length(0) => Framing::Done,
        BodyFraming::Length(n) => Framing::Length(n),
        BodyFraming::Chunked => Framing::Chunked(Chunked::START),
    };
    let mut body = Vec::new();
    loop {
        match decode(&mut buf, &mut framing) {
            Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return (Verdict::Reject("body: incomplete".into()), Vec::new()),
            },
            Err(e) => return (Verdict::Reject(format!("body: {e}")), Vec::new()),
        }
    }
    if !(head.method == Method::POST && head.path() == CHAT_PATH) {
        if let Err(e) = head.uri().and_then(|_| head.headers()) {
            return (
                Verdict::Reject(format!("router request: {}", e.message)),
                Vec::new(),
            );
        }
    }
    let verdict = Verdict::Accept {
        what: describe(&head),
        body,
    };
    (verdict, rest(&buf, pieces))
}

/// The method and path of the request at the front of `bytes`, if it has a whole head
/// sluice accepts.
pub(super) fn next_head(bytes: &[u8]) -> Option<String> {
    let mut buf = BytesMut::from(bytes);
    let head = request::parse(&mut buf, &mut HeadScan::default()).ok()??;
    Some(describe(&head))
}

/// A request as both sides are compared on: its method and path (`/` for an empty one).
fn describe(head: &request::RequestHead) -> String {
    let path = match head.path() {
        b"" => "/".into(),
        path => String::from_utf8_lossy(path),
    };
    format!("{} {path}", head.method)
}

/// The answer `input` gives to a POST, as sluice's upstream connection reads it: the head
/// (interim answers skipped), then the body under the framing the head chose, up to the
/// connection's end when that is the framing.
pub(super) async fn fetch(input: &[u8], piece: usize) -> Verdict {
    let (client, server) = tokio::io::duplex(DUPLEX_BYTES);
    let exchange = async move {
        let mut connection = Connection::new(client);
        let (head, body) = UPSTREAM_REQUEST.split_at(UPSTREAM_REQUEST.len() - 4);
        if let Err(e) = connection.write_request([head, body]).await {
            return Verdict::Reject(format!("write: {e}"));
        }
        let head = match connection.read_head().await {
            Ok(head) => head,
            Err(e) => return Verdict::Reject(format!("head: {e}")),
        };
        let mut framing = head.framing;
        let mut body = Vec::new();
        loop {
            match connection.decode(&mut framing) {
                Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
                Ok(Decoded::End) => break,
                Ok(Decoded::NeedMore) => match poll_fn(|cx| connection.poll_read_more(cx)).await {
                    Ok(0) if framing == Framing::UntilClose => break,
                    Ok(0) => return Verdict::Reject("body: closed before its end".into()),
                    Ok(_) => {}
                    Err(e) => return Verdict::Reject(format!("body: {e}")),
                },
                Err(e) => return Verdict::Reject(format!("body: {e}")),
            }
        }
        Verdict::Accept {
            what: head.status.as_u16().to_string(),
            body,
        }
    };
    let (verdict, ()) = tokio::join!(exchange, upstream(server, input, piece));
    verdict
}
