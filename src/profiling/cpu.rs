//! The one CPU sampler of the process (pprof-rs with the framehop unwinder), shared by every
//! consumer: the pull endpoint, and the continuous push.
//!
//! Only one SIGPROF handler can exist in a process, so there is exactly one sampler. It runs on
//! its own thread only while someone wants samples, in rolling windows of [`WINDOW`]: each window
//! is published to every subscriber, so two pull requests that overlap share windows (a merged
//! answer) instead of fighting over the signal. Addresses stay raw here; consumers symbolise them
//! with the shared symboliser, never through pprof-rs's `backtrace` cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use pprof::ProfilerGuardBuilder;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::ProfilingError;
use super::jemalloc::UnsampledThread;
use super::pprof::{Frame, Profile, ProfileBuilder, StackEntry};
use super::symbols::caller;

/// Samples per second of CPU time, as Go's default (100 Hz, off by one to avoid lockstep).
pub const FREQUENCY_HZ: i32 = 99;
/// The length of one rolling window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One window of samples, addresses raw.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    /// Increases by one per window.
    pub seq: u64,
    /// When the window started.
    pub started: SystemTime,
    /// How long it covered.
    pub duration: Duration,
    /// The sampled stacks.
    pub samples: Vec<CpuSample>,
}

/// A sampled stack and how often it was seen.
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// Instruction addresses, leaf first: the interrupted instruction, then return addresses.
    pub addresses: Vec<u64>,
    /// Times this stack was sampled.
    pub count: i64,
    /// The sampled thread's name.
    pub thread: String,
}

struct Demand {
    wanted: Mutex<usize>,
    changed: Condvar,
}

/// The process's CPU sampler.
pub struct CpuSampler {
    demand: Arc<Demand>,
    windows: broadcast::Sender<Arc<CpuWindow>>,
}

/// Keeps the sampler running while alive.
pub struct DemandGuard {
    demand: Arc<Demand>,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        *self
            .demand
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) -= 1;
    }
}

