//! The report as Markdown, for pull requests and wikis.

use std::fmt::Write;

use super::console::{generator_line, heading, latency_table, runs_table};
use super::{num, LoadReport};

pub fn render_markdown(report: &LoadReport) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(out, "# sluice load report\n");
    let _ = writeln!(
        out,
        "- **verdict:** {}\n- **tool:** {} {}\n- **targets:** {}\n- **model:** {}\n- **workload:** {}, {}\n- **machine:** {} ({} cores, {})\n",
        report.verdict.outcome.word(),
        report.tool.name,
        report.tool.version,
        report.targets.join(", "),
        c.model,
        c.workload.name(),
        if c.stream { "streaming" } else { "non-streaming" },
        report.environment.hostname,
        report.environment.cores,
        report.environment.os
    );
    if report.interrupted {
        let _ = writeln!(
            out,
            "**Interrupted:** the run in progress stopped at the interrupt; these are the numbers measured until then.\n"
        );
    }
    if report.runs.len() > 1 {
        let _ = writeln!(out, "## Runs\n");
        out.push_str(&runs_table(&report.runs).markdown());
        out.push('\n');
    }
    for run in &report.runs {
        let s = &run.summary;
        let _ = writeln!(out, "## {}\n", heading(run));
        let _ = writeln!(
            out,
            "{} requests measured over {:.1} s: {} ok, {} failed (error rate {:.2} %). Throughput {:.2} req/s, {:.1} output tok/s (peak {:.0}), goodput {} req/s.\n",
            s.requests.total,
            s.duration_s,
            s.requests.succeeded,
            s.requests.failed,
            s.errors.error_rate * 100.0,
            s.throughput.requests_per_s,
            s.throughput.output_tokens_per_s,
            s.throughput.peak_output_tokens_per_s,
            num(s.throughput.goodput_requests_per_s, 2)
        );
        let th = &s.throughput;
        if let (Some(target), Some(got)) = (th.target_rate_per_s, th.achieved_send_rate_per_s) {
            let _ = writeln!(out, "Sent {got:.2}/s of {target:.2}/s asked.\n");
        }
        out.push_str(&latency_table(s).markdown());
        out.push('\n');
        let _ = writeln!(out, "**Generator:** {}.\n", generator_line(s));
        if !s.errors.by_class.is_empty() {
            let _ = writeln!(out, "**Errors:**\n");
            for (class, n) in &s.errors.by_class {
                let ex = s.errors.examples.get(class).cloned().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "- `{class}`: {n} {}",
                    if ex.is_empty() {
                        String::new()
                    } else {
                        format!("— {ex}")
                    }
                );
            }
            out.push('\n');
        }
        if !run.verdict.gates.is_empty() {
            let _ = writeln!(
                out,
                "| SLO | outcome | detail | samples |\n| --- | --- | --- | ---: |"
            );
            for g in &run.verdict.gates {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    g.slo,
                    g.outcome.word(),
                    g.detail,
                    g.samples
                );
            }
            out.push('\n');
        }
        for n in s.notes.iter().chain(run.verdict.reasons.iter()) {
            let _ = writeln!(out, "> {n}");
        }
        out.push('\n');
    }
    out
}
