//! Go-quality profiles of a running tokio service, in pprof format and symbolised in the process,
//! so that `go tool pprof` reads them without the binary: the live heap (jemalloc's sampling
//! profiler, allocator frames trimmed), CPU (one shared SIGPROF sampler that every consumer reads)
//! and tokio tasks (Go's goroutine profile: alive tasks by spawn site, each parked task's await
//! stack, age and time parked, in pprof and in Go's text forms). No HTTP framework here: `leakfinder-http` serves these on Go's routes. Everything that
//! blocks (dumping, tracing, symbolising, encoding) runs off the async workers.
//!
//! # Setup
//! ```ignore
//! leakfinder_profiling::jemalloc!();                  // global allocator + malloc_conf
//!
//! fn main() {
//!     let mut builder = tokio::runtime::Builder::new_multi_thread();
//!     leakfinder_profiling::tasks::install(builder.enable_all()); // spawn-site counting hooks
//!     let runtime = builder.build().unwrap();
//!     let profilers = std::sync::Arc::new(leakfinder_profiling::Profilers::new());
//!     // profilers.heap().await, profilers.cpu(seconds).await, profilers.tasks().await,
//!     // profilers.tasks_text(form).await
//! }
//! ```
//!
//! What it needs:
//! - `--cfg tokio_unstable` (the task hooks) and `-C force-frame-pointers=yes` (await stacks in
//!   nanoseconds), in `.cargo/config.toml`'s `build.rustflags`;
//! - jemalloc as the global allocator with `prof:true` ([`jemalloc!`] sets both);
//! - line tables in release (`[profile.release] debug = "limited"`), never stripped.
//!
//! What it costs: jemalloc's sampling (one backtrace per 512 KiB allocated), a SIGPROF sampler
//! that runs only while a CPU profile or a push wants it (99 Hz), three atomic increments per task
//! (two at its spawn, one at its end), a coarse clock read per spawn and per poll of a task root,
//! and the symbol index (the first profile reads debug info; a prebuilt table avoids that, see
//! [`symbols::table`]).
//!
//! # Layout
//! - [`heap`] and [`mod@jemalloc`]: the heap profile, from jemalloc's sample hooks (what each
//!   stack allocated and freed, and the age of live memory; [`heap::tracking`]).
//! - [`cpu`] and [`sigprof`]: the one SIGPROF sampler and the CPU profile of its windows.
//! - [`tasks`]: the task profile (spawn-site hooks, task roots, frame-pointer walks) and Go's
//!   text forms of it.
//! - [`symbols`]: addresses to functions, files and lines (DWARF, a prebuilt table, libc's
//!   symbol tables), cached.
//! - `push` (feature `pyroscope`): CPU and heap profiles pushed to Pyroscope.
//! - [`Profilers`]: all of it behind one value a service keeps in its state.

#![warn(missing_docs)]

pub mod cpu;
pub mod heap;
pub mod jemalloc;
#[cfg(feature = "pyroscope")]
pub mod push;
pub mod sigprof;
pub mod symbols;
pub mod tasks;

