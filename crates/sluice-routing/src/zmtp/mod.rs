//! The client side of ZMTP 3.0 (ZeroMQ's wire protocol) for the two sockets KV events need:
//! SUB (the engine's event publisher) and DEALER (its replay socket), NULL security.
//!
//! Our own rather than a general ZeroMQ library because the engine is a network peer like
//! any other: every read has a deadline, a frame and a message have a size bound checked
//! before anything is allocated, a message has a bound on its frames, and a connection that
//! broke any of these is dropped, never read again. Checked against the `zeromq` crate's
//! PUB and ROUTER sockets (`tests/zmtp.rs`) and, for frame parsing, against a plain reading
//! of the specification on generated input.
//!
//! We announce version 3.0: libzmq then speaks 3.0 to us (subscriptions as messages, no
//! heartbeat commands), as to any older peer.

mod frames;

use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use frames::{Frame, FrameDecoder, FrameLimits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Sub,
    Dealer,
}

impl SocketType {
    fn name(self) -> &'static str {
        match self {
            SocketType::Sub => "SUB",
            SocketType::Dealer => "DEALER",
        }
    }

    /// The peer types this one may talk to.
    fn peers(self) -> &'static [&'static str] {
        match self {
            SocketType::Sub => &["PUB", "XPUB"],
            SocketType::Dealer => &["ROUTER", "DEALER", "REP"],
        }
    }
}

#[derive(Debug, Error)]
pub enum ZmtpError {
    #[error("`{0}` is not a tcp://HOST:PORT endpoint")]
    Endpoint(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer is not speaking ZMTP 3: {0}")]
    Handshake(String),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
}

/// Bounds and deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub frames: FrameLimits,
    /// Connecting and the handshake; and each message, from its first byte to its last.
    pub io_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            frames: FrameLimits::default(),
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// One established ZMTP connection.
pub struct Connection {
    stream: TcpStream,
    decoder: FrameDecoder,
    limits: ConnectionLimits,
}

/// The 64-byte greeting: signature, version 3.0, NULL mechanism, not a server.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn check_greeting(g: &[u8; 64]) -> Result<(), ZmtpError> {
    if g[0] != 0xff || g[9] & 1 != 1 {
        return Err(ZmtpError::Handshake("no ZMTP signature".into()));
    }
    if g[10] < 3 {
        return Err(ZmtpError::Handshake(format!(
            "version {}.{}, not 3 or later",
            g[10], g[11]
        )));
    }
    let mechanism = &g[12..32];
    let name_end = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if &mechanism[..name_end] != b"NULL" {
        return Err(ZmtpError::Handshake(format!(
            "it asks for the {} security mechanism; only NULL is supported",
            String::from_utf8_lossy(&mechanism[..name_end])
        )));
    }
    Ok(())
}

/// A READY command with our socket type.
fn ready(socket: SocketType) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(5);
    body.extend_from_slice(b"READY");
    let name = b"Socket-Type";
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.extend_from_slice(&(socket.name().len() as u32).to_be_bytes());
    body.extend_from_slice(socket.name().as_bytes());
    frames::encode(&body, false, true)
}

/// The properties of a READY command's body, or why it is not one.
fn read_ready(body: &[u8]) -> Result<Vec<(String, Bytes)>, String> {
    let name_len = *body.first().ok_or("an empty command")? as usize;
    let name = body.get(1..1 + name_len).ok_or("a cut command name")?;
    if name != b"READY" {
        return Err(format!(
            "the command {} where READY was due",
            String::from_utf8_lossy(name)
        ));
    }
    let mut rest = &body[1 + name_len..];
    let mut props = Vec::new();
    while !rest.is_empty() {
        let n = rest[0] as usize;
        let name = rest.get(1..1 + n).ok_or("a cut property name")?;
        let len_at = 1 + n;
        let len = rest
            .get(len_at..len_at + 4)
            .ok_or("a cut property length")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let value = rest
            .get(len_at + 4..len_at + 4 + len)
            .ok_or("a cut property value")?;
        props.push((
            String::from_utf8_lossy(name).into_owned(),
            Bytes::copy_from_slice(value),
        ));
        rest = &rest[len_at + 4 + len..];
    }
    Ok(props)
}

async fn within<T>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, ZmtpError>>,
) -> Result<T, ZmtpError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| ZmtpError::Timeout(what))?
}

