//! The leak detector, end to end: the real `leakfinder scan` CLI against this service and against
//! a real Go program serving `net/http/pprof`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{BINARY, TestApp, spawn_app, start_go};
use crate::load::healthy_load;

/// What a scan printed and how it exited.
pub struct Scan {
    pub code: i32,
    pub findings: Vec<Value>,
    pub stderr: String,
    /// Where the scan saved its profiles; removed with the `Scan`.
    pub out: tempfile::TempDir,
}

/// Runs `leakfinder scan URL --duration D --interval 1s --json --out DIR` to completion.
pub async fn scan(url: &str, duration: &str) -> Scan {
    let out = tempfile::Builder::new()
        .prefix("leakfinder-scan-test-")
        .tempdir()
        .unwrap();
    let args = vec![
        "scan".to_owned(),
        url.to_owned(),
        "--duration".into(),
        duration.into(),
        "--interval".into(),
        "1s".into(),
        "--json".into(),
        "--out".into(),
        out.path().display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .env_clear()
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("scan printed JSON ({error}): {stderr}"));
    Scan {
        code: output.status.code().unwrap_or(-1),
        findings: json["findings"].as_array().cloned().unwrap_or_default(),
        stderr,
        out,
    }
}

fn functions(scan: &Scan, kind: &str) -> Vec<String> {
    scan.findings
        .iter()
        .filter(|finding| finding["kind"] == kind)
        .map(|finding| finding["function"].as_str().unwrap().to_owned())
        .collect()
}

/// The service at its default leak rates (1 MiB every 100 ms).
fn default_rates() -> TestApp {
    spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "100")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_leak_alone_is_found_with_its_function_within_ten_seconds() {
    let cases = [
        (
            "slice",
            "heap",
            "leakfinder::leaks::slice::run_leaker_job1_simple_slice",
        ),
        (
            "mutex",
            "heap",
            "leakfinder::leaks::map::run_leaker_job3_mutex_map",
        ),
        (
            "channel",
            "tasks",
            "leakfinder::leaks::channel::run_leaker_job2_channel_task_block",
        ),
    ];
    let apps: Vec<TestApp> = cases.iter().map(|_| default_rates()).collect();
    for ((kind, _, _), app) in cases.iter().zip(&apps) {
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
    }
    let bases: Vec<String> = apps.iter().map(|app| app.base.clone()).collect();
    let scans = futures_join(
        bases
            .into_iter()
            .map(|base| async move { scan(&base, "10s").await }),
    )
    .await;
    for ((leak, kind, function), scan) in cases.iter().zip(&scans) {
        assert_eq!(
            scan.code, 1,
            "{leak}: leaks found means exit 1\n{}",
            scan.stderr
        );
        let found = functions(scan, kind);
        assert!(
            found.iter().any(|f| f.starts_with(function)),
            "{leak}: {found:?} ({kind})"
        );
        let finding = scan
            .findings
            .iter()
            .find(|f| f["function"].as_str().unwrap().starts_with(function))
            .unwrap();
        for field in [
            "file",
            "line",
            "rate_per_second",
            "retained",
            "first_seen_seconds",
            "confidence",
            "evidence",
            "confirm",
        ] {
            assert!(!finding[field].is_null(), "{leak}: {field} in {finding}");
        }
        assert!(finding["confidence"].as_f64().unwrap() > 0.9, "{finding}");
        assert!(
            finding["confirm"]
                .as_str()
                .unwrap()
                .starts_with("go tool pprof -top -base "),
            "{finding}"
        );
        assert!(
            scan.out.path().join("heap-first.pb.gz").exists()
                && scan.out.path().join("heap-last.pb.gz").exists()
        );
        assert!(
            scan.stderr.contains("samples"),
            "progress is shown: {}",
            scan.stderr
        );
    }
    // The heap rate is the leak's: 10 MiB/s at the defaults.
    let slice = &scans[0].findings[0];
    let rate = slice["rate_per_second"].as_f64().unwrap() / (1 << 20) as f64;
    assert!((7.0..=13.0).contains(&rate), "{rate} MiB/s");
}

