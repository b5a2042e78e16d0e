//! Soaks of what a user calls in a loop: the task profile beside a running task leak, `/safe-test`
//! load and a `leakfinder scan`, and stopping the service while it holds many parked tasks.
//!
//! Each loop is bounded in count and time and talks to 127.0.0.1 only.

use std::time::Duration;

use crate::helpers::{num, spawn_app};
use crate::load::{percentile, soak_task_profiles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_profiles_every_100ms_beside_a_task_leak_load_and_a_scan_never_wedge_the_service() {
    let mut app = spawn_app(&[("LEAK_CHUNK_BYTES", "1024"), ("LEAK_INTERVAL_MS", "5")]);
    app.get_json("/start-leak/channel", 200).await;
    let mut result =
        soak_task_profiles(&app, Duration::from_secs(60), Duration::from_millis(100)).await;
    assert!(
        result.failures.is_empty(),
        "every task profile answers: {} failed after {} answered: {:?}",
        result.failures.len(),
        result.profiles.len(),
        result.failures
    );
    assert!(
        result.profiles.len() >= 300,
        "a profile every 100 ms for 60 s: {} answered",
        result.profiles.len()
    );
    let blocked = num(&app.report().await, "leaks/channel/blocked_tasks");
    assert!(
        blocked >= 10_000,
        "the leak reached 10 000 blocked tasks: {blocked}"
    );
    let p99 = percentile(&mut result.health, 99.0);
    assert!(
        p99 < Duration::from_millis(50),
        "/healthz p99 {p99:?} over {} probes",
        result.health.len()
    );
    assert!(result.safe_tests > 100, "{} /safe-test", result.safe_tests);
    let (status, took) = app
        .terminate(Duration::from_secs(5))
        .expect("SIGTERM ends the service within 5 s after the soak");
    assert!(status.success(), "{status} after {took:?}");
}

/// Starts a service, lets the channel leak park `tasks` tasks, and stops it with SIGTERM.
/// Returns how long the stop took, or why it failed.
async fn stop_with_parked_tasks(tasks: u64) -> Result<Duration, String> {
    let mut app = spawn_app(&[("LEAK_CHUNK_BYTES", "64"), ("LEAK_INTERVAL_MS", "1")]);
    app.get_json("/start-leak/channel", 200).await;
    app.wait_for(Duration::from_secs(120), "parked tasks", |report| {
        num(report, "leaks/channel/blocked_tasks") >= tasks
    })
    .await;
    // A task profile first, as a user watching the leak would have taken.
    let profile = app.get("/debug/pprof/goroutine").await;
    if profile.status() != 200 {
        return Err(format!("the task profile answered {}", profile.status()));
    }
    match app.terminate(Duration::from_secs(5)) {
        Some((status, took)) if status.success() => Ok(took),
        Some((status, took)) => Err(format!("exited {status} after {took:?}")),
        None => Err(format!(
            "still running 5 s after SIGTERM; last log lines: {:?}",
            app.logs().iter().rev().take(3).collect::<Vec<_>>()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stops_with_twenty_thousand_parked_tasks_each_end_within_five_seconds() {
    // Four services at a time, 20 in all: each parks 20 000 tasks, then gets SIGTERM.
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let batch: Vec<_> = (0..4)
            .map(|_| tokio::spawn(stop_with_parked_tasks(20_000)))
            .collect();
        for stop in batch {
            outcomes.push(stop.await.unwrap());
        }
    }
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 20 stops failed: {failed:?}",
        failed.len()
    );
    let slowest = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .max()
        .unwrap();
    println!("20 stops with 20 000 parked tasks each; slowest {slowest:?}");
}
