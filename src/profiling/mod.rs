//! Profiles of this process in pprof format, readable without the binary: heap (jemalloc),
//! CPU (our SIGPROF sampler) and tasks (spawn-site counts and traced await stacks), all symbolised in the
//! process by one shared, cached [`symbols::Symbolizer`].
//!
//! Everything that blocks (dumping, tracing, symbolising, encoding) runs off the async workers.

pub mod cpu;
pub mod heap;
pub mod jemalloc;
pub mod pprof;
pub mod sigprof;
pub mod symbols;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

/// The longest a task profile may wait for the one before it, or take itself, before it is
/// refused with a 503: a profile request never hangs.
pub const TASK_PROFILE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// One task profile at a time: each traces every task root once.
    task_profiles: AsyncMutex<()>,
}

impl Profilers {
    /// Starts the profilers whose background work ends when `shutdown` is cancelled.
    pub fn start(shutdown: &CancellationToken) -> Self {
        let cpu = match cpu::CpuSampler::start(shutdown.child_token()) {
            Ok(sampler) => Some(sampler),
            Err(error) => {
                tracing::warn!(%error, "cannot start the CPU sampler thread");
                None
            }
        };
        Self {
            symbols: Arc::default(),
            cpu,
            task_profiles: AsyncMutex::new(()),
        }
    }

    /// The heap profile, symbolised and trimmed.
    pub async fn heap(&self) -> Result<pprof::Profile, ProfilingError> {
        let symbols = Arc::clone(&self.symbols);
        tokio::task::spawn_blocking(move || heap::dump(&symbols)).await?
    }

    /// CPU time CPU sampling has cost since start (zero if the sampler never started).
    pub fn cpu_sampling_cpu_time(&self) -> Duration {
        self.cpu
            .as_ref()
            .map_or(Duration::ZERO, cpu::CpuSampler::cpu_time)
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

    /// Every alive task of the process, by spawn site, with the await stack of each parked
    /// task root, symbolised. Users take it in a loop; it fails with
    /// [`ProfilingError::Timeout`] rather than wait long.
    pub async fn tasks(&self) -> Result<Vec<tasks::TaskStack>, ProfilingError> {
        let timeout = |_| ProfilingError::Timeout("task profile");
        let _one_at_a_time = tokio::time::timeout(TASK_PROFILE_TIMEOUT, self.task_profiles.lock())
            .await
            .map_err(timeout)?;
        let symbols = Arc::clone(&self.symbols);
        let job = tokio::task::spawn_blocking(move || tasks::profile(&symbols));
        Ok(tokio::time::timeout(TASK_PROFILE_TIMEOUT, job)
            .await
            .map_err(timeout)??)
    }
}
