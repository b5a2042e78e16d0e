//! Allocation and age tracking through jemalloc's sample hooks.
//!
//! jemalloc 5.3 calls `experimental.hooks.prof_sample` for every allocation its profiler samples
//! (one per 512 KiB allocated, on average) with the sample's backtrace, and
//! `experimental.hooks.prof_sample_free` when a sampled allocation is freed. Two bounded tables
//! are kept from them:
//! - per stack: how many sampled allocations were made there, and how many of them were freed
//!   since, which gives Go's `alloc_objects`/`alloc_space` beside `inuse_*`;
//! - per live sampled allocation: its stack, its size and when it was made, which gives the age
//!   of live memory (no profiler of Go, pprof or Pyroscope shows it).
//!
//! The heap profile is built from a [`snapshot`] of these tables, so jemalloc's `prof.dump` (text
//! written to a file, then parsed) is not needed while the hooks are installed.
//!
//! # Why the hooks cannot deadlock or recurse
//! The hooks run inside `malloc` and `free`, on any thread, with jemalloc's reentrancy guard
//! set: what they allocate is served from arena 0 and never sampled, so they never call
//! themselves. They hold no jemalloc lock when called, take one lock of their own (the tracker's),
//! and free nothing that was sampled (their tables are allocated inside hooks, unsampled). The
//! only other holder of that lock is [`snapshot`], which runs with sampling off on its thread
//! ([`super::super::jemalloc::UnsampledThread`]) and, while it holds the lock, only allocates
//! and frees its own (unsampled) copies: a hook can never fire on a thread that holds the lock.
//!
//! # Cost
//! One lock, a hash of the backtrace (one multiply per frame) and two table updates per sampled
//! allocation, and one lookup per sampled free: at one sample per 512 KiB allocated, that is a
//! few hundred nanoseconds per 512 KiB. The time spent in the hooks is measured
//! ([`Stats::cpu`]); the tables are bounded by [`MAX_STACKS`] and [`MAX_LIVE`] and their size is
//! reported ([`Stats::bytes`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{c_uint, c_void};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tikv_jemalloc_ctl::raw;

use crate::symbols::AddressHash;

/// Distinct allocation stacks tracked; sampled allocations at stacks beyond it are counted in
/// [`Stats::untracked`] only. A program has far fewer allocating stacks.
pub const MAX_STACKS: usize = 16_384;
/// Live sampled allocations tracked: at one sample per 512 KiB, 262 144 is a heap of 128 GiB of
/// small objects (more of large ones). Past it, new samples are counted in [`Stats::untracked`].
pub const MAX_LIVE: usize = 1 << 18;

/// The tables, process-wide as jemalloc's hooks are. `None` until the first sample.
static TRACKER: Mutex<Option<Tracker>> = Mutex::new(None);
/// Whether the hooks are installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Nanoseconds spent in the hooks.
static HOOK_NANOS: AtomicU64 = AtomicU64::new(0);
/// Hook calls: samples and sampled frees.
static HOOK_CALLS: AtomicU64 = AtomicU64::new(0);

type Hasher = BuildHasherDefault<AddressHash>;

/// Sampled allocations: how many, and their bytes (as jemalloc sized them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

struct StackRecord {
    addresses: Box<[u64]>,
    allocated: Counts,
    freed: Counts,
}

/// A live sampled allocation.
#[derive(Clone, Copy)]
struct Live {
    stack: u32,
    bytes: u64,
    /// When it was allocated, in nanoseconds of [`now_nanos`].
    born: u64,
    /// An earlier sampled allocation at the same address, reallocated in place: jemalloc reports
    /// the new sample before the old one's free.
    replaced: Option<(u32, u64)>,
}

#[derive(Default)]
struct Tracker {
    stacks: Vec<StackRecord>,
    /// Stacks by the hash of their addresses (a 64-bit hash: two stacks of one program that
    /// share it are not expected; the second would be counted as untracked).
    index: HashMap<u64, u32, Hasher>,
    live: HashMap<usize, Live, Hasher>,
    untracked: u64,
}

impl Tracker {
    fn stack(&mut self, addresses: &[u64]) -> Option<u32> {
        let hash = Hasher::default().hash_one(addresses);
        match self.index.entry(hash) {
            Entry::Occupied(entry) => {
                let index = *entry.get();
                (*self.stacks[index as usize].addresses == *addresses).then_some(index)
            }
            Entry::Vacant(entry) => {
                if self.stacks.len() >= MAX_STACKS {
                    return None;
                }
                let index = self.stacks.len() as u32;
                self.stacks.push(StackRecord {
                    addresses: addresses.into(),
                    allocated: Counts::default(),
                    freed: Counts::default(),
                });
                entry.insert(index);
                Some(index)
            }
        }
    }

