//! The program of `crates/http/README.md` (its Setup), kept identical to it by
//! `tests/api/examples.rs`, which builds it, runs it and stops it with SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use leakfinder_http::Pprof;
use leakfinder_profiling::Profilers;
use leakfinder_profiling::push::ProfilePush;
use tokio::signal::unix::{SignalKind, signal};

leakfinder_profiling::jemalloc!(); // the global allocator, with heap sampling on

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    leakfinder_profiling::tasks::install(runtime.enable_all()); // counts tasks by spawn site
    runtime.build()?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    // Shows your own files as `src/...`, so `go tool pprof -list` finds them in a checkout.
    let profilers = Arc::new(Profilers::new().with_source_root(env!("CARGO_MANIFEST_DIR")));
    // Pushes CPU and heap profiles to PYROSCOPE_SERVER_ADDRESS, if it is set.
    let push = ProfilePush::from_env("my-service", &profilers)?;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello\n" }))
        .nest_service("/debug/pprof", Pprof::new(profilers).into_tower());
    // The first argument, or 127.0.0.1:8080 (`127.0.0.1:0` picks a free port).
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let mut terminate = signal(SignalKind::terminate())?; // what `docker stop` and Kubernetes send
    println!("listening on http://{}", listener.local_addr()?);
    // ConnectInfo tells the service who the peer is; without it every peer counts as remote (403).
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    drop(push); // stopped: the last profiles go out (within 2 s) before the process exits
    Ok(())
}
