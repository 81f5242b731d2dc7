//! `sluice load`: the LLM load generator's command line. Parsing and wiring only; the work
//! is in the `sluice-load` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sluice_load::compare::{
    compare, read_report, render_comparison, shape_differences, Thresholds,
};
use sluice_load::config::parse_header;
use sluice_load::report::{
    render_console, render_markdown, write_chart, write_csv, write_json, write_ndjson, write_text,
};
use sluice_load::target::parse_weights;
use sluice_load::units::{parse_duration, parse_fraction, parse_threshold};
use sluice_load::{
    Arrival, Bound, ConnectionReuse, LengthDist, LoadConfig, LoadError, Mode, Outcome, PauseDist,
    RepeatedPrompts, Slo, Warmup, WorkloadSpec,
};

/// Exit status: the run passed its SLO gates (or had none and completed).
const EXIT_PASS: u8 = 0;
/// Exit status of a usage error (as clap's own).
const EXIT_USAGE: u8 = 2;
/// Exit status: an SLO gate failed / `compare` found a regression.
const EXIT_FAIL: u8 = 3;
/// Exit status: not enough evidence to pass (too few samples for a gate, error rate above
/// --max-error-rate, or no successful request).
const EXIT_INCONCLUSIVE: u8 = 4;
/// Exit status after Ctrl-C (128 + SIGINT), once the reports are written.
const EXIT_INTERRUPTED: u8 = 130;

const EXIT_CODES: &str = "\
Exit status:
  0  pass: every SLO gate held (or no --slo was given and the run completed)
  1  tool error (unreachable target, unreadable dataset, unwritable report, ...)
  2  usage error (compare: reports of different shapes, without --force)
  3  an SLO gate failed (compare: a regression beyond the threshold and the noise)
  4  INCONCLUSIVE: a gate had fewer than --min-samples samples or fewer than its percentile
     needs (p99: 563), the error rate was above --max-error-rate, or no request succeeded
     (such a run never passes)
  130  interrupted: the first Ctrl-C stops sending, cuts the open requests and writes every
     report asked for, marked interrupted; a second Ctrl-C exits at once, writing nothing";

/// Generate LLM load against OpenAI-compatible endpoints and measure TTFT, TPOT, ITL,
/// E2E, throughput and goodput exactly; gate on SLOs.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = EXIT_CODES
)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,

    /// Boxed: the run flags are many, and the CLI's subcommand enum should not grow to
    /// their size for every other command.
    #[command(flatten)]
    pub run: Box<RunArgs>,
}

