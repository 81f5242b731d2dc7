//! One keep-alive HTTP/1.1 connection, owned by one worker.
//!
//! hyper's client connection is a future that does the I/O. The usual pattern spawns it as
//! its own task, which costs two task wake-ups per read (connection task, then the reader)
//! and lets the timestamp of a chunk drift by a scheduling delay. Here the worker polls the
//! connection itself, alongside whatever it is waiting for ([`Connection::drive`]).
//!
//! Even so, bytes wait in the kernel from the moment they arrive until the worker's thread
//! wakes up and reads them: a wake-up late by a timer tick, or a thread busy with other
//! connections, delays the read by milliseconds, and a timestamp taken at the read would
//! carry that delay into TTFT, ITL and their tails. So on Linux the socket asks the kernel
//! to stamp every read with its receive time (`SO_TIMESTAMPNS`), and a chunk's time is that
//! stamp ([`Connection::arrival`]), converted to the run clock; the delay itself is kept as
//! the receive lag the report shows.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::Clock;

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
    #[error("TLS handshake with {addr} failed: {source}{hint}")]
    Tls {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },
}

/// The connection ended while a request was waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEnded {
    pub reason: String,
}

pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: http1::Connection<TokioIo<ClientStream>, Full<Bytes>>,
    ended: Option<ConnectionEnded>,
    arrivals: Arc<Arrivals>,
}

/// When the bytes most recently read arrived, shared between the socket (which writes it
/// on every read) and the worker (which reads it when a frame is delivered).
#[derive(Debug)]
struct Arrivals {
    /// Run-clock time (µs) at which the kernel received the bytes last read; `u64::MAX`
    /// before the first read.
    at_us: AtomicU64,
    /// How long they waited in the kernel before this process read them (µs); `u64::MAX`
    /// when the kernel gave no receive time.
    lag_us: AtomicU64,
}

/// The arrival of the bytes last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Run-clock µs: the kernel's receive time where it gives one, else the read's.
    pub at_us: u64,
    /// How long the bytes waited before the read; `None` without a kernel timestamp.
    pub lag_us: Option<u64>,
}

/// A receive lag beyond this is not believed (the wall clock was stepped between the stamp
/// and the read): the read's own time is used.
const MAX_BELIEVED_LAG: Duration = Duration::from_secs(10);

/// The TCP stream, read with `recvmsg` so that each read brings the kernel's receive time.
struct StampedStream {
    tcp: TcpStream,
    clock: Clock,
    arrivals: Arc<Arrivals>,
    /// The kernel agreed to stamp this socket's reads.
    stamped: bool,
}

impl StampedStream {
    fn new(tcp: TcpStream, clock: Clock, arrivals: Arc<Arrivals>) -> StampedStream {
        let stamped = stamp::enable(&tcp);
        StampedStream {
            tcp,
            clock,
            arrivals,
            stamped,
        }
    }

    /// Records the arrival of bytes just read, stamped by the kernel at `kernel` (wall
    /// clock) when it said.
    fn note(&self, kernel: Option<Duration>) {
        let now_us = self.clock.now_us();
        let lag = kernel.and_then(|k| {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
            wall.checked_sub(k).filter(|lag| *lag <= MAX_BELIEVED_LAG)
        });
        let lag_us = lag.map(|l| l.as_micros() as u64);
        self.arrivals.at_us.store(
            now_us.saturating_sub(lag_us.unwrap_or(0)),
            Ordering::Relaxed,
        );
        self.arrivals
            .lag_us
            .store(lag_us.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamped {
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
            if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                this.note(None);
            }
            return polled;
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let tcp = &this.tcp;
            match tcp.try_io(Interest::READABLE, || stamp::recv(tcp, unfilled)) {
                Ok((n, kernel)) => {
                    buf.advance(n);
                    if n > 0 {
                        this.note(kernel);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What hyper talks over: the stamped TCP stream, or TLS on top of it (the TLS reads go
/// through the stamped stream, so `https://` chunks carry the kernel's receive times too).
enum ClientStream {
    Plain(StampedStream),
    Tls(Box<tokio_rustls::client::TlsStream<StampedStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS client settings of `https://` targets: the web's roots plus `--ca-file`.
pub type TlsSettings = Arc<rustls::ClientConfig>;

/// Kernel receive timestamps (`SO_TIMESTAMPNS`, `SCM_TIMESTAMPNS`): Linux only; elsewhere
/// reads are timed when they happen.
#[cfg(target_os = "linux")]
mod stamp {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
    use nix::sys::time::TimeSpec;
    use tokio::net::TcpStream;

    pub fn enable(tcp: &TcpStream) -> bool {
        setsockopt(tcp, sockopt::ReceiveTimestampns, &true).is_ok()
    }

    /// One read into `buf`, and the kernel's receive time of the bytes read (for TCP: of
    /// the last segment they came in), as time since the Unix epoch.
    pub fn recv(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<Duration>)> {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(TimeSpec);
        let msg = recvmsg::<()>(
            tcp.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut kernel = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                    let (secs, nanos) = (ts.tv_sec(), ts.tv_nsec());
                    if secs >= 0 && (0..1_000_000_000).contains(&nanos) {
                        kernel = Some(Duration::new(secs as u64, nanos as u32));
                    }
                }
            }
        }
        Ok((msg.bytes, kernel))
    }
}

#[cfg(not(target_os = "linux"))]
mod stamp {
    use std::io;
    use std::time::Duration;

    use tokio::net::TcpStream;

    pub fn enable(_: &TcpStream) -> bool {
        false
    }

    pub fn recv(_: &TcpStream, _: &mut [u8]) -> io::Result<(usize, Option<Duration>)> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` (with TLS for a server `name` when `tls` is given); its reads are
    /// timed on `clock`.
    pub async fn open(
        addr: SocketAddr,
        clock: Clock,
        tls: Option<(&TlsSettings, &ServerName<'static>)>,
    ) -> Result<Connection, ConnectError> {
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
        let arrivals = Arc::new(Arrivals {
            at_us: AtomicU64::new(u64::MAX),
            lag_us: AtomicU64::new(u64::MAX),
        });
        let stamped = StampedStream::new(tcp, clock, arrivals.clone());
        let stream = match tls {
            None => ClientStream::Plain(stamped),
            Some((settings, name)) => {
                let connector = tokio_rustls::TlsConnector::from(settings.clone());
                let tls = connector
                    .connect(name.clone(), stamped)
                    .await
                    .map_err(|source| {
                        let hint = if source.to_string().contains("certificate") {
                            " (if the server's certificate is signed by a private CA, pass that CA's certificate with --ca-file)"
                        } else {
                            ""
                        };
                        ConnectError::Tls { addr, source, hint }
                    })?;
                ClientStream::Tls(Box::new(tls))
            }
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        Ok(Connection {
            sender,
            conn,
            ended: None,
            arrivals,
        })
    }

    /// When the bytes most recently read arrived; `None` before the first read.
    pub fn arrival(&self) -> Option<Arrival> {
        let at_us = self.arrivals.at_us.load(Ordering::Relaxed);
        let lag_us = self.arrivals.lag_us.load(Ordering::Relaxed);
        (at_us != u64::MAX).then(|| Arrival {
            at_us,
            lag_us: (lag_us != u64::MAX).then_some(lag_us),
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
