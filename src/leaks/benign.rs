//! The benign scenario: a cache that warms up to a bound and then stays flat.
//!
//! It is not a leak, and the detector must stay quiet about it. For its first seconds it grows
//! exactly like one (a chunk per tick, from one line); then it is full, and every new entry
//! evicts the oldest, so the bytes it retains stay flat while it keeps allocating (churn). A
//! detector that only compares two profiles, or only looks for growth, would report it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::{FILL_BYTE, lock};
use leakfinder_profiling::tasks::root;

/// Bytes per cache entry.
pub const ENTRY_BYTES: usize = 64 * 1024;
/// Entries the cache holds once warm (8 MiB).
pub const CAPACITY: usize = 128;
/// Time between two inserts: warm in 6.4 s.
pub const TICK: Duration = Duration::from_millis(50);

/// A bounded cache that warms up, then churns.
#[derive(Default)]
pub struct WarmupCache {
    entries: Arc<Mutex<VecDeque<Vec<u8>>>>,
    running: AtomicBool,
    producer: AsyncMutex<Option<CancellationToken>>,
}

/// What the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// The filler is running.
    pub active: bool,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

impl WarmupCache {
    /// Starts filling the cache; false if it was already running.
    pub async fn start(&self, shutdown: &CancellationToken) -> bool {
        let mut producer = self.producer.lock().await;
        if producer.is_some() {
            return false;
        }
        let cancel = shutdown.child_token();
        tokio::spawn(root(run_benign_cache_warmup(
            Arc::clone(&self.entries),
            cancel.clone(),
        )));
        *producer = Some(cancel);
        self.running.store(true, Ordering::Relaxed);
        true
    }

    /// Stops filling and empties the cache.
    pub async fn reset(&self) -> CacheStatus {
        let before = self.status();
        if let Some(cancel) = self.producer.lock().await.take() {
            cancel.cancel();
        }
        self.running.store(false, Ordering::Relaxed);
        lock(&self.entries).clear();
        before
    }

    /// What the cache holds now.
    pub fn status(&self) -> CacheStatus {
        let entries = lock(&self.entries).len() as u64;
        CacheStatus {
            active: self.running.load(Ordering::Relaxed),
            entries,
            bytes: entries * ENTRY_BYTES as u64,
        }
    }
}

/// The cache's filler: one entry per tick; once full, each new entry evicts the oldest.
#[inline(never)]
async fn run_benign_cache_warmup(
    entries: Arc<Mutex<VecDeque<Vec<u8>>>>,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut cache = lock(&entries);
        if cache.len() >= CAPACITY {
            cache.pop_front();
        }
        cache.push_back(vec![FILL_BYTE; ENTRY_BYTES]); // bounded: the oldest entry was evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In real time (6.4 s to warm up): tokio's paused clock would need its `test-util` feature,
    /// which the service's own build does not have, and the workspace is built once.
    #[tokio::test]
    async fn the_cache_warms_up_to_its_bound_and_stays_there() {
        let cache = WarmupCache::default();
        let shutdown = CancellationToken::new();
        assert!(cache.start(&shutdown).await);
        assert!(!cache.start(&shutdown).await, "idempotent");
        tokio::time::sleep(TICK * (CAPACITY as u32 / 2)).await;
        let warming = cache.status();
        assert!(
            warming.entries > 0 && warming.entries < CAPACITY as u64,
            "{warming:?}"
        );
        let deadline = tokio::time::Instant::now() + TICK * CAPACITY as u32 * 4;
        while cache.status().entries < CAPACITY as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                cache.status()
            );
            tokio::time::sleep(TICK).await;
        }
        tokio::time::sleep(TICK * 10).await;
        assert_eq!(
            cache.status().entries,
            CAPACITY as u64,
            "it stays at its bound"
        );
        assert_eq!(cache.status().bytes, (CAPACITY * ENTRY_BYTES) as u64);
        let released = cache.reset().await;
        assert_eq!(released.entries, CAPACITY as u64);
        assert_eq!(
            cache.status(),
            CacheStatus {
                active: false,
                entries: 0,
                bytes: 0
            }
        );
    }
}
