//! `/leak-report`: the detector, run continuously on this service's own heap profile.
//!
//! Every interval it takes the heap profile in-process (the one `/debug/pprof/heap` serves) and
//! feeds a sliding window of them to a [`Detector`]. The latest findings are served as JSON and
//! exported as metrics.
//!
//! It takes no task dumps: a tokio 1.54 task dump wakes every task, and a dump taken while many
//! tasks are queued can spin for ever (see `profiling::tasks`), which a dump every few seconds
//! beside a task leak makes likely. Task dumps stay on request: `/debug/pprof/goroutine` and
//! `leakfinder scan`; tasks piling up show continuously in the alive and blocked task metrics.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::profile::{ProfileKind, snapshot};
use super::{Detector, Finding};
use crate::profiling::Profilers;

/// Profiles kept per series: five minutes at the default interval.
pub const WINDOW: usize = 60;

/// The latest verdicts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, poem_openapi::Object)]
pub struct WatchReport {
    /// Leaking sites, fastest first.
    pub findings: Vec<Finding>,
    /// Profiles taken so far (of each kind).
    pub samples: u64,
    /// Milliseconds between two profiles.
    pub interval_ms: u64,
    /// Profiles the analysis looks back over.
    pub window: u64,
}

/// The continuously updated report.
pub struct LeakWatch {
    interval: Duration,
    report: RwLock<WatchReport>,
}

impl LeakWatch {
    /// A watch that profiles every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            report: RwLock::new(WatchReport {
                interval_ms: interval.as_millis() as u64,
                window: WINDOW as u64,
                ..WatchReport::default()
            }),
        }
    }

    /// The latest report.
    pub fn report(&self) -> WatchReport {
        self.report
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Profiles this service every interval until `cancel`, updating the report.
    pub async fn run(&self, profilers: &Profilers, cancel: CancellationToken) {
        let mut detector = Detector::new(WINDOW);
        let started = Instant::now();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples = 0;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let t = started.elapsed().as_secs_f64();
            match profilers.heap().await {
                Ok(profile) => {
                    if let Ok(heap) = snapshot(&profile, ProfileKind::Heap) {
                        detector.observe(t, &heap);
                    }
                }
                Err(error) => tracing::debug!(%error, "leak watch: no heap profile this round"),
            }
            samples += 1;
            let findings = detector.findings();
            let mut report = self.report.write().unwrap_or_else(PoisonError::into_inner);
            report.findings = findings;
            report.samples = samples;
        }
    }
}

/// Spawns the watch of `state`'s profilers.
pub fn spawn(watch: Arc<LeakWatch>, profilers: Arc<Profilers>, cancel: CancellationToken) {
    tokio::spawn(crate::profiling::tasks::root(async move {
        watch.run(&profilers, cancel).await;
    }));
}