pub use leakfinder_pprof as pprof;

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
        // Normally installed before `main` by `jemalloc!()`; this covers an allocator set up
        // another way (allocations before this call are then not tracked).
        if let Err(error) = heap::tracking::install() {
            tracing::warn!(%error, "allocations and ages are not tracked: the heap profile shows live memory only");
        }
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

    /// Starts the profilers for the life of the process (their background thread sleeps
    /// while no CPU profile is wanted).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::start(&CancellationToken::new())
    }

    /// Shows the program's own source files relative to `root` (pass
    /// `env!("CARGO_MANIFEST_DIR")`); see [`symbols::Symbolizer::with_source_root`]. Call it
    /// before anything else holds [`Self::symbols`].
    pub fn with_source_root(mut self, root: &str) -> Self {
        self.symbols = Arc::new(symbols::Symbolizer::with_source_root(root));
        self
    }

    /// The heap profile, symbolised and trimmed.
    pub async fn heap(&self) -> Result<pprof::Profile, ProfilingError> {
        let symbols = Arc::clone(&self.symbols);
        tokio::task::spawn_blocking(move || heap::dump(&symbols)).await?
    }

    /// What allocation and age tracking has cost so far, and what its tables hold.
    pub fn heap_tracking(&self) -> heap::tracking::Stats {
        heap::tracking::stats()
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
            let frames = symbols.resolve_samples(cpu::lookup_addresses(&windows));
            cpu::build_profile(&windows, &frames)
        })
        .await
        .map_err(ProfilingError::from)
    }

    /// Every alive task of the process, by spawn site, with the await stack of each parked
    /// task root, symbolised. Users take it in a loop; it fails with
    /// [`ProfilingError::Timeout`] rather than wait long.
    pub async fn tasks(&self) -> Result<Vec<tasks::TaskStack>, ProfilingError> {
        self.task_job(tasks::profile).await
    }

    /// The task profile in one of Go's text forms (`?debug=1`, `?debug=2`; see [`mod@tasks::text`]).
    /// As [`Self::tasks`], it fails with [`ProfilingError::Timeout`] rather than wait long.
    pub async fn tasks_text(&self, form: tasks::TextForm) -> Result<String, ProfilingError> {
        self.task_job(move |symbols| tasks::text(symbols, form))
            .await
    }

    /// Runs `job` on the symboliser off the async workers, one task profile at a time.
    async fn task_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&symbols::Symbolizer) -> T + Send + 'static,
    ) -> Result<T, ProfilingError> {
        let timeout = |_| ProfilingError::Timeout("task profile");
        let _one_at_a_time = tokio::time::timeout(TASK_PROFILE_TIMEOUT, self.task_profiles.lock())
            .await
            .map_err(timeout)?;
        let symbols = Arc::clone(&self.symbols);
        let job = tokio::task::spawn_blocking(move || job(&symbols));
        Ok(tokio::time::timeout(TASK_PROFILE_TIMEOUT, job)
            .await
            .map_err(timeout)??)
    }
}

/// CPU time of the calling thread (zero if the clock cannot be read).
#[allow(unsafe_code)]
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec`, which `now` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Makes jemalloc the global allocator, with its sampling heap profiler on from the first
/// allocation (`malloc_conf`: `prof:true,prof_active:true,lg_prof_sample:19`, one sample per
/// 512 KiB on average, as Go's default rate), and installs allocation and age tracking
/// ([`heap::tracking`]) before `main`, so every sampled allocation is tracked from the start.
/// Put it once, at the top level of the binary crate:
///
/// ```ignore
/// leakfinder_profiling::jemalloc!();
/// // or with options of your own (they replace the default string):
/// leakfinder_profiling::jemalloc!("prof:true,prof_active:true,lg_prof_sample:19,cache_oblivious:false");
/// ```
#[macro_export]
macro_rules! jemalloc {
    () => {
        $crate::jemalloc!("prof:true,prof_active:true,lg_prof_sample:19");
    };
    ($conf:literal) => {
        #[global_allocator]
        static LEAKFINDER_GLOBAL_ALLOCATOR: $crate::__private::Jemalloc =
            $crate::__private::Jemalloc;

        /// jemalloc's start-up options, which it reads by this symbol's name before `main`.
        #[allow(unsafe_code)]
        #[unsafe(export_name = "malloc_conf")]
        pub static LEAKFINDER_MALLOC_CONF: ::core::option::Option<&'static ::core::ffi::c_char> =
            // SAFETY: the literal is NUL-terminated and 'static; jemalloc reads it as a
            // `const char *`, which is what `Option<&c_char>` is laid out as.
            ::core::option::Option::Some(unsafe {
                    &*::core::concat!($conf, "\0")
                        .as_ptr()
                        .cast::<::core::ffi::c_char>()
                });

        /// Installs allocation and age tracking (jemalloc's sample hooks) before `main`.
        #[used]
        #[allow(unsafe_code)]
        #[unsafe(link_section = ".init_array")]
        static LEAKFINDER_TRACK_ALLOCATIONS: extern "C" fn() = {
            extern "C" fn track_allocations() {
                let _ = $crate::heap::tracking::install();
            }
            track_allocations
        };
    };
}

/// What [`jemalloc!`] expands to refers to, not for direct use.
#[doc(hidden)]
pub mod __private {
    pub use tikv_jemallocator::Jemalloc;
}
