//! hyper 1.x driven in memory: the reference each sluice parser is compared with.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Verdict, DUPLEX_BYTES, MAX_BODY};

/// One request hyper's server handed its service.
#[derive(Debug, Clone)]
pub(super) struct Served {
    pub method: String,
    pub path: String,
    /// The whole body, or why it could not be read.
    pub body: Result<Vec<u8>, String>,
}

/// Serves `input` as one client connection's bytes (the client then closes its side) and
/// returns the requests hyper's server passed on, in order, and its connection's error.
pub(super) async fn serve(input: &[u8]) -> (Vec<Served>, Option<String>) {
    let (mut client, server) = tokio::io::duplex(DUPLEX_BYTES);
    let served = Arc::new(Mutex::new(Vec::new()));
    let record = served.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let body = Limited::new(request.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .map_err(|e| e.to_string());
            record.lock().unwrap().push(Served { method, path, body });
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    // Half-close: the client shuts its side once it has sent everything, and hyper would
    // otherwise drop a request whose service has not finished yet.
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let client = async move {
        // hyper may refuse and close before it has read everything: a failed write is one
        // of the ways a refusal shows.
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
    };
    let (outcome, ()) = tokio::join!(connection, client);
    let served = served.lock().unwrap().clone();
    (served, outcome.err().map(|e| e.to_string()))
}

/// The first request `input` carries, as hyper's server reads it.
pub(super) fn first_request(served: &[Served], error: Option<&str>) -> Verdict {
    match served.first() {
        Some(Served {
            method,
            path,
            body: Ok(body),
        }) => Verdict::Accept {
            what: format!("{method} {path}"),
            body: body.clone(),
        },
        Some(Served { body: Err(e), .. }) => Verdict::Reject(format!("body: {e}")),
        None => Verdict::Reject(format!("head: {}", error.unwrap_or("no request"))),
    }
}

/// The request both clients send upstream before the answer under test comes back.
pub(super) const UPSTREAM_REQUEST: &[u8] =
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\ncontent-length: 4\r\n\r\nping";

/// The upstream's side: reads a whole request (a head and 4 bytes of body), answers with
/// `input` written `piece` bytes at a time (letting the client read in between), and closes.
pub(super) async fn upstream(mut server: DuplexStream, input: &[u8], piece: usize) {
    let mut request = Vec::new();
    let mut read = [0u8; 1024];
    loop {
        let complete = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| request.len() >= end + 4 + 4);
        if complete {
            break;
        }
        match server.read(&mut read).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&read[..n]),
        }
    }
    for piece in input.chunks(piece.max(1)) {
        if server.write_all(piece).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    // Dropping the stream closes it: the client reads what was written, then its end.
    let _ = server.shutdown().await;
}

/// The answer `input` gives to a POST, as hyper's client reads it: the status and the
/// whole body.
pub(super) async fn fetch(input: &[u8], piece: usize) -> Verdict {
    let (client, server) = tokio::io::duplex(DUPLEX_BYTES);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(client)).await {
            Ok(pair) => pair,
            Err(e) => return Verdict::Reject(format!("handshake: {e}")),
        };
    let request = Request::post("/v1/chat/completions")
        .header("host", "upstream")
        .body(Full::new(Bytes::from_static(b"ping")))
        .unwrap();
    let exchange = async move {
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => return Verdict::Reject(format!("head: {e}")),
        };
        let status = response.status().as_u16();
        match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(body) => Verdict::Accept {
                what: status.to_string(),
                body: body.to_bytes().to_vec(),
            },
            Err(e) => Verdict::Reject(format!("body: {e}")),
        }
    };
    let (_, verdict, ()) = tokio::join!(connection, exchange, upstream(server, input, piece));
    verdict
}
