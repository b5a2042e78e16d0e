//! Observability: logs, OTLP metrics and continuous profiles pushed to Pyroscope.
//!
//! Everything that leaves the process goes through exporters on their own threads, so a backend
//! that is down, slow or failing never slows a request. Their warnings are rate-limited, and a
//! [`TelemetryGuard`] flushes them at shutdown within a bounded time.

pub mod logs;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use logs::subscriber;

use leakfinder_profiling::push;

use crate::app::AppState;
use crate::config::Config;

/// The longest shutdown waits for exporters to flush.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// The time the profile push has for its last profiles, within [`FLUSH_DEADLINE`].
const PUSH_DEADLINE: Duration = Duration::from_millis(1500);

/// The running exporters. Dropping it flushes and stops them, waiting at most [`FLUSH_DEADLINE`].
#[must_use = "dropping the guard stops the exporters"]
pub struct TelemetryGuard {
    metrics: Option<metrics::MetricsExport>,
    push: Option<push::ProfilePush>,
}

impl TelemetryGuard {
    /// Starts whatever export the configuration turns on.
    pub fn start(config: &Config, state: &Arc<AppState>) -> anyhow::Result<Self> {
        let metrics = metrics::MetricsExport::start(config, state)?;
        let push = match config.pyroscope_url() {
            Some(url) => {
                let settings = push::PushSettings {
                    url: url.to_owned(),
                    service_name: config.service_name.clone(),
                    service_version: env!("CARGO_PKG_VERSION").to_owned(),
                    cpu_every: Duration::from_secs(config.pyroscope_cpu_interval_secs),
                    heap_every: Duration::from_secs(config.pyroscope_heap_interval_secs),
                    tenant_id: config.pyroscope_tenant(),
                    auth: config.pyroscope_auth()?,
                };
                let stats = Arc::clone(&state.profile_push);
                Some(
                    push::ProfilePush::start(settings, &state.profilers, stats)
                        .context("cannot start the profile push thread")?,
                )
            }
            None => {
                tracing::info!("profile push is off: no PYROSCOPE_SERVER_ADDRESS");
                None
            }
        };
        Ok(Self { metrics, push })
    }

    /// The histogram HTTP requests are recorded in, when metrics are exported.
    pub fn http_metrics(&self) -> Option<metrics::HttpMetrics> {
        self.metrics.as_ref().map(metrics::MetricsExport::http)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let (metrics, push) = (self.metrics.take(), self.push.take());
        if metrics.is_none() && push.is_none() {
            return;
        }
        let (done, finished) = std::sync::mpsc::channel();
        // The pusher sends its last profiles meanwhile, by a deadline inside ours.
        if let Some(push) = &push {
            push.finish(std::time::Instant::now() + PUSH_DEADLINE);
        }
        // A backend that blackholes requests could hold a flush for its whole timeout: flush on a
        // thread of its own, and stop waiting at the deadline.
        let flushing = std::thread::Builder::new()
            .name("telemetry-flush".into())
            .spawn(move || {
                if let Some(metrics) = metrics {
                    metrics.shutdown();
                }
                if let Some(push) = push {
                    push.join();
                }
                let _ = done.send(());
            });
        if flushing.is_ok() && finished.recv_timeout(FLUSH_DEADLINE).is_err() {
            tracing::warn!("telemetry did not flush within {FLUSH_DEADLINE:?}; exiting anyway");
        }
    }
}
