//! Load shared by the soak tests and benchmarks: a task-profile soak beside a task leak,
//! `/safe-test` load and a running `leakfinder scan`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{BINARY, TestApp};

/// The p-th percentile (0 to 100) of some durations.
pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;
    values[index.min(values.len() - 1)]
}

/// What one soak saw.
pub struct SoakResult {
    /// Task profiles fetched, and how long each took.
    pub profiles: Vec<Duration>,
    /// Task profiles that did not answer 200 within the client's timeout, with why.
    pub failures: Vec<String>,
    /// `/healthz` latencies, sampled every 50 ms.
    pub health: Vec<Duration>,
    /// `/safe-test` requests completed.
    pub safe_tests: usize,
}

/// With the channel leak running: fetches `/debug/pprof/goroutine` every `every` for `length`,
/// beside `/safe-test` load (2 clients) and `/healthz` probes, while `leakfinder scan` runs at a
/// 1 s interval. Every request has a 10 s timeout, so a wedged service shows as failures, not as a
/// hung test.
pub async fn soak_task_profiles(app: &TestApp, length: Duration, every: Duration) -> SoakResult {
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let out = tempfile::Builder::new()
        .prefix("leakfinder-soak-")
        .tempdir()
        .unwrap();
    let mut scan = Command::new(BINARY)
        .env_clear()
        .args([
            "scan",
            &app.base,
            "--duration",
            &format!("{}s", length.as_secs()),
            "--interval",
            "1s",
            "--json",
            "--out",
            &out.path().display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let safe_tests = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, url, stop, done) = (
            client.clone(),
            app.url("/safe-test?tasks=10"),
            Arc::clone(&stop),
            Arc::clone(&safe_tests),
        );
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(response) = client.get(&url).send().await
                    && response.status() == 200
                    && response.bytes().await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let health = {
        let (client, url, stop) = (client.clone(), app.url("/healthz"), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answered = client.get(&url).send().await.map(|r| r.status().as_u16());
                latencies.push(if answered.is_ok_and(|status| status == 200) {
                    started.elapsed()
                } else {
                    Duration::from_secs(10)
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            latencies
        })
    };

    let url = app.url("/debug/pprof/goroutine");
    let deadline = Instant::now() + length;
    let mut ticks = tokio::time::interval(every);
    let (mut profiles, mut failures) = (Vec::new(), Vec::new());
    let mut reported = Instant::now();
    while Instant::now() < deadline {
        ticks.tick().await;
        if reported.elapsed() >= Duration::from_secs(60) {
            // A long soak says it is alive.
            eprintln!(
                "soak: {} task profiles answered, {} failed so far",
                profiles.len(),
                failures.len()
            );
            reported = Instant::now();
        }
        let started = Instant::now();
        match client.get(&url).send().await {
            Ok(response) if response.status() == 200 => match response.bytes().await {
                Ok(_) => profiles.push(started.elapsed()),
                Err(error) => failures.push(format!("body: {error}")),
            },
            Ok(response) => failures.push(format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )),
            Err(error) => failures.push(format!("{error} after {:?}", started.elapsed())),
        }
        if failures.len() >= 3 {
            break; // wedged: no need to wait out the whole soak
        }
    }
    stop.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    load.join_all().await;
    let _ = scan.kill();
    let _ = scan.wait();
    SoakResult {
        profiles,
        failures,
        health,
        safe_tests: safe_tests.load(Ordering::Relaxed),
    }
}

/// `/safe-test?tasks=50` every 20 ms until the returned task is aborted: a healthy service's load.
pub fn healthy_load(app: &TestApp) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let url = app.url("/safe-test?tasks=50");
    tokio::spawn(async move {
        loop {
            let _ = client.get(&url).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}
