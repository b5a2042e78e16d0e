//! The one CPU sampler of the process, shared by every consumer: the pull endpoint, and the
//! continuous push.
//!
//! Only one SIGPROF handler can exist in a process ([`super::sigprof`]), so there is exactly one
//! sampler. It runs on its own thread only while someone wants samples, in rolling windows of
//! [`WINDOW`]: each window is published to every subscriber, so two pull requests that overlap
//! share windows (a merged answer) instead of fighting over the signal. The handler's ring exists
//! only while sampling. Addresses stay raw here; consumers symbolise them with the shared
//! symboliser.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::ProfilingError;
use super::jemalloc::UnsampledThread;
use super::sigprof::Session;
use super::symbols::caller;
use leakfinder_pprof::{Profile, ProfileBuilder, StackEntry};

/// Samples per second of CPU time, as Go's default (100 Hz, off by one to avoid lockstep).
pub const FREQUENCY_HZ: u32 = 99;
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
    /// CPU time the sampler thread has spent sampling (draining and counting), in nanoseconds.
    thread_nanos: Arc<AtomicU64>,
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
        let thread_nanos = Arc::new(AtomicU64::new(0));
        let thread_demand = Arc::clone(&demand);
        let thread_windows = windows.clone();
        let spent = Arc::clone(&thread_nanos);
        std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || {
                sample_while_wanted(&thread_demand, &thread_windows, &spent, &shutdown);
            })?;
        Ok(Self {
            demand,
            windows,
            thread_nanos,
        })
    }

    /// CPU time sampling has cost since start: the SIGPROF handler on every thread it
    /// interrupted, and the sampler thread. What a CPU profile takes from the service.
    pub fn cpu_time(&self) -> Duration {
        super::sigprof::handler_cpu_time()
            + Duration::from_nanos(self.thread_nanos.load(Ordering::Relaxed))
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

/// How long the sampler keeps running after the last consumer left: long enough that a client
/// taking profiles back to back shares one session instead of restarting it, short enough that
/// nobody pays for sampling after the last profile (Go's profiler stops with its request).
const LINGER: Duration = Duration::from_secs(2);
/// How often the sampler thread drains the handler's ring within a window.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

fn sample_while_wanted(
    demand: &Demand,
    windows: &broadcast::Sender<Arc<CpuWindow>>,
    spent: &AtomicU64,
    shutdown: &CancellationToken,
) {
    // The session's ring and the unwinder are machinery, not a leak: keep them out of the heap
    // profile.
    let _unsampled = UnsampledThread::begin();
    let mut seq = 0;
    let mut session: Option<Session> = None;
    let mut last_wanted: Option<Instant> = None;
    let mut warned = false;
    let mut raw = Vec::new();
    while !shutdown.is_cancelled() {
        {
            let wanted = demand.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            if *wanted > 0 {
                last_wanted = Some(Instant::now());
            } else if last_wanted.is_none_or(|at| at.elapsed() >= LINGER) {
                // Nobody wants samples: stop the timer and free the ring.
                session = None;
                let _ = demand
                    .changed
                    .wait_timeout(wanted, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
        }
        if session.is_none() {
            match Session::start(FREQUENCY_HZ) {
                Ok(started) => session = Some(started),
                Err(error) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(%error, "cannot start CPU sampling");
                    }
                    std::thread::sleep(WINDOW);
                    continue;
                }
            }
        }
        let Some(current) = session.as_ref() else {
            continue;
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        let cpu_before = crate::thread_cpu_time();
        let mut counts: HashMap<(Vec<u64>, String), i64> = HashMap::new();
        while clock.elapsed() < WINDOW && !shutdown.is_cancelled() {
            std::thread::sleep(DRAIN_EVERY.min(WINDOW.saturating_sub(clock.elapsed())));
            current.drain(&mut raw);
            for sample in raw.drain(..) {
                *counts.entry((sample.addresses, sample.thread)).or_default() += 1;
            }
        }
        spent.fetch_add(
            crate::thread_cpu_time()
                .saturating_sub(cpu_before)
                .as_nanos() as u64,
            Ordering::Relaxed,
        );
        let window = CpuWindow {
            seq,
            started,
            duration: clock.elapsed(),
            samples: counts
                .into_iter()
                .map(|((addresses, thread), count)| CpuSample {
                    addresses,
                    count,
                    thread,
                })
                .collect(),
        };
        seq += 1;
        // No subscriber left is fine: it only means nobody wanted this window.
        let _ = windows.send(Arc::new(window));
    }
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
    frames: &super::symbols::FramesByAddress,
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
            &[("thread_name", &sample.thread)],
        );
    }
    builder.build()
}
