//! The recording nearest to a request that missed, and how a miss explains itself: which
//! fields differ and how, short enough for an error message and a log line, with the whole
//! answer bounded whatever the request's size.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::entry::RecordedRequest;
use crate::fields::{diff, flatten_json, truncate_str, truncate_strings, Difference};
use crate::key::remove_ignored;
use crate::store::ReplayStore;

/// How many differences a miss answer lists; the first few are what a user needs to see.
pub const MAX_REPORTED_DIFFERENCES: usize = 20;

/// Upper bound on files inspected when looking for the nearest entry, so a huge directory
/// cannot make a miss slow.
const MAX_NEAREST_CANDIDATES: usize = 5000;

/// Strings in a miss answer (the echoed request, the differing values, field paths) are
/// cut to this many characters: a 5 MB prompt must not come back as a 15 MB error.
pub const MAX_ECHOED_CHARS: usize = 200;

/// The echoed request's JSON beyond this many bytes (after cutting strings: a body with
/// very many fields) is replaced by its method, path and query.
const MAX_ECHOED_REQUEST_BYTES: usize = 32 * 1024;

/// Characters of each changed value compared by edit distance when candidates tie on the
/// number of differing fields (after their common start and end are set aside).
const SIMILARITY_WINDOW: usize = 128;

/// Differences spelled out in the miss message itself; the rest are in `nearest`.
const DESCRIBED_IN_MESSAGE: usize = 3;

/// Context shown on each side of a change, and the longest changed run shown.
const CONTEXT_CHARS: usize = 24;
const CHANGE_CHARS: usize = 60;

/// The recorded entry most like a request that missed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nearest {
    pub file: String,
    /// The recording's model and the start of its last message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// How many fields differ in all; `differences` lists the first
    /// [`MAX_REPORTED_DIFFERENCES`], values cut to [`MAX_ECHOED_CHARS`].
    pub differences_total: usize,
    pub differences: Vec<Difference>,
    /// The first differences as the message spells them out, made from the whole values
    /// (the listed ones are cut).
    #[serde(skip)]
    described: Vec<String>,
}

/// The recorded entry closest to `request`, bodies compared with `ignore_paths` removed:
/// the fewest differing fields, and among those, the smallest edit distance between the
/// differing values (so a one-word change beats a rewritten prompt). Files are visited in
/// name order; `None` when the directory holds no readable entry.
pub fn nearest(
    store: &ReplayStore,
    request: &RecordedRequest,
    ignore_paths: &[String],
) -> Option<Nearest> {
    let wanted = flatten_request(request, ignore_paths);
    let mut names = store.entry_file_names().ok()?;
    names.truncate(MAX_NEAREST_CANDIDATES);
    let mut best: Option<(usize, usize, Nearest)> = None;
    for name in names {
        let Ok(entry) = store.read_entry(&name) else {
            continue;
        };
        let differences = diff(&flatten_request(&entry.request, ignore_paths), &wanted);
        let count = differences.len();
        if best.as_ref().is_some_and(|(c, _, _)| count > *c) {
            continue;
        }
        // Only computed for candidates that can still win.
        let distance: usize = differences
            .iter()
            .map(|d| value_distance(&d.recorded, &d.requested))
            .sum();
        if best
            .as_ref()
            .is_some_and(|(c, dist, _)| count == *c && distance >= *dist)
        {
            continue;
        }
        let described = differences
            .iter()
            .take(DESCRIBED_IN_MESSAGE)
            .map(|d| {
                let path = truncate_str(d.path.clone(), MAX_ECHOED_CHARS);
                format!("{path}: {}", change(&d.recorded, &d.requested))
            })
            .collect();
        let nearest = Nearest {
            file: name,
            label: entry.request.label(),
            described,
            differences_total: count,
            differences: differences
                .into_iter()
                .take(MAX_REPORTED_DIFFERENCES)
                .map(bounded_difference)
                .collect(),
        };
        best = Some((count, distance, nearest));
    }
    best.map(|(_, _, n)| n)
}

