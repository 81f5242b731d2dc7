//! [`CacheKey`]: which requests share an answer.
//!
//! Two requests share an entry when they come from the same tenant, name the same model,
//! go to the same endpoint group, and their bodies are the same request once the fields that
//! do not change the answer ([`IGNORED_FIELDS`]) are left out and the JSON is written one
//! way only ([`canonical`]): keys sorted, no whitespace, numbers normalised (`1`, `1.0` and
//! `1e0` are one number), strings escaped as `serde_json` escapes them. The key is BLAKE3
//! over those parts, each length-prefixed, under a context string and the scheme version
//! [`KEY_SCHEME`] (stored in every entry: a new scheme never reads an old entry as its own).

use serde_json::{Map, Value};

/// The version of the key derivation. Raised whenever the canonical form or the ignored
/// fields change.
pub const KEY_SCHEME: u8 = 1;

/// Top-level request fields left out of the key: they change how the answer is delivered,
/// billed or attributed, not what it says.
///
/// - `stream`, `stream_options`: a stored answer serves streaming and non-streaming requests
///   alike.
/// - `user`, `safety_identifier`, `metadata`: who asked, for the provider's abuse checks and
///   the caller's bookkeeping.
/// - `store`: whether the provider keeps the completion for its dashboards.
/// - `service_tier`: which capacity pool serves it (latency and price, not content).
/// - `prompt_cache_key`: a hint for the provider's own prompt cache.
/// - `sluice`: the gateway's own options (this cache's mode), stripped before the request
///   goes upstream.
pub const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "sluice",
];

/// The endpoint group of chat completions (other APIs will have their own).
pub const CHAT_COMPLETIONS: &str = "chat.completions";

/// A cache key: 32 bytes of BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of `body` (a request as JSON) sent by `tenant` for `model` to `group`.
    pub fn derive(
        tenant: &str,
        model: &str,
        group: &str,
        body: &[u8],
    ) -> Result<CacheKey, KeyError> {
        let request: Value = serde_json::from_slice(body).map_err(|_| KeyError::NotJson)?;
        let Value::Object(fields) = request else {
            return Err(KeyError::NotAnObject);
        };
        let mut canonical_body = Vec::with_capacity(body.len());
        write_object(&fields, &mut canonical_body, true);
        Ok(CacheKey::of_parts(tenant, model, group, &canonical_body))
    }

    fn of_parts(tenant: &str, model: &str, group: &str, canonical_body: &[u8]) -> CacheKey {
        let mut hasher = blake3::Hasher::new_derive_key("sluice inference cache key");
        hasher.update(&[KEY_SCHEME]);
        for part in [
            tenant.as_bytes(),
            model.as_bytes(),
            group.as_bytes(),
            canonical_body,
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        CacheKey(*hasher.finalize().as_bytes())
    }

    /// Lowercase hex, as the stores name entries.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Keys of request bodies seen before, found by a BLAKE3 hash of their exact bytes (and
/// the tenant, model and group): a request sent again byte for byte — what a cache hit
/// usually is — skips the JSON parse that the canonical form needs. BLAKE3, not a fast
/// hash: a collision here would hand one tenant's request another's key. Bounded: once
/// `capacity` bodies are remembered, the memo starts over.
pub struct KeyMemo {
    keys: std::sync::Mutex<std::collections::HashMap<[u8; 32], CacheKey>>,
    capacity: usize,
}

impl KeyMemo {
    pub fn new(capacity: usize) -> KeyMemo {
        KeyMemo {
            keys: std::sync::Mutex::default(),
            capacity,
        }
    }

    /// [`CacheKey::derive`], remembered.
    pub fn key(
        &self,
        tenant: &str,
        model: &str,
        group: &str,
        body: &[u8],
    ) -> Result<CacheKey, KeyError> {
        let mut hasher = blake3::Hasher::new_derive_key("sluice inference cache raw request");
        for part in [tenant.as_bytes(), model.as_bytes(), group.as_bytes(), body] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let raw = *hasher.finalize().as_bytes();
        let lock = || {
            self.keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(key) = lock().get(&raw) {
            return Ok(*key);
        }
        let key = CacheKey::derive(tenant, model, group, body)?;
        let mut keys = lock();
        if keys.len() >= self.capacity {
            keys.clear();
        }
        keys.insert(raw, key);
        Ok(key)
    }

    pub fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A body the key cannot be derived from (the request path has already refused these; the
/// cache then bypasses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the request body is not JSON")]
    NotJson,
    #[error("the request body is not a JSON object")]
    NotAnObject,
}

/// The canonical form of a JSON value (what the key hashes, for a request without its
/// ignored fields).
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(fields) => write_object(fields, out, false),
    }
}

fn write_object(fields: &Map<String, Value>, out: &mut Vec<u8>, top_level: bool) {
    let mut keys: Vec<&String> = fields
        .keys()
        .filter(|k| !(top_level && IGNORED_FIELDS.contains(&k.as_str())))
        .collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        if let Some(value) = fields.get(*key) {
            write_value(value, out);
        }
    }
    out.push(b'}');
}

