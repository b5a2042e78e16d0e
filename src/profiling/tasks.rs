//! The task profile: tokio's task dump as a goroutine-style profile, one sample per distinct
//! stack whose value is the number of tasks suspended there, from each task's root future down to
//! the await where it is parked, with what it waits for.
//!
//! tokio resolves its dumps through the `backtrace` crate, whose DWARF cache would stay in the
//! heap for good; this module reads the raw return addresses instead and symbolises them with the
//! shared [`Symbolizer`]. Parsing, wait classification, profile building and text rendering are
//! pure functions.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::ProfilingError;
use super::pprof::{Frame, Profile, ProfileBuilder, StackEntry};
use super::symbols::caller;

/// How long a dump may take before it is abandoned (it needs every worker to check in).
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

pin_project_lite::pin_project! {
    /// A task's root future, with a frame of its own.
    ///
    /// tokio's dump keeps the frames strictly below `Root::poll`, its own wrapper around every
    /// task. In release builds a small task future is inlined into `Root::poll` and vanishes from
    /// the dump with everything it awaits. This wrapper's `poll` is never inlined, so the task's
    /// future is inlined here instead, in a frame the dump keeps. Spawn every task through
    /// [`root`].
    pub struct TaskRoot<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for TaskRoot<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Wraps a future about to be spawned, so that task dumps show its whole stack.
pub fn root<F: Future>(future: F) -> TaskRoot<F> {
    TaskRoot { future }
}

/// One task of a dump: its id and, for each leaf future it is parked on, the return addresses
/// from that leaf to the task's root future, leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTask {
    /// tokio's task id.
    pub id: u64,
    /// One stack per pending leaf future (several under `join!` or `select!`), leaf first.
    pub stacks: Vec<Vec<u64>>,
}

/// A dump waits for every worker's run queue to hold at most this many tasks.
///
/// tokio 1.54's multi-thread dump first steals every worker's queued tasks into one queue, and
/// spins for ever once that queue is half full (128 tasks), taking the runtime down with it. (The
/// current-thread dump is no better: it panics when a task it polls wakes another.) So a dump
/// starts only once the queues are short, and not right after another, whose wake-ups refill them.
const QUIET_QUEUE: usize = 32;
/// How long a dump waits for the queues to drain before it gives up (503, try again).
const QUIET_WAIT: Duration = Duration::from_secs(3);