/// `tcp://HOST:PORT` → `HOST:PORT`.
pub fn tcp_address(endpoint: &str) -> Result<&str, ZmtpError> {
    endpoint
        .strip_prefix("tcp://")
        .filter(|a| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
        .ok_or_else(|| ZmtpError::Endpoint(endpoint.to_owned()))
}

impl Connection {
    /// Connects to `endpoint` (`tcp://HOST:PORT`) and completes the handshake as `socket`.
    pub async fn connect(
        endpoint: &str,
        socket: SocketType,
        limits: ConnectionLimits,
    ) -> Result<Connection, ZmtpError> {
        let address = tcp_address(endpoint)?;
        let stream = within(limits.io_timeout, "connecting", async {
            TcpStream::connect(address)
                .await
                .map_err(|source| ZmtpError::Connect {
                    endpoint: endpoint.to_owned(),
                    source,
                })
        })
        .await?;
        stream.set_nodelay(true)?;
        let mut c = Connection {
            stream,
            decoder: FrameDecoder::new(limits.frames),
            limits,
        };
        within(limits.io_timeout, "the handshake", c.handshake(socket)).await?;
        Ok(c)
    }

    async fn handshake(&mut self, socket: SocketType) -> Result<(), ZmtpError> {
        self.stream.write_all(&greeting()).await?;
        let mut theirs = [0u8; 64];
        self.stream.read_exact(&mut theirs).await?;
        check_greeting(&theirs)?;
        self.stream.write_all(&ready(socket)).await?;
        let frame = self.frame().await?;
        if !frame.command {
            return Err(ZmtpError::Handshake("a message before READY".into()));
        }
        let props = read_ready(&frame.body).map_err(ZmtpError::Handshake)?;
        let peer = props
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Socket-Type"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .ok_or_else(|| ZmtpError::Handshake("READY without Socket-Type".into()))?;
        if !socket.peers().contains(&peer.as_str()) {
            return Err(ZmtpError::Handshake(format!(
                "the peer is a {peer} socket, which a {} cannot talk to",
                socket.name()
            )));
        }
        Ok(())
    }

    /// The next frame, reading as needed (no deadline of its own).
    async fn frame(&mut self) -> Result<Frame, ZmtpError> {
        loop {
            if let Some(frame) = self.decoder.next().map_err(ZmtpError::Protocol)? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ZmtpError::Closed);
            }
            self.decoder.feed(&chunk[..n]);
        }
    }

    /// Subscribes (a SUB connection) to messages whose first frame starts with `prefix`.
    pub async fn subscribe(&mut self, prefix: &[u8]) -> Result<(), ZmtpError> {
        let mut body = Vec::with_capacity(1 + prefix.len());
        body.push(1);
        body.extend_from_slice(prefix);
        let frame = frames::encode(&body, false, false);
        within(self.limits.io_timeout, "subscribing", async {
            Ok(self.stream.write_all(&frame).await?)
        })
        .await
    }

    /// Sends one message (a DEALER connection).
    pub async fn send(&mut self, message: &[&[u8]]) -> Result<(), ZmtpError> {
        let mut bytes = Vec::new();
        for (i, part) in message.iter().enumerate() {
            bytes.extend_from_slice(&frames::encode(part, i + 1 < message.len(), false));
        }
        within(self.limits.io_timeout, "sending", async {
            Ok(self.stream.write_all(&bytes).await?)
        })
        .await
    }

    /// The next message. Waits up to `idle` for one to start; once started, it must be whole
    /// within the connection's I/O timeout. Commands between messages are skipped.
    pub async fn recv(&mut self, idle: Duration) -> Result<Vec<Bytes>, ZmtpError> {
        let mut parts = Vec::new();
        let mut started: Option<tokio::time::Instant> = None;
        loop {
            let deadline = match started {
                Some(t) => t + self.limits.io_timeout,
                None => tokio::time::Instant::now() + idle,
            };
            let frame = tokio::time::timeout_at(deadline, self.frame())
                .await
                .map_err(|_| {
                    ZmtpError::Timeout(if started.is_some() {
                        "a message"
                    } else {
                        "waiting for a message"
                    })
                })??;
            if frame.command {
                if !parts.is_empty() {
                    return Err(ZmtpError::Protocol("a command inside a message".into()));
                }
                continue;
            }
            started.get_or_insert_with(tokio::time::Instant::now);
            if parts.len() == self.limits.frames.max_frames_per_message {
                return Err(ZmtpError::Protocol(format!(
                    "a message of more than {} frames",
                    self.limits.frames.max_frames_per_message
                )));
            }
            let more = frame.more;
            parts.push(frame.body);
            if !more {
                return Ok(parts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_and_ready_commands_are_checked() {
        assert!(check_greeting(&greeting()).is_ok());
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        let e = check_greeting(&curve).unwrap_err().to_string();
        assert!(e.contains("CURVE security mechanism"), "{e}");
        let mut old = greeting();
        old[10] = 2;
        assert!(check_greeting(&old).is_err());
        let r = ready(SocketType::Sub);
        // flags (command), size, then the body.
        assert_eq!(r[0], 0x04);
        let props = read_ready(&r[2..]).unwrap();
        assert_eq!(
            props,
            vec![("Socket-Type".into(), Bytes::from_static(b"SUB"))]
        );
        assert!(read_ready(&[5, b'R', b'E']).is_err());
        assert!(read_ready(&[5, b'R', b'E', b'A', b'D', b'Y', 1, b'x', 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn endpoints_are_tcp_host_port() {
        assert_eq!(tcp_address("tcp://10.0.0.1:5557").unwrap(), "10.0.0.1:5557");
        assert_eq!(
            tcp_address("tcp://vllm-0.svc:5557").unwrap(),
            "vllm-0.svc:5557"
        );
        for bad in [
            "ipc:///tmp/x",
            "tcp://:5557",
            "tcp://host",
            "tcp://host:99999",
            "10.0.0.1:5557",
        ] {
            assert!(tcp_address(bad).is_err(), "{bad}");
        }
    }
}
