//! Go's text forms of the task profile, written from the same stacks as the protobuf profile
//! (pure): `?debug=1`, Go's legacy count format, which `go tool pprof` parses; and `?debug=2`,
//! Go's goroutine dump, which tools built for Go's dumps (panicparse) read.
//!
//! `?debug=1`, as Go's `runtime/pprof` writes it (`printCountProfile`; tabs shown as spaces):
//! ```text
//! goroutine profile: total 305
//! 300 @ 0x55d0c1a2b3c5 0x55d0c1a2b4d6 0x55d0c1f00011
//! # labels: {"wait":"chan send"}
//! #    0x55d0c1a2b4d5    leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}::{{closure}}+0x1a5    src/leaks/channel.rs:66
//! #    0x55d0c1f00010    created by leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}    src/leaks/channel.rs:58
//! ```
//! One record per distinct stack and wait, most tasks first, each `N @` and its return
//! addresses: one more than the protobuf profile's location addresses, which `go tool pprof`
//! subtracts back, so that it reads the same stacks and counts as from the protobuf profile (the
//! `created by` frame's address included, as that profile has it). The labels line carries the
//! `wait` label, as Go's carries a goroutine's labels. Frame lines give each address's frames as
//! `function+offset` and `file:line`, aligned by tabs as Go's `text/tabwriter` aligns them; the
//! runtime's frames at the leaf are left out of them (not out of the `@` line), as Go leaves out
//! `runtime.*` there.
//!
//! `?debug=2`, as Go's `runtime.Stack` writes every goroutine (the file lines start with a tab):
//! ```text
//! goroutine 903 [chan send, 5 minutes]:
//! leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}::{{closure}}(...)
//!     src/leaks/channel.rs:66 +0x1a6
//! created by leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}} in goroutine 12
//!     src/leaks/channel.rs:58 +0x2b3
//! ```
//! Every task gets an entry, in id order, a blank line between two; no counts. The header's
//! minutes are the time the task has been parked, shown from 1 minute up as Go shows a
//! goroutine's wait. Frames are `function(...)` (there are no arguments to print), then the file
//! and line, and for a frame not inlined its offset in its function. The runtime's frames
//! (tokio's, the standard library's and this tracer's, [`is_runtime`]) are hidden wherever they
//! are, as Go hides `runtime.*`, unless that would hide every frame; more than 100 frames shown
//! are elided in the middle as Go elides them. A task whose stack is not known (counted by spawn
//! site only, being polled, not yet polled) has Go's line for a stack it cannot read, `goroutine
//! running on other thread; stack unavailable`. `created by` names the spawning function and, when
//! a task spawned it, that task's id (`in goroutine 12`); Go too leaves it out when no goroutine
//! spawned.
//!
//! Ids: a task root's id is tokio's task id. Tasks without one (counted by spawn site only, or
//! not polled yet) get a synthetic id from [`SYNTHETIC_IDS`] up: a band of a billion ids per
//! spawn site, chosen by a hash of its `file:line`, so that a site's tasks keep their ids from one
//! dump to the next while their number does not change. tokio numbers tasks from 1 in spawn
//! order, process-wide, so its ids reach that range only after 9×10^17 spawns (28 years at a
//! billion spawns a second). Every id has at most 18 digits, which readers of Go's dumps parse.
//!
//! With [`TextForm::runtime`] (`?debug=2&runtime=1`) both forms show the runtime's frames too.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use leakfinder_pprof::conventions::CREATED_BY;
use leakfinder_pprof::{Frame, StackEntry};

use super::profile::{TaskStack, grouped, total};
use super::roots::Task;

/// The first synthetic id: tasks whose tokio id is unknown are numbered from here.
pub const SYNTHETIC_IDS: u64 = 900_000_000_000_000_000;
/// Synthetic ids per spawn site.
const SITE_IDS: u64 = 1_000_000_000;
/// Spawn-site bands above [`SYNTHETIC_IDS`]: the last id is 999 999 999 999 999 999.
const SITE_BANDS: u64 = 100_000_000;
/// Frames Go prints before and after an elision (`tracebackInnerFrames`, `...OuterFrames`).
const INNER_FRAMES: usize = 50;
const OUTER_FRAMES: usize = 50;
/// The paths of the runtime's functions (see [`is_runtime`]).
const RUNTIME: &[&str] = &[
    "tokio::",
    "std::",
    "core::",
    "alloc::",
    "leakfinder_profiling::tasks::roots::",
];
/// Go's line for a goroutine whose stack it cannot read.
const STACK_UNAVAILABLE: &str = "\tgoroutine running on other thread; stack unavailable\n";

