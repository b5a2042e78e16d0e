//! Always-on task accounting by spawn site: every task of the runtime, alive, counted by the
//! `spawn` call that created it, including tasks spawned by libraries (hyper's connections,
//! exporters) that this crate never wraps.
//!
//! tokio's runtime hooks call [`on_spawn`] and [`on_terminate`] (see [`install`]); each finds the
//! site's slot in a fixed, lock-free open-addressing table keyed by the `&'static Location` tokio
//! records, and bumps its atomics: O(1) per spawn and exit, no lock, no allocation, no pause of the
//! runtime. Each site counts its tasks alive and its tasks ever spawned, so a profile can say how
//! much of what was spawned there is still alive. The first spawn at a site also records the raw
//! return addresses of its spawner, once, so that a profile can name the function that spawned
//! (Go's "created by").
//!
//! The table is process-wide because tokio's hooks are: one per runtime builder, called from any
//! worker.

use std::panic::Location;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};

/// Distinct spawn sites the table can hold (a program has far fewer `spawn` calls). Spawns at
/// sites beyond it are not counted, and a warning says so once.
const CAPACITY: usize = 4096;
/// Return addresses recorded for a site's spawner.
const SPAWNER_DEPTH: usize = 24;

struct Slot {
    site: AtomicPtr<Location<'static>>,
    alive: AtomicI64,
    spawned: AtomicU64,
    spawner: OnceLock<Box<[u64]>>,
}

impl Slot {
    const fn new() -> Self {
        Self {
            site: AtomicPtr::new(ptr::null_mut()),
            alive: AtomicI64::new(0),
            spawned: AtomicU64::new(0),
            spawner: OnceLock::new(),
        }
    }
}

/// The spawn-site table. Process-wide, as tokio's hooks are.
static SITES: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];
/// Whether a spawn has found the table full (warned once).
static FULL: AtomicBool = AtomicBool::new(false);

fn start(site: &'static Location<'static>) -> usize {
    // Locations are statics: their addresses are distinct and stable. Fibonacci hashing spreads
    // the 8-byte-aligned addresses over the table.
    let address = ptr::from_ref(site) as usize as u64;
    (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % CAPACITY
}

fn as_ptr(site: &'static Location<'static>) -> *mut Location<'static> {
    ptr::from_ref(site).cast_mut()
}

/// The slot of `site`, claiming a free one if `claim`.
fn slot(site: &'static Location<'static>, claim: bool) -> Option<(&'static Slot, bool)> {
    let wanted = as_ptr(site);
    let first = start(site);
    for probe in 0..CAPACITY {
        let slot = &SITES[(first + probe) % CAPACITY];
        let current = slot.site.load(Ordering::Acquire);
        if current == wanted {
            return Some((slot, false));
        }
        if current.is_null() {
            if !claim {
                return None;
            }
            match slot.site.compare_exchange(
                ptr::null_mut(),
                wanted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((slot, true)),
                Err(taken) if taken == wanted => return Some((slot, false)),
                Err(_) => continue,
            }
        }
    }
    None
}

/// A task was spawned at `site`. Called by tokio's spawn hook, synchronously in the spawner.
pub fn on_spawn(site: &'static Location<'static>) {
    match slot(site, true) {
        Some((slot, claimed)) => {
            slot.alive.fetch_add(1, Ordering::Relaxed);
            slot.spawned.fetch_add(1, Ordering::Relaxed);
            if claimed {
                // Once per site: the spawner's return addresses, to name it in profiles.
                let mut addresses = Vec::with_capacity(SPAWNER_DEPTH);
                backtrace::trace(|frame| {
                    addresses.push(frame.ip() as u64);
                    addresses.len() < SPAWNER_DEPTH
                });
                let _ = slot.spawner.set(addresses.into());
            }
        }
        None => {
            if !FULL.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = CAPACITY,
                    "more spawn sites than the task profile counts; tasks spawned at the rest are not counted"
                );
            }
        }
    }
}

