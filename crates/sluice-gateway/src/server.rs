//! Wiring: the shared state, the router, binding, and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedConfig;
use crate::downstream::{self, ConnectionContext};
use crate::metrics::GatewayMetrics;
use crate::upstream::ModelRoute;
use crate::{chat, ops};

/// Everything a request handler reads. Built once from the resolved config.
pub struct GatewayState {
    pub models: HashMap<String, ModelRoute>,
    /// Configured model names, sorted: for `/v1/models` and for "unknown model" errors.
    pub model_names: Vec<String>,
    pub metrics: Arc<GatewayMetrics>,
    pub started_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source} (is another process using the port? set server.listen or --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client for model `{model}`: {source}")]
    Client {
        model: String,
        source: crate::upstream::ClientBuildError,
    },
}

impl GatewayState {
    pub fn new(config: &ResolvedConfig) -> Result<Self, StartError> {
        Self::with_metrics(config, Arc::new(GatewayMetrics::new()))
    }

    /// State whose metrics are recorded in `metrics`, shared with other workers.
    pub fn with_metrics(
        config: &ResolvedConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Self, StartError> {
        let mut models = HashMap::new();
        for (name, model) in &config.models {
            let route = ModelRoute::new(model, &metrics).map_err(|source| StartError::Client {
                model: name.clone(),
                source,
            })?;
            models.insert(name.clone(), route);
        }
        let mut model_names: Vec<String> = models.keys().cloned().collect();
        model_names.sort();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(GatewayState {
            models,
            model_names,
            metrics,
            started_unix,
        })
    }
}

/// Every route, the hot path included (see [`GatewayService`] for its shortcut).
fn routes(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_route))
        .route("/v1/models", get(ops::models))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed() -> axum::response::Response {
    crate::error::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &sluice_api::ErrorResponse::new(
            "invalid_request_error",
            Some("method_not_allowed"),
            "this method is not allowed on this path (chat completions take POST)",
        ),
    )
}

/// A gateway bound to its port, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    state: Arc<GatewayState>,
    drain_timeout: Duration,
}

impl Gateway {
    /// Binds `config.listen` (port 0 picks a free port) and builds the upstream clients.
    pub async fn bind(config: &ResolvedConfig) -> Result<Self, StartError> {
        let state = Arc::new(GatewayState::new(config)?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            state,
            drain_timeout: config.drain_timeout,
        })
    }

    /// A gateway on an already bound listener.
    pub fn on_listener(
        listener: TcpListener,
        state: Arc<GatewayState>,
        drain_timeout: Duration,
    ) -> Self {
        Gateway {
            listener,
            state,
            drain_timeout,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests (and
    /// streams) finish for up to the drain timeout, closes whatever is left, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let context = ConnectionContext {
            state: self.state.clone(),
            router: routes(self.state.clone()),
            drain: CancellationToken::new(),
        };
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
                // Reap finished connections so the set does not grow with every client.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Token-by-token streams are many small writes: never hold one back.
            let _ = stream.set_nodelay(true);
            // Boxed once here: the connection's future holds a request's (kilobytes), and
            // spawning would otherwise copy it several times.
            connections.spawn(Box::pin(downstream::serve_connection(
                stream,
                context.clone(),
            )));
        }
        drop(self.listener);
        tracing::info!(drain_timeout = ?self.drain_timeout, in_flight_connections = connections.len(), "shutting down: no new connections, draining");
        context.drain.cancel();
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.drain_timeout, drained)
            .await
            .is_ok()
        {
            tracing::info!("drained");
        } else {
            tracing::warn!(drain_timeout = ?self.drain_timeout, remaining = connections.len(), "drain timeout reached; closing the remaining connections");
        }
        connections.shutdown().await;
        Ok(())
    }
}
