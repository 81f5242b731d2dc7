//! `POST /v1/chat/completions`: the hot path, as named phases over one request.
//!
//! parse → resolve model → upstream call (round robin, next endpoint on connect failure)
//! → respond (unary, or a stream relayed event by event) → account (metrics, in `InFlight`).

mod in_flight;
mod relay;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use http_body_util::BodyExt;
use sluice_api::chat::UsageSummary;
use sluice_api::ChatCompletionRequest;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::metrics::UNKNOWN_MODEL;
use crate::request_id::RequestId;
use crate::server::GatewayState;
use crate::upstream::{ModelRoute, UpstreamEndpoint, UpstreamResponse};

pub use in_flight::InFlight;

/// Largest request body accepted. Long contexts with inline images reach megabytes; beyond
/// this a request is more likely a mistake than a prompt.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// The route as the axum router knows it, so that the router answers other methods on this
/// path with 405 rather than 404. Served POSTs never come through here: `server::GatewayService`
/// hands them to [`chat_completions`] before routing.
pub async fn chat_route(
    State(gw): State<Arc<GatewayState>>,
    Extension(request_id): Extension<RequestId>,
    body: Body,
) -> Response {
    chat_completions(gw, request_id, body).await
}

pub async fn chat_completions<B>(gw: Arc<GatewayState>, request_id: RequestId, body: B) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let received = Instant::now();

    // Phase: parse.
    let (request, raw) = match read_request(body).await {
        Ok(r) => r,
        Err(e) => return reject(&gw, UNKNOWN_MODEL, e),
    };

    // Phase: resolve the model.
    let Some(route) = gw.models.get(&request.model) else {
        let e = GatewayError::ModelNotFound {
            model: request.model.clone(),
            available: gw.model_names.clone(),
        };
        return reject(&gw, UNKNOWN_MODEL, e);
    };
    let mut flight = InFlight::start(route.metrics.clone(), request_id.clone(), received);

    // Phase: upstream call.
    let prepared = PreparedRequest::new(request, raw);
    let (endpoint, response) = match call_upstream(route, &prepared, &request_id, &mut flight).await
    {
        Ok(ok) => ok,
        Err(e) => {
            flight.finish(e.status().as_u16());
            return e.into_response();
        }
    };

    // Phase: respond (and account, when the answer ends).
    if prepared.stream {
        relay::stream_response(endpoint, response, flight, prepared.client_wants_usage)
    } else {
        unary_response(endpoint, response, flight).await
    }
}

fn reject(gw: &GatewayState, model_label: &str, e: GatewayError) -> Response {
    gw.metrics.count_request(model_label, e.status().as_u16());
    e.into_response()
}

/// The parsed request and the bytes it was parsed from.
async fn read_request<B>(body: B) -> Result<(ChatCompletionRequest, Bytes), GatewayError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::PayloadTooLarge {
                    limit_mib: MAX_REQUEST_BYTES / (1024 * 1024),
                }
            } else {
                GatewayError::invalid_request(format!("could not read the request body: {e}"), None)
            }
        })?;
    let request = ChatCompletionRequest::from_slice(&bytes)
        .map_err(|e| GatewayError::invalid_request(e.message, e.param))?;
    Ok((request, bytes))
}

/// The request as it goes upstream. Streams always ask the upstream for usage, so the gateway
/// can count tokens; the usage chunk is dropped again if the client did not ask for it.
struct PreparedRequest {
    request: ChatCompletionRequest,
    stream: bool,
    client_wants_usage: bool,
    /// The body for endpoints that keep the client's model name (the common case): the
    /// client's own bytes when nothing needs changing, else serialised once for all attempts.
    default_body: Bytes,
}

impl PreparedRequest {
    fn new(mut request: ChatCompletionRequest, raw: Bytes) -> Self {
        let stream = request.is_stream();
        let client_wants_usage = request.wants_stream_usage();
        let default_body = if stream && !client_wants_usage {
            request
                .stream_options
                .get_or_insert_with(Default::default)
                .include_usage = Some(true);
            Bytes::from(request.to_json_vec())
        } else {
            raw
        };
        PreparedRequest {
            request,
            stream,
            client_wants_usage,
            default_body,
        }
    }

    fn body_for(&self, endpoint: &UpstreamEndpoint) -> Bytes {
        match endpoint.upstream_model() {
            Some(m) if m != self.request.model => {
                let mut r = self.request.clone();
                r.model = m.to_owned();
                Bytes::from(r.to_json_vec())
            }
            _ => self.default_body.clone(),
        }
    }
}

