//! The `leakfinder` binary: the allocator, configuration, logging, and the signal that stops it.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use leakfinder::app::{Application, shutdown_signal};
use leakfinder::config::{Command, Config};
use leakfinder_profiling::tasks::root;
use tokio_util::sync::CancellationToken;

// jemalloc is the allocator from day one: its statistics feed `/leak-test`, its purge makes a
// reset visible in RSS, and its sampling profiler feeds the heap profile. Its start-up options:
// - sample one allocation every 512 KiB on average (`2^19`, Go's default rate) for the heap
//   profile, from the first allocation on;
// - no random page offset for large allocations (`cache_oblivious`), which costs each of them
//   an extra page: about 1 MiB less RSS above 1 GiB of leaked 1 MiB chunks.
//
// One arena instead of four per core saved another megabyte there, but `/safe-test` fell to
// 0.76 to 0.92x of itself while a CPU profile ran (1.0x with the default arenas), so the
// arenas stay as they are.
leakfinder_profiling::jemalloc!(
    "prof:true,prof_active:true,lg_prof_sample:19,cache_oblivious:false"
);

fn main() -> ExitCode {
    let config = Config::parse();
    // Before any HTTP client is built (the exporters', the push's, scan's and fleet's): reqwest
    // has no rustls crypto provider of its own here.
    leakfinder_detector::tls::install_crypto_provider();
    match &config.command {
        Some(Command::Healthcheck) => {
            return match leakfinder::healthcheck::probe(config.addr) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("leakfinder: unhealthy: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Scan(args)) => return leakfinder_detector::scan::run(args),
        Some(Command::Fleet(args)) => return leakfinder_detector::fleet::run(args),
        Some(Command::Symbols(args)) => return leakfinder::symbols::run(args),
        None => {}
    }
    if let Err(error) = config.leak_settings().and(config.pyroscope_auth()) {
        Config::command()
            .error(clap::error::ErrorKind::ArgumentConflict, error)
            .exit();
    }
    tracing::subscriber::set_global_default(leakfinder::telemetry::subscriber(
        "info",
        std::io::stdout,
    ))
    .expect("no other subscriber is installed before main sets this one");
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("leakfinder: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves on a multi-thread runtime whose task hooks count every task by spawn site (the task
/// profile's accounting), until SIGTERM or SIGINT.
fn run(config: Config) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let runtime = leakfinder_profiling::tasks::install(&mut builder)
        .build()
        .context("cannot start the tokio runtime")?;
    let served = runtime.block_on(serve(config));
    // Tasks still parked (a task leak holds thousands) are dropped here; blocking jobs still
    // running get a bounded time, so a stop never waits on them for ever.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    served
}

/// How long blocking jobs still running at exit may delay it.
const RUNTIME_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = Application::build(&config, shutdown.clone()).await?;
    let on_signal = shutdown.clone();
    tokio::spawn(root(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "shutting down"),
            Err(error) => tracing::error!("{error:#}; stop this process with SIGKILL"),
        }
        on_signal.cancel();
    }));
    app.run_until_stopped().await.context("leakfinder failed")
}
