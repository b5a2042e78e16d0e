//! leakfinder in an axum service: heap, CPU and task profiles at `/debug/pprof` that
//! `go tool pprof` reads without the binary, and a Pyroscope push when `PYROSCOPE_SERVER_ADDRESS`
//! is set. The 9 lines marked `// leakfinder: N/9` are all the setup a service adds for
//! the three profiles and the push (which sends its last profiles when dropped, at exit).
//! Everything else is the service, with two deliberate leaks to find.
//!
//! ```text
//! cargo run --release --example axum_service [ADDR]  # ADDR: 127.0.0.1:0 unless given
//! # with PYROSCOPE_SERVER_ADDRESS=http://HOST:4040 set, it pushes there too
//! # prints `listening on http://127.0.0.1:PORT`, then:
//! curl http://127.0.0.1:PORT/leak                    # 8 MiB and 100 parked tasks more, each time
//! go tool pprof -top http://127.0.0.1:PORT/debug/pprof/heap     # axum_service::leak_memory
//! go tool pprof -list leak_memory http://127.0.0.1:PORT/debug/pprof/heap
//! go tool pprof -list leak_tasks http://127.0.0.1:PORT/debug/pprof/goroutine
//! curl http://127.0.0.1:PORT/spin &                  # 3 s of CPU, while a 2 s CPU profile is read:
//! go tool pprof -top 'http://127.0.0.1:PORT/debug/pprof/profile?seconds=2'
//! ```
//!
//! Routes: `GET /leak` keeps 8 MiB more (in 1 MiB chunks, at most 64 MiB in all) and parks 100
//! more tasks (at most 1000) for good; `GET /spin` burns 3 s of CPU; `/debug/pprof/` serves the
//! profiles, to loopback peers only (`leakfinder_http::Access` admits others with a token).
//! SIGTERM or ctrl-c stops it gracefully, with a last push when pushing.
//!
//! It needs what this repository's `.cargo/config.toml` and release profile set:
//! `--cfg tokio_unstable`, `-C force-frame-pointers=yes` and `debug = "limited"`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use leakfinder_http::Pprof;
use leakfinder_profiling::Profilers;
use leakfinder_profiling::push::ProfilePush;
use leakfinder_profiling::tasks::root;
use tokio::sync::oneshot;

leakfinder_profiling::jemalloc!(); // leakfinder: 1/9, jemalloc + malloc_conf, heap profiling on

/// What one `/leak` keeps, in chunks of [`CHUNK_BYTES`].
const LEAK_BYTES: usize = 8 << 20;
const CHUNK_BYTES: usize = 1 << 20;
/// The memory leak stops growing here.
const MAX_LEAKED_BYTES: usize = 64 << 20;
/// Tasks one `/leak` parks.
const LEAK_TASKS: usize = 100;
/// The task leak stops growing here.
const MAX_LEAKED_TASKS: usize = 1000;
/// The CPU one `/spin` burns.
const SPIN: Duration = Duration::from_secs(3);

/// The memory leak: chunks kept for good. Global, as leaked memory outlives every request.
static LEAKED_CHUNKS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// The task leak's senders, kept and never used, so their receivers wait for good. Global for
/// the same reason.
static UNSENT_REPLIES: Mutex<Vec<oneshot::Sender<()>>> = Mutex::new(Vec::new());

fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1);
    let addr = addr.as_deref().unwrap_or("127.0.0.1:0");
    let mut runtime = tokio::runtime::Builder::new_multi_thread(); // leakfinder: 2/9
    leakfinder_profiling::tasks::install(runtime.enable_all()); // leakfinder: 3/9, task hooks
    runtime.build()?.block_on(serve(addr)) // leakfinder: 4/9, instead of #[tokio::main]
}

/// Serves on `addr` until SIGTERM or ctrl-c.
async fn serve(addr: &str) -> anyhow::Result<()> {
    let source_root = env!("CARGO_MANIFEST_DIR"); // leakfinder: 5/9, profiles show paths under it
    let profilers = Arc::new(Profilers::new().with_source_root(source_root)); // leakfinder: 6/9
    let _push = ProfilePush::from_env("axum-example", &profilers)?; // leakfinder: 7/9, Pyroscope
    let app = Router::new()
        .route("/leak", get(leak))
        .route("/spin", get(spin))
        .nest_service("/debug/pprof", Pprof::new(profilers).into_tower()); // leakfinder: 8/9
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = app.into_make_service_with_connect_info::<SocketAddr>(); // leakfinder: 9/9, the peer
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// `GET /leak`: both leaks grow.
async fn leak() -> String {
    let bytes = leak_memory();
    let tasks = leak_tasks();
    format!("leaked {} MiB and {tasks} tasks so far\n", bytes >> 20)
}

/// `GET /spin`: burns [`SPIN`] of CPU on a blocking thread.
async fn spin() -> String {
    let result = tokio::task::spawn_blocking(|| burn_cpu(SPIN)).await;
    format!("spun: {}\n", result.is_ok())
}

/// Keeps [`LEAK_BYTES`] more for good, up to [`MAX_LEAKED_BYTES`]; returns what it keeps.
#[inline(never)]
fn leak_memory() -> usize {
    let mut chunks = LEAKED_CHUNKS.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..LEAK_BYTES / CHUNK_BYTES {
        if chunks.len() * CHUNK_BYTES >= MAX_LEAKED_BYTES {
            break;
        }
        chunks.push(vec![0xA5; CHUNK_BYTES]); // leak: memory
    }
    chunks.len() * CHUNK_BYTES
}

/// Parks [`LEAK_TASKS`] more tasks for good, up to [`MAX_LEAKED_TASKS`], each awaiting a reply
/// nobody sends; returns how many are parked.
#[inline(never)]
fn leak_tasks() -> usize {
    let mut replies = UNSENT_REPLIES
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for _ in 0..LEAK_TASKS.min(MAX_LEAKED_TASKS - replies.len()) {
        let (sender, reply) = oneshot::channel::<()>();
        replies.push(sender);
        // `root` lets the task profile show where the task waits, not only where it was spawned.
        tokio::spawn(root(async move {
            let _ = reply.await; // leak: tasks
        }));
    }
    replies.len()
}

/// Busy work for `duration`, for the CPU profile to find.
#[inline(never)]
fn burn_cpu(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut state = 1u64;
    while started.elapsed() < duration {
        for step in 0..100_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(step);
        }
        state = std::hint::black_box(state);
    }
    state
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                eprintln!("cannot listen for SIGTERM ({error}); stop with ctrl-c");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