#[derive(clap::Subcommand, Debug)]
pub enum LoadCommand {
    /// Compare two JSON reports metric by metric; exit 3 on a regression beyond the
    /// threshold (latency up, throughput down, error rate up).
    #[command(
        after_help = "Exit status: 0 no regression, 1 tool error, 2 usage error, 3 regression."
    )]
    Compare(CompareArgs),
    /// Convert a ShareGPT-style conversation dump into the JSONL request file
    /// `--workload file --dataset` replays: each conversation's first user turn (with its
    /// system turn), asking for as many tokens as the recorded answer had (counted with
    /// --tokenizer, else estimated at 4 characters a token).
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The ShareGPT JSON file (an array of `{"conversations": [{"from", "value"}, ...]}`).
    pub input: PathBuf,
    /// Where to write the JSONL requests.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// The `model` written into each request (`--model` replaces it at run time unless
    /// `--keep-model`).
    #[arg(long, default_value = "model")]
    pub model: String,
    /// Take at most this many conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip conversations whose answer is longer than this many tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_output_tokens: u32,
    /// The target model's tokenizer.json (Hugging Face format): answers are counted with
    /// it instead of estimated.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The baseline report (written with --json).
    pub baseline: PathBuf,
    /// The report to judge against the baseline.
    pub new: PathBuf,
    /// Largest tolerated relative change of a latency or throughput metric.
    #[arg(long, default_value = "10%", value_parser = threshold)]
    pub threshold: f64,
    /// Largest tolerated absolute increase of the error rate (0.01 = one percentage point).
    #[arg(long, default_value = "0.01", value_parser = fraction)]
    pub error_rate_threshold: f64,
    /// Compare reports of different shapes (closed against open loop, another rate or
    /// concurrency, other prompt or answer lengths, streaming against not), which are
    /// refused otherwise: their numbers do not measure the same thing.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalArg {
    Constant,
    Poisson,
    Gamma,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionReuseArg {
    /// The connection idle longest: load spread over every open connection, as from many
    /// clients.
    Spread,
    /// The connection idle shortest, as one client's HTTP pool picks.
    Recent,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadArg {
    Synthetic,
    SharedPrefix,
    MultiTurn,
    File,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Base URL of an OpenAI-compatible API (http://HOST:PORT/v1); repeatable.
    #[arg(long = "url", value_name = "URL", required = true)]
    pub urls: Vec<String>,
    /// Share of requests per --url, e.g. 3,1 (default: equal).
    #[arg(long, value_name = "W,W,...")]
    pub url_weights: Option<String>,
    /// Model name sent in every request.
    #[arg(long, required = true)]
    pub model: Option<String>,

    /// Open loop: requests per second, sent on schedule whatever the target does.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: requests kept in flight (default 1). With --sweep: the saturation run's
    /// concurrency (default 256).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Gaps between open-loop arrivals.
    #[arg(long, value_enum, default_value = "constant")]
    pub arrival: ArrivalArg,
    /// Gamma shape for --arrival gamma: 1 = Poisson, below 1 burstier, above 1 smoother.
    #[arg(long)]
    pub burstiness: Option<f64>,
    /// Synchronous run, saturation run, then --sweep-steps rates in between; a row each.
    #[arg(long, conflicts_with = "rate")]
    pub sweep: bool,
    /// Rates between the synchronous and saturation throughput in a --sweep.
    #[arg(long, default_value_t = 5, requires = "sweep")]
    pub sweep_steps: usize,

    /// Measured duration of each run (after --warmup), e.g. 30s, 2m. Default 30s unless
    /// --requests is given.
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Measured requests of each run (after warm-up).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Time at the start of each run excluded from the statistics.
    #[arg(long, value_parser = duration, conflicts_with = "warmup_requests")]
    pub warmup: Option<Duration>,
    /// Requests at the start of each run excluded from the statistics.
    #[arg(long)]
    pub warmup_requests: Option<u64>,

    /// Stream answers (default); TTFT, TTST, TPOT and ITL need it.
    #[arg(long, overrides_with = "no_stream")]
    pub stream: bool,
    /// Ask for whole answers: only E2E latency is defined then.
    #[arg(long)]
    pub no_stream: bool,

    /// What to send.
    #[arg(long, value_enum)]
    pub workload: Option<WorkloadArg>,
    /// Prompt length in tokens (≈ words; exact with --tokenizer): 128, uniform:64-256 or
    /// normal:200,50.
    #[arg(long, default_value = "128", value_parser = length)]
    pub input_tokens: LengthDist,
    /// Answer length in tokens, sent as max_tokens with ignore_eos.
    #[arg(long, default_value = "128", value_parser = length)]
    pub output_tokens: LengthDist,
    /// shared-prefix: number of distinct system prompts.
    #[arg(long, default_value_t = 8)]
    pub system_prompts: u32,
    /// shared-prefix: users per system prompt.
    #[arg(long, default_value_t = 16)]
    pub users_per_prompt: u32,
    /// System prompt length in tokens (default 1024 for shared-prefix, 0 for multi-turn).
    #[arg(long)]
    pub system_prompt_tokens: Option<u32>,
    /// multi-turn: turns per conversation.
    #[arg(long, default_value_t = 4)]
    pub turns: u32,
    /// multi-turn: a user's pause between an answer and their next question: 0 (none),
    /// 5s (fixed) or exp:5s (exponential, that mean). With a pause many conversations are
    /// open at once and their turns arrive interleaved, as from real users.
    #[arg(long, default_value = "0", value_parser = pause, value_name = "PAUSE")]
    pub think_time: PauseDist,
    /// Share of requests (0–1) that repeat one of --repeat-prompts popular requests, the
    /// rest each their own: traffic for an inference cache. Synthetic and shared-prefix
    /// workloads.
    #[arg(long, value_name = "SHARE")]
    pub repeat_share: Option<f64>,
    /// How many popular requests --repeat-share draws from (uniformly).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub repeat_prompts: u32,
    /// JSONL file of chat request bodies (implies --workload file).
    #[arg(long, value_name = "FILE.jsonl")]
    pub dataset: Option<PathBuf>,
    /// Send each dataset line at its `timestamp` (seconds) relative to the first.
    #[arg(long, requires = "dataset", conflicts_with_all = ["rate", "concurrency", "sweep"])]
    pub trace_timestamps: bool,
    /// Keep each dataset line's own model instead of --model.
    #[arg(long, requires = "dataset")]
    pub keep_model: bool,

    /// Extra request header, 'Name: value'; repeatable (credentials are redacted in reports).
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = header)]
    pub headers: Vec<(String, String)>,
    /// API key sent as `Authorization: Bearer KEY` (redacted in reports). Prefer
    /// --api-key-env: a key on the command line is visible to every user of the machine.
    #[arg(long, value_name = "KEY", conflicts_with = "api_key_env")]
    pub api_key: Option<String>,
    /// Name of an environment variable holding the API key (e.g. OPENAI_API_KEY).
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Seed of prompts, lengths and arrival times. The same seed sends the same prompts: a
    /// target with a prefix cache has them cached on a second run (change the seed for
    /// cold-cache numbers).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest wait for a complete answer.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub timeout: Duration,
    /// PEM file of certificates to trust for https:// targets, besides the web's roots
    /// (a private or corporate CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The target model's tokenizer.json (Hugging Face format). Prompts are then sized in
    /// its tokens, and answers that come without `usage` are counted with it (instead of
    /// one token per stream chunk).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// After the measured window closes (--duration), how long requests still open may
    /// take to finish; then they are cut, counted as failed (`unfinished`), and the run
    /// ends. Throughput counts only what completed within the window.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub grace: Duration,
    /// Open loop: most connections the generator may open (it opens more as needed and
    /// reports when this cap held requests back).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open loop: threads doing the network I/O. One leaves the most CPU to a target on the
    /// same machine; add more when the report says the generator was the bottleneck.
    #[arg(long, default_value_t = 1)]
    pub io_threads: usize,
    /// Open loop: which idle connection takes the next request.
    #[arg(long, value_enum, default_value = "recent")]
    pub connection_reuse: ConnectionReuseArg,

    /// SLO gate, e.g. 'ttft.p99<200ms', 'error_rate<0.01', 'goodput>=10'; repeatable.
    #[arg(long = "slo", value_name = "EXPR", value_parser = slo)]
    pub slos: Vec<Slo>,
    /// Error rate above which the run is INCONCLUSIVE (exit 4).
    #[arg(long, default_value = "0.05", value_parser = fraction)]
    pub max_error_rate: f64,
    /// Samples a gate needs; fewer make it INCONCLUSIVE.
    #[arg(long, default_value_t = 20)]
    pub min_samples: u64,

    /// Write the JSON report (schema 1; what `compare` reads).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one JSON line per request, with every token chunk's arrival
    /// (`token_times_ms`, from the request's start) for offline ITL.
    #[arg(long, value_name = "FILE")]
    pub ndjson: Option<PathBuf>,
    /// Write one CSV row per request (the NDJSON's fields; token times space-separated).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the report as Markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write an SVG chart (latency and throughput over time; latency against throughput
    /// for a sweep).
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn fraction(s: &str) -> Result<f64, String> {
    parse_fraction(s).map_err(|e| e.to_string())
}

fn threshold(s: &str) -> Result<f64, String> {
    parse_threshold(s).map_err(|e| e.to_string())
}

fn length(s: &str) -> Result<LengthDist, String> {
    s.parse()
        .map_err(|e: sluice_load::dist::DistError| e.to_string())
}

fn pause(s: &str) -> Result<PauseDist, String> {
    s.parse()
        .map_err(|e: sluice_load::dist::PauseError| e.to_string())
}

fn header(s: &str) -> Result<(String, String), String> {
    parse_header(s)
}

fn slo(s: &str) -> Result<Slo, String> {
    s.parse()
        .map_err(|e: sluice_load::slo::SloError| e.to_string())
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(LoadCommand::Compare(c)) => run_compare(&c),
        Some(LoadCommand::Import(i)) => run_import(&i),
        None => run_load(*args.run).await,
    }
}

