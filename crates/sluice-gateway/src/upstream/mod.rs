//! Clients for OpenAI-compatible upstreams (OpenAI, vLLM, most hosted providers).
//!
//! One connection pool per endpoint and per worker thread ([`pool`]), so each endpoint keeps
//! its own connections and connect timeout, and a request never leaves the thread that
//! accepted it. [`UpstreamEndpoint::send`] resolves when the response head arrives and turns
//! transport failures into [`GatewayError`]s that say whether another endpoint may be tried.
//!
//! Requests are written by [`h1`], the gateway's own HTTP/1.1 client connection, driven by
//! the request's task: the request line and the fixed headers (`Host`, `Content-Type`,
//! `User-Agent`, `Authorization`) are written out once at startup; each request adds its id,
//! its length and the body. (A general-purpose client re-parses the URL, runs redirect and
//! proxy policies and boxes several layers per request; on this path that cost more CPU than
//! the gateway's own work.)

pub(crate) mod h1;
mod health;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Uri};
use bytes::Bytes;
use http_body_util::BodyExt;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

pub use h1::ResponseError;
pub use health::HttpHealthCheck;
use pool::{ConnectError, ConnectionPool};
pub use pool::{PoolStats, PooledBody};

use crate::config::{ResolvedEndpoint, Timeouts};
use crate::egress::{Egress, EgressRoute};
use crate::error::{GatewayError, TimeoutPhase};
use crate::metrics::{GatewayMetrics, PoolGauges};

/// How much of an upstream error body is kept: enough to pass a provider's error through,
/// bounded so a misbehaving upstream cannot make the gateway buffer without limit.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// How many reused connections a request may find closed (by the upstream, while they were
/// idle) before the endpoint counts as unreachable.
const MAX_UNSENT_RETRIES: usize = 4;

const USER_AGENT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// Why an exchange produced no response head.
enum Unanswered {
    /// Not a byte of the request went out.
    Unsent(h1::WriteError),
    /// The request (or part of it) went out; what went wrong.
    Failed(String),
}

/// An upstream answer whose head has arrived; the body streams.
pub type UpstreamResponse = http::Response<PooledBody>;

