//! `sluice keys create|list|revoke`: API keys in the store the gateway's config names.
//!
//! The store is Redis when the config sets `state.redis_url`, else the SQLite file in
//! `server.data_dir`; running gateways on it see a new or revoked key within a second.

use std::path::PathBuf;

use anyhow::{bail, Context};
use sluice_gateway::auth::{
    now_unix, parse_lifetime, KeyRecord, KeyTable, NewKey, NewSecret, ScopeSet,
};
use sluice_gateway::config::ResolvedConfig;
use sluice_gateway::Config;

#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// The gateway's config file: its `server.data_dir` holds the keys, its models are what
    /// `--models` may name.
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Make a key and store its digest. The key is printed once, alone on the last line of
    /// standard output; it cannot be shown again.
    Create(CreateArgs),
    /// List the keys (never their secrets): name, tenant, scopes, models, status.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by name. Gateways sharing the store refuse it within a second.
    Revoke {
        /// The key's name (as `create --name` set it, or as `list` shows it).
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// The tenant the key belongs to (`*`: the global tenant, whose admin keys see every
    /// tenant).
    #[arg(long)]
    tenant: String,
    /// Comma-separated: chat:write, models:read, traces:read, traces:write, admin.
    #[arg(long, value_parser = scopes)]
    scopes: ScopeSet,
    /// Comma-separated models the key may use; left out, every model.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Lifetime: 30d, 12h, 90m. Left out, the key lives until revoked.
    #[arg(long, value_parser = lifetime)]
    expires: Option<std::time::Duration>,
    /// Unique name of the key (for `revoke`, the audit log, metrics). Default: `key-` and 8
    /// random hex digits.
    #[arg(long)]
    name: Option<String>,
    /// Who or what uses the key. Default: its name.
    #[arg(long)]
    subject: Option<String>,
    /// The key's own limit over every model it uses: requests per rolling minute.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests_per_minute: Option<u64>,
    /// The key's own limit over every model it uses: tokens per rolling minute.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tokens_per_minute: Option<u64>,
}

fn scopes(s: &str) -> Result<ScopeSet, String> {
    ScopeSet::parse_list(s)
}

fn lifetime(s: &str) -> Result<std::time::Duration, String> {
    parse_lifetime(s)
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let config = load_config(args.config)?;
    let table = KeyTable::for_config(&config)?;
    match args.command {
        KeysCommand::Create(c) => create(&table, &config, c),
        KeysCommand::List { tenant } => list(&table, tenant.as_deref()),
        KeysCommand::Revoke { name } => {
            if !table.revoke(&name, None)? {
                bail!("no key named `{name}` in {}", table.location());
            }
            println!("revoked key `{name}`; gateways on this store refuse it within a second");
            Ok(())
        }
    }
}

/// The config, resolved for its data directory and model names. Endpoint keys are not
/// needed here, so unset `api_key_env` variables are no reason to refuse.
fn load_config(path: Option<PathBuf>) -> anyhow::Result<ResolvedConfig> {
    let Some(path) = path else {
        bail!("sluice keys needs the gateway's config: --config FILE (or SLUICE_CONFIG); its server.data_dir holds the keys");
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut config = Config::from_toml(&text, &path)?;
    crate::embedded::rewrite_for_check(&mut config);
    let config = config.resolve(&path, &|_| Some("unused".into()))?;
    if config.auth.mode != sluice_gateway::config::AuthMode::Keys {
        eprintln!(
            "note: {} has auth.mode = \"none\": the gateway accepts every caller and ignores keys until it is set to \"keys\"",
            path.display()
        );
    }
    Ok(config)
}

fn create(table: &KeyTable, config: &ResolvedConfig, c: CreateArgs) -> anyhow::Result<()> {
    if let Some(m) = c.models.iter().find(|m| !config.models.contains_key(*m)) {
        let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
        bail!(
            "--models: model `{m}` is not configured; the config has {}",
            known.join(", ")
        );
    }
    let name = match c.name {
        Some(n) => n,
        None => {
            // A short random suffix from a fresh secret: names need only be unique.
            let suffix = NewSecret::generate()?.digest.to_hex();
            format!("key-{}", &suffix[..8])
        }
    };
    let expires_unix = c
        .expires
        .map(|d| now_unix().saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    let (record, secret) = table.create(NewKey {
        name,
        tenant: c.tenant,
        subject: c.subject,
        scopes: c.scopes,
        models: c.models,
        expires_unix,
        requests_per_minute: c.requests_per_minute,
        tokens_per_minute: c.tokens_per_minute,
    })?;
    println!(
        "created key `{}` for tenant `{}` (scopes {}; models {}; {}) in {}",
        record.name,
        record.tenant,
        record.scopes,
        models_text(&record),
        expiry_text(&record),
        table.location()
    );
    println!("the key is shown once, below; store it now");
    println!("{secret}");
    Ok(())
}

fn list(table: &KeyTable, tenant: Option<&str>) -> anyhow::Result<()> {
    let keys = table.list(tenant)?;
    if keys.is_empty() {
        println!("no keys in {}", table.location());
        return Ok(());
    }
    let now = now_unix();
    println!(
        "{:<24} {:<16} {:<8} {:<40} MODELS",
        "NAME", "TENANT", "STATUS", "SCOPES"
    );
    for k in &keys {
        let status = if k.revoked_unix.is_some() {
            "revoked"
        } else if !k.active_at(now) {
            "expired"
        } else {
            "active"
        };
        println!(
            "{:<24} {:<16} {:<8} {:<40} {}",
            k.name,
            k.tenant,
            status,
            k.scopes.to_string(),
            models_text(k)
        );
    }
    Ok(())
}

fn models_text(k: &KeyRecord) -> String {
    if k.models.is_empty() {
        "all".into()
    } else {
        k.models.join(",")
    }
}

fn expiry_text(k: &KeyRecord) -> String {
    match k.expires_unix {
        None => "no expiry".into(),
        Some(at) => format!("expires in {} s", at.saturating_sub(now_unix())),
    }
}
