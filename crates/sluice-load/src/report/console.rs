//! The report a person reads in the terminal.

use std::fmt::Write;

use super::{num, LoadReport, RunReport, Table};
use crate::gate::Outcome;
use crate::run::LoadPoint;
use crate::stats::{LatencyStats, RunSummary};

/// The whole report as text: a table of runs when there are several, then each run in
/// detail (only the last ones of a sweep are useful in detail, but all are printed so that
/// nothing is hidden), then the verdict.
pub fn render_console(report: &LoadReport) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(
        out,
        "sluice load {} — {} workload, {}, model {}, targets: {}",
        report.tool.version,
        c.workload.name(),
        if c.stream {
            "streaming"
        } else {
            "non-streaming"
        },
        c.model,
        report.targets.join(", ")
    );
    if report.runs.len() > 1 {
        out.push('\n');
        out.push_str(&runs_table(&report.runs).render("  "));
    }
    if report.interrupted {
        let _ = writeln!(
            out,
            "INTERRUPTED: the run in progress stopped at the interrupt; the numbers below are what was measured until then"
        );
    }
    for run in &report.runs {
        out.push('\n');
        out.push_str(&run_detail(run));
    }
    let _ = writeln!(out, "\nverdict: {}", report.verdict.outcome.word());
    out
}

/// One row per run: the sweep view.
pub(crate) fn runs_table(runs: &[RunReport]) -> Table {
    let mut t = Table::new([
        "run",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "ITL p99",
        "E2E p50",
        "E2E p99",
        "errors",
        "SLOs",
    ]);
    for r in runs {
        let s = &r.summary;
        let l = &s.latency;
        let p = |x: &Option<LatencyStats>, f: fn(&LatencyStats) -> f64| num(x.as_ref().map(f), 1);
        t.row([
            r.label.clone(),
            num(Some(s.throughput.requests_per_s), 2),
            num(Some(s.throughput.output_tokens_per_s), 1),
            p(&l.ttft, |x| x.p50_ms),
            p(&l.ttft, |x| x.p99_ms),
            p(&l.tpot, |x| x.p50_ms),
            p(&l.tpot, |x| x.p99_ms),
            p(&l.itl, |x| x.p99_ms),
            p(&l.e2e, |x| x.p50_ms),
            p(&l.e2e, |x| x.p99_ms),
            format!("{:.2} %", s.errors.error_rate * 100.0),
            r.verdict.outcome.word().to_owned(),
        ]);
    }
    t
}

pub(crate) fn latency_table(s: &RunSummary) -> Table {
    let mut t = Table::new([
        "latency (ms)",
        "n",
        "mean",
        "min",
        "p50",
        "p90",
        "p95",
        "p99",
        "p99.9",
        "max",
    ]);
    let l = &s.latency;
    for (name, stats) in [
        ("TTFT", &l.ttft),
        ("TTST", &l.ttst),
        ("TPOT", &l.tpot),
        ("ITL", &l.itl),
        ("E2E", &l.e2e),
        ("queue", &l.queue),
    ] {
        match stats {
            Some(x) => t.row([
                name.to_owned(),
                x.count.to_string(),
                num(Some(x.mean_ms), 2),
                num(Some(x.min_ms), 2),
                num(Some(x.p50_ms), 2),
                num(Some(x.p90_ms), 2),
                num(Some(x.p95_ms), 2),
                num(Some(x.p99_ms), 2),
                num(Some(x.p99_9_ms), 2),
                num(Some(x.max_ms), 2),
            ]),
            // Say what is missing rather than leaving the row out.
            None if name != "queue" => {
                t.row([name.to_owned(), "0".to_owned(), "undefined".to_owned()])
            }
            None => {}
        }
    }
    t
}

