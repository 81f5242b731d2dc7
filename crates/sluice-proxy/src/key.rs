//! The request key: the SHA-256 of everything about a request that decides its answer, and
//! nothing that does not (credentials, trace headers, ignored body fields, JSON key order,
//! query parameter order). `docs/proxy.md` documents the exact byte layout hashed here.

use std::fmt;

use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::KeyOptions;
use crate::redact::{is_secret_header, is_secret_query_param};

/// Version of the key scheme, stored in every entry. Bumped whenever what is hashed
/// changes, so old recordings are recognisably stale rather than silently missed.
pub const KEY_VERSION: u32 = 1;

/// Lowercase hex SHA-256 of a [`NormalisedRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(String);

impl RequestKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key as stored in an entry. Not validated: a hand-edited key simply never matches.
    pub(crate) fn from_hex(hex: &str) -> RequestKey {
        RequestKey(hex.to_owned())
    }

    /// The first 12 hex digits, used in file names.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request body as the key sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyBody {
    Empty,
    /// A body that parsed as JSON, with the ignored paths removed.
    Json(Value),
    /// Any other body, hashed byte for byte.
    Raw(Vec<u8>),
}

/// The parts of a request that count in its key, secrets already removed.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalisedRequest {
    /// `scheme://host:port` of a forward-proxy or CONNECT request, whose target is chosen
    /// by the client; `None` for reverse-proxy requests, whose keys stay as they were
    /// before forward mode existed.
    pub origin: Option<String>,
    /// Uppercase method.
    pub method: String,
    pub path: String,
    /// `(name, value)` pairs, raw (not percent-decoded), secret parameters removed, sorted.
    pub query: Vec<(String, String)>,
    /// Allow-listed headers as `(lowercase name, trimmed value)`, sorted.
    pub headers: Vec<(String, String)>,
    pub body: KeyBody,
}

impl NormalisedRequest {
    pub fn new(
        method: &str,
        path: &str,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        options: &KeyOptions,
    ) -> Self {
        let path = if path.is_empty() { "/" } else { path };
        NormalisedRequest {
            origin: None,
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: normalise_query(raw_query),
            headers: allow_listed_headers(headers, &options.header_allow_list),
            body: key_body(body, &options.ignore_paths),
        }
    }

    /// The same request addressed to `origin` (see [`NormalisedRequest::origin`]).
    pub fn with_origin(mut self, origin: Option<String>) -> Self {
        self.origin = origin;
        self
    }

