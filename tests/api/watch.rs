//! `/leak-report`, the continuous leak watch: it finds the channel leak's tasks by await line and
//! spawn site within 30 s at the default rates, and stays quiet on a healthy service.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::spawn_app;
use crate::load::healthy_load;

/// The line of `source` (a path under the crate) that contains `needle`, 1-based.
fn line_of(source: &str, needle: &str) -> i64 {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source))
            .unwrap();
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{source} has {needle:?}")) as i64
        + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_leak_s_tasks_are_reported_by_await_line_and_spawn_site_within_thirty_seconds()
{
    // The default rates and the default watch interval (heap every 5 s, tasks every 1 s).
    let app = spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "100")]);
    let send = line_of("src/leaks/channel.rs", "sender.send(held).await");
    let spawn = line_of("src/leaks/channel.rs", "blocked.spawn(root(");
    app.get_json("/start-leak/channel", 200).await;
    let started = Instant::now();
    let mut report = Value::Null;
    while started.elapsed() < Duration::from_secs(30) {
        report = app.get_json("/leak-report", 200).await;
        let finding = report["findings"].as_array().unwrap().iter().find(|f| {
            f["kind"] == "tasks"
                && f["function"]
                    .as_str()
                    .unwrap()
                    .contains("run_leaker_job2_channel_task_block")
        });
        if let Some(finding) = finding {
            assert_eq!(finding["line"], send, "the await line: {finding}");
            assert_eq!(finding["file"], "src/leaks/channel.rs");
            let spawned_by = finding["spawned_by"].as_str().unwrap();
            assert!(
                spawned_by.ends_with(&format!("src/leaks/channel.rs:{spawn}")),
                "the spawn site: {spawned_by}"
            );
            assert!(
                finding["rate_per_second"].as_f64().unwrap() > 5.0,
                "{finding}"
            );
            let site = report["tasks_by_spawn_site"]
                .as_array()
                .unwrap()
                .iter()
                .find(|site| site["line"] == spawn)
                .unwrap_or_else(|| panic!("alive tasks by spawn site: {report}"));
            assert!(
                site["function"]
                    .as_str()
                    .unwrap()
                    .contains("run_leaker_job2_channel_task_block")
            );
            assert!(site["alive"].as_u64().unwrap() >= 50, "{site}");
            assert_eq!(report["task_interval_ms"], 1000);
            println!("found after {:?}", started.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the channel leak's tasks were not reported within 30 s: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_service_under_load_with_the_benign_cache_reports_nothing_over_two_minutes() {
    let app = spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "100")]);
    app.get_json("/start-benign/cache-warmup", 200).await;
    let load = healthy_load(&app);
    let started = Instant::now();
    let mut report = Value::Null;
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        report = app.get_json("/leak-report", 200).await;
        assert_eq!(
            report["findings"],
            serde_json::json!([]),
            "nothing leaks after {:?}",
            started.elapsed()
        );
    }
    load.abort();
    assert!(
        report["task_samples"].as_u64().unwrap() >= 100,
        "tasks were watched every second: {report}"
    );
    assert!(report["samples"].as_u64().unwrap() >= 20, "{report}");
}
