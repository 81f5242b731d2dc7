//! Replay of a JSONL file of OpenAI chat request bodies, one per line. Each line is checked
//! as a chat request up front (errors name the line and the field), then serialised once:
//! the hot path only clones a `Bytes`.
//!
//! Per line: `model` is replaced by `--model` unless `--keep-model` is given and the line has
//! one; `stream` follows `--stream`/`--no-stream` (and streams ask for usage); an optional
//! `timestamp` (seconds, a number) is removed from the body and, with `--trace-timestamps`,
//! gives the send time relative to the first line.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_api::chat::StreamOptions;
use sluice_api::ChatCompletionRequest;

use super::{PreparedRequest, RequestShape};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read dataset {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("dataset {} has no requests (every line is empty)", path.display())]
    Empty { path: PathBuf },
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    requested_output: Option<u32>,
}

#[derive(Debug)]
pub struct Dataset {
    entries: Vec<Entry>,
    /// Seconds from the first line's timestamp, one per entry, when replaying a trace.
    offsets: Option<Vec<f64>>,
}

impl Dataset {
    pub fn load(
        path: &Path,
        shape: &RequestShape,
        keep_model: bool,
        trace_timestamps: bool,
    ) -> Result<Dataset, DatasetError> {
        let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, shape, keep_model, trace_timestamps)
    }

    pub fn parse(
        text: &str,
        path: &Path,
        shape: &RequestShape,
        keep_model: bool,
        trace_timestamps: bool,
    ) -> Result<Dataset, DatasetError> {
        let mut entries = Vec::new();
        let mut stamps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fail = |message: String| DatasetError::Line {
                path: path.to_owned(),
                line: line_no,
                message,
            };
            let mut map: Map<String, Value> = match serde_json::from_str(line) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(fail(
                        "a line must be one JSON object (a chat request body)".into(),
                    ))
                }
                Err(e) => return Err(fail(format!("not valid JSON: {e}"))),
            };
            let timestamp = match map.remove("timestamp") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_f64(),
                Some(_) => return Err(fail("`timestamp` must be a number of seconds".into())),
            };
            if trace_timestamps {
                match timestamp {
                    Some(t) if t.is_finite() => stamps.push((t, line_no)),
                    _ => return Err(fail(
                        "--trace-timestamps needs a numeric `timestamp` (seconds) on every line"
                            .into(),
                    )),
                }
            }
            let has_model = matches!(map.get("model"), Some(Value::String(_)));
            if !(keep_model && has_model) {
                map.insert("model".into(), Value::String(shape.model.clone()));
            }
            let mut req = ChatCompletionRequest::try_from(map).map_err(|e| {
                fail(match e.param {
                    Some(p) => format!("field `{p}`: {}", e.message),
                    None => e.message,
                })
            })?;
            req.stream = Some(shape.stream);
            if shape.stream {
                let mut opts = req.stream_options.take().unwrap_or_default();
                opts.include_usage = Some(true);
                req.stream_options = Some(opts);
            } else {
                req.stream_options = None::<StreamOptions>;
            }
            entries.push(Entry {
                requested_output: req.output_cap(),
                body: Bytes::from(req.to_json_vec()),
            });
        }
        if entries.is_empty() {
            return Err(DatasetError::Empty {
                path: path.to_owned(),
            });
        }
        if trace_timestamps {
            check_sorted(&stamps, path)?;
        }
        let offsets = trace_timestamps.then(|| {
            let first = stamps.first().map_or(0.0, |s| s.0);
            stamps.iter().map(|(t, _)| t - first).collect::<Vec<f64>>()
        });
        Ok(Dataset { entries, offsets })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Request `index`, cycling through the file.
    pub fn prepare(&self, index: u64) -> PreparedRequest {
        let i = (index % self.entries.len().max(1) as u64) as usize;
        let (body, requested_output) = self
            .entries
            .get(i)
            .map(|e| (e.body.clone(), e.requested_output))
            .unwrap_or_default();
        PreparedRequest {
            body,
            session_id: None,
            requested_output_tokens: requested_output,
            approx_input_tokens: None,
            turn: None,
        }
    }

    pub fn trace_offsets(&self) -> Option<&[f64]> {
        self.offsets.as_deref()
    }
}

/// A trace is replayed in file order; timestamps going backwards would silently become a
/// burst, so they are refused.
fn check_sorted(stamps: &[(f64, usize)], path: &Path) -> Result<(), DatasetError> {
    for w in stamps.windows(2) {
        let ((before, _), (t, line)) = (w[0], w[1]);
        if t < before {
            return Err(DatasetError::Line {
                path: path.to_owned(),
                line,
                message: format!(
                    "timestamps must not decrease for trace replay ({t} after {before})"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(stream: bool) -> RequestShape {
        RequestShape {
            model: "target-model".into(),
            stream,
            seed: 0,
            tokenizer: None,
        }
    }

    #[test]
    fn lines_are_checked_and_rewritten() {
        let text = r#"{"model":"orig","messages":[{"role":"user","content":"a"}],"max_tokens":5,"timestamp":10.5}

{"messages":[{"role":"user","content":"b"}],"timestamp":11.0,"temperature":0.2}
"#;
        let p = Path::new("d.jsonl");
        let d = Dataset::parse(text, p, &shape(true), false, true).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.trace_offsets(), Some(&[0.0, 0.5][..]));
        let r = d.prepare(0);
        assert_eq!(r.requested_output_tokens, Some(5));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["model"], "target-model");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(v.get("timestamp").is_none());
        let v: Value = serde_json::from_slice(&d.prepare(3).body).unwrap();
        assert_eq!(
            v["temperature"], 0.2,
            "unknown fields are kept; indices cycle"
        );

        let keep = Dataset::parse(text, p, &shape(false), true, false).unwrap();
        let v: Value = serde_json::from_slice(&keep.prepare(0).body).unwrap();
        assert_eq!(v["model"], "orig");
        assert_eq!(v["stream"], false);
        let v: Value = serde_json::from_slice(&keep.prepare(1).body).unwrap();
        assert_eq!(
            v["model"], "target-model",
            "a line without a model gets --model"
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let p = Path::new("d.jsonl");
        let e = Dataset::parse("{}\n", p, &shape(false), false, false).unwrap_err();
        assert_eq!(e.to_string(), "d.jsonl:1: field `messages`: `messages` is required: an array of {\"role\", \"content\"} objects");
        let e = Dataset::parse("\n[1]\n", p, &shape(false), false, false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.jsonl:2: a line must be one JSON object"),
            "{e}"
        );
        let line = r#"{"messages":[{"role":"user","content":"b"}]}"#;
        let e = Dataset::parse(line, p, &shape(false), false, true).unwrap_err();
        assert!(e.to_string().contains("--trace-timestamps needs"), "{e}");
        let e = Dataset::parse("", p, &shape(false), false, false).unwrap_err();
        assert!(matches!(e, DatasetError::Empty { .. }));
        let two = format!(
            "{}\n{}\n",
            r#"{"messages":[{"role":"user","content":"b"}],"timestamp":2}"#,
            r#"{"messages":[{"role":"user","content":"b"}],"timestamp":1}"#
        );
        let e = Dataset::parse(&two, p, &shape(false), false, true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.jsonl:2: timestamps must not decrease"),
            "{e}"
        );
    }
}
