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
use sluice_api::{ChatCompletionRequest, ProxyFields, RequestError};
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
/// path with 405 rather than 404. The gateway's connections answer POSTs on this path
/// without routing (`downstream`); this serves one that reaches the router anyway.
pub async fn chat_route(
    State(gw): State<Arc<GatewayState>>,
    Extension(request_id): Extension<RequestId>,
    body: Body,
) -> Response {
    let body = match collect_body(body).await {
        Ok(b) => b,
        Err(e) => return reject(&gw, UNKNOWN_MODEL, e),
    };
    chat_completions(gw, request_id, body).await.into_response()
}

/// Counts a chat request refused before it was read (too large, badly framed).
pub fn count_refused(gw: &GatewayState, status: StatusCode) {
    gw.metrics.count_request(UNKNOWN_MODEL, status.as_u16());
}

/// What a chat request is answered with.
pub enum ChatAnswer {
    /// A whole completion, sent as the upstream sent it with its content type: the common
    /// answer, which the client connection writes out without building a [`Response`] (its
    /// header map was a few percent of the gateway's instructions per request).
    Completion {
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    /// Anything else: errors and streams.
    Response(Response),
}

impl ChatAnswer {
    /// The content type a completion is sent with when the upstream named none.
    pub const DEFAULT_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/json");
}

impl From<Response> for ChatAnswer {
    fn from(response: Response) -> Self {
        ChatAnswer::Response(response)
    }
}

impl IntoResponse for ChatAnswer {
    fn into_response(self) -> Response {
        match self {
            ChatAnswer::Completion { content_type, body } => {
                let mut response = Response::new(Body::from(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    content_type.unwrap_or(ChatAnswer::DEFAULT_CONTENT_TYPE),
                );
                response
            }
            ChatAnswer::Response(response) => response,
        }
    }
}

/// Answers one chat request, whose whole body is `body`.
pub async fn chat_completions(
    gw: Arc<GatewayState>,
    request_id: RequestId,
    body: Bytes,
) -> ChatAnswer {
    let received = Instant::now();

    // Phase: parse.
    let request = match read_request(body) {
        Ok(r) => r,
        Err(e) => return reject(&gw, UNKNOWN_MODEL, invalid(e)).into(),
    };

    // Phase: resolve the model.
    let Some(route) = gw.models.get(&request.fields.model) else {
        let e = GatewayError::ModelNotFound {
            model: request.fields.model,
            available: gw.model_names.clone(),
        };
        return reject(&gw, UNKNOWN_MODEL, e).into();
    };
    let mut flight = InFlight::start(route.metrics.clone(), request_id.clone(), received);

    // Phase: upstream call.
    let prepared = match PreparedRequest::new(request, route) {
        Ok(p) => p,
        Err(e) => {
            let e = invalid(e);
            flight.finish(e.status().as_u16());
            return e.into_response().into();
        }
    };
    let (endpoint, response) = match call_upstream(route, &prepared, &request_id, &mut flight).await
    {
        Ok(ok) => ok,
        Err(e) => {
            flight.finish(e.status().as_u16());
            return e.into_response().into();
        }
    };

    // Phase: respond (and account, when the answer ends).
    if prepared.stream {
        relay::stream_response(endpoint, response, flight, prepared.client_wants_usage).into()
    } else {
        unary_response(endpoint, response, flight).await
    }
}

fn reject(gw: &GatewayState, model_label: &str, e: GatewayError) -> Response {
    gw.metrics.count_request(model_label, e.status().as_u16());
    e.into_response()
}

/// A client's request body, checked, with the fields the gateway acts on.
struct ClientRequest {
    fields: ProxyFields,
    raw: Bytes,
    /// The whole request, when the quick read left the body to the full parse. Boxed: this
    /// struct is moved along the request path, and the parsed request is the rare case.
    parsed: Option<Box<ChatCompletionRequest>>,
}

impl ClientRequest {
    /// The whole request, for the rare paths that rewrite it.
    fn into_parsed(self) -> Result<(Box<ChatCompletionRequest>, Bytes), RequestError> {
        let request = match self.parsed {
            Some(r) => r,
            None => Box::new(ChatCompletionRequest::from_slice(&self.raw)?),
        };
        Ok((request, self.raw))
    }
}

fn invalid(e: RequestError) -> GatewayError {
    GatewayError::invalid_request(e.message, e.param)
}

async fn collect_body(body: Body) -> Result<Bytes, GatewayError> {
    http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
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
        })
}

