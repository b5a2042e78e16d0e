//! The task profile, built from what [`super::sites`] counted and [`super::roots`] traced: pure
//! functions from raw addresses, spawn-site counts and symbolised frames to a goroutine-style
//! pprof profile and Go's text forms.
//!
//! Each sample is one distinct stack, its value the number of tasks there: for a traced task, the
//! frames from the tokio leaf it waits in up to its root future, labelled with what it waits for;
//! for the rest (tasks spawned by libraries, or busy right now), the spawn site alone. Every stack
//! ends, root-most, in a `created by` frame naming the function that spawned the task at its
//! `file:line`, as Go's goroutine profile does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::Location;
use std::sync::Arc;

use leakfinder_pprof::conventions::CREATED_BY;

use super::roots::{TaskTrace, Traced};
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
#[derive(Debug, Clone)]
pub struct TaskStack {
    /// tokio's ids of the traced tasks here that have been polled.
    pub ids: Vec<u64>,
    /// How many tasks this is.
    pub count: u64,
    /// The stack, leaf first, ending in the `created by` frame.
    pub stack: Vec<StackEntry>,
    /// What the tasks wait for.
    pub wait: &'static str,
}

/// Traced tasks with the same spawn site, state and raw stack: traced once each, assembled once.
#[derive(Debug, Clone)]
pub struct TraceGroup<'a> {
    /// Where they were spawned.
    pub spawned_at: &'static Location<'static>,
    /// What the traces saw (the same for all).
    pub traced: &'a Traced,
    /// Their ids, where known.
    pub ids: Vec<u64>,
    /// How many.
    pub count: u64,
}

/// Groups traces that are the same but for the task: thousands of tasks parked at one await
/// are symbolised and assembled once.
pub fn group(traces: &[TaskTrace]) -> Vec<TraceGroup<'_>> {
    let mut index: HashMap<(usize, std::mem::Discriminant<Traced>, &[u64]), usize> = HashMap::new();
    let mut groups: Vec<TraceGroup<'_>> = Vec::new();
    for trace in traces {
        let stack = match &trace.traced {
            Traced::Parked(stacks) => stacks.first().map_or(&[][..], Vec::as_slice),
            _ => &[],
        };
        let key = (
            std::ptr::from_ref(trace.spawned_at) as usize,
            std::mem::discriminant(&trace.traced),
            stack,
        );
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(TraceGroup {
                spawned_at: trace.spawned_at,
                traced: &trace.traced,
                ids: Vec::new(),
                count: 0,
            });
            groups.len() - 1
        });
        let group = &mut groups[at];
        group.count += 1;
        group.ids.extend(trace.id);
    }
    groups
}

/// The addresses to symbolise: each group's stack, and each site's spawner.
pub fn lookup_addresses<'a>(
    groups: &'a [TraceGroup<'a>],
    sites: &'a [SiteCount],
) -> impl Iterator<Item = u64> + 'a {
    let traced = groups.iter().flat_map(|group| match group.traced {
        Traced::Parked(stacks) => stacks.first().map_or(&[][..], Vec::as_slice),
        _ => &[],
    });
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

/// The function that contains a spawn site, read from its spawner's frames: the frame at the
/// site's file and line.
fn spawner_name(key: &SiteKey, spawner: &[u64], frames: &FramesByAddress) -> Option<Arc<str>> {
    spawner
        .iter()
        .filter_map(|&address| frames.get(&caller(address)))
        .flat_map(|frames| frames.iter())
        .find(|frame| frame.line == key.line && same_file(&frame.file, &key.file))
        .map(|frame| Arc::clone(&frame.function))
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
/// task's own future, the tracer's frames cut.
fn traced_stack(stack: &[u64], frames: &FramesByAddress) -> Vec<StackEntry> {
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
            entries.push(StackEntry {
                frames: last.frames[..cut].into(),
                ..last
            });
        }
    }
    entries
}

/// Assembles the task profile's stacks: every traced task, then, per spawn site, the alive tasks
/// that were not traced there.
pub fn assemble(
    groups: &[TraceGroup<'_>],
    sites: &[SiteCount],
    frames: &FramesByAddress,
) -> Vec<TaskStack> {
    let mut by_site: HashMap<SiteKey, (u64, Option<Arc<str>>, u64)> = HashMap::new();
    for site in sites {
        let key = SiteKey::of(site.site);
        let entry = by_site
            .entry(key)
            .or_insert_with(|| (0, None, std::ptr::from_ref(site.site) as u64));
        entry.0 += site.alive;
        if entry.1.is_none() {
            entry.1 = spawner_name(&SiteKey::of(site.site), site.spawner, frames);
        }
    }
    let mut stacks = Vec::with_capacity(groups.len() + by_site.len());
    for group in groups {
        let key = SiteKey::of(group.spawned_at);
        let (alive, spawner, address) = by_site
            .entry(key.clone())
            .or_insert_with(|| (0, None, std::ptr::from_ref(group.spawned_at) as u64));
        *alive = alive.saturating_sub(group.count);
        let (mut stack, wait) = match group.traced {
            Traced::Parked(raw) => {
                let stack = raw
                    .first()
                    .map(|raw| traced_stack(raw, frames))
                    .unwrap_or_default();
                let flat: Vec<&Frame> = stack.iter().flat_map(|entry| entry.shown()).collect();
                let wait = if flat.is_empty() {
                    "non-tokio wait"
                } else {
                    wait_kind(&flat)
                };
                (stack, wait)
            }
            Traced::Running => (Vec::new(), "running"),
            Traced::Runnable => (Vec::new(), "runnable"),
            Traced::Untraceable => (Vec::new(), "untraced"),
        };
        stack.push(created_by(&key, spawner.as_deref(), *address));
        stacks.push(TaskStack {
            ids: group.ids.clone(),
            count: group.count,
            stack,
            wait,
        });
    }
    for (key, (alive, spawner, address)) in by_site {
        if alive > 0 {
            stacks.push(TaskStack {
                ids: Vec::new(),
                count: alive,
                stack: vec![created_by(&key, spawner.as_deref(), address)],
                wait: "untraced",
            });
        }
    }
    stacks
}

/// What identifies a shown stack: each entry's address, trim and frame count, and the wait.
type ShownStack<'a> = (Vec<(u64, usize, usize)>, &'a str);

