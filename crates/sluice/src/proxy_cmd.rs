//! `sluice proxy`: record and replay the traffic between a service and its LLM provider
//! (see `docs/proxy.md`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use sluice_proxy::{KeyOptions, Mode, ProxyConfig, ReplayTiming};

/// How recorded event streams are paced on replay.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayTimingArg {
    /// Every event at once.
    Instant,
    /// Each event at its recorded offset (times --timing-scale).
    Recorded,
}

/// Flags of `sluice proxy`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Where requests are forwarded, e.g. https://api.openai.com. The client's path and
    /// query are appended.
    #[arg(long)]
    pub upstream: String,

    /// Directory holding the recordings (created when missing).
    #[arg(long)]
    pub dir: PathBuf,

    /// replay (disk only; a miss is a 502), replay-or-record, record, read-old-write-new or
    /// passthrough. Defaults to replay so that a CI run never calls a provider by accident.
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
}

impl ProxyArgs {
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
        let mut header_allow_list = KeyOptions::default().header_allow_list;
        header_allow_list.extend(self.headers.iter().map(|h| h.to_ascii_lowercase()));
        Ok(ProxyConfig {
            upstream: self.upstream.clone(),
            dir: self.dir.clone(),
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
        })
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
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
