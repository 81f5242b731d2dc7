//! A whole `sluice load` invocation: check and prepare everything, run one plan or a sweep
//! of them, analyse each run and judge it against the SLOs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::client::Connection;
use crate::config::{LoadConfig, Mode};
use crate::error::LoadError;
use crate::gate::{combine, evaluate, GatePolicy, Outcome};
use crate::host::Environment;
use crate::record::RequestRecord;
use crate::report::{LoadReport, RunReport, ToolInfo, VerdictReport, SCHEMA_VERSION};
use crate::run::{execute, Interrupt, LoadPoint, RunPlan, RunSettings};
use crate::stats::analyze;
use crate::target::{parse_targets, weighted_cycle};
use crate::workload::{RequestShape, Workload, WorkloadSpec};

/// The report plus every request's record (for `--ndjson`), run by run.
#[derive(Debug)]
pub struct LoadTestResult {
    pub report: LoadReport,
    pub records: Vec<(String, Vec<RequestRecord>)>,
}

/// Runs the load test `config` describes.
pub async fn run(config: LoadConfig) -> Result<LoadTestResult, LoadError> {
    run_interruptible(config, Interrupt::new()).await
}

/// [`run`], stopped early when `interrupt` is triggered: the run in progress closes its
/// window at once (open requests are cut and counted as `interrupted`), a sweep runs no
/// further step, and the result is marked interrupted, with every report still complete
/// for what was measured.
pub async fn run_interruptible(
    config: LoadConfig,
    interrupt: Interrupt,
) -> Result<LoadTestResult, LoadError> {
    check(&config)?;
    let tokenizer = config
        .tokenizer
        .as_deref()
        .map(crate::tokenizer::TokenCounter::load)
        .transpose()?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut targets = parse_targets(&config.urls, config.url_weights.as_deref())?;
    let tls = if targets.iter().any(|t| t.tls_name.is_some()) {
        Some(tls_settings(config.ca_file.as_deref())?)
    } else {
        None
    };
    for t in &mut targets {
        let addr = t.resolve().await?;
        // Fail fast, with a clear message, on a target that is not there at all (or whose
        // certificate is not trusted) rather than measuring 100 % connection errors for
        // the whole duration.
        let name_and_tls = t
            .tls_name
            .as_ref()
            .and_then(|n| tls.as_ref().map(|s| (s, n)));
        // Bounded like every request: a server that takes the connection and never
        // answers (TCP or TLS) must not hang the tool before it starts.
        let opened = tokio::time::timeout(
            config.timeout,
            Connection::open(addr, crate::clock::Clock::start(), name_and_tls),
        )
        .await;
        let reason = match opened {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no connection (TCP and TLS) within --timeout {}",
                crate::units::format_duration(config.timeout)
            )),
        };
        if let Some(reason) = reason {
            return Err(LoadError::Unreachable {
                url: t.url.clone(),
                addr,
                reason,
            });
        }
    }
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    if config.repeats.is_some() && !config.workload.repeatable() {
        return Err(LoadError::Config(format!(
            "--repeat-share goes with the synthetic and shared-prefix workloads, not {}",
            config.workload.name()
        )));
    }
    let workload = Workload::build(
        &config.workload,
        RequestShape {
            model: config.model.clone(),
            stream: config.stream,
            seed: config.seed,
            tokenizer: tokenizer.clone(),
        },
        config.repeats,
    )?;
    let settings = Arc::new(RunSettings {
        cycle: weighted_cycle(&weights),
        targets,
        headers: header_map(&config.headers)?,
        workload: Arc::new(workload),
        bound: config.bound,
        warmup: config.warmup,
        timeout: config.timeout,
        max_connections: config.max_connections,
        io_threads: config.io_threads,
        connection_reuse: config.connection_reuse,
        progress: config.progress,
        keep_token_times: config.keep_token_times,
        seed: config.seed,
        grace: config.grace,
        interrupt: interrupt.clone(),
        tls,
        tokenizer,
    });
    let policy = GatePolicy {
        min_samples: config.min_samples,
        max_error_rate: config.max_error_rate,
    };

    let mut runs: Vec<RunReport> = Vec::new();
    let mut records = Vec::new();
    let run_plan = |plan: RunPlan| {
        let settings = settings.clone();
        let slos = config.slos.clone();
        async move {
            let out = execute(settings, &plan).await?;
            let analysis = analyze(&out, &slos);
            let verdict = evaluate(&slos, &analysis, policy);
            let report = RunReport {
                label: plan.label.clone(),
                load: plan.load.clone(),
                summary: analysis.summary,
                verdict,
            };
            Ok::<_, LoadError>((report, out.records))
        }
    };
    match &config.mode {
        Mode::Rate { rate, arrival } => {
            let (r, recs) = run_plan(RunPlan {
                label: format!("rate {rate}/s"),
                load: LoadPoint::Rate {
                    rate: *rate,
                    arrival: *arrival,
                },
                index_base: 0,
            })
            .await?;
            records.push((r.label.clone(), recs));
            runs.push(r);
        }
        Mode::Concurrency { concurrency } => {
            let (r, recs) = run_plan(RunPlan {
                label: format!("concurrency {concurrency}"),
                load: LoadPoint::Concurrency {
                    concurrency: *concurrency,
                },
                index_base: 0,
            })
            .await?;
            records.push((r.label.clone(), recs));
            runs.push(r);
        }
        Mode::Trace => {
            let (r, recs) = run_plan(RunPlan {
                label: "trace".to_owned(),
                load: LoadPoint::Trace,
                index_base: 0,
            })
            .await?;
            records.push((r.label.clone(), recs));
            runs.push(r);
        }
        Mode::Sweep {
            steps,
            saturation_concurrency,
            arrival,
        } => {
            let mut plans = vec![
                RunPlan {
                    label: "synchronous".to_owned(),
                    load: LoadPoint::Concurrency { concurrency: 1 },
                    index_base: 0,
                },
                RunPlan {
                    label: "saturation".to_owned(),
                    load: LoadPoint::Concurrency {
                        concurrency: *saturation_concurrency,
                    },
                    index_base: 1 << 40,
                },
            ];
            for plan in plans.drain(..) {
                let (r, recs) = run_plan(plan).await?;
                records.push((r.label.clone(), recs));
                runs.push(r);
                if interrupt.is_triggered() {
                    break;
                }
            }
            if interrupt.is_triggered() {
                return Ok(finish(config, started_unix_s, runs, records, true));
            }
            let low = runs[0].summary.throughput.requests_per_s;
            let high = runs[1].summary.throughput.requests_per_s;
            if low <= 0.0 || high <= 0.0 {
                return Err(LoadError::Sweep(format!(
                    "the synchronous and saturation runs must both complete requests to derive rates (got {low:.3} and {high:.3} req/s); see their errors with --json"
                )));
            }
            for (i, rate) in sweep_rates(low, high, *steps).into_iter().enumerate() {
                if interrupt.is_triggered() {
                    break;
                }
                let (r, recs) = run_plan(RunPlan {
                    label: format!("rate {rate:.2}/s"),
                    load: LoadPoint::Rate {
                        rate,
                        arrival: *arrival,
                    },
                    index_base: (i as u64 + 2) << 40,
                })
                .await?;
                records.push((r.label.clone(), recs));
                runs.push(r);
            }
        }
    }
    let interrupted = interrupt.is_triggered();
    Ok(finish(config, started_unix_s, runs, records, interrupted))
}

