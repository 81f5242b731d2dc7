//! The top-level `usage` of a non-streaming chat completion, found without parsing the rest.
//!
//! The gateway and the load generator read only `usage` from a response they otherwise pass
//! on untouched. serde reading it as [`UsageSummary`] still decodes every key and skips every
//! value of the whole body, a cost that grows with the answer (docs/benchmarks-log.md has the
//! measurement). This walks the bytes once, tracking strings and nesting, and hands only the
//! `usage` value to serde.
//!
//! It checks the body's structure (one object, balanced and matching brackets, closed
//! strings, nothing after the object), which catches what upstreams actually send instead of
//! a completion: HTML error pages, truncated bodies. Unlike a full parse it does not check
//! literals, numbers or separators outside `usage`: the body is forwarded as it came.

use crate::chat::{PromptTokensDetails, Usage, UsageSummary};

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
        let mut usage: Option<Option<Usage>> = None;
        walk_object(body, |key, escaped, after_key| {
            if !is_usage_key(key, escaped) {
                return Ok(None);
            }
            if usage.is_some() {
                return Err(NotACompletion("duplicate field `usage`".into()));
            }
            let (value, next) = usage_value(body, after_key)?;
            usage = Some(value);
            Ok(Some(next))
        })?;
        Ok(UsageSummary {
            usage: usage.flatten(),
        })
    }
}

/// What the gateway reads from a stream chunk once the stream's first token has been seen:
/// its usage, whether it carries an error, and whether it has no choices (the usage-only
/// chunk at the end of a stream). The same answer as serde's [`ChunkSummary`] on these
/// fields, read by a search of the bytes or the structural walk instead of a full parse;
/// `None` whenever the walk is not sure (an escaped or repeated key, `choices` that is not an
/// array, anything malformed), and the caller lets serde decide. A chunk that mentions
/// neither `usage` (other than as null) nor `error` says nothing, without a walk, malformed
/// or not.
///
/// [`ChunkSummary`]: crate::chat::ChunkSummary
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkShape {
    pub usage: Option<Usage>,
    pub has_error: bool,
    /// Usage and no choices: the chunk a stream ends with when usage was asked for.
    pub usage_only: bool,
}

impl ChunkShape {
    pub fn scan(chunk: &[u8]) -> Option<ChunkShape> {
        if says_nothing(chunk) {
            return Some(ChunkShape {
                usage: None,
                has_error: false,
                usage_only: false,
            });
        }
        let (mut usage, mut error, mut choices) = (None, None, None);
        let walked = walk_object(chunk, |key, escaped, after_key| {
            let unsure = || NotACompletion(String::new());
            if escaped {
                return Err(unsure());
            }
            let value = value_start(chunk, after_key).ok_or_else(unsure)?;
            let seen = match key {
                b"usage" => {
                    let (u, next) = usage_value(chunk, after_key)?;
                    if usage.replace(u).is_some() {
                        return Err(unsure());
                    }
                    return Ok(Some(next));
                }
                b"error" => error.replace(!chunk[value..].starts_with(b"null")),
                b"choices" => {
                    if chunk.get(value) != Some(&b'[') {
                        return Err(unsure());
                    }
                    let inner = skip_whitespace(chunk, value + 1);
                    choices.replace(chunk.get(inner) == Some(&b']'))
                }
                _ => None,
            };
            match seen {
                Some(_) => Err(unsure()),
                None => Ok(None),
            }
        });
        walked.ok()?;
        let usage = usage.flatten();
        Some(ChunkShape {
            usage_only: usage.is_some() && choices.unwrap_or(true),
            usage,
            has_error: error.unwrap_or(false),
        })
    }
}

/// Whether a chunk certainly has no `usage` (or a null one) and no `error`, found by
/// searching its bytes instead of walking them: the case of nearly every chunk of a stream.
/// A top-level key is one of the places its name appears in quotes, unless it is written
/// with `\u` escapes (the only escape that spells letters); so a chunk without `\u`, without
/// `"error"`, and whose every `"usage"` is followed by `: null`, says nothing the gateway
/// counts. Anything else is walked.
fn says_nothing(chunk: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: setting up a searcher costs more than searching a chunk.
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
    if ESCAPE.find(chunk).is_some() || ERROR.find(chunk).is_some() {
        return false;
    }
    USAGE.find_iter(chunk).all(|at| {
        let after = at + USAGE.needle().len();
        value_start(chunk, after).is_some_and(|v| chunk[v..].starts_with(b"null"))
    })
}

/// Where the value after a key (`: VALUE`, from `i`) starts.
fn value_start(body: &[u8], i: usize) -> Option<usize> {
    let colon = skip_whitespace(body, i);
    (body.get(colon) == Some(&b':')).then(|| skip_whitespace(body, colon + 1))
}

