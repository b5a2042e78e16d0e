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

/// A traced task: tokio's id, where [`root`] was called, and what it is doing.
#[derive(Debug, Clone)]
pub struct TaskTrace {
    /// tokio's task id, once the task has been polled.
    pub id: Option<u64>,
    /// Where the task was spawned (the [`root`] call, on the spawn's line).
    pub spawned_at: &'static Location<'static>,
    /// What the trace saw.
    pub traced: Traced,
}

/// A slot the tracer can poll.
trait Traceable: Send + Sync {
    fn trace(&self) -> Traced;
    fn id(&self) -> Option<u64>;
    fn spawned_at(&self) -> &'static Location<'static>;
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
    /// Not finished: the future, and the waker of its last real poll (none before the first).
    Pending {
        future: Pin<Box<F>>,
        waker: Option<Waker>,
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
    spawned_at: &'static Location<'static>,
    state: Mutex<State<F>>,
}

const NO_ID: u64 = 0;

impl<F> Traceable for Slot<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn trace(&self) -> Traced {
        // Busy (being polled), or poisoned by a panic in a real poll (the task is ending): skip.
        let Ok(mut state) = self.state.try_lock() else {
            return Traced::Running;
        };
        let State::Pending { future, waker } = &mut *state else {
            return Traced::Running;
        };
        let Some(waker) = waker.clone() else {
            return Traced::Runnable;
        };
        if !cfg!(tokio_unstable) || !walk::available() {
            return Traced::Untraceable;
        }
        let mut stacks = Vec::new();
        let mut cx = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            poll_traced(future.as_mut(), &mut cx, &mut stacks)
        }));
        match polled {
            Ok(Poll::Pending) => Traced::Parked(stacks),
            Ok(Poll::Ready(output)) => {
                *state = State::Ready(output);
                waker.wake();
                Traced::Running
            }
            Err(payload) => {
                *state = State::Panicked(payload);
                waker.wake();
                Traced::Running
            }
        }
    }

    fn id(&self) -> Option<u64> {
        match self.id.load(Ordering::Relaxed) {
            NO_ID => None,
            id => Some(id),
        }
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
        spawned_at: Location::caller(),
        state: Mutex::new(State::Pending {
            future: Box::pin(future),
            waker: None,
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
            State::Pending { future, waker } => {
                match waker {
                    Some(last) if last.will_wake(cx.waker()) => {}
                    Some(last) => last.clone_from(cx.waker()),
                    None => {
                        // The first poll: learn tokio's id, once (it is only shown in profiles).
                        *waker = Some(cx.waker().clone());
                        if let Some(id) = tokio::task::try_id() {
                            let id = id.to_string().parse().unwrap_or(NO_ID);
                            slot.id.store(id, Ordering::Relaxed);
                        }
                    }
                }
                let polled = future.as_mut().poll(cx);
                if polled.is_ready() {
                    *state = State::Gone;
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
        .map(|slot| TaskTrace {
            id: slot.id(),
            spawned_at: slot.spawned_at(),
            traced: slot.trace(),
        })
        .collect()
}