/// The report of the runs done. An interrupted invocation never passes: what was not run
/// cannot have met its gates, so a passing verdict becomes inconclusive.
fn finish(
    config: LoadConfig,
    started_unix_s: f64,
    runs: Vec<RunReport>,
    records: Vec<(String, Vec<RequestRecord>)>,
    interrupted: bool,
) -> LoadTestResult {
    let verdicts: Vec<_> = runs.iter().map(|r| r.verdict.clone()).collect();
    let mut outcome = combine(&verdicts, matches!(config.mode, Mode::Sweep { .. }));
    if interrupted && outcome == Outcome::Pass {
        outcome = Outcome::Inconclusive;
    }
    let report = LoadReport {
        schema: SCHEMA_VERSION,
        tool: ToolInfo::current(),
        started_unix_s,
        environment: Environment::detect(),
        targets: config.urls.clone(),
        config,
        runs,
        interrupted,
        verdict: VerdictReport { outcome },
    };
    LoadTestResult { report, records }
}

/// The TLS client of `https://` targets: the web's roots (webpki-roots) plus the
/// certificates of `ca_file`; HTTP/1.1 by ALPN.
fn tls_settings(ca_file: Option<&Path>) -> Result<crate::client::TlsSettings, LoadError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |message: String| LoadError::CaFile {
            path: path.to_owned(),
            message,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("holds no PEM certificate".to_owned()));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LoadError::Config(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `steps` rates evenly spaced strictly between `low` and `high` (in increasing order).
pub fn sweep_rates(low: f64, high: f64, steps: usize) -> Vec<f64> {
    let (lo, hi) = if low <= high {
        (low, high)
    } else {
        (high, low)
    };
    (1..=steps)
        .map(|i| lo + (hi - lo) * i as f64 / (steps + 1) as f64)
        .collect()
}

/// More I/O threads than this is a typo, not a machine.
const MAX_IO_THREADS: usize = 256;

fn check(config: &LoadConfig) -> Result<(), LoadError> {
    let bad = |m: &str| Err(LoadError::Config(m.to_owned()));
    if config.urls.is_empty() {
        return bad("give at least one --url");
    }
    if config.model.trim().is_empty() {
        return bad("--model must not be empty");
    }
    let is_trace_file = matches!(
        config.workload,
        WorkloadSpec::File {
            trace_timestamps: true,
            ..
        }
    );
    match &config.mode {
        Mode::Trace if !is_trace_file => {
            return bad("trace replay needs --workload file --dataset FILE --trace-timestamps")
        }
        Mode::Rate { rate, .. } if !(rate.is_finite() && *rate > 0.0) => {
            return bad("--rate must be a positive number of requests per second")
        }
        Mode::Concurrency { concurrency: 0 } => return bad("--concurrency must be at least 1"),
        Mode::Sweep { steps: 0, .. } => return bad("--sweep-steps must be at least 1"),
        Mode::Sweep {
            saturation_concurrency: 0,
            ..
        } => return bad("the saturation concurrency must be at least 1"),
        _ => {}
    }
    if is_trace_file && !matches!(config.mode, Mode::Trace) {
        return bad("--trace-timestamps sets the send times: it cannot be combined with --rate, --concurrency or --sweep");
    }
    if config.bound.duration.is_none()
        && config.bound.requests.is_none()
        && !matches!(config.mode, Mode::Trace)
    {
        return bad("give --duration or --requests to bound the run");
    }
    if config.bound.duration == Some(Duration::ZERO) || config.bound.requests == Some(0) {
        return bad("--duration and --requests must be above zero");
    }
    if config.max_connections == 0 {
        return bad("--max-connections must be at least 1");
    }
    if config.io_threads == 0 || config.io_threads > MAX_IO_THREADS {
        return bad(&format!(
            "--io-threads must be between 1 and {MAX_IO_THREADS}"
        ));
    }
    if config.timeout.is_zero() {
        return bad("--timeout must be above zero");
    }
    Ok(())
}

fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, LoadError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            LoadError::Config(format!("--header: `{k}` is not a valid header name"))
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            LoadError::Config(format!(
                "--header `{k}`: the value is not a valid header value"
            ))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_rates_are_strictly_between() {
        let r = sweep_rates(10.0, 50.0, 3);
        assert_eq!(r, vec![20.0, 30.0, 40.0]);
        assert_eq!(sweep_rates(50.0, 10.0, 1), vec![30.0]);
    }

    #[test]
    fn bad_combinations_are_refused() {
        let base = LoadConfig::new(vec!["http://127.0.0.1:1/v1".into()], "m");
        let mut c = base.clone();
        c.mode = Mode::Trace;
        assert!(check(&c)
            .unwrap_err()
            .to_string()
            .contains("--trace-timestamps"));
        let mut c = base.clone();
        c.bound.duration = None;
        assert!(check(&c)
            .unwrap_err()
            .to_string()
            .contains("--duration or --requests"));
        let mut c = base.clone();
        c.mode = Mode::Rate {
            rate: 0.0,
            arrival: crate::arrival::Arrival::Constant,
        };
        assert!(check(&c).unwrap_err().to_string().contains("--rate"));
        for n in [0, MAX_IO_THREADS + 1] {
            let mut c = base.clone();
            c.io_threads = n;
            assert!(check(&c).unwrap_err().to_string().contains("--io-threads"));
        }
        assert!(check(&base).is_ok());
    }
}