impl Nearest {
    /// One sentence for the miss message and the log line: the file, what it was, and the
    /// first differences with a short diff of their values.
    pub fn explanation(&self) -> String {
        let mut out = format!("the nearest recording is {}", self.file);
        if let Some(label) = &self.label {
            out.push_str(&format!(" ({label})"));
        }
        if self.described.is_empty() {
            out.push_str(", which differs in no compared field (it is keyed by an ignored path or another key scheme)");
            return out;
        }
        out.push_str(&format!(
            ", which differs in {} field(s): ",
            self.differences_total
        ));
        out.push_str(&self.described.join("; "));
        let rest = self.differences_total.saturating_sub(self.described.len());
        if rest > 0 {
            out.push_str(&format!(
                "; and {rest} more (listed in `nearest.differences`)"
            ));
        }
        out
    }
}

/// The request as a miss answer echoes it: long strings cut, and when it is still large,
/// only its method, path and query.
pub fn echoed_request(request: &RecordedRequest) -> Value {
    let full = serde_json::to_value(request).unwrap_or(Value::Null);
    let cut = truncate_strings(full, MAX_ECHOED_CHARS);
    if cut.to_string().len() <= MAX_ECHOED_REQUEST_BYTES {
        return cut;
    }
    serde_json::json!({
        "method": request.method,
        "path": truncate_str(request.path.clone(), MAX_ECHOED_CHARS),
        "query": truncate_str(request.query.clone(), MAX_ECHOED_CHARS),
        "omitted": format!("headers and body: over {MAX_ECHOED_REQUEST_BYTES} bytes even with long strings cut"),
    })
}

fn bounded_difference(d: Difference) -> Difference {
    Difference {
        path: truncate_str(d.path, MAX_ECHOED_CHARS),
        recorded: truncate_strings(d.recorded, MAX_ECHOED_CHARS),
        requested: truncate_strings(d.requested, MAX_ECHOED_CHARS),
    }
}

/// How a value changed, bounded: `"what is rust" → "what is go"` for short strings;
/// `"…context [-old-]{+new+} context…"` around the changed run of long ones; compact JSON
/// (cut) for other values.
pub fn change(recorded: &Value, requested: &Value) -> String {
    match (recorded, requested) {
        (Value::String(a), Value::String(b)) => string_change(a, b),
        (a, b) => format!("{} → {}", short_json(a), short_json(b)),
    }
}

fn short_json(v: &Value) -> String {
    truncate_str(v.to_string(), CHANGE_CHARS)
}

fn string_change(a: &str, b: &str) -> String {
    if a.chars().count() <= CHANGE_CHARS && b.chars().count() <= CHANGE_CHARS {
        return format!("{a:?} → {b:?}");
    }
    let (prefix, suffix) = common_ends(a, b);
    let (head, old, tail) = (
        &a[..prefix],
        &a[prefix..a.len() - suffix],
        &a[a.len() - suffix..],
    );
    let new = &b[prefix..b.len() - suffix];
    let before = last_chars(head, CONTEXT_CHARS);
    let after = first_chars(tail, CONTEXT_CHARS);
    let lead = if before.len() < head.len() { "…" } else { "" };
    let trail = if after.len() < tail.len() { "…" } else { "" };
    let (old, new) = (cut_run(old), cut_run(new));
    let marked = format!("{lead}{before}[-{old}-]{{+{new}+}}{after}{trail}");
    format!("{marked:?}")
}

fn cut_run(run: &str) -> String {
    let head = first_chars(run, CHANGE_CHARS);
    if head.len() == run.len() {
        run.to_owned()
    } else {
        format!("{head}… ({} chars)", run.chars().count())
    }
}

fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

fn last_chars(s: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match s.char_indices().rev().nth(n - 1) {
        Some((cut, _)) => &s[cut..],
        None => s,
    }
}

/// Byte lengths of the common start and the common end of `a` and `b` (not overlapping),
/// on character boundaries. Compared as bytes: linear, and no copy of a long value.
fn common_ends(a: &str, b: &str) -> (usize, usize) {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let mut prefix = x.iter().zip(y).take_while(|(p, q)| p == q).count();
    // Equal bytes up to `prefix`, so a boundary of one is a boundary of the other.
    while !a.is_char_boundary(prefix) {
        prefix -= 1;
    }
    let room = x.len().min(y.len()) - prefix;
    let mut suffix = x
        .iter()
        .rev()
        .zip(y.iter().rev())
        .take(room)
        .take_while(|(p, q)| p == q)
        .count();
    while !a.is_char_boundary(a.len() - suffix) {
        suffix -= 1;
    }
    (prefix, suffix)
}

