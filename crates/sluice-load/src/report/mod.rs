//! Reports: the JSON document (schema 1, what `compare` reads), per-request NDJSON and CSV,
//! the console and Markdown tables, and the SVG chart.

mod chart;
mod console;
mod markdown;
mod table;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::LoadConfig;
use crate::error::ReportError;
use crate::gate::{Outcome, RunVerdict};
use crate::host::Environment;
use crate::record::RequestRecord;
use crate::run::LoadPoint;
use crate::stats::RunSummary;

pub use chart::write_chart;
pub use console::render_console;
pub use markdown::render_markdown;
pub(crate) use table::Table;

/// Version of the JSON report layout. Bumped on any change that renames or removes a field
/// or changes a unit; adding fields keeps it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub schema: u32,
    pub tool: ToolInfo,
    pub started_unix_s: f64,
    pub environment: Environment,
    pub targets: Vec<String>,
    pub config: LoadConfig,
    pub runs: Vec<RunReport>,
    /// Stopped by an interrupt (Ctrl-C): the runs are what was measured until then.
    pub interrupted: bool,
    pub verdict: VerdictReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

impl ToolInfo {
    pub fn current() -> ToolInfo {
        ToolInfo {
            name: "sluice load".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub label: String,
    pub load: LoadPoint,
    pub summary: RunSummary,
    pub verdict: RunVerdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictReport {
    pub outcome: Outcome,
}

pub fn write_json(report: &LoadReport, path: &Path) -> Result<(), ReportError> {
    let text = serde_json::to_vec_pretty(report).map_err(|e| ReportError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The metrics derived from a record, in milliseconds, as the per-request files show them.
struct Derived {
    ttft_ms: Option<f64>,
    ttst_ms: Option<f64>,
    tpot_ms: Option<f64>,
    e2e_ms: Option<f64>,
    queue_ms: f64,
    token_times_ms: Option<Vec<f64>>,
}

impl Derived {
    fn of(r: &RequestRecord) -> Derived {
        let ms = crate::units::us_to_ms;
        Derived {
            ttft_ms: r.ttft_us().map(|v| ms(v as f64)),
            ttst_ms: r.ttst_us().map(|v| ms(v as f64)),
            tpot_ms: r.tpot_us().map(ms),
            e2e_ms: r.e2e_us().map(|v| ms(v as f64)),
            queue_ms: ms(r.queue_us() as f64),
            token_times_ms: r
                .token_times_us()
                .map(|ts| ts.into_iter().map(|t| ms(t as f64)).collect()),
        }
    }
}

/// One line per request, in run order, with the derived metrics in milliseconds and, when
/// the run kept them, every token chunk's arrival (`token_times_ms`, from the start).
pub fn write_ndjson(runs: &[(String, Vec<RequestRecord>)], path: &Path) -> Result<(), ReportError> {
    #[derive(Serialize)]
    struct Line<'a> {
        run: &'a str,
        #[serde(flatten)]
        record: &'a RequestRecord,
        ttft_ms: Option<f64>,
        ttst_ms: Option<f64>,
        tpot_ms: Option<f64>,
        e2e_ms: Option<f64>,
        queue_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        token_times_ms: Option<Vec<f64>>,
    }
    let werr = |source: std::io::Error| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(werr)?;
    let mut out = std::io::BufWriter::new(file);
    for (label, records) in runs {
        for r in records {
            let d = Derived::of(r);
            let line = Line {
                run: label,
                record: r,
                ttft_ms: d.ttft_ms,
                ttst_ms: d.ttst_ms,
                tpot_ms: d.tpot_ms,
                e2e_ms: d.e2e_ms,
                queue_ms: d.queue_ms,
                token_times_ms: d.token_times_ms,
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| werr(std::io::Error::other(e)))?;
            out.write_all(b"\n").map_err(werr)?;
        }
    }
    out.flush().map_err(werr)
}

/// The columns of `--csv`.
const CSV_HEADER: &str = "run,index,target,warmup,stream,status,error,scheduled_us,dispatched_us,sent_us,first_token_us,second_token_us,end_us,token_chunks,output_tokens,prompt_tokens,cached_prompt_tokens,ttft_ms,ttst_ms,tpot_ms,e2e_ms,queue_ms,token_times_ms";

/// The same rows as `write_ndjson`, as CSV for spreadsheets: `token_times_ms` is one field
/// of space-separated times; a missing value is an empty field.
pub fn write_csv(runs: &[(String, Vec<RequestRecord>)], path: &Path) -> Result<(), ReportError> {
    let werr = |source: std::io::Error| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(werr)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "{CSV_HEADER}").map_err(werr)?;
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    for (label, records) in runs {
        let run = csv_field(label);
        for r in records {
            let d = Derived::of(r);
            let times = d
                .token_times_ms
                .map(|ts| {
                    ts.iter()
                        .map(|t| format!("{t:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{run},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{}",
                r.index,
                r.target,
                r.warmup,
                r.stream,
                opt(r.status),
                opt(r.error.map(|e| e.key())),
                r.scheduled_us,
                r.dispatched_us,
                r.sent_us,
                opt(r.first_token_us),
                opt(r.second_token_us),
                r.end_us,
                r.token_chunks,
                opt(r.output_tokens),
                opt(r.prompt_tokens),
                opt(r.cached_prompt_tokens),
                opt(d.ttft_ms.map(|v| format!("{v:.3}"))),
                opt(d.ttst_ms.map(|v| format!("{v:.3}"))),
                opt(d.tpot_ms.map(|v| format!("{v:.3}"))),
                opt(d.e2e_ms.map(|v| format!("{v:.3}"))),
                d.queue_ms,
                times
            )
            .map_err(werr)?;
        }
    }
    out.flush().map_err(werr)
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn write_text(text: &str, path: &Path) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// `12.345` with a fixed number of decimals, or `-` for a missing value.
pub(crate) fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}
