//! The SVG chart. One run: latency percentiles, output tokens/s and requests/s over time in
//! one-second buckets, stacked so a slowdown and its cause line up vertically. A sweep:
//! latency against achieved throughput, one point per run (the capacity curve).

use std::path::Path;

use plotters::prelude::*;

use super::{LoadReport, RunReport};
use crate::error::ReportError;
use crate::stats::LatencyStats;

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 280;

struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);
const E2E50: RGBColor = RGBColor(44, 160, 44);
const E2E99: RGBColor = RGBColor(148, 103, 189);
const NEUTRAL: RGBColor = RGBColor(60, 60, 60);

pub fn write_chart(report: &LoadReport, path: &Path) -> Result<(), ReportError> {
    let svg = render_chart(report).map_err(|message| ReportError::Chart {
        path: path.to_owned(),
        message,
    })?;
    super::write_text(&svg, path)
}

/// The chart as SVG text.
pub fn render_chart(report: &LoadReport) -> Result<String, String> {
    let panels = if report.runs.len() > 1 {
        sweep_panels(&report.runs)
    } else {
        report.runs.first().map(time_panels).unwrap_or_default()
    };
    let mut svg = String::new();
    {
        let height = PANEL_HEIGHT * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (area, panel) in areas.iter().zip(&panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

struct Panel {
    title: String,
    x_desc: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
    /// The x range, shared by stacked panels so that one instant is at one x in all.
    x_range: Option<(f64, f64)>,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let all = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if let Some(range) = panel.x_range {
        (x0, x1) = range;
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(panel.x_desc)
        .y_desc(panel.y_desc)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    for s in &panel.series {
        if s.points.is_empty() {
            continue;
        }
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if s.points.len() < 40 {
            // Few points (a sweep, a short run): mark them so single points are visible.
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A last second covered by less of the window than this is not drawn as a rate: a count
/// over a sliver of a second is noise.
const MIN_COVERED_S: f64 = 0.1;

fn time_panels(run: &RunReport) -> Vec<Panel> {
    let b = &run.summary.timeseries;
    let t0 = b.first().map_or(0, |x| x.t_s);
    let t1 = b.last().map_or(1, |x| x.t_s);
    let x = |t: u64| (t - t0) as f64;
    let x_range = Some((0.0, x(t1).max(1.0)));
    let pts = |f: fn(&crate::stats::TimeBucket) -> Option<f64>| -> Vec<(f64, f64)> {
        b.iter()
            .filter_map(|k| f(k).map(|v| (x(k.t_s), v)))
            .collect()
    };
    // Counts per second, over the part of the second inside the window: the last second
    // of a run is partial, and its raw count would draw a drop that did not happen.
    let rate = |f: fn(&crate::stats::TimeBucket) -> f64| -> Vec<(f64, f64)> {
        let last = b.len().saturating_sub(1);
        b.iter()
            .enumerate()
            .filter(|(i, k)| {
                k.covered_s > 0.0 && !(*i == last && *i > 0 && k.covered_s < MIN_COVERED_S)
            })
            .map(|(_, k)| (x(k.t_s), f(k) / k.covered_s))
            .collect()
    };
    let x_desc = "seconds since the measured interval began";
    let mut panels = Vec::new();
    // TTFT gets its own panel: on the E2E scale it would be a flat line at zero.
    if run.summary.latency.ttft.is_some() {
        panels.push(Panel {
            title: format!("{} — TTFT of requests sent in each second (ms)", run.label),
            x_desc,
            y_desc: "ms",
            series: vec![
                Series {
                    name: "TTFT p50",
                    color: P50,
                    points: pts(|k| k.ttft_p50_ms),
                },
                Series {
                    name: "TTFT p99",
                    color: P99,
                    points: pts(|k| k.ttft_p99_ms),
                },
            ],
            x_range,
        });
    }
    panels.push(Panel {
        title: format!(
            "{} — E2E latency of requests sent in each second (ms)",
            run.label
        ),
        x_desc,
        y_desc: "ms",
        series: vec![
            Series {
                name: "E2E p50",
                color: E2E50,
                points: pts(|k| k.e2e_p50_ms),
            },
            Series {
                name: "E2E p99",
                color: E2E99,
                points: pts(|k| k.e2e_p99_ms),
            },
        ],
        x_range,
    });
    panels.push(Panel {
        title: "output tokens received per second".to_owned(),
        x_desc,
        y_desc: "tokens/s",
        series: vec![Series {
            name: "output tok/s",
            color: P50,
            points: rate(|k| k.output_tokens),
        }],
        x_range,
    });
    panels.push(Panel {
        title: "requests sent and completed per second (a gap: the target fell behind)".to_owned(),
        x_desc,
        y_desc: "requests/s",
        series: vec![
            Series {
                name: "sent",
                color: NEUTRAL,
                points: rate(|k| k.sent as f64),
            },
            Series {
                name: "completed",
                color: E2E50,
                points: rate(|k| k.completed as f64),
            },
            Series {
                name: "failed (by send time)",
                color: P99,
                points: rate(|k| k.failed as f64),
            },
        ],
        x_range,
    });
    panels
}

fn sweep_panels(runs: &[RunReport]) -> Vec<Panel> {
    let mut sorted: Vec<&RunReport> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        a.summary
            .throughput
            .requests_per_s
            .total_cmp(&b.summary.throughput.requests_per_s)
    });
    let curve = |pick: fn(&RunReport) -> &Option<LatencyStats>, f: fn(&LatencyStats) -> f64| {
        sorted
            .iter()
            .filter_map(|r| {
                pick(r)
                    .as_ref()
                    .map(|s| (r.summary.throughput.requests_per_s, f(s)))
            })
            .collect::<Vec<_>>()
    };
    let x_desc = "achieved throughput (successful requests/s)";
    vec![
        Panel {
            title: "TTFT against throughput (ms)".to_owned(),
            x_desc,
            y_desc: "ms",
            series: vec![
                Series {
                    name: "TTFT p50",
                    color: P50,
                    points: curve(|r| &r.summary.latency.ttft, |s| s.p50_ms),
                },
                Series {
                    name: "TTFT p99",
                    color: P99,
                    points: curve(|r| &r.summary.latency.ttft, |s| s.p99_ms),
                },
            ],
            x_range: None,
        },
        Panel {
            title: "TPOT and ITL against throughput (ms)".to_owned(),
            x_desc,
            y_desc: "ms",
            series: vec![
                Series {
                    name: "TPOT p50",
                    color: P50,
                    points: curve(|r| &r.summary.latency.tpot, |s| s.p50_ms),
                },
                Series {
                    name: "ITL p99",
                    color: P99,
                    points: curve(|r| &r.summary.latency.itl, |s| s.p99_ms),
                },
            ],
            x_range: None,
        },
        Panel {
            title: "E2E latency against throughput (ms)".to_owned(),
            x_desc,
            y_desc: "ms",
            series: vec![
                Series {
                    name: "E2E p50",
                    color: E2E50,
                    points: curve(|r| &r.summary.latency.e2e, |s| s.p50_ms),
                },
                Series {
                    name: "E2E p99",
                    color: E2E99,
                    points: curve(|r| &r.summary.latency.e2e, |s| s.p99_ms),
                },
            ],
            x_range: None,
        },
    ]
}