/// Which text form to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextForm {
    /// 1: counts per distinct stack (Go's legacy count format); 2: every task (Go's dump).
    pub debug: u8,
    /// Show the runtime's frames too (tokio's, the standard library's, this tracer's).
    pub runtime: bool,
}

/// The entry address of the function holding each address, for the frames' `+0x` offsets
/// ([`crate::symbols::Symbolizer::function_entries`]); an address missing has no offset shown.
pub type FunctionEntries = HashMap<u64, u64>;

/// The addresses whose function entries the text forms use: each stack's frames' (not its
/// `created by`, whose address is no code's) and its spawner's.
pub fn entry_addresses(tasks: &[TaskStack]) -> Vec<u64> {
    let mut addresses: Vec<u64> = tasks
        .iter()
        .flat_map(|task| {
            let frames = &task.stack[..task.stack.len().saturating_sub(1)];
            frames.iter().map(|entry| entry.address).chain(task.spawner)
        })
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// Whether a frame, by its function's name, is the runtime's: tokio's, the standard library's
/// (`std`, `core`, `alloc`) or this tracer's (the task roots' polls), which Go's forms hide as Go
/// hides `runtime.*`. Trait methods count by their type (`<tokio::sync::Acquire as
/// core::future::Future>::poll` is tokio's; `<app::Job as core::future::Future>::poll` is not).
pub fn is_runtime(function: &str) -> bool {
    let path = function.trim_start_matches('<');
    let path = path
        .strip_prefix('&')
        .map_or(path, |path| path.strip_prefix("mut ").unwrap_or(path));
    RUNTIME.iter().any(|krate| path.starts_with(krate))
}

/// The text form `form` of the task profile.
pub fn render_text(tasks: &[TaskStack], form: TextForm, entries: &FunctionEntries) -> String {
    if form.debug >= 2 {
        goroutine_dump(tasks, form.runtime, entries)
    } else {
        count_profile(tasks, form.runtime, entries)
    }
}

/// A goroutine's header as Go prints it: its wait, and from 1 minute up, how long it has waited.
pub fn goroutine_header(id: u64, wait: &str, parked: Duration) -> String {
    let minutes = parked.as_secs() / 60;
    if minutes >= 1 {
        format!("goroutine {id} [{wait}, {minutes} minutes]:\n")
    } else {
        format!("goroutine {id} [{wait}]:\n")
    }
}

/// The frames of a stack, without `created by`: each with its entry's address and whether it is
/// the outermost (not inlined) frame at that address.
fn frames_of(task: &TaskStack) -> Vec<(&Frame, u64, bool)> {
    let body = &task.stack[..task.stack.len().saturating_sub(1)];
    let mut frames = Vec::new();
    for (index, entry) in body.iter().enumerate() {
        let shown = entry.shown();
        let cut = task.root_inlined && index + 1 == body.len();
        for (depth, frame) in shown.iter().enumerate() {
            frames.push((frame, entry.address, depth + 1 == shown.len() && !cut));
        }
    }
    frames
}

/// The `created by` entry of a stack: the spawning function (or the site's `file:line`), file
/// and line.
fn creator(task: &TaskStack) -> Option<&Frame> {
    let frame = task.stack.last()?.shown().first()?;
    frame.function.starts_with(CREATED_BY).then_some(frame)
}

/// Frames of a stack in the dump, and its `created by` lines without the `in goroutine` part:
/// shared by every task of the stack.
struct DumpedStack {
    frames: String,
    creator: String,
    creator_place: String,
}

fn dumped_stack(task: &TaskStack, runtime: bool, entries: &FunctionEntries) -> DumpedStack {
    let all = frames_of(task);
    let kept: Vec<_> = if runtime {
        all.clone()
    } else {
        all.iter()
            .copied()
            .filter(|(frame, ..)| !is_runtime(&frame.function))
            .collect()
    };
    // As Go: if hiding the runtime's frames leaves none, show them all.
    let kept = if kept.is_empty() { all } else { kept };
    let mut frames = String::new();
    let write_frame = |frames: &mut String, &(frame, address, outermost): &(&Frame, u64, bool)| {
        let file = if frame.file.is_empty() {
            "??"
        } else {
            &frame.file
        };
        let _ = write!(frames, "{}(...)\n\t{file}:{}", frame.function, frame.line);
        // Go's offset is from the return address (the entry's address is one before it).
        if outermost && let Some(&start) = entries.get(&address) {
            let _ = write!(frames, " +{:#x}", (address + 1).saturating_sub(start));
        }
        frames.push('\n');
    };
    if kept.is_empty() {
        frames.push_str(STACK_UNAVAILABLE);
    } else if kept.len() > INNER_FRAMES + OUTER_FRAMES {
        for frame in &kept[..INNER_FRAMES] {
            write_frame(&mut frames, frame);
        }
        let elided = kept.len() - INNER_FRAMES - OUTER_FRAMES;
        let _ = writeln!(frames, "...{elided} frames elided...");
        for frame in &kept[kept.len() - OUTER_FRAMES..] {
            write_frame(&mut frames, frame);
        }
    } else {
        for frame in &kept {
            write_frame(&mut frames, frame);
        }
    }
    let (creator, creator_place) = match creator(task) {
        Some(frame) => {
            let mut place = format!("\t{}:{}", frame.file, frame.line);
            if let Some(address) = task.spawner
                && let Some(&start) = entries.get(&address)
            {
                let _ = write!(place, " +{:#x}", (address + 1).saturating_sub(start));
            }
            place.push('\n');
            (frame.function[CREATED_BY.len()..].to_owned(), place)
        }
        None => (String::new(), String::new()),
    };
    DumpedStack {
        frames,
        creator,
        creator_place,
    }
}

/// Synthetic ids, a band per spawn site (see the module's docs).
#[derive(Default)]
struct SyntheticIds {
    sites: HashMap<(String, u32), (u64, u64)>,
    bands: HashSet<u64>,
}

impl SyntheticIds {
    fn next(&mut self, file: &str, line: u32) -> u64 {
        let bands = &mut self.bands;
        let (band, next) = self
            .sites
            .entry((file.to_owned(), line))
            .or_insert_with(|| {
                // FNV-1a of `file:line`: the same band in every dump and every run.
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in format!("{file}:{line}").bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
                }
                let mut band = hash % SITE_BANDS;
                while !bands.insert(band) {
                    band = (band + 1) % SITE_BANDS;
                }
                (band, 0)
            });
        let id = SYNTHETIC_IDS + *band * SITE_IDS + (*next).min(SITE_IDS - 1);
        *next += 1;
        id
    }
}

