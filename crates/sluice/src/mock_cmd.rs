//! `sluice mock`: run the mock LLM engine (see `docs/mock.md`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_mock::{
    Faults, KvCacheOptions, KvEncoding, KvEventOptions, KvPublisher, MockEngine, MockOptions,
    OutputOptions, ProviderLimits, TimingModel,
};

/// Flags of `sluice mock`. Defaults equal `MockOptions::default()`.
#[derive(clap::Args, Debug)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Seed mixed into every answer: mocks with different seeds answer differently.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Fixed part of the time to first token (`20ms`, `1.5ms`, `1s`).
    #[arg(long, default_value = "20ms", value_parser = duration)]
    pub ttft_base: Duration,

    /// Prefill time per prompt token not served from the prefix cache (`20us`).
    #[arg(long, default_value = "20us", value_parser = duration)]
    pub prefill_per_token: Duration,

    /// Time between two output tokens of one stream when it runs alone.
    #[arg(long, default_value = "10ms", value_parser = duration)]
    pub decode_interval: Duration,

    /// Fractional slowdown of the decode interval per additional request in flight.
    #[arg(long, default_value_t = 0.02)]
    pub batch_slowdown: f64,

    /// Tokens per prefix-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,

    /// Prefix-cache capacity in blocks; least recently used blocks are evicted beyond it.
    #[arg(long, default_value_t = 8192)]
    pub kv_capacity_blocks: usize,

    /// Shortest natural answer, in tokens.
    #[arg(long, default_value_t = 16)]
    pub min_output_tokens: u32,

    /// Longest natural answer, in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_output_tokens: u32,

    /// A model name listed by /v1/models; repeatable. Default: "mock". Requests naming any
    /// model are served.
    #[arg(long = "model", value_name = "NAME")]
    pub models: Vec<String>,

    /// Require `Authorization: Bearer <key>` on /v1/*, with the key read from the
    /// environment variable NAME.
    #[arg(long, value_name = "NAME")]
    pub require_api_key_env: Option<String>,

    /// Make every delay zero: the fastest possible target, for benchmarking a gateway.
    #[arg(
        long,
        conflicts_with_all = ["ttft_base", "prefill_per_token", "decode_interval", "batch_slowdown"]
    )]
    pub zero_timing: bool,

    /// Share of chat requests answered with an injected error (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,

    /// Status of injected errors: 429, 500, 502 or 503.
    #[arg(long, default_value_t = 500)]
    pub error_status: u16,

    /// `retry-after` on an injected 429, in whole seconds; `0s` sends no header.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub retry_after: Duration,

    /// Delay before anything of a chat answer is sent (whole milliseconds).
    #[arg(long, default_value = "0ms", value_parser = duration)]
    pub added_latency: Duration,

    /// Share of requests that pause mid-answer (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,

    /// Length of a stall (whole milliseconds).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub stall_duration: Duration,

    /// A stalled stream pauses after this many SSE events.
    #[arg(long, default_value_t = 2)]
    pub stall_after_chunks: u32,

    /// Share of requests whose connection is cut before the answer is complete (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub disconnect_rate: f64,

    /// A cut stream is cut after this many SSE events.
    #[arg(long, default_value_t = 2)]
    pub disconnect_after_chunks: u32,

    /// Share of tool-call answers whose arguments are not valid JSON (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_tool_args_rate: f64,

    /// `/health` answers 503 (an engine that died behind a live HTTP server).
    #[arg(long)]
    pub unhealthy: bool,

    /// Seed of the fault draws: the same seed fails the same requests.
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,

    /// Provider-side limit: requests per minute (a token bucket); beyond it, 429 with
    /// retry-after and x-ratelimit-* headers, as a hosted provider answers.
    #[arg(long, value_name = "N")]
    pub requests_per_minute: Option<u64>,

    /// Provider-side limit: tokens (prompt and answer) per minute, a token bucket.
    #[arg(long, value_name = "N")]
    pub tokens_per_minute: Option<u64>,

    /// Provider-side limit: requests in flight at once.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u64>,

    /// Publish the prefix cache's changes as vLLM KV events (BlockStored, BlockRemoved,
    /// AllBlocksCleared) on a ZMQ PUB socket bound to this address.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub kv_events: Option<String>,

    /// Replay buffered KV-event batches on request, on a ZMQ ROUTER socket bound here.
    #[arg(long, value_name = "tcp://HOST:PORT", requires = "kv_events")]
    pub kv_replay: Option<String>,

    /// How KV events are encoded: `current` (each event a map, as vLLM sends today) or
    /// `legacy` (each event an array).
    #[arg(long, value_name = "FORM", default_value = "current", value_parser = ["current", "legacy"])]
    pub kv_events_encoding: String,

    /// The first frame (topic) of every KV-event message.
    #[arg(long, value_name = "TOPIC", default_value = "")]
    pub kv_topic: String,
}

