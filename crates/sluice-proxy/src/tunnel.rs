//! CONNECT with TLS interception: answer 200, accept TLS on the tunnel with a certificate
//! for the requested host signed by the proxy's CA, and serve the decrypted HTTP/1.1
//! requests through the same handler as every other request, addressed to
//! `https://host:port`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Map;
use tokio_rustls::TlsAcceptor;

use crate::error::proxy_error;
use crate::handler::{handle, ProxyState};
use crate::headers::ReplayOutcome;
use crate::route::{origin_of, TunnelOrigin};
use crate::server::{until_stopped, StopSignal};

/// A client that opens a tunnel and never starts TLS is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers a CONNECT request and, once the client takes the tunnel, serves it.
pub async fn connect(
    state: Arc<ProxyState>,
    stop: StopSignal,
    req: hyper::Request<Incoming>,
) -> Response {
    let fail = |status: StatusCode, kind: &str, message: String| {
        proxy_error(
            status,
            kind,
            message,
            Map::new(),
            ReplayOutcome::Passthrough,
        )
    };
    let Some(authority) = req.uri().authority().cloned() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_connect_target",
            format!(
                "CONNECT needs a host:port target, got {:?}",
                req.uri().to_string()
            ),
        );
    };
    let ca = match state.certificate_authority().await {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!("CONNECT {authority}: {e}");
            return fail(
                StatusCode::BAD_GATEWAY,
                "ca_unavailable",
                format!("cannot intercept TLS to {authority}: {e}"),
            );
        }
    };
    let host = authority.host().to_ascii_lowercase();
    let tls = match ca.server_config(&host) {
        Ok(config) => config,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_connect_target",
                format!("cannot intercept TLS to {authority}: {e}"),
            )
        }
    };
    let origin = origin_of("https", &authority);
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("CONNECT {authority}: the client did not take the tunnel: {e}");
                return;
            }
        };
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(tls).accept(TokioIo::new(upgraded)),
        )
        .await;
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(
                    "CONNECT {authority}: TLS handshake with the client failed, closing the \
                     tunnel: {e} (the client must trust the proxy CA {}; see `sluice proxy ca`)",
                    ca.cert_path().display()
                );
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "CONNECT {authority}: the client sent no TLS handshake within {}s, closing",
                    HANDSHAKE_TIMEOUT.as_secs()
                );
                return;
            }
        };
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            let state = state.clone();
            req.extensions_mut().insert(TunnelOrigin(origin.clone()));
            async move { Ok::<_, Infallible>(handle(state, req.map(axum::body::Body::new)).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        if let Err(e) = until_stopped(conn, stop).await {
            tracing::debug!("tunnel to {authority} ended with an error: {e}");
        }
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}
