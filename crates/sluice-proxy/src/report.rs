//! `sluice proxy report` and `sluice proxy prune`: the recordings directory seen through
//! the last run's usage (`DIR/.sluice/last-run.json`) and drift (`drift.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::drift::{DriftReport, DriftVerdict};
use crate::error::ProxyError;
use crate::key::KEY_VERSION;
use crate::route::prefix_covers;
use crate::store::{index_of_file, ReplayStore, STATE_DIR};
use crate::usage::{LastRun, DRIFT_FILE, LAST_RUN_FILE};

/// One entry file as the admin listing and the report show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySummary {
    pub file: String,
    /// The request's model and the start of its last message, when its body says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub method: Option<String>,
    /// `scheme://host:port` of a forward-proxy or CONNECT request; absent for reverse routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub path: Option<String>,
    pub key: Option<String>,
    /// The key scheme the entry was recorded with; another than [`KEY_VERSION`] is never
    /// served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
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
                label: entry.request.label(),
                method: Some(entry.request.method),
                origin: entry.request.origin,
                path: Some(entry.request.path),
                key: Some(entry.key),
                key_version: Some(entry.key_version),
                index,
                status: Some(entry.response.status),
                recorded_at_unix_ms: Some(entry.recorded_at_unix_ms),
                events: entry.response.events.map(|e| e.len()),
                used,
                error: None,
                file,
            },
            Err(e) => EntrySummary {
                label: None,
                method: None,
                origin: None,
                path: None,
                key: None,
                key_version: None,
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

/// An entry the run did not use but could not have used either; `prune` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableEntry {
    pub file: String,
    pub reason: String,
}

/// What `sluice proxy report` prints (and `--json` serializes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub dir: PathBuf,
    /// The run records read: `DIR/.sluice/last-run.json`, or the files given with `--run`.
    pub run_files: Vec<PathBuf>,
    /// The last run's record (several runs' merged, see [`LastRun::merge`]); `None` when
    /// there is none (only without `--since-start`).
    pub last_run: Option<LastRun>,
    /// Every entry with whether the last run used it.
    pub entries: Vec<EntrySummary>,
    /// Entry files the run used.
    pub used: Vec<String>,
    /// Entry files the run could have used and did not: stale fixtures, what `prune`
    /// removes.
    pub unused: Vec<String>,
    /// Entry files the run did not use and could not have used (unreadable, another key
    /// scheme, recorded after it started, a path none of its routes serves): kept.
    pub unreachable: Vec<UnreachableEntry>,
    /// Files the last run used that are no longer in the directory.
    pub used_but_missing: Vec<String>,
    /// The last run's drift report, when it belongs to that run (one run only).
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

/// Builds the report of `dir` from its own last-run record. With `since_start`, a missing
/// record is an error ([`ProxyError::NoLastRun`]); without, the report still lists every
/// entry.
pub fn usage_report(dir: &Path, since_start: bool) -> Result<UsageReport, ProxyError> {
    usage_report_of_runs(dir, since_start, &[])
}