/// Walks `body`, which must be one JSON object, checking its structure (closed strings,
/// balanced and matching brackets, nothing after it). At each top-level key it calls
/// `at_key(key without quotes, whether the key holds an escape, index after the key)`, which
/// either reads the value itself and returns the index after it, or returns `None` to let
/// the walk step over the value.
fn walk_object(
    body: &[u8],
    mut at_key: impl FnMut(&[u8], bool, usize) -> Result<Option<usize>, NotACompletion>,
) -> Result<(), NotACompletion> {
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
    while i < body.len() {
        let b = body[i];
        if !STRUCTURAL[b as usize] {
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                let Some((end, escaped)) = string_end(body, i + 1) else {
                    return fail(format!("a string starting at byte {i} is not closed"));
                };
                if depth == 1 && key_next {
                    key_next = false;
                    if let Some(next) = at_key(&body[i + 1..end], escaped, end + 1)? {
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
                    return Ok(());
                }
            }
            b',' if depth == 1 => key_next = true,
            _ => {}
        }
        i += 1;
    }
    fail("the object is not closed (truncated body?)".into())
}

fn skip_whitespace(body: &[u8], mut i: usize) -> usize {
    while i < body.len() && matches!(body[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// The index of the quote that closes the string whose contents start at `i`, and whether
/// the string holds an escape.
// Called for every string of every answer: left out of line (as the compiler chose after
// unrelated changes elsewhere) the scan cost ~500 more instructions a request.
#[inline(always)]
fn string_end(body: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let j = i + quote_or_backslash(body.get(i..)?)?;
        if body[j] == b'"' {
            return Some((j, escaped));
        }
        // An escape: the next byte is never the end of the string.
        escaped = true;
        i = j + 2;
    }
}

/// How far into `s` the scan looks eight bytes at a time before `memchr` takes over.
const SHORT_STRING: usize = 64;

/// The index of the first `"` or `\` in `s`. Most strings of a completion are keys and
/// short values, for which setting up `memchr`'s vector loop costs more than the search:
/// their first bytes are tested eight at a time in a register, and only a longer string
/// (the content) goes on to `memchr`.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero exactly where `(x - ONES) & !x & HIGHS` has its high bit, up to
    // the first such byte; bytes above it may be marked falsely, so only the lowest counts.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let head = &s[..s.len().min(SHORT_STRING)];
    let mut words = head.chunks_exact(8);
    for (k, chunk) in words.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits =
            zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return Some(k * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let tail = words.remainder();
    let tail_start = head.len() - tail.len();
    if let Some(p) = tail.iter().position(|&b| b == b'"' || b == b'\\') {
        return Some(tail_start + p);
    }
    let rest = s.get(SHORT_STRING..)?;
    memchr::memchr2(b'"', b'\\', rest).map(|p| SHORT_STRING + p)
}

/// `key` is a key without its quotes; escapes (`"\u0075sage"`) are decoded as serde would.
fn is_usage_key(key: &[u8], escaped: bool) -> bool {
    if escaped {
        let mut quoted = Vec::with_capacity(key.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(key);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "usage")
    } else {
        key == b"usage"
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
    if let Some((usage, next)) = plain_usage(body, start) {
        return Ok((Some(usage), next));
    }
    let mut values = serde_json::Deserializer::from_slice(&body[start..]).into_iter();
    match values.next() {
        Some(Ok(v)) => Ok((v, start + values.byte_offset())),
        Some(Err(e)) => Err(NotACompletion(format!("`usage`: {e}"))),
        None => Err(NotACompletion(
            "the object is not closed (truncated body?)".into(),
        )),
    }
}

/// The common shape of `usage`, read without serde: an object of the three counts and
/// optionally `prompt_tokens_details` with `cached_tokens`, plain integers, no escapes. Returns
/// `None` on anything else (other keys, duplicates, a missing count, a number serde would
/// read differently or refuse), and the caller lets serde decide; so the answer is always
/// serde's. The usual shape is worth a path of its own because every completion carries it
/// (docs/benchmarks-log.md has the measured saving).
fn plain_usage(body: &[u8], start: usize) -> Option<(Usage, usize)> {
    let mut counts: [Option<u64>; 3] = [None; 3];
    let mut details: Option<Option<PromptTokensDetails>> = None;
    let end = plain_object(body, start, |key, body, at| {
        let slot = match key {
            b"prompt_tokens" => 0,
            b"completion_tokens" => 1,
            b"total_tokens" => 2,
            b"prompt_tokens_details" if details.is_none() => {
                if body[at..].starts_with(b"null") {
                    details = Some(None);
                    return Some(at + 4);
                }
                let mut cached = None;
                let next = plain_object(body, at, |key, body, at| match key {
                    b"cached_tokens" if cached.is_none() => {
                        let (n, next) = plain_u64(body, at)?;
                        cached = Some(n);
                        Some(next)
                    }
                    _ => None,
                })?;
                details = Some(Some(PromptTokensDetails {
                    cached_tokens: cached.unwrap_or(0),
                }));
                return Some(next);
            }
            _ => return None,
        };
        if counts[slot].is_some() {
            return None;
        }
        let (n, next) = plain_u64(body, at)?;
        counts[slot] = Some(n);
        Some(next)
    })?;
    let usage = Usage {
        prompt_tokens: counts[0]?,
        completion_tokens: counts[1]?,
        total_tokens: counts[2]?,
        prompt_tokens_details: details.flatten(),
    };
    Some((usage, end))
}

/// Walks the object at `i` whose keys are plain (no escapes), handing each key and the index
/// of its value to `value`, which returns the index after the value. Returns the index after
/// the closing brace.
fn plain_object(
    body: &[u8],
    i: usize,
    mut value: impl FnMut(&[u8], &[u8], usize) -> Option<usize>,
) -> Option<usize> {
    if body.get(i) != Some(&b'{') {
        return None;
    }
    let mut i = skip_whitespace(body, i + 1);
    if body.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let end = i + 1 + quote_or_backslash(body.get(i + 1..)?)?;
        if body[end] != b'"' {
            return None;
        }
        let colon = skip_whitespace(body, end + 1);
        if body.get(colon) != Some(&b':') {
            return None;
        }
        let at = skip_whitespace(body, colon + 1);
        i = skip_whitespace(body, value(&body[i + 1..end], body, at)?);
        match body.get(i)? {
            b',' => i = skip_whitespace(body, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// A JSON integer that fits `u64`, as serde reads it: no sign, no leading zero, and followed
/// by neither a fraction nor an exponent.
fn plain_u64(body: &[u8], i: usize) -> Option<(u64, usize)> {
    let digits = body
        .get(i..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || (digits > 1 && body[i] == b'0') {
        return None;
    }
    let end = i + digits;
    if matches!(body.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &body[i..end] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, end))
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

    /// The serde-free reading of `usage` must give serde's answer, or leave it to serde.
    #[test]
    fn plain_usage_agrees_with_serde() {
        let usages = [
            r#"{"prompt_tokens":8,"completion_tokens":16,"total_tokens":24,"prompt_tokens_details":{"cached_tokens":0}}"#,
            r#"{ "total_tokens" : 3 , "prompt_tokens" : 1 ,"completion_tokens":2 }"#,
            "{\n\t\"prompt_tokens\": 1,\r\n \"completion_tokens\": 2, \"total_tokens\": 3\n}",
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{}}"#,
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":0,"total_tokens":0}"#,
            // Left to serde: it ignores unknown keys, decodes escapes, reads these numbers.
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"completion_tokens_details":{"reasoning_tokens":0}}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1,"audio_tokens":0}}"#,
            r#"{"prompt_\u0074okens":1,"completion_tokens":2,"total_tokens":3}"#,
            // serde refuses these; so must the scan.
            r#"{"prompt_tokens":1,"completion_tokens":2}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":01,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":1.0,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":1e2,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":-1,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,}"#,
            r#"{"prompt_tokens":1 "completion_tokens":2,"total_tokens":3}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3x}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":nul}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}"#,
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":null,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":"1","completion_tokens":2,"total_tokens":3}"#,
        ];
        for usage in usages {
            let body = format!(r#"{{"id":"c1","usage":{usage},"object":"chat.completion"}}"#);
            match (scan(&body), serde(&body)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{usage}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{usage}: scan {a:?}, serde {b:?}"),
            }
        }
        let plain = plain_usage(usages[0].as_bytes(), 0).expect("the common shape");
        assert_eq!(plain.1, usages[0].len());
        assert_eq!(plain.0.prompt_tokens_details.unwrap().cached_tokens, 0);
        assert!(plain_usage(usages[6].as_bytes(), 0).is_none());
    }

    #[test]
    fn quote_or_backslash_finds_the_first_of_either() {
        // Every length across the word, tail and `memchr` parts, the target at every place,
        // among bytes that differ from `"` and `\` in one bit or only in the high bit.
        let fillers = [
            b'a',
            b'"' ^ 1,
            b'\\' ^ 4,
            b'"' | 0x80,
            b'\\' | 0x80,
            0xff,
            0,
        ];
        for len in 0..150 {
            for filler in fillers {
                let mut s = vec![filler; len];
                assert_eq!(quote_or_backslash(&s), None, "{len} {filler}");
                for at in 0..len {
                    for target in [b'"', b'\\'] {
                        s[at] = target;
                        if at + 3 < len {
                            s[at + 3] = b'"';
                        }
                        assert_eq!(quote_or_backslash(&s), Some(at), "{len} {filler} {at}");
                        s.fill(filler);
                    }
                }
            }
        }
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

    /// The chunk walk against serde's `ChunkSummary`, on chunks drawn at random from the
    /// parts real streams are made of (and some they are not): whenever both answer, they
    /// agree; and the walk answers for every ordinary chunk.
    mod chunk_shape {
        use super::super::ChunkShape;
        use crate::chat::ChunkSummary;
        use proptest::prelude::*;

        fn member() -> impl Strategy<Value = String> {
            let usage = prop_oneof![
                Just(r#""usage":null"#.to_owned()),
                (0u64..5000, 0u64..5000).prop_map(|(p, c)| format!(
                    r#""usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}"#,
                    p + c
                )),
                Just(
                    r#""usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"x":[1]}"#
                        .to_owned()
                ),
                Just(r#""usage":"many""#.to_owned()),
            ];
            let choices = prop_oneof![
                Just(r#""choices":[]"#.to_owned()),
                Just(r#""choices":[ ]"#.to_owned()),
                "[a-z \\\"{}]{0,12}".prop_map(|t| format!(
                    r#""choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]"#,
                    serde_json::to_string(&t).unwrap_or_default()
                )),
                Just(
                    r#""choices":[{"index":0,"delta":{"role":"assistant","content":""}}]"#
                        .to_owned()
                ),
                Just(r#""choices":{}"#.to_owned()),
                Just(r#""choices":null"#.to_owned()),
            ];
            let error = prop_oneof![
                Just(r#""error":null"#.to_owned()),
                Just(r#""error":{"message":"overloaded","type":"server_error"}"#.to_owned()),
                Just(r#""error":"boom""#.to_owned()),
            ];
            let other = prop_oneof![
                Just(r#""id":"chatcmpl-1""#.to_owned()),
                Just(r#""object":"chat.completion.chunk""#.to_owned()),
                Just(r#""created":1700000000"#.to_owned()),
                Just(r#""model":"m""#.to_owned()),
                Just(r#""x":{"usage":{"prompt_tokens":9},"choices":[1],"error":1}"#.to_owned()),
                Just(r#""\u0075sage":null"#.to_owned()),
                Just(
                    r#""\u0075sage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#
                        .to_owned()
                ),
                Just(r#""\u0065rror":{"message":"x"}"#.to_owned()),
            ];
            prop_oneof![3 => usage, 3 => choices, 2 => error, 4 => other]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
            #[test]
            fn agrees_with_serde(members in proptest::collection::vec(member(), 0..6), spaced in any::<bool>()) {
                let sep = if spaced { " , " } else { "," };
                let body = format!("{{{}}}", members.join(sep));
                let walked = ChunkShape::scan(body.as_bytes());
                let parsed = serde_json::from_str::<ChunkSummary>(&body);
                if let (Some(w), Ok(p)) = (&walked, &parsed) {
                    prop_assert_eq!(&w.usage, &p.usage, "{}", body);
                    prop_assert_eq!(w.has_error, p.error.is_some(), "{}", body);
                    prop_assert_eq!(w.usage_only, p.choices.is_empty() && p.usage.is_some(), "{}", body);
                }
                // An ordinary chunk (no escaped, repeated or odd keys) is always answered.
                let plain = members.iter().all(|m| !m.contains("\\u00") && !m.contains("\"many\"")
                    && !m.contains(r#""choices":{}"#) && !m.contains(r#""choices":null"#));
                let mut keys: Vec<&str> = members.iter().filter_map(|m| m.split(':').next()).collect();
                keys.sort_unstable();
                let distinct = keys.windows(2).all(|w| w[0] != w[1]);
                if plain && distinct && parsed.is_ok() {
                    prop_assert!(walked.is_some(), "{}", body);
                }
            }
        }

        #[test]
        fn a_mock_chunk_and_the_usage_chunk_are_read() {
            let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" tea"},"finish_reason":null}],"usage":null}"#;
            let shape = ChunkShape::scan(chunk.as_bytes()).unwrap();
            assert_eq!(
                (shape.usage, shape.has_error, shape.usage_only),
                (None, false, false)
            );
            let last = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
            let shape = ChunkShape::scan(last.as_bytes()).unwrap();
            assert!(shape.usage_only);
            assert_eq!(shape.usage.unwrap().total_tokens, 7);
            // Mentioning neither key, it says nothing, whatever it is (it is forwarded as it
            // came); one that mentions them must be a well-formed object to be read.
            assert_eq!(
                ChunkShape::scan(b"not json").map(|s| s.usage_only),
                Some(false)
            );
            assert_eq!(ChunkShape::scan(br#"{"usage":{"prompt_tokens":1"#), None);
            assert_eq!(ChunkShape::scan(br#"{"error":{}"#), None);
        }
    }
}
