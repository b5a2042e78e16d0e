//! The leak detector, measured in one run against the real binary:
//! - the time `leakfinder scan` takes to first report each leak (default rates, 1 s interval);
//! - the target's `/safe-test` throughput with a scan running against it, against no scan.
//!
//! `cargo bench --bench detector`. Fails if a leak is not found within 20 s.

#[path = "../tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use helpers::{BINARY, TestApp, spawn_app};

fn default_rates() -> TestApp {
    spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "100")])
}

/// Seconds from the leak's start until a scan's progress first counts a suspect.
fn time_to_detect(base: &str, started: Instant) -> f64 {
    let mut scan = Command::new(BINARY)
        .args([
            "scan",
            base,
            "--duration",
            "20s",
            "--interval",
            "1s",
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = BufReader::new(scan.stderr.take().unwrap());
    let mut detected = None;
    for line in progress.lines().map_while(Result::ok) {
        if detected.is_none() && !line.ends_with(" 0 suspected") && line.contains("suspected") {
            detected = Some(started.elapsed().as_secs_f64());
            let _ = scan.kill();
        }
    }
    let _ = scan.wait();
    detected.expect("the leak is found within 20 s")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("leakfinder detector benchmark (one run, side by side)");
    for leak in ["slice", "channel", "mutex"] {
        let app = default_rates();
        let started = Instant::now();
        app.get_json(&format!("/start-leak/{leak}"), 200).await;
        let base = app.base.clone();
        let seconds = tokio::task::spawn_blocking(move || time_to_detect(&base, started))
            .await
            .unwrap();
        println!("time to detect the {leak} leak: {seconds:.1} s (scan every 1 s)");
    }

    let app = spawn_app(&[]);
    let window = Duration::from_secs(5);
    let quiet = common::throughput(&app, 4, window).await;
    let mut scan = Command::new(BINARY)
        .args(["scan", &app.base, "--duration", "30s", "--interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let scanned = common::throughput(&app, 4, window).await;
    let _ = scan.kill();
    let _ = scan.wait();
    let quiet_again = common::throughput(&app, 4, window).await;
    let baseline = (quiet + quiet_again) / 2.0;
    println!(
        "/safe-test throughput: no scan {baseline:.0} req/s, scan running {scanned:.0} req/s, ratio {:.3}",
        scanned / baseline
    );
}