/// `?debug=2`: every task, by id.
fn goroutine_dump(tasks: &[TaskStack], runtime: bool, entries: &FunctionEntries) -> String {
    // Synthetic ids are handed out site by site in a fixed order, so that they do not depend on
    // the order the stacks were assembled in.
    let mut order: Vec<&TaskStack> = tasks.iter().collect();
    order.sort_by_cached_key(|task| {
        let site = creator(task).map(|frame| (frame.file.clone(), frame.line));
        let addresses: Vec<(u64, usize)> = task
            .stack
            .iter()
            .map(|entry| (entry.address, entry.skip))
            .collect();
        (site, task.wait, addresses)
    });
    let mut synthetic = SyntheticIds::default();
    let mut each: Vec<(u64, usize, Option<&Task>)> = Vec::new();
    let mut stacks: Vec<(&TaskStack, DumpedStack)> = Vec::with_capacity(order.len());
    for task in order {
        let stack = stacks.len();
        let (file, line) = creator(task).map_or(("", 0), |frame| (&*frame.file, frame.line));
        for known in &task.tasks {
            let id = known.id.unwrap_or_else(|| synthetic.next(file, line));
            each.push((id, stack, Some(known)));
        }
        for _ in task.tasks.len() as u64..task.count {
            each.push((synthetic.next(file, line), stack, None));
        }
        stacks.push((task, dumped_stack(task, runtime, entries)));
    }
    each.sort_by_key(|&(id, ..)| id);
    let mut out = String::new();
    for (index, (id, stack, known)) in each.into_iter().enumerate() {
        let (task, dumped) = &stacks[stack];
        if index > 0 {
            out.push('\n');
        }
        let parked = known.map_or(Duration::ZERO, |known| known.parked);
        out.push_str(&goroutine_header(id, task.wait, parked));
        out.push_str(&dumped.frames);
        if !dumped.creator_place.is_empty() {
            let _ = write!(out, "created by {}", dumped.creator);
            if let Some(parent) = known.and_then(|known| known.parent) {
                let _ = write!(out, " in goroutine {parent}");
            }
            out.push('\n');
            out.push_str(&dumped.creator_place);
        }
    }
    out
}

