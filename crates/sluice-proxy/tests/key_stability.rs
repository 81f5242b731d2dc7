//! The request key ignores what does not select an answer and sees everything that does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice_proxy::{KeyOptions, NormalisedRequest, RequestKey};

fn options() -> KeyOptions {
    KeyOptions {
        ignore_paths: vec![
            "user".into(),
            "metadata.trace_id".into(),
            "messages[*].name".into(),
        ],
        ..KeyOptions::default()
    }
}

/// A request body from `(name, value)` fields in the given order, plus messages.
fn body(fields: &[(String, i64)], content: &str, user: &str, trace: &str, name: &str) -> Vec<u8> {
    let mut map = Map::new();
    for (k, v) in fields {
        map.insert(k.clone(), Value::from(*v));
    }
    map.insert("user".into(), Value::from(user));
    map.insert(
        "metadata".into(),
        serde_json::json!({"trace_id": trace, "team": "search"}),
    );
    map.insert(
        "messages".into(),
        serde_json::json!([{"role": "user", "name": name, "content": content}]),
    );
    serde_json::to_vec(&Value::Object(map)).unwrap()
}

fn headers(auth: &str, traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::from_str(&format!("Bearer {auth}")).unwrap(),
    );
    h.insert(
        HeaderName::from_static("traceparent"),
        HeaderValue::from_str(traceparent).unwrap(),
    );
    h
}

fn key(query: &[(String, String)], headers: &HeaderMap, body: &[u8]) -> RequestKey {
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    NormalisedRequest::new(
        "POST",
        "/v1/chat/completions",
        Some(&query),
        headers,
        body,
        &options(),
    )
    .key()
}

/// Distinct field names (so a permutation is the same object) with values.
fn fields() -> impl Strategy<Value = Vec<(String, i64)>> {
    proptest::collection::btree_map("[a-k]{1,6}", any::<i64>(), 0..8)
        .prop_map(|m| m.into_iter().filter(|(k, _)| k != "user").collect())
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..5).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "key" | "token" | "sig"))
            .collect()
    })
}

proptest! {
    #[test]
    fn order_credentials_traces_and_ignored_fields_do_not_change_the_key(
        (fields, shuffled) in fields().prop_flat_map(|f| (Just(f.clone()), Just(f).prop_shuffle())),
        (query, shuffled_query) in query().prop_flat_map(|q| (Just(q.clone()), Just(q).prop_shuffle())),
        content in "[a-z ]{0,20}",
        (auth_a, auth_b) in ("sk-[a-z0-9]{20}", "sk-[a-z0-9]{20}"),
        (user_a, user_b) in ("[a-z]{1,8}", "[a-z]{1,8}"),
        (trace_a, trace_b) in ("[0-9a-f]{32}", "[0-9a-f]{32}"),
        (name_a, name_b) in ("[a-z]{1,8}", "[a-z]{1,8}"),
    ) {
        let a = key(
            &query,
            &headers(&auth_a, &format!("00-{trace_a}-00f067aa0ba902b7-01")),
            &body(&fields, &content, &user_a, &trace_a, &name_a),
        );
        let mut query_b = shuffled_query.clone();
        query_b.push(("api_key".into(), auth_b.clone()));
        let b = key(
            &query_b,
            &headers(&auth_b, &format!("00-{trace_b}-00f067aa0ba902b7-01")),
            &body(&shuffled, &content, &user_b, &trace_b, &name_b),
        );
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_changed_field_changes_the_key(
        fields in fields(),
        query in query(),
        content in "[a-z ]{0,20}",
        extra in "[a-z ]{1,5}",
        bump in 1i64..1000,
    ) {
        let h = headers("sk-aaaaaaaaaaaaaaaaaaaaaaaa", "00-0-0-01");
        let base = key(&query, &h, &body(&fields, &content, "u", "t", "n"));
        let changed_content = format!("{content}{extra}");
        prop_assert_ne!(&base, &key(&query, &h, &body(&fields, &changed_content, "u", "t", "n")));
        if let Some(((name, value), rest)) = fields.split_first() {
            let mut changed = vec![(name.clone(), value.wrapping_add(bump))];
            changed.extend(rest.iter().cloned());
            prop_assert_ne!(&base, &key(&query, &h, &body(&changed, &content, "u", "t", "n")));
        }
        let mut more_query = query.clone();
        more_query.push(("zz_added".into(), "1".into()));
        prop_assert_ne!(&base, &key(&more_query, &h, &body(&fields, &content, "u", "t", "n")));
    }
}

#[test]
fn method_path_and_allow_listed_headers_count() {
    let h = headers("sk-aaaaaaaaaaaaaaaaaaaaaaaa", "00-0-0-01");
    let b = br#"{"a":1}"#;
    let opts = options();
    let base = NormalisedRequest::new("POST", "/v1/x", None, &h, b, &opts).key();
    assert_ne!(
        base,
        NormalisedRequest::new("PUT", "/v1/x", None, &h, b, &opts).key()
    );
    assert_ne!(
        base,
        NormalisedRequest::new("POST", "/v1/y", None, &h, b, &opts).key()
    );
    let mut text = h.clone();
    text.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("text/plain"),
    );
    assert_ne!(
        base,
        NormalisedRequest::new("POST", "/v1/x", None, &text, b, &opts).key()
    );
    // A header not on the allow-list does not count.
    let mut other = h.clone();
    other.insert(
        HeaderName::from_static("user-agent"),
        HeaderValue::from_static("curl/8"),
    );
    assert_eq!(
        base,
        NormalisedRequest::new("POST", "/v1/x", None, &other, b, &opts).key()
    );
}