async fn futures_join<F>(scans: impl Iterator<Item = F>) -> Vec<Scan>
where
    F: std::future::Future<Output = Scan> + Send + 'static,
{
    let handles: Vec<_> = scans.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn all_three_leaks_at_once_give_the_three_leaking_functions() {
    let app = default_rates();
    for kind in ["slice", "channel", "mutex"] {
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
    }
    let scan = scan(&app.base, "10s").await;
    assert_eq!(scan.code, 1, "{}", scan.stderr);
    let heap = functions(&scan, "heap");
    for function in [
        "run_leaker_job1_simple_slice",
        "run_leaker_job2_channel_task_block",
        "run_leaker_job3_mutex_map",
    ] {
        assert_eq!(
            heap.iter().filter(|f| f.contains(function)).count(),
            1,
            "{function}: {heap:?}"
        );
    }
    assert_eq!(heap.len(), 3, "nothing else leaks: {heap:?}");
    let tasks = functions(&scan, "tasks");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(tasks[0].contains("run_leaker_job2_channel_task_block"));
    let rates: Vec<f64> = scan
        .findings
        .iter()
        .map(|f| f["rate_per_second"].as_f64().unwrap())
        .collect();
    assert!(
        rates[..3].windows(2).all(|pair| pair[0] >= pair[1]),
        "ranked by rate: {rates:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_service_with_a_warming_cache_under_load_gives_no_finding_over_sixty_seconds() {
    let app = default_rates();
    let warm = app.get_json("/start-benign/cache-warmup", 200).await;
    assert_eq!(warm["started"], true);
    let load = healthy_load(&app);
    let scan = scan(&app.base, "60s").await;
    load.abort();
    assert_eq!(
        scan.code, 0,
        "no finding: {:#?}\n{}",
        scan.findings, scan.stderr
    );
    assert!(scan.findings.is_empty());
    let status = app.get_json("/reset-benign/cache-warmup", 200).await;
    assert_eq!(status["entries"], 0);
}

#[tokio::test]
async fn the_service_reports_its_own_leaks_at_leak_report() {
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "1048576"),
        ("LEAK_INTERVAL_MS", "100"),
        ("LEAK_REPORT_INTERVAL_MS", "500"),
    ]);
    app.get_json("/start-leak/slice", 200).await;
    let mut report = Value::Null;
    for _ in 0..60 {
        report = app.get_json("/leak-report", 200).await;
        let found = report["findings"].as_array().unwrap().iter().any(|f| {
            f["kind"] == "heap"
                && f["function"]
                    .as_str()
                    .unwrap()
                    .contains("run_leaker_job1_simple_slice")
        });
        if found {
            assert_eq!(report["interval_ms"], 500);
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the slice leak was not reported: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_not_pprof_is_a_clear_error() {
    let app = spawn_app(&[]);
    // Below the Swagger page there is no pprof (404); a bare word is not a URL.
    let swagger = Command::new(BINARY)
        .args([
            "scan",
            &format!("{}/swagger/", app.base),
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(swagger.status.code(), Some(2));
    let bad_url = Command::new(BINARY)
        .args(["scan", "not-a-url", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("not an http:// or https:// URL"));

    // A server that answers HTML where pprof should be.
    let receiver = crate::telemetry::Receiver::start().await;
    let temporary = tempfile::tempdir().unwrap();
    let not_pprof = Command::new(BINARY)
        .args(["scan", &receiver.url(), "--duration", "1s"])
        .env("TMPDIR", temporary.path())
        .output()
        .unwrap();
    assert_eq!(not_pprof.status.code(), Some(2));
    assert!(
        std::fs::read_dir(temporary.path())
            .unwrap()
            .next()
            .is_none(),
        "a failed scan leaves no directory behind"
    );
    let message = String::from_utf8_lossy(&not_pprof.stderr);
    assert!(
        message.contains("did not return a pprof profile"),
        "{message}"
    );
}

#[tokio::test]
async fn a_go_service_s_leaks_are_found_by_their_go_functions_and_its_churn_is_not() {
    let go = start_go("goleaks", &[]);
    let scan = scan(&go.url, "15s").await;
    assert_eq!(scan.code, 1, "{}", scan.stderr);
    let heap = functions(&scan, "heap");
    let goroutines = functions(&scan, "goroutines");
    assert!(heap.iter().any(|f| f == "main.leakHeap"), "{heap:?}");
    assert!(
        goroutines.iter().any(|f| f == "main.leakGoroutines.func1"),
        "{goroutines:?}"
    );
    for benign in ["main.churn", "main.boundedCache"] {
        assert!(
            !heap.iter().chain(&goroutines).any(|f| f == benign),
            "{benign} is not a leak: {:#?}",
            scan.findings
        );
    }
    let finding = scan
        .findings
        .iter()
        .find(|f| f["function"] == "main.leakHeap")
        .unwrap();
    assert!(
        finding["file"].as_str().unwrap().ends_with("main.go"),
        "{finding}"
    );
}
