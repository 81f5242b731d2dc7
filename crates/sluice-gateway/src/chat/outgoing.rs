//! The request as it goes upstream. Streams always ask the upstream for usage, so the gateway
//! can count tokens; the usage chunk is dropped again if the client did not ask for it. The
//! gateway's own options (a top-level `sluice` object, e.g. the cache mode) never leave it.

use bytes::Bytes;
use sluice_api::{ChatCompletionRequest, RequestError};

use super::ctx::RequestBody;
use crate::upstream::UpstreamEndpoint;

/// The top-level field of the gateway's own options: read by the gateway, never forwarded.
pub const GATEWAY_OPTIONS: &str = "sluice";

/// Whether `body` may carry the gateway's own field: a byte search, before any parse. The
/// searcher is built once: building one per call cost some 600 instructions a request
/// (docs/benchmarks-log.md).
pub fn may_carry_gateway_options(body: &[u8]) -> bool {
    static FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"sluice\""));
    FIELD.find(body).is_some()
}

pub struct OutgoingRequest {
    model: String,
    /// The body for endpoints that keep the client's model name (the common case): the
    /// client's own bytes when nothing needs changing, else serialised once for all attempts.
    default_body: Bytes,
    /// The whole request, kept only when the route has an endpoint that renames the model.
    for_renaming: Option<Box<ChatCompletionRequest>>,
}

impl OutgoingRequest {
    /// Fails only if a body the quick read accepted is refused by the full parse, which the
    /// two parsers' tests rule out.
    pub fn new<'a>(
        body: &mut RequestBody,
        mut endpoints: impl Iterator<Item = &'a std::sync::Arc<UpstreamEndpoint>>,
    ) -> Result<Self, RequestError> {
        let model = body.fields.model.clone();
        let adds_usage = body.fields.stream && !body.fields.include_usage;
        let renames = endpoints.any(|e| e.upstream_model().is_some_and(|m| m != model));
        // A byte search first: the full parse only for a body that may carry the field.
        let strips = may_carry_gateway_options(&body.raw)
            && body.parsed()?.extra.contains_key(GATEWAY_OPTIONS);
        if !renames && !strips {
            // The client's bytes, or them with usage asked for when that is an insertion.
            let unchanged = if adds_usage {
                body.fields.with_stream_usage(&body.raw).map(Bytes::from)
            } else {
                Some(body.raw.clone())
            };
            if let Some(default_body) = unchanged {
                return Ok(OutgoingRequest {
                    model,
                    default_body,
                    for_renaming: None,
                });
            }
        }
        // The rare path: the body is rewritten, from a copy (the context keeps the client's).
        let mut request = Box::new(body.parsed()?.clone());
        request.extra.remove(GATEWAY_OPTIONS);
        let raw = body.raw.clone();
        let default_body = if adds_usage {
            request
                .stream_options
                .get_or_insert_with(Default::default)
                .include_usage = Some(true);
            Bytes::from(request.to_json_vec())
        } else if strips {
            Bytes::from(request.to_json_vec())
        } else {
            raw
        };
        Ok(OutgoingRequest {
            model,
            default_body,
            for_renaming: renames.then_some(request),
        })
    }

    pub fn body_for(&self, endpoint: &UpstreamEndpoint) -> Bytes {
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