    fn allocated(&mut self, address: usize, backtrace: &[u64], bytes: u64, born: u64) {
        let full = self.live.len() >= MAX_LIVE && !self.live.contains_key(&address);
        let Some(stack) = (!full).then(|| self.stack(backtrace)).flatten() else {
            self.untracked += 1;
            return;
        };
        self.stacks[stack as usize].allocated.add(bytes);
        let mut live = Live {
            stack,
            bytes,
            born,
            replaced: None,
        };
        match self.live.entry(address) {
            Entry::Occupied(mut entry) => {
                let old = *entry.get();
                live.replaced = Some((old.stack, old.bytes));
                entry.insert(live);
            }
            Entry::Vacant(entry) => {
                entry.insert(live);
            }
        }
    }

    fn freed(&mut self, address: usize) {
        let Entry::Occupied(mut entry) = self.live.entry(address) else {
            return; // sampled before the hooks, or not tracked
        };
        let (stack, bytes) = match entry.get_mut().replaced.take() {
            Some(replaced) => replaced,
            None => {
                let live = entry.remove();
                (live.stack, live.bytes)
            }
        };
        self.stacks[stack as usize].freed.add(bytes);
    }

    fn bytes(&self) -> usize {
        let addresses: usize = self.stacks.iter().map(|stack| stack.addresses.len()).sum();
        self.stacks.capacity() * size_of::<StackRecord>()
            + addresses * size_of::<u64>()
            + self.index.capacity() * (size_of::<(u64, u32)>() + 1)
            + self.live.capacity() * (size_of::<(usize, Live)>() + 1)
    }
}

