//! The task profile, measured side by side in one run against its real peer, and soaked:
//! - `/debug/pprof/goroutine` with 10,000 tasks parked on a channel send, against Go 1.26's
//!   `net/http/pprof` with 10,000 goroutines parked on a channel send (`tests/fixtures/goparked`):
//!   interleaved, back to back with no spacing, first call and median, p99, and the ratio;
//! - a soak: a task profile every 100 ms beside the channel leak, `/safe-test` load and a running
//!   `leakfinder scan`, for `TASK_SOAK_SECONDS` (default 600), printing the profile latency p50
//!   and p99, `/healthz` p99, and the hang count.
//!
//! `cargo bench --bench tasks`. Fails (non-zero exit) if a profile fails or hangs, if ours is more
//! than 1.5x Go's median or its p99 is 100 ms or more, or if SIGTERM does not end the service
//! within 5 s after the soak.

#[path = "../tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../tests/api/load.rs"]
#[allow(dead_code)]
mod load;

use std::time::{Duration, Instant};

use helpers::{num, spawn_app, start_go};
use leakfinder_pprof::decode;

const PARKED: u64 = 10_000;
const ROUNDS: usize = 200;

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Fetches a goroutine profile, checks it counts at least `parked` tasks, returns how long it took.
async fn fetch(client: &reqwest::Client, url: &str, parked: u64) -> Duration {
    let started = Instant::now();
    let response = client.get(url).send().await.expect("the profile answers");
    assert_eq!(response.status(), 200, "{url}");
    let bytes = response.bytes().await.unwrap();
    let took = started.elapsed();
    let profile = decode(&bytes, 256 << 20).expect("a valid pprof profile");
    let total: i64 = profile.sample.iter().map(|sample| sample.value[0]).sum();
    assert!(
        total as u64 >= parked,
        "{url}: {total} tasks, {parked} parked"
    );
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("leakfinder task-profile benchmark (one run, side by side with Go)");
    let go = start_go("goparked", &[&PARKED.to_string()]);
    let app = spawn_app(&[("LEAK_CHUNK_BYTES", "64"), ("LEAK_INTERVAL_MS", "1")]);
    app.get_json("/start-leak/channel", 200).await;
    app.wait_for(Duration::from_secs(120), "10,000 parked tasks", |report| {
        num(report, "leaks/channel/blocked_tasks") >= PARKED
    })
    .await;
    app.get_json("/stop-leak/channel", 200).await;

    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let client = reqwest::Client::new();
    let go_url = format!("{}/debug/pprof/goroutine", go.url);
    let our_url = app.url("/debug/pprof/goroutine");
    let go_first = fetch(&client, &go_url, PARKED).await;
    let our_first = fetch(&client, &our_url, PARKED).await;
    let (mut go_times, mut our_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        go_times.push(fetch(&client, &go_url, PARKED).await);
        our_times.push(fetch(&client, &our_url, PARKED).await);
    }
    let go_median = load::percentile(&mut go_times, 50.0);
    let our_median = load::percentile(&mut our_times, 50.0);
    let our_p99 = load::percentile(&mut our_times, 99.0);
    let go_p99 = load::percentile(&mut go_times, 99.0);
    let ratio = our_median.as_secs_f64() / go_median.as_secs_f64();
    println!(
        "goroutine profile, 10,000 parked, {ROUNDS} rounds interleaved, no spacing:\n  \
         Go 1.26 net/http/pprof: first {:.1} ms, median {:.1} ms, p99 {:.1} ms\n  \
         leakfinder:             first {:.1} ms, median {:.1} ms, p99 {:.1} ms\n  \
         ratio leakfinder/Go (median): {ratio:.2}",
        ms(go_first),
        ms(go_median),
        ms(go_p99),
        ms(our_first),
        ms(our_median),
        ms(our_p99),
    );
    drop(go);
    drop(app);

    let seconds: u64 = std::env::var("TASK_SOAK_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600);
    let mut app = spawn_app(&[("LEAK_CHUNK_BYTES", "1024"), ("LEAK_INTERVAL_MS", "5")]);
    app.get_json("/start-leak/channel", 200).await;
    println!(
        "soak: a task profile every 100 ms for {seconds} s beside the channel leak, /safe-test load and a scan"
    );
    let mut soak = load::soak_task_profiles(
        &app,
        Duration::from_secs(seconds),
        Duration::from_millis(100),
    )
    .await;
    let blocked = num(&app.report().await, "leaks/channel/blocked_tasks");
    let stopped = app.terminate(Duration::from_secs(5));
    let answered = soak.profiles.len();
    println!(
        "soak: {answered} profiles answered, {} hung or failed; profile p50 {:.1} ms, p99 {:.1} ms; \
         /healthz p99 {:.1} ms; {} /safe-test; {blocked} tasks parked at the end; SIGTERM: {}",
        soak.failures.len(),
        ms(load::percentile(&mut soak.profiles, 50.0)),
        ms(load::percentile(&mut soak.profiles, 99.0)),
        ms(load::percentile(&mut soak.health, 99.0)),
        soak.safe_tests,
        stopped.map_or(
            "did not stop within 5 s".to_owned(),
            |(status, took)| format!("{status} after {:.0} ms", ms(took))
        ),
    );

    let mut failed = Vec::new();
    if ratio > 1.5 {
        failed.push(format!("median {ratio:.2}x Go's (target at most 1.5x)"));
    }
    if our_p99 >= Duration::from_millis(100) {
        failed.push(format!("p99 {:.1} ms (target under 100 ms)", ms(our_p99)));
    }
    if !soak.failures.is_empty() {
        failed.push(format!("soak failures: {:?}", soak.failures));
    }
    if stopped.is_none_or(|(status, _)| !status.success()) {
        failed.push("the service did not stop cleanly on SIGTERM after the soak".into());
    }
    if !failed.is_empty() {
        eprintln!("task-profile benchmark failed: {}", failed.join("; "));
        std::process::exit(1);
    }
}