fn run_compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let base = read_report(&args.baseline)?;
    let new = read_report(&args.new)?;
    let differences = shape_differences(&base, &new);
    if !differences.is_empty() && !args.force {
        return Ok(usage_error(&format!(
            "the two reports measured different things, so their numbers cannot be compared:\n  - {}\npass --force to compare them anyway",
            differences.join("\n  - ")
        )));
    }
    let result = compare(
        &base,
        &new,
        Thresholds {
            relative: args.threshold,
            error_rate: args.error_rate_threshold,
        },
    );
    print!("{}", render_comparison(&result));
    for d in &differences {
        println!("note (--force): {d}");
    }
    Ok(ExitCode::from(if result.regressions() > 0 {
        EXIT_FAIL
    } else {
        EXIT_PASS
    }))
}

fn run_import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    use sluice_load::workload::sharegpt::{import, ImportOptions};
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(sluice_load::tokenizer::TokenCounter::load)
        .transpose()?;
    let counted = if tokenizer.is_some() {
        "counted with --tokenizer"
    } else {
        "estimated at 4 characters a token"
    };
    let imported = import(
        &text,
        &args.model,
        ImportOptions {
            limit: args.limit,
            max_output_tokens: args.max_output_tokens,
            tokenizer,
        },
    )
    .with_context(|| format!("{} is not a usable ShareGPT dump", args.input.display()))?;
    std::fs::write(&args.out, &imported.jsonl)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} requests to {}, answer lengths {counted} (skipped {} conversations without a user turn and its answer, {} with an answer over --max-output-tokens {})",
        imported.requests,
        args.out.display(),
        imported.skipped_no_answer,
        imported.skipped_too_long,
        args.max_output_tokens
    );
    Ok(ExitCode::from(EXIT_PASS))
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\n\nFor more information, try 'sluice load --help'.");
    ExitCode::from(EXIT_USAGE)
}

