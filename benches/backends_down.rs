//! Request latency with the telemetry backends down or stalled, against export off, measured
//! side by side in one run: the exporters run on their own threads, so a dead backend must not
//! slow a request. `cargo bench --bench backends_down`. Fails if a ratio passes 1.10.

#[path = "../tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use helpers::{TestApp, spawn_app};

/// A server that accepts connections and never answers.
fn stalling_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(10_000).flatten() {
            open.push(stream);
        }
    });
    addr
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Both exporters pointed at `addr`, at their default intervals (metrics every 5 s, CPU profiles
/// every 10 s, heap every 15 s), as a user would run them.
fn exporting_to(addr: SocketAddr) -> TestApp {
    let url = format!("http://{addr}");
    spawn_app(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("PYROSCOPE_SERVER_ADDRESS", &url),
    ])
}

/// Latencies of `rounds` sequential `/safe-test?tasks=10` requests.
async fn latencies(app: &TestApp, rounds: usize) -> Vec<Duration> {
    let url = app.url("/safe-test?tasks=10");
    let mut taken = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        taken.push(started.elapsed());
    }
    taken
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let apps = [
        ("export off", spawn_app(&[])),
        ("backends on a closed port", exporting_to(closed_port())),
        ("backends that stall", exporting_to(stalling_server())),
    ];
    // Metric exports have failed or stalled by now; profile pushes fail or stall during the run.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); apps.len()];
    for _ in 0..10 {
        for (index, (_, app)) in apps.iter().enumerate() {
            all[index].extend(latencies(app, 400).await);
        }
    }
    let medians: Vec<Duration> = all.into_iter().map(median).collect();
    println!(
        "request latency with telemetry backends down (median of 2400 interleaved requests each)"
    );
    let mut worst: f64 = 0.0;
    for ((what, _), median) in apps.iter().zip(&medians) {
        let ratio = median.as_secs_f64() / medians[0].as_secs_f64();
        worst = worst.max(ratio);
        println!(
            "{what:>28}: {:8.1} µs  ratio to export off {ratio:.3}",
            median.as_secs_f64() * 1e6
        );
    }
    assert!(
        worst <= 1.10,
        "a backend that is down slowed requests by more than 10%"
    );
}
