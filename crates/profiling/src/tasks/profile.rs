//! The task profile, built from what [`super::sites`] counted and [`super::roots`] traced: pure
//! functions from raw addresses, spawn-site counts and symbolised frames to a goroutine-style
//! pprof profile ([`mod@super::text`] writes Go's text forms of the same stacks).
//!
//! A stack is, for a traced task, the frames from the tokio leaf it waits in up to its root
//! future, with what it waits for; for the rest (tasks spawned by libraries, or busy right now),
//! the spawn site alone. Every stack ends, root-most, in a `created by` frame naming the function
//! that spawned the task at its `file:line`, as Go's goroutine profile does.
//!
//! The profile (sample type `goroutine`/`count`, as Go's) has one sample per distinct stack, wait
//! and age bucket, its value the number of tasks there, with these labels:
//! - `wait` (string): what the tasks wait for (`chan send`, `mutex lock`, ..., or `running`,
//!   `runnable`, `untraced`);
//! - `age` (seconds): the mean time since the bucket's tasks were spawned. Buckets are four per
//!   octave of age (`floor(4 log2(1 + seconds))`), so ten thousand tasks of one leak make a few
//!   dozen samples, and `go tool pprof -tagfocus=age=60s:` still tells old tasks from young;
//! - `parked` (seconds): their mean time since their last poll returned `Pending` (zero for a
//!   task being polled or not yet polled);
//! - `spawned` (count): the tasks ever spawned at the stack's spawn site, the same on every
//!   sample of the site; beside the tasks alive there it says how much of what was spawned is
//!   still alive.
//!
//! Only task roots have known times: tasks counted by spawn site alone get one sample per stack,
//! with `spawned` but no `age` or `parked`.

use std::collections::{BTreeMap, HashMap};
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use leakfinder_pprof::conventions::CREATED_BY;

use super::roots::{Task, TaskTrace, Traced};
use super::sites::SiteCount;
use crate::symbols::{FramesByAddress, caller, source_path};
use leakfinder_pprof::{Frame, Profile, ProfileBuilder, StackEntry};

/// tokio's tracing hook, the innermost frame kept out of every stack.
const TRACE_LEAF: &str = "tokio::runtime::task::trace::trace_leaf";
/// The tracer's poll, root-most above every traced stack: it and what calls it are cut.
const TRACED_POLL: &str = "profiling::tasks::roots::poll_traced";

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

/// Tasks at one stack: traced tasks parked at the same await, or tasks known by spawn site only.
#[derive(Debug, Clone, Default)]
pub struct TaskStack {
    /// The task roots here, one each, with their ids and times; the other `count - tasks.len()`
    /// tasks are known by their count alone.
    pub tasks: Vec<Task>,
    /// How many tasks this is.
    pub count: u64,
    /// The stack, leaf first, ending in the `created by` frame.
    pub stack: Vec<StackEntry>,
    /// What the tasks wait for.
    pub wait: &'static str,
    /// Tasks ever spawned at the spawn site, when its spawn hook counted them.
    pub spawned: Option<u64>,
    /// The spawner's instruction address at the spawn site, when known (Go's text forms show
    /// `created by`'s offset in its function from it).
    pub spawner: Option<u64>,
    /// Whether the root-most entry before `created by` lost its outermost frames (the tracer's
    /// own poll, which the task's future is inlined into): its last frame shown is inlined, so
    /// Go's forms give it no offset.
    pub root_inlined: bool,
}

/// Traced tasks with the same spawn site, state and raw stack: traced once each, assembled once.
#[derive(Debug, Clone)]
pub struct TraceGroup<'a> {
    /// Where they were spawned.
    pub spawned_at: &'static Location<'static>,
    /// What the traces saw (the same for all).
    pub traced: &'a Traced,
    /// The tasks, one each.
    pub tasks: Vec<Task>,
}

