//! Documents as field paths: a JSON value flattened to its leaves (`body.messages[0].content`),
//! two such maps compared, and paths ordered as a person reads them. Misses explain
//! themselves with these ([`crate::nearest`]) and drift is reported in them
//! ([`crate::compare`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// A field whose value differs between a recorded document and another one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// `method`, `path`, `query`, `headers.NAME`, `body.PATH`, `events[i].PATH`, ...
    pub path: String,
    /// `null` when the field is absent on that side.
    pub recorded: Value,
    pub requested: Value,
}

/// Adds every leaf of `value` to `out` under `path` (`path.key`, `path[i]`). Empty objects
/// and arrays are leaves.
pub fn flatten_json(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten_json(v, format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(v, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

/// Every path whose value differs, in [`field_path_order`].
pub fn diff(
    recorded: &BTreeMap<String, Value>,
    requested: &BTreeMap<String, Value>,
) -> Vec<Difference> {
    let mut paths: Vec<&String> = recorded.keys().chain(requested.keys()).collect();
    paths.sort_by(|a, b| field_path_order(a, b));
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|p| {
            let r = recorded.get(p);
            let q = requested.get(p);
            (r != q).then(|| Difference {
                path: p.clone(),
                recorded: r.cloned().unwrap_or(Value::Null),
                requested: q.cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// Orders field paths as a person reads them: runs of digits compare as numbers, so
/// `events[2]` comes before `events[19]` (byte order would put it after).
pub fn field_path_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (da, ra) = split_digits(a);
                let (db, rb) = split_digits(b);
                // Without leading zeros, a longer run is a larger number.
                let (na, nb) = (trim_zeros(da), trim_zeros(db));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order.is_ne() {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let n = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[n..]
}

/// `value` with every string longer than `max_chars` characters cut to that many, followed
/// by `… (N chars)`.
pub fn truncate_strings(value: Value, max_chars: usize) -> Value {
    match value {
        Value::String(s) => Value::String(truncate_str(s, max_chars)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| truncate_strings(v, max_chars))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, truncate_strings(v, max_chars)))
                .collect(),
        ),
        other => other,
    }
}

/// `s` cut to `max_chars` characters, followed by `… (N chars)` when it was longer.
pub fn truncate_str(s: String, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s,
        Some((cut, _)) => {
            let total = s.chars().count();
            format!("{}… ({total} chars)", &s[..cut])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_leaves() {
        let mut a = BTreeMap::new();
        flatten_json(
            &serde_json::json!({"m": [{"c": "hi"}], "t": 1}),
            "body".into(),
            &mut a,
        );
        let mut b = BTreeMap::new();
        flatten_json(
            &serde_json::json!({"m": [{"c": "ho"}], "t": 1}),
            "body".into(),
            &mut b,
        );
        let d = diff(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "body.m[0].c");
    }

    #[test]
    fn field_paths_sort_with_numbers_as_numbers() {
        let mut paths = vec![
            "events[19].choices[0]",
            "events[2].choices[10]",
            "events[2].choices[9]",
            "events.count",
            "body.a",
            "events[100]",
            "events[3]",
        ];
        paths.sort_by(|a, b| field_path_order(a, b));
        assert_eq!(
            paths,
            vec![
                "body.a",
                "events.count",
                "events[2].choices[9]",
                "events[2].choices[10]",
                "events[3]",
                "events[19].choices[0]",
                "events[100]",
            ]
        );
        assert!(field_path_order("a[007]", "a[7]").is_eq());
    }
}
