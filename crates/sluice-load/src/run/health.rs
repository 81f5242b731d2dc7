//! A self-check of the generator: how late the runtime notices that data has arrived.
//!
//! Every timestamp the workers take (first token, each chunk) is taken when their task is
//! polled after its socket became readable, so a runtime that is behind (the I/O driver
//! polled late, a long queue of ready tasks) makes every measurement late by as much. The
//! probe does what a worker does: every 10 ms it sends itself a datagram over loopback and
//! times how long it takes until its task runs with the datagram in hand. The distribution
//! is reported, and a p90 above 1 ms marks the generator as a likely bottleneck. This
//! matters most in closed loop, where there is no schedule to be late against.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::stats::LatencyHistogram;

const PERIOD: Duration = Duration::from_millis(10);

pub(super) struct HealthProbe {
    stop: oneshot::Sender<()>,
    task: JoinHandle<LatencyHistogram>,
}

/// Starts the probe on `runtime`: the one whose delays the workers' timestamps share.
pub(super) fn start(runtime: &Handle) -> HealthProbe {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = runtime.spawn(async move {
        let mut delays = LatencyHistogram::new();
        // Without a socket there is nothing to measure; the report then has no figure.
        let Ok(socket) = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await else {
            return delays;
        };
        let Ok(own) = socket.local_addr() else {
            return delays;
        };
        let mut buf = [0u8; 1];
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(PERIOD) => {}
            }
            let t = Instant::now();
            if socket.send_to(&[1], own).await.is_err() {
                continue;
            }
            if socket.recv(&mut buf).await.is_ok() {
                delays.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }
        delays
    });
    HealthProbe { stop, task }
}

impl HealthProbe {
    pub(super) async fn finish(self) -> LatencyHistogram {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
