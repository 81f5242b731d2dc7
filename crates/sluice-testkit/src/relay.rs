//! [`TcpRelay`]: a loopback TCP relay in front of a real server, able to make the
//! connections open through it go silent without closing them — a peer that vanished
//! (a network partition, a host that died) as the client sees it: no bytes and no FIN.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpRelay {
    addr: SocketAddr,
    /// One flag per connection relayed so far: set, its bytes stop in both directions.
    silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accept: JoinHandle<()>,
}

impl TcpRelay {
    /// Relays every connection made to [`TcpRelay::addr`] to `target`.
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let list = silenced.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                list.lock().unwrap().push(flag.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, flag.clone()));
                tokio::spawn(pipe(server_read, client_write, flag));
            }
        });
        TcpRelay {
            addr,
            silenced,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection open now stops passing bytes and stays open; later ones pass.
    pub fn silence_open_connections(&self) {
        for flag in self.silenced.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies until either side closes; once silenced, passes nothing, not even a close: both
/// sockets are held until the runtime ends.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silenced: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) if silenced.load(Ordering::SeqCst) => {
                std::future::pending::<()>().await;
                return;
            }
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silenced.load(Ordering::SeqCst) {
            // Read and dropped: the sender sees its bytes taken, never answered.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
