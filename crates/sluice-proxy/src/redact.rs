//! Which parts of a request are credentials, and the last check before anything is written:
//! a scan of the whole entry for secret values.

use serde_json::Value;

/// Header name fragments that mark a header as a credential or as per-call noise. Such
/// headers never count in the key and are never written.
const SECRET_HEADER_FRAGMENTS: [&str; 5] = ["key", "token", "secret", "authorization", "cookie"];

/// Headers that differ on every call without changing the answer (distributed tracing).
const VOLATILE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Query parameter names that carry credentials (signed URLs, key-in-query APIs).
const SECRET_QUERY_PARAMS: [&str; 7] = [
    "key",
    "api_key",
    "apikey",
    "api-key",
    "token",
    "sig",
    "signature",
];

/// Values shorter than this are not searched for: a header like `x-api-key: 1` would
/// otherwise make every entry containing the digit 1 unwritable.
const MIN_SCANNED_VALUE_LEN: usize = 8;

/// True for headers that must never reach the key or the disk.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_HEADER_FRAGMENTS.iter().any(|f| name.contains(f))
        || VOLATILE_HEADERS.contains(&name.as_str())
}

/// True for query parameters that must never reach the key or the disk.
pub fn is_secret_query_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_QUERY_PARAMS.contains(&name.as_str())
}

/// Where a secret was found in an entry about to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFinding {
    /// JSON path of the field holding it, e.g. `request.body.messages[0].content`.
    pub field: String,
    /// What matched, without the value itself: `configured secret`, `request credential`
    /// or the name of a key pattern.
    pub what: &'static str,
}

/// Searches an entry for secrets: configured values, this request's own credentials, and
/// well-known API key shapes.
#[derive(Debug, Clone, Default)]
pub struct SecretScanner {
    configured: Vec<String>,
    credentials: Vec<String>,
}

impl SecretScanner {
    pub fn new(configured: &[String]) -> Self {
        SecretScanner {
            configured: configured
                .iter()
                .filter(|v| !v.is_empty())
                .cloned()
                .collect(),
            credentials: Vec::new(),
        }
    }

    /// Adds the value of a redacted header or query parameter. A `Bearer xyz` value also
    /// adds `xyz`, since the token alone is what could leak into a body.
    pub fn add_credential(&mut self, value: &str) {
        for part in std::iter::once(value).chain(value.split_whitespace()) {
            if part.len() >= MIN_SCANNED_VALUE_LEN && !self.credentials.iter().any(|c| c == part) {
                self.credentials.push(part.to_owned());
            }
        }
    }

    /// The first secret found in `entry`, walking object keys and string values.
    pub fn scan(&self, entry: &Value) -> Option<SecretFinding> {
        let mut path = String::new();
        self.walk(entry, &mut path)
    }

    fn walk(&self, value: &Value, path: &mut String) -> Option<SecretFinding> {
        match value {
            Value::String(s) => self.check(s).map(|what| SecretFinding {
                field: path.clone(),
                what,
            }),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = self.walk(v, path);
                path.truncate(len);
                found
            }),
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let found = self.check(k).map(|what| SecretFinding {
                    field: path.clone(),
                    what,
                });
                let found = found.or_else(|| self.walk(v, path));
                path.truncate(len);
                found
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => None,
        }
    }

    fn check(&self, s: &str) -> Option<&'static str> {
        if self.configured.iter().any(|c| s.contains(c.as_str())) {
            return Some("configured secret");
        }
        if self.credentials.iter().any(|c| s.contains(c.as_str())) {
            return Some("request credential");
        }
        known_key_pattern(s)
    }
}

/// The name of a well-known API key shape occurring in `s`, if any.
pub fn known_key_pattern(s: &str) -> Option<&'static str> {
    if s.contains("sk-ant-") {
        return Some("Anthropic API key pattern (sk-ant-)");
    }
    let b = s.as_bytes();
    for (i, _) in s.match_indices("sk-") {
        let run = b[i + 3..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'-')
            .count();
        if run >= 20 {
            return Some("OpenAI-style API key pattern (sk-...)");
        }
    }
    for (i, _) in s.match_indices("AKIA") {
        let rest = &b[i + 4..];
        if rest.len() >= 16
            && rest[..16]
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            return Some("AWS access key pattern (AKIA...)");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_secret_headers_and_params() {
        for h in [
            "Authorization",
            "api-key",
            "x-api-key",
            "anthropic-api-key",
            "X-Goog-Api-Key",
            "cookie",
            "x-auth-token",
            "traceparent",
            "tracestate",
        ] {
            assert!(is_secret_header(h), "{h}");
        }
        for h in ["content-type", "openai-organization", "accept"] {
            assert!(!is_secret_header(h), "{h}");
        }
        assert!(is_secret_query_param("api_key"));
        assert!(is_secret_query_param("sig"));
        assert!(!is_secret_query_param("model"));
    }

    #[test]
    fn finds_key_patterns_and_names_the_field() {
        let scanner = SecretScanner::new(&["hunter2-config".to_owned()]);
        let entry = json!({"request": {"body": {"messages": [{"content": "my key is sk-abcdefghijklmnopqrstuvwxyz"}]}}});
        let found = scanner.scan(&entry).unwrap();
        assert_eq!(found.field, "request.body.messages[0].content");
        assert!(scanner
            .scan(&json!({"a": "AKIAABCDEFGHIJKLMNOP"}))
            .is_some());
        assert_eq!(
            scanner
                .scan(&json!({"a": ["x", "hunter2-config"]}))
                .unwrap()
                .what,
            "configured secret"
        );
        assert!(scanner.scan(&json!({"a": "task-force sk-short"})).is_none());
    }

    #[test]
    fn request_credentials_include_bearer_tokens() {
        let mut scanner = SecretScanner::new(&[]);
        scanner.add_credential("Bearer abcdefgh12345");
        scanner.add_credential("1");
        assert!(scanner.scan(&json!({"x": "echo abcdefgh12345"})).is_some());
        assert!(scanner.scan(&json!({"x": "1 Bearer"})).is_none());
    }
}