/// The one stack a parked task shows. A task parked in several awaits at once (`join!`,
/// `select!`) reaches a leaf in each, in an order that changes from trace to trace (`select!`
/// starts at a random branch): the least by address is shown, so the same await every time.
/// (`select!`'s polling loop may be unrolled: the same await can still be reached from another
/// call site of the same line, a different address for the same frames.)
fn parked_stack(traced: &Traced) -> &[u64] {
    match traced {
        Traced::Parked(stacks) => stacks.iter().min().map_or(&[][..], Vec::as_slice),
        _ => &[],
    }
}

/// Groups traces that are the same but for the task: thousands of tasks parked at one await
/// are symbolised and assembled once.
pub fn group(traces: &[TaskTrace]) -> Vec<TraceGroup<'_>> {
    let mut index: HashMap<(usize, std::mem::Discriminant<Traced>, &[u64]), usize> = HashMap::new();
    let mut groups: Vec<TraceGroup<'_>> = Vec::new();
    for trace in traces {
        let stack = parked_stack(&trace.traced);
        let key = (
            std::ptr::from_ref(trace.spawned_at) as usize,
            std::mem::discriminant(&trace.traced),
            stack,
        );
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(TraceGroup {
                spawned_at: trace.spawned_at,
                traced: &trace.traced,
                tasks: Vec::new(),
            });
            groups.len() - 1
        });
        groups[at].tasks.push(trace.task);
    }
    groups
}

/// The addresses to symbolise: each group's stack, and each site's spawner.
pub fn lookup_addresses<'a>(
    groups: &'a [TraceGroup<'a>],
    sites: &'a [SiteCount],
) -> impl Iterator<Item = u64> + 'a {
    let traced = groups.iter().flat_map(|group| parked_stack(group.traced));
    let spawners = sites.iter().flat_map(|site| site.spawner.iter());
    traced.chain(spawners).map(|&address| caller(address))
}

/// A spawn site as profiles show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SiteKey {
    file: String,
    line: u32,
}

impl SiteKey {
    fn of(location: &Location<'_>) -> Self {
        Self {
            file: source_path(location.file()),
            line: location.line(),
        }
    }
}

/// The function that contains a spawn site, read from its spawner's frames (the frame at the
/// site's file and line), and the instruction address where it spawned.
fn spawner_name(
    key: &SiteKey,
    spawner: &[u64],
    frames: &FramesByAddress,
) -> Option<(Arc<str>, u64)> {
    spawner.iter().find_map(|&address| {
        let address = caller(address);
        frames
            .get(&address)?
            .iter()
            .find(|frame| frame.line == key.line && same_file(&frame.file, &key.file))
            .map(|frame| (Arc::clone(&frame.function), address))
    })
}

/// Whether two paths name the same source file, one perhaps relative to where the other was
/// built: rustc's `file!()` (which a spawn `Location` holds) is relative to the workspace root,
/// while debug info's paths are absolute unless the symboliser has a source root.
fn same_file(a: &str, b: &str) -> bool {
    let ends_with = |long: &str, short: &str| {
        long.strip_suffix(short)
            .is_some_and(|head| head.is_empty() || head.ends_with('/'))
    };
    ends_with(a, b) || ends_with(b, a)
}

/// The `created by` entry of a site: a frame of its own, at an address no code has (the site's
/// `Location`), so pprof keeps it apart from every real frame.
fn created_by(key: &SiteKey, spawner: Option<&str>, address: u64) -> StackEntry {
    let function = match spawner {
        Some(function) => format!("{CREATED_BY}{function}"),
        None => format!("{CREATED_BY}{}:{}", key.file, key.line),
    };
    StackEntry {
        address,
        frames: vec![Frame {
            function: function.into(),
            file: key.file.as_str().into(),
            line: key.line,
        }]
        .into(),
        skip: 0,
    }
}

