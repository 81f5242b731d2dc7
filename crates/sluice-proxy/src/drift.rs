//! Drift items: what a comparison of a recording with a newer answer found, in the form
//! written to `DIR/.sluice/drift.json` — values truncated, secrets redacted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::FieldDrift;
use crate::fields::truncate_strings;
use crate::redact::SecretScanner;

/// How many differing fields one item lists; the first ones (status, counts, text) are the
/// telling ones and a drifted stream can differ in hundreds of fields.
pub const MAX_ITEM_DIFFERENCES: usize = 20;

/// String values longer than this (in characters) are cut in the report.
pub const MAX_VALUE_CHARS: usize = 200;

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftVerdict {
    /// Status and every compared field are equal.
    Same,
    /// At least one compared field differs.
    Drifted,
    /// `diff` mode found no recording to compare with.
    NoRecording,
}

impl DriftVerdict {
    pub const ALL: [DriftVerdict; 3] = [
        DriftVerdict::Same,
        DriftVerdict::Drifted,
        DriftVerdict::NoRecording,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftVerdict::Same => "same",
            DriftVerdict::Drifted => "drifted",
            DriftVerdict::NoRecording => "no-recording",
        }
    }
}

/// What was compared with the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftSource {
    /// A live answer in `diff` mode.
    Live,
    /// A new recording replacing this file (`record`, `read-old-write-new`).
    Overwrite,
}

impl DriftSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftSource::Live => "live",
            DriftSource::Overwrite => "overwrite",
        }
    }
}

/// One compared request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftItem {
    /// The recording compared with (for `no-recording`: the file it would be).
    pub file: String,
    pub key: String,
    pub method: String,
    /// `scheme://host:port` of a forward-proxy or CONNECT request; absent for reverse routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub path: String,
    /// The request's model and the start of its last message (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub verdict: DriftVerdict,
    pub source: DriftSource,
    /// How many fields differ in all; `differences` lists the first
    /// [`MAX_ITEM_DIFFERENCES`].
    pub differences_total: usize,
    pub differences: Vec<FieldDrift>,
}

/// The fields of an item, before it is made safe to write.
#[derive(Debug, Clone)]
pub struct ComparedRequest {
    pub file: String,
    pub key: String,
    pub method: String,
    pub origin: Option<String>,
    pub path: String,
    pub label: Option<String>,
    pub source: DriftSource,
}

impl DriftItem {
    /// An item for `compared`: `None` differences means there was no recording. Long
    /// values are truncated and any string holding a secret `scanner` knows is replaced by
    /// `<redacted: WHAT>`.
    pub fn new(
        compared: ComparedRequest,
        differences: Option<Vec<FieldDrift>>,
        scanner: &SecretScanner,
    ) -> DriftItem {
        let (verdict, differences) = match differences {
            None => (DriftVerdict::NoRecording, Vec::new()),
            Some(d) if d.is_empty() => (DriftVerdict::Same, d),
            Some(d) => (DriftVerdict::Drifted, d),
        };
        let differences_total = differences.len();
        let differences = differences
            .into_iter()
            .take(MAX_ITEM_DIFFERENCES)
            .map(|mut d| {
                d.recorded = scrub(d.recorded, scanner);
                d.live = scrub(d.live, scanner);
                d.path = scrub_str(d.path, scanner);
                d
            })
            .collect();
        DriftItem {
            file: compared.file,
            key: compared.key,
            method: compared.method,
            origin: compared.origin,
            path: scrub_str(compared.path, scanner),
            label: compared.label.map(|l| scrub_str(l, scanner)),
            verdict,
            source: compared.source,
            differences_total,
            differences,
        }
    }
}

/// `value` with long strings truncated; replaced whole when it contains a secret (in a
/// string or an object key).
fn scrub(value: Value, scanner: &SecretScanner) -> Value {
    if let Some(found) = scanner.scan(&value) {
        return Value::String(format!("<redacted: {}>", found.what));
    }
    truncate_strings(value, MAX_VALUE_CHARS)
}

/// `s`, or `<redacted: WHAT>` when it holds a secret `scanner` knows.
pub(crate) fn redact_str(s: String, scanner: &SecretScanner) -> String {
    match scanner.scan(&Value::String(s.clone())) {
        Some(found) => format!("<redacted: {}>", found.what),
        None => s,
    }
}

fn scrub_str(s: String, scanner: &SecretScanner) -> String {
    match scrub(Value::String(s), scanner) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Items per verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftSummary {
    pub same: u64,
    pub drifted: u64,
    pub no_recording: u64,
}

impl DriftSummary {
    pub fn count(&mut self, verdict: DriftVerdict) {
        match verdict {
            DriftVerdict::Same => self.same += 1,
            DriftVerdict::Drifted => self.drifted += 1,
            DriftVerdict::NoRecording => self.no_recording += 1,
        }
    }
}

/// `DIR/.sluice/drift.json`: the drift found by the proxy run that started at
/// `run_started_at_unix_ms` (the same run as `last-run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub run_started_at_unix_ms: u64,
    pub mode: String,
    pub summary: DriftSummary,
    pub items: Vec<DriftItem>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compared() -> ComparedRequest {
        ComparedRequest {
            file: "f.json".into(),
            key: "k".into(),
            method: "POST".into(),
            origin: None,
            path: "/v1/chat/completions".into(),
            label: None,
            source: DriftSource::Live,
        }
    }

    #[test]
    fn verdicts_follow_the_differences() {
        let scanner = SecretScanner::new(&[]);
        assert_eq!(
            DriftItem::new(compared(), None, &scanner).verdict,
            DriftVerdict::NoRecording
        );
        assert_eq!(
            DriftItem::new(compared(), Some(vec![]), &scanner).verdict,
            DriftVerdict::Same
        );
        let many: Vec<FieldDrift> = (0..30)
            .map(|i| FieldDrift {
                path: format!("body.a[{i}]"),
                recorded: json!(i),
                live: json!(i + 1),
            })
            .collect();
        let item = DriftItem::new(compared(), Some(many), &scanner);
        assert_eq!(item.verdict, DriftVerdict::Drifted);
        assert_eq!(item.differences_total, 30);
        assert_eq!(item.differences.len(), MAX_ITEM_DIFFERENCES);
        assert_eq!(
            serde_json::to_value(DriftVerdict::NoRecording).unwrap(),
            "no-recording"
        );
    }

    #[test]
    fn secrets_are_redacted_and_long_values_cut() {
        let scanner = SecretScanner::new(&["configured-secret-1".to_owned()]);
        let d = vec![
            FieldDrift {
                path: "body.x".into(),
                recorded: json!("key sk-abcdefghijklmnopqrstuvwxyz"),
                live: json!({"nested": "has configured-secret-1 inside"}),
            },
            FieldDrift {
                path: "body.y".into(),
                recorded: json!("a".repeat(500)),
                live: json!(null),
            },
        ];
        let item = DriftItem::new(compared(), Some(d), &scanner);
        let text = serde_json::to_string(&item).unwrap();
        assert!(!text.contains("sk-abcdefghijklmnopqrstuvwxyz"));
        assert!(!text.contains("configured-secret-1"));
        assert!(text.contains("<redacted: OpenAI-style API key pattern"));
        let cut = item.differences[1].recorded.as_str().unwrap();
        assert!(cut.ends_with("… (500 chars)") && cut.len() < 300);
    }
}
