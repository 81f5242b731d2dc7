//! Active health checks: how an endpoint is asked whether it is well while no traffic
//! reaches it. The router runs one check per endpoint every `health_check_interval`, under
//! `health_check_timeout`, and reports the result like an attempt's (a failed check counts
//! toward ejection; a passed one resets the count).
//!
//! The check itself is the caller's: [`TcpConnect`] here (the engine's port accepts), or
//! the gateway's HTTP check (its `/health` answers 200), which needs the gateway's HTTP
//! client and so lives there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// One kind of active health check of one endpoint.
pub trait HealthCheck: Send + Sync {
    /// Checks once: `Ok` when the endpoint is well, else what was wrong (for operators). The
    /// router bounds it with its timeout; it need not.
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// What it checks, for logs and the admin view (`tcp 10.0.0.7:8000`).
    fn describe(&self) -> String;
}

/// The endpoint's host and port accept a TCP connection.
#[derive(Debug, Clone)]
pub struct TcpConnect {
    /// `HOST:PORT`.
    pub address: String,
}

impl HealthCheck for TcpConnect {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            tokio::net::TcpStream::connect(self.address.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("connecting to {}: {e}", self.address))
        })
    }

    fn describe(&self) -> String {
        format!("tcp {}", self.address)
    }
}

/// What an endpoint's checks found: counts, and the last failure's reason until a check
/// passes again.
#[derive(Debug, Default)]
pub struct CheckRecord {
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl CheckRecord {
    pub(crate) fn record(&self, result: &Result<(), String>) {
        let mut last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                self.passed.fetch_add(1, Ordering::Relaxed);
                *last = None;
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *last = Some(why.clone());
            }
        }
    }

    /// Why the last check failed, when the last check failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tcp_check_passes_on_a_listening_port_and_says_why_it_failed_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = TcpConnect {
            address: listener.local_addr().unwrap().to_string(),
        };
        let record = CheckRecord::default();
        let result = open.check().await;
        assert_eq!(result, Ok(()));
        record.record(&result);
        let closed_address = open.address.clone();
        drop(listener);
        let closed = TcpConnect {
            address: closed_address.clone(),
        };
        let result = closed.check().await;
        let why = result.clone().unwrap_err();
        assert!(why.contains(&closed_address), "{why}");
        record.record(&result);
        assert_eq!(record.passed.load(Ordering::Relaxed), 1);
        assert_eq!(record.failed.load(Ordering::Relaxed), 1);
        assert_eq!(record.last_failure(), Some(why));
        record.record(&Ok(()));
        assert_eq!(record.last_failure(), None);
        assert_eq!(closed.describe(), format!("tcp {closed_address}"));
    }
}