/// Why an endpoint's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("endpoint URL {url} is not a valid HTTP URI: {reason}")]
    Uri { url: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct UpstreamEndpoint {
    /// The endpoint's configured name: the `endpoint` label of metrics and the name in
    /// errors. Clients are never told its URL or address.
    pub label: String,
    config: ResolvedEndpoint,
    /// The request line and the headers every request carries, up to the per-request ones.
    /// Holds the API key: never logged.
    head_prefix: Bytes,
    pool: Arc<ConnectionPool>,
    /// `sluice_upstream_pool_wait_seconds` of this endpoint.
    pool_wait: Histogram,
}

/// An upstream answer whose head arrived, and how long the request waited for the
/// connection it went on (the gateway's own queueing, not the upstream's time).
pub struct Sent {
    pub response: UpstreamResponse,
    pub pool_wait: Duration,
}

impl UpstreamEndpoint {
    /// `metrics` gets the pool's connection counts under the endpoint's label.
    pub fn new(
        config: ResolvedEndpoint,
        metrics: &GatewayMetrics,
    ) -> Result<Self, ClientBuildError> {
        Self::build(config, metrics, None)
    }

    /// With `tls`, HTTPS connections trust what it says instead of the webpki roots (tests
    /// use it for their own CA).
    fn build(
        config: ResolvedEndpoint,
        metrics: &GatewayMetrics,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClientBuildError> {
        let chat_uri: Uri =
            config
                .chat_url
                .as_str()
                .parse()
                .map_err(|e: http::uri::InvalidUri| ClientBuildError::Uri {
                    url: config.chat_url.to_string(),
                    reason: e.to_string(),
                })?;
        let label = config.label.clone();
        let (egress, route) = Egress::for_endpoint(&chat_uri, config.timeouts.connect);
        match route {
            EgressRoute::Direct => {}
            EgressRoute::Tunnel { proxy } => {
                tracing::info!(endpoint = %label, %proxy, "upstream connections go through the proxy named by the environment");
            }
            EgressRoute::ProxyIgnored { proxy } => {
                tracing::warn!(endpoint = %label, %proxy, "a proxy is configured for this plain-HTTP endpoint, but sluice connects to http:// endpoints directly (add it to NO_PROXY to silence this)");
            }
        }
        let tls = match tls {
            Some(tls) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls),
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?,
        }
        .https_or_http()
        .enable_http1()
        .wrap_connector(egress);
        let host = host_header(&chat_uri).ok_or_else(|| ClientBuildError::Uri {
            url: config.chat_url.to_string(),
            reason: "no host".into(),
        })?;
        let chat_path = chat_uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientBuildError::Uri {
                url: config.chat_url.to_string(),
                reason: e.to_string(),
            })?;
        let target = origin(&chat_uri).ok_or_else(|| ClientBuildError::Uri {
            url: config.chat_url.to_string(),
            reason: "no scheme or host".into(),
        })?;
        let pool = ConnectionPool::new(
            tls,
            target,
            config.connections,
            metrics.connections_opened(&label),
        );
        let watched: Arc<dyn PoolGauges> = pool.clone();
        metrics.watch_pool(&label, Arc::downgrade(&watched));
        let authorization = config
            .api_key
            .as_ref()
            .and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok());
        let head_prefix = request_head_prefix(&chat_path, &host, authorization.as_ref());
        let pool_wait = metrics.pool_wait(&label);
        Ok(UpstreamEndpoint {
            label,
            config,
            head_prefix,
            pool,
            pool_wait,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.config.timeouts
    }

    pub fn upstream_model(&self) -> Option<&str> {
        self.config.upstream_model.as_deref()
    }

    pub fn base_url(&self) -> &url::Url {
        &self.config.base_url
    }

    /// Posts a chat completion body; resolves with the response head, or with the error that
    /// stopped it. The first-byte timeout runs from the call: expiring while the request
    /// still waits for a connection, it is a `pool_wait` timeout (nothing was sent, another
    /// endpoint may be tried); after the request went out, a `first_byte` one.
    /// `trace_lines` are the trace context's header lines (`traceparent: …\r\n`), made by the
    /// gateway, or empty.
    pub async fn send(
        &self,
        body: Bytes,
        request_id: &str,
        trace_lines: &[u8],
    ) -> Result<Sent, GatewayError> {
        let deadline = Instant::now() + self.config.timeouts.first_byte;
        let head_rest = request_head_rest(request_id, trace_lines, body.len());
        let mut unsent = 0;
        let mut pool_wait = Duration::ZERO;
        loop {
            let lease = match tokio::time::timeout_at(deadline, self.pool.checkout()).await {
                Err(_) => return Err(self.timeout(TimeoutPhase::PoolWait)),
                Ok(lease) => lease.map_err(|e| self.connect_error(e))?,
            };
            self.pool_wait.observe(lease.waited.as_secs_f64());
            pool_wait += lease.waited;
            let exchange = Self::exchange(lease.connection, [&self.head_prefix, &head_rest, &body]);
            let (connection, head) = match tokio::time::timeout_at(deadline, exchange).await {
                Err(_) => return Err(self.timeout(TimeoutPhase::FirstByte)),
                Ok(Ok(answered)) => answered,
                Ok(Err(Unanswered::Unsent(e))) => {
                    // A reused connection the upstream closed while it was idle: the request
                    // never left, so it may go on another.
                    unsent += 1;
                    if !lease.reused || unsent > MAX_UNSENT_RETRIES {
                        return Err(GatewayError::UpstreamUnreachable {
                            endpoint: self.label.clone(),
                            reason: format!(
                                "the connection closed before the request was sent: {e}"
                            ),
                        });
                    }
                    continue;
                }
                Ok(Err(Unanswered::Failed(reason))) => {
                    return Err(GatewayError::UpstreamProtocol {
                        endpoint: self.label.clone(),
                        reason,
                    })
                }
            };
            if let Some(coding) = head.content_coding {
                // Asked for `identity`; bytes under another coding would reach the client
                // unlabelled. The connection closes with the unread body.
                return Err(GatewayError::UpstreamProtocol {
                    endpoint: self.label.clone(),
                    reason: format!(
                        "the answer is encoded with `{coding}` although the gateway asked for identity; sluice does not decode content codings"
                    ),
                });
            }
            let body =
                PooledBody::new(connection, head.framing, head.keep_alive, self.pool.clone());
            let mut response = http::Response::new(body);
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers;
            return Ok(Sent {
                response,
                pool_wait,
            });
        }
    }

    /// Writes a request on `connection` and reads the answer's head.
    async fn exchange(
        mut connection: pool::Connection,
        request: [&[u8]; 3],
    ) -> Result<(pool::Connection, h1::ResponseHead), Unanswered> {
        if let Err(e) = connection.write_request(request).await {
            return Err(if e.sent_any {
                // The request may have reached the upstream: not safe to send elsewhere.
                Unanswered::Failed(format!("writing the request failed: {e}"))
            } else {
                Unanswered::Unsent(e)
            });
        }
        match connection.read_head().await {
            Ok(head) => Ok((connection, head)),
            Err(e) => Err(Unanswered::Failed(e.to_string())),
        }
    }

    fn timeout(&self, phase: TimeoutPhase) -> GatewayError {
        GatewayError::UpstreamTimeout {
            endpoint: self.label.clone(),
            phase,
            limit: match phase {
                TimeoutPhase::Connect => self.config.timeouts.connect,
                TimeoutPhase::PoolWait | TimeoutPhase::FirstByte => self.config.timeouts.first_byte,
                TimeoutPhase::Total => self.config.timeouts.total,
            },
        }
    }

    /// Turns a non-2xx answer into the error the client should see: a 4xx passes through
    /// unchanged (the request was at fault), anything else becomes a 502 that quotes it.
    pub async fn rejection(&self, resp: UpstreamResponse) -> GatewayError {
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = read_bounded(resp.into_body(), MAX_ERROR_BODY).await;
        if status.is_client_error() {
            GatewayError::UpstreamRejected {
                endpoint: self.label.clone(),
                status,
                answer: Box::new(crate::error::RejectedAnswer {
                    body,
                    content_type,
                    retry_after,
                }),
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

    /// No connection could be had: the request was not sent, so another endpoint may try.
    fn connect_error(&self, e: ConnectError) -> GatewayError {
        if caused_by_timeout(e.0.as_ref()) {
            return self.timeout(TimeoutPhase::Connect);
        }
        // The connector's message names the address; it goes to the log, not the client.
        tracing::warn!(endpoint = %self.label, error = %error_chain(e.0.as_ref()), "upstream connect failed");
        GatewayError::UpstreamUnreachable {
            endpoint: self.label.clone(),
            reason: "the connection was refused or failed (the gateway's log has the details)"
                .into(),
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// A response body that failed after the head arrived.
    pub fn body_error(&self, e: &ResponseError) -> GatewayError {
        GatewayError::UpstreamProtocol {
            endpoint: self.label.clone(),
            reason: error_chain(e),
        }
    }
}

/// Whether an I/O timeout is somewhere in `e`'s chain (the connector reports its connect
/// timeout that way).
fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Reads at most `limit` bytes of a body; a body that fails midway yields what arrived. An
/// error answer read to its end was a clean exchange: its connection goes back.
async fn read_bounded(mut body: PooledBody, limit: usize) -> Bytes {
    let mut out = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    body.release();
    Bytes::from(out)
}

/// Why a whole body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WholeBodyError {
    #[error("the answer is larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error(transparent)]
    Response(#[from] ResponseError),
}

/// Reads all of `body`, refusing more than `limit` bytes (announced or received). The
/// connection stays with the body until the caller accepts the answer and releases it.
pub async fn read_whole(body: &mut PooledBody, limit: u64) -> Result<Bytes, WholeBodyError> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(WholeBodyError::TooLarge(limit));
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if (so_far + data.len()) as u64 > limit {
            return Err(WholeBodyError::TooLarge(limit));
        }
        // One piece (the usual answer, read in one go) is kept without a copy.
        match &first {
            None => first = Some(data),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(match (first, rest.is_empty()) {
        (Some(only), true) => only,
        (None, _) => Bytes::new(),
        (Some(_), false) => Bytes::from(rest),
    })
}

/// `e` and its sources, joined: a top-level message alone rarely says what went wrong.
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

/// `POST <path> HTTP/1.1` and the headers that are the same for every request.
fn request_head_prefix(
    path: &Uri,
    host: &HeaderValue,
    authorization: Option<&HeaderValue>,
) -> Bytes {
    let mut head = Vec::with_capacity(256);
    let path = path.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(
        b"\r\ncontent-type: application/json\r\naccept-encoding: identity\r\nuser-agent: ",
    );
    head.extend_from_slice(USER_AGENT.as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(auth) = authorization {
        head.extend_from_slice(b"authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    Bytes::from(head)
}

/// The per-request end of the head: the request id (when it is a valid header value; client
/// ids are checked on the way in, generated ones always are), the trace context and the body
/// length.
fn request_head_rest(request_id: &str, trace_lines: &[u8], body_len: usize) -> Vec<u8> {
    let mut rest = Vec::with_capacity(96 + trace_lines.len());
    if !request_id.is_empty() && request_id.bytes().all(|b| b.is_ascii_graphic()) {
        rest.extend_from_slice(b"x-request-id: ");
        rest.extend_from_slice(request_id.as_bytes());
        rest.extend_from_slice(b"\r\n");
    }
    rest.extend_from_slice(trace_lines);
    rest.extend_from_slice(b"content-length: ");
    rest.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    rest.extend_from_slice(b"\r\n\r\n");
    rest
}

/// `Host` for requests to `uri`: the port only when it is not the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// `scheme://authority` of `uri`: what the connector is asked to connect to.
fn origin(uri: &Uri) -> Option<Uri> {
    Uri::builder()
        .scheme(uri.scheme()?.clone())
        .authority(uri.authority()?.clone())
        .path_and_query("/")
        .build()
        .ok()
}

#[cfg(test)]
mod tests;
