//! The service starts every time, and SIGTERM stops it gracefully and quickly, whatever the leaks
//! hold.

use std::time::Duration;

use crate::helpers::{num, spawn_app};

#[tokio::test]
async fn sigterm_with_all_three_leaks_running_exits_within_five_seconds() {
    let mut app = spawn_app(&[("LEAK_CHUNK_BYTES", "4096"), ("LEAK_INTERVAL_MS", "1")]);
    for kind in ["slice", "channel", "mutex"] {
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
    }
    app.wait_for(Duration::from_secs(30), "thousands of blocked tasks", |r| {
        num(r, "leaks/channel/blocked_tasks") >= 2000
    })
    .await;

    let (status, took) = app
        .terminate(Duration::from_secs(5))
        .expect("the service exits within 5 s of SIGTERM");
    assert!(status.success(), "clean exit, got {status}");
    assert!(took < Duration::from_secs(5));
    let logs = app.logs();
    assert!(
        logs.iter()
            .any(|line| line.contains("shutting down") && line.contains("SIGTERM"))
    );
    assert!(logs.iter().any(|line| line.contains("leakfinder stopped")));
}

/// Start-up sets nothing up for CPU profiling (the unwinder is built when the first profile is
/// asked for, on the sampler thread), so nothing at start-up can deadlock. Start it many times,
/// and take a CPU profile from each under load: the handler never allocates, wherever it lands.
#[tokio::test]
async fn the_service_starts_and_answers_every_time() {
    for _ in 0..25 {
        let app = spawn_app(&[]);
        assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
        app.get_json("/start-leak/slice", 200).await;
        let load = async {
            for _ in 0..20 {
                app.get_json("/safe-test?tasks=100", 200).await;
            }
        };
        let (profile, ()) = tokio::join!(app.get("/debug/pprof/profile?seconds=1"), load);
        assert_eq!(profile.status(), 200);
        assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
    }
}
