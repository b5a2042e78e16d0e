//! Tokio twins of real blocking bugs, each beside its fixed twin, behind `/debug/pprof/goroutine`:
//! the fixture that `leakfinder scan` must find (leaky) or stay quiet on (fixed).
//!
//! Every twin runs in a loop, ten times a second, as the bug would in a service handling
//! requests. A leaky twin leaves one more task parked for good each time; its fixed twin does the
//! same work and lets every task finish.
//!
//! - `mutex`: a task waits on a `tokio::sync::Mutex` held by a task that never releases it;
//! - `notify`: a task waits on a `Notify` that nobody notifies;
//! - `oneshot`: a task waits on a `oneshot` whose sender is kept but never used;
//! - `join`: a task awaits the `JoinHandle` of a task that never ends;
//! - `semaphore`: a task waits for a permit that was taken and never returned.
//!
//! Each leaky await is marked `// twin-leak: NAME`, which the test reads for the expected line.
//!
//! `cargo run --release --example tokio_twins [leaky|fixed|both]` prints `listening on ADDR`.

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use leakfinder_pprof as pprof;
use leakfinder_profiling::symbols::Symbolizer;
use leakfinder_profiling::tasks::{self, root};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{EndpointExt, IntoResponse, Response, Route, get, handler};
use tokio::sync::{Mutex, Notify, Semaphore, oneshot};

/// How often each twin runs.
const TICK: Duration = Duration::from_millis(100);

/// A task that waits for a mutex another task holds for good.
#[inline(never)]
async fn mutex_leaky(lock: Arc<Mutex<u64>>) {
    let mut count = lock.lock().await; // twin-leak: mutex
    *count += 1;
}

/// The fixed twin: the holder releases the lock after its work, so waiters get it in turn.
#[inline(never)]
async fn mutex_fixed(lock: Arc<Mutex<u64>>) {
    let mut count = lock.lock().await;
    *count += 1;
}

/// A task that waits for a notification nobody sends.
#[inline(never)]
async fn notify_leaky(event: Arc<Notify>) {
    event.notified().await; // twin-leak: notify
}

/// The fixed twin: the producer notifies after spawning the waiter.
#[inline(never)]
async fn notify_fixed(event: Arc<Notify>) {
    event.notified().await;
}

/// A task that waits for a reply whose sender is kept but never used.
#[inline(never)]
async fn oneshot_leaky(reply: oneshot::Receiver<u64>) {
    let _ = reply.await; // twin-leak: oneshot
}

/// The fixed twin: the sender answers (or is dropped), so the receiver returns.
#[inline(never)]
async fn oneshot_fixed(reply: oneshot::Receiver<u64>) {
    let _ = reply.await;
}

/// A worker that never ends: it polls for work that never comes.
#[inline(never)]
async fn join_worker_forever() {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await; // twin-leak: join-worker
    }
}

/// A task that awaits a worker that never ends.
#[inline(never)]
async fn join_leaky() {
    let worker = tokio::spawn(root(join_worker_forever()));
    let _ = worker.await; // twin-leak: join
}

/// The fixed twin: the worker finishes its work and returns.
#[inline(never)]
async fn join_fixed() {
    let worker = tokio::spawn(root(async {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }));
    let _ = worker.await;
}

/// A task that waits for a permit that is never returned.
#[inline(never)]
async fn semaphore_leaky(permits: Arc<Semaphore>) {
    let permit = permits.acquire().await; // twin-leak: semaphore
    if let Ok(permit) = permit {
        permit.forget(); // the bug: the permit is never returned
    }
}

/// The fixed twin: the permit is returned when the work is done.
#[inline(never)]
async fn semaphore_fixed(permits: Arc<Semaphore>) {
    let _permit = permits.acquire().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// Runs the leaky twins: each tick leaves one more task parked in each.
async fn run_leaky() {
    let lock = Arc::new(Mutex::new(0));
    // The holder: takes the lock and never gives it back.
    let holder = Arc::clone(&lock);
    tokio::spawn(root(async move {
        let _held = holder.lock().await;
        pending::<()>().await;
    }));
    let event = Arc::new(Notify::new());
    let mut unused_senders = Vec::new();
    let permits = Arc::new(Semaphore::new(2));
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        tokio::spawn(root(mutex_leaky(Arc::clone(&lock))));
        tokio::spawn(root(notify_leaky(Arc::clone(&event))));
        let (sender, receiver) = oneshot::channel();
        unused_senders.push(sender);
        tokio::spawn(root(oneshot_leaky(receiver)));
        tokio::spawn(root(join_leaky()));
        tokio::spawn(root(semaphore_leaky(Arc::clone(&permits))));
    }
}

/// Runs the fixed twins: the same work, every task finishes.
async fn run_fixed() {
    let lock = Arc::new(Mutex::new(0));
    let event = Arc::new(Notify::new());
    let permits = Arc::new(Semaphore::new(2));
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        {
            // The holder does its work under the lock, then lets go.
            let _held = lock.lock().await;
            tokio::spawn(root(mutex_fixed(Arc::clone(&lock))));
        }
        tokio::spawn(root(notify_fixed(Arc::clone(&event))));
        tokio::task::yield_now().await;
        event.notify_waiters();
        event.notify_one();
        let (sender, receiver) = oneshot::channel();
        tokio::spawn(root(oneshot_fixed(receiver)));
        let _ = sender.send(1);
        tokio::spawn(root(join_fixed()));
        tokio::spawn(root(semaphore_fixed(Arc::clone(&permits))));
    }
}

#[handler]
async fn goroutine(Data(symbols): Data<&Arc<Symbolizer>>) -> Response {
    let symbols = Arc::clone(symbols);
    match tokio::task::spawn_blocking(move || tasks::profile(&symbols)).await {
        Ok(stacks) => pprof::encode_gzip(&tasks::build_profile(&stacks))
            .with_content_type("application/octet-stream")
            .into_response(),
        Err(error) => poem::http::StatusCode::INTERNAL_SERVER_ERROR
            .with_body(error.to_string())
            .into_response(),
    }
}

#[handler]
async fn goroutine_text(Data(symbols): Data<&Arc<Symbolizer>>) -> String {
    let symbols = Arc::clone(symbols);
    let form = tasks::TextForm {
        debug: 1,
        runtime: false,
    };
    tokio::task::spawn_blocking(move || tasks::text(&symbols, form))
        .await
        .unwrap_or_default()
}

fn main() -> std::io::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "both".into());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let runtime = tasks::install(&mut builder).build()?;
    runtime.block_on(async {
        if which != "fixed" {
            tokio::spawn(root(run_leaky()));
        }
        if which != "leaky" {
            tokio::spawn(root(run_fixed()));
        }
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
        let addr = acceptor.local_addr()[0].to_string();
        println!("listening on {}", addr.trim_start_matches("socket://"));
        let routes = Route::new()
            .at("/debug/pprof/goroutine", get(goroutine))
            .at("/debug/pprof/goroutine.txt", get(goroutine_text))
            .data(Arc::new(Symbolizer::with_source_root(env!(
                "CARGO_MANIFEST_DIR"
            ))));
        poem::Server::new_with_acceptor(acceptor).run(routes).await
    })
}