async fn run_load(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match config_from(&args) {
        Ok(c) => c,
        Err(message) => return Ok(usage_error(&message)),
    };
    let interrupt = sluice_load::Interrupt::new();
    let watcher = tokio::spawn(watch_ctrl_c(interrupt.clone()));
    let ran = sluice_load::run_interruptible(config, interrupt).await;
    watcher.abort();
    let result = match ran {
        Ok(r) => r,
        Err(LoadError::Config(message)) => return Ok(usage_error(&message)),
        Err(e) => return Err(e.into()),
    };
    let report = &result.report;
    print!("{}", render_console(report));
    if let Some(path) = &args.json {
        write_json(report, path)?;
    }
    if let Some(path) = &args.ndjson {
        write_ndjson(&result.records, path)?;
    }
    if let Some(path) = &args.csv {
        write_csv(&result.records, path)?;
    }
    if let Some(path) = &args.markdown {
        write_text(&render_markdown(report), path)?;
    }
    if let Some(path) = &args.chart {
        write_chart(report, path).context("--chart")?;
    }
    if report.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::from(match report.verdict.outcome {
        Outcome::Pass => EXIT_PASS,
        Outcome::Fail => EXIT_FAIL,
        Outcome::Inconclusive => EXIT_INCONCLUSIVE,
    }))
}

/// The first Ctrl-C asks the run to stop (it then writes its reports); a second one exits
/// at once, for when that is not fast enough.
async fn watch_ctrl_c(interrupt: sluice_load::Interrupt) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!("\ninterrupted: stopping, cutting the open requests and writing the reports (Ctrl-C again to exit at once)");
    interrupt.trigger();
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("interrupted again: exiting without reports");
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }
}