/// Takes a task dump of the current runtime, once its run queues are short (see [`QUIET_QUEUE`]).
/// Every worker must check in, so it is bounded by [`DUMP_TIMEOUT`].
#[cfg(tokio_unstable)]
pub async fn dump() -> Result<Vec<RawTask>, ProfilingError> {
    let handle = tokio::runtime::Handle::current();
    let metrics = handle.metrics();
    let waiting = std::time::Instant::now();
    loop {
        // Workers refill their queues from the global one, so both must be short.
        let longest = (0..metrics.num_workers())
            .map(|worker| metrics.worker_local_queue_depth(worker))
            .chain([metrics.global_queue_depth()])
            .max()
            .unwrap_or(0);
        if longest <= QUIET_QUEUE {
            break;
        }
        if waiting.elapsed() > QUIET_WAIT {
            return Err(ProfilingError::Unavailable(format!(
                "the runtime stayed too busy for a task dump ({longest} tasks queued on one worker); try again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dump = tokio::time::timeout(DUMP_TIMEOUT, handle.dump())
        .await
        .map_err(|_| ProfilingError::Timeout("task dump"))?;
    Ok(dump
        .tasks()
        .iter()
        .map(|task| RawTask {
            id: task.id().to_string().parse().unwrap_or(0),
            stacks: parse_trace_debug(&format!("{:?}", task.trace())),
        })
        .collect())
}

/// Without `--cfg tokio_unstable` there are no task dumps.
#[cfg(not(tokio_unstable))]
pub async fn dump() -> Result<Vec<RawTask>, ProfilingError> {
    Err(ProfilingError::NotCompiled("the task profile"))
}

/// The raw stacks of a tokio `Trace`, read from its `Debug` form, which prints each frame's `ip`
/// without resolving it. (tokio's only public accessor for addresses resolves every frame first.)
/// The form is checked by a test against the real runtime, so a tokio upgrade that changes it
/// fails loudly.
pub fn parse_trace_debug(text: &str) -> Vec<Vec<u64>> {
    const START: &str = "backtraces: [";
    let Some(start) = text.find(START) else {
        return Vec::new();
    };
    let mut stacks: Vec<Vec<u64>> = Vec::new();
    let mut depth = 0usize;
    let mut rest = &text[start + START.len()..];
    while let Some(c) = rest.chars().next() {
        match c {
            '[' => {
                depth += 1;
                if depth == 1 {
                    stacks.push(Vec::new());
                }
            }
            ']' if depth == 0 => break,
            ']' => depth -= 1,
            'i' if rest.starts_with("ip: 0x") => {
                let hex = &rest["ip: 0x".len()..];
                let end = hex
                    .find(|c: char| !c.is_ascii_hexdigit())
                    .unwrap_or(hex.len());
                if let (Some(stack), Ok(ip)) =
                    (stacks.last_mut(), u64::from_str_radix(&hex[..end], 16))
                {
                    stack.push(ip);
                }
                rest = &hex[end..];
                continue;
            }
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    stacks.retain(|stack| !stack.is_empty());
    stacks
}

/// What a parked task waits for, read from the tokio frames nearest its leaf.
pub fn wait_kind(frames: &[&Frame]) -> &'static str {
    for frame in frames {
        let file = &*frame.file;
        let Some((_, path)) = file.split_once("/src/") else {
            continue;
        };
        if !file.starts_with("tokio-") {
            continue; // tokio's and tokio-util's primitives only
        }
        let kind = match path {
            "sync/mpsc/chan.rs" => "chan receive",
            "sync/mpsc/bounded.rs" | "sync/mpsc/unbounded.rs" => {
                if frame.function.contains("recv") {
                    "chan receive"
                } else {
                    "chan send"
                }
            }
            "sync/mutex.rs" => "mutex lock",
            "sync/rwlock.rs" => "rwlock",
            "sync/semaphore.rs" => "semaphore acquire",
            "sync/oneshot.rs" => "oneshot receive",
            "sync/notify.rs" => "notified",
            "sync/watch.rs" => "watch changed",
            "sync/broadcast.rs" => "broadcast receive",
            "sync/barrier.rs" => "barrier wait",
            "time/sleep.rs" | "time/interval.rs" => "sleep",
            "runtime/task/join.rs" => "join",
            "task/yield_now.rs" | "task/coop/mod.rs" | "runtime/coop.rs" => "yield",
            path if path.starts_with("runtime/io/") || path.starts_with("net/") => "io wait",
            path if path.starts_with("sync/cancellation_token") => "cancelled",
            path if path.starts_with("task/task_tracker") => "task tracker wait",
            _ => continue,
        };
        return kind;
    }
    "running"
}

/// A task, symbolised: its id, its stack (leaf first), and what it waits for.
#[derive(Debug, Clone)]
pub struct TaskStack {
    /// tokio's task id.
    pub id: u64,
    /// The first pending leaf's stack, leaf first.
    pub stack: Vec<StackEntry>,
    /// What the task waits for.
    pub wait: &'static str,
}

/// The addresses to symbolise for some tasks.
pub fn lookup_addresses(tasks: &[RawTask]) -> impl Iterator<Item = u64> + '_ {
    tasks
        .iter()
        .flat_map(|task| task.stacks.first().into_iter().flatten())
        .map(|&address| caller(address))
}

/// Symbolises each task's first stack and classifies its wait.
pub fn symbolise(tasks: &[RawTask], frames: &HashMap<u64, Arc<[Frame]>>) -> Vec<TaskStack> {
    tasks
        .iter()
        .map(|task| {
            let stack: Vec<StackEntry> = task
                .stacks
                .first()
                .into_iter()
                .flatten()
                .filter_map(|&address| {
                    let address = caller(address);
                    Some(StackEntry {
                        address,
                        frames: Arc::clone(frames.get(&address)?),
                        skip: 0,
                    })
                })
                .collect();
            let flat: Vec<&Frame> = stack.iter().flat_map(|entry| entry.shown()).collect();
            let wait = if stack.is_empty() {
                "no trace"
            } else {
                wait_kind(&flat)
            };
            TaskStack {
                id: task.id,
                stack,
                wait,
            }
        })
        .collect()
}

/// Tasks grouped by identical stack and wait, most numerous first.
fn grouped(tasks: &[TaskStack]) -> Vec<(usize, &TaskStack)> {
    let mut groups: HashMap<(Vec<u64>, &str), (usize, &TaskStack)> = HashMap::new();
    for task in tasks {
        let key = (
            task.stack.iter().map(|entry| entry.address).collect(),
            task.wait,
        );
        groups.entry(key).or_insert((0, task)).0 += 1;
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    groups
}

/// The `goroutine`/`count` profile: one sample per distinct stack, labelled with its wait.
pub fn build_profile(tasks: &[TaskStack]) -> Profile {
    let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
    builder.comment("tokio tasks from a task dump; one goroutine = one task");
    for (count, task) in grouped(tasks) {
        builder.add_sample(&task.stack, vec![count as i64], &[("wait", task.wait)]);
    }
    builder.build()
}

/// The text forms of `?debug=1` (counts per distinct stack) and `?debug=2` (one entry per task),
/// modelled on Go's.
pub fn render_text(tasks: &[TaskStack], debug: u8) -> String {
    let mut out = String::new();
    if debug >= 2 {
        let mut sorted: Vec<&TaskStack> = tasks.iter().collect();
        sorted.sort_by_key(|task| task.id);
        for task in sorted {
            let _ = writeln!(out, "task {} [{}]:", task.id, task.wait);
            for frame in task.stack.iter().flat_map(|entry| entry.shown()) {
                let _ = writeln!(out, "{}\n\t{}:{}", frame.function, frame.file, frame.line);
            }
            out.push('\n');
        }
        return out;
    }
    let _ = writeln!(out, "task profile: total {}", tasks.len());
    for (count, task) in grouped(tasks) {
        let addresses: Vec<String> = task
            .stack
            .iter()
            .map(|entry| format!("{:#x}", entry.address))
            .collect();
        let _ = writeln!(out, "{count} @ {}", addresses.join(" "));
        let _ = writeln!(out, "# labels: {{\"wait\":\"{}\"}}", task.wait);
        for entry in &task.stack {
            for frame in entry.shown() {
                let _ = writeln!(
                    out,
                    "#\t{:#x}\t{}\t{}:{}",
                    entry.address, frame.function, frame.file, frame.line
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn raw_addresses_are_read_from_the_debug_form() {
        let text = "Trace { inner: Trace { backtraces: [[BacktraceFrame { ip: 0x55d0c0a01234, \
                    symbol_address: 0x55d0c0a01200 }, BacktraceFrame { ip: 0x55d0c0a05678, \
                    symbol_address: 0x55d0c0a05600 }], [], [BacktraceFrame { ip: 0xabc, \
                    symbol_address: 0xab0 }]] } }";
        assert_eq!(
            parse_trace_debug(text),
            vec![vec![0x55d0c0a01234, 0x55d0c0a05678], vec![0xabc]]
        );
        assert!(parse_trace_debug("Trace { inner: Trace { backtraces: [] } }").is_empty());
        assert!(parse_trace_debug("garbage [[[ ip: 0x").is_empty());
        assert!(parse_trace_debug("").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_real_runtime_dump_still_has_the_form_we_read() {
        let (sender, _receiver) = tokio::sync::mpsc::channel::<u8>(1);
        sender.send(1).await.unwrap();
        let blocked = tokio::spawn(async move {
            let _ = sender.send(2).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tasks = dump().await.unwrap();
        assert!(
            tasks
                .iter()
                .any(|task| !task.stacks.is_empty() && task.stacks[0].len() >= 2),
            "a blocked task has a stack of raw addresses: {tasks:?}"
        );
        blocked.abort();
    }

    #[test]
    fn waits_are_classified_by_the_tokio_frames_nearest_the_leaf() {
        let semaphore = frame("poll", "tokio-1.54.1/src/sync/batch_semaphore.rs");
        let send = frame("{async_fn#0}", "tokio-1.54.1/src/sync/mpsc/bounded.rs");
        let recv = frame("recv", "tokio-1.54.1/src/sync/mpsc/chan.rs");
        let lock = frame("acquire", "tokio-1.54.1/src/sync/mutex.rs");
        let sleep = frame("poll_elapsed", "tokio-1.54.1/src/time/sleep.rs");
        let user = frame("leakfinder::job", "src/leaks/channel.rs");
        assert_eq!(wait_kind(&[&semaphore, &send, &user]), "chan send");
        assert_eq!(wait_kind(&[&recv, &send, &user]), "chan receive");
        assert_eq!(wait_kind(&[&semaphore, &lock, &user]), "mutex lock");
        assert_eq!(wait_kind(&[&sleep, &user]), "sleep");
        assert_eq!(wait_kind(&[&user]), "running");
    }

    fn task(id: u64, addresses: &[u64], function: &str) -> TaskStack {
        TaskStack {
            id,
            stack: addresses
                .iter()
                .map(|&address| StackEntry {
                    address,
                    frames: vec![frame(function, "src/x.rs")].into(),
                    skip: 0,
                })
                .collect(),
            wait: "chan send",
        }
    }

    #[test]
    fn the_profile_counts_tasks_per_distinct_stack() {
        let tasks = vec![
            task(1, &[1, 2], "a"),
            task(2, &[1, 2], "a"),
            task(3, &[3], "b"),
        ];
        let profile = build_profile(&tasks);
        let mut values: Vec<i64> = profile
            .sample
            .iter()
            .map(|sample| sample.value[0])
            .collect();
        values.sort_unstable();
        assert_eq!(values, vec![1, 2]);
        let name = |index: i64| profile.string_table[index as usize].as_str();
        assert_eq!(name(profile.sample_type[0].r#type), "goroutine");
        assert_eq!(name(profile.sample_type[0].unit), "count");
        assert_eq!(name(profile.sample[0].label[0].key), "wait");

        let text = render_text(&tasks, 1);
        assert!(
            text.starts_with("task profile: total 3\n2 @ 0x1 0x2\n"),
            "{text}"
        );
        let per_task = render_text(&tasks, 2);
        assert!(
            per_task.starts_with("task 1 [chan send]:\na\n\tsrc/x.rs:1\n"),
            "{per_task}"
        );
        assert_eq!(per_task.matches("task ").count(), 3);
    }
}
