//! The top-level `usage` of a non-streaming chat completion, found without parsing the rest.
//!
//! The gateway and the load generator read only `usage` from a response they otherwise pass
//! on untouched. serde reading it as [`UsageSummary`] still decodes every key and skips every
//! value of the whole body, which was 13 % of the gateway's instructions per proxied request
//! (docs/benchmarks.md). This walks the bytes once, tracking strings and nesting, and hands
//! only the `usage` value to serde.
//!
//! It checks the body's structure (one object, balanced and matching brackets, closed
//! strings, nothing after the object), which catches what upstreams actually send instead of
//! a completion: HTML error pages, truncated bodies. Unlike a full parse it does not check
//! literals, numbers or separators outside `usage`: the body is forwarded as it came.

use crate::chat::{Usage, UsageSummary};

/// Containers nested deeper than this are refused, as serde_json refuses them.
const MAX_DEPTH: u32 = 128;

/// The bytes that matter outside strings; the scan steps over all others one table look-up
/// at a time, and over the inside of strings with `memchr`.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b',' as usize] = true;
    t
};

/// Why a body is not a chat completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotACompletion(String);

impl UsageSummary {
    /// The top-level `usage` of `body`, which must be one JSON object.
    pub fn from_body(body: &[u8]) -> Result<UsageSummary, NotACompletion> {
        let fail = |m: String| Err(NotACompletion(m));
        let mut i = skip_whitespace(body, 0);
        if body.get(i) != Some(&b'{') {
            return fail("expected a JSON object".into());
        }
        // Bit d of `objects` says whether the container at depth d+1 is an object.
        let mut objects: u128 = 0;
        let mut depth: u32 = 0;
        // At depth 1, the next string is a key (after `{` or `,`), not a value.
        let mut key_next = false;
        let mut usage: Option<Option<Usage>> = None;
        while i < body.len() {
            let b = body[i];
            if !STRUCTURAL[b as usize] {
                i += 1;
                continue;
            }
            match b {
                b'"' => {
                    let Some(end) = string_end(body, i + 1) else {
                        return fail(format!("a string starting at byte {i} is not closed"));
                    };
                    if depth == 1 && key_next {
                        key_next = false;
                        if is_usage_key(&body[i..=end]) {
                            if usage.is_some() {
                                return fail("duplicate field `usage`".into());
                            }
                            let (value, next) = usage_value(body, end + 1)?;
                            usage = Some(value);
                            i = next;
                            continue;
                        }
                    }
                    i = end + 1;
                    continue;
                }
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return fail(format!("nested more than {MAX_DEPTH} levels deep"));
                    }
                    if open == b'{' {
                        objects |= 1 << depth;
                    } else {
                        objects &= !(1 << depth);
                    }
                    depth += 1;
                    key_next = depth == 1;
                }
                close @ (b'}' | b']') => {
                    let Some(d) = depth.checked_sub(1) else {
                        return fail(format!("unexpected `{}` at byte {i}", close as char));
                    };
                    let is_object = objects & (1 << d) != 0;
                    if is_object != (close == b'}') {
                        return fail(format!("mismatched `{}` at byte {i}", close as char));
                    }
                    depth = d;
                    if depth == 0 {
                        if skip_whitespace(body, i + 1) != body.len() {
                            return fail(format!("data after the object at byte {}", i + 1));
                        }
                        return Ok(UsageSummary {
                            usage: usage.flatten(),
                        });
                    }
                }
                b',' if depth == 1 => key_next = true,
                _ => {}
            }
            i += 1;
        }
        fail("the object is not closed (truncated body?)".into())
    }
}

fn skip_whitespace(body: &[u8], mut i: usize) -> usize {
    while i < body.len() && matches!(body[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// The index of the quote that closes the string whose contents start at `i`.
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', body.get(i..)?)?;
        if body[j] == b'"' {
            return Some(j);
        }
        // An escape: the next byte is never the end of the string.
        i = j + 2;
    }
}

/// `quoted` is a key with its quotes; escapes (`"\u0075sage"`) are decoded as serde would.
fn is_usage_key(quoted: &[u8]) -> bool {
    let raw = &quoted[1..quoted.len() - 1];
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == "usage")
    } else {
        raw == b"usage"
    }
}

