//! `sluice proxy report` and `sluice proxy prune`: the recordings directory seen through
//! the last run's usage (`DIR/.sluice/last-run.json`) and drift (`drift.json`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::drift::{DriftReport, DriftVerdict};
use crate::error::ProxyError;
use crate::store::{index_of_file, ReplayStore, STATE_DIR};
use crate::usage::{LastRun, MissRecord, DRIFT_FILE, LAST_RUN_FILE};

/// One entry file as the admin listing and the report show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySummary {
    pub file: String,
    pub method: Option<String>,
    /// `scheme://host:port` of a forward-proxy or CONNECT request; absent for reverse routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub path: Option<String>,
    pub key: Option<String>,
    /// The repeat index from the file name.
    pub index: Option<usize>,
    pub status: Option<u16>,
    pub recorded_at_unix_ms: Option<u64>,
    /// Number of events for an event stream; `None` for a plain body.
    pub events: Option<usize>,
    /// Whether the run (the serving proxy's, or the last one for the report) used it;
    /// `None` in a report when there is no last-run record.
    pub used: Option<bool>,
    /// Why the file could not be read as an entry (it is then never served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every entry file of `store`, marked used when `used` (when known) holds its name.
pub fn entry_summaries(
    store: &ReplayStore,
    used: Option<&BTreeSet<String>>,
) -> std::io::Result<Vec<EntrySummary>> {
    let mut out = Vec::new();
    for file in store.entry_file_names()? {
        let used = used.map(|u| u.contains(&file));
        let index = index_of_file(&file);
        out.push(match store.read_entry(&file) {
            Ok(entry) => EntrySummary {
                method: Some(entry.request.method),
                origin: entry.request.origin,
                path: Some(entry.request.path),
                key: Some(entry.key),
                index,
                status: Some(entry.response.status),
                recorded_at_unix_ms: Some(entry.recorded_at_unix_ms),
                events: entry.response.events.map(|e| e.len()),
                used,
                error: None,
                file,
            },
            Err(e) => EntrySummary {
                method: None,
                origin: None,
                path: None,
                key: None,
                index,
                status: None,
                recorded_at_unix_ms: None,
                events: None,
                used,
                error: Some(e.to_string()),
                file,
            },
        });
    }
    Ok(out)
}

/// What `sluice proxy report` prints (and `--json` serializes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub dir: PathBuf,
    /// The last run's record; `None` when there is none (only without `--since-start`).
    pub last_run: Option<LastRun>,
    /// Every entry with whether the last run used it.
    pub entries: Vec<EntrySummary>,
    /// Entry files the last run used, and those it did not (stale fixtures).
    pub used: Vec<String>,
    pub unused: Vec<String>,
    /// Files the last run used that are no longer in the directory.
    pub used_but_missing: Vec<String>,
    /// The last run's drift report, when it belongs to that run.
    pub drift: Option<DriftReport>,
}

/// Reads `DIR/.sluice/last-run.json`; `Ok(None)` when there is none.
pub fn read_last_run(dir: &Path) -> Result<Option<LastRun>, ProxyError> {
    read_state(&dir.join(STATE_DIR).join(LAST_RUN_FILE))
}

fn read_state<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ProxyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProxyError::RecordingsRead {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ProxyError::RunRecordParse {
            path: path.to_owned(),
            source,
        })
}

