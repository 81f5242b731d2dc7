//! The proxy's TOML config file (`sluice proxy --config proxy.toml`): every option the
//! flags have, plus several reverse routes. Unknown keys are errors; values are checked
//! after parsing and errors name the key (`routes[1].url`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Mode;
use crate::error::ProxyError;
use crate::route::Route;

/// The file as written. Relative paths are relative to the file's directory.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Recordings directory.
    pub dir: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub ignore_paths: Vec<String>,
    /// Extra request headers that count in the key.
    #[serde(default)]
    pub headers: Vec<String>,
    pub replay_timing: Option<ReplayTimingName>,
    pub timing_scale: Option<f64>,
    /// Names of environment variables whose values must never be written.
    #[serde(default)]
    pub secret_envs: Vec<String>,
    pub ca_dir: Option<PathBuf>,
    pub upstream_ca: Option<PathBuf>,
    /// Response fields drift comparisons ignore, in addition to
    /// [`crate::DEFAULT_DIFF_IGNORE`].
    #[serde(default)]
    pub diff_ignore: Vec<String>,
    /// Non-2xx statuses recorded as well.
    #[serde(default)]
    pub record_statuses: Vec<u16>,
    /// A duration (`5s`): see [`crate::ProxyConfig::reset_repeats_when_idle`].
    pub reset_repeats_when_idle: Option<String>,
    /// See [`crate::ProxyConfig::max_response_bytes`].
    pub max_response_bytes: Option<usize>,
    /// A duration (`10m`): see [`crate::ProxyConfig::upstream_read_timeout`].
    pub upstream_read_timeout: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
}

/// One `[[routes]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub prefix: String,
    pub url: String,
    /// Whether `prefix` is removed from the path sent upstream.
    #[serde(default = "strip_by_default")]
    pub strip_prefix: bool,
}

fn strip_by_default() -> bool {
    true
}

impl RouteEntry {
    pub fn route(&self) -> Route {
        Route::new(self.prefix.clone(), self.url.clone(), self.strip_prefix)
    }
}

/// `replay_timing` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayTimingName {
    Instant,
    Recorded,
}

impl ProxyFile {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<ProxyFile, ProxyError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProxyError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        ProxyFile::parse(&text, base).map_err(|e| match e {
            ProxyError::ConfigParse { message, .. } => ProxyError::ConfigParse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ProxyFile, ProxyError> {
        let mut file: ProxyFile = toml::from_str(text).map_err(|e| ProxyError::ConfigParse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for p in [&mut file.dir, &mut file.ca_dir, &mut file.upstream_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> Result<(), ProxyError> {
        let invalid = |key: String, message: String| ProxyError::ConfigValue { key, message };
        for (i, entry) in self.routes.iter().enumerate() {
            entry
                .route()
                .check()
                .map_err(|(field, message)| invalid(format!("routes[{i}].{field}"), message))?;
            let prefix = entry.prefix.trim_end_matches('/');
            if let Some(j) = self.routes[..i]
                .iter()
                .position(|r| r.prefix.trim_end_matches('/') == prefix)
            {
                return Err(invalid(
                    format!("routes[{i}].prefix"),
                    format!(
                        "{:?} is already the prefix of routes[{j}]; each prefix may appear once",
                        entry.prefix
                    ),
                ));
            }
        }
        if let Some(scale) = self.timing_scale {
            if !(scale.is_finite() && scale >= 0.0) {
                return Err(invalid(
                    "timing_scale".to_owned(),
                    format!("must be a finite number >= 0, got {scale}"),
                ));
            }
        }
        for (i, name) in self.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    format!("headers[{i}]"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        for (i, name) in self.secret_envs.iter().enumerate() {
            if name.is_empty() || name.contains('=') {
                return Err(invalid(
                    format!("secret_envs[{i}]"),
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        for (i, status) in self.record_statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                return Err(invalid(
                    format!("record_statuses[{i}]"),
                    format!("{status} is not an HTTP status (100-599)"),
                ));
            }
        }
        if self.max_response_bytes == Some(0) {
            return Err(invalid(
                "max_response_bytes".to_owned(),
                "must be at least 1 (the default is 67108864, 64 MiB)".to_owned(),
            ));
        }
        for (key, paths) in [
            ("ignore_paths", &self.ignore_paths),
            ("diff_ignore", &self.diff_ignore),
        ] {
            if let Some(i) = paths.iter().position(|p| p.trim().is_empty()) {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    "must not be empty".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The reverse routes in file order.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.iter().map(RouteEntry::route).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_paths_relative_to_it() {
        let text = r#"
            dir = "rec"
            mode = "replay-or-record"
            listen = "127.0.0.1:9000"
            ignore_paths = ["user"]
            headers = ["openai-organization"]
            replay_timing = "recorded"
            timing_scale = 0.5
            secret_envs = ["OPENAI_API_KEY"]
            ca_dir = "/abs/ca"
            upstream_ca = "corp.pem"
            diff_ignore = ["usage.total_tokens", "choices[*].logprobs"]

            [[routes]]
            prefix = "/openai"
            url = "https://api.openai.com"

            [[routes]]
            prefix = "/local"
            url = "http://127.0.0.1:8000/base"
            strip_prefix = false
        "#;
        let f = ProxyFile::parse(text, Path::new("/etc/sluice")).unwrap();
        assert_eq!(f.dir, Some(PathBuf::from("/etc/sluice/rec")));
        assert_eq!(f.ca_dir, Some(PathBuf::from("/abs/ca")));
        assert_eq!(f.upstream_ca, Some(PathBuf::from("/etc/sluice/corp.pem")));
        assert_eq!(f.mode, Some(Mode::ReplayOrRecord));
        assert_eq!(f.replay_timing, Some(ReplayTimingName::Recorded));
        assert_eq!(f.diff_ignore, ["usage.total_tokens", "choices[*].logprobs"]);
        assert_eq!(
            f.routes(),
            vec![
                Route::new("/openai", "https://api.openai.com", true),
                Route::new("/local", "http://127.0.0.1:8000/base", false),
            ]
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |text: &str| {
            ProxyFile::parse(text, Path::new(""))
                .unwrap_err()
                .to_string()
        };
        assert!(err("mode = \"fast\"").contains("unknown proxy mode"));
        assert!(err("mode = \"fast\"").contains("mode"));
        let dup = "[[routes]]\nprefix = \"/a\"\nurl = \"http://x\"\n[[routes]]\nprefix = \"/a/\"\nurl = \"http://y\"\n";
        assert!(err(dup).contains("`routes[1].prefix`"), "{}", err(dup));
        assert!(err("timing_scale = -1.0").contains("`timing_scale`"));
        assert!(err("headers = [\"bad header\"]").contains("`headers[0]`"));
        assert!(err("diff_ignore = [\"id\", \" \"]").contains("`diff_ignore[1]`"));
        assert!(err("ignore_paths = [\"\"]").contains("`ignore_paths[0]`"));
        assert!(err("record_statuses = [429, 700]").contains("`record_statuses[1]`"));
        assert!(err("max_response_bytes = 0").contains("`max_response_bytes`"));
    }
}
