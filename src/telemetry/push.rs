//! Continuous profiles pushed to Pyroscope by the `pyroscope` agent, fed by this service's own
//! profilers through two [`Backend`]s:
//!
//! - CPU: the agent's built-in pprof-rs backend would install a second SIGPROF handler, so
//!   [`SharedCpuBackend`] subscribes to the one sampler's windows instead, the same windows `/debug/pprof/profile` serves.
//! - Heap: the agent's jemalloc backend pushes unsymbolised-then-`backtrace`-symbolised, untrimmed
//!   profiles, and stops for good on the first failed report; [`HeapBackend`] pushes exactly what
//!   `/debug/pprof/heap` serves, and never fails a report.
//!
//! A backend's `report` must never return an error: the agent's thread ends on the first one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use pyroscope::backend::{Backend, BackendImpl, ReportBatch, ReportData, ThreadTag};
use pyroscope::pyroscope::{PyroscopeAgent, PyroscopeAgentBuilder, PyroscopeAgentRunning};
use tokio::sync::broadcast;

use crate::app::AppState;
use crate::config::Config;
use crate::profiling::cpu::{self, CpuWindow, DemandGuard, FREQUENCY_HZ};
use crate::profiling::heap;
use crate::profiling::pprof::encode_gzip;
use crate::profiling::symbols::Symbolizer;

/// Pyroscope's name of the CPU profile type (`process_cpu:cpu:nanoseconds:cpu:nanoseconds`).
pub const CPU_PROFILE: &str = "process_cpu";
/// Pyroscope's name of the heap profile type (`memory:inuse_space:bytes:space:bytes`).
pub const HEAP_PROFILE: &str = "memory";

/// The two running agents.
pub struct ProfilePush {
    cpu: Option<PyroscopeAgent<PyroscopeAgentRunning>>,
    heap: PyroscopeAgent<PyroscopeAgentRunning>,
}

impl ProfilePush {
    /// Starts pushing if `PYROSCOPE_SERVER_ADDRESS` is set; `None` otherwise.
    pub fn start(config: &Config, state: &Arc<AppState>) -> anyhow::Result<Option<Self>> {
        let Some(url) = config.pyroscope_url() else {
            tracing::info!("profile push is off: no PYROSCOPE_SERVER_ADDRESS");
            return Ok(None);
        };
        let profilers = &state.profilers;
        let cpu = match profilers.cpu.as_ref() {
            Some(sampler) => Some(start_agent(
                config,
                url,
                Box::new(SharedCpuBackend {
                    windows: sampler.subscribe(),
                    _running: sampler.demand(),
                    symbols: Arc::clone(&profilers.symbols),
                }),
                config.pyroscope_cpu_interval_secs,
            )?),
            None => {
                tracing::warn!("no CPU sampler: only heap profiles are pushed");
                None
            }
        };
        let heap = start_agent(
            config,
            url,
            Box::new(HeapBackend {
                symbols: Arc::clone(&profilers.symbols),
            }),
            config.pyroscope_heap_interval_secs,
        )?;
        tracing::info!(%url, service = %config.service_name, "pushing CPU and heap profiles to Pyroscope");
        Ok(Some(Self { cpu, heap }))
    }

    /// Sends the last profiles and stops the agents.
    pub fn shutdown(self) {
        for agent in self.cpu.into_iter().chain([self.heap]) {
            match agent.stop() {
                Ok(stopped) => stopped.shutdown(),
                Err(error) => {
                    tracing::warn!(target: "leakfinder::telemetry", %error, "a profile agent did not stop cleanly");
                }
            }
        }
    }
}

fn start_agent(
    config: &Config,
    url: &str,
    backend: Box<dyn Backend>,
    interval_secs: u64,
) -> anyhow::Result<PyroscopeAgent<PyroscopeAgentRunning>> {
    let version = env!("CARGO_PKG_VERSION");
    PyroscopeAgentBuilder::new(
        url,
        &config.service_name,
        FREQUENCY_HZ,
        "leakfinder",
        version,
        BackendImpl::new(backend),
    )
    .tags(vec![("service_version", version)])
    .upload_interval(Duration::from_secs(interval_secs))
    .build()
    .and_then(|agent| agent.start())
    .context("cannot start the Pyroscope agent")
}

/// An empty report: the agent pushes nothing of substance this round.
fn nothing(profile_type: &str) -> ReportBatch {
    ReportBatch {
        profile_type: profile_type.to_owned(),
        data: ReportData::Reports(Vec::new()),
    }
}

/// Feeds the agent the CPU sampler's windows since its last report, symbolised like the pull
/// endpoint's. Keeps the sampler running while the agent lives.
pub struct SharedCpuBackend {
    windows: broadcast::Receiver<Arc<CpuWindow>>,
    _running: DemandGuard,
    symbols: Arc<Symbolizer>,
}

impl Backend for SharedCpuBackend {
    fn initialize(&mut self) -> pyroscope::Result<()> {
        Ok(())
    }

    fn shutdown(self: Box<Self>) -> pyroscope::Result<()> {
        Ok(())
    }

    fn report(&mut self) -> pyroscope::Result<ReportBatch> {
        let mut windows = Vec::new();
        loop {
            match self.windows.try_recv() {
                Ok(window) => windows.push(window),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::warn!(target: "leakfinder::telemetry", missed, "CPU windows were dropped before a push");
                }
                Err(_) => break,
            }
        }
        if windows.is_empty() {
            return Ok(nothing(CPU_PROFILE));
        }
        let frames = self.symbols.resolve(cpu::lookup_addresses(&windows));
        let profile = cpu::build_profile(&windows, &frames);
        Ok(ReportBatch {
            profile_type: CPU_PROFILE.to_owned(),
            data: ReportData::RawPprof(encode_gzip(&profile)),
        })
    }

    fn add_tag(&self, _: ThreadTag) -> pyroscope::Result<()> {
        Ok(())
    }

    fn remove_tag(&self, _: ThreadTag) -> pyroscope::Result<()> {
        Ok(())
    }
}

/// Feeds the agent the same symbolised, trimmed heap profile `/debug/pprof/heap` serves.
pub struct HeapBackend {
    symbols: Arc<Symbolizer>,
}

impl Backend for HeapBackend {
    fn initialize(&mut self) -> pyroscope::Result<()> {
        Ok(())
    }

    fn shutdown(self: Box<Self>) -> pyroscope::Result<()> {
        Ok(())
    }

    fn report(&mut self) -> pyroscope::Result<ReportBatch> {
        match heap::dump(&self.symbols) {
            Ok(mut profile) => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as i64);
                profile.time_nanos = now;
                Ok(ReportBatch {
                    profile_type: HEAP_PROFILE.to_owned(),
                    data: ReportData::RawPprof(encode_gzip(&profile)),
                })
            }
            Err(error) => {
                tracing::warn!(target: "leakfinder::telemetry", %error, "no heap profile to push this round");
                Ok(nothing(HEAP_PROFILE))
            }
        }
    }

    fn add_tag(&self, _: ThreadTag) -> pyroscope::Result<()> {
        Ok(())
    }

    fn remove_tag(&self, _: ThreadTag) -> pyroscope::Result<()> {
        Ok(())
    }
}