impl MockArgs {
    pub fn to_options(&self) -> anyhow::Result<MockOptions> {
        let timing = if self.zero_timing {
            TimingModel::ZERO
        } else {
            if !self.batch_slowdown.is_finite() || self.batch_slowdown < 0.0 {
                bail!(
                    "--batch-slowdown must be a non-negative number, got {}",
                    self.batch_slowdown
                );
            }
            TimingModel {
                ttft_base: self.ttft_base,
                prefill_per_token: self.prefill_per_token,
                decode_interval: self.decode_interval,
                batch_slowdown: self.batch_slowdown,
            }
        };
        for (flag, value) in [
            ("--requests-per-minute", self.requests_per_minute),
            ("--tokens-per-minute", self.tokens_per_minute),
            ("--max-concurrent", self.max_concurrent),
        ] {
            if value == Some(0) {
                bail!("{flag} 0 would refuse every request; give a positive limit or leave it out");
            }
        }
        if self.block_size == 0 {
            bail!("--block-size must be at least 1");
        }
        if self.min_output_tokens == 0 || self.min_output_tokens > self.max_output_tokens {
            bail!(
                "need 1 <= --min-output-tokens <= --max-output-tokens, got {} and {}",
                self.min_output_tokens,
                self.max_output_tokens
            );
        }
        let faults = Faults {
            error_rate: self.error_rate,
            error_status: self.error_status,
            retry_after_secs: whole(self.retry_after, "retry-after", 1)?,
            added_latency_ms: whole(self.added_latency, "added-latency", 1000)?,
            stall_rate: self.stall_rate,
            stall_ms: whole(self.stall_duration, "stall-duration", 1000)?,
            stall_after_chunks: self.stall_after_chunks,
            disconnect_rate: self.disconnect_rate,
            disconnect_after_chunks: self.disconnect_after_chunks,
            invalid_tool_args_rate: self.invalid_tool_args_rate,
            unhealthy: self.unhealthy,
            seed: self.fault_seed,
        };
        // The knobs are named in the message as JSON fields; map them back to flags.
        faults
            .validate()
            .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.message))?;
        let require_api_key = match &self.require_api_key_env {
            None => None,
            Some(name) => match std::env::var(name) {
                Ok(key) if !key.is_empty() => Some(key),
                Ok(_) => bail!("--require-api-key-env: environment variable {name} is empty"),
                Err(_) => bail!("--require-api-key-env: environment variable {name} is not set"),
            },
        };
        let served_models = if self.models.is_empty() {
            MockOptions::default().served_models
        } else {
            self.models.clone()
        };
        let kv_events = match &self.kv_events {
            None => None,
            Some(publish) => {
                for (flag, address) in [
                    ("--kv-events", Some(publish)),
                    ("--kv-replay", self.kv_replay.as_ref()),
                ] {
                    if let Some(a) = address {
                        if !a.starts_with("tcp://") {
                            bail!("{flag} takes tcp://HOST:PORT, got `{a}`");
                        }
                    }
                }
                Some(KvEventOptions {
                    publish: publish.clone(),
                    replay: self.kv_replay.clone(),
                    encoding: if self.kv_events_encoding == "legacy" {
                        KvEncoding::Legacy
                    } else {
                        KvEncoding::Current
                    },
                    topic: self.kv_topic.clone(),
                    ..KvEventOptions::default()
                })
            }
        };
        Ok(MockOptions {
            timing,
            kv_cache: KvCacheOptions {
                block_size: self.block_size,
                capacity_blocks: self.kv_capacity_blocks,
            },
            output: OutputOptions {
                min_tokens: self.min_output_tokens,
                max_tokens: self.max_output_tokens,
            },
            faults,
            seed: self.seed,
            served_models,
            require_api_key,
            limits: ProviderLimits {
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
                max_concurrent: self.max_concurrent,
            },
            kv_events,
        })
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    sluice_load::units::parse_duration(s).map_err(|e| e.to_string())
}

