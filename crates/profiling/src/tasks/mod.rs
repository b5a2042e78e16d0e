//! The task profile: Go's goroutine profile for tokio tasks, taken without ever pausing,
//! stealing from or waiting on the scheduler.
//!
//! - [`sites`] counts every alive task by spawn site, through tokio's spawn and terminate hooks
//!   (always on, O(1) per spawn and exit);
//! - [`roots`] keeps this service's own task futures reachable, so that each parked one can be
//!   polled once in tokio's tracing mode to learn the await it is parked at;
//! - [`walk`] reads those await stacks from frame pointers;
//! - [`mod@profile`] turns counts, traces and symbolised frames into the pprof profile, with each
//!   task root's age and time parked as labels (pure);
//! - [`mod@text`] writes Go's text forms of the same stacks, `?debug=1` and `?debug=2` (pure).
//!
//! tokio's runtime-wide `Handle::dump` is not used: it stops every worker at a barrier and steals
//! their queues, and in tokio 1.54 it can spin a worker for ever, wedging the service. Here a
//! profile request reads atomics and try-locks one idle task at a time on a blocking thread: it
//! cannot pause, spin or deadlock the scheduler, whatever the runtime is doing.

pub mod profile;
pub mod roots;
pub mod sites;
pub mod text;
pub mod walk;

pub use profile::{TaskStack, build_profile};
pub use roots::{Task, TaskRoot, TaskTrace, root};
pub use sites::{SiteCount, install};
pub use text::{TextForm, render_text};

/// What a task profile is made of, before symbolisation.
#[derive(Debug, Clone)]
pub struct RawTasks {
    /// Every live task root, traced.
    pub traces: Vec<TaskTrace>,
    /// Alive tasks by spawn site (empty when the runtime has no hooks).
    pub sites: Vec<SiteCount>,
}

/// Counts and traces the tasks of the process. Blocking (it polls futures, one at a time, never
/// waiting for a lock): run it off the async workers.
pub fn collect() -> RawTasks {
    RawTasks {
        traces: roots::trace_all(),
        sites: sites::snapshot(),
    }
}

/// The task profile's stacks, now: [`collect`], symbolised with `symbols` and assembled.
/// Blocking.
pub fn profile(symbols: &crate::symbols::Symbolizer) -> Vec<TaskStack> {
    let raw = collect();
    let groups = profile::group(&raw.traces);
    let addresses = profile::lookup_addresses(&groups, &raw.sites);
    let frames = symbols.resolve(addresses);
    profile::assemble(&groups, &raw.sites, &frames)
}

