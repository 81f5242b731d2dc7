//! The complete description of a load test, as the command line (or a caller) gives it.
//! It is printed in full into the JSON report, header values for credentials redacted.

use std::time::Duration;

use serde::Serialize;

use crate::arrival::Arrival;
use crate::run::{Bound, Warmup};
use crate::slo::Slo;
use crate::workload::{RepeatedPrompts, WorkloadSpec};

/// How load is applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Open loop at `rate` requests per second.
    Rate { rate: f64, arrival: Arrival },
    /// Closed loop with `concurrency` requests in flight.
    Concurrency { concurrency: usize },
    /// Synchronous run, saturation run at `saturation_concurrency`, then `steps` open-loop
    /// rates evenly spaced strictly between the two measured throughputs.
    Sweep {
        steps: usize,
        saturation_concurrency: usize,
        arrival: Arrival,
    },
    /// Open loop at the dataset's timestamps.
    Trace,
}

/// Open loop: which idle connection takes the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionReuse {
    /// The one idle longest: every open connection takes its turn, as when many
    /// independent clients share the load (what wrk2's and k6's fixed connections do). The
    /// target sees its load spread over all the connections the run opened.
    Spread,
    /// The one idle shortest, as one client's HTTP pool does (hyper's, Go's, urllib3's): at
    /// low concurrency one or two connections carry almost every request, and so does
    /// whichever worker of the target holds them.
    Recent,
}

/// The default `--grace`: long enough for a normal answer sent just before the window
/// closed, short enough that a stalled one cannot hold the run.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadConfig {
    pub urls: Vec<String>,
    pub url_weights: Option<Vec<u32>>,
    pub model: String,
    pub mode: Mode,
    pub bound: Bound,
    pub warmup: Warmup,
    pub stream: bool,
    pub workload: WorkloadSpec,
    /// `--repeat-share`: a share of requests repeats popular ones (synthetic and
    /// shared-prefix workloads).
    pub repeats: Option<RepeatedPrompts>,
    #[serde(serialize_with = "serialize_headers")]
    pub headers: Vec<(String, String)>,
    pub seed: u64,
    #[serde(
        rename = "timeout_s",
        serialize_with = "crate::report::serialize_duration"
    )]
    pub timeout: Duration,
    /// PEM certificates trusted for `https://` targets besides the web's roots (a private
    /// or corporate CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// The target model's `tokenizer.json`: prompts are sized in its tokens and answers
    /// without `usage` are counted with it (see `tokenizer`).
    pub tokenizer: Option<std::path::PathBuf>,
    /// How long requests still open when the measured window closes may take to finish;
    /// then they are cut (`unfinished`) and the run ends.
    #[serde(
        rename = "grace_s",
        serialize_with = "crate::report::serialize_duration"
    )]
    pub grace: Duration,
    pub max_connections: usize,
    /// Open loop: threads doing the network I/O, each a single-threaded runtime.
    pub io_threads: usize,
    pub connection_reuse: ConnectionReuse,
    pub slos: Vec<Slo>,
    pub max_error_rate: f64,
    pub min_samples: u64,
    /// Live progress line on stderr.
    #[serde(skip)]
    pub progress: bool,
    /// Keep every token chunk's arrival in the request records (for `--ndjson` and
    /// `--csv`, so that ITL can be recomputed offline).
    #[serde(skip)]
    pub keep_token_times: bool,
}

impl LoadConfig {
    /// Defaults for everything but the targets and the model: synthetic 128→128 tokens,
    /// streaming, closed loop at concurrency 1 for 30 s.
    pub fn new(urls: Vec<String>, model: impl Into<String>) -> LoadConfig {
        LoadConfig {
            urls,
            url_weights: None,
            model: model.into(),
            mode: Mode::Concurrency { concurrency: 1 },
            bound: Bound {
                duration: Some(Duration::from_secs(30)),
                requests: None,
            },
            warmup: Warmup::None,
            stream: true,
            workload: WorkloadSpec::Synthetic {
                input_tokens: crate::dist::LengthDist::Fixed(128),
                output_tokens: crate::dist::LengthDist::Fixed(128),
            },
            repeats: None,
            headers: Vec::new(),
            seed: 0,
            timeout: Duration::from_secs(60),
            ca_file: None,
            tokenizer: None,
            grace: DEFAULT_GRACE,
            max_connections: 10_000,
            io_threads: 1,
            connection_reuse: ConnectionReuse::Recent,
            slos: Vec::new(),
            max_error_rate: 0.05,
            min_samples: 20,
            progress: false,
            keep_token_times: false,
        }
    }
}

/// Header names whose values are secrets.
fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.contains("api-key")
        || n.contains("api_key")
        || n.contains("token")
        || n.contains("secret")
}

fn serialize_headers<S: serde::Serializer>(
    headers: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(headers.len()))?;
    for (k, v) in headers {
        if is_secret(k) {
            map.serialize_entry(k, "<redacted>")?;
        } else {
            map.serialize_entry(k, v)?;
        }
    }
    map.end()
}

/// Parses `--header 'Name: value'`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("--header `{text}` must be `Name: value`"))?;
    let name = name.trim();
    let value = value.trim();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
        return Err(format!(
            "--header `{text}`: `{name}` is not a valid header name"
        ));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "--header `{name}`: the value has characters not allowed in a header"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_secrets_are_redacted() {
        assert_eq!(
            parse_header("Authorization: Bearer sk-123").unwrap(),
            ("Authorization".into(), "Bearer sk-123".into())
        );
        assert!(parse_header("no colon")
            .unwrap_err()
            .contains("Name: value"));
        assert!(parse_header("bad name: x")
            .unwrap_err()
            .contains("not a valid header name"));
        let mut c = LoadConfig::new(vec!["http://x/v1".into()], "m");
        c.headers = vec![
            ("Authorization".into(), "Bearer sk-123".into()),
            ("x-api-key".into(), "k".into()),
            ("x-job-type".into(), "batch".into()),
        ];
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["headers"]["Authorization"], "<redacted>");
        assert_eq!(v["headers"]["x-api-key"], "<redacted>");
        assert_eq!(v["headers"]["x-job-type"], "batch");
        assert!(!v.to_string().contains("sk-123"));
    }
}
