//! Reading the config file so that every mistake in it is found in one pass, each with the
//! line it is on.
//!
//! Serde stops at the first error, so a typo on line 3 could hide behind a bad value on
//! line 10 and each fix revealed the next. Instead: the TOML is parsed with recovery (every
//! syntax error, and a best-effort document), then deserialised into [`Config`] repeatedly —
//! each error is recorded against the entry it points at, that entry is taken out, and the
//! rest is tried again. Taking out an entry leaves its field at its default, so what remains
//! is still checked by [`Config::resolve`], and the key → line map built here places
//! resolve's problems in the file too.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Config, ConfigProblem};

/// Keys an endpoint accepts only to refuse them with a better message than "unknown".
const REFUSED_KEYS: &[&str] = &["api_key"];

/// Every file that needs more rounds than this has more problems than anyone reads at once.
const MAX_ROUNDS: usize = 64;

/// What reading the file found, kept inside [`Config`] until it is resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceFindings {
    pub problems: Vec<ConfigProblem>,
    /// Line of every key in the file (`models.gpt.endpoints[0].url` → 12).
    key_lines: BTreeMap<String, usize>,
    /// The file could not be read far enough to check its values (a problem no entry can be
    /// blamed for): resolve reports only what was found here.
    pub incomplete: bool,
}

impl SourceFindings {
    /// The line of `key`, or of the nearest enclosing key the file has.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some(line) = self.key_lines.get(k) {
                return Some(*line);
            }
            k = &k[..k.rfind(['.', '['])?];
        }
    }

    /// Whether a problem with `key` was already reported here (for itself or an enclosing
    /// key): the entry was taken out, so resolve would only report it again as missing.
    pub fn covers(&self, key: &str) -> bool {
        self.problems.iter().any(|p| {
            !p.key.is_empty()
                && key.starts_with(&p.key)
                && matches!(key.as_bytes().get(p.key.len()), None | Some(b'.' | b'['))
        })
    }
}

/// Parses `text` into a [`Config`], collecting every problem instead of stopping at one.
pub(crate) fn read(text: &str) -> Config {
    let lines = LineIndex::new(text);
    let (mut doc, syntax_errors) = DeTable::parse_recoverable(text);
    let mut findings = SourceFindings::default();
    for e in &syntax_errors {
        findings.problems.push(ConfigProblem {
            key: String::new(),
            line: e.span().map(|s| lines.line(s.start)),
            message: format!("TOML syntax: {}", e.message().trim_end()),
        });
    }
    let mut config = None;
    for _ in 0..MAX_ROUNDS {
        let attempt = Config::deserialize(toml::de::Deserializer::from(doc.clone()));
        let e = match attempt {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => e,
        };
        let entry = e.span().and_then(|span| {
            let mut path = Vec::new();
            locate(doc.get_ref(), &span, &mut path).then_some(path)
        });
        let Some(path) = entry.filter(|p| !p.is_empty()) else {
            findings.problems.push(ConfigProblem {
                key: String::new(),
                line: e.span().map(|s| lines.line(s.start)),
                message: e.message().trim_end().to_owned(),
            });
            findings.incomplete = true;
            break;
        };
        let key = key_name(&path);
        let line = line_of_entry(doc.get_ref(), &path, &lines);
        findings.problems.push(ConfigProblem {
            message: explain(e.message(), &path),
            key,
            line,
        });
        remove(doc.get_mut(), &path);
    }
    let mut config = config.unwrap_or_else(|| {
        findings.incomplete = true;
        Config::default()
    });
    collect_lines(doc.get_ref(), "", &lines, &mut findings.key_lines);
    config.source = findings;
    config
}

/// One step from a table into the document: a key, or an element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn key_name(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&super::toml_key(k));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Finds the innermost table entry whose key or value holds `span`, and writes the path to
/// it. Entries inside arrays are reached through their index, but an array element itself is
/// never the answer: the entry holding the array is (taking out one element would renumber
/// the rest, and every later problem would name the wrong one).
fn locate(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<Step>) -> bool {
    for (key, value) in table.iter() {
        let depth = path.len();
        path.push(Step::Key(key.get_ref().to_string()));
        if locate_in(value, span, path) {
            return true;
        }
        if contains(&key.span(), span) || contains(&value.span(), span) {
            return true;
        }
        path.truncate(depth);
    }
    false
}