/// An edit distance between two values' texts, bounded in cost: the common start and end
/// are set aside, the first [`SIMILARITY_WINDOW`] characters of what remains are compared
/// by Levenshtein distance, and anything longer counts one per character.
fn value_distance(a: &Value, b: &Value) -> usize {
    let (a, b) = (value_text(a), value_text(b));
    let (prefix, suffix) = common_ends(&a, &b);
    let a = &a[prefix..a.len() - suffix];
    let b = &b[prefix..b.len() - suffix];
    let window = |s: &str| {
        first_chars(s, SIMILARITY_WINDOW)
            .chars()
            .collect::<Vec<char>>()
    };
    let beyond = |s: &str| s.chars().count().saturating_sub(SIMILARITY_WINDOW);
    levenshtein(&window(a), &window(b)) + beyond(a).max(beyond(b))
}

fn value_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(x != y);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A request as field paths: `origin`, `method`, `path`, `query`, `headers.NAME`, and the
/// body's leaves (`body.PATH`) without the ignored paths, or the whole body.
fn flatten_request(request: &RecordedRequest, ignore_paths: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(origin) = &request.origin {
        out.insert("origin".to_owned(), Value::String(origin.clone()));
    }
    out.insert("method".to_owned(), Value::String(request.method.clone()));
    out.insert("path".to_owned(), Value::String(request.path.clone()));
    out.insert("query".to_owned(), Value::String(request.query.clone()));
    for (name, value) in &request.headers {
        out.insert(format!("headers.{name}"), Value::String(value.clone()));
    }
    if let Some(body) = &request.body.body {
        let mut body = body.clone();
        remove_ignored(&mut body, ignore_paths);
        flatten_json(&body, "body".to_owned(), &mut out);
    } else if let Some(text) = &request.body.body_text {
        out.insert("body".to_owned(), Value::String(text.clone()));
    } else if let Some(b64) = &request.body.body_base64 {
        out.insert("body_base64".to_owned(), Value::String(b64.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_strings_show_both_values_and_long_ones_the_changed_run_in_context() {
        assert_eq!(
            change(&json!("what is rust"), &json!("what is go")),
            r#""what is rust" → "what is go""#
        );
        let long_a = format!(
            "{} the answer is rust, clearly {}",
            "x".repeat(500),
            "y".repeat(500)
        );
        let long_b = format!(
            "{} the answer is go, clearly {}",
            "x".repeat(500),
            "y".repeat(500)
        );
        let shown = change(&json!(long_a), &json!(long_b));
        assert_eq!(
            shown,
            r#""…xxxxxxxxx the answer is [-rust-]{+go+}, clearly yyyyyyyyyyyyyy…""#
        );
        let huge = change(&json!("a".repeat(5_000_000)), &json!("b".repeat(5_000_000)));
        assert!(huge.len() < 400, "{}", huge.len());
        assert_eq!(change(&json!(1), &Value::Null), "1 → null");
    }

    #[test]
    fn distance_prefers_the_smaller_edit() {
        let base = json!("tell me about the rust programming language");
        let near = json!("tell me about the go programming language");
        let far = json!("write a poem about the sea, in the style of a sailor");
        assert!(value_distance(&base, &near) < value_distance(&base, &far));
        assert_eq!(value_distance(&json!("abc"), &json!("abc")), 0);
        assert_eq!(levenshtein(&['k', 'i', 't'], &['s', 'i', 't', 's']), 2);
    }

    #[test]
    fn the_echoed_request_is_bounded() {
        let request = RecordedRequest {
            origin: None,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            query: String::new(),
            headers: BTreeMap::new(),
            body: crate::entry::StoredBody::from_bytes(
                json!({"model": "m", "messages": [{"role": "user", "content": "z".repeat(5_000_000)}]})
                    .to_string()
                    .as_bytes(),
            ),
        };
        let echoed = echoed_request(&request);
        assert!(echoed.to_string().len() < 1000);
        assert_eq!(echoed["body"]["model"], "m");
        let many = RecordedRequest {
            body: crate::entry::StoredBody::from_bytes(
                json!({"messages": vec![json!({"content": "0123456789"}); 100_000]})
                    .to_string()
                    .as_bytes(),
            ),
            ..request
        };
        let echoed = echoed_request(&many).to_string();
        assert!(echoed.len() < 1000, "{echoed}");
        assert!(echoed.contains("omitted"));
    }
}
