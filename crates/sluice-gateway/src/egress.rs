//! How the gateway's upstream connections leave the host: straight to the endpoint, or through
//! the HTTP proxy the environment names (`HTTPS_PROXY`, `NO_PROXY`, ...) as a CONNECT tunnel.
//!
//! TLS is layered on top of either (see [`crate::upstream`]), so a tunnelled connection is
//! still verified end to end against the endpoint's own certificate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connector to one endpoint, direct or through a CONNECT proxy.
#[derive(Clone)]
pub enum Egress {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl Egress {
    /// The connector for `endpoint`: through the environment's proxy when one applies to it.
    /// Plain-HTTP endpoints are always reached directly (they are in-cluster engines, for
    /// which a forward proxy is a misconfiguration); the caller is told so it can warn.
    pub fn for_endpoint(endpoint: &Uri, connect_timeout: Duration) -> (Egress, EgressRoute) {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        // Token-by-token traffic is many small writes: never hold one back.
        tcp.set_nodelay(true);
        // The TLS layer above decides which schemes are allowed.
        tcp.enforce_http(false);
        let Some(intercept) = Matcher::from_env().intercept(endpoint) else {
            return (Egress::Direct(tcp), EgressRoute::Direct);
        };
        let proxy = intercept.uri().clone();
        if endpoint.scheme_str() != Some("https") {
            return (Egress::Direct(tcp), EgressRoute::ProxyIgnored { proxy });
        }
        let mut tunnel = Tunnel::new(proxy.clone(), tcp);
        if let Some(auth) = intercept.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        (Egress::Tunnel(tunnel), EgressRoute::Tunnel { proxy })
    }
}

/// Which way [`Egress::for_endpoint`] chose, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRoute {
    Direct,
    Tunnel {
        proxy: Uri,
    },
    /// A proxy is configured for this plain-HTTP endpoint but is not used.
    ProxyIgnored {
        proxy: Uri,
    },
}

impl Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Egress::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Egress::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Egress::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Egress::Tunnel(t) => {
                let connecting = t.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}
