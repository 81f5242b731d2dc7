//! `sluice proxy`: record and replay the traffic between a service and its LLM providers
//! (see `docs/proxy.md`); `sluice proxy ca`, the CA its TLS interception uses; and
//! `sluice proxy report` / `prune` for the recordings directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_proxy::ca::default_ca_dir;
use sluice_proxy::config_file::ReplayTimingName;
use sluice_proxy::{
    CertificateAuthority, KeyOptions, Mode, ProxyConfig, ProxyFile, PruneOptions, ReplayTiming,
    Route, DEFAULT_DIFF_IGNORE, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_UPSTREAM_READ_TIMEOUT,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// How recorded event streams are paced on replay.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayTimingArg {
    /// Every event at once.
    Instant,
    /// Each event at its recorded offset (times --timing-scale).
    Recorded,
}

/// `sluice proxy [FLAGS]` serves; `sluice proxy ca` manages the interception CA;
/// `sluice proxy report|prune` inspect the recordings. The serving flags are all optional
/// to clap (it builds them, empty, for subcommands too); what serving needs is checked when
/// it starts.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
    #[command(flatten)]
    pub serve: ProxyServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ProxyCommand {
    /// Print the path of the CA certificate the proxy signs intercepted TLS with
    /// (generating the CA if needed) and how to make clients trust it.
    Ca(CaArgs),
    /// Which recordings the last proxy run used and which it did not (stale fixtures), its
    /// misses and its drift. Reads DIR/.sluice/last-run.json and drift.json.
    Report(ReportArgs),
    /// Delete the recordings the last proxy run did not use.
    Prune(PruneArgs),
}

#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// Directory of the CA (default: $SLUICE_CA_DIR, else $XDG_DATA_HOME/sluice/ca, else
    /// ~/.local/share/sluice/ca).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The recordings directory the proxy ran with.
    #[arg(long)]
    pub dir: PathBuf,

    /// A run record (a `last-run.json`) to read instead of DIR/.sluice/last-run.json.
    /// Repeat it to merge the runs of a sharded suite: an entry any of them used is used.
    #[arg(long = "run", value_name = "FILE")]
    pub runs: Vec<PathBuf>,

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

    /// A run record (a `last-run.json`) to read instead of DIR/.sluice/last-run.json.
    /// Repeat it to merge the runs of a sharded suite: an entry any of them used is kept.
    #[arg(long = "run", value_name = "FILE")]
    pub runs: Vec<PathBuf>,

    /// Refuse when the run used less than this percentage of the recordings it could have
    /// used (a suite that ran only partly makes most of them look stale). Lower it when
    /// the suite really shrank.
    #[arg(long, value_name = "PERCENT", default_value_t = sluice_proxy::DEFAULT_MIN_USED_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub min_used: u8,

    /// Prune even when the run is still marked running, had replay misses, was a
    /// passthrough run, used no recording at all, or used fewer than --min-used.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `sluice proxy` when it serves. Each may also be set in --config; a flag wins
/// over the file for single values and adds to the file's lists.
#[derive(clap::Args, Debug)]
pub struct ProxyServeArgs {
    /// TOML file with any of the options below and `[[routes]]` (prefix, url,
    /// strip_prefix) for several upstreams by path prefix.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Where origin-form requests are forwarded, e.g. https://api.openai.com (the route of
    /// prefix `/`; it replaces such a route from --config). The client's path and query are
    /// appended. Without it and without routes, the proxy serves only forward-proxy
    /// (HTTP_PROXY/HTTPS_PROXY) requests.
    #[arg(long)]
    pub upstream: Option<String>,

    /// Directory holding the recordings (created when missing). Required, here or as `dir`
    /// in --config.
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// replay (disk only; a miss is a 502), replay-or-record, record, read-old-write-new,
    /// passthrough or diff (serve live, report drift from the recordings). Defaults to
    /// replay so that a CI run never calls a provider by accident.
    #[arg(long)]
    pub mode: Option<Mode>,

    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// JSON body field left out of the request key: a dotted path, `[*]` for every array
    /// element (`messages[*].name`). Repeatable.
    #[arg(long = "ignore-path", value_name = "PATH")]
    pub ignore_paths: Vec<String>,

    /// Request header that counts in the key (content-type always does). Secret-looking
    /// headers never count. Repeatable.
    #[arg(long = "header", value_name = "NAME")]
    pub headers: Vec<String>,

    /// How recorded event streams are paced on replay [default: instant].
    #[arg(long, value_enum)]
    pub replay_timing: Option<ReplayTimingArg>,