    /// The query string as the key sees it: `a=1&b=2`.
    pub fn query_string(&self) -> String {
        self.query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    pub fn key(&self) -> RequestKey {
        let mut h = Sha256::new();
        h.update(format!("sluice-request-key-v{KEY_VERSION}\n"));
        if let Some(origin) = &self.origin {
            h.update(format!("origin {origin}\n"));
        }
        h.update(format!("method {}\n", self.method));
        h.update(format!("path {}\n", self.path));
        h.update(format!("query {}\n", self.query_string()));
        for (name, value) in &self.headers {
            h.update(format!("header {name}: {value}\n"));
        }
        match &self.body {
            KeyBody::Empty => h.update("body-empty\n"),
            KeyBody::Json(v) => h.update(format!("body-json {}\n", canonical_json(v))),
            KeyBody::Raw(bytes) => {
                h.update(format!("body-raw {}\n", bytes.len()));
                h.update(bytes);
            }
        }
        let digest = h.finalize();
        RequestKey(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

fn normalise_query(raw: Option<&str>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = raw
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .filter(|(k, _)| !is_secret_query_param(k))
        .collect();
    pairs.sort();
    pairs
}

fn allow_listed_headers(headers: &HeaderMap, allow: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            allow.iter().any(|a| a.eq_ignore_ascii_case(name)) && !is_secret_header(name)
        })
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            let value = if name == http::header::CONTENT_TYPE {
                media_type_for_key(&value)
            } else {
                value.trim().to_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect();
    out.sort();
    out
}

/// A `content-type` value as the key sees it: type and subtype lowercase, parameters
/// lowercase-named, sorted, without spaces, and without the ones that cannot change how
/// the body reads: `charset=utf-8` (JSON is UTF-8 whatever the label says, RFC 8259 §8.1;
/// for text it is what clients mean anyway). `application/json; charset=UTF-8` and
/// `application/json` are one key; `text/plain; charset=latin1` is another.
pub fn media_type_for_key(value: &str) -> String {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut params: Vec<String> = parts
        .filter_map(|p| {
            let (name, val) = p.split_once('=')?;
            let name = name.trim().to_ascii_lowercase();
            let val = val.trim().trim_matches('"');
            if name == "charset"
                && (val.eq_ignore_ascii_case("utf-8") || val.eq_ignore_ascii_case("utf8"))
            {
                return None;
            }
            Some(format!("{name}={val}"))
        })
        .collect();
    params.sort();
    std::iter::once(essence)
        .chain(params)
        .collect::<Vec<_>>()
        .join(";")
}

fn key_body(body: &[u8], ignore_paths: &[String]) -> KeyBody {
    if body.is_empty() {
        return KeyBody::Empty;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            remove_ignored(&mut v, ignore_paths);
            KeyBody::Json(v)
        }
        Err(_) => KeyBody::Raw(body.to_vec()),
    }
}

/// Removes every `ignore_paths` entry from `value` (see [`KeyOptions::ignore_paths`]).
pub fn remove_ignored(value: &mut Value, ignore_paths: &[String]) {
    for path in ignore_paths {
        let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        remove_path(value, &segments);
    }
}

fn remove_path(value: &mut Value, segments: &[&str]) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    let Value::Object(map) = value else {
        return;
    };
    let (name, every_element) = match first.strip_suffix("[*]") {
        Some(name) => (name, true),
        None => (*first, false),
    };
    if every_element {
        if let Some(Value::Array(items)) = map.get_mut(name) {
            if rest.is_empty() {
                items.clear();
            }
            for item in items.iter_mut() {
                remove_path(item, rest);
            }
        }
    } else if rest.is_empty() {
        map.shift_remove(name);
    } else if let Some(child) = map.get_mut(name) {
        remove_path(child, rest);
    }
}

/// Compact JSON with object keys sorted (by their UTF-8 bytes) at every level.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_of(
        query: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
        opts: &KeyOptions,
    ) -> RequestKey {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        NormalisedRequest::new(
            "post",
            "/v1/chat/completions",
            query,
            &map,
            body.as_bytes(),
            opts,
        )
        .key()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [2, {"z": 1, "y": 2}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[2,{"y":2,"z":1}]},"b":1}"#
        );
    }

    #[test]
    fn ignored_paths_reach_into_arrays() {
        let mut v = json!({"user": "u", "metadata": {"trace": 1, "keep": 2}, "messages": [{"name": "a", "content": "x"}]});
        remove_ignored(
            &mut v,
            &[
                "user".into(),
                "metadata.trace".into(),
                "messages[*].name".into(),
            ],
        );
        assert_eq!(
            v,
            json!({"metadata": {"keep": 2}, "messages": [{"content": "x"}]})
        );
    }

    #[test]
    fn secret_query_params_and_headers_do_not_count() {
        let opts = KeyOptions {
            header_allow_list: vec!["content-type".into(), "authorization".into()],
            ..KeyOptions::default()
        };
        let a = key_of(
            Some("a=1&key=one"),
            &[("authorization", "Bearer x")],
            "{}",
            &opts,
        );
        let b = key_of(
            Some("key=two&a=1"),
            &[("authorization", "Bearer y")],
            "{}",
            &opts,
        );
        assert_eq!(a, b);
        assert_ne!(a, key_of(Some("a=2"), &[], "{}", &opts));
        assert_eq!(a.short().len(), 12);
    }

    /// Keys of reverse-proxy requests are what users' recordings are named by: these two
    /// were computed before forward mode existed and must never change.
    #[test]
    fn reverse_keys_are_stable() {
        let opts = KeyOptions::default();
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer sk-test"),
        );
        let chat = NormalisedRequest::new(
            "POST",
            "/v1/chat/completions",
            Some("b=2&a=1"),
            &h,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            &opts,
        );
        assert_eq!(
            chat.key().as_str(),
            "d58ce75dfc56a55e6fce2797475d4e0a74b018ded4586f5f0ca2fbd43dab9e17"
        );
        let models =
            NormalisedRequest::new("GET", "/v1/models", None, &HeaderMap::new(), b"", &opts);
        assert_eq!(
            models.key().as_str(),
            "91e98cda113e5d7c7164e404978a2a07eb47bd85675891dd535c1ce624cae6be"
        );
        // The same request through forward mode is keyed by its origin too.
        let a = chat
            .clone()
            .with_origin(Some("https://a.example:443".into()));
        let b = chat
            .clone()
            .with_origin(Some("https://b.example:443".into()));
        assert_ne!(a.key(), chat.key());
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn content_type_parameters_that_change_nothing_do_not_split_keys() {
        let opts = KeyOptions::default();
        let plain = key_of(None, &[("content-type", "application/json")], "{}", &opts);
        for same in [
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            " application/json",
        ] {
            assert_eq!(
                key_of(None, &[("content-type", same)], "{}", &opts),
                plain,
                "{same}"
            );
        }
        assert_ne!(
            key_of(
                None,
                &[("content-type", "text/plain; charset=latin1")],
                "{}",
                &opts
            ),
            key_of(None, &[("content-type", "text/plain")], "{}", &opts),
        );
        assert_ne!(
            key_of(
                None,
                &[("content-type", "application/x-ndjson")],
                "{}",
                &opts
            ),
            plain
        );
        assert_eq!(
            media_type_for_key("multipart/form-data; Boundary=x; charset=utf-8"),
            "multipart/form-data;boundary=x"
        );
    }

    #[test]
    fn non_json_bodies_are_hashed_raw() {
        let opts = KeyOptions::default();
        assert_ne!(
            key_of(None, &[], "a b", &opts),
            key_of(None, &[], "a  b", &opts)
        );
        assert_eq!(
            key_of(None, &[], "{ \"a\" : 1 }", &opts),
            key_of(None, &[], "{\"a\":1}", &opts)
        );
    }
}
