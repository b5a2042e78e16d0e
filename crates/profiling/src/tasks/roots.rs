//! Task roots: the futures of this service's own tasks, kept reachable so that a profile can ask
//! each parked task where it waits, without stopping the runtime.
//!
//! [`root`] wraps a future about to be spawned. The future lives in a slot shared with a
//! process-wide registry. To trace a task, [`trace_all`] takes its slot's lock *without waiting*
//! (a task being polled right now is skipped and shown as running), and polls the future once in
//! tokio's tracing mode ([`tokio::runtime::dump::trace_with`]) with the waker of the task's own
//! last poll: every tokio leaf future then returns `Pending` at once, untouched, and reports where
//! it was reached from. Nothing is stolen from or paused in the scheduler: the tracer runs on
//! its own thread and touches one idle task at a time.
//!
//! A real poll that finds the tracer holding its slot yields (wakes itself and returns
//! `Pending`) instead of blocking a worker. If a non-tokio leaf lets the future finish during a
//! trace, the output is kept and handed to the next real poll, which the task's waker schedules;
//! a panic is kept and resumed there in the same way.
//!
//! Each root also keeps its times, for the profile's `age` and `parked` and Go's `[chan send, 5
//! minutes]`: when [`root`] was called (its spawn), and when its last real poll returned `Pending`
//! (a task being polled is not parked). Both are read from the coarse monotonic clock, a few
//! nanoseconds per spawn and per poll; and the id of the task that called [`root`], if any, for
//! Go's `created by ... in goroutine N`.
//!
//! Code between two awaits runs during a trace only when a non-tokio leaf has become ready: it
//! then runs on the tracer's thread, outside the task's context, where `tokio::task::id()` has no
//! task to name and task-locals set *around* the root are not in scope. Put [`root`] outermost
//! (`spawn(root(LOCAL.scope(value, future)))`), and use `tokio::task::try_id()`.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::walk;

/// Registry shards: spawns on different workers rarely meet on one lock.
const SHARDS: usize = 16;

/// What one trace saw of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traced {
    /// Parked: one stack of raw return addresses per pending tokio leaf (several under `join!`
    /// or `select!`), innermost first, from the walker up to the traced poll.
    Parked(Vec<Vec<u64>>),
    /// Being polled right now, or handing over an output: not traced this time.
    Running,
    /// Spawned but not yet polled.
    Runnable,
    /// Frame-pointer walks do not work in this binary.
    Untraceable,
}

/// One task root: its id, its spawner's, and its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// tokio's task id, once the task has been polled.
    pub id: Option<u64>,
    /// The id of the task that spawned it (that called [`root`]), when one did.
    pub parent: Option<u64>,
    /// Time since it was spawned (since [`root`] was called).
    pub age: Duration,
    /// Time since its last real poll returned `Pending`; zero when it is not parked (being
    /// polled, or not polled yet).
    pub parked: Duration,
}

/// A traced task: who it is, where [`root`] was called, and what it is doing.
#[derive(Debug, Clone)]
pub struct TaskTrace {
    /// Its id and times.
    pub task: Task,
    /// Where the task was spawned (the [`root`] call, on the spawn's line).
    pub spawned_at: &'static Location<'static>,
    /// What the trace saw.
    pub traced: Traced,
}

/// A slot the tracer can poll.
trait Traceable: Send + Sync {
    /// Traces the task, and says since when (clock nanoseconds) it has been parked, if it is.
    fn trace(&self) -> (Traced, Option<u64>);
    fn id(&self) -> Option<u64>;
    fn parent(&self) -> Option<u64>;
    fn spawned(&self) -> u64;
    fn spawned_at(&self) -> &'static Location<'static>;
}