/// A traced stack, symbolised and trimmed: from the frame above tokio's `trace_leaf` up to the
/// task's own future, the tracer's frames cut; and whether that cut left the root-most entry
/// with only frames inlined into the tracer's poll.
fn traced_stack(stack: &[u64], frames: &FramesByAddress) -> (Vec<StackEntry>, bool) {
    let mut entries: Vec<StackEntry> = stack
        .iter()
        .filter_map(|&address| {
            let address = caller(address);
            Some(StackEntry {
                address,
                frames: Arc::clone(frames.get(&address)?),
                skip: 0,
            })
        })
        .collect();
    // The outermost `trace_leaf` frame: it may be inlined into the future that called it (with
    // full debug info, `Acquire::poll` and `trace_leaf` share an address), so the entry stays
    // and shows only the frames above it.
    if let Some((leaf, frame)) = entries.iter().enumerate().rev().find_map(|(index, entry)| {
        entry
            .frames
            .iter()
            .rposition(|frame| frame.function.starts_with(TRACE_LEAF))
            .map(|frame| (index, frame))
    }) {
        entries.drain(..leaf);
        if frame + 1 < entries[0].frames.len() {
            entries[0].skip = frame + 1;
        } else {
            entries.remove(0);
        }
    }
    let mut root_inlined = false;
    if let Some(root) = entries.iter().position(|entry| {
        entry
            .frames
            .iter()
            .any(|frame| frame.function.contains(TRACED_POLL))
    }) {
        entries.truncate(root + 1);
        let last = entries.pop().expect("the root entry was just kept");
        let cut = last
            .frames
            .iter()
            .position(|frame| frame.function.contains(TRACED_POLL))
            .unwrap_or(last.frames.len());
        if cut > last.skip {
            root_inlined = true;
            entries.push(StackEntry {
                frames: last.frames[..cut].into(),
                ..last
            });
        }
    }
    (entries, root_inlined)
}

/// What the profile knows of a spawn site: its alive tasks not traced, its spawns, its spawner,
/// and the address its `created by` frame takes.
struct Site {
    untraced: u64,
    spawned: Option<u64>,
    spawner: Option<(Arc<str>, u64)>,
    address: u64,
}

/// Assembles the task profile's stacks: every traced task, then, per spawn site, the alive tasks
/// that were not traced there.
pub fn assemble(
    groups: &[TraceGroup<'_>],
    sites: &[SiteCount],
    frames: &FramesByAddress,
) -> Vec<TaskStack> {
    let mut by_site: HashMap<SiteKey, Site> = HashMap::new();
    for site in sites {
        let key = SiteKey::of(site.site);
        let spawner = || spawner_name(&key, site.spawner, frames);
        let entry = by_site.entry(key.clone()).or_insert_with(|| Site {
            untraced: 0,
            spawned: None,
            spawner: None,
            address: std::ptr::from_ref(site.site) as u64,
        });
        entry.untraced += site.alive;
        entry.spawned = Some(entry.spawned.unwrap_or(0) + site.spawned);
        if entry.spawner.is_none() {
            entry.spawner = spawner();
        }
    }
    let mut stacks = Vec::with_capacity(groups.len() + by_site.len());
    for group in groups {
        let key = SiteKey::of(group.spawned_at);
        let site = by_site.entry(key.clone()).or_insert_with(|| Site {
            untraced: 0,
            spawned: None,
            spawner: None,
            address: std::ptr::from_ref(group.spawned_at) as u64,
        });
        site.untraced = site.untraced.saturating_sub(group.tasks.len() as u64);
        let ((mut stack, root_inlined), wait) = match group.traced {
            Traced::Parked(_) => {
                let stack = traced_stack(parked_stack(group.traced), frames);
                let flat: Vec<&Frame> = stack.0.iter().flat_map(|entry| entry.shown()).collect();
                let wait = if flat.is_empty() {
                    "non-tokio wait"
                } else {
                    wait_kind(&flat)
                };
                (stack, wait)
            }
            Traced::Running => (Default::default(), "running"),
            Traced::Runnable => (Default::default(), "runnable"),
            Traced::Untraceable => (Default::default(), "untraced"),
        };
        let spawner = site.spawner.as_ref();
        stack.push(created_by(
            &key,
            spawner.map(|(name, _)| &**name),
            site.address,
        ));
        stacks.push(TaskStack {
            tasks: group.tasks.clone(),
            count: group.tasks.len() as u64,
            stack,
            wait,
            spawned: site.spawned,
            spawner: spawner.map(|&(_, address)| address),
            root_inlined,
        });
    }
    for (key, site) in by_site {
        if site.untraced > 0 {
            let spawner = site.spawner.as_ref();
            stacks.push(TaskStack {
                tasks: Vec::new(),
                count: site.untraced,
                stack: vec![created_by(
                    &key,
                    spawner.map(|(name, _)| &**name),
                    site.address,
                )],
                wait: "untraced",
                spawned: site.spawned,
                spawner: spawner.map(|&(_, address)| address),
                root_inlined: false,
            });
        }
    }
    stacks
}

/// What identifies a shown stack: each entry's address, trim and frame count, and the wait.
type ShownStack<'a> = (Vec<(u64, usize, usize)>, &'a str);