/// Tasks grouped by identical stack and wait, most numerous first.
fn grouped(tasks: &[TaskStack]) -> Vec<(u64, &TaskStack)> {
    let mut groups: HashMap<ShownStack<'_>, (u64, &TaskStack)> = HashMap::new();
    for task in tasks {
        let key = (
            task.stack
                .iter()
                .map(|entry| (entry.address, entry.skip, entry.frames.len()))
                .collect(),
            task.wait,
        );
        groups.entry(key).or_insert((0, task)).0 += task.count;
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.ids.first().cmp(&b.1.ids.first())));
    groups
}

/// The total number of tasks.
pub fn total(tasks: &[TaskStack]) -> u64 {
    tasks.iter().map(|task| task.count).sum()
}

/// The `goroutine`/`count` profile: one sample per distinct stack, labelled with its wait.
pub fn build_profile(tasks: &[TaskStack]) -> Profile {
    let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
    builder.comment(
        "tokio tasks: one goroutine = one task; stacks traced without pausing the runtime",
    );
    for (count, task) in grouped(tasks) {
        builder.add_sample(&task.stack, vec![count as i64], &[("wait", task.wait)]);
    }
    builder.build()
}

fn write_frames(out: &mut String, task: &TaskStack) {
    for frame in task.stack.iter().flat_map(|entry| entry.shown()) {
        let _ = writeln!(out, "{}\n\t{}:{}", frame.function, frame.file, frame.line);
    }
}

/// The text forms of `?debug=1` (counts per distinct stack) and `?debug=2` (one entry per task,
/// and one per group of untraced tasks), modelled on Go's.
pub fn render_text(tasks: &[TaskStack], debug: u8) -> String {
    let mut out = String::new();
    if debug >= 2 {
        // One entry per traced task, by id, as Go prints every goroutine; then the tasks known
        // only by count (untraced, or not yet polled), one entry per stack.
        let mut each: Vec<(u64, &TaskStack)> = tasks
            .iter()
            .flat_map(|task| task.ids.iter().map(move |&id| (id, task)))
            .collect();
        each.sort_by_key(|&(id, _)| id);
        for (id, task) in each {
            let _ = writeln!(out, "task {id} [{}]:", task.wait);
            write_frames(&mut out, task);
            out.push('\n');
        }
        for task in tasks {
            let rest = task.count - task.ids.len() as u64;
            if rest > 0 {
                let _ = writeln!(out, "{rest} tasks [{}]:", task.wait);
                write_frames(&mut out, task);
                out.push('\n');
            }
        }
        return out;
    }
    let _ = writeln!(out, "task profile: total {}", total(tasks));
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
            id: Some(7),
            spawned_at: site,
            traced: parked(&[0x10, 0x20, 0x30, 0x40, 0x50]),
        }];
        let sites = vec![SiteCount {
            site,
            alive: 3,
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
        assert_eq!((traced.ids.as_slice(), traced.count), (&[7][..], 1));

        let untraced = &stacks[1];
        assert_eq!((untraced.count, untraced.wait), (2, "untraced"));
        assert!(untraced.ids.is_empty());
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
        let stack = traced_stack(&[0x11, 0x21, 0x31], &table);
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
    fn a_site_whose_spawner_cannot_be_named_is_shown_by_file_and_line() {
        let site = here();
        let sites = vec![SiteCount {
            site,
            alive: 4,
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
                id: Some(1),
                spawned_at: site,
                traced: Traced::Running,
            },
            TaskTrace {
                id: None,
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
            ids: vec![id],
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
        }
    }

    #[test]
    fn the_profile_counts_tasks_per_distinct_stack() {
        let mut untraced = task(0, &[3], "b");
        untraced.ids.clear();
        untraced.count = 5;
        let tasks = vec![task(1, &[1, 2], "a"), task(2, &[1, 2], "a"), untraced];
        let profile = build_profile(&tasks);
        let mut values: Vec<i64> = profile
            .sample
            .iter()
            .map(|sample| sample.value[0])
            .collect();
        values.sort_unstable();
        assert_eq!(values, vec![2, 5]);
        let name = |index: i64| profile.string_table[index as usize].as_str();
        assert_eq!(name(profile.sample_type[0].r#type), "goroutine");
        assert_eq!(name(profile.sample_type[0].unit), "count");
        assert_eq!(name(profile.sample[0].label[0].key), "wait");

        let text = render_text(&tasks, 1);
        assert!(
            text.starts_with("task profile: total 7\n5 @ 0x3\n"),
            "{text}"
        );
        let per_task = render_text(&tasks, 2);
        assert!(
            per_task.starts_with("task 1 [chan send]:\na\n\tsrc/x.rs:1\n"),
            "{per_task}"
        );
        assert!(
            per_task.contains("\n5 tasks [chan send]:\nb\n"),
            "{per_task}"
        );
        assert_eq!(per_task.matches("task ").count(), 2, "{per_task}");
    }
}