fn lock() -> MutexGuard<'static, Option<Tracker>> {
    TRACKER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Monotonic nanoseconds (`CLOCK_MONOTONIC`, read through the vDSO: no system call, no lock,
/// nothing thread-local), as the hooks stamp allocations.
#[allow(unsafe_code)]
pub fn now_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec`, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// jemalloc's `prof_sample_hook_t`: `(ptr, size, backtrace, backtrace_length, usize)`.
type SampleHook = unsafe extern "C" fn(*const c_void, usize, *mut *mut c_void, c_uint, usize);
/// jemalloc's `prof_sample_free_hook_t`: `(ptr, usize)`.
type FreeHook = unsafe extern "C" fn(*const c_void, usize);

/// Called by jemalloc for every sampled allocation, inside `malloc`.
#[allow(unsafe_code)]
unsafe extern "C" fn on_sample(
    ptr: *const c_void,
    _size: usize,
    backtrace: *mut *mut c_void,
    length: c_uint,
    usize: usize,
) {
    let started = now_nanos();
    let addresses: &[u64] = if backtrace.is_null() {
        &[]
    } else {
        // SAFETY: jemalloc passes its backtrace of this sample, `length` return addresses alive
        // for the call; a pointer is a `u64` on the 64-bit targets this crate builds for.
        unsafe { std::slice::from_raw_parts(backtrace.cast::<u64>().cast_const(), length as usize) }
    };
    lock().get_or_insert_with(Tracker::default).allocated(
        ptr as usize,
        addresses,
        usize as u64,
        started,
    );
    account(started);
}

/// Called by jemalloc for the free of every sampled allocation, inside `free`.
#[allow(unsafe_code)]
unsafe extern "C" fn on_free(ptr: *const c_void, _usize: usize) {
    let started = now_nanos();
    if let Some(tracker) = lock().as_mut() {
        tracker.freed(ptr as usize);
    }
    account(started);
}

fn account(started: u64) {
    HOOK_NANOS.fetch_add(now_nanos().saturating_sub(started), Ordering::Relaxed);
    HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
}

/// Why the hooks could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("jemalloc's sample hooks are not available ({0}): is prof:true in malloc_conf?")]
pub struct InstallError(String);

/// Installs the hooks (once; later calls do nothing). Call it before the allocations you want
/// tracked: [`crate::jemalloc!`] does, before `main`. Fails when jemalloc's profiler is off
/// (`prof:false`), and then the heap profile is not available either.
#[allow(unsafe_code)]
pub fn install() -> Result<(), InstallError> {
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let free: FreeHook = on_free;
    let sample: SampleHook = on_sample;
    // The free hook first: a sampled allocation freed in between would otherwise stay in the
    // table as live.
    // SAFETY: both mallctls take a function pointer of exactly these types (jemalloc's
    // `prof_hook.h`), which stay valid for the life of the process.
    unsafe {
        raw::write(b"experimental.hooks.prof_sample_free\0", free)
            .map_err(|error| InstallError(error.to_string()))?;
        raw::write(b"experimental.hooks.prof_sample\0", sample)
            .map_err(|error| InstallError(error.to_string()))?;
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether the hooks are installed.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// One stack's sampled allocations, as [`snapshot`] copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackAllocations {
    /// jemalloc's backtrace, return addresses, innermost first.
    pub addresses: Vec<u64>,
    /// Sampled allocations made here since the hooks were installed, freed or not.
    pub allocated: Counts,
    /// Of them, those freed since.
    pub freed: Counts,
}

/// A live sampled allocation, as [`snapshot`] copies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveAllocation {
    /// Index into [`Snapshot::stacks`].
    pub stack: u32,
    /// Its size.
    pub bytes: u64,
    /// How long ago it was made, in nanoseconds.
    pub age_nanos: u64,
}

/// The tables at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every stack with sampled allocations, live or freed.
    pub stacks: Vec<StackAllocations>,
    /// Every live sampled allocation.
    pub live: Vec<LiveAllocation>,
    /// Sampled allocations not tracked (past [`MAX_STACKS`] or [`MAX_LIVE`]).
    pub untracked: u64,
}

/// Copies the tables. Sampling is off on this thread while it runs (see the module's docs).
pub fn snapshot() -> Snapshot {
    let _unsampled = super::super::jemalloc::UnsampledThread::begin();
    let now = now_nanos();
    let tracker = lock();
    let Some(tracker) = tracker.as_ref() else {
        return Snapshot::default();
    };
    Snapshot {
        stacks: tracker
            .stacks
            .iter()
            .map(|stack| StackAllocations {
                addresses: stack.addresses.to_vec(),
                allocated: stack.allocated,
                freed: stack.freed,
            })
            .collect(),
        live: tracker
            .live
            .values()
            .map(|live| LiveAllocation {
                stack: live.stack,
                bytes: live.bytes,
                age_nanos: now.saturating_sub(live.born),
            })
            .collect(),
        untracked: tracker.untracked,
    }
}

/// What tracking costs and holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Time spent in the hooks since they were installed (on whichever thread allocated).
    pub cpu: Duration,
    /// Hook calls: sampled allocations and their frees.
    pub calls: u64,
    /// Bytes the tables hold (their capacity), approximately.
    pub bytes: usize,
    /// Stacks tracked.
    pub stacks: usize,
    /// Live sampled allocations tracked.
    pub live: usize,
    /// Sampled allocations not tracked (the tables were full).
    pub untracked: u64,
}

/// Time spent in the hooks so far, and their calls: two atomics, cheap enough for a status page
/// polled in a loop (see [`stats`] for the tables, which takes their lock).
pub fn cost() -> (Duration, u64) {
    (
        Duration::from_nanos(HOOK_NANOS.load(Ordering::Relaxed)),
        HOOK_CALLS.load(Ordering::Relaxed),
    )
}

/// What tracking has cost so far, and what its tables hold.
pub fn stats() -> Stats {
    let _unsampled = super::super::jemalloc::UnsampledThread::begin();
    let tracker = lock();
    let (bytes, stacks, live, untracked) = tracker.as_ref().map_or((0, 0, 0, 0), |tracker| {
        (
            tracker.bytes(),
            tracker.stacks.len(),
            tracker.live.len(),
            tracker.untracked,
        )
    });
    Stats {
        cpu: Duration::from_nanos(HOOK_NANOS.load(Ordering::Relaxed)),
        calls: HOOK_CALLS.load(Ordering::Relaxed),
        bytes,
        stacks,
        live,
        untracked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_and_frees_are_counted_per_stack() {
        let mut tracker = Tracker::default();
        tracker.allocated(0x1000, &[1, 2, 3], 100, 5);
        tracker.allocated(0x2000, &[1, 2, 3], 50, 6);
        tracker.allocated(0x3000, &[9], 7, 7);
        tracker.freed(0x1000);
        tracker.freed(0x9999); // not tracked: ignored
        assert_eq!(tracker.stacks.len(), 2);
        let leak = &tracker.stacks[0];
        assert_eq!(
            leak.allocated,
            Counts {
                objects: 2,
                bytes: 150
            }
        );
        assert_eq!(
            leak.freed,
            Counts {
                objects: 1,
                bytes: 100
            }
        );
        assert_eq!(tracker.live.len(), 2);
        assert_eq!(tracker.live[&0x2000].born, 6);
    }

    #[test]
    fn an_in_place_reallocation_keeps_the_new_sample_alive() {
        // jemalloc reports a sampled in-place realloc as the new sample, then the old one's free.
        let mut tracker = Tracker::default();
        tracker.allocated(0x1000, &[1], 100, 1);
        tracker.allocated(0x1000, &[2], 200, 2);
        tracker.freed(0x1000);
        assert_eq!(tracker.live.len(), 1, "the new sample is alive");
        assert_eq!(tracker.live[&0x1000].stack, 1);
        assert_eq!(tracker.stacks[0].freed.objects, 1, "the old one was freed");
        tracker.freed(0x1000);
        assert!(tracker.live.is_empty());
        assert_eq!(tracker.stacks[1].freed.bytes, 200);
    }

    #[test]
    fn the_tables_are_bounded_and_what_does_not_fit_is_counted() {
        let mut tracker = Tracker::default();
        for stack in 0..MAX_STACKS as u64 + 5 {
            tracker.allocated(stack as usize * 16, &[stack], 1, 0);
        }
        assert_eq!(tracker.stacks.len(), MAX_STACKS);
        assert_eq!(tracker.untracked, 5);
        assert_eq!(tracker.live.len(), MAX_STACKS);
        assert!(tracker.bytes() > MAX_STACKS * 16);
    }
}
