//! Load generation shared by the benchmarks.

use std::time::{Duration, Instant};

use crate::helpers::TestApp;

/// Requests per second of `/safe-test?tasks=10` from `clients` concurrent clients over `window`.
pub async fn throughput(app: &TestApp, clients: usize, window: Duration) -> f64 {
    let deadline = Instant::now() + window;
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let client = app.client.clone();
        let url = app.url("/safe-test?tasks=10");
        running.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                done += 1;
            }
            done
        });
    }
    let total: u64 = running.join_all().await.into_iter().sum();
    total as f64 / window.as_secs_f64()
}
