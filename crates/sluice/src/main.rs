//! The `sluice` command: argument parsing and wiring only; the work happens in the library
//! crates.

mod embedded;
mod keys_cmd;
mod load_cmd;
mod mock_cmd;
mod proxy_cmd;
mod serve_cmd;
mod tokenize_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "LLM inference gateway with a testing toolkit built in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Exit status of the commands that serve until stopped.
const SERVING_EXIT_CODES: &str = "\
Exit status:
  0  stopped cleanly (SIGINT or SIGTERM), after draining
  1  could not start or failed while serving (bad config, address in use, ...; the message says which)
  2  usage error";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the OpenAI-compatible gateway. With no --config, runs the embedded default: a
    /// model `mock` served by two in-process mock engines (examples/quickstart.toml).
    #[command(after_help = SERVING_EXIT_CODES)]
    Serve(serve_cmd::ServeArgs),
    /// Run the mock OpenAI-compatible engine.
    #[command(after_help = SERVING_EXIT_CODES)]
    Mock(mock_cmd::MockArgs),
    /// Generate LLM load against any OpenAI-compatible server and report TTFT, TPOT, ITL,
    /// throughput and goodput; gate on SLOs; compare reports.
    Load(load_cmd::LoadArgs),
    /// Record/replay proxy between a service and its LLM providers, for deterministic CI.
    #[command(after_help = "Exit status:
  0  served and stopped cleanly (SIGINT or SIGTERM), or the subcommand (ca, report, prune) did its work
  1  could not start, or the subcommand refused (prune says why: a run that used nothing, misses, ...)
  2  usage error")]
    Proxy(proxy_cmd::ProxyArgs),
    /// Validate a gateway config file without serving.
    #[command(after_help = "Exit status:
  0  the file is valid
  1  it is not: the problems found are listed, each naming its key and the fix
  2  usage error")]
    CheckConfig {
        /// The TOML file to check.
        file: std::path::PathBuf,
    },
    /// Manage API keys in the store the gateway's config names (`auth.mode = "keys"`).
    #[command(after_help = "Exit status:
  0  done (create prints the key alone on the last line of standard output)
  1  refused or failed: an unknown model, a taken name, no such key, an unreadable store
  2  usage error")]
    Keys(keys_cmd::KeysArgs),
    /// Print a chat request's prompt token ids as prefix-aware routing computes them (the
    /// model's tokenizer and chat template), to check them against the engine's.
    #[command(after_help = "Exit status:
  0  printed
  1  the tokenizer could not be loaded, or the request not read or rendered
  2  usage error")]
    Tokenize(tokenize_cmd::TokenizeArgs),
}

/// mimalloc instead of the system allocator: the request path allocates and frees small
/// buffers on every request, and glibc's malloc spent about 18 % of the gateway's user-space
/// instructions on it (callgrind; see docs/benchmarks-log.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = std::process::ExitCode::SUCCESS;
        match cli.command {
            Command::Serve(args) => serve_cmd::run(args).await.map(|()| done),
            Command::Mock(args) => mock_cmd::run(args).await.map(|()| done),
            Command::Load(args) => load_cmd::run(args).await,
            Command::Proxy(args) => proxy_cmd::run(args).await.map(|()| done),
            Command::CheckConfig { file } => serve_cmd::check_config(&file).map(|()| done),
            Command::Keys(args) => keys_cmd::run(args).map(|()| done),
            Command::Tokenize(args) => tokenize_cmd::run(args).map(|()| done),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in CI logs and files they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Resolves on the first SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
