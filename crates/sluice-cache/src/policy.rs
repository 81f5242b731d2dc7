//! [`CachePolicy`]: whether a request reads the cache, writes it, and how old an entry it
//! accepts. The model's config sets the default; a request may override it with the header
//! `x-sluice-cache` (and `x-sluice-cache-max-age`), or, for SDKs that can only add body
//! fields, with `"sluice": {"cache": {"mode": …, "max_age": …}}` in its body.

use std::time::Duration;

use serde_json::Value;

/// The request header that overrides the mode (and, on answers, says `hit`, `miss` or
/// `bypass`).
pub const MODE_HEADER: &str = "x-sluice-cache";
/// The request header that bounds the age of an entry a read accepts, in seconds.
pub const MAX_AGE_HEADER: &str = "x-sluice-cache-max-age";

/// What a request may do with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Read, and write what missed.
    On,
    /// Neither.
    #[default]
    Off,
    /// Read; never write (a deployment warming up from others' answers).
    ReadOnly,
    /// Write; never read (fill the cache, always ask the upstream).
    WriteOnly,
}

impl CacheMode {
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::ReadOnly)
    }

    pub fn writes(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::WriteOnly)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::On => "on",
            CacheMode::Off => "off",
            CacheMode::ReadOnly => "read_only",
            CacheMode::WriteOnly => "write_only",
        }
    }

    fn parse(value: &str) -> Option<CacheMode> {
        Some(match value.trim() {
            "on" => CacheMode::On,
            "off" => CacheMode::Off,
            "read_only" => CacheMode::ReadOnly,
            "write_only" => CacheMode::WriteOnly,
            _ => return None,
        })
    }
}

/// The mode and the oldest entry a read accepts (`None`: any entry still stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CachePolicy {
    pub mode: CacheMode,
    pub max_age: Option<Duration>,
}

/// What a request asked for, from its headers and its body; fields it did not set are
/// `None` and the model's default stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestOverride {
    pub mode: Option<CacheMode>,
    pub max_age: Option<Duration>,
}

/// A cache option the request got wrong (answered 400, naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OverrideError {
    /// The header or body field at fault.
    pub param: String,
    pub message: String,
}

