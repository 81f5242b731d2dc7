//! A target that records what it receives: HTTP/1.1 on raw TCP, answering every request at
//! once with a fixed non-streaming completion whose text names the request's number, or
//! (`capture_server_streaming`) with a stream of given chunks and no `usage`, as servers that
//! ignore `stream_options` send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Captured {
    /// The client's end of the connection the request came on.
    pub peer: SocketAddr,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Log = Arc<Mutex<Vec<Captured>>>;

pub async fn capture_server() -> (SocketAddr, Log) {
    start(None).await
}

/// Every answer is a stream of `chunks` (one content delta each), without usage.
pub async fn capture_server_streaming(chunks: &'static [&'static str]) -> (SocketAddr, Log) {
    start(Some(chunks)).await
}

async fn start(stream: Option<&'static [&'static str]>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((sock, peer)) = listener.accept().await {
            tokio::spawn(serve(sock, peer, l.clone(), stream));
        }
    });
    (addr, log)
}

async fn serve(
    mut sock: TcpStream,
    peer: SocketAddr,
    log: Log,
    stream: Option<&'static [&'static str]>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        let n = {
            let mut log = log.lock().unwrap();
            log.push(Captured {
                peer,
                headers,
                body,
            });
            log.len() - 1
        };
        if let Some(chunks) = stream {
            let mut events = String::new();
            for c in chunks {
                let chunk = serde_json::json!({"id": "x", "object": "chat.completion.chunk",
                    "created": 0, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]});
                events.push_str(&format!("data: {chunk}\n\n"));
            }
            events.push_str("data: [DONE]\n\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
                events.len()
            );
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let answer = format!(
            r#"{{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"reply {n}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