/// `?debug=1`: Go's legacy count format.
fn count_profile(tasks: &[TaskStack], runtime: bool, entries: &FunctionEntries) -> String {
    let mut records: Vec<(u64, String, &TaskStack)> = grouped(tasks)
        .into_iter()
        .map(|group| {
            let task = group.first;
            let mut key = String::from("@");
            for entry in located(&task.stack) {
                let _ = write!(key, " {:#x}", entry.address + 1);
            }
            let _ = write!(
                key,
                "\n# labels: {{{}:{}}}",
                go_quote("wait"),
                go_quote(task.wait)
            );
            (group.count, key, task)
        })
        .collect();
    // As Go's `keysByCount`: most tasks first, then by the record's text.
    records.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = format!("goroutine profile: total {}\n", total(tasks));
    for (count, key, task) in records {
        let _ = writeln!(out, "{count} {key}");
        let frames: Vec<(&Frame, u64)> = located(&task.stack)
            .flat_map(|entry| entry.shown().iter().map(|frame| (frame, entry.address)))
            .collect();
        // As Go's `printStackRecord`: the runtime's frames before the first other one are left
        // out, unless that leaves none.
        let first_shown = if runtime {
            0
        } else {
            frames
                .iter()
                .position(|(frame, _)| !is_runtime(&frame.function))
                .unwrap_or(0)
        };
        let lines: Vec<String> = frames[first_shown..]
            .iter()
            .map(|&(frame, address)| match entries.get(&address) {
                Some(&start) => format!(
                    "#\t{address:#x}\t{}+{:#x}\t{}:{}",
                    frame.function,
                    address - start,
                    frame.file,
                    frame.line
                ),
                None => format!(
                    "#\t{address:#x}\t{}\t{}:{}",
                    frame.function, frame.file, frame.line
                ),
            })
            .collect();
        out.push_str(&tabwriter(&lines));
        out.push('\n');
    }
    out
}

/// The entries of a stack that are locations of the protobuf profile (not trimmed to nothing).
fn located(stack: &[StackEntry]) -> impl Iterator<Item = &StackEntry> {
    stack.iter().filter(|entry| !entry.shown().is_empty())
}

/// A string as Go's `%q` writes it, for the labels line: quoted, `"` and `\` escaped, control
/// characters as escapes.
fn go_quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            character if character.is_control() => {
                let _ = write!(quoted, "\\x{:02x}", u32::from(character));
            }
            character => quoted.push(character),
        }
    }
    quoted.push('"');
    quoted
}

/// Go's `text/tabwriter` as `printCountProfile` sets it up (`NewWriter(w, 1, 8, 1, '\t', 0)`),
/// for a block of lines: cells end at tabs, and each column of consecutive lines that have it is
/// padded with tabs to one width (its widest cell plus one, rounded up to a tab stop of 8). A
/// line's last cell is never padded. Every line gets its newline.
fn tabwriter(lines: &[String]) -> String {
    let cells: Vec<Vec<&str>> = lines
        .iter()
        .map(|line| line.split('\t').collect())
        .collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(&cells, &mut widths, 0, cells.len(), &mut out);
    out
}

