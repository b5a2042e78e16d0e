//! Profiling costs, measured side by side in one run against the real binary:
//! - the heap endpoint's latency with 1 GiB leaked;
//! - `/safe-test` throughput with profiling active against profiling off, as a ratio.
//!
//! The task profile has a benchmark of its own, against Go's (`benches/tasks.rs`).
//!
//! `cargo bench --bench profiling`. Fails (non-zero exit) if any profile is empty or malformed,
//! or any request fails.

#[path = "../tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod common;

use std::time::{Duration, Instant};

use helpers::{TestApp, num, spawn_app};
use leakfinder_pprof::{Profile, decode};

const GIB: u64 = 1 << 30;

/// A profile and how long it took. An idle service may hold too little to be sampled (one
/// allocation per 512 KiB on average), so an empty heap profile is valid there; with a leak
/// running it must have samples (`main` checks).
async fn fetch_profile(app: &TestApp, path: &str) -> (Duration, Profile) {
    let started = Instant::now();
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let bytes = response.bytes().await.unwrap();
    let took = started.elapsed();
    let profile = decode(&bytes, 256 << 20).expect("a valid pprof profile");
    (took, profile)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn latency(app: &TestApp, path: &str, rounds: usize) -> (Duration, Duration) {
    let (cold, _) = fetch_profile(app, path).await;
    let mut warm = Vec::new();
    for _ in 0..rounds {
        warm.push(fetch_profile(app, path).await.0);
    }
    (cold, median(warm))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("leakfinder profiling benchmark (one run, side by side)");

    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "1048576"),
        ("LEAK_INTERVAL_MS", "1"),
        ("LEAK_MAX_BYTES", &GIB.to_string()),
    ]);
    let (idle_cold, idle_warm) = latency(&app, "/debug/pprof/heap", 5).await;
    app.get_json("/start-leak/slice", 200).await;
    app.wait_for(Duration::from_secs(120), "1 GiB leaked", |r| {
        num(r, "leaks/slice/bytes") >= GIB
    })
    .await;
    let (cold, warm) = latency(&app, "/debug/pprof/heap", 9).await;
    let (_, leaking) = fetch_profile(&app, "/debug/pprof/heap").await;
    assert!(
        !leaking.sample.is_empty(),
        "the heap profile has samples with 1 GiB leaked"
    );
    println!(
        "heap endpoint, nothing leaked:   first {:.1} ms, then median {:.1} ms",
        ms(idle_cold),
        ms(idle_warm)
    );
    println!(
        "heap endpoint, 1 GiB leaked:     first {:.1} ms, then median {:.1} ms ({:.2}x the idle median)",
        ms(cold),
        ms(warm),
        warm.as_secs_f64() / idle_warm.as_secs_f64()
    );
    drop(app);

    // Profiling off: jemalloc's sampler disabled through its environment, no CPU sampler running.
    // Profiling active: the defaults (heap sampling every 512 KiB) plus a CPU profile in flight.
    let off = spawn_app(&[("MALLOC_CONF", "prof:false")]);
    let active = spawn_app(&[]);
    let window = Duration::from_secs(4);
    let (mut off_rps, mut active_rps) = (0.0, 0.0);
    for _ in 0..2 {
        off_rps += common::throughput(&off, 8, window).await;
        let cpu = {
            let client = active.client.clone();
            let url = active.url("/debug/pprof/profile?seconds=6");
            tokio::spawn(async move { client.get(&url).send().await.map(|r| r.status().as_u16()) })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await; // the sampler is running
        active_rps += common::throughput(&active, 8, window).await;
        assert_eq!(
            cpu.await.unwrap().unwrap(),
            200,
            "the CPU profile completes under load"
        );
    }
    println!(
        "/safe-test throughput: profiling off {:.0} req/s, active {:.0} req/s, ratio active/off {:.3}",
        off_rps / 2.0,
        active_rps / 2.0,
        active_rps / off_rps
    );
}