/// Turns the flags into a [`LoadConfig`]; `Err` is a usage error.
fn config_from(a: &RunArgs) -> Result<LoadConfig, String> {
    let model = a.model.clone().ok_or("--model is required")?;
    let mut c = LoadConfig::new(a.urls.clone(), model);
    c.url_weights = a
        .url_weights
        .as_deref()
        .map(parse_weights)
        .transpose()
        .map_err(|e| e.to_string())?;
    let arrival_name = match a.arrival {
        ArrivalArg::Constant => "constant",
        ArrivalArg::Poisson => "poisson",
        ArrivalArg::Gamma => "gamma",
    };
    let arrival = Arrival::from_name(arrival_name, a.burstiness)?;
    c.mode = if a.trace_timestamps {
        Mode::Trace
    } else if a.sweep {
        Mode::Sweep {
            steps: a.sweep_steps,
            saturation_concurrency: a.concurrency.unwrap_or(256),
            arrival,
        }
    } else if let Some(rate) = a.rate {
        Mode::Rate { rate, arrival }
    } else {
        if a.arrival != ArrivalArg::Constant {
            return Err("--arrival shapes an open-loop --rate; give --rate too".into());
        }
        Mode::Concurrency {
            concurrency: a.concurrency.unwrap_or(1),
        }
    };
    c.bound = Bound {
        duration: match (a.duration, a.requests) {
            (None, None) if !a.trace_timestamps => Some(Duration::from_secs(30)),
            (d, _) => d,
        },
        requests: a.requests,
    };
    c.warmup = match (a.warmup, a.warmup_requests) {
        (Some(d), _) => Warmup::Duration(d),
        (None, Some(n)) => Warmup::Requests(n),
        (None, None) => Warmup::None,
    };
    c.stream = !a.no_stream;
    let workload = match (a.workload, &a.dataset) {
        (None, Some(_)) => WorkloadArg::File,
        (None, None) => WorkloadArg::Synthetic,
        (Some(w), _) => w,
    };
    if workload != WorkloadArg::File && a.dataset.is_some() {
        return Err("--dataset goes with --workload file".into());
    }
    c.workload = match workload {
        WorkloadArg::Synthetic => WorkloadSpec::Synthetic {
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
        },
        WorkloadArg::SharedPrefix => WorkloadSpec::SharedPrefix {
            system_prompts: a.system_prompts,
            users_per_prompt: a.users_per_prompt,
            system_prompt_tokens: a.system_prompt_tokens.unwrap_or(1024),
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
        },
        WorkloadArg::MultiTurn => WorkloadSpec::MultiTurn {
            turns: a.turns,
            system_prompt_tokens: a.system_prompt_tokens.unwrap_or(0),
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            think_time: a.think_time,
        },
        WorkloadArg::File => WorkloadSpec::File {
            path: a
                .dataset
                .clone()
                .ok_or("--workload file needs --dataset FILE.jsonl")?,
            keep_model: a.keep_model,
            trace_timestamps: a.trace_timestamps,
        },
    };
    c.repeats = a
        .repeat_share
        .map(|share| RepeatedPrompts::new(share, a.repeat_prompts))
        .transpose()?;
    c.headers = a.headers.clone();
    let key = match (&a.api_key, &a.api_key_env) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(name)) => Some(
            std::env::var(name)
                .map_err(|_| format!("--api-key-env {name}: the variable is not set"))?,
        ),
        (None, None) => None,
    };
    if let Some(key) = key {
        if c.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            return Err(
                "--api-key and --header 'Authorization: ...' both set the key; give one".into(),
            );
        }
        c.headers
            .push(("authorization".to_owned(), format!("Bearer {key}")));
    }
    c.seed = a.seed;
    c.timeout = a.timeout;
    c.grace = a.grace;
    c.ca_file = a.ca_file.clone();
    c.tokenizer = a.tokenizer.clone();
    c.max_connections = a.max_connections;
    c.io_threads = a.io_threads;
    c.connection_reuse = match a.connection_reuse {
        ConnectionReuseArg::Spread => ConnectionReuse::Spread,
        ConnectionReuseArg::Recent => ConnectionReuse::Recent,
    };
    c.slos = a.slos.clone();
    c.max_error_rate = a.max_error_rate;
    c.min_samples = a.min_samples;
    c.progress = std::io::stderr().is_terminal();
    c.keep_token_times = a.ndjson.is_some() || a.csv.is_some();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        run: RunArgs,
    }

    fn config(args: &[&str]) -> Result<LoadConfig, String> {
        let mut all = vec!["load", "--url", "http://127.0.0.1:1/v1", "--model", "m"];
        all.extend_from_slice(args);
        config_from(&Wrap::try_parse_from(all).map_err(|e| e.to_string())?.run)
    }

    fn authorization(c: &LoadConfig) -> Vec<&str> {
        c.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn an_api_key_becomes_a_bearer_header() {
        let c = config(&["--api-key", "sk-test"]).unwrap();
        assert_eq!(authorization(&c), ["Bearer sk-test"]);
        std::env::set_var("SLUICE_TEST_KEY_FOR_LOAD", "sk-env");
        let c = config(&["--api-key-env", "SLUICE_TEST_KEY_FOR_LOAD"]).unwrap();
        assert_eq!(authorization(&c), ["Bearer sk-env"]);
        let e = config(&["--api-key-env", "SLUICE_TEST_KEY_UNSET_FOR_LOAD"]).unwrap_err();
        assert!(e.contains("is not set"), "{e}");
        let e = config(&["--api-key", "a", "--header", "Authorization: Bearer b"]).unwrap_err();
        assert!(e.contains("give one"), "{e}");
        assert!(config(&["--api-key", "a", "--api-key-env", "X"]).is_err());
    }

    #[test]
    fn the_tokenizer_flag_reaches_the_config() {
        let c = config(&["--tokenizer", "models/llama/tokenizer.json"]).unwrap();
        assert_eq!(
            c.tokenizer.as_deref(),
            Some(std::path::Path::new("models/llama/tokenizer.json"))
        );
        assert_eq!(config(&[]).unwrap().tokenizer, None);
    }

    #[test]
    fn repeated_prompts_reach_the_config_and_bad_shares_are_refused() {
        let c = config(&["--repeat-share", "0.4", "--repeat-prompts", "20"]).unwrap();
        assert_eq!(c.repeats, Some(RepeatedPrompts::new(0.4, 20).unwrap()));
        assert_eq!(config(&[]).unwrap().repeats, None);
        let e = config(&["--repeat-share", "2"]).unwrap_err();
        assert!(e.contains("between 0 and 1"), "{e}");
    }
}