/// The tasks of one shown stack and wait, from however many [`TaskStack`]s.
pub(crate) struct Grouped<'a> {
    /// How many tasks.
    pub count: u64,
    /// The first of the stacks: the stack, wait, spawn site and spawner of all.
    pub first: &'a TaskStack,
    /// Every one of them.
    pub members: Vec<&'a TaskStack>,
}

impl Grouped<'_> {
    /// The tasks whose times are known.
    fn known(&self) -> impl Iterator<Item = &Task> {
        self.members.iter().flat_map(|stack| stack.tasks.iter())
    }
}

/// Tasks grouped by identical stack and wait, most numerous first.
pub(crate) fn grouped(tasks: &[TaskStack]) -> Vec<Grouped<'_>> {
    let mut groups: HashMap<ShownStack<'_>, Grouped<'_>> = HashMap::new();
    for task in tasks {
        let key = (
            task.stack
                .iter()
                .map(|entry| (entry.address, entry.skip, entry.frames.len()))
                .collect(),
            task.wait,
        );
        let group = groups.entry(key).or_insert_with(|| Grouped {
            count: 0,
            first: task,
            members: Vec::new(),
        });
        group.count += task.count;
        group.members.push(task);
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    let first_id = |group: &Grouped<'_>| group.known().filter_map(|task| task.id).min();
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| first_id(a).cmp(&first_id(b)))
            .then_with(|| {
                a.first
                    .stack
                    .last()
                    .map(|e| e.address)
                    .cmp(&b.first.stack.last().map(|e| e.address))
            })
    });
    groups
}

/// The total number of tasks.
pub fn total(tasks: &[TaskStack]) -> u64 {
    tasks.iter().map(|task| task.count).sum()
}

/// The age bucket of a task: four per octave of seconds, `floor(4 log2(1 + seconds))` (0 for
/// the first 0.19 s, 4 from 1 s, 8 from 3 s, ... 24 from 63 s, 47 from an hour).
pub fn age_bucket(age: Duration) -> u32 {
    (4.0 * (1.0 + age.as_secs_f64()).log2()).floor() as u32
}

/// Whole seconds of the mean of `total` over `count` tasks.
fn mean_seconds(total: Duration, count: u64) -> i64 {
    (total.as_secs_f64() / count.max(1) as f64).round() as i64
}

