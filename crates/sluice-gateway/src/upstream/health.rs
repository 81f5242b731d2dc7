//! An endpoint's HTTP health check (`[models.NAME.routing] health_check_path`): `GET PATH`
//! on the endpoint's host and port, over a connection of its own that is closed after the
//! answer's head. A 2xx passes; any other status, a connect failure, or an answer that is
//! not HTTP fails, with the reason kept for the admin view.
//!
//! Its own connection rather than one from the endpoint's pool: a pool busy with traffic
//! would make the check wait (and fail) for the gateway's own reasons, and a check must see
//! whether the engine takes new connections. The router bounds each check with
//! `health_check_timeout`.

use std::future::Future;
use std::pin::Pin;

use axum::http::Uri;
use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::rt::TokioIo;
use sluice_routing::HealthCheck;
use tower_service::Service;

use super::{error_chain, h1, host_header, origin, ClientBuildError, USER_AGENT};
use crate::config::ResolvedEndpoint;
use crate::egress::Egress;

pub struct HttpHealthCheck {
    connector: HttpsConnector<Egress>,
    /// `scheme://authority` of the endpoint.
    target: Uri,
    /// The whole request.
    request: Bytes,
    /// `GET http://host:port/health`, for messages (no credentials in it).
    what: String,
}

impl HttpHealthCheck {
    pub fn new(endpoint: &ResolvedEndpoint, path: &str) -> Result<Self, ClientBuildError> {
        let uri_error = |reason: &str| ClientBuildError::Uri {
            url: endpoint.base_url.to_string(),
            reason: reason.into(),
        };
        let base: Uri = endpoint
            .base_url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| uri_error(&e.to_string()))?;
        let target = origin(&base).ok_or_else(|| uri_error("no scheme or host"))?;
        let host = host_header(&base).ok_or_else(|| uri_error("no host"))?;
        let (egress, _) = Egress::for_endpoint(&base, endpoint.timeouts.connect);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(egress);
        let mut request = Vec::with_capacity(160);
        request.extend_from_slice(b"GET ");
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(host.as_bytes());
        request.extend_from_slice(b"\r\nuser-agent: ");
        request.extend_from_slice(USER_AGENT.as_bytes());
        request.extend_from_slice(b"\r\naccept-encoding: identity\r\nconnection: close\r\n");
        // The endpoint's key, as its requests carry it: a check path under the API (a
        // provider's `/v1/models`) needs it; vLLM's `/health` ignores it.
        if let Some(key) = &endpoint.api_key {
            request.extend_from_slice(b"authorization: Bearer ");
            request.extend_from_slice(key.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let what = format!("GET {}{path}", target.to_string().trim_end_matches('/'));
        Ok(HttpHealthCheck {
            connector,
            target,
            request: Bytes::from(request),
            what,
        })
    }

    async fn run(&self) -> Result<(), String> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| format!("{}: cannot connect: {}", self.what, error_chain(&*e)))?;
        let mut connection = h1::Connection::new(TokioIo::new(io));
        connection
            .write_request([&self.request])
            .await
            .map_err(|e| format!("{}: sending the request failed: {e}", self.what))?;
        let head = connection
            .read_head()
            .await
            .map_err(|e| format!("{}: {e}", self.what))?;
        // The connection (and any body) is dropped here: closed, never reused.
        if head.status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", self.what, head.status))
        }
    }
}

impl HealthCheck for HttpHealthCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.run())
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}