/// Integers as integers; any other number as the shortest decimal that reads back as the
/// same `f64`, written as an integer when it is one (below 2^53, where every integer is
/// exact).
fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(u) = n.as_u64() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(f) = n.as_f64() {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if f.fract() == 0.0 && f.abs() < EXACT {
            out.extend_from_slice((f as i64).to_string().as_bytes());
        } else {
            // `serde_json` writes the shortest round-tripping form (ryu).
            out.extend_from_slice(Value::from(f).to_string().as_bytes());
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn key(body: &str) -> CacheKey {
        CacheKey::derive("t", "m", CHAT_COMPLETIONS, body.as_bytes()).unwrap()
    }

    #[test]
    fn order_whitespace_number_spelling_and_ignored_fields_do_not_change_the_key() {
        let a = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#);
        let b = key(
            r#" { "temperature" : 1.0, "messages" : [ { "content":"hi", "role":"user" } ],
                  "model":"m", "stream": true, "stream_options": {"include_usage": true},
                  "user": "u-1", "metadata": {"run": "7"}, "sluice": {"cache": {"mode": "on"}} } "#,
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1e0}"#)
        );
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let k = key(base);
        for other in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
            // Ignored only at the top level: a message's `user`-named field is content.
            r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}]}"#,
        ] {
            assert_ne!(k, key(other), "{other}");
        }
        // Tenant, model and group are parts of the key, not only of the body.
        let body = base.as_bytes();
        let by = |t: &str, m: &str, g: &str| CacheKey::derive(t, m, g, body).unwrap();
        assert_ne!(
            by("t", "m", CHAT_COMPLETIONS),
            by("u", "m", CHAT_COMPLETIONS)
        );
        assert_ne!(
            by("t", "m", CHAT_COMPLETIONS),
            by("t", "m2", CHAT_COMPLETIONS)
        );
        assert_ne!(by("t", "m", CHAT_COMPLETIONS), by("t", "m", "embeddings"));
        // Length prefixes: moving a byte from one part to the next is another key.
        assert_ne!(
            by("ab", "c", CHAT_COMPLETIONS),
            by("a", "bc", CHAT_COMPLETIONS)
        );
    }

    #[test]
    fn numbers_are_normalised_but_not_confused() {
        let n = |s: &str| canonical(&serde_json::from_str(s).unwrap());
        assert_eq!(n("1.0"), b"1");
        assert_eq!(n("-0.0"), b"0");
        assert_eq!(n("1e2"), b"100");
        assert_eq!(n("0.70"), b"0.7");
        assert_eq!(n("18446744073709551615"), b"18446744073709551615");
        assert_ne!(n("0.1"), n("0.10000001"));
        assert_eq!(n(r#""\u00e9""#), "\"é\"".as_bytes());
    }

    #[test]
    fn the_memo_gives_the_derived_key_and_stays_bounded() {
        let memo = KeyMemo::new(2);
        let body = br#"{"model":"m","messages":[]}"#;
        let derived = CacheKey::derive("t", "m", CHAT_COMPLETIONS, body).unwrap();
        assert_eq!(memo.key("t", "m", CHAT_COMPLETIONS, body).unwrap(), derived);
        assert_eq!(memo.key("t", "m", CHAT_COMPLETIONS, body).unwrap(), derived);
        // Another tenant, same bytes: another key, never the remembered one.
        assert_ne!(memo.key("u", "m", CHAT_COMPLETIONS, body).unwrap(), derived);
        assert_eq!(memo.len(), 2);
        memo.key("v", "m", CHAT_COMPLETIONS, body).unwrap();
        assert!(memo.len() <= 2);
        assert!(memo.key("t", "m", CHAT_COMPLETIONS, b"[]").is_err());
    }

    #[test]
    fn not_an_object_is_an_error() {
        let derive = |b: &[u8]| CacheKey::derive("t", "m", CHAT_COMPLETIONS, b);
        assert_eq!(derive(b"[1]"), Err(KeyError::NotAnObject));
        assert_eq!(derive(b"{"), Err(KeyError::NotJson));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-zé \"\\\\]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The canonical form is JSON that reads back as the same value, and a value written
        /// with its keys in another order has the same form.
        #[test]
        fn canonical_json_reads_back_and_ignores_key_order(v in json_value()) {
            let c = canonical(&v);
            let back: Value = serde_json::from_slice(&c).unwrap();
            prop_assert_eq!(canonical(&back), c.clone());
            if let Value::Object(fields) = &v {
                let reversed: Map<String, Value> =
                    fields.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(canonical(&Value::Object(reversed)), c);
            }
        }
    }
}
