//! What a proxy is built from: where it forwards, where it keeps recordings, how it decides
//! between disk and upstream, what the request key ignores, how fast it replays streams,
//! and which certificates it uses for TLS interception and upstream calls.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::route::Route;

/// How the proxy chooses between the recordings on disk and the live upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Serve only from disk; a request with no recording gets a 502 `replay_miss` error.
    /// The default, because a CI run should never reach a paid API by accident.
    #[default]
    Replay,
    /// Serve from disk when a recording exists, otherwise call upstream and record.
    ReplayOrRecord,
    /// Always call upstream and overwrite the recording.
    Record,
    /// Serve recordings made before this proxy started from disk, without calling
    /// upstream; call upstream and record for everything else. It never compares an old
    /// recording with the provider, so it cannot see drift: that is [`Mode::Diff`].
    ReadOldWriteNew,
    /// Never read or write recordings.
    Passthrough,
    /// Call upstream and serve the live answer, compare it with the recording the request
    /// would replay, and report the drift; never write recordings.
    Diff,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Replay,
        Mode::ReplayOrRecord,
        Mode::Record,
        Mode::ReadOldWriteNew,
        Mode::Passthrough,
        Mode::Diff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replay => "replay",
            Mode::ReplayOrRecord => "replay-or-record",
            Mode::Record => "record",
            Mode::ReadOldWriteNew => "read-old-write-new",
            Mode::Passthrough => "passthrough",
            Mode::Diff => "diff",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of [`Mode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy mode {0:?}; expected one of: replay, replay-or-record, record, read-old-write-new, passthrough, diff")]
pub struct UnknownMode(pub String);

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// What the request key is computed over, beyond method, path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions {
    /// JSON body fields left out of the key: dotted paths (`metadata.user_id`), where a
    /// segment may end in `[*]` to mean every element of an array (`messages[*].name`).
    pub ignore_paths: Vec<String>,
    /// Request headers that count in the key (names, case-insensitive). Secret-looking
    /// headers never count even when listed.
    pub header_allow_list: Vec<String>,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            ignore_paths: Vec::new(),
            header_allow_list: vec!["content-type".to_owned()],
        }
    }
}

/// Response fields a drift comparison ignores by default: per-call ids and timestamps, and
/// the prompt-cache counts. A bare name matches that field at any depth (`id` also covers
/// `tool_calls[0].id`); a dotted path starts at the body's (or each event's) root.
pub const DEFAULT_DIFF_IGNORE: [&str; 10] = [
    "id",
    "created",
    "created_at",
    "system_fingerprint",
    "request_id",
    "x_request_id",
    "x-request-id",
    "timestamp",
    // Depends on whether the provider's prompt cache happened to hold the prefix.
    "usage.prompt_tokens_details.cached_tokens",
    "usage.input_tokens_details.cached_tokens",
];

/// How fast recorded event streams are played back.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ReplayTiming {
    /// Every event at once.
    #[default]
    Instant,
    /// Each event at its recorded offset from the response head, multiplied by `scale`
    /// (0.5 plays twice as fast).
    Recorded { scale: f64 },
}

/// Everything a [`crate::ProxyServer`] is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Reverse routes for origin-form requests (`POST /v1/...`); the longest matching
    /// prefix wins. Empty for a pure forward proxy. Absolute-form and CONNECT requests
    /// ignore them.
    pub routes: Vec<Route>,
    /// The directory recordings are read from and written to (created when missing).
    pub dir: PathBuf,
    pub mode: Mode,
    pub key: KeyOptions,
    pub replay_timing: ReplayTiming,
    /// Values that must never be written to disk, in addition to the request's own
    /// credentials and well-known API key patterns.
    pub secret_values: Vec<String>,
    /// Where the CA for CONNECT interception lives; `None` means
    /// [`crate::ca::default_ca_dir`]. Loaded at start when present, generated at the
    /// first CONNECT otherwise.
    pub ca_dir: Option<PathBuf>,
    /// A PEM file of extra root certificates trusted for upstream calls, besides the
    /// built-in web roots (a corporate CA, or a test server's).
    pub upstream_ca: Option<PathBuf>,
    /// Response fields a drift comparison ignores (`diff` mode, and overwrites in `record`
    /// and `read-old-write-new`): a bare name matches the field at any depth; a dotted path
    /// (`choices[*].logprobs`, `usage.total_tokens`) matches from the body's root (or each
    /// event's payload). Starts as [`DEFAULT_DIFF_IGNORE`].
    pub diff_ignore: Vec<String>,
    /// Non-2xx statuses that are recorded too (e.g. `429`, `400`, to replay a provider's
    /// errors to the client under test). 2xx answers always are; every other status is
    /// relayed but not stored.
    pub record_statuses: Vec<u16>,
    /// A request arriving after at least this long without any restarts the repeat
    /// counters, as if the proxy were new: a long-lived proxy serving the suite again
    /// answers its identical requests from index 0 again. `None`: only a restart or
    /// `POST /_sluice/reset` restarts them.
    pub reset_repeats_when_idle: Option<Duration>,
    /// The most of one upstream answer held in memory: a whole body relayed or compared
    /// (larger ones are answered with a 502 `upstream_body_too_large`), or an event stream
    /// being recorded (a larger one is still relayed in full, but not recorded).
    pub max_response_bytes: usize,
    /// How long an upstream may stay silent, waiting for its answer's head or between two
    /// reads of its body, before the call fails (a 502, or a cut stream).
    pub upstream_read_timeout: Duration,
}

/// [`ProxyConfig::max_response_bytes`] unless set: far above any LLM answer, well below
/// what would hurt the machine.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// [`ProxyConfig::upstream_read_timeout`] unless set: a reasoning model answering without
/// streaming can think for minutes before its first byte (OpenAI's SDKs wait 10 minutes).
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(600);

impl ProxyConfig {
    /// A reverse proxy to one upstream (every path goes to `upstream` + path), with
    /// default key options, instant replay, no extra secrets, the default drift ignore list
    /// ([`DEFAULT_DIFF_IGNORE`]) and the default CA directory.
    pub fn new(upstream: impl Into<String>, dir: impl Into<PathBuf>, mode: Mode) -> Self {
        ProxyConfig {
            routes: vec![Route::catch_all(upstream)],
            ..ProxyConfig::forward_only(dir, mode)
        }
    }

    /// A proxy with no reverse routes: it serves forward-proxy and CONNECT requests only.
    pub fn forward_only(dir: impl Into<PathBuf>, mode: Mode) -> Self {
        ProxyConfig {
            routes: Vec::new(),
            dir: dir.into(),
            mode,
            key: KeyOptions::default(),
            replay_timing: ReplayTiming::default(),
            secret_values: Vec::new(),
            ca_dir: None,
            upstream_ca: None,
            diff_ignore: DEFAULT_DIFF_IGNORE
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            record_statuses: Vec::new(),
            reset_repeats_when_idle: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            upstream_read_timeout: DEFAULT_UPSTREAM_READ_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_names() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert!("fast".parse::<Mode>().is_err());
    }
}