/// `d` as a whole number of 1/`per_second` seconds (what the fault knobs count in); a
/// remainder is refused rather than silently dropped.
fn whole(d: Duration, flag: &str, per_second: u32) -> anyhow::Result<u64> {
    let nanos_per_unit = 1_000_000_000 / u128::from(per_second);
    let nanos = d.as_nanos();
    if nanos % nanos_per_unit != 0 {
        let unit = if per_second == 1 {
            "seconds"
        } else {
            "milliseconds"
        };
        bail!("--{flag} takes whole {unit}, got {d:?}");
    }
    u64::try_from(nanos / nanos_per_unit).with_context(|| format!("--{flag} is out of range"))
}

/// Serves the mock until ctrl-c or SIGTERM, then lets answers in progress finish.
pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let options = args.to_options()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("listening socket has no address")?;
    let kv_events = options.kv_events.clone();
    let block_size = options.kv_cache.block_size;
    let engine = MockEngine::new(options);
    println!(
        "sluice mock: OpenAI-compatible API at http://{addr}/v1, admin at http://{addr}/admin"
    );
    if let Some(kv) = kv_events {
        let publisher = KvPublisher::start(kv, block_size)
            .await
            .context("cannot bind the KV-event sockets")?;
        println!(
            "sluice mock: KV events on {}{}",
            publisher.publish_endpoint,
            publisher
                .replay_endpoint
                .as_ref()
                .map_or(String::new(), |r| format!(", replay on {r}"))
        );
        engine.attach_kv_events(publisher);
    }
    sluice_mock::serve(listener, engine, crate::shutdown_signal())
        .await
        .context("mock server failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    fn parse(args: &[&str]) -> Result<MockArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("mock").chain(args.iter().copied())).map(|c| c.mock)
    }

    #[test]
    fn defaults_match_the_library() {
        let options = parse(&[]).unwrap().to_options().unwrap();
        assert_eq!(options, MockOptions::default());
    }

    #[test]
    fn flags_reach_the_options() {
        let options = parse(&[
            "--decode-interval",
            "2.5ms",
            "--stall-duration",
            "250ms",
            "--retry-after",
            "3s",
            "--model",
            "a",
            "--model",
            "b",
            "--error-rate",
            "0.25",
            "--error-status",
            "429",
        ])
        .unwrap()
        .to_options()
        .unwrap();
        assert_eq!(options.timing.decode_interval, Duration::from_micros(2500));
        assert_eq!(options.served_models, ["a", "b"]);
        assert_eq!(options.faults.error_rate, 0.25);
        assert_eq!(options.faults.error_status, 429);
        assert_eq!(options.faults.stall_ms, 250);
        assert_eq!(options.faults.retry_after_secs, 3);
        let zero = parse(&["--zero-timing"]).unwrap().to_options().unwrap();
        assert_eq!(zero.timing, TimingModel::ZERO);
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        let err = |args: &[&str]| parse(args).unwrap().to_options().unwrap_err().to_string();
        assert!(err(&["--error-rate", "2"]).contains("--error-rate"));
        assert!(err(&["--error-status", "404"]).contains("--error-status"));
        // Durations take a unit, like every duration flag of sluice.
        let e = parse(&["--decode-interval", "10"]).unwrap_err().to_string();
        assert!(
            e.contains("--decode-interval") && e.contains("no unit"),
            "{e}"
        );
        assert!(parse(&["--ttft-base=-1ms"]).is_err());
        assert!(err(&["--stall-duration", "1.5ms"]).contains("whole milliseconds"));
        assert!(err(&["--retry-after", "1500ms"]).contains("whole seconds"));
        assert!(err(&["--require-api-key-env", "SLUICE_SURELY_UNSET_VAR"]).contains("not set"));
        assert!(parse(&["--zero-timing", "--ttft-base", "5ms"]).is_err());
    }
}
