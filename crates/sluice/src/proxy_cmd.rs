//! `sluice proxy`: record and replay the traffic between a service and its LLM provider;
//! `sluice proxy report` / `prune` for the recordings directory (see `docs/proxy.md`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use sluice_proxy::{
    KeyOptions, Mode, ProxyConfig, PruneOptions, ReplayTiming, DEFAULT_DIFF_IGNORE,
};

/// How recorded event streams are paced on replay.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayTimingArg {
    /// Every event at once.
    Instant,
    /// Each event at its recorded offset (times --timing-scale).
    Recorded,
}

/// `sluice proxy [FLAGS]` serves; `sluice proxy report|prune` inspect the recordings.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,

    #[command(flatten)]
    pub serve: ProxyServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ProxyCommand {
    /// Which recordings the last proxy run used and which it did not (stale fixtures), its
    /// misses and its drift. Reads DIR/.sluice/last-run.json and drift.json.
    Report(ReportArgs),
    /// Delete the recordings the last proxy run did not use.
    Prune(PruneArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The recordings directory the proxy ran with.
    #[arg(long)]
    pub dir: PathBuf,

    /// Show only the last run's view: used and unused entries, misses, drift. Fails when
    /// there is no last-run record. Without it, every entry is listed with its recording
    /// time and (when known) whether the last run used it, followed by the same summary.
    #[arg(long)]
    pub since_start: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The recordings directory the proxy ran with.
    #[arg(long)]
    pub dir: PathBuf,

    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Prune even when the last run is still marked running, had replay misses, or was a
    /// passthrough run.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `sluice proxy` when it serves. `--upstream` and `--dir` are required only when
/// no subcommand is given; they are `Option`s because clap builds this struct (empty) for
/// subcommand invocations too.
#[derive(clap::Args, Debug)]
pub struct ProxyServeArgs {
    /// Where requests are forwarded, e.g. https://api.openai.com. The client's path and
    /// query are appended.
    #[arg(long, required = true)]
    pub upstream: Option<String>,

    /// Directory holding the recordings (created when missing).
    #[arg(long, required = true)]
    pub dir: Option<PathBuf>,

    /// replay (disk only; a miss is a 502), replay-or-record, record, read-old-write-new,
    /// passthrough or diff (serve live, report drift from the recordings). Defaults to
    /// replay so that a CI run never calls a provider by accident.
    #[arg(long, default_value = "replay")]
    pub mode: Mode,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// JSON body field left out of the request key: a dotted path, `[*]` for every array
    /// element (`messages[*].name`). Repeatable.
    #[arg(long = "ignore-path", value_name = "PATH")]
    pub ignore_paths: Vec<String>,

    /// Request header that counts in the key (content-type always does). Secret-looking
    /// headers never count. Repeatable.
    #[arg(long = "header", value_name = "NAME")]
    pub headers: Vec<String>,

    /// How recorded event streams are paced on replay.
    #[arg(long, value_enum, default_value = "instant")]
    pub replay_timing: ReplayTimingArg,

    /// Multiplies recorded event offsets with --replay-timing recorded (0.5 = twice as
    /// fast).
    #[arg(long, default_value_t = 1.0)]
    pub timing_scale: f64,

    /// Name of an environment variable whose value must never be written to a recording.
    /// Repeatable.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_envs: Vec<String>,

    /// Response field a drift comparison ignores, in addition to the defaults (id,
    /// created, created_at, system_fingerprint, request_id, x_request_id, x-request-id,
    /// timestamp). A bare name matches at any depth; a dotted path (`usage.total_tokens`,
    /// `choices[*].logprobs`) from the body's (or each event's) root. Repeatable.
    #[arg(long = "diff-ignore", value_name = "PATH")]
    pub diff_ignore: Vec<String>,
}

impl ProxyServeArgs {
    fn config(&self) -> anyhow::Result<ProxyConfig> {
        if !(self.timing_scale.is_finite() && self.timing_scale >= 0.0) {
            bail!(
                "--timing-scale must be a finite number >= 0, got {}",
                self.timing_scale
            );
        }
        let mut secret_values = Vec::new();
        for name in &self.secret_envs {
            let value = std::env::var(name)
                .with_context(|| format!("--secret-env {name}: the variable is not set"))?;
            secret_values.push(value);
        }
        let (Some(upstream), Some(dir)) = (&self.upstream, &self.dir) else {
            bail!(
                "sluice proxy needs --upstream URL and --dir PATH (or a subcommand: report, prune)"
            );
        };
        let mut header_allow_list = KeyOptions::default().header_allow_list;
        header_allow_list.extend(self.headers.iter().map(|h| h.to_ascii_lowercase()));
        Ok(ProxyConfig {
            upstream: upstream.clone(),
            dir: dir.clone(),
            mode: self.mode,
            key: KeyOptions {
                ignore_paths: self.ignore_paths.clone(),
                header_allow_list,
            },
            replay_timing: match self.replay_timing {
                ReplayTimingArg::Instant => ReplayTiming::Instant,
                ReplayTimingArg::Recorded => ReplayTiming::Recorded {
                    scale: self.timing_scale,
                },
            },
            secret_values,
            diff_ignore: DEFAULT_DIFF_IGNORE
                .iter()
                .map(|s| (*s).to_owned())
                .chain(self.diff_ignore.iter().cloned())
                .collect(),
        })
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ProxyCommand::Report(report)) => run_report(&report),
        Some(ProxyCommand::Prune(prune)) => run_prune(&prune),
        None => serve(args.serve).await,
    }
}

fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let report = sluice_proxy::usage_report(&args.dir, args.since_start)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", sluice_proxy::render_report(&report, args.since_start));
    }
    Ok(())
}

fn run_prune(args: &PruneArgs) -> anyhow::Result<()> {
    let outcome = sluice_proxy::prune(
        &args.dir,
        PruneOptions {
            dry_run: args.dry_run,
            force: args.force,
        },
    )?;
    let verb = if outcome.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for file in &outcome.removed {
        println!("{verb} {}", args.dir.join(file).display());
    }
    println!(
        "{} {} unused entr{}, kept {} used by the last run",
        verb,
        outcome.removed.len(),
        if outcome.removed.len() == 1 {
            "y"
        } else {
            "ies"
        },
        outcome.kept
    );
    Ok(())
}

async fn serve(args: ProxyServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let (mode, dir, upstream) = (config.mode, config.dir.clone(), config.upstream.clone());
    let server = sluice_proxy::ProxyServer::start(config, args.listen)
        .await
        .with_context(|| format!("cannot start the proxy (listen address {})", args.listen))?;
    println!(
        "sluice proxy ({mode}) listening on {} -> {upstream}, recordings in {}",
        server.base_url(),
        dir.display()
    );
    println!(
        "point your client's base URL at {}/v1 (OpenAI-style clients)",
        server.base_url()
    );
    crate::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