/// Parses `: VALUE` from `i`; returns the value and the index just after it.
fn usage_value(body: &[u8], i: usize) -> Result<(Option<Usage>, usize), NotACompletion> {
    let colon = skip_whitespace(body, i);
    if body.get(colon) != Some(&b':') {
        return Err(NotACompletion(format!(
            "expected `:` after the key `usage` at byte {colon}"
        )));
    }
    let start = skip_whitespace(body, colon + 1);
    let mut values = serde_json::Deserializer::from_slice(&body[start..]).into_iter();
    match values.next() {
        Some(Ok(v)) => Ok((v, start + values.byte_offset())),
        Some(Err(e)) => Err(NotACompletion(format!("`usage`: {e}"))),
        None => Err(NotACompletion(
            "the object is not closed (truncated body?)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(body: &str) -> Result<Option<Usage>, String> {
        serde_json::from_str::<UsageSummary>(body)
            .map(|s| s.usage)
            .map_err(|e| e.to_string())
    }

    fn scan(body: &str) -> Result<Option<Usage>, String> {
        UsageSummary::from_body(body.as_bytes())
            .map(|s| s.usage)
            .map_err(|e| e.to_string())
    }

    const USAGE: &str = r#"{"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}"#;

    #[test]
    fn agrees_with_serde_on_completions() {
        let bodies = [
            format!(r#"{{"id":"c1","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}}}}],"usage":{USAGE}}}"#),
            format!(r#"{{"usage":{USAGE},"id":"c1","choices":[]}}"#),
            format!(r#"  {{ "id" : "x" , "usage" : {USAGE} , "object" : "chat.completion" }}  "#),
            format!("{{\n\t\"usage\":\n{USAGE}\n}}\n"),
            r#"{"id":"c1","usage":null}"#.to_owned(),
            r#"{"id":"c1","choices":[]}"#.to_owned(),
            "{}".to_owned(),
            // `usage` below the top level, or as a value, is not the completion's usage.
            r#"{"choices":[{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}]}"#.to_owned(),
            format!(r#"{{"x":{{"usage":1}},"finish":"usage","usage":{USAGE}}}"#),
            // Quotes, brackets and the key inside strings.
            format!(r#"{{"content":"a \"usage\": {{[\\","usage":{USAGE},"k\"}}":"]"}}"#),
            // An escaped key is the same key.
            format!(r#"{{"\u0075sage":{USAGE}}}"#),
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#.to_owned(),
            r#"{"a":[1,[2,{"b":[]}]],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#.to_owned(),
        ];
        for body in &bodies {
            let s = serde(body);
            assert!(s.is_ok(), "serde refuses {body}: {s:?}");
            assert_eq!(scan(body), s, "{body}");
        }
        assert_eq!(scan(&bodies[0]).unwrap().unwrap().total_tokens, 12);
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        let bad = [
            ("", "expected a JSON object"),
            (
                "<html><body>502 Bad Gateway</body></html>",
                "expected a JSON object",
            ),
            ("[1, 2]", "expected a JSON object"),
            (r#"{"id":"c1","choices":[{"index":0"#, "not closed"),
            (r#"{"id":"c1"#, "not closed"),
            (r#"{"id":"c1"} {"id":"c2"}"#, "data after the object"),
            (r#"{"a":[1}"#, "mismatched"),
            (r#"{"a":{1]}"#, "mismatched"),
            (r#"{"usage":{"prompt_tokens":"five"}}"#, "`usage`"),
            (r#"{"usage" {}}"#, "expected `:`"),
            (r#"{"usage":null,"usage":null}"#, "duplicate field `usage`"),
            (r#"{"usage":"#, "truncated"),
        ];
        for (body, why) in bad {
            let err = scan(body).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
            assert!(serde(body).is_err(), "serde accepts {body}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(scan(&deep).unwrap_err().contains("nested"));
    }
}
