//! Reports: the JSON document (schema 1, what `compare` reads), per-request NDJSON, the
//! console and Markdown tables, and the SVG chart.

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

/// One line per request, in run order, with the derived metrics in milliseconds.
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
    }
    let werr = |source: std::io::Error| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(werr)?;
    let mut out = std::io::BufWriter::new(file);
    let ms = |us: f64| crate::units::us_to_ms(us);
    for (label, records) in runs {
        for r in records {
            let line = Line {
                run: label,
                record: r,
                ttft_ms: r.ttft_us().map(|v| ms(v as f64)),
                ttst_ms: r.ttst_us().map(|v| ms(v as f64)),
                tpot_ms: r.tpot_us().map(ms),
                e2e_ms: r.e2e_us().map(|v| ms(v as f64)),
                queue_ms: ms(r.queue_us() as f64),
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| werr(std::io::Error::other(e)))?;
            out.write_all(b"\n").map_err(werr)?;
        }
    }
    out.flush().map_err(werr)
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