/// Like [`usage_report`], from the run records `run_files` (merged: the shards of one
/// suite, each run by its own proxy) instead of the directory's own when any are given.
pub fn usage_report_of_runs(
    dir: &Path,
    since_start: bool,
    run_files: &[PathBuf],
) -> Result<UsageReport, ProxyError> {
    let store = open_store(dir)?;
    let own = dir.join(STATE_DIR).join(LAST_RUN_FILE);
    let (runs, run_files) = if run_files.is_empty() {
        let runs: Vec<LastRun> = read_last_run(dir)?.into_iter().collect();
        let files = if runs.is_empty() {
            Vec::new()
        } else {
            vec![own.clone()]
        };
        (runs, files)
    } else {
        let mut runs = Vec::new();
        for file in run_files {
            match read_state::<LastRun>(file)? {
                Some(run) => runs.push(run),
                None => return Err(ProxyError::NoLastRun { path: file.clone() }),
            }
        }
        (runs, run_files.to_vec())
    };
    if since_start && runs.is_empty() {
        return Err(ProxyError::NoLastRun { path: own });
    }
    let last_run = LastRun::merge(&runs);
    let entries =
        entry_summaries(&store, last_run.as_ref().map(|r| &r.used)).map_err(|source| {
            ProxyError::RecordingsRead {
                path: dir.to_owned(),
                source,
            }
        })?;
    let (mut used, mut unused, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
    for e in &entries {
        match e.used {
            Some(true) => used.push(e.file.clone()),
            Some(false) => match why_unreachable(e, &runs) {
                Some(reason) => unreachable.push(UnreachableEntry {
                    file: e.file.clone(),
                    reason,
                }),
                None => unused.push(e.file.clone()),
            },
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
    // A drift report belongs to one run; shards' reports stay in their own directories.
    let drift = match runs.as_slice() {
        [run] if run_files.first() == Some(&own) => {
            read_state::<DriftReport>(&dir.join(STATE_DIR).join(DRIFT_FILE))?
                .filter(|d| d.run_started_at_unix_ms == run.started_at_unix_ms)
        }
        _ => None,
    };
    used.sort();
    unused.sort();
    Ok(UsageReport {
        dir: dir.to_owned(),
        run_files,
        last_run,
        entries,
        used,
        unused,
        unreachable,
        used_but_missing,
        drift,
    })
}

/// Why no run of `runs` could have served `entry`; `None` when one could have.
fn why_unreachable(entry: &EntrySummary, runs: &[LastRun]) -> Option<String> {
    if let Some(error) = &entry.error {
        return Some(format!("unreadable, never served: {error}"));
    }
    if let Some(version) = entry.key_version.filter(|v| *v != KEY_VERSION) {
        return Some(format!(
            "recorded with key scheme {version}; this proxy serves only scheme {KEY_VERSION}"
        ));
    }
    let recorded_at = entry.recorded_at_unix_ms.unwrap_or(0);
    let path = entry.path.as_deref().unwrap_or("/");
    let mut reasons = Vec::new();
    for run in runs {
        if recorded_at >= run.started_at_unix_ms {
            reasons.push("recorded after the run started".to_owned());
            continue;
        }
        // Forward-proxy entries carry their origin: any run could have been sent them.
        if let (None, Some(routes)) = (&entry.origin, &run.routes) {
            if !routes.iter().any(|prefix| prefix_covers(prefix, path)) {
                reasons.push(if routes.is_empty() {
                    "the run had no reverse routes".to_owned()
                } else {
                    format!(
                        "no route of the run serves it (routes {})",
                        routes.join(", ")
                    )
                });
                continue;
            }
        }
        return None;
    }
    reasons.dedup();
    Some(reasons.join("; "))
}

/// The report as text, in the words of its JSON (`counts.hits`, `unused`, ...).
/// `since_start` shows the last run's view (used, unused, misses, drift); otherwise every
/// entry with its recording time first, then the same summary.
pub fn render_report(report: &UsageReport, since_start: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "recordings: {}", report.dir.display());
    let labels: BTreeMap<&str, &str> = report
        .entries
        .iter()
        .filter_map(|e| Some((e.file.as_str(), e.label.as_deref()?)))
        .collect();
    let named = |file: &str| match labels.get(file) {
        Some(label) => format!("{file}  {label}"),
        None => file.to_owned(),
    };
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
                    let _ = writeln!(out, "  {used}  {}  error: {err}", e.file);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {used}  {}  {} {}{}  status {}  recorded_at_unix_ms {}{}{}",
                        e.file,
                        e.method.as_deref().unwrap_or("?"),
                        e.origin.as_deref().unwrap_or(""),
                        e.path.as_deref().unwrap_or("?"),
                        e.status.map(|s| s.to_string()).unwrap_or_default(),
                        e.recorded_at_unix_ms
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        e.events
                            .map(|n| format!("  events {n}"))
                            .unwrap_or_default(),
                        e.label
                            .as_deref()
                            .map(|l| format!("  {l}"))
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    let Some(run) = &report.last_run else {
        let _ = writeln!(
            out,
            "last_run: none (no last-run record yet): run the suite through the proxy first to see which entries are used"
        );
        return out;
    };
    let runs = match report.run_files.as_slice() {
        [one] => one.display().to_string(),
        many => format!("{} runs merged", many.len()),
    };
    let _ = writeln!(
        out,
        "last_run ({runs}): mode {}, started_at_unix_ms {}, finished_at_unix_ms {}",
        run.mode,
        run.started_at_unix_ms,
        match run.finished_at_unix_ms {
            Some(t) => t.to_string(),
            None => "none (still running, or did not stop cleanly)".to_owned(),
        }
    );
    let c = &run.counts;
    let _ = writeln!(
        out,
        "  counts: hits {}, misses {}, recorded {}, refused {}, passthrough {}",
        c.hits, c.misses, c.recorded, c.refused, c.passthrough
    );
    if !run.refusals.is_empty() {
        let refusals: Vec<String> = run
            .refusals
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(out, "  refusals: {}", refusals.join(", "));
    }
    let _ = writeln!(out, "used ({}):", report.used.len());
    for f in &report.used {
        let _ = writeln!(out, "  {}", named(f));
    }
    let _ = writeln!(
        out,
        "unused ({}): stale, `sluice proxy prune` removes them",
        report.unused.len()
    );
    for f in &report.unused {
        let _ = writeln!(out, "  {}", named(f));
    }
    if !report.unreachable.is_empty() {
        let _ = writeln!(
            out,
            "unreachable ({}): not used and could not have been, prune keeps them",
            report.unreachable.len()
        );
        for u in &report.unreachable {
            let _ = writeln!(out, "  {}: {}", named(&u.file), u.reason);
        }
    }
    if !report.used_but_missing.is_empty() {
        let _ = writeln!(
            out,
            "used_but_missing ({}): used by the run, no longer in the directory",
            report.used_but_missing.len()
        );
        for f in &report.used_but_missing {
            let _ = writeln!(out, "  {f}");
        }
    }
    let _ = writeln!(out, "misses ({}):", c.misses);
    for miss in &run.misses {
        let _ = writeln!(
            out,
            "  {} {}{} key {}{}{}",
            miss.method,
            miss.origin.as_deref().unwrap_or(""),
            miss.path,
            miss.key.get(..12).unwrap_or(&miss.key),
            miss.label
                .as_deref()
                .map(|l| format!("  {l}"))
                .unwrap_or_default(),
            miss.nearest
                .as_ref()
                .map(|n| format!(", nearest {n}"))
                .unwrap_or_default()
        );
    }
    if let Some(drift) = &report.drift {
        let s = &drift.summary;
        let _ = writeln!(
            out,
            "drift: same {}, drifted {}, no_recording {}",
            s.same, s.drifted, s.no_recording
        );
        for item in drift
            .items
            .iter()
            .filter(|i| i.verdict != DriftVerdict::Same)
        {
            let _ = writeln!(
                out,
                "  {} {} {}{} {} (source {}){}",
                item.verdict.as_str(),
                item.method,
                item.origin.as_deref().unwrap_or(""),
                item.path,
                item.file,
                item.source.as_str(),
                item.label
                    .as_deref()
                    .map(|l| format!("  {l}"))
                    .unwrap_or_default(),
            );
            for d in &item.differences {
                let _ = writeln!(out, "    {}: {} -> {}", d.path, d.recorded, d.live);
            }
            if item.differences_total > item.differences.len() {
                let _ = writeln!(
                    out,
                    "    … {} more (differences_total {})",
                    item.differences_total - item.differences.len(),
                    item.differences_total
                );
            }
        }
    }
    out
}

/// How `prune` may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// List what would be removed, remove nothing.
    pub dry_run: bool,
    /// Prune even when a run is still marked running, had misses, was passthrough, used
    /// nothing, or used fewer entries than `min_used_percent`.
    pub force: bool,
    /// Refuse when the run used less than this share (in percent) of the entries it could
    /// have used: a suite that ran only partly makes most recordings look stale.
    pub min_used_percent: u8,
    /// Run records to merge instead of `DIR/.sluice/last-run.json` (sharded suites).
    pub runs: Vec<PathBuf>,
}

/// The default share a run must have used before `prune` deletes the rest.
pub const DEFAULT_MIN_USED_PERCENT: u8 = 50;

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            force: false,
            min_used_percent: DEFAULT_MIN_USED_PERCENT,
            runs: Vec::new(),
        }
    }
}

