//! The three deliberate leaks, their safe counterpart, and the [`Leaks`] controller that starts,
//! stops and resets them.
//!
//! Each leak lives in its own file beside the global that holds its memory. The controller owns
//! everything else (counters, producer tasks, job 2's blocked tasks), so that the only globals are
//! the three the walkthrough names. Every leak is bounded: it stops growing at the configured cap,
//! or at [`MAX_ITEMS`] chunks, whichever comes first, and reports itself as capped.

pub mod benign;
pub mod channel;
pub mod map;
pub mod safe;
pub mod slice;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LeakSettings;
use leakfinder_profiling::tasks::root;

/// The byte every leaked chunk is filled with. Not zero, so that every page is really touched and
/// the process RSS grows with the leak (a zeroed allocation could stay unbacked).
pub const FILL_BYTE: u8 = 0xA5;

/// The most chunks one leak may hold, whatever their size: with tiny chunks the bookkeeping per
/// chunk (and, for job 2, per blocked task) would otherwise dominate and grow without bound.
pub const MAX_ITEMS: u64 = 100_000;

/// How long a reset waits for job 2's released tasks to end.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which of the three leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    /// Leak 1: chunks appended to the global `LEAKY_STORE_1`.
    Slice,
    /// Leak 2: tasks blocked forever sending on the global `LEAKY_CHANNEL_2`.
    Channel,
    /// Leak 3: chunks inserted under new keys into the global `LEAKY_MAP_3`.
    Mutex,
}

impl LeakKind {
    /// Every kind, in the walkthrough's order.
    pub const ALL: [LeakKind; 3] = [LeakKind::Slice, LeakKind::Channel, LeakKind::Mutex];

    /// The kind's name in routes, JSON and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::Slice => "slice",
            LeakKind::Channel => "channel",
            LeakKind::Mutex => "mutex",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for LeakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Locks a leak global. A poisoned lock still guards valid data (a chunk is pushed or not), so
/// the leak lab carries on rather than turning one panic into a dead endpoint.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one leak holds right now. Updated by the producers, read by status and metrics.
#[derive(Debug, Default)]
pub struct LeakCounters {
    bytes: AtomicU64,
    items: AtomicU64,
    capped: AtomicBool,
}

impl LeakCounters {
    /// Bytes retained.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Chunks retained.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Whether the leak reached its cap and stopped growing.
    pub fn capped(&self) -> bool {
        self.capped.load(Ordering::Relaxed)
    }

    fn add(&self, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, len: u64) {
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        self.items.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a chunk until the returned reservation is dropped.
    fn reserve(self: &Arc<Self>, len: usize) -> Reservation {
        self.add(len);
        Reservation {
            counters: Arc::clone(self),
            len: len as u64,
        }
    }

    fn has_room_for(&self, len: usize, max_bytes: u64) -> bool {
        self.bytes() + len as u64 <= max_bytes && self.items() < MAX_ITEMS
    }

    fn clear(&self) {
        self.bytes.store(0, Ordering::Relaxed);
        self.items.store(0, Ordering::Relaxed);
        self.capped.store(false, Ordering::Relaxed);
    }
}

/// One chunk counted in a leak's [`LeakCounters`] for as long as this value lives. Job 2 moves it
/// into the task that holds the chunk, so its counters stay exact however the task ends.
pub struct Reservation {
    counters: Arc<LeakCounters>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.counters.sub(self.len);
    }
}

/// What a leak producer needs: how to grow, where to count, and when to stop.
pub struct LeakJob {
    settings: LeakSettings,
    counters: Arc<LeakCounters>,
    cancel: CancellationToken,
}

impl LeakJob {
    fn chunk_bytes(&self) -> usize {
        self.settings.chunk_bytes
    }

    fn counters(&self) -> &Arc<LeakCounters> {
        &self.counters
    }

    fn ticks(&self) -> Interval {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    }

    /// Waits for the next tick. False once the job is stopped, or once another chunk would pass
    /// the cap, in which case the leak is marked capped.
    async fn next_tick(&self, ticks: &mut Interval) -> bool {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => false,
            _ = ticks.tick() => {
                let room = self.counters.has_room_for(self.chunk_bytes(), self.settings.max_bytes);
                if !room {
                    self.counters.capped.store(true, Ordering::Relaxed);
                }
                room
            }
        }
    }
}

/// The answer to a start request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// This call started the producer.
    Started,
    /// A producer was already started (it may have reached its cap since).
    AlreadyRunning,
}

/// The answer to a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// This call stopped the producer; the memory it leaked stays retained.
    Stopped,
    /// No producer was running.
    NotRunning,
}

/// What a reset released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Bytes the leak held before the reset.
    pub bytes: u64,
    /// Chunks the leak held before the reset.
    pub items: u64,
    /// Whether every chunk was accounted for as freed (false only if job 2's tasks did not end in
    /// time, which would be a bug).
    pub complete: bool,
}

/// A snapshot of one leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakStatus {
    /// Which leak.
    pub kind: LeakKind,
    /// A producer is started and not stopped (it may have stopped growing at its cap).
    pub active: bool,
    /// The leak reached its cap and stopped growing.
    pub capped: bool,
    /// Bytes retained.
    pub bytes: u64,
    /// Chunks retained.
    pub items: u64,
    /// Tasks blocked forever (job 2 only; 0 for the others).
    pub blocked_tasks: u64,
}