/// The task profile in one of Go's text forms, now: [`profile()`], with each frame's offset in its
/// function read from the symbol tables. Blocking.
pub fn text(symbols: &crate::symbols::Symbolizer, form: TextForm) -> String {
    let stacks = profile(symbols);
    let entries = symbols.function_entries(text::entry_addresses(&stacks));
    render_text(&stacks, form, &entries)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::symbols::Symbolizer;

    fn runtime() -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        install(&mut builder).build().unwrap()
    }

    #[inline(never)]
    async fn blocked_sender(sender: tokio::sync::mpsc::Sender<u8>) {
        let _ = sender.send(2).await; // the traced await
    }

    #[test]
    fn a_parked_task_is_traced_to_its_await_and_its_spawner_without_losing_its_wake_up() {
        let runtime = runtime();
        let symbols = Symbolizer::default();
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<u8>(1);
        runtime.block_on(sender.send(1)).unwrap();
        let blocked = runtime.spawn(root(blocked_sender(sender)));
        std::thread::sleep(Duration::from_millis(50));

        // Traced many times over: each trace must leave the task's registration intact.
        let mut stacks = Vec::new();
        for _ in 0..50 {
            stacks = profile(&symbols);
        }
        let task = stacks
            .iter()
            .find(|task| task.wait == "chan send")
            .unwrap_or_else(|| panic!("the blocked sender is traced: {stacks:#?}"));
        let functions: Vec<&str> = task
            .stack
            .iter()
            .flat_map(|entry| entry.shown())
            .map(|frame| &*frame.function)
            .collect();
        assert!(
            functions.iter().any(|f| f.contains("blocked_sender")),
            "{functions:?}"
        );
        let created = functions.last().unwrap();
        assert!(
            created.starts_with("created by ") && created.contains("a_parked_task_is_traced"),
            "the root-most frame names the spawner: {functions:?}"
        );
        assert!(
            !functions
                .iter()
                .any(|f| f.contains("trace_leaf") || f.contains("poll_traced")),
            "{functions:?}"
        );

        // Its times: spawned 50 ms ago or more, parked since its first poll (the coarse clock
        // ticks every few milliseconds), spawned from no task.
        let [known] = task.tasks[..] else {
            panic!("one task root: {task:?}")
        };
        assert!(known.age >= Duration::from_millis(40), "{known:?}");
        assert!(
            known.parked >= Duration::from_millis(30) && known.parked <= known.age,
            "{known:?}"
        );
        assert_eq!(known.parent, None);
        assert!(known.id.is_some());

        // Go's dump: the await, and tokio's frames only when asked for.
        let dump = text(
            &symbols,
            TextForm {
                debug: 2,
                runtime: false,
            },
        );
        let entry = dump
            .split("\n\n")
            .find(|entry| entry.contains("blocked_sender"))
            .unwrap_or_else(|| panic!("{dump}"));
        assert!(
            entry.starts_with(&format!("goroutine {} [chan send]:\n", known.id.unwrap())),
            "{entry}"
        );
        assert!(!entry.contains("tokio::"), "{entry}");
        assert!(entry.contains("\ncreated by "), "{entry}");
        let whole = text(
            &symbols,
            TextForm {
                debug: 2,
                runtime: true,
            },
        );
        let entry = whole
            .split("\n\n")
            .find(|entry| entry.contains("blocked_sender"))
            .unwrap_or_else(|| panic!("{whole}"));
        assert!(entry.contains("tokio::sync::mpsc"), "{entry}");
        assert!(entry.contains(" +0x"), "offsets in functions: {entry}");

        // The real wake-up still arrives: reading the channel frees the blocked send.
        runtime.block_on(async {
            assert_eq!(receiver.recv().await, Some(1));
            tokio::time::timeout(Duration::from_secs(5), blocked)
                .await
                .expect("the traced task still completes")
                .unwrap();
        });
        assert!(
            profile(&symbols)
                .iter()
                .all(|task| task.wait != "chan send"),
            "a finished task leaves the profile"
        );
    }

    #[test]
    fn a_task_spawned_by_a_task_knows_its_parent() {
        let runtime = runtime();
        let symbols = Symbolizer::default();
        let never = Arc::new(tokio::sync::Notify::new());
        let waiting = Arc::clone(&never);
        let parent = runtime.block_on(async move {
            tokio::spawn(root(async move {
                tokio::spawn(root(async move { waiting.notified().await }));
                tokio::task::id().to_string().parse::<u64>().unwrap()
            }))
            .await
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(20));
        let stacks = profile(&symbols);
        let child = stacks
            .iter()
            .flat_map(|stack| stack.tasks.iter())
            .find(|task| task.parent == Some(parent))
            .unwrap_or_else(|| panic!("the child names its parent {parent}: {stacks:#?}"));
        assert_ne!(child.id, Some(parent));
        let dump = text(
            &symbols,
            TextForm {
                debug: 2,
                runtime: false,
            },
        );
        assert!(
            dump.contains(&format!(" in goroutine {parent}\n")),
            "{dump}"
        );
        never.notify_waiters();
    }

    #[test]
    fn an_output_produced_during_a_trace_is_handed_to_the_real_poll() {
        let runtime = runtime();
        let symbols = Symbolizer::default();
        // A non-tokio leaf: ready once `open` is set, without waking anyone when it is.
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = Arc::clone(&open);
        let task = runtime.spawn(root(std::future::poll_fn(move |cx| {
            if gate.load(std::sync::atomic::Ordering::SeqCst) {
                std::task::Poll::Ready(42)
            } else {
                // Re-polled by a wake-up that only the trace (or a timer) will deliver.
                let waker = cx.waker().clone();
                drop(waker);
                std::task::Poll::Pending
            }
        })));
        std::thread::sleep(Duration::from_millis(20));
        open.store(true, std::sync::atomic::Ordering::SeqCst);
        // The trace polls the future, which finishes: its output must reach the JoinHandle.
        let _ = profile(&symbols);
        let output =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        assert_eq!(output.expect("the task finished").unwrap(), 42);
    }

    #[test]
    fn tasks_spawned_without_a_root_are_counted_by_spawn_site() {
        let runtime = runtime();
        let symbols = Symbolizer::default();
        let never = Arc::new(tokio::sync::Notify::new());
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let never = Arc::clone(&never);
                runtime.spawn(async move { never.notified().await })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let stacks = profile(&symbols);
        let here = stacks
            .iter()
            .find(|task| {
                task.stack.last().is_some_and(|entry| {
                    entry.frames[0]
                        .function
                        .contains("tasks_spawned_without_a_root")
                })
            })
            .unwrap_or_else(|| panic!("the five tasks are counted at their spawn: {stacks:#?}"));
        assert_eq!((here.count, here.wait), (5, "untraced"));
        assert_eq!(here.spawned, Some(5), "the site's spawns are counted");
        assert!(here.tasks.is_empty(), "no times are known for them");
        for handle in handles {
            handle.abort();
        }
    }
}