fn locate_in(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut Vec<Step>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => locate(t, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                if locate_in(item, span, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The line where the entry at `path` is written: its key (the `[[...]]` header for an array
/// element).
fn line_of_entry(root: &DeTable<'_>, path: &[Step], lines: &LineIndex) -> Option<usize> {
    let mut table = root;
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut at = None;
    for step in path {
        match step {
            Step::Key(k) => {
                let (key, v) = table.get_key_value(k.as_str())?;
                at = Some(key.span().start);
                value = Some(v);
            }
            Step::Index(i) => {
                let DeValue::Array(items) = value?.get_ref() else {
                    return None;
                };
                let item = items.get(*i)?;
                at = Some(item.span().start);
                value = Some(item);
            }
        }
        if let Some(DeValue::Table(t)) = value.map(Spanned::get_ref) {
            table = t;
        }
    }
    at.map(|pos| lines.line(pos))
}

fn remove(root: &mut DeTable<'_>, path: &[Step]) {
    let Some((Step::Key(last), parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    let mut steps = parents.iter().peekable();
    while let Some(step) = steps.next() {
        let Step::Key(k) = step else { return };
        let Some(value) = table.get_mut(k.as_str()) else {
            return;
        };
        let mut value = value.get_mut();
        while let Some(Step::Index(i)) = steps.peek() {
            steps.next();
            let DeValue::Array(items) = value else { return };
            let Some(item) = items.get_mut(*i) else {
                return;
            };
            value = item.get_mut();
        }
        let DeValue::Table(t) = value else { return };
        table = t;
    }
    table.remove(last.as_str());
}

fn collect_lines(
    table: &DeTable<'_>,
    prefix: &str,
    lines: &LineIndex,
    out: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            super::toml_key(key.get_ref())
        } else {
            format!("{prefix}.{}", super::toml_key(key.get_ref()))
        };
        out.insert(name.clone(), lines.line(key.span().start));
        collect_value_lines(value, &name, lines, out);
    }
}

fn collect_value_lines(
    value: &Spanned<DeValue<'_>>,
    name: &str,
    lines: &LineIndex,
    out: &mut BTreeMap<String, usize>,
) {
    match value.get_ref() {
        DeValue::Table(t) => collect_lines(t, name, lines, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let element = format!("{name}[{i}]");
                out.insert(element.clone(), lines.line(item.span().start));
                collect_value_lines(item, &element, lines, out);
            }
        }
        _ => {}
    }
}

/// Serde's message, said the way a config user needs it: an unknown key gets the nearest
/// known key as a suggestion and the list of keys allowed there.
fn explain(message: &str, path: &[Step]) -> String {
    let message = message.trim_end();
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return format!("{found} is not allowed here; write {}", plain(expected));
        }
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let known: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !REFUSED_KEYS.contains(k))
        .collect();
    let section = match path.len() {
        0 | 1 => "at the top level".to_owned(),
        n => format!("in `{}`", key_name(&path[..n - 1])),
    };
    let mut out = format!("unknown key `{unknown}` {section}");
    match nearest(unknown, &known) {
        Some(near) => out.push_str(&format!("; did you mean `{near}`?")),
        None => out.push('.'),
    }
    if known.is_empty() {
        out.push_str(" This table takes no keys.");
    } else {
        out.push_str(&format!(" Keys allowed here: {}.", known.join(", ")));
    }
    out
}

/// Serde's name of an expected type, in the words of a TOML file.
fn plain(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more, no quotes)".into(),
        "i64" | "i32" => "a whole number (no quotes)".into(),
        "a boolean" => "true or false (no quotes)".into(),
        "a string" => "a quoted string".into(),
        "a sequence" => "a list (`[...]`, or `[[...]]` sections)".into(),
        "a map" => "a table (`[section]` or `{ key = value }`)".into(),
        s if s.starts_with("struct ") => "a table (`[section]` or `{ key = value }`)".into(),
        other => other.to_owned(),
    }
}

/// The known key within two edits of `unknown` (a typo), if one is.
fn nearest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Byte offset → 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = r#"[server]
listen = "127.0.0.1:8080"
drain_timeout = "30s"
workers = 2

[defaults.timeouts]
connect = "5s"

[models.gpt]
[[models.gpt.endpoints]]
name = "one"
url = "http://127.0.0.1:9/v1"
timeouts = { total = "30s" }
connections = { max_idle = 4 }
"#;

    proptest! {
        /// Whatever the bytes, reading never panics, and it finds a problem exactly when
        /// the strict, stop-at-the-first-error deserialisation fails: the recovery adds
        /// reports, never changes the verdict.
        #[test]
        fn same_verdict_as_the_strict_parse(
            cut in 0..VALID.len(),
            insert in "[a-z_=\"\\[\\]{}. 0-9\n]{0,12}",
        ) {
            let mut text = VALID.to_owned();
            let at = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.insert_str(at, &insert);
            let lenient = read(&text);
            let strict = toml::from_str::<Config>(&text);
            prop_assert_eq!(
                lenient.source.problems.is_empty(),
                strict.is_ok(),
                "{:?} / {:?}",
                lenient.source.problems,
                strict.err()
            );
            for p in &lenient.source.problems {
                let lines = text.lines().count().max(1) + 1;
                prop_assert!(p.line.is_none_or(|l| (1..=lines).contains(&l)), "{:?}", p);
            }
        }
    }

    #[test]
    fn lines_and_suggestions() {
        let index = LineIndex::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 4, 5, 6].map(|o| index.line(o)),
            [1, 1, 2, 2, 3, 4]
        );
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(nearest("totl", &["connect", "total"]), Some("total"));
        assert_eq!(nearest("zzzz", &["connect", "total"]), None);
    }
}