impl RequestOverride {
    /// Reads the headers' values (`None` when absent).
    pub fn from_headers(
        mode: Option<&[u8]>,
        max_age: Option<&[u8]>,
    ) -> Result<RequestOverride, OverrideError> {
        fn text<'a>(v: &'a [u8], name: &str) -> Result<&'a str, OverrideError> {
            std::str::from_utf8(v).map_err(|_| OverrideError {
                param: name.to_owned(),
                message: format!("the {name} header is not text"),
            })
        }
        let mode = match mode {
            None => None,
            Some(v) => Some(parse_mode(text(v, MODE_HEADER)?, MODE_HEADER)?),
        };
        let max_age = match max_age {
            None => None,
            Some(v) => Some(parse_seconds(text(v, MAX_AGE_HEADER)?, MAX_AGE_HEADER)?),
        };
        Ok(RequestOverride { mode, max_age })
    }

    /// Reads the body's `sluice.cache` object, if the request has one.
    pub fn from_body_field(sluice: &Value) -> Result<RequestOverride, OverrideError> {
        let bad = |param: &str, message: String| OverrideError {
            param: param.to_owned(),
            message,
        };
        let Value::Object(fields) = sluice else {
            return Err(bad(
                "sluice",
                "`sluice` must be an object, e.g. {\"cache\": {\"mode\": \"off\"}}".into(),
            ));
        };
        if let Some(unknown) = fields.keys().find(|k| *k != "cache") {
            return Err(bad(
                &format!("sluice.{unknown}"),
                format!(
                    "unknown gateway option `sluice.{unknown}`; the gateway reads `sluice.cache`"
                ),
            ));
        }
        let Some(cache) = fields.get("cache") else {
            return Ok(RequestOverride::default());
        };
        let Value::Object(cache) = cache else {
            return Err(bad(
                "sluice.cache",
                "`sluice.cache` must be an object with `mode` and/or `max_age`".into(),
            ));
        };
        let mut out = RequestOverride::default();
        for (name, value) in cache {
            match (name.as_str(), value) {
                ("mode", Value::String(s)) => out.mode = Some(parse_mode(s, "sluice.cache.mode")?),
                ("max_age", Value::Number(n)) => {
                    out.max_age = Some(parse_seconds(&n.to_string(), "sluice.cache.max_age")?)
                }
                ("mode" | "max_age", _) => {
                    return Err(bad(
                        &format!("sluice.cache.{name}"),
                        format!("`sluice.cache.{name}` has the wrong type: `mode` is a string, `max_age` a number of seconds"),
                    ))
                }
                (other, _) => {
                    return Err(bad(
                        &format!("sluice.cache.{other}"),
                        format!("unknown cache option `sluice.cache.{other}`; use `mode` or `max_age`"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// This override over `other` (a header over the body field).
    pub fn or(self, other: RequestOverride) -> RequestOverride {
        RequestOverride {
            mode: self.mode.or(other.mode),
            max_age: self.max_age.or(other.max_age),
        }
    }

    /// The policy for this request, over the model's `default`.
    pub fn apply(self, default: CachePolicy) -> CachePolicy {
        CachePolicy {
            mode: self.mode.unwrap_or(default.mode),
            max_age: self.max_age.or(default.max_age),
        }
    }
}

fn parse_mode(value: &str, param: &str) -> Result<CacheMode, OverrideError> {
    CacheMode::parse(value).ok_or_else(|| OverrideError {
        param: param.to_owned(),
        message: format!("{param} must be one of on, off, read_only, write_only (got {value:?})"),
    })
}

/// Whole seconds, 0 to ten years: `0` accepts only an entry stored this very second.
fn parse_seconds(value: &str, param: &str) -> Result<Duration, OverrideError> {
    const MAX: u64 = 10 * 365 * 24 * 3600;
    match value.trim().parse::<u64>() {
        Ok(s) if s <= MAX => Ok(Duration::from_secs(s)),
        _ => Err(OverrideError {
            param: param.to_owned(),
            message: format!(
                "{param} must be a whole number of seconds, 0 to {MAX} (got {value:?})"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn modes_read_and_write_as_named() {
        let rw = |m: CacheMode| (m.reads(), m.writes());
        assert_eq!(rw(CacheMode::On), (true, true));
        assert_eq!(rw(CacheMode::Off), (false, false));
        assert_eq!(rw(CacheMode::ReadOnly), (true, false));
        assert_eq!(rw(CacheMode::WriteOnly), (false, true));
    }

    #[test]
    fn headers_override_the_body_which_overrides_the_model() {
        let default = CachePolicy {
            mode: CacheMode::On,
            max_age: Some(Duration::from_secs(3600)),
        };
        let header = RequestOverride::from_headers(Some(b"read_only"), None).unwrap();
        let body =
            RequestOverride::from_body_field(&json!({"cache": {"mode": "off", "max_age": 60}}))
                .unwrap();
        let policy = header.or(body).apply(default);
        assert_eq!(policy.mode, CacheMode::ReadOnly);
        assert_eq!(policy.max_age, Some(Duration::from_secs(60)));
        assert_eq!(RequestOverride::default().apply(default), default);
    }

    #[test]
    fn mistakes_are_named() {
        let e = RequestOverride::from_headers(Some(b"yes"), None).unwrap_err();
        assert_eq!(e.param, "x-sluice-cache");
        assert!(e.message.contains("read_only"), "{e}");
        let e = RequestOverride::from_headers(None, Some(b"1.5")).unwrap_err();
        assert_eq!(e.param, "x-sluice-cache-max-age");
        let e = RequestOverride::from_body_field(&json!({"cache": {"mode": 1}})).unwrap_err();
        assert_eq!(e.param, "sluice.cache.mode");
        let e = RequestOverride::from_body_field(&json!({"cache": {"ttl": 1}})).unwrap_err();
        assert_eq!(e.param, "sluice.cache.ttl");
        let e = RequestOverride::from_body_field(&json!({"cash": {}})).unwrap_err();
        assert_eq!(e.param, "sluice.cash");
        let e = RequestOverride::from_body_field(&json!("on")).unwrap_err();
        assert_eq!(e.param, "sluice");
    }
}