/// The coarse monotonic clock, in nanoseconds: its resolution (a few milliseconds) is ample for
/// ages shown in seconds, and a read costs a few nanoseconds (no system call), so it can be taken
/// on every spawn and every poll.
#[allow(unsafe_code)]
fn now() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec`, which `now` is.
    if unsafe { libc::clock_gettime(CLOCK, &mut now) } != 0 {
        return 0;
    }
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// tokio's task id as a number (tokio shows it only through `Display`), without allocating.
fn id_number(id: tokio::task::Id) -> Option<u64> {
    struct Digits {
        value: u64,
        valid: bool,
    }
    impl std::fmt::Write for Digits {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            for digit in text.bytes() {
                let digit = digit.wrapping_sub(b'0');
                let next = self
                    .value
                    .checked_mul(10)
                    .and_then(|value| value.checked_add(u64::from(digit)));
                match next {
                    Some(next) if digit <= 9 => self.value = next,
                    _ => self.valid = false,
                }
            }
            Ok(())
        }
    }
    let mut digits = Digits {
        value: 0,
        valid: true,
    };
    std::fmt::write(&mut digits, format_args!("{id}")).ok()?;
    (digits.valid && digits.value != NO_ID).then_some(digits.value)
}

type Registered = Weak<dyn Traceable>;

/// One shard of the registry: a slab of weak references with a free list, O(1) both ways.
struct Shard {
    entries: Vec<Option<Registered>>,
    free: Vec<usize>,
}

impl Shard {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

/// The live task roots of the process.
struct Registry {
    shards: [Mutex<Shard>; SHARDS],
    next: AtomicU64,
}

/// Process-wide, as the tasks are: a task can be spawned on any runtime.
static REGISTRY: Registry = Registry {
    shards: [const { Mutex::new(Shard::new()) }; SHARDS],
    next: AtomicU64::new(0),
};

/// Where a root is registered: its shard and its index there.
#[derive(Debug, Clone, Copy)]
struct Key {
    shard: usize,
    index: usize,
}

impl Registry {
    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, slot: Registered) -> Key {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) as usize % SHARDS;
        let mut entries = self.shard(shard);
        let index = match entries.free.pop() {
            Some(index) => {
                entries.entries[index] = Some(slot);
                index
            }
            None => {
                entries.entries.push(Some(slot));
                entries.entries.len() - 1
            }
        };
        Key { shard, index }
    }

    fn remove(&self, key: Key) {
        let mut entries = self.shard(key.shard);
        entries.entries[key.index] = None;
        entries.free.push(key.index);
    }

    fn live(&self) -> Vec<Arc<dyn Traceable>> {
        let mut live = Vec::new();
        for shard in 0..SHARDS {
            let entries = self.shard(shard);
            live.reserve(entries.entries.len() - entries.free.len());
            live.extend(entries.entries.iter().flatten().filter_map(Weak::upgrade));
        }
        live
    }
}

enum State<F: Future> {
    /// Not finished: the future, the waker of its last real poll (none before the first), and
    /// when that poll returned `Pending` (clock nanoseconds; 0 before the first).
    Pending {
        future: Pin<Box<F>>,
        waker: Option<Waker>,
        parked_since: u64,
    },
    /// Finished during a trace: the output waits for the next real poll.
    Ready(F::Output),
    /// Panicked during a trace: the payload waits for the next real poll.
    Panicked(Box<dyn Any + Send>),
    /// Finished and handed over, or dropped.
    Gone,
}

struct Slot<F: Future> {
    id: AtomicU64,
    /// The task that called [`root`], if a task did.
    parent: Option<tokio::task::Id>,
    /// When [`root`] was called (clock nanoseconds).
    spawned: u64,
    spawned_at: &'static Location<'static>,
    state: Mutex<State<F>>,
}

const NO_ID: u64 = 0;

impl<F> Traceable for Slot<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn trace(&self) -> (Traced, Option<u64>) {
        // Busy (being polled), or poisoned by a panic in a real poll (the task is ending): skip.
        let Ok(mut state) = self.state.try_lock() else {
            return (Traced::Running, None);
        };
        let State::Pending {
            future,
            waker,
            parked_since,
        } = &mut *state
        else {
            return (Traced::Running, None);
        };
        let Some(waker) = waker.clone() else {
            return (Traced::Runnable, None);
        };
        let parked_since = Some(*parked_since);
        if !cfg!(tokio_unstable) || !walk::available() {
            return (Traced::Untraceable, parked_since);
        }
        let mut stacks = Vec::new();
        let mut cx = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            poll_traced(future.as_mut(), &mut cx, &mut stacks)
        }));
        match polled {
            Ok(Poll::Pending) => (Traced::Parked(stacks), parked_since),
            Ok(Poll::Ready(output)) => {
                *state = State::Ready(output);
                waker.wake();
                (Traced::Running, None)
            }
            Err(payload) => {
                *state = State::Panicked(payload);
                waker.wake();
                (Traced::Running, None)
            }
        }
    }

    fn id(&self) -> Option<u64> {
        match self.id.load(Ordering::Relaxed) {
            NO_ID => None,
            id => Some(id),
        }
    }

    fn parent(&self) -> Option<u64> {
        self.parent.and_then(id_number)
    }

    fn spawned(&self) -> u64 {
        self.spawned
    }

    fn spawned_at(&self) -> &'static Location<'static> {
        self.spawned_at
    }
}

/// Polls `future` in tokio's tracing mode, collecting one stack per tokio leaf it reaches. The
/// walk stops at this function's frame, so every stack ends in the task's own future.
#[cfg(tokio_unstable)]
#[inline(never)]
fn poll_traced<F: Future>(
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
    stacks: &mut Vec<Vec<u64>>,
) -> Poll<F::Output> {
    let root = walk::frame_pointer();
    let polled = tokio::runtime::dump::trace_with(
        || future.poll(cx),
        |_leaf| {
            if let Some(stack) = walk::return_addresses(root) {
                stacks.push(stack);
            }
        },
    );
    // Not a tail call: this frame must stay on the stack while the walk runs.
    std::hint::black_box(&polled);
    polled
}

/// Without `--cfg tokio_unstable` tokio has no tracing mode: the future is not polled.
#[cfg(not(tokio_unstable))]
fn poll_traced<F: Future>(
    _future: Pin<&mut F>,
    _cx: &mut Context<'_>,
    _stacks: &mut Vec<Vec<u64>>,
) -> Poll<F::Output> {
    Poll::Pending
}

/// A task's root future: registered while it lives, so profiles can trace it.
pub struct TaskRoot<F: Future> {
    slot: Arc<Slot<F>>,
    key: Key,
}

/// Wraps a future about to be spawned, so that the task profile shows where it waits. Call it on
/// the line of the `spawn`: that line is the task's spawn site.
#[track_caller]
pub fn root<F>(future: F) -> TaskRoot<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let slot = Arc::new(Slot {
        id: AtomicU64::new(NO_ID),
        parent: tokio::task::try_id(),
        spawned: now(),
        spawned_at: Location::caller(),
        state: Mutex::new(State::Pending {
            future: Box::pin(future),
            waker: None,
            parked_since: 0,
        }),
    });
    let weak: Weak<dyn Traceable> = Arc::downgrade(&slot) as Weak<dyn Traceable>;
    let key = REGISTRY.insert(weak);
    TaskRoot { slot, key }
}

impl<F: Future> Future for TaskRoot<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let slot = &self.slot;
        let mut state = match slot.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // The tracer holds the slot for a microsecond: yield rather than block a worker.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        };
        match &mut *state {
            State::Pending {
                future,
                waker,
                parked_since,
            } => {
                match waker {
                    Some(last) if last.will_wake(cx.waker()) => {}
                    Some(last) => last.clone_from(cx.waker()),
                    None => {
                        // The first poll: learn tokio's id, once (it is only shown in profiles).
                        *waker = Some(cx.waker().clone());
                        if let Some(id) = tokio::task::try_id().and_then(id_number) {
                            slot.id.store(id, Ordering::Relaxed);
                        }
                    }
                }
                let polled = future.as_mut().poll(cx);
                if polled.is_ready() {
                    *state = State::Gone;
                } else {
                    *parked_since = now();
                }
                polled
            }
            State::Ready(_) | State::Panicked(_) => {
                match std::mem::replace(&mut *state, State::Gone) {
                    State::Ready(output) => Poll::Ready(output),
                    State::Panicked(payload) => {
                        drop(state);
                        std::panic::resume_unwind(payload)
                    }
                    State::Pending { .. } | State::Gone => unreachable!("matched above"),
                }
            }
            State::Gone => Poll::Pending,
        }
    }
}

impl<F: Future> Drop for TaskRoot<F> {
    fn drop(&mut self) {
        REGISTRY.remove(self.key);
        // Drop the future here, on the task's own thread, even if a trace still holds the slot.
        let state = {
            let mut guard = self
                .slot
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *guard, State::Gone)
        };
        drop(state);
    }
}

/// Traces every live task root, one at a time, never waiting for a lock. Blocking: run it off the
/// async workers (a deferred wake-up of a traced leaf is then never sent).
pub fn trace_all() -> Vec<TaskTrace> {
    REGISTRY
        .live()
        .into_iter()
        .map(|slot| {
            let (traced, parked_since) = slot.trace();
            // Read after the trace: no time read here is earlier than one the task recorded.
            let now = now();
            let since = |then: u64| Duration::from_nanos(now.saturating_sub(then));
            TaskTrace {
                task: Task {
                    id: slot.id(),
                    parent: slot.parent(),
                    age: since(slot.spawned()),
                    parked: parked_since.map_or(Duration::ZERO, since),
                },
                spawned_at: slot.spawned_at(),
                traced,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_as_numbers() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let id = runtime.block_on(async { tokio::spawn(async { tokio::task::id() }).await });
        let id = id.unwrap();
        assert_eq!(id_number(id), Some(id.to_string().parse().unwrap()));
    }

    #[test]
    fn the_coarse_clock_moves_forward() {
        let before = now();
        std::thread::sleep(Duration::from_millis(30));
        let after = now();
        assert!(before > 0 && after > before, "{before} {after}");
        assert!(after - before >= 10_000_000, "{before} {after}");
    }
}
