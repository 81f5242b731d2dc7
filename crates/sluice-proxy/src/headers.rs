//! Header names the proxy treats specially.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::redact::is_secret_header;

/// Response header telling the client where its answer came from.
pub const REPLAY_HEADER: &str = "x-sluice-replay";
/// Response header naming the file a replayed answer was read from or recorded to.
pub const REPLAY_FILE_HEADER: &str = "x-sluice-replay-file";
/// Response header of `diff` mode: `same`, `drifted` or `no-recording`.
pub const DRIFT_HEADER: &str = "x-sluice-drift";
/// Path prefix the proxy answers itself (metrics, entry listing); never forwarded or
/// recorded.
pub const RESERVED_PREFIX: &str = "/_sluice";
/// Request header that forces one live call with no reading or writing (`1`).
pub const BYPASS_HEADER: &str = "x-sluice-replay-bypass";

/// Where an answer came from, sent as [`REPLAY_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Served from a recording.
    Hit,
    /// Strict replay found no recording; the answer is the 502 `replay_miss` error.
    Miss,
    /// Live answer that was (or, for a stream, is being) recorded.
    Recorded,
    /// Live answer that was meant to be recorded but contained a secret.
    Refused,
    /// Live answer not meant to be recorded (passthrough mode, bypass header, non-2xx,
    /// upstream error).
    Passthrough,
}

impl ReplayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Hit => "hit",
            ReplayOutcome::Miss => "miss",
            ReplayOutcome::Recorded => "recorded",
            ReplayOutcome::Refused => "refused",
            ReplayOutcome::Passthrough => "passthrough",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Connection-level headers (RFC 9110 §7.6.1) and framing headers recomputed per hop.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// The headers to send upstream: the client's, minus hop-by-hop ones, `host` (the
/// upstream's own is set from its URL) and the proxy's control header; with
/// `accept-encoding: identity` so that bodies are recorded decoded.
pub fn upstream_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in client {
        let n = name.as_str();
        if is_hop_by_hop(n) || n == "host" || n == BYPASS_HEADER || n == "accept-encoding" {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// The response headers to send to the client: upstream's minus hop-by-hop ones.
pub fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        if !is_hop_by_hop(name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The response headers worth recording: no hop-by-hop, no cookies or other
/// secret-looking headers.
pub fn recordable_response_headers(upstream: &HeaderMap) -> BTreeMap<String, String> {
    let pairs = upstream
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()) && !is_secret_header(name.as_str()))
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        });
    join_repeated(pairs)
}

/// Header pairs as a map, values of a repeated name joined with `, ` (RFC 9110 §5.3; the
/// one header where that is wrong, `set-cookie`, is never recorded).
pub fn join_repeated(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in pairs {
        out.entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// Rebuilds a header map from recorded pairs, skipping any that are no longer valid.
pub fn header_map_from_pairs(pairs: &BTreeMap<String, String>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in pairs {
        if is_hop_by_hop(&name.to_ascii_lowercase()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.append(n, v);
        }
    }
    out
}

pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}
