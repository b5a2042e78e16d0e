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
            assert!(site["alive"].as_u64().unwrap() >= 20, "{site}");
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

/// The first `/leak-report` finding at `kind` whose function contains `function`, polling every
/// 250 ms until `done` holds for it, for at most `within`; with the time it took.
async fn watch_for(
    app: &crate::helpers::TestApp,
    kind: &str,
    function: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let started = Instant::now();
    let mut report = Value::Null;
    while started.elapsed() < within {
        report = app.get_json("/leak-report", 200).await;
        let found = report["findings"].as_array().unwrap().iter().find(|f| {
            f["kind"] == kind && f["function"].as_str().unwrap().contains(function) && done(f)
        });
        if let Some(found) = found {
            return (found.clone(), started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no {kind} finding in {function} within {within:?}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_are_reported_within_seconds_and_once_capped_as_held() {
    // The default rates and watch interval; the leaks cap at 450 MiB after about 45 s.
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "1048576"),
        ("LEAK_INTERVAL_MS", "100"),
        ("LEAK_MAX_BYTES", &(450u64 << 20).to_string()),
    ]);
    app.get_json("/start-leak/slice", 200).await;
    app.get_json("/start-leak/channel", 200).await;
    let slice = "run_leaker_job1_simple_slice";
    let channel = "run_leaker_job2_channel_task_block";
    let (heap, heap_after) =
        watch_for(&app, "heap", slice, Duration::from_secs(30), |_| true).await;
    let (tasks, tasks_after) =
        watch_for(&app, "tasks", channel, Duration::from_secs(30), |_| true).await;
    println!("first findings after {heap_after:?} (heap) and {tasks_after:?} (tasks)");
    assert!(
        heap_after <= Duration::from_secs(8),
        "{heap_after:?}: {heap}"
    );
    assert!(
        tasks_after <= Duration::from_secs(8),
        "{tasks_after:?}: {tasks}"
    );
    let report = app.get_json("/leak-report", 200).await;
    assert_eq!(report["interval_ms"], 1000);
    assert_eq!(report["task_interval_ms"], 1000);

    // Capped: both stop growing and hold what they took; still reported, as held.
    let held = |f: &Value| f["evidence"]["held"] == true;
    let (heap, _) = watch_for(&app, "heap", slice, Duration::from_secs(90), held).await;
    let (tasks, _) = watch_for(&app, "tasks", channel, Duration::from_secs(30), held).await;
    for finding in [&heap, &tasks] {
        assert!(
            finding["evidence"]["survival"].as_f64().unwrap() > 0.95,
            "it keeps what it made: {finding}"
        );
    }
    assert_eq!(app.report().await["leaks"]["slice"]["capped"], true);
}
