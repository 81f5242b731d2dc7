//! Clients for OpenAI-compatible upstreams (OpenAI, vLLM, most hosted providers).
//!
//! One pooled HTTP client per endpoint, so each endpoint keeps its own connection pool and its
//! own connect timeout. [`UpstreamEndpoint::send`] resolves when the response head arrives and
//! turns transport failures into [`GatewayError`]s that say whether another endpoint may be
//! tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::{ResolvedEndpoint, ResolvedModel, Timeouts};
use crate::error::{GatewayError, TimeoutPhase};

/// How much of an upstream error body is kept: enough to pass a provider's error through,
/// bounded so a misbehaving upstream cannot make the gateway buffer without limit.
const MAX_ERROR_BODY: usize = 1024 * 1024;

pub struct UpstreamEndpoint {
    /// The configured base URL; the `endpoint` label of metrics and the name in errors.
    pub label: String,
    config: ResolvedEndpoint,
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
}

impl UpstreamEndpoint {
    pub fn new(config: ResolvedEndpoint) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if !proxy_configured() {
            // Proxy matching runs on every request even with no proxy set; skip it then.
            builder = builder.no_proxy();
        }
        let client = builder.build()?;
        let authorization = config.api_key.as_ref().and_then(|key| {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Ok(UpstreamEndpoint {
            label: config.base_url.as_str().trim_end_matches('/').to_owned(),
            config,
            client,
            authorization,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.config.timeouts
    }

    pub fn upstream_model(&self) -> Option<&str> {
        self.config.upstream_model.as_deref()
    }

    pub fn base_url(&self) -> &reqwest::Url {
        &self.config.base_url
    }

    /// Posts a chat completion body; resolves with the response head, or with the error that
    /// stopped it within the connect and first-byte timeouts.
    pub async fn send(
        &self,
        body: Bytes,
        request_id: &str,
    ) -> Result<reqwest::Response, GatewayError> {
        let mut req = self
            .client
            .post(self.config.chat_url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .body(body);
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let first_byte = self.config.timeouts.first_byte;
        match tokio::time::timeout(first_byte, req.send()).await {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                endpoint: self.label.clone(),
                phase: TimeoutPhase::FirstByte,
                limit: first_byte,
            }),
            Ok(Err(e)) => Err(self.classify(&e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Turns a non-2xx answer into the error the client should see: a 4xx passes through
    /// unchanged (the request was at fault), anything else becomes a 502 that quotes it.
    pub async fn rejection(&self, resp: reqwest::Response) -> GatewayError {
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = read_bounded(resp, MAX_ERROR_BODY).await;
        if status.is_client_error() {
            GatewayError::UpstreamRejected {
                endpoint: self.label.clone(),
                status,
                body,
                content_type,
                retry_after,
            }
        } else {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(512).collect();
            GatewayError::UpstreamFailed {
                endpoint: self.label.clone(),
                status,
                excerpt,
            }
        }
    }

    pub fn classify(&self, e: &reqwest::Error) -> GatewayError {
        let reason = error_chain(e);
        if e.is_connect() {
            if e.is_timeout() {
                return GatewayError::UpstreamTimeout {
                    endpoint: self.label.clone(),
                    phase: TimeoutPhase::Connect,
                    limit: self.config.timeouts.connect,
                };
            }
            return GatewayError::UpstreamUnreachable {
                endpoint: self.label.clone(),
                reason,
            };
        }
        if e.is_timeout() {
            return GatewayError::UpstreamTimeout {
                endpoint: self.label.clone(),
                phase: TimeoutPhase::FirstByte,
                limit: self.config.timeouts.first_byte,
            };
        }
        // The request may have reached the upstream: not safe to send elsewhere.
        GatewayError::UpstreamProtocol {
            endpoint: self.label.clone(),
            reason,
        }
    }
}

/// Whether the environment names an HTTP proxy, which reqwest then honours for upstream calls.
fn proxy_configured() -> bool {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Reads at most `limit` bytes of a body; a body that fails midway yields what arrived.
async fn read_bounded(resp: reqwest::Response, limit: usize) -> Bytes {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Bytes::from(out)
}

/// `e` and its sources, joined: reqwest's own message alone rarely says what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A configured model and the endpoints serving it, picked round robin.
pub struct ModelRoute {
    pub name: String,
    pub endpoints: Vec<Arc<UpstreamEndpoint>>,
    next: AtomicUsize,
}

impl ModelRoute {
    pub fn new(model: &ResolvedModel) -> Result<Self, reqwest::Error> {
        let endpoints = model
            .endpoints
            .iter()
            .map(|e| UpstreamEndpoint::new(e.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelRoute {
            name: model.name.clone(),
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    /// The endpoints in the order to try them for one request: round robin picks the first,
    /// the rest follow so a connect failure can move on to the next.
    pub fn attempt_order(&self) -> impl Iterator<Item = &Arc<UpstreamEndpoint>> {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.endpoints[(start + i) % n])
    }
}
