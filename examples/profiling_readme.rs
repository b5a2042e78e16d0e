//! The program of `crates/profiling/README.md` (its Setup), kept identical to it by
//! `tests/api/examples.rs`, which builds it, runs it and stops it with SIGTERM.

use std::sync::Arc;

use leakfinder_profiling::Profilers;
use leakfinder_profiling::push::ProfilePush;
use tokio::signal::unix::{SignalKind, signal};

leakfinder_profiling::jemalloc!(); // the global allocator, with heap sampling on

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    leakfinder_profiling::tasks::install(runtime.enable_all()); // counts tasks by spawn site
    runtime.build()?.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Shows your own files as `src/...`, so `go tool pprof -list` finds them in a checkout.
    let profilers = Arc::new(Profilers::new().with_source_root(env!("CARGO_MANIFEST_DIR")));
    // Pushes CPU and heap profiles to PYROSCOPE_SERVER_ADDRESS, if it is set.
    let push = ProfilePush::from_env("my-service", &profilers)?;
    let mut terminate = signal(SignalKind::terminate())?; // what `docker stop` and Kubernetes send
    // Your service runs here. Serve the profiles with leakfinder-http, or take them yourself:
    // profilers.heap(), profilers.cpu(duration), profilers.tasks().
    let samples = profilers.heap().await?.sample.len();
    println!("running; the heap profile has {samples} samples");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(push); // stopped: the last profiles go out (within 2 s) before the process exits
    Ok(())
}
