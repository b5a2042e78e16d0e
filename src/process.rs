//! Process-wide memory facts: resident set size from the kernel, and jemalloc's own counters.
//!
//! Readers here never fail loudly: a number that cannot be read is reported as 0 and logged at
//! debug level, because a status page must not break when, say, `/proc` is not mounted.

use std::ffi::CStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tikv_jemalloc_ctl::{epoch, stats};

/// A snapshot of the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Resident set size, from `/proc/self/status`.
    pub rss_bytes: u64,
    /// Bytes allocated by the application and not freed (jemalloc `stats.allocated`).
    pub heap_allocated_bytes: u64,
    /// Bytes in physically resident pages mapped by jemalloc (jemalloc `stats.resident`).
    pub heap_resident_bytes: u64,
    /// Bytes held by the allocation and age tracking tables (`heap::tracking`).
    pub heap_tracking_bytes: u64,
    /// Live sampled allocations those tables hold.
    pub heap_tracking_live: u64,
}

/// Reads the process's memory counters. jemalloc caches its statistics, so this advances its
/// epoch first to get fresh numbers.
pub fn memory_stats() -> MemoryStats {
    if let Err(error) = epoch::advance() {
        tracing::debug!(%error, "jemalloc epoch advance failed");
    }
    let tracking = leakfinder_profiling::heap::tracking::stats();
    MemoryStats {
        rss_bytes: rss_bytes().unwrap_or(0),
        heap_allocated_bytes: stats::allocated::read().map_or(0, |n| n as u64),
        heap_resident_bytes: stats::resident::read().map_or(0, |n| n as u64),
        heap_tracking_bytes: tracking.bytes as u64,
        heap_tracking_live: tracking.live as u64,
    }
}

/// Memory figures for an endpoint polled in a loop: read at most once per `max_age` and served
/// from a cache in between. Advancing jemalloc's epoch merges every arena's statistics and
/// reading `/proc/self/status` is a file read and a parse: done per request, they were most of
/// `/leak-test`'s cost.
pub struct MemoryGauge {
    max_age: Duration,
    latest: Mutex<Option<(Instant, MemoryStats)>>,
}

/// Memory figures and how old they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// The figures.
    pub stats: MemoryStats,
    /// Time since they were read.
    pub age: Duration,
}

impl MemoryGauge {
    /// A gauge whose figures are at most `max_age` old.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            latest: Mutex::new(None),
        }
    }

    /// The figures: the cached ones while they are younger than `max_age`, else fresh ones. A
    /// caller that finds them stale reads them again while holding the lock (tens of
    /// microseconds), so concurrent callers never read them twice.
    pub fn read(&self) -> MemoryReading {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (read_at, stats) = match *latest {
            Some((read_at, stats)) if now.duration_since(read_at) < self.max_age => {
                (read_at, stats)
            }
            _ => {
                let fresh = (Instant::now(), memory_stats());
                *latest = Some(fresh);
                fresh
            }
        };
        MemoryReading {
            stats,
            age: now.saturating_duration_since(read_at),
        }
    }
}

/// The resident set size of this process, in bytes (the `VmRSS` line of `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The `arena.<i>.purge` index that means every arena (jemalloc's `MALLCTL_ARENAS_ALL`).
const PURGE_ALL_ARENAS: &CStr = c"arena.4096.purge";

/// Flushes the calling thread's cache of freed objects (`thread.tcache.flush`).
const FLUSH_THREAD_CACHE: &CStr = c"thread.tcache.flush";

/// Asks jemalloc to return every freed page of every arena to the operating system now, after
/// handing back the objects the calling thread just freed.
///
/// An idle jemalloc returns memory only through its decay timers, which advance on allocation
/// activity or a background thread; without this a reset would free the leak and leave the RSS
/// where it was. A thread that just freed a big structure (debug info) also keeps thousands of
/// its small objects in its own cache, which would hold their pages: flushed first.
pub fn return_freed_memory() {
    // A thread without a cache (`tcache:false`) has nothing to flush: not worth a warning.
    if let Err(code) = void_mallctl(FLUSH_THREAD_CACHE) {
        tracing::debug!(code, "jemalloc thread cache flush failed");
    }
    if let Err(code) = void_mallctl(PURGE_ALL_ARENAS) {
        tracing::warn!(code, "jemalloc arena purge failed");
    }
}

/// Calls a mallctl that reads and writes no value.
#[allow(unsafe_code)]
fn void_mallctl(name: &CStr) -> Result<(), i32> {
    // SAFETY: a void mallctl reads and writes no value, so null old/new pointers with zero
    // lengths are exactly its calling convention, and the name is a NUL-terminated C string.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code == 0 { Ok(()) } else { Err(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tleakfinder\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(rss_bytes().is_some_and(|rss| rss > 0));
    }

    #[test]
    fn the_gauge_serves_cached_figures_until_they_are_too_old() {
        let gauge = MemoryGauge::new(Duration::from_millis(200));
        let first = gauge.read();
        assert_eq!(first.age, Duration::ZERO, "the first read is fresh");
        std::thread::sleep(Duration::from_millis(20));
        let cached = gauge.read();
        assert_eq!(
            cached.stats, first.stats,
            "within max_age: the same figures"
        );
        assert!(cached.age >= Duration::from_millis(20), "{cached:?}");
        std::thread::sleep(Duration::from_millis(200));
        let fresh = gauge.read();
        assert_eq!(fresh.age, Duration::ZERO, "past max_age: read again");
        assert!(fresh.stats.rss_bytes > 0);
    }
}