fn open_store(dir: &Path) -> Result<ReplayStore, ProxyError> {
    if !dir.is_dir() {
        return Err(ProxyError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    ReplayStore::open(dir).map_err(|e| ProxyError::RecordingsRead {
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Builds the report of `dir`. With `since_start`, a missing last-run record is an error
/// ([`ProxyError::NoLastRun`]); without, the report still lists every entry.
pub fn usage_report(dir: &Path, since_start: bool) -> Result<UsageReport, ProxyError> {
    let store = open_store(dir)?;
    let last_run = read_last_run(dir)?;
    if since_start && last_run.is_none() {
        return Err(ProxyError::NoLastRun {
            path: dir.join(STATE_DIR).join(LAST_RUN_FILE),
        });
    }
    let entries =
        entry_summaries(&store, last_run.as_ref().map(|r| &r.used)).map_err(|source| {
            ProxyError::RecordingsRead {
                path: dir.to_owned(),
                source,
            }
        })?;
    let (mut used, mut unused) = (Vec::new(), Vec::new());
    for e in &entries {
        match e.used {
            Some(true) => used.push(e.file.clone()),
            Some(false) => unused.push(e.file.clone()),
            None => {}
        }
    }
    let present: BTreeSet<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    let used_but_missing = last_run
        .as_ref()
        .map(|r| {
            r.used
                .iter()
                .filter(|f| !present.contains(f.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let drift = match &last_run {
        Some(run) => read_state::<DriftReport>(&dir.join(STATE_DIR).join(DRIFT_FILE))?
            .filter(|d| d.run_started_at_unix_ms == run.started_at_unix_ms),
        None => None,
    };
    used.sort();
    unused.sort();
    Ok(UsageReport {
        dir: dir.to_owned(),
        last_run,
        entries,
        used,
        unused,
        used_but_missing,
        drift,
    })
}

/// The report as text. `since_start` shows the last run's view (used, unused, misses,
/// drift); otherwise every entry with its recording time, then the same summary.
pub fn render_report(report: &UsageReport, since_start: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "recordings: {}", report.dir.display());
    if !since_start {
        let _ = writeln!(out, "entries ({}):", report.entries.len());
        for e in &report.entries {
            let used = match e.used {
                Some(true) => "used  ",
                Some(false) => "unused",
                None => "?     ",
            };
            match &e.error {
                Some(err) => {
                    let _ = writeln!(out, "  {used}  {}  unreadable: {err}", e.file);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {used}  {}  {} {}{}  status {}  recorded_at_unix_ms {}{}",
                        e.file,
                        e.method.as_deref().unwrap_or("?"),
                        e.origin.as_deref().unwrap_or(""),
                        e.path.as_deref().unwrap_or("?"),
                        e.status.map(|s| s.to_string()).unwrap_or_default(),
                        e.recorded_at_unix_ms
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        e.events
                            .map(|n| format!("  {n} events"))
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    let Some(run) = &report.last_run else {
        let _ = writeln!(
            out,
            "no last-run record: run the suite through the proxy first to see which entries are used"
        );
        return out;
    };
    let c = &run.counts;
    let _ = writeln!(
        out,
        "last run: mode {}, started_at_unix_ms {}, {}",
        run.mode,
        run.started_at_unix_ms,
        match run.finished_at_unix_ms {
            Some(t) => format!("finished_at_unix_ms {t}"),
            None => "still running (or did not stop cleanly)".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "  requests: {} hit, {} miss, {} recorded, {} refused, {} passthrough",
        c.hits, c.misses, c.recorded, c.refused, c.passthrough
    );
    for (reason, n) in &run.refusals {
        let _ = writeln!(out, "  refusals ({reason}): {n}");
    }
    let _ = writeln!(out, "used by the last run ({}):", report.used.len());
    for f in &report.used {
        let _ = writeln!(out, "  {f}");
    }
    let _ = writeln!(out, "unused (stale) ({}):", report.unused.len());
    for f in &report.unused {
        let _ = writeln!(out, "  {f}");
    }
    if !report.used_but_missing.is_empty() {
        let _ = writeln!(
            out,
            "used by the last run but no longer in the directory ({}):",
            report.used_but_missing.len()
        );
        for f in &report.used_but_missing {
            let _ = writeln!(out, "  {f}");
        }
    }
    let _ = writeln!(out, "misses ({}):", c.misses);
    for MissRecord {
        key,
        method,
        origin,
        path,
        nearest,
    } in &run.misses
    {
        let _ = writeln!(
            out,
            "  {method} {}{path} key {}{}",
            origin.as_deref().unwrap_or(""),
            key.get(..12).unwrap_or(key),
            nearest
                .as_ref()
                .map(|n| format!(", nearest {n}"))
                .unwrap_or_default()
        );
    }
    if let Some(drift) = &report.drift {
        let s = &drift.summary;
        let _ = writeln!(
            out,
            "drift: {} same, {} drifted, {} no-recording",
            s.same, s.drifted, s.no_recording
        );
        for item in drift
            .items
            .iter()
            .filter(|i| i.verdict != DriftVerdict::Same)
        {
            let _ = writeln!(
                out,
                "  {} {} {}{} {} ({:?})",
                item.verdict.as_str(),
                item.method,
                item.origin.as_deref().unwrap_or(""),
                item.path,
                item.file,
                item.source
            );
            for d in &item.differences {
                let _ = writeln!(out, "    {}: {} -> {}", d.path, d.recorded, d.live);
            }
            if item.differences_total > item.differences.len() {
                let _ = writeln!(
                    out,
                    "    … {} more",
                    item.differences_total - item.differences.len()
                );
            }
        }
    }
    out
}

/// How `prune` may proceed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// List what would be removed, remove nothing.
    pub dry_run: bool,
    /// Prune even when the last run is marked running, had misses, or was passthrough.
    pub force: bool,
}

/// What `prune` removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneOutcome {
    pub removed: Vec<String>,
    pub kept: usize,
    pub dry_run: bool,
}

/// Deletes the entry files the last run did not use. Refuses without a last-run record,
/// and (unless `force`) when that run is still marked running, had replay misses, or was
/// a passthrough run.
pub fn prune(dir: &Path, options: PruneOptions) -> Result<PruneOutcome, ProxyError> {
    let report = usage_report(dir, true)?;
    let Some(run) = &report.last_run else {
        return Err(ProxyError::NoLastRun {
            path: dir.join(STATE_DIR).join(LAST_RUN_FILE),
        });
    };
    if !options.force {
        if run.finished_at_unix_ms.is_none() {
            return Err(ProxyError::LastRunRunning {
                started_at_unix_ms: run.started_at_unix_ms,
            });
        }
        if run.counts.misses > 0 {
            return Err(ProxyError::LastRunHadMisses {
                misses: run.counts.misses,
            });
        }
        if run.mode == crate::config::Mode::Passthrough.as_str() {
            return Err(ProxyError::LastRunReadNothing);
        }
    }
    if !options.dry_run {
        for file in &report.unused {
            let path = dir.join(file);
            std::fs::remove_file(&path)
                .map_err(|source| ProxyError::RecordingRemove { path, source })?;
        }
    }
    Ok(PruneOutcome {
        removed: report.unused.clone(),
        kept: report.used.len(),
        dry_run: options.dry_run,
    })
}
