//! Soaks of what a user calls in a loop: the task profile beside a running task leak, `/safe-test`
//! load and a `leakfinder scan`; CPU profiles beside every leak and load; and stopping the service
//! while it holds many parked tasks.
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

/// CPU profiles back to back for 30 s beside all three leaks and `/safe-test` load: the SIGPROF
/// handler runs on every thread, allocating ones included, and must never deadlock, crash or
/// slow the service; then the service still stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profiles_back_to_back_beside_leaks_and_load_never_fail() {
    let mut app = spawn_app(&[("LEAK_CHUNK_BYTES", "65536"), ("LEAK_INTERVAL_MS", "2")]);
    for kind in ["slice", "channel", "mutex"] {
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let load = async {
        let mut done = 0u32;
        while tokio::time::Instant::now() < deadline {
            app.get_json("/safe-test?tasks=50", 200).await;
            done += 1;
        }
        done
    };
    let profiles = async {
        let mut samples = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let response = app.get("/debug/pprof/profile?seconds=1").await;
            assert_eq!(response.status(), 200);
            let body = response.bytes().await.unwrap();
            let profile = leakfinder_pprof::decode(&body, 64 << 20).expect("a valid pprof profile");
            samples.push(profile.sample.len());
        }
        samples
    };
    let (done, samples) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(load, profiles)
    })
    .await
    .expect("the soak ends within 60 s: no profile or request hung");
    assert!(samples.len() >= 20, "{} profiles in 30 s", samples.len());
    assert!(
        samples.iter().filter(|&&n| n > 0).count() * 2 >= samples.len(),
        "most 1 s profiles under load have samples: {samples:?}"
    );
    assert!(done > 50, "{done} /safe-test beside the profiles");
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
    let (status, took) = app
        .terminate(Duration::from_secs(5))
        .expect("SIGTERM ends the service within 5 s after the soak");
    assert!(status.success(), "{status} after {took:?}");
}