/// The `goroutine`/`count` profile: one sample per distinct stack, wait and age bucket, with the
/// labels of the module's docs.
pub fn build_profile(tasks: &[TaskStack]) -> Profile {
    let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
    builder.comment(
        "tokio tasks: one goroutine = one task; stacks traced without pausing the runtime",
    );
    for group in grouped(tasks) {
        let labels = [("wait", group.first.wait)];
        let spawned = group
            .first
            .spawned
            .map(|spawned| ("spawned", spawned as i64, "count"));
        // By bucket: tasks, their summed age and summed time parked.
        let mut buckets: BTreeMap<u32, (u64, Duration, Duration)> = BTreeMap::new();
        let mut known = 0;
        for task in group.known() {
            let bucket = buckets.entry(age_bucket(task.age)).or_default();
            bucket.0 += 1;
            bucket.1 += task.age;
            bucket.2 += task.parked;
            known += 1;
        }
        for (count, age, parked) in buckets.into_values() {
            let numbers: Vec<(&str, i64, &str)> = [
                Some(("age", mean_seconds(age, count), "seconds")),
                Some(("parked", mean_seconds(parked, count), "seconds")),
                spawned,
            ]
            .into_iter()
            .flatten()
            .collect();
            builder.add_sample_with_numbers(
                &group.first.stack,
                vec![count as i64],
                &labels,
                &numbers,
            );
        }
        let unknown = group.count.saturating_sub(known);
        if unknown > 0 {
            let numbers: Vec<(&str, i64, &str)> = spawned.into_iter().collect();
            builder.add_sample_with_numbers(
                &group.first.stack,
                vec![unknown as i64],
                &labels,
                &numbers,
            );
        }
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_site_s_file_matches_its_debug_info_path_relative_or_absolute() {
        assert!(same_file("src/leaks/channel.rs", "src/leaks/channel.rs"));
        assert!(same_file("/work/app/examples/axum.rs", "examples/axum.rs"));
        assert!(same_file("examples/axum.rs", "/work/app/examples/axum.rs"));
        assert!(!same_file("/work/app/examples/xaxum.rs", "axum.rs"));
        assert!(!same_file("/work/app/src/a.rs", "src/b.rs"));
    }

    #[test]
    fn waits_are_classified_by_the_tokio_frames_nearest_the_leaf() {
        let semaphore = Frame::new("poll", "tokio-1.54.1/src/sync/batch_semaphore.rs", 1);
        let send = Frame::new("{async_fn#0}", "tokio-1.54.1/src/sync/mpsc/bounded.rs", 1);
        let recv = Frame::new("recv", "tokio-1.54.1/src/sync/mpsc/chan.rs", 1);
        let lock = Frame::new("acquire", "tokio-1.54.1/src/sync/mutex.rs", 1);
        let sleep = Frame::new("poll_elapsed", "tokio-1.54.1/src/time/sleep.rs", 1);
        let user = Frame::new("leakfinder::job", "src/leaks/channel.rs", 1);
        assert_eq!(wait_kind(&[&semaphore, &send, &user]), "chan send");
        assert_eq!(wait_kind(&[&recv, &send, &user]), "chan receive");
        assert_eq!(wait_kind(&[&semaphore, &lock, &user]), "mutex lock");
        assert_eq!(wait_kind(&[&sleep, &user]), "sleep");
        assert_eq!(wait_kind(&[&user]), "running");
    }

    /// A fake address's frames, innermost first: function, file, line.
    type FakeFrames<'a> = (u64, &'a [(&'a str, &'a str, u32)]);

    /// Symbolised frames for fake addresses.
    fn frames(table: &[FakeFrames<'_>]) -> FramesByAddress {
        table
            .iter()
            .map(|(address, frames)| {
                let frames: Vec<Frame> = frames
                    .iter()
                    .map(|&(function, file, line)| Frame::new(function, file, line))
                    .collect();
                (*address, frames.into())
            })
            .collect()
    }

    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    /// A task root of `age` seconds, parked for `parked` seconds.
    fn known(id: Option<u64>, age: u64, parked: u64) -> Task {
        Task {
            id,
            parent: None,
            age: Duration::from_secs(age),
            parked: Duration::from_secs(parked),
        }
    }

    /// A parked stack as the walker returns it (return addresses: one past each lookup address).
    fn parked(addresses: &[u64]) -> Traced {
        Traced::Parked(vec![addresses.iter().map(|a| a + 1).collect()])
    }

    #[test]
    fn traced_stacks_run_from_above_trace_leaf_to_the_task_future_and_end_in_created_by() {
        let site = here();
        let file = source_path(site.file());
        let table = frames(&[
            (
                0x10,
                &[(
                    "leakfinder::profiling::tasks::roots::poll_traced::{{closure}}",
                    "src/profiling/tasks/roots.rs",
                    1,
                )],
            ),
            (
                0x20,
                &[(
                    "tokio::runtime::task::trace::trace_leaf",
                    "tokio-1.54.1/src/runtime/task/trace/mod.rs",
                    300,
                )],
            ),
            (
                0x30,
                &[
                    ("poll", "tokio-1.54.1/src/sync/batch_semaphore.rs", 642),
                    (
                        "reserve_inner",
                        "tokio-1.54.1/src/sync/mpsc/bounded.rs",
                        1280,
                    ),
                ],
            ),
            (
                0x40,
                &[
                    ("app::job::{{closure}}", "src/app.rs", 7),
                    (
                        "leakfinder::profiling::tasks::roots::poll_traced",
                        "src/profiling/tasks/roots.rs",
                        2,
                    ),
                ],
            ),
            (
                0x50,
                &[(
                    "std::panicking::try",
                    "/rustc/x/library/std/src/panicking.rs",
                    1,
                )],
            ),
            (0x60, &[("app::spawner", &file, site.line())]),
        ]);
        let traces = vec![TaskTrace {
            task: known(Some(7), 40, 30),
            spawned_at: site,
            traced: parked(&[0x10, 0x20, 0x30, 0x40, 0x50]),
        }];
        let sites = vec![SiteCount {
            site,
            alive: 3,
            spawned: 9,
            spawner: Box::leak(vec![0x71, 0x61].into_boxed_slice()),
        }];
        let mut table = table;
        table.insert(
            0x70,
            vec![Frame::new(
                "tokio::spawn",
                "tokio-1.54.1/src/task/spawn.rs",
                1,
            )]
            .into(),
        );
        let stacks = assemble(&group(&traces), &sites, &table);
        assert_eq!(stacks.len(), 2, "{stacks:#?}");

        let traced = &stacks[0];
        let shown: Vec<String> = traced
            .stack
            .iter()
            .flat_map(|entry| entry.shown())
            .map(|frame| format!("{} {}:{}", frame.function, frame.file, frame.line))
            .collect();
        assert_eq!(
            shown,
            vec![
                "poll tokio-1.54.1/src/sync/batch_semaphore.rs:642".to_owned(),
                "reserve_inner tokio-1.54.1/src/sync/mpsc/bounded.rs:1280".to_owned(),
                "app::job::{{closure}} src/app.rs:7".to_owned(),
                format!("created by app::spawner {file}:{}", site.line()),
            ]
        );
        assert_eq!(traced.wait, "chan send");
        assert_eq!(
            (traced.tasks.clone(), traced.count),
            (vec![traces[0].task], 1)
        );
        assert_eq!(traced.spawned, Some(9), "the site's spawns");
        assert_eq!(traced.spawner, Some(0x60), "where the spawner spawned");
        assert!(
            traced.root_inlined,
            "app::job is inlined into the tracer's poll"
        );

        let untraced = &stacks[1];
        assert_eq!((untraced.count, untraced.wait), (2, "untraced"));
        assert!(untraced.tasks.is_empty());
        assert_eq!(untraced.spawned, Some(9));
        assert_eq!(untraced.stack.len(), 1);
        assert_eq!(
            &*untraced.stack[0].frames[0].function,
            "created by app::spawner"
        );
    }

    /// With full debug info `trace_leaf` is inlined into the future that awaits (and a closure
    /// of it is the frame below): the shared entry shows only what is above `trace_leaf`.
    #[test]
    fn a_trace_leaf_inlined_into_the_awaiting_future_is_cut_inside_its_entry() {
        let table = frames(&[
            (
                0x10,
                &[(
                    "tokio::runtime::task::trace::trace_leaf::{{closure}}",
                    "tokio-1.54.1/src/runtime/task/trace/mod.rs",
                    290,
                )],
            ),
            (
                0x20,
                &[
                    (
                        "tokio::runtime::task::trace::Context::try_with_current",
                        "tokio-1.54.1/src/runtime/task/trace/mod.rs",
                        150,
                    ),
                    (
                        "tokio::runtime::task::trace::trace_leaf",
                        "tokio-1.54.1/src/runtime/task/trace/mod.rs",
                        300,
                    ),
                    (
                        "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
                        "tokio-1.54.1/src/sync/batch_semaphore.rs",
                        642,
                    ),
                ],
            ),
            (0x30, &[("app::job::{{closure}}", "src/app.rs", 7)]),
        ]);
        let (stack, root_inlined) = traced_stack(&[0x11, 0x21, 0x31], &table);
        assert!(!root_inlined, "no tracer's poll here to cut");
        let shown: Vec<&str> = stack
            .iter()
            .flat_map(|entry| entry.shown())
            .map(|frame| &*frame.function)
            .collect();
        assert_eq!(
            shown,
            [
                "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
                "app::job::{{closure}}"
            ]
        );
        // The address stays the awaiting future's: pprof's `list` still finds its line.
        assert_eq!(stack[0].address, 0x20);
    }

    #[test]
    fn a_task_parked_in_two_awaits_shows_the_same_one_whatever_order_they_were_reached_in() {
        let site = here();
        let trace = |stacks: Vec<Vec<u64>>| TaskTrace {
            task: known(Some(1), 1, 1),
            spawned_at: site,
            traced: Traced::Parked(stacks),
        };
        let traces = [
            trace(vec![vec![0x31, 0x41], vec![0x21, 0x41]]),
            trace(vec![vec![0x21, 0x41], vec![0x31, 0x41]]),
        ];
        let groups = group(&traces);
        assert_eq!(groups.len(), 1, "{groups:#?}");
        assert_eq!(parked_stack(groups[0].traced), [0x21, 0x41]);
    }

    #[test]
    fn a_site_whose_spawner_cannot_be_named_is_shown_by_file_and_line() {
        let site = here();
        let sites = vec![SiteCount {
            site,
            alive: 4,
            spawned: 4,
            spawner: &[],
        }];
        let stacks = assemble(&[], &sites, &FramesByAddress::default());
        assert_eq!(stacks.len(), 1);
        let frame = &stacks[0].stack[0].frames[0];
        assert_eq!(
            &*frame.function,
            format!("created by {}:{}", source_path(site.file()), site.line())
        );
        assert_eq!(total(&stacks), 4);
    }

    #[test]
    fn busy_and_unpolled_tasks_show_their_spawn_site_and_state() {
        let site = here();
        let traces = vec![
            TaskTrace {
                task: known(Some(1), 5, 0),
                spawned_at: site,
                traced: Traced::Running,
            },
            TaskTrace {
                task: known(None, 0, 0),
                spawned_at: site,
                traced: Traced::Runnable,
            },
        ];
        let stacks = assemble(&group(&traces), &[], &FramesByAddress::default());
        let waits: Vec<&str> = stacks.iter().map(|task| task.wait).collect();
        assert_eq!(waits, vec!["running", "runnable"]);
        assert!(stacks.iter().all(|task| task.stack.len() == 1));
    }

    fn task(id: u64, addresses: &[u64], function: &str) -> TaskStack {
        TaskStack {
            tasks: vec![known(Some(id), 10 * id, id)],
            count: 1,
            stack: addresses
                .iter()
                .map(|&address| StackEntry {
                    address,
                    frames: vec![Frame::new(function, "src/x.rs", 1)].into(),
                    skip: 0,
                })
                .collect(),
            wait: "chan send",
            spawned: Some(12),
            ..TaskStack::default()
        }
    }

    /// Each sample's value, string labels and numeric labels (with units).
    fn samples(profile: &Profile) -> Vec<(i64, Vec<String>)> {
        let name = |index: i64| profile.string_table[index as usize].as_str();
        profile
            .sample
            .iter()
            .map(|sample| {
                let labels = sample
                    .label
                    .iter()
                    .map(|label| match label.num_unit {
                        0 => format!("{}={}", name(label.key), name(label.str)),
                        unit => format!("{}={} {}", name(label.key), label.num, name(unit)),
                    })
                    .collect();
                (sample.value[0], labels)
            })
            .collect()
    }

    #[test]
    fn the_profile_counts_tasks_per_distinct_stack_and_age_bucket() {
        let mut untraced = task(0, &[3], "b");
        untraced.tasks.clear();
        untraced.count = 5;
        untraced.spawned = None;
        // Ages 10 s and 20 s: buckets 13 and 17, apart.
        let tasks = vec![task(1, &[1, 2], "a"), task(2, &[1, 2], "a"), untraced];
        let profile = build_profile(&tasks);
        let name = |index: i64| profile.string_table[index as usize].as_str();
        assert_eq!(name(profile.sample_type[0].r#type), "goroutine");
        assert_eq!(name(profile.sample_type[0].unit), "count");
        assert_eq!(
            samples(&profile),
            vec![
                (5, vec!["wait=chan send".to_owned()]),
                (
                    1,
                    vec![
                        "wait=chan send".to_owned(),
                        "age=10 seconds".to_owned(),
                        "parked=1 seconds".to_owned(),
                        "spawned=12 count".to_owned(),
                    ]
                ),
                (
                    1,
                    vec![
                        "wait=chan send".to_owned(),
                        "age=20 seconds".to_owned(),
                        "parked=2 seconds".to_owned(),
                        "spawned=12 count".to_owned(),
                    ]
                ),
            ]
        );
    }

    #[test]
    fn ages_fall_in_four_buckets_per_octave() {
        let bucket = |seconds: f64| age_bucket(Duration::from_secs_f64(seconds));
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.18), 0);
        assert_eq!(bucket(0.2), 1);
        assert_eq!(bucket(1.0), 4);
        assert_eq!(bucket(3.0), 8);
        assert_eq!(bucket(62.9), 23);
        assert_eq!(bucket(63.0), 24);
        assert_eq!(bucket(3600.0), 47);
    }

    #[test]
    fn ten_thousand_tasks_of_one_leak_make_a_few_dozen_samples_with_mean_ages() {
        // One task spawned every 0.36 s for an hour, each parked since its spawn.
        let mut leak = task(1, &[1, 2], "leak");
        leak.tasks = (0..10_000u64)
            .map(|k| Task {
                id: Some(k + 1),
                parent: Some(1),
                age: Duration::from_millis(k * 360),
                parked: Duration::from_millis(k * 360),
            })
            .collect();
        leak.count = 10_000;
        let profile = build_profile(&[leak]);
        let samples = samples(&profile);
        assert!(samples.len() <= 50, "{} samples", samples.len());
        assert_eq!(samples.iter().map(|(n, _)| n).sum::<i64>(), 10_000);
        let ages: Vec<i64> = samples
            .iter()
            .map(|(_, labels)| {
                let age = labels.iter().find_map(|l| l.strip_prefix("age=")).unwrap();
                age.trim_end_matches(" seconds").parse().unwrap()
            })
            .collect();
        assert!(ages.windows(2).all(|pair| pair[0] <= pair[1]), "{ages:?}");
        assert!(*ages.last().unwrap() > 3000, "{ages:?}");
        for (_, labels) in &samples {
            let age = labels.iter().find(|l| l.starts_with("age=")).unwrap();
            let parked = labels.iter().find(|l| l.starts_with("parked=")).unwrap();
            assert_eq!(age["age=".len()..], parked["parked=".len()..]);
        }
    }
}