/// Go's `(*Writer).format`: lines `line0..line1`, whose columns before `widths.len()` are sized.
fn format_block(
    cells: &[Vec<&str>],
    widths: &mut Vec<usize>,
    line0: usize,
    line1: usize,
    out: &mut String,
) {
    const MIN_WIDTH: usize = 1;
    const PADDING: usize = 1;
    let column = widths.len();
    let mut printed = line0;
    let mut this = line0;
    while this < line1 {
        if column + 1 >= cells[this].len() {
            this += 1;
            continue;
        }
        // A block of lines that have a cell in this column (not their last): one width.
        write_lines(cells, widths, printed, this, out);
        let start = this;
        let mut width = MIN_WIDTH;
        while this < line1 && column + 1 < cells[this].len() {
            width = width.max(cells[this][column].chars().count() + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(cells, widths, start, this, out);
        widths.pop();
        printed = this;
    }
    write_lines(cells, widths, printed, line1, out);
}

/// Go's `(*Writer).writeLines` with tab padding.
fn write_lines(
    cells: &[Vec<&str>],
    widths: &[usize],
    line0: usize,
    line1: usize,
    out: &mut String,
) {
    const TAB_WIDTH: usize = 8;
    for line in &cells[line0..line1] {
        for (column, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(&width) = widths.get(column) {
                let text = cell.chars().count();
                let cell_width = width.div_ceil(TAB_WIDTH) * TAB_WIDTH;
                let tabs = (cell_width - text).div_ceil(TAB_WIDTH);
                out.extend(std::iter::repeat_n('\t', tabs));
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_shows_minutes_parked_from_one_minute_up_as_go_does() {
        let header = |seconds| goroutine_header(903, "chan send", Duration::from_secs(seconds));
        assert_eq!(header(0), "goroutine 903 [chan send]:\n");
        assert_eq!(header(59), "goroutine 903 [chan send]:\n");
        assert_eq!(header(60), "goroutine 903 [chan send, 1 minutes]:\n");
        assert_eq!(
            header(5 * 60 + 59),
            "goroutine 903 [chan send, 5 minutes]:\n"
        );
        assert_eq!(
            header(3 * 3600),
            "goroutine 903 [chan send, 180 minutes]:\n"
        );
    }

    /// Lines of Go 1.26's `net/http/pprof` `goroutine?debug=1`, as it wrote them: the tabs are
    /// `text/tabwriter`'s.
    const GO_BLOCK: &str = "\
#\t0x48af04\tinternal/sync.runtime_SemacquireMutex+0x24\t/usr/local/go/src/runtime/sema.go:95
#\t0x498c7c\tinternal/sync.(*Mutex).lockSlow+0x15c\t\t/usr/local/go/src/internal/sync/mutex.go:149
#\t0x670e4d\tinternal/sync.(*Mutex).Lock+0x2d\t\t/usr/local/go/src/internal/sync/mutex.go:70
#\t0x670e33\tsync.(*Mutex).Lock+0x13\t\t\t\t/usr/local/go/src/sync/mutex.go:46
#\t0x670e32\tmain.waiter+0x12\t\t\t\t/tmp/gosample/main.go:17
";

    #[test]
    fn frame_lines_are_aligned_as_go_s_tabwriter_aligns_them() {
        let cells = [
            (
                "0x48af04",
                "internal/sync.runtime_SemacquireMutex+0x24",
                "/usr/local/go/src/runtime/sema.go:95",
            ),
            (
                "0x498c7c",
                "internal/sync.(*Mutex).lockSlow+0x15c",
                "/usr/local/go/src/internal/sync/mutex.go:149",
            ),
            (
                "0x670e4d",
                "internal/sync.(*Mutex).Lock+0x2d",
                "/usr/local/go/src/internal/sync/mutex.go:70",
            ),
            (
                "0x670e33",
                "sync.(*Mutex).Lock+0x13",
                "/usr/local/go/src/sync/mutex.go:46",
            ),
            ("0x670e32", "main.waiter+0x12", "/tmp/gosample/main.go:17"),
        ];
        let lines: Vec<String> = cells
            .iter()
            .map(|(address, function, place)| format!("#\t{address}\t{function}\t{place}"))
            .collect();
        assert_eq!(tabwriter(&lines), GO_BLOCK);
        // Lines with fewer cells end a column's block, as in Go.
        let ragged = [
            "a\tbb\tc".to_owned(),
            "x".to_owned(),
            "aaaaaaaaa\tb\tc".to_owned(),
        ];
        assert_eq!(tabwriter(&ragged), "a\tbb\tc\nx\naaaaaaaaa\tb\tc\n");
        assert_eq!(go_quote("chan \"send\"\n"), "\"chan \\\"send\\\"\\n\"");
    }

    #[test]
    fn the_runtime_is_tokio_the_standard_library_and_the_tracer() {
        for runtime in [
            "tokio::sync::mpsc::bounded::Sender<T>::send::{{closure}}",
            "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
            "<core::pin::Pin<P> as core::future::future::Future>::poll",
            "<&mut F as core::future::future::Future>::poll",
            "std::panicking::try",
            "alloc::boxed::Box<T>::new",
            "leakfinder_profiling::tasks::roots::poll_traced",
            "<leakfinder_profiling::tasks::roots::TaskRoot<F> as core::future::future::Future>::poll",
        ] {
            assert!(
                is_runtime(runtime) != runtime.starts_with("<&mut F"),
                "{runtime}"
            );
        }
        for user in [
            "leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}",
            "<leakfinder::Job as core::future::future::Future>::poll",
            "tokio_util::sync::cancellation_token::WaitForCancellationFuture::poll",
            "created by leakfinder::main",
            "leakfinder_profiling::Profilers::tasks::{{closure}}",
            "0x1234",
        ] {
            assert!(!is_runtime(user), "{user}");
        }
    }

    fn entry(address: u64, frames: &[(&str, &str, u32)]) -> StackEntry {
        StackEntry {
            address,
            frames: frames
                .iter()
                .map(|&(function, file, line)| Frame::new(function, file, line))
                .collect::<Vec<_>>()
                .into(),
            skip: 0,
        }
    }

    fn task(id: Option<u64>, parent: Option<u64>, parked: u64) -> Task {
        Task {
            id,
            parent,
            age: Duration::from_secs(parked + 1),
            parked: Duration::from_secs(parked),
        }
    }

    /// Two blocked senders (one parked 6 minutes), a task not polled yet, and two tasks known by
    /// their spawn site only.
    fn stacks() -> Vec<TaskStack> {
        let blocked = vec![
            entry(
                0x1000,
                &[
                    (
                        "tokio::sync::batch_semaphore::Semaphore::acquire",
                        "tokio-1.54.1/src/sync/batch_semaphore.rs",
                        642,
                    ),
                    (
                        "tokio::sync::mpsc::bounded::Sender<T>::send::{{closure}}",
                        "tokio-1.54.1/src/sync/mpsc/bounded.rs",
                        800,
                    ),
                ],
            ),
            entry(0x2000, &[("app::job::{{closure}}", "src/app.rs", 7)]),
            entry(0x9999, &[("created by app::spawner", "src/app.rs", 3)]),
        ];
        vec![
            TaskStack {
                tasks: vec![task(Some(12), Some(2), 360), task(Some(9), Some(2), 5)],
                count: 2,
                stack: blocked,
                wait: "chan send",
                spawned: Some(4),
                spawner: Some(0x3000),
                root_inlined: true,
            },
            TaskStack {
                tasks: vec![task(None, None, 0)],
                count: 1,
                stack: vec![entry(
                    0x9999,
                    &[("created by app::spawner", "src/app.rs", 3)],
                )],
                wait: "runnable",
                spawned: Some(4),
                spawner: Some(0x3000),
                ..TaskStack::default()
            },
            TaskStack {
                count: 2,
                stack: vec![entry(
                    0x8888,
                    &[("created by hyper::serve", "hyper-1.0/src/server.rs", 40)],
                )],
                wait: "untraced",
                ..TaskStack::default()
            },
        ]
    }

    /// Function entries: the job's function starts 0x1f0 before its return address.
    fn entries() -> FunctionEntries {
        [(0x1000, 0xf00), (0x2000, 0x1e11), (0x3000, 0x2f00)]
            .into_iter()
            .collect()
    }

    #[test]
    fn debug_2_is_go_s_goroutine_dump_with_every_task_by_id() {
        let dump = render_text(
            &stacks(),
            TextForm {
                debug: 2,
                runtime: false,
            },
            &entries(),
        );
        let mut goroutines: Vec<&str> = dump.split("\n\n").collect();
        assert_eq!(goroutines.len(), 5, "{dump}");
        assert_eq!(
            goroutines[0],
            "goroutine 9 [chan send]:\n\
             app::job::{{closure}}(...)\n\
             \tsrc/app.rs:7\n\
             created by app::spawner in goroutine 2\n\
             \tsrc/app.rs:3 +0x101"
        );
        assert!(
            goroutines[1].starts_with("goroutine 12 [chan send, 6 minutes]:\napp::job"),
            "{dump}"
        );
        // The rest have synthetic ids, one band per site; a stack nobody knows is unavailable.
        let ids: Vec<u64> = goroutines[2..]
            .iter()
            .map(|g| g.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(
            ids.iter()
                .all(|id| (SYNTHETIC_IDS..1_000_000_000_000_000_000).contains(id))
        );
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        goroutines.sort_by_key(|g| g.contains("hyper"));
        assert_eq!(
            goroutines[2].split_once(":\n").unwrap().1.trim_end(),
            "\tgoroutine running on other thread; stack unavailable\n\
             created by app::spawner\n\
             \tsrc/app.rs:3 +0x101",
            "{dump}"
        );
        assert!(goroutines[3].contains(" [untraced]:\n\tgoroutine running on other thread"));
        assert!(
            goroutines[4]
                .trim_end()
                .ends_with("created by hyper::serve\n\thyper-1.0/src/server.rs:40")
        );
        assert!(dump.ends_with("\n") && !dump.ends_with("\n\n"), "{dump}");
        assert!(
            !dump.contains("tokio::"),
            "the runtime's frames are hidden: {dump}"
        );
        // The same ids from one dump to the next.
        assert_eq!(
            dump,
            render_text(
                &stacks(),
                TextForm {
                    debug: 2,
                    runtime: false
                },
                &entries()
            )
        );

        let all = render_text(
            &stacks(),
            TextForm {
                debug: 2,
                runtime: true,
            },
            &entries(),
        );
        assert!(
            all.starts_with(
                "goroutine 9 [chan send]:\n\
                 tokio::sync::batch_semaphore::Semaphore::acquire(...)\n\
                 \ttokio-1.54.1/src/sync/batch_semaphore.rs:642\n\
                 tokio::sync::mpsc::bounded::Sender<T>::send::{{closure}}(...)\n\
                 \ttokio-1.54.1/src/sync/mpsc/bounded.rs:800 +0x101\n\
                 app::job::{{closure}}(...)\n\
                 \tsrc/app.rs:7\n"
            ),
            "the outermost frame at an address has its offset, an inlined one not: {all}"
        );
    }

    #[test]
    fn a_stack_of_runtime_frames_only_is_shown_whole_and_a_deep_one_elided() {
        let mut stacks = stacks();
        stacks[0].stack.remove(1);
        let dump = render_text(
            &stacks,
            TextForm {
                debug: 2,
                runtime: false,
            },
            &entries(),
        );
        assert!(
            dump.starts_with("goroutine 9 [chan send]:\ntokio::sync::batch_semaphore"),
            "{dump}"
        );
        let deep: Vec<StackEntry> = (0..130)
            .map(|k| entry(0x10_000 + k, &[("app::recurse", "src/app.rs", k as u32)]))
            .chain(std::iter::once(entry(
                0x9999,
                &[("created by app::main", "src/app.rs", 1)],
            )))
            .collect();
        let deep = vec![TaskStack {
            tasks: vec![task(Some(1), None, 0)],
            count: 1,
            stack: deep,
            wait: "sleep",
            ..TaskStack::default()
        }];
        let dump = render_text(
            &deep,
            TextForm {
                debug: 2,
                runtime: false,
            },
            &FunctionEntries::new(),
        );
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines[101], "...30 frames elided...", "{dump}");
        assert_eq!(lines[100], "\tsrc/app.rs:49");
        assert_eq!(lines[102], "app::recurse(...)");
        assert_eq!(lines[103], "\tsrc/app.rs:80");
        assert_eq!(lines.len(), 1 + 200 + 1 + 2);
    }

    #[test]
    fn debug_1_is_go_s_legacy_count_format() {
        let text = render_text(
            &stacks(),
            TextForm {
                debug: 1,
                runtime: false,
            },
            &entries(),
        );
        assert_eq!(
            text,
            "goroutine profile: total 5\n\
             2 @ 0x1001 0x2001 0x999a\n\
             # labels: {\"wait\":\"chan send\"}\n\
             #\t0x2000\tapp::job::{{closure}}+0x1ef\tsrc/app.rs:7\n\
             #\t0x9999\tcreated by app::spawner\t\tsrc/app.rs:3\n\
             \n\
             2 @ 0x8889\n\
             # labels: {\"wait\":\"untraced\"}\n\
             #\t0x8888\tcreated by hyper::serve\thyper-1.0/src/server.rs:40\n\
             \n\
             1 @ 0x999a\n\
             # labels: {\"wait\":\"runnable\"}\n\
             #\t0x9999\tcreated by app::spawner\tsrc/app.rs:3\n\
             \n"
        );
        let all = render_text(
            &stacks(),
            TextForm {
                debug: 1,
                runtime: true,
            },
            &entries(),
        );
        assert!(
            all.contains(
                "# labels: {\"wait\":\"chan send\"}\n\
                 #\t0x1000\ttokio::sync::batch_semaphore::Semaphore::acquire+0x100\t\ttokio-1.54.1/src/sync/batch_semaphore.rs:642\n"
            ),
            "{all}"
        );
    }
}
