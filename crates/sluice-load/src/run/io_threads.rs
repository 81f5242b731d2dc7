//! The threads that do an open-loop run's network I/O.
//!
//! Each is a single-threaded tokio runtime on an OS thread of its own; the pacer hands it
//! requests and its workers' connections live there for the whole run. On the shared
//! work-stealing runtime each hand-off woke a parked worker thread and readiness events
//! moved tasks between the two threads: about four context switches per request, and
//! 35–40 % of a core at 5 000 req/s where one single-threaded runtime needs 22–25 %
//! (docs/benchmarks-log.md). The generator shares the machine with what it measures, so every
//! cycle it saves is left to the target.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::RunError;

pub(super) struct IoThreads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoThreads {
    /// Starts `n` (at least one) I/O threads and returns once each runtime is up.
    pub(super) fn start(n: usize) -> Result<IoThreads, RunError> {
        let mut io = IoThreads {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-load-io-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(runtime.handle().clone()));
                    // Runs the spawned workers until the run is over; dropping the runtime
                    // afterwards cancels whatever is left (nothing, once outputs are in).
                    let _ = runtime.block_on(stopped);
                })
                .map_err(RunError::Thread)?;
            io.stops.push(stop);
            io.threads.push(thread);
            match ready_rx.recv() {
                Ok(Ok(handle)) => io.handles.push(handle),
                Ok(Err(e)) => return Err(RunError::Thread(e)),
                Err(_) => {
                    return Err(RunError::Thread(std::io::Error::other(
                        "an I/O thread stopped while starting",
                    )))
                }
            }
        }
        Ok(io)
    }

    /// The runtime for the `i`-th connection: connections are spread round robin.
    pub(super) fn handle(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_io_threads_and_the_threads_stop_on_drop() {
        let io = IoThreads::start(2).expect("start");
        let names: Vec<String> = (0..4)
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                io.handle(i).spawn(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    let _ = tx.send(name.unwrap_or_default());
                });
                rx.recv().expect("task ran")
            })
            .collect();
        assert_eq!(
            names,
            [
                "sluice-load-io-0",
                "sluice-load-io-1",
                "sluice-load-io-0",
                "sluice-load-io-1"
            ]
        );
        let handle = io.handle(0).clone();
        drop(io);
        // The runtime is gone: a task spawned now never runs.
        let (tx, rx) = mpsc::channel::<()>();
        drop(handle.spawn(async move {
            let _ = tx.send(());
        }));
        assert!(rx.recv().is_err());
    }
}
