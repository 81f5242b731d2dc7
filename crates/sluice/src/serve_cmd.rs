//! `sluice serve` and `sluice check-config`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sluice_gateway::{Config, WorkerPool};

use crate::embedded;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Gateway config file (TOML). Without it, the embedded default runs.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (`127.0.0.1:8080`, `localhost:8080`); overrides `server.listen`.
    #[arg(long)]
    listen: Option<String>,
}

fn read_config(path: Option<&Path>) -> anyhow::Result<(Config, PathBuf)> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Ok((Config::from_toml(&text, p)?, p.to_owned()))
        }
        None => {
            let p = PathBuf::from("<embedded default: examples/quickstart.toml>");
            Ok((Config::from_toml(embedded::DEFAULT_CONFIG, &p)?, p))
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (mut config, path) = read_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let engines = embedded::start_engines(&mut config).await?;
    let resolved = config.resolve(&path, &env)?;
    let pool = WorkerPool::start(&resolved).await?;
    let addr = pool.local_addr();
    let models: Vec<&str> = resolved.models.keys().map(String::as_str).collect();
    let scheme = if resolved.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "sluice serve: listening on {scheme}://{addr} (models: {}; {} worker thread(s))",
        models.join(", "),
        pool.workers()
    );
    for (name, engine) in &engines {
        println!("  embedded mock engine `{name}` at {}", engine.base_url());
    }
    if let Some(model) = models.first() {
        println!("try:");
        println!(
            "  curl -s {scheme}://{addr}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"
        );
    }
    let reloads = tokio::spawn(reload_on_sighup(
        args.config.clone(),
        pool.shared().clone(),
        engines
            .iter()
            .map(|(n, e)| (n.clone(), e.base_url()))
            .collect(),
    ));
    crate::shutdown_signal().await;
    reloads.abort();
    pool.shutdown().await?;
    for (_, engine) in engines {
        engine.shutdown().await;
    }
    Ok(())
}

pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let (mut config, path) = read_config(Some(path))?;
    embedded::rewrite_for_check(&mut config);
    let resolved = config.resolve(&path, &env)?;
    let endpoints: usize = resolved.models.values().map(|m| m.endpoints.len()).sum();
    println!(
        "{}: ok ({} model(s), {} endpoint(s), listen {})",
        path.display(),
        resolved.models.len(),
        endpoints,
        resolved.listen
    );
    Ok(())
}

/// On every SIGHUP, the config file is read again and every model's endpoints brought in
/// line with it (added, removed, replaced); the rest of the file takes effect at the next
/// start. A file that does not check is refused whole, and the running endpoints stay.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    shared: std::sync::Arc<sluice_gateway::state::GatewayShared>,
    engines: std::collections::BTreeMap<String, String>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: endpoints change only through the admin API");
            return;
        };
        while hangups.recv().await.is_some() {
            let Some(path) = &path else {
                tracing::warn!("SIGHUP: the embedded default has no file to read again");
                continue;
            };
            match reread(path, &engines) {
                Ok(config) => {
                    let r = sluice_gateway::endpoint_admin::reload(&shared, &config);
                    tracing::info!(
                        added = ?r.added,
                        removed = ?r.removed,
                        replaced = ?r.replaced,
                        "SIGHUP: endpoints reloaded from {}",
                        path.display()
                    );
                    for refused in &r.refused {
                        tracing::warn!("SIGHUP: left as it was: {refused}");
                    }
                }
                Err(e) => tracing::error!("SIGHUP: config not reloaded, nothing changed: {e:#}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, shared, engines);
}

fn reread(
    path: &Path,
    engines: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<sluice_gateway::config::ResolvedConfig> {
    let (mut config, path) = read_config(Some(path))?;
    embedded::point_at(&mut config, engines);
    Ok(config.resolve(&path, &env)?)
}