/// What `prune` removed (or, with `dry_run`, would remove), and what it kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneOutcome {
    pub removed: Vec<String>,
    /// Entries the run used.
    pub kept: usize,
    /// Entries kept although unused: the run could not have reached them.
    pub unreachable: Vec<UnreachableEntry>,
    pub dry_run: bool,
}

/// Deletes the entry files the run did not use but could have. Refuses without a run
/// record, and (unless `force`) when a run is still marked running, had replay misses, was
/// a passthrough run, used no entry at all, or used less than `min_used_percent` of those
/// it could have used.
pub fn prune(dir: &Path, options: PruneOptions) -> Result<PruneOutcome, ProxyError> {
    let report = usage_report_of_runs(dir, true, &options.runs)?;
    let Some(run) = &report.last_run else {
        return Err(ProxyError::NoLastRun {
            path: dir.join(STATE_DIR).join(LAST_RUN_FILE),
        });
    };
    if !options.force && !report.unused.is_empty() {
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
        if run.mode.split('+').any(|m| m == Mode::Passthrough.as_str()) {
            return Err(ProxyError::LastRunReadNothing);
        }
        let used = report.used.len();
        let reachable = used + report.unused.len();
        if used == 0 {
            return Err(ProxyError::LastRunUsedNothing {
                entries: reachable,
                requests: run.counts.hits
                    + run.counts.recorded
                    + run.counts.refused
                    + run.counts.passthrough,
            });
        }
        // Integer arithmetic: used / reachable < min / 100.
        if used * 100 < reachable * usize::from(options.min_used_percent) {
            return Err(ProxyError::LastRunUsedTooFew {
                used,
                reachable,
                min_percent: options.min_used_percent,
            });
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
        unreachable: report.unreachable.clone(),
        dry_run: options.dry_run,
    })
}
