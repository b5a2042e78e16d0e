//! Leak 3, the mutex-guarded map: an endless task inserts chunks under new keys into a global map.
//!
//! The map is guarded by a mutex, so it is perfectly thread-safe and still leaks: every key is new,
//! no entry is ever removed, and the global keeps the map alive. The heap profile's `top` shows
//! [`run_leaker_job3_mutex_map`], and `list` points at the `insert` line below.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::{FILL_BYTE, LeakJob, lock};

/// The retained chunks of leak 3, by a key that only ever grows. Global on purpose: it is the
/// cache-without-eviction that the walkthrough teaches to find in a heap profile.
pub static LEAKY_MAP_3: LazyLock<Mutex<HashMap<u64, Vec<u8>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Leak 3's producer: every tick it inserts one chunk under a new key into [`LEAKY_MAP_3`].
#[inline(never)]
pub async fn run_leaker_job3_mutex_map(job: LeakJob) {
    let mut ticks = job.ticks();
    while job.next_tick(&mut ticks).await {
        let (len, key) = (job.chunk_bytes(), job.counters().items());
        lock(&LEAKY_MAP_3).insert(key, vec![FILL_BYTE; len]); // the leak: no key is ever removed
        job.counters().add(len);
    }
}

/// Frees everything leak 3 holds. Returns the number of entries released.
pub(crate) fn release() -> usize {
    let map = std::mem::take(&mut *lock(&LEAKY_MAP_3));
    map.len()
}
