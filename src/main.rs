//! The `leakfinder` binary: the allocator, configuration, logging, and the signal that stops it.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use leakfinder::app::{Application, shutdown_signal};
use leakfinder::config::Config;
use tokio_util::sync::CancellationToken;

/// jemalloc is the allocator from day one: its statistics feed `/leak-test`, its purge makes a
/// reset visible in RSS, and its sampling profiler feeds the heap profile. Global by necessity:
/// there is one allocator per process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = config.leak_settings() {
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

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = Application::build(&config, shutdown.clone()).await?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "shutting down"),
            Err(error) => tracing::error!("{error:#}; stop this process with SIGKILL"),
        }
        on_signal.cancel();
    });
    app.run_until_stopped().await.context("leakfinder failed")
}
