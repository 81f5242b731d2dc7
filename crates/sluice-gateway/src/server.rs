//! Wiring: builds the state (`state`), the router, binds, accepts, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedConfig;
use crate::downstream::{self, ConnectionContext};
use crate::state::{GatewayShared, Services, WorkerBuildError, WorkerState};
use crate::{admin, ops};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source} (is another process using the port? set server.listen or --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] WorkerBuildError),
    #[error(transparent)]
    Services(#[from] crate::state::ServicesError),
    #[error("cannot watch for SIGHUP, which reloads the TLS certificate: {0}")]
    Sighup(std::io::Error),
}

/// Every route but the chat path's POST, which the client connection answers without routing
/// (`downstream`); the chat path is listed so that other methods on it get 405, not 404.
fn routes(state: Arc<WorkerState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", any(method_not_allowed))
        .route("/v1/models", get(ops::models))
        .route(
            "/v1/admin/keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route(
            "/v1/admin/cache",
            get(crate::cache_admin::stats).delete(crate::cache_admin::purge),
        )
        .route("/v1/admin/limits", get(crate::limits_admin::view))
        .route("/v1/admin/prefix-index", get(crate::routing_admin::view))
        .route(
            "/v1/admin/routing/{model}",
            axum::routing::patch(crate::routing_admin::change),
        )
        .route(
            "/v1/admin/endpoints",
            get(crate::endpoint_admin::list).post(crate::endpoint_admin::add),
        )
        .route(
            "/v1/admin/endpoints/{model}/{name}",
            axum::routing::delete(crate::endpoint_admin::remove),
        )
        .route(
            "/v1/admin/keys/{name}",
            get(admin::get_key).delete(admin::revoke_key),
        )
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::authorize,
        ))
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
    worker: Arc<WorkerState>,
    drain_timeout: Duration,
}

impl Gateway {
    /// Binds `config.listen` (port 0 picks a free port) and builds the upstream clients.
    pub async fn bind(config: &ResolvedConfig) -> Result<Self, StartError> {
        Self::bind_with(config, Services::from_config(config)?).await
    }

    /// As [`Gateway::bind`], with the services behind the phases.
    pub async fn bind_with(
        config: &ResolvedConfig,
        services: Services,
    ) -> Result<Self, StartError> {
        let shared = Arc::new(GatewayShared::new(config, services));
        let worker = Arc::new(WorkerState::new(shared)?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            worker,
            drain_timeout: config.drain_timeout,
        })
    }

    /// A gateway on an already bound listener.
    pub fn on_listener(
        listener: TcpListener,
        worker: Arc<WorkerState>,
        drain_timeout: Duration,
    ) -> Self {
        Gateway {
            listener,
            worker,
            drain_timeout,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shared(&self) -> &Arc<GatewayShared> {
        &self.worker.shared
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests (and
    /// streams) finish for up to the drain timeout, closes whatever is left, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let context = ConnectionContext {
            worker: self.worker.clone(),
            router: routes(self.worker.clone()),
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
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.worker.shared.admit_connection() else {
                // At `max_connections`: closed at once, before it costs a buffer or a task.
                tracing::debug!(%peer, "client connection refused: max_connections reached");
                drop(stream);
                continue;
            };
            // Token-by-token streams are many small writes: never hold one back.
            let _ = stream.set_nodelay(true);
            if let Some(tls) = &self.worker.shared.services.tls {
                connections.spawn(Box::pin(crate::tls::serve_connection(
                    stream,
                    peer,
                    context.clone(),
                    slot,
                    tls.acceptor(),
                )));
                continue;
            }
            // Boxed once here: the connection's future holds a request's (kilobytes), and
            // spawning would otherwise copy it several times.
            connections.spawn(Box::pin(downstream::serve_connection(
                stream,
                peer,
                context.clone(),
                slot,
            )));
        }
        drop(self.listener);
        // Per worker, so debug: the pool says it once for all of them.
        tracing::debug!(drain_timeout = ?self.drain_timeout, in_flight_connections = connections.len(), "worker shutting down: no new connections, draining");
        context.drain.cancel();
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.drain_timeout, drained)
            .await
            .is_ok()
        {
            tracing::debug!("worker drained");
        } else {
            tracing::warn!(drain_timeout = ?self.drain_timeout, remaining = connections.len(), "drain timeout reached; closing the remaining connections");
        }
        connections.shutdown().await;
        Ok(())
    }
}
