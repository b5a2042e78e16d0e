//! Profiles of this process in pprof format, readable without the binary: heap (jemalloc),
//! CPU (pprof-rs) and tasks (tokio task dumps), all symbolised in the process by one shared,
//! cached [`symbols::Symbolizer`].
//!
//! Everything that blocks (dumping, symbolising, encoding) runs off the async workers: a blocked
//! worker would also stall a task dump, which needs every worker to check in.

pub mod cpu;
pub mod heap;
pub mod jemalloc;
pub mod pprof;
pub mod symbols;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

/// The least time between the end of one task dump and the start of the next.
const DUMP_SPACING: Duration = Duration::from_millis(250);

/// Why a profile could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProfilingError {
    /// jemalloc's profiler is not active (built without it, or `malloc_conf` turned it off).
    #[error("heap profiling is not active in this process")]
    HeapProfilingDisabled,
    /// jemalloc failed to dump or its dump could not be read.
    #[error("the heap dump failed: {0}")]
    Dump(String),
    /// A profiler could not start or stopped.
    #[error("the profiler is unavailable: {0}")]
    Unavailable(String),
    /// The binary was built without what this profile needs (task dumps need
    /// `--cfg tokio_unstable`, which `.cargo/config.toml` sets).
    #[error("{0} is not compiled into this binary")]
    NotCompiled(&'static str),
    /// Taking the profile took too long.
    #[error("the {0} took too long")]
    Timeout(&'static str),
    /// A blocking profiling job panicked or was cancelled.
    #[error("a profiling job failed: {0}")]
    Job(#[from] tokio::task::JoinError),
}

/// The process's profilers.
pub struct Profilers {
    /// Shared by every profile.
    pub symbols: Arc<symbols::Symbolizer>,
    /// The one CPU sampler, when it could start.
    pub cpu: Option<cpu::CpuSampler>,
    /// One task dump at a time, and when the last one ended: a dump wakes every task, so the
    /// next waits for them to settle (see `tasks::QUIET_QUEUE`).
    task_dumps: AsyncMutex<Option<std::time::Instant>>,
}

impl Profilers {
    /// Starts the profilers whose background work ends when `shutdown` is cancelled.
    pub fn start(shutdown: &CancellationToken) -> Self {
        let cpu = if !cpu::warmed_up() {
            tracing::warn!("CPU profiling is off: the start-up warm-up took no sample");
            None
        } else {
            match cpu::CpuSampler::start(shutdown.child_token()) {
                Ok(sampler) => Some(sampler),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the CPU sampler thread");
                    None
                }
            }
        };
        Self {
            symbols: Arc::default(),
            cpu,
            task_dumps: AsyncMutex::new(None),
        }
    }

    /// The heap profile, symbolised and trimmed.
    pub async fn heap(&self) -> Result<pprof::Profile, ProfilingError> {
        let symbols = Arc::clone(&self.symbols);
        tokio::task::spawn_blocking(move || heap::dump(&symbols)).await?
    }

    /// A CPU profile of the next `duration`.
    pub async fn cpu(&self, duration: Duration) -> Result<pprof::Profile, ProfilingError> {
        let sampler = self
            .cpu
            .as_ref()
            .ok_or_else(|| ProfilingError::Unavailable("the CPU sampler did not start".into()))?;
        let windows = sampler.collect(duration).await?;
        let symbols = Arc::clone(&self.symbols);
        tokio::task::spawn_blocking(move || {
            let frames = symbols.resolve(cpu::lookup_addresses(&windows));
            cpu::build_profile(&windows, &frames)
        })
        .await
        .map_err(ProfilingError::from)
    }

    /// The tasks of the current runtime, symbolised.
    pub async fn tasks(&self) -> Result<Vec<tasks::TaskStack>, ProfilingError> {
        let raw = {
            let mut last = self.task_dumps.lock().await;
            if let Some(ended) = *last {
                let settle = DUMP_SPACING.saturating_sub(ended.elapsed());
                tokio::time::sleep(settle).await;
            }
            let raw = tasks::dump().await;
            *last = Some(std::time::Instant::now());
            raw?
        };
        let symbols = Arc::clone(&self.symbols);
        tokio::task::spawn_blocking(move || {
            let frames = symbols.resolve(tasks::lookup_addresses(&raw));
            tasks::symbolise(&raw, &frames)
        })
        .await
        .map_err(ProfilingError::from)
    }
}