    /// Multiplies recorded event offsets with --replay-timing recorded (0.5 = twice as
    /// fast) [default: 1].
    #[arg(long)]
    pub timing_scale: Option<f64>,

    /// Name of an environment variable whose value must never be written to a recording.
    /// Repeatable.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_envs: Vec<String>,

    /// Directory of the CA used to intercept CONNECT tunnels (see `sluice proxy ca`).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,

    /// PEM file of extra root certificates to trust for upstream calls (a corporate CA),
    /// besides the built-in web roots.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Response field a drift comparison ignores, in addition to the defaults (id,
    /// created, created_at, system_fingerprint, request_id, x_request_id, x-request-id,
    /// timestamp, usage.prompt_tokens_details.cached_tokens,
    /// usage.input_tokens_details.cached_tokens) and to `diff_ignore` in --config. A bare
    /// name matches at any depth; a dotted path (`usage.total_tokens`,
    /// `choices[*].logprobs`) from the body's (or each event's) root. Repeatable.
    #[arg(long = "diff-ignore", value_name = "PATH")]
    pub diff_ignore: Vec<String>,

    /// A non-2xx status to record as well (2xx always are), e.g. 429 to replay a rate-limit
    /// answer to the client under test. Adds to `record_statuses` in --config. Repeatable.
    #[arg(long = "record-status", value_name = "CODE", value_parser = clap::value_parser!(u16).range(100..=599))]
    pub record_statuses: Vec<u16>,

    /// Restart the repeat counts when a request arrives after this long without any
    /// (e.g. `5s`), so a long-lived proxy serves each run of the suite from the first
    /// recording of every repeated request. `POST /_sluice/reset` restarts them at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub reset_repeats_when_idle: Option<Duration>,

    /// The most of one upstream answer held in memory (default 64 MiB): a larger body is
    /// answered with a 502, a larger event stream is relayed but not recorded. Overrides
    /// `max_response_bytes` in --config.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_response_bytes: Option<u64>,

    /// How long an upstream may stay silent (before its answer's head, or between two
    /// reads of its body) before the call fails (default 10m). Overrides
    /// `upstream_read_timeout` in --config.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub upstream_read_timeout: Option<Duration>,
}

fn parse_idle(s: &str) -> Result<Duration, String> {
    let d = sluice_load::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0 (e.g. 5s)".to_owned());
    }
    Ok(d)
}

impl ProxyServeArgs {
    /// The proxy config and listen address from the file (if any) and the flags.
    fn config(&self) -> anyhow::Result<(ProxyConfig, SocketAddr)> {
        let file = match &self.config {
            Some(path) => ProxyFile::load(path)?,
            None => ProxyFile::default(),
        };
        let from = |flag: &str, key: &str| match &self.config {
            Some(path) => format!("{flag} (or `{key}` in {})", path.display()),
            None => flag.to_owned(),
        };
        let Some(dir) = self.dir.clone().or(file.dir.clone()) else {
            bail!(
                "{} is required: the recordings directory (or use a subcommand: ca, report, prune)",
                from("--dir", "dir")
            );
        };
        let timing_scale = self.timing_scale.or(file.timing_scale).unwrap_or(1.0);
        if !(timing_scale.is_finite() && timing_scale >= 0.0) {
            bail!("--timing-scale must be a finite number >= 0, got {timing_scale}");
        }
        let mut routes = file.routes();
        if let Some(upstream) = &self.upstream {
            let route = Route::catch_all(upstream.clone());
            if let Err((_, message)) = route.check() {
                bail!("--upstream: {message}");
            }
            routes.retain(|r| !r.prefix.trim_end_matches('/').is_empty());
            routes.push(route);
        }
        let mut secret_values = Vec::new();
        for name in file.secret_envs.iter().chain(&self.secret_envs) {
            let value = std::env::var(name).with_context(|| {
                format!(
                    "{} {name}: the variable is not set",
                    from("--secret-env", "secret_envs")
                )
            })?;
            secret_values.push(value);
        }
        let mut header_allow_list = KeyOptions::default().header_allow_list;
        header_allow_list.extend(
            file.headers
                .iter()
                .chain(&self.headers)
                .map(|h| h.to_ascii_lowercase()),
        );
        let timing = match (self.replay_timing, file.replay_timing) {
            (Some(ReplayTimingArg::Recorded), _) | (None, Some(ReplayTimingName::Recorded)) => {
                ReplayTiming::Recorded {
                    scale: timing_scale,
                }
            }
            _ => ReplayTiming::Instant,
        };
        let listen = match self.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse()?,
        };
        let config = ProxyConfig {
            routes,
            dir,
            mode: self.mode.or(file.mode).unwrap_or_default(),
            key: KeyOptions {
                ignore_paths: file
                    .ignore_paths
                    .iter()
                    .chain(&self.ignore_paths)
                    .cloned()
                    .collect(),
                header_allow_list,
            },
            replay_timing: timing,
            secret_values,
            ca_dir: self.ca_dir.clone().or(file.ca_dir.clone()),
            upstream_ca: self.upstream_ca.clone().or(file.upstream_ca.clone()),
            diff_ignore: DEFAULT_DIFF_IGNORE
                .iter()
                .map(|s| (*s).to_owned())
                .chain(file.diff_ignore.iter().cloned())
                .chain(self.diff_ignore.iter().cloned())
                .collect(),
            record_statuses: file
                .record_statuses
                .iter()
                .chain(&self.record_statuses)
                .copied()
                .collect(),
            reset_repeats_when_idle: match (
                self.reset_repeats_when_idle,
                &file.reset_repeats_when_idle,
            ) {
                (Some(d), _) => Some(d),
                (None, Some(text)) => Some(parse_idle(text).map_err(|e| {
                    anyhow::anyhow!("invalid config: `reset_repeats_when_idle`: {text:?}: {e}")
                })?),
                (None, None) => None,
            },
            max_response_bytes: match self.max_response_bytes {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => file
                    .max_response_bytes
                    .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            },
            upstream_read_timeout: match (self.upstream_read_timeout, &file.upstream_read_timeout) {
                (Some(d), _) => d,
                (None, Some(text)) => parse_idle(text).map_err(|e| {
                    anyhow::anyhow!("invalid config: `upstream_read_timeout`: {text:?}: {e}")
                })?,
                (None, None) => DEFAULT_UPSTREAM_READ_TIMEOUT,
            },
        };
        Ok((config, listen))
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ProxyCommand::Ca(ca)) => print_ca(ca),
        Some(ProxyCommand::Report(report)) => run_report(&report),
        Some(ProxyCommand::Prune(prune)) => run_prune(&prune),
        None => serve(args.serve).await,
    }
}

fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let report = sluice_proxy::usage_report_of_runs(&args.dir, args.since_start, &args.runs)?;
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
            min_used_percent: args.min_used,
            runs: args.runs.clone(),
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
    for kept in &outcome.unreachable {
        println!(
            "kept {} (unused, but the run could not have used it: {})",
            args.dir.join(&kept.file).display(),
            kept.reason
        );
    }
    println!(
        "{} {} unused entr{}, kept {} used by the run and {} it could not have used",
        verb,
        outcome.removed.len(),
        if outcome.removed.len() == 1 {
            "y"
        } else {
            "ies"
        },
        outcome.kept,
        outcome.unreachable.len()
    );
    Ok(())
}

async fn serve(args: ProxyServeArgs) -> anyhow::Result<()> {
    let (config, listen) = args.config()?;
    let (mode, dir) = (config.mode, config.dir.clone());
    let routes = config.routes.clone();
    let ca_dir = config.ca_dir.clone();
    let server = sluice_proxy::ProxyServer::start(config, listen)
        .await
        .with_context(|| format!("cannot start the proxy (listen address {listen})"))?;
    let base = server.base_url();
    println!(
        "sluice proxy ({mode}) listening on {base}, recordings in {}",
        dir.display()
    );
    for route in &routes {
        let strip = if route.strip_prefix && route.prefix != "/" {
            " (prefix stripped)"
        } else {
            ""
        };
        println!("  {base}{} -> {}{strip}", route.prefix, route.url);
    }
    if routes.is_empty() {
        println!("  no reverse routes: requests by path get a 502 `no_upstream`");
    }
    let ca = ca_dir.map(Ok).unwrap_or_else(default_ca_dir);
    println!(
        "forward proxy: HTTP_PROXY={base} HTTPS_PROXY={base}; intercepted TLS is signed by the CA in {} (see `sluice proxy ca`)",
        match &ca {
            Ok(dir) => dir.display().to_string(),
            Err(e) => format!("<none: {e}>"),
        }
    );
    crate::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

fn print_ca(args: CaArgs) -> anyhow::Result<()> {
    let dir = match args.ca_dir {
        Some(dir) => dir,
        None => default_ca_dir()?,
    };
    let ca = CertificateAuthority::load_or_create(&dir)?;
    let cert = ca.cert_path().display().to_string();
    println!("{cert}");
    println!();
    print!("{}", trust_instructions(ca.cert_path(), &dir));
    Ok(())
}

fn trust_instructions(cert: &Path, dir: &Path) -> String {
    let cert = cert.display();
    let dir = dir.display();
    format!(
        "The proxy signs a certificate per host with this CA when a client tunnels HTTPS
through it (HTTPS_PROXY). Clients must trust the CA:

  Python (requests, httpx, openai):  REQUESTS_CA_BUNDLE={cert} SSL_CERT_FILE={cert}
  Node.js:                           NODE_EXTRA_CA_CERTS={cert}
  OpenSSL-based tools, Go, curl:     SSL_CERT_FILE={cert}   (curl: --cacert {cert})
  Debian/Ubuntu system store:        sudo cp {cert} /usr/local/share/ca-certificates/sluice-proxy-ca.crt
                                     sudo update-ca-certificates

SSL_CERT_FILE and REQUESTS_CA_BUNDLE replace the default roots: set them only for clients
that talk to the proxy alone.

  curl -x http://127.0.0.1:8787 --cacert {cert} https://api.openai.com/v1/models
  HTTPS_PROXY=http://127.0.0.1:8787 SSL_CERT_FILE={cert} python app.py   # openai-python

The private key next to it ({dir}/{key}) is readable by you only; keep it so. Delete
the directory to generate a new CA (and trust the new one).
",
        key = sluice_proxy::ca::CA_KEY_FILE,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    #[test]
    fn diff_ignore_adds_file_and_flag_paths_to_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "dir = \"rec\"\ndiff_ignore = [\"usage\"]\n").unwrap();
        let cli = Cli::try_parse_from([
            "proxy",
            "--config",
            file.to_str().unwrap(),
            "--diff-ignore",
            "choices[*].logprobs",
            "--mode",
            "diff",
        ])
        .unwrap();
        assert!(cli.proxy.command.is_none());
        let (config, _) = cli.proxy.serve.config().unwrap();
        assert_eq!(config.mode, Mode::Diff);
        assert_eq!(config.dir, dir.path().join("rec"));
        let mut expected: Vec<String> = DEFAULT_DIFF_IGNORE
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        expected.extend(["usage".to_owned(), "choices[*].logprobs".to_owned()]);
        assert_eq!(config.diff_ignore, expected);
    }

    #[test]
    fn upstream_bounds_come_from_the_file_unless_a_flag_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(
            &file,
            "dir = \"rec\"\nmax_response_bytes = 1000\nupstream_read_timeout = \"30s\"\n",
        )
        .unwrap();
        let config = |extra: &[&str]| {
            let mut args = vec!["proxy", "--config", file.to_str().unwrap()];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|cli| cli.proxy.serve.config())
        };
        let (from_file, _) = config(&[]).unwrap().unwrap();
        assert_eq!(from_file.max_response_bytes, 1000);
        assert_eq!(from_file.upstream_read_timeout, Duration::from_secs(30));
        let (flagged, _) = config(&["--max-response-bytes", "5", "--upstream-read-timeout", "2m"])
            .unwrap()
            .unwrap();
        assert_eq!(flagged.max_response_bytes, 5);
        assert_eq!(flagged.upstream_read_timeout, Duration::from_secs(120));
        assert!(config(&["--max-response-bytes", "0"]).is_err());
        assert!(config(&["--upstream-read-timeout", "0s"]).is_err());
        std::fs::write(&file, "dir = \"rec\"\nupstream_read_timeout = \"soon\"\n").unwrap();
        let err = config(&[]).unwrap().unwrap_err().to_string();
        assert!(err.contains("`upstream_read_timeout`"), "{err}");
        let (defaults, _) = Cli::try_parse_from(["proxy", "--dir", "rec"])
            .unwrap()
            .proxy
            .serve
            .config()
            .unwrap();
        assert_eq!(defaults.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(
            defaults.upstream_read_timeout,
            DEFAULT_UPSTREAM_READ_TIMEOUT
        );
    }

    #[test]
    fn subcommands_parse_beside_the_flat_serving_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.proxy.command);
        assert!(matches!(
            parse(&["proxy", "report", "--dir", "d", "--since-start"]),
            Ok(Some(ProxyCommand::Report(ReportArgs {
                since_start: true,
                ..
            })))
        ));
        assert!(matches!(
            parse(&["proxy", "prune", "--dir", "d", "--dry-run"]),
            Ok(Some(ProxyCommand::Prune(PruneArgs { dry_run: true, .. })))
        ));
        assert!(matches!(
            parse(&["proxy", "ca"]),
            Ok(Some(ProxyCommand::Ca(_)))
        ));
        assert!(parse(&["proxy", "--dir", "d", "report", "--dir", "d"]).is_err());
    }
}