/// Sends to the endpoint round robin picks; when an endpoint cannot be reached (the request
/// provably never arrived) moves on to the next. Non-2xx answers become errors here.
async fn call_upstream(
    route: &ModelRoute,
    prepared: &PreparedRequest,
    request_id: &RequestId,
    flight: &mut InFlight,
) -> Result<(Arc<UpstreamEndpoint>, UpstreamResponse), GatewayError> {
    let mut last_error = None;
    for endpoint in route.attempt_order() {
        let body = prepared.body_for(endpoint);
        let result = flight
            .wait_upstream(endpoint.send(body, request_id.as_str()))
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(kind) = e.upstream_kind() {
                    flight.model.upstream_error(&endpoint.label, kind);
                }
                tracing::warn!(request_id = request_id.as_str(), endpoint = %endpoint.label, error = %e, "upstream call failed");
                if e.retry_safe() {
                    last_error = Some(e);
                    continue;
                }
                return Err(e);
            }
        };
        if response.status().is_success() {
            return Ok((endpoint.clone(), response));
        }
        // Boxed: reading an error body is the rare path; inline, its state would grow every
        // request's future, which is moved on the request path.
        let e = flight
            .wait_upstream(Box::pin(endpoint.rejection(response)))
            .await;
        if let Some(kind) = e.upstream_kind() {
            flight.model.upstream_error(&endpoint.label, kind);
        }
        return Err(e);
    }
    Err(
        last_error.unwrap_or_else(|| GatewayError::UpstreamUnreachable {
            endpoint: route.name.clone(),
            reason: "the model has no endpoint".into(),
        }),
    )
}

async fn unary_response(
    endpoint: Arc<UpstreamEndpoint>,
    response: UpstreamResponse,
    mut flight: InFlight,
) -> Response {
    let deadline = flight.received + endpoint.timeouts().total;
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = match flight
        .wait_upstream(tokio::time::timeout_at(
            deadline,
            response.into_body().collect(),
        ))
        .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return fail(flight, &endpoint, endpoint.body_error(&e)),
        Err(_) => {
            let e = GatewayError::UpstreamTimeout {
                endpoint: endpoint.label.clone(),
                phase: crate::error::TimeoutPhase::Total,
                limit: endpoint.timeouts().total,
            };
            return fail(flight, &endpoint, e);
        }
    };
    match UsageSummary::from_body(&body) {
        Ok(summary) => {
            if let Some(usage) = summary.usage {
                flight.model.usage(&usage);
            }
        }
        Err(e) => {
            let e = GatewayError::UpstreamProtocol {
                endpoint: endpoint.label.clone(),
                reason: format!("the response body is not a chat completion: {e}"),
            };
            return fail(flight, &endpoint, e);
        }
    }
    flight.finish(StatusCode::OK.as_u16());
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    resp
}

fn fail(flight: InFlight, endpoint: &UpstreamEndpoint, e: GatewayError) -> Response {
    if let Some(kind) = e.upstream_kind() {
        flight.model.upstream_error(&endpoint.label, kind);
    }
    tracing::warn!(request_id = flight.request_id.as_str(), endpoint = %endpoint.label, error = %e, "upstream response failed");
    flight.finish(e.status().as_u16());
    e.into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// A request's future is moved (copied) several times on the request path, once into its
    /// box; at 6.6 KiB those copies were 7 % of the gateway's instructions per request. Rare
    /// steps (connecting, reading an error body) are boxed to keep it small; this catches a
    /// change that inlines a large one again.
    #[test]
    fn a_request_future_stays_small() {
        let path = std::path::Path::new("size.toml");
        let config = crate::config::Config::from_toml(
            "[models.m]\n[[models.m.endpoints]]\nurl = \"http://127.0.0.1:1/v1\"\n",
            path,
        )
        .unwrap()
        .resolve(path, &|_| None)
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Inside a runtime: the connection pools start their sweep.
        let size = runtime.block_on(async {
            let gw = std::sync::Arc::new(crate::server::GatewayState::new(&config).unwrap());
            let body = http_body_util::Full::new(bytes::Bytes::new());
            let id = crate::request_id::RequestId::generate();
            std::mem::size_of_val(&super::chat_completions(gw, id, body))
        });
        eprintln!("chat_completions future: {size} bytes");
        assert!(size <= 4096, "{size} bytes");
    }
}
