//! One keep-alive HTTP/1.1 connection, owned by one worker.
//!
//! hyper's client connection is a future that does the I/O. The usual pattern spawns it as
//! its own task, which costs two task wake-ups per read (connection task, then the reader)
//! and lets the timestamp of a chunk drift by a scheduling delay. Here the worker polls the
//! connection itself, alongside whatever it is waiting for ([`Connection::drive`]), so a
//! chunk is timed in the same poll that read it from the socket.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {addr}: {source}{hint}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// The connection ended while a request was waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEnded {
    pub reason: String,
}

pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    ended: Option<ConnectionEnded>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Connection, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(|source| {
            // EMFILE: the open-files limit, not the target, is what failed.
            let hint = if source.raw_os_error() == Some(24) {
                " (the process ran out of file descriptors: raise `ulimit -n` or lower --max-connections)"
            } else {
                ""
            };
            ConnectError::Tcp { addr, source, hint }
        })?;
        // Tokens are small writes from the server; our own request is one write. Nagle
        // would only add delay.
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        Ok(Connection {
            sender,
            conn,
            ended: None,
        })
    }

    /// Whether a new request may be sent. Polls the connection once without waiting, so
    /// a close by the server while the connection sat idle is noticed here rather than as
    /// a failed request.
    pub async fn is_reusable(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = Pin::new(&mut self.conn).poll(cx) {
                self.ended = Some(ConnectionEnded {
                    reason: res
                        .err()
                        .map_or_else(|| "closed".to_owned(), |e| e.to_string()),
                });
            }
            Poll::Ready(())
        })
        .await;
        self.ended.is_none() && self.sender.is_ready()
    }

    pub fn sender(&mut self) -> &mut http1::SendRequest<Full<Bytes>> {
        &mut self.sender
    }

    /// Waits for `fut` while doing the connection's I/O. Fails when the connection ends
    /// before `fut` completes (nothing more can arrive for it).
    pub async fn drive<F: Future>(&mut self, fut: F) -> Result<F::Output, ConnectionEnded> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            // I/O first: whatever it reads is then visible to `fut` in this same poll.
            if self.ended.is_none() {
                if let Poll::Ready(res) = Pin::new(&mut self.conn).poll(cx) {
                    self.ended = Some(ConnectionEnded {
                        reason: res
                            .err()
                            .map_or_else(|| "closed by the server".to_owned(), |e| e.to_string()),
                    });
                }
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match &self.ended {
                Some(ended) => Poll::Ready(Err(ended.clone())),
                None => Poll::Pending,
            }
        })
        .await
    }
}