/// Checks the body. Most bodies need only [`ProxyFields::read`]; any other goes through
/// the full parse, which words the error of an invalid one.
fn read_request(raw: Bytes) -> Result<ClientRequest, RequestError> {
    if let Some(fields) = ProxyFields::read(&raw) {
        return Ok(ClientRequest {
            fields,
            raw,
            parsed: None,
        });
    }
    let request = ChatCompletionRequest::from_slice(&raw)?;
    let fields = ProxyFields::of(&request);
    Ok(ClientRequest {
        fields,
        raw,
        parsed: Some(Box::new(request)),
    })
}

/// The request as it goes upstream. Streams always ask the upstream for usage, so the gateway
/// can count tokens; the usage chunk is dropped again if the client did not ask for it.
struct PreparedRequest {
    model: String,
    stream: bool,
    client_wants_usage: bool,
    /// The body for endpoints that keep the client's model name (the common case): the
    /// client's own bytes when nothing needs changing, else serialised once for all attempts.
    default_body: Bytes,
    /// The whole request, kept only when the route has an endpoint that renames the model.
    for_renaming: Option<Box<ChatCompletionRequest>>,
}

impl PreparedRequest {
    /// Fails only if a body the quick read accepted is refused by the full parse, which the
    /// two parsers' tests rule out.
    fn new(mut client: ClientRequest, route: &ModelRoute) -> Result<Self, RequestError> {
        let model = std::mem::take(&mut client.fields.model);
        let stream = client.fields.stream;
        let client_wants_usage = client.fields.include_usage;
        let adds_usage = stream && !client_wants_usage;
        let renames = route
            .endpoints
            .iter()
            .any(|e| e.upstream_model().is_some_and(|m| m != model));
        if !renames {
            // The client's bytes, or them with usage asked for when that is an insertion.
            let unchanged = if adds_usage {
                client
                    .fields
                    .with_stream_usage(&client.raw)
                    .map(Bytes::from)
            } else {
                Some(client.raw.clone())
            };
            if let Some(default_body) = unchanged {
                return Ok(PreparedRequest {
                    model,
                    stream,
                    client_wants_usage,
                    default_body,
                    for_renaming: None,
                });
            }
        }
        let (mut request, raw) = client.into_parsed()?;
        let default_body = if adds_usage {
            request
                .stream_options
                .get_or_insert_with(Default::default)
                .include_usage = Some(true);
            Bytes::from(request.to_json_vec())
        } else {
            raw
        };
        Ok(PreparedRequest {
            model,
            stream,
            client_wants_usage,
            default_body,
            for_renaming: renames.then_some(request),
        })
    }

    fn body_for(&self, endpoint: &UpstreamEndpoint) -> Bytes {
        match (endpoint.upstream_model(), &self.for_renaming) {
            (Some(m), Some(request)) if m != self.model => {
                let mut r = ChatCompletionRequest::clone(request);
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
) -> ChatAnswer {
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
        Ok(Err(e)) => return fail(flight, &endpoint, endpoint.body_error(&e)).into(),
        Err(_) => {
            let e = GatewayError::UpstreamTimeout {
                endpoint: endpoint.label.clone(),
                phase: crate::error::TimeoutPhase::Total,
                limit: endpoint.timeouts().total,
            };
            return fail(flight, &endpoint, e).into();
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
            return fail(flight, &endpoint, e).into();
        }
    }
    flight.finish(StatusCode::OK.as_u16());
    ChatAnswer::Completion { content_type, body }
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
            let body = bytes::Bytes::new();
            let id = crate::request_id::RequestId::generate();
            std::mem::size_of_val(&super::chat_completions(gw, id, body))
        });
        eprintln!("chat_completions future: {size} bytes");
        assert!(size <= 4096, "{size} bytes");
    }
}
