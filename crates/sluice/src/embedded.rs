//! `embedded-mock://NAME` endpoints: the sluice command starts one in-process mock engine per
//! distinct NAME on a free loopback port and rewrites the URL to point at it. This is how
//! `sluice serve` with no arguments gives a working gateway with nothing else installed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use sluice_gateway::Config;
use sluice_mock::{MockOptions, MockServer};

pub const SCHEME: &str = "embedded-mock://";

/// The built-in configuration: the checked-in quickstart example, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../../../examples/quickstart.toml");

/// Every distinct embedded engine name in the config, in order of first appearance.
fn embedded_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for model in config.models.values() {
        for ep in &model.endpoints {
            if let Some(name) = ep.url.strip_prefix(SCHEME) {
                let name = name.trim_end_matches('/').to_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn rewrite(config: &mut Config, urls: &BTreeMap<String, String>) {
    for model in config.models.values_mut() {
        for ep in &mut model.endpoints {
            if let Some(name) = ep.url.strip_prefix(SCHEME) {
                let name = name.trim_end_matches('/').to_owned();
                if let Some(url) = urls.get(&name) {
                    ep.url = url.clone();
                    // Metrics and errors name the engine as the config does, not by its
                    // ephemeral port.
                    ep.name.get_or_insert(name);
                }
            }
        }
    }
}

/// Points embedded endpoints at a placeholder, for validating a config without starting
/// engines.
pub fn rewrite_for_check(config: &mut Config) {
    let urls = embedded_names(config)
        .into_iter()
        .map(|n| (n, "http://embedded-mock.invalid/v1".to_owned()))
        .collect();
    rewrite(config, &urls);
}

/// Points embedded endpoints at engines already running (a config re-read on SIGHUP);
/// names without a running engine are left unresolved, and the check reports them.
pub fn point_at(config: &mut Config, urls: &BTreeMap<String, String>) {
    rewrite(config, urls);
}

/// Starts the embedded engines the config names and rewrites their URLs.
pub async fn start_engines(config: &mut Config) -> anyhow::Result<Vec<(String, MockServer)>> {
    let mut engines = Vec::new();
    let mut urls = BTreeMap::new();
    for name in embedded_names(config) {
        let opts = MockOptions {
            // One seed for all: the mock promises the same answer to the same request, and
            // through the gateway that must hold whichever engine the round robin picks.
            seed: 0,
            ..MockOptions::default()
        };
        let server = MockServer::start(opts, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .with_context(|| format!("starting embedded mock engine `{name}`"))?;
        urls.insert(name.clone(), server.base_url());
        engines.push((name, server));
    }
    rewrite(config, &urls);
    Ok(engines)
}