impl CpuSampler {
    /// Starts the sampler thread; it samples only while some [`DemandGuard`] is alive, and ends
    /// when `shutdown` is cancelled.
    pub fn start(shutdown: CancellationToken) -> std::io::Result<Self> {
        let demand = Arc::new(Demand {
            wanted: Mutex::new(0),
            changed: Condvar::new(),
        });
        let (windows, _) = broadcast::channel(64);
        let thread_demand = Arc::clone(&demand);
        let thread_windows = windows.clone();
        std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || sample_while_wanted(&thread_demand, &thread_windows, &shutdown))?;
        Ok(Self { demand, windows })
    }

    /// Keeps the sampler running until the guard is dropped.
    pub fn demand(&self) -> DemandGuard {
        *self
            .demand
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.demand.changed.notify_all();
        DemandGuard {
            demand: Arc::clone(&self.demand),
        }
    }

    /// Every window published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CpuWindow>> {
        self.windows.subscribe()
    }

    /// The windows covering the next `duration`, shared with anyone else who asks meanwhile.
    pub async fn collect(&self, duration: Duration) -> Result<Vec<Arc<CpuWindow>>, ProfilingError> {
        let wanted = duration.as_secs_f64() / WINDOW.as_secs_f64();
        let wanted = (wanted.ceil() as usize).max(1);
        let mut windows = self.subscribe();
        let _demand = self.demand();
        let mut collected = Vec::with_capacity(wanted);
        let deadline = duration + WINDOW * 5;
        tokio::time::timeout(deadline, async {
            while collected.len() < wanted {
                match windows.recv().await {
                    Ok(window) => collected.push(window),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ProfilingError::Unavailable(
                            "the CPU sampler stopped".into(),
                        ));
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| ProfilingError::Timeout("CPU profile"))??;
        Ok(collected)
    }
}

/// How long the sampler keeps running after the last consumer left: starting pprof-rs is costly
/// (see [`start_profiler`]), so back-to-back pull requests share one running sampler.
const LINGER: Duration = Duration::from_secs(60);
/// How long one pprof-rs run lasts at most before it is restarted, which bounds the overflow file
/// pprof-rs keeps for stacks evicted from its table.
const MAX_RUN: Duration = Duration::from_secs(600);

/// A sampled stack's identity across cumulative snapshots.
type StackKey = (Vec<u64>, u64);

struct Run {
    guard: pprof::ProfilerGuard<'static>,
    started: Instant,
    /// Cumulative counts at the end of the previous window.
    previous: HashMap<StackKey, isize>,
}

fn sample_while_wanted(
    demand: &Demand,
    windows: &broadcast::Sender<Arc<CpuWindow>>,
    shutdown: &CancellationToken,
) {
    // pprof-rs's own tables (~20 MiB) are machinery, not a leak: keep them out of the heap profile.
    let _unsampled = UnsampledThread::begin();
    let mut seq = 0;
    let mut run: Option<Run> = None;
    let mut last_wanted: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        {
            let wanted = demand.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            if *wanted > 0 {
                last_wanted = Some(Instant::now());
            } else if last_wanted.is_none_or(|at| at.elapsed() >= LINGER) {
                run = None;
                let _ = demand
                    .changed
                    .wait_timeout(wanted, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
        }
        if run
            .as_ref()
            .is_none_or(|run| run.started.elapsed() >= MAX_RUN)
        {
            drop(run.take()); // only one profiler may exist: stop the old one first
            run = start_profiler();
            if run.is_none() {
                std::thread::sleep(WINDOW);
                continue;
            }
        }
        let Some(current) = run.as_mut() else {
            continue;
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        while clock.elapsed() < WINDOW && !shutdown.is_cancelled() {
            std::thread::sleep(
                Duration::from_millis(50).min(WINDOW.saturating_sub(clock.elapsed())),
            );
        }
        match current.guard.report().build_unresolved() {
            Ok(report) => {
                let samples = window_samples(&report, &mut current.previous);
                let window = CpuWindow {
                    seq,
                    started,
                    duration: clock.elapsed(),
                    samples,
                };
                seq += 1;
                // No subscriber left is fine: it only means nobody wanted this window.
                let _ = windows.send(Arc::new(window));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the CPU profiler's samples");
                run = None;
            }
        }
    }
}

/// Starts pprof-rs. Its `build` resolves one backtrace through the `backtrace` crate, which
/// loads this binary's whole DWARF into a global cache (~70 MiB) and would keep it for good; the
/// cache is cleared again at once, and the freed pages returned.
fn start_profiler() -> Option<Run> {
    let guard = ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .build();
    backtrace::clear_symbol_cache();
    crate::process::return_freed_memory();
    match guard {
        Ok(guard) => Some(Run {
            guard,
            started: Instant::now(),
            previous: HashMap::new(),
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot start the CPU profiler");
            None
        }
    }
}

/// The samples taken since the previous snapshot, from pprof-rs's cumulative counts.
fn window_samples(
    cumulative: &pprof::UnresolvedReport,
    previous: &mut HashMap<StackKey, isize>,
) -> Vec<CpuSample> {
    let mut samples = Vec::new();
    let mut now = HashMap::with_capacity(cumulative.data.len());
    for (frames, &count) in &cumulative.data {
        let addresses: Vec<u64> = frames.frames.iter().map(|frame| frame.ip as u64).collect();
        let key = (addresses, frames.thread_id);
        let new = count - previous.get(&key).copied().unwrap_or(0);
        if new > 0 {
            let name =
                &frames.thread_name[..frames.thread_name_length.min(frames.thread_name.len())];
            samples.push(CpuSample {
                addresses: key.0.clone(),
                count: new as i64,
                thread: String::from_utf8_lossy(name).into_owned(),
            });
        }
        now.insert(key, count);
    }
    *previous = now;
    samples
}

/// Whether [`warm_up`] saw the first CPU samples, so that pprof-rs's unwinder is set up and later
/// runs can take signals on any thread. Process-wide because that unwinder is: it lives in a
/// pprof-rs static, set up once per process.
static WARMED_UP: AtomicBool = AtomicBool::new(false);

/// Whether CPU profiling may run in this process (see [`warm_up`]).
pub fn warmed_up() -> bool {
    WARMED_UP.load(Ordering::Acquire)
}

/// Starts and stops the sampler once, on the calling thread, before anything else runs.
///
/// pprof-rs sets its framehop unwinder up lazily, inside the SIGPROF handler, where it
/// allocates. That is only safe if the interrupted thread holds no allocator lock, so the first
/// signals are taken here, at start-up, while the only thread spins on arithmetic and allocates
/// nothing (an allocation interrupted by that first signal would deadlock). If no signal arrives,
/// CPU profiling stays off for the life of the process. Returns how long it took.
pub fn warm_up() -> Result<Duration, ProfilingError> {
    let _unsampled = UnsampledThread::begin();
    let clock = Instant::now();
    let guard = ProfilerGuardBuilder::default().frequency(1000).build();
    // From here until the spin ends, nothing may allocate. SIGPROF follows CPU time, not wall
    // time, so spin for CPU time: on a loaded machine a wall-clock spin may get none.
    let spun_from = thread_cpu_time();
    let mut spin = 0u64;
    if guard.is_ok() {
        while thread_cpu_time().saturating_sub(spun_from) < WARM_UP_CPU
            && clock.elapsed() < WARM_UP_LIMIT
        {
            for i in 0..10_000u64 {
                spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(i));
            }
        }
    }
    let sampled = guard.as_ref().is_ok_and(|guard| {
        guard
            .report()
            .build_unresolved()
            .is_ok_and(|report| !report.data.is_empty())
    });
    let started = guard.map(drop);
    backtrace::clear_symbol_cache();
    crate::process::return_freed_memory();
    match started {
        Err(error) => Err(ProfilingError::Unavailable(error.to_string())),
        Ok(()) if !sampled => Err(ProfilingError::Unavailable(
            "no CPU sample arrived during warm-up".into(),
        )),
        Ok(()) => {
            WARMED_UP.store(true, Ordering::Release);
            Ok(clock.elapsed())
        }
    }
}

/// CPU time the warm-up spins for: at a 4 ms kernel tick, a dozen signals land in it.
const WARM_UP_CPU: Duration = Duration::from_millis(50);
/// Wall time the warm-up may take at most, however starved of CPU.
const WARM_UP_LIMIT: Duration = Duration::from_secs(5);

/// CPU time this thread has used. Reads a clock; allocates nothing.
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a valid, exclusive pointer.
    let code = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if code != 0 {
        return Duration::MAX; // no clock: end the spin at once
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The leaf is the interrupted instruction itself; the rest are return addresses.
fn lookup_address(depth: usize, address: u64) -> u64 {
    if depth == 0 { address } else { caller(address) }
}

/// The addresses to symbolise for some windows.
pub fn lookup_addresses(windows: &[Arc<CpuWindow>]) -> impl Iterator<Item = u64> + '_ {
    windows
        .iter()
        .flat_map(|window| &window.samples)
        .flat_map(|sample| {
            sample
                .addresses
                .iter()
                .enumerate()
                .map(|(depth, &address)| lookup_address(depth, address))
        })
}

/// Builds the pprof CPU profile of some windows, given the frames of each of their addresses.
pub fn build_profile(
    windows: &[Arc<CpuWindow>],
    frames: &std::collections::HashMap<u64, Arc<[Frame]>>,
) -> Profile {
    let period = 1_000_000_000 / i64::from(FREQUENCY_HZ);
    let mut builder = ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        period,
    );
    if let (Some(first), Some(_)) = (windows.first(), windows.last()) {
        let start = first
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i64);
        let total: Duration = windows.iter().map(|window| window.duration).sum();
        builder.timing(start, total.as_nanos() as i64);
    }
    for sample in windows.iter().flat_map(|window| &window.samples) {
        let stack: Vec<StackEntry> = sample
            .addresses
            .iter()
            .enumerate()
            .filter_map(|(depth, &address)| {
                let address = lookup_address(depth, address);
                Some(StackEntry {
                    address,
                    frames: Arc::clone(frames.get(&address)?),
                    skip: 0,
                })
            })
            .collect();
        builder.add_sample(
            &stack,
            vec![sample.count, sample.count * period],
            &[("thread", &sample.thread)],
        );
    }
    builder.build()
}
