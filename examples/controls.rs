//! Non-leaking controls for the leak detector: a tokio service that behaves in ways that look
//! like a leak to a detector that only watches growth, and is not one. `leakfinder scan` must
//! stay quiet on every scenario (`benches/controls.rs` scans each a hundred times).
//!
//! - `shortlived`: about 13 tasks a second, each waiting 5 s (half for a reply that comes 5 s
//!   later, half asleep), then ending: about 65 alive once the population is steady;
//! - `table`: a 20 MiB table built before `listening on`, kept and read, never grown;
//! - `bursty`: every 3 s a burst of 300 tasks that allocate 37.5 MiB between them, wait for the
//!   burst's release (about a second) and end, freeing it.
//!
//! `cargo run --release --example controls SCENARIO` prints `listening on ADDR` and serves
//! `/debug/pprof` (heap with allocation counts and ages, tasks with ages and spawn counts) until
//! killed. Like `tokio_twins`, Go's `tests/fixtures/gocontrols` runs the same scenarios.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use leakfinder_http::Pprof;
use leakfinder_profiling::Profilers;
use leakfinder_profiling::tasks::{self, root};
use poem::listener::TcpAcceptor;
use poem::{Route, Server};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

leakfinder_profiling::jemalloc!();

/// How long a short-lived task waits.
const LIFETIME: Duration = Duration::from_secs(5);
/// Time between two short-lived tasks: 13.3 a second.
const SHORT_LIVED_EVERY: Duration = Duration::from_millis(75);
/// The table: rows of 64 KiB, 20 MiB in all.
const TABLE_ROWS: usize = 320;
const ROW_BYTES: usize = 64 << 10;
/// A burst: tasks, what each holds, how long they wait, and the time between bursts.
const BURST_TASKS: usize = 300;
const BURST_BYTES: usize = 128 << 10;
const BURST_HOLD: Duration = Duration::from_secs(1);
const BURST_EVERY: Duration = Duration::from_secs(3);

/// Starts a short-lived task every [`SHORT_LIVED_EVERY`], each living [`LIFETIME`]; sends each
/// reply when it is due.
async fn short_lived() {
    let mut due: VecDeque<(Instant, oneshot::Sender<u64>)> = VecDeque::new();
    let mut ticks = tokio::time::interval(SHORT_LIVED_EVERY);
    for n in 0u64.. {
        ticks.tick().await;
        while due.front().is_some_and(|(at, _)| *at <= Instant::now()) {
            if let Some((_, reply)) = due.pop_front() {
                let _ = reply.send(n);
            }
        }
        if n % 2 == 0 {
            let (reply, waiting) = oneshot::channel();
            due.push_back((Instant::now() + LIFETIME, reply));
            tokio::spawn(root(await_reply(waiting)));
        } else {
            tokio::spawn(root(await_timer()));
        }
    }
}

/// Waits for a reply that comes [`LIFETIME`] later.
#[inline(never)]
async fn await_reply(reply: oneshot::Receiver<u64>) {
    let _ = reply.await;
}

/// Sleeps [`LIFETIME`].
#[inline(never)]
async fn await_timer() {
    tokio::time::sleep(LIFETIME).await;
}

/// Builds the table: once, at start-up.
#[inline(never)]
fn build_table() -> Vec<Vec<u8>> {
    (0..TABLE_ROWS)
        .map(|row| vec![row as u8; ROW_BYTES])
        .collect()
}

/// Reads the table every second, so it is in use.
async fn read_table(table: Arc<Vec<Vec<u8>>>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut sum = 0u64;
    loop {
        ticks.tick().await;
        sum = table.iter().fold(sum, |sum, row| {
            sum.wrapping_add(u64::from(row[ROW_BYTES / 2]))
        });
        std::hint::black_box(sum);
    }
}

/// A burst every [`BURST_EVERY`].
async fn bursty() {
    let mut ticks = tokio::time::interval(BURST_EVERY);
    loop {
        ticks.tick().await;
        burst().await;
    }
}

/// [`BURST_TASKS`] tasks holding [`BURST_BYTES`] each, released after [`BURST_HOLD`].
#[inline(never)]
async fn burst() {
    let (release, released) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BURST_TASKS {
        tasks.spawn(root(work(released.clone())));
    }
    tokio::time::sleep(BURST_HOLD).await;
    let _ = release.send(true);
    tasks.join_all().await;
}

/// Holds a buffer until the burst is released.
#[inline(never)]
async fn work(mut released: watch::Receiver<bool>) {
    let buffer = vec![1u8; BURST_BYTES];
    let _ = released.wait_for(|released| *released).await;
    std::hint::black_box(&buffer);
}

fn main() -> anyhow::Result<()> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    if !["shortlived", "table", "bursty"].contains(&scenario.as_str()) {
        bail!("usage: controls shortlived|table|bursty (got {scenario:?})");
    }
    // Before anything listens, as a service loads its reference data.
    let table = (scenario == "table").then(|| Arc::new(build_table()));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    tasks::install(runtime.enable_all());
    runtime.build()?.block_on(async {
        let profilers = Arc::new(Profilers::new().with_source_root(env!("CARGO_MANIFEST_DIR")));
        let app = Route::new().nest("/debug/pprof", Pprof::new(profilers).into_poem());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen")?;
        println!("listening on {}", listener.local_addr()?);
        match table {
            Some(table) => tokio::spawn(root(read_table(table))),
            None if scenario == "shortlived" => tokio::spawn(root(short_lived())),
            None => tokio::spawn(root(bursty())),
        };
        Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
            .run(app)
            .await
            .context("serving")
    })
}