/// A task spawned at `site` ended. tokio also calls its terminate hook for `spawn_blocking`
/// tasks, which had no spawn hook: their sites are not in the table and are ignored.
pub fn on_terminate(site: &'static Location<'static>) {
    if let Some((slot, _)) = slot(site, false) {
        slot.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Alive tasks of one spawn site.
#[derive(Debug, Clone)]
pub struct SiteCount {
    /// Where the tasks were spawned.
    pub site: &'static Location<'static>,
    /// How many are alive.
    pub alive: u64,
    /// How many were ever spawned there (alive or ended).
    pub spawned: u64,
    /// Raw return addresses of the first spawner seen here, innermost first.
    pub spawner: &'static [u64],
}

/// Every site with alive tasks, in table order.
pub fn snapshot() -> Vec<SiteCount> {
    SITES
        .iter()
        .filter_map(|slot| {
            let site = slot.site.load(Ordering::Acquire);
            let site: &'static Location<'static> = location_of(site)?;
            let alive = slot.alive.load(Ordering::Relaxed);
            (alive > 0).then(|| SiteCount {
                site,
                alive: alive as u64,
                // Read after `alive`: a spawn between the reads makes it larger, never smaller.
                spawned: slot.spawned.load(Ordering::Relaxed).max(alive as u64),
                spawner: slot.spawner.get().map_or(&[], |addresses| addresses),
            })
        })
        .collect()
}

#[allow(unsafe_code)]
fn location_of(site: *mut Location<'static>) -> Option<&'static Location<'static>> {
    // SAFETY: the table only ever stores pointers made from `&'static Location<'static>` (see
    // `slot`), which live for the whole process and are never written through.
    unsafe { site.as_ref() }
}

/// Adds the spawn and terminate hooks to a runtime builder. Without `--cfg tokio_unstable` tokio
/// has no hooks, and the task profile shows only the tasks wrapped in [`super::root`].
#[cfg(tokio_unstable)]
pub fn install(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_task_spawn(|meta| on_spawn(meta.spawned_at()))
        .on_task_terminate(|meta| on_terminate(meta.spawned_at()))
}

/// Without `--cfg tokio_unstable` there are no task hooks.
#[cfg(not(tokio_unstable))]
pub fn install(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    fn alive(site: &'static Location<'static>) -> u64 {
        snapshot()
            .iter()
            .find(|count| ptr::eq(count.site, site))
            .map_or(0, |count| count.alive)
    }

    fn spawned(site: &'static Location<'static>) -> u64 {
        snapshot()
            .iter()
            .find(|count| ptr::eq(count.site, site))
            .map_or(0, |count| count.spawned)
    }

    #[test]
    fn spawns_and_exits_are_counted_per_site_and_unknown_exits_are_ignored() {
        let (a, b, blocking) = (here(), here(), here());
        for _ in 0..3 {
            on_spawn(a);
        }
        on_spawn(b);
        on_terminate(a);
        on_terminate(blocking); // a spawn_blocking task: no spawn hook, never counted
        assert_eq!(alive(a), 2);
        assert_eq!(alive(b), 1);
        assert_eq!(alive(blocking), 0);
        assert_eq!(
            (spawned(a), spawned(b)),
            (3, 1),
            "ever spawned, beside alive"
        );
        let recorded = snapshot()
            .into_iter()
            .find(|count| ptr::eq(count.site, a))
            .unwrap();
        assert!(
            !recorded.spawner.is_empty(),
            "the spawner's addresses are kept"
        );
        on_terminate(a);
        on_terminate(a);
        on_terminate(b);
        assert_eq!(alive(a), 0);
        assert!(snapshot().iter().all(|count| !ptr::eq(count.site, a)));
    }

    #[test]
    fn many_threads_spawning_at_once_count_exactly() {
        let site = here();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        on_spawn(site);
                        on_terminate(site);
                        on_spawn(site);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(alive(site), 40_000);
        assert_eq!(spawned(site), 80_000);
    }
}