struct Producer {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

#[derive(Default)]
struct Slot {
    counters: Arc<LeakCounters>,
    active: AtomicBool,
    producer: AsyncMutex<Option<Producer>>,
}

/// Starts, stops, resets and reports the three leaks. One per application, shared through
/// `AppState`.
pub struct Leaks {
    settings: LeakSettings,
    slots: [Slot; 3],
    blocked: TaskTracker,
    shutdown: CancellationToken,
}

impl Leaks {
    /// A controller whose producers all stop when `shutdown` is cancelled.
    pub fn new(settings: LeakSettings, shutdown: CancellationToken) -> Self {
        Self {
            settings,
            slots: Default::default(),
            blocked: TaskTracker::new(),
            shutdown,
        }
    }

    /// The settings every leak grows by.
    pub fn settings(&self) -> LeakSettings {
        self.settings
    }

    fn slot(&self, kind: LeakKind) -> &Slot {
        &self.slots[kind.index()]
    }

    /// Starts a leak's producer unless one is already started. Concurrent calls start exactly one.
    pub async fn start(&self, kind: LeakKind) -> StartOutcome {
        let slot = self.slot(kind);
        let mut producer = slot.producer.lock().await;
        if producer.is_some() {
            return StartOutcome::AlreadyRunning;
        }
        let cancel = self.shutdown.child_token();
        let job = LeakJob {
            settings: self.settings,
            counters: Arc::clone(&slot.counters),
            cancel: cancel.clone(),
        };
        let handle = match kind {
            LeakKind::Slice => tokio::spawn(root(slice::run_leaker_job1_simple_slice(job))),
            LeakKind::Channel => tokio::spawn(root(channel::run_leaker_job2_channel_task_block(
                job,
                self.blocked.clone(),
            ))),
            LeakKind::Mutex => tokio::spawn(root(map::run_leaker_job3_mutex_map(job))),
        };
        *producer = Some(Producer { cancel, handle });
        slot.active.store(true, Ordering::Relaxed);
        tracing::info!(leak = %kind, "leak started");
        StartOutcome::Started
    }

    /// Stops a leak's producer. What it leaked stays retained: stopping the producer does not
    /// free what a global holds.
    pub async fn stop(&self, kind: LeakKind) -> StopOutcome {
        let slot = self.slot(kind);
        let mut producer = slot.producer.lock().await;
        let outcome = Self::stop_locked(slot, &mut producer).await;
        if outcome == StopOutcome::Stopped {
            tracing::info!(leak = %kind, bytes = slot.counters.bytes(), "leak stopped; its memory stays retained");
        }
        outcome
    }

    async fn stop_locked(slot: &Slot, producer: &mut Option<Producer>) -> StopOutcome {
        let Some(Producer { cancel, handle }) = producer.take() else {
            return StopOutcome::NotRunning;
        };
        cancel.cancel();
        // The producer ends at its next select; a panic in it has already been logged by tokio.
        let _ = handle.await;
        slot.active.store(false, Ordering::Relaxed);
        StopOutcome::Stopped
    }

    /// Stops a leak and frees everything it holds, then asks jemalloc to return the freed pages to
    /// the operating system, so the process RSS visibly drops.
    pub async fn reset(&self, kind: LeakKind) -> Released {
        let slot = self.slot(kind);
        let mut producer = slot.producer.lock().await;
        Self::stop_locked(slot, &mut producer).await;
        let (bytes, items) = (slot.counters.bytes(), slot.counters.items());
        let complete = match kind {
            LeakKind::Slice => {
                slice::release();
                slot.counters.clear();
                true
            }
            LeakKind::Mutex => {
                map::release();
                slot.counters.clear();
                true
            }
            LeakKind::Channel => {
                channel::release();
                // Every blocked send now fails; each task drops its chunk and its reservation.
                self.blocked.close();
                let ended = tokio::time::timeout(RELEASE_TIMEOUT, self.blocked.wait())
                    .await
                    .is_ok();
                self.blocked.reopen();
                slot.counters.capped.store(false, Ordering::Relaxed);
                ended
            }
        };
        drop(producer);
        crate::process::return_freed_memory();
        tracing::info!(leak = %kind, bytes, items, "leak reset; memory released");
        Released {
            bytes,
            items,
            complete,
        }
    }

    /// A snapshot of one leak.
    pub fn status(&self, kind: LeakKind) -> LeakStatus {
        let slot = self.slot(kind);
        LeakStatus {
            kind,
            active: slot.active.load(Ordering::Relaxed),
            capped: slot.counters.capped(),
            bytes: slot.counters.bytes(),
            items: slot.counters.items(),
            blocked_tasks: match kind {
                LeakKind::Channel => self.blocked.len() as u64,
                LeakKind::Slice | LeakKind::Mutex => 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_while_they_live() {
        let counters = Arc::new(LeakCounters::default());
        let first = counters.reserve(10);
        let second = counters.reserve(5);
        assert_eq!((counters.bytes(), counters.items()), (15, 2));
        drop(first);
        assert_eq!((counters.bytes(), counters.items()), (5, 1));
        drop(second);
        assert_eq!((counters.bytes(), counters.items()), (0, 0));
    }

    #[test]
    fn room_ends_at_the_byte_cap_and_at_the_item_cap() {
        let counters = LeakCounters::default();
        assert!(counters.has_room_for(100, 100));
        counters.add(60);
        assert!(!counters.has_room_for(60, 100));
        assert!(counters.has_room_for(40, 100));
        counters.items.store(MAX_ITEMS, Ordering::Relaxed);
        assert!(!counters.has_room_for(1, u64::MAX));
    }

    #[test]
    fn kinds_have_their_route_names() {
        let names: Vec<_> = LeakKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(names, ["slice", "channel", "mutex"]);
    }
}