/// What the generator did: its CPU, the machine's steal, its lateness and runtime delay,
/// its connections.
pub(crate) fn generator_line(s: &RunSummary) -> String {
    let g = &s.generator;
    let mut gen = format!(
        "CPU {} % of one core ({} % of {} cores)",
        num(g.cpu_percent_of_one_core, 0),
        num(g.cpu_percent_of_all_cores, 0),
        g.cores
    );
    if let Some(steal) = g.steal_percent.filter(|&s| s > 0.0) {
        let _ = write!(gen, "; machine steal {steal:.1} %");
    }
    if let Some(l) = &g.lateness {
        let _ = write!(
            gen,
            "; send lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if let Some(d) = &g.scheduling_delay {
        let _ = write!(
            gen,
            "; runtime delay p50 {:.3} ms, p99 {:.3} ms",
            d.p50_ms, d.p99_ms
        );
    }
    if let Some(l) = &g.receive_lag {
        let _ = write!(
            gen,
            "; receive lag (kernel receive → read, not in the timestamps) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    let _ = write!(
        gen,
        "; {} connections opened (peak {}{})",
        g.connections_opened,
        g.peak_connections,
        if g.connection_cap_hit {
            ", cap reached"
        } else {
            ""
        }
    );
    gen
}

/// A run's heading: its label, and what the label does not already say of its load
/// (`rate 20/s, constant arrivals`; `synchronous (concurrency 1)`).
pub(crate) fn heading(run: &RunReport) -> String {
    match &run.load {
        LoadPoint::Rate { arrival, .. } if run.label.starts_with("rate ") => {
            format!("{}, {arrival} arrivals", run.label)
        }
        LoadPoint::Concurrency { .. } if run.label.starts_with("concurrency ") => run.label.clone(),
        _ => format!("{} ({})", run.label, run.load.describe()),
    }
}

fn run_detail(run: &RunReport) -> String {
    let s = &run.summary;
    let mut out = String::new();
    let _ = writeln!(out, "== {} — {:.1} s measured", heading(run), s.duration_s);
    let _ = writeln!(
        out,
        "  requests    {} measured: {} ok, {} failed (error rate {:.2} %); {} warm-up excluded",
        s.requests.total,
        s.requests.succeeded,
        s.requests.failed,
        s.errors.error_rate * 100.0,
        s.requests.warmup_excluded
    );
    let r = &s.requests;
    if r.completed_after_window + r.unfinished + r.interrupted > 0 {
        let _ = writeln!(
            out,
            "  window end  {} completed in the grace period · {} still open after it, cut (unfinished) · {} cut by the interrupt",
            r.completed_after_window, r.unfinished, r.interrupted
        );
    }
    let th = &s.throughput;
    let mut line = format!(
        "  throughput  {:.2} req/s · {:.1} output tok/s (peak {:.0} in 1 s) · {:.1} total tok/s",
        th.requests_per_s,
        th.output_tokens_per_s,
        th.peak_output_tokens_per_s,
        th.total_tokens_per_s
    );
    if let Some(g) = th.goodput_requests_per_s {
        let _ = write!(line, " · goodput {g:.2} req/s");
    }
    if let Some(u) = &th.per_user_output_tokens_per_s {
        let _ = write!(
            line,
            "\n  per user    output tok/s after the first token: p50 {:.1}, p10 {:.1}, p1 {:.1} (slowest)",
            u.p50, u.p10, u.p1
        );
    }
    if let (Some(target), Some(got)) = (th.target_rate_per_s, th.achieved_send_rate_per_s) {
        let _ = write!(line, " · sent {got:.2}/s of {target:.2}/s asked");
    }
    out.push_str(&line);
    out.push('\n');
    let tk = &s.tokens;
    let _ = writeln!(
        out,
        "  tokens      output mean {} (asked {}), prompt mean {} (aimed {} {}){}",
        num(tk.output_mean, 1),
        num(tk.requested_output_mean, 1),
        num(tk.prompt_mean, 1),
        num(tk.approx_input_mean, 1),
        tk.input_unit,
        tk.cached_prompt_share
            .map(|c| format!(", {:.0} % of prompt tokens cached", c * 100.0))
            .unwrap_or_default()
    );
    out.push('\n');
    out.push_str(&latency_table(s).render("  "));
    let _ = writeln!(out, "\n  generator   {}", generator_line(s));
    if !s.errors.by_class.is_empty() {
        out.push_str("  errors\n");
        for (class, n) in &s.errors.by_class {
            let example = s
                .errors
                .examples
                .get(class)
                .map(|e| format!(" — e.g. {e}"))
                .unwrap_or_default();
            let _ = writeln!(out, "    {class}: {n}{example}");
        }
    }
    if !s.notes.is_empty() {
        out.push_str("  notes\n");
        for n in &s.notes {
            let _ = writeln!(out, "    - {n}");
        }
    }
    let v = &run.verdict;
    if !v.gates.is_empty() {
        out.push_str("  SLO gates\n");
        for gate in &v.gates {
            let _ = writeln!(
                out,
                "    {:<12} {}  ({}; {} samples)",
                gate.outcome.word(),
                gate.slo,
                gate.detail,
                gate.samples
            );
        }
    }
    for r in &v.reasons {
        let _ = writeln!(out, "  {}: {r}", Outcome::Inconclusive.word());
    }
    out
}
