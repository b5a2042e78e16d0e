//! Reading a pprof profile as the detector needs it: the amount each *site* retains.
//!
//! A site is the leaf-most frame in the program's own code (see [`super::frames`]), as
//! function + file:line; a stack of runtime frames only is one site of its own. The full stack of
//! the sample that retains the most there is kept as evidence, with the manifestation it belongs
//! to (its [`family`](super::frames::Placed::family)). Malformed profiles (dangling ids,
//! string indices out of range) are read as far as they make sense: this never panics.

use std::collections::BTreeMap;

use super::frames::{self, Language};
use leakfinder_pprof::Profile;

/// Which profile a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// Live heap (`inuse_space`, bytes).
    Heap,
    /// Tasks or goroutines (`goroutine`, count).
    Tasks,
}

impl ProfileKind {
    /// The sample type this kind reads.
    pub fn sample_type(self) -> &'static str {
        match self {
            ProfileKind::Heap => "inuse_space",
            ProfileKind::Tasks => "goroutine",
        }
    }
}

/// Where something is retained.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Site {
    /// The function.
    pub function: String,
    /// Its source file.
    pub file: String,
    /// The line.
    pub line: i64,
}

/// What one site retains in one profile, and the survival evidence the profile carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Retained {
    /// Bytes or tasks.
    pub value: f64,
    /// The stack (leaf first, `function file:line`) of the largest sample at this site.
    pub stack: Vec<String>,
    /// The manifestation the largest sample belongs to: its spawner, or its root-most program
    /// function (empty when it has no program code).
    pub family: String,
    /// What was allocated (heap: `alloc_space`) or spawned (tasks) here since the target
    /// started, in the same unit, when the profile says: `value / allocated` is the site's
    /// survival. For tasks it is the survival of the sites that spawned them.
    pub allocated: Option<f64>,
    /// How many sampled allocations (or tasks) `allocated` stands for: what a survival
    /// verdict rests on.
    pub samples: f64,
    /// The live amount by age: `(seconds, amount)`, from leakfinder's `age` labels.
    pub ages: Vec<(f64, f64)>,
    /// The part of `value` that is blocked (tasks waiting on another task: a channel, a lock, a
    /// join) rather than sleeping, doing I/O or running. The whole value for heap sites.
    pub blocked: f64,
    /// The ids of the tasks (goroutines) here, when the profile lists them (Go's `debug=2`).
    pub ids: Vec<u64>,
    largest: f64,
}

impl Retained {
    /// `value` retained, with `stack` as the evidence.
    pub fn new(value: f64, stack: Vec<String>) -> Self {
        Self {
            value,
            stack,
            family: String::new(),
            allocated: None,
            samples: 0.0,
            ages: Vec::new(),
            blocked: value,
            ids: Vec::new(),
            largest: value,
        }
    }

    /// Nothing yet: the start of a site's sum.
    pub(crate) fn empty() -> Self {
        Self {
            blocked: 0.0,
            ..Self::new(0.0, Vec::new())
        }
    }

    /// Adds one stack's `value` to the site.
    fn add(&mut self, value: f64, stack: impl FnOnce() -> (Vec<String>, String)) {
        self.value += value;
        if value > self.largest {
            self.largest = value;
            (self.stack, self.family) = stack();
        }
    }
}

/// One profile, read per site.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Which profile.
    pub kind: ProfileKind,
    /// Whether the target is a Go program (its stacks run through `runtime.`).
    pub go: bool,
    /// What each site retains.
    pub sites: BTreeMap<Site, Retained>,
}

/// Why a profile cannot be read as a given kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The profile has no sample type of that name.
    #[error("the profile has no {wanted} samples (it has: {found})")]
    MissingSampleType {
        /// The sample type looked for.
        wanted: &'static str,
        /// The ones it has.
        found: String,
    },
}

/// The most frames read from one sample's stack, leaf first (Go records at most 128 return
/// addresses, each a few frames with inlining); a deeper stack is cut at its root end, so one
/// sample of many ids into a location of many lines cannot make a stack of millions of frames.
pub const MAX_FRAMES: usize = 1024;

/// The numeric label leakfinder's heap and task profiles give a sample's mean age (seconds).
pub const AGE_LABEL: &str = "age";
/// The numeric label leakfinder's task profile gives every sample: tasks ever spawned at its
/// spawn site.
pub const SPAWNED_LABEL: &str = "spawned";
/// The string label leakfinder's task profile gives what a task waits for.
pub const WAIT_LABEL: &str = "wait";

/// Whether a task waiting in `wait` (leakfinder's `wait` label, or Go's goroutine state) is
/// blocked on another task (a channel, a lock, a join, a condition) rather than sleeping, doing
/// I/O, running or unknown: only blocked tasks can pile up for ever on their own.
pub fn is_blocked_wait(wait: &str) -> bool {
    const BLOCKED: &[&str] = &[
        "chan send",
        "chan receive",
        "select",
        "semacquire",
        "sync.",
        "mutex lock",
        "rwlock",
        "semaphore acquire",
        "oneshot receive",
        "notified",
        "watch changed",
        "broadcast receive",
        "barrier wait",
        "join",
        "cancelled",
        "task tracker wait",
        "non-tokio wait",
    ];
    BLOCKED.iter().any(|blocked| wait.starts_with(blocked))
}

/// The language of a profile's stacks (Go when it has `runtime.` frames).
pub fn language(profile: &Profile) -> Language {
    let string = |index: i64| -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    Language::detect(
        profile
            .function
            .iter()
            .map(|function| (string(function.name), string(function.filename))),
    )
}

/// Reads a profile as `kind`.
pub fn snapshot(profile: &Profile, kind: ProfileKind) -> Result<Snapshot, SnapshotError> {
    let string = |index: i64| -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    let column_of = |name: &str| {
        profile
            .sample_type
            .iter()
            .position(|value_type| string(value_type.r#type) == name)
    };
    let Some(column) = column_of(kind.sample_type()) else {
        let found = profile
            .sample_type
            .iter()
            .map(|value_type| string(value_type.r#type))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SnapshotError::MissingSampleType {
            wanted: kind.sample_type(),
            found,
        });
    };
    let alloc_column = match kind {
        ProfileKind::Heap => column_of("alloc_space"),
        ProfileKind::Tasks => None,
    };
    let alloc_objects = match kind {
        ProfileKind::Heap => column_of("alloc_objects"),
        ProfileKind::Tasks => None,
    };
    let period = profile.period.max(1) as f64;
    let view = View::new(profile);
    let language = view.language.clone();
    let mut sites: BTreeMap<Site, Retained> = BTreeMap::new();
    // Tasks: per spawn site (its `created by` frame: function, file and line, as one function
    // may spawn at several lines, each counted apart), the tasks alive and ever spawned.
    type SpawnSite<'a> = (&'a str, &'a str, i64);
    let mut spawn_sites: BTreeMap<SpawnSite<'_>, (f64, f64)> = BTreeMap::new();
    let mut spawn_site_of: BTreeMap<Site, BTreeMap<SpawnSite<'_>, f64>> = BTreeMap::new();
    for sample in &profile.sample {
        let value = sample.value.get(column).copied().unwrap_or(0).max(0) as f64;
        let allocated = alloc_column
            .and_then(|column| sample.value.get(column))
            .map(|&bytes| bytes.max(0) as f64);
        if value <= 0.0 && allocated.is_none_or(|bytes| bytes <= 0.0) {
            continue;
        }
        let frames = view.frames(sample);
        if frames.is_empty() {
            continue;
        }
        let (site, family) = place(&language, &frames);
        let label = |key: &str| sample.label.iter().find(|label| string(label.key) == key);
        let retained = sites.entry(site.clone()).or_insert_with(Retained::empty);
        retained.add(value, || (stack_strings(&frames), family));
        if let Some(bytes) = allocated {
            *retained.allocated.get_or_insert(0.0) += bytes;
            let objects = alloc_objects
                .and_then(|column| sample.value.get(column))
                .map_or(1.0, |&objects| objects.max(1) as f64);
            // The estimate stands for `objects`, each sampled with this probability.
            let sampled = 1.0 - (-(bytes / objects) / period).exp();
            retained.samples += objects * sampled;
        }
        if let Some(age) = label(AGE_LABEL).filter(|label| label.str == 0)
            && value > 0.0
        {
            retained.ages.push((age.num as f64, value));
        }
        let wait = label(WAIT_LABEL).map_or("", |label| string(label.str));
        if kind == ProfileKind::Heap || is_blocked_wait(wait) {
            retained.blocked += value;
        }
        if kind == ProfileKind::Tasks
            && let Some(spawned) = label(SPAWNED_LABEL)
        {
            let spawn = frames[frames.len() - 1];
            let entry = spawn_sites.entry(spawn).or_default();
            entry.0 += value;
            entry.1 = entry.1.max(spawned.num as f64);
            *spawn_site_of
                .entry(site)
                .or_default()
                .entry(spawn)
                .or_default() += value;
        }
    }
    // A task site's survival is that of the spawn sites its tasks came from.
    for (site, spawns) in spawn_site_of {
        let (mut alive, mut spawned) = (0.0, 0.0);
        for (spawn, tasks) in &spawns {
            if let Some(&(all_alive, all_spawned)) = spawn_sites.get(spawn)
                && all_alive > 0.0
            {
                alive += tasks;
                spawned += tasks * all_spawned.max(all_alive) / all_alive;
            }
        }
        if let Some(retained) = sites.get_mut(&site)
            && spawned > 0.0
        {
            retained.allocated = Some(retained.value * spawned / alive.max(1.0));
            retained.samples = spawned;
        }
    }
    sites.retain(|_, retained| retained.value > 0.0);
    let go = language.is_go();
    Ok(Snapshot { kind, go, sites })
}

/// A profile's functions and locations by id, and its language: what reading a sample's
/// frames needs. Dangling ids and string indices out of range are skipped.
struct View<'a> {
    functions: BTreeMap<u64, (&'a str, &'a str)>,
    locations: BTreeMap<u64, &'a leakfinder_pprof::Location>,
    language: Language,
}

impl<'a> View<'a> {
    fn new(profile: &'a Profile) -> Self {
        let string = |index: i64| -> &'a str {
            usize::try_from(index)
                .ok()
                .and_then(|index| profile.string_table.get(index))
                .map_or("", String::as_str)
        };
        let functions: BTreeMap<u64, (&str, &str)> = profile
            .function
            .iter()
            .map(|function| {
                (
                    function.id,
                    (string(function.name), string(function.filename)),
                )
            })
            .collect();
        let language = Language::detect(functions.values().copied());
        Self {
            functions,
            locations: profile
                .location
                .iter()
                .map(|location| (location.id, location))
                .collect(),
            language,
        }
    }

    /// A sample's frames, leaf first: `(function, file, line)`, at most [`MAX_FRAMES`].
    fn frames(&self, sample: &leakfinder_pprof::Sample) -> Vec<(&'a str, &'a str, i64)> {
        sample
            .location_id
            .iter()
            .filter_map(|id| self.locations.get(id))
            .flat_map(|location| location.line.iter())
            .filter_map(|line| {
                let (function, file) = self.functions.get(&line.function_id)?;
                Some((*function, *file, line.line))
            })
            .take(MAX_FRAMES)
            .collect()
    }
}

/// The amount of `sample_type` per site (Pyroscope serves each sample type of a profile as a
/// profile of its own: `memory:alloc_space` beside `memory:inuse_space`).
pub fn site_amounts(
    profile: &Profile,
    sample_type: &'static str,
) -> Result<BTreeMap<Site, f64>, SnapshotError> {
    let string = |index: i64| -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    let column = profile
        .sample_type
        .iter()
        .position(|value_type| string(value_type.r#type) == sample_type)
        .ok_or_else(|| SnapshotError::MissingSampleType {
            wanted: sample_type,
            found: profile
                .sample_type
                .iter()
                .map(|value_type| string(value_type.r#type))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let view = View::new(profile);
    let mut sites = BTreeMap::new();
    for sample in &profile.sample {
        let value = sample.value.get(column).copied().unwrap_or(0).max(0) as f64;
        let frames = view.frames(sample);
        if value <= 0.0 || frames.is_empty() {
            continue;
        }
        let (site, _) = place(&view.language, &frames);
        *sites.entry(site).or_default() += value;
    }
    Ok(sites)
}

/// The site of a stack (leaf first, `(function, file, line)`), and its family.
pub fn place(language: &Language, frames: &[(&str, &str, i64)]) -> (Site, String) {
    let placed: Vec<(&str, &str)> = frames
        .iter()
        .map(|(function, file, _)| (*function, *file))
        .collect();
    let placed = frames::Placed::new(language, &placed);
    let site = match placed.site() {
        Some(index) => Site {
            function: frames[index].0.to_owned(),
            file: frames[index].1.to_owned(),
            line: frames[index].2,
        },
        None => Site {
            function: language.runtime_site().to_owned(),
            file: String::new(),
            line: 0,
        },
    };
    (site, placed.family())
}

/// A stack as evidence: `function file:line`, leaf first.
pub fn stack_strings(frames: &[(&str, &str, i64)]) -> Vec<String> {
    frames
        .iter()
        .map(|(function, file, line)| format!("{function} {file}:{line}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry};

    fn entry(address: u64, function: &str, file: &str, line: u32) -> StackEntry {
        StackEntry {
            address,
            frames: vec![Frame {
                function: function.into(),
                file: file.into(),
                line,
            }]
            .into(),
            skip: 0,
        }
    }

    #[test]
    fn sites_skip_runtime_frames_and_sum_their_samples() {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        let park = entry(1, "runtime.gopark", "/go/src/runtime/proc.go", 435);
        let send = entry(2, "runtime.chansend1", "/go/src/runtime/chan.go", 161);
        let leak = entry(3, "main.leakGoroutines.func1", "/app/main.go", 42);
        builder.add_sample(&[park.clone(), send, leak.clone()], vec![7], &[]);
        builder.add_sample(&[park, leak], vec![3], &[]);
        let snapshot = snapshot(&builder.build(), ProfileKind::Tasks).unwrap();
        assert!(snapshot.go);
        let (site, retained) = snapshot.sites.iter().next().unwrap();
        assert_eq!(site.function, "main.leakGoroutines.func1");
        assert_eq!((site.file.as_str(), site.line), ("/app/main.go", 42));
        assert_eq!(retained.value, 10.0);
        assert_eq!(
            retained.stack[0],
            "runtime.gopark /go/src/runtime/proc.go:435"
        );
    }

    #[test]
    fn rust_task_stacks_land_on_the_user_frame() {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        let acquire = entry(
            1,
            "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
            "tokio-1.54.1/src/sync/batch_semaphore.rs",
            642,
        );
        let user = entry(
            2,
            "leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}::{{closure}}",
            "src/leaks/channel.rs",
            66,
        );
        builder.add_sample(&[acquire, user], vec![100], &[]);
        let snapshot = snapshot(&builder.build(), ProfileKind::Tasks).unwrap();
        assert!(!snapshot.go);
        let site = snapshot.sites.keys().next().unwrap();
        assert!(site.function.contains("run_leaker_job2"));
        assert_eq!(site.line, 66);
    }

    #[test]
    fn two_spawn_sites_in_one_function_count_their_spawns_apart() {
        // One spawner function, two `tokio::spawn` lines: 127 tasks spawned at each, 34 and 33
        // alive. Each site kept about a quarter of what it spawned: survival is 34/127 and
        // 33/127, not twice that (the spawn counts of the two lines are not one counter).
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        let reply = entry(1, "controls::await_reply::{{closure}}", "examples/c.rs", 68);
        let timer = entry(2, "controls::await_timer::{{closure}}", "examples/c.rs", 74);
        let spawner = "created by controls::short_lived::{{closure}}";
        for (leaf, line, alive) in [(reply, 58, 34), (timer, 60, 33)] {
            let created = entry(10 + u64::from(line), spawner, "examples/c.rs", line);
            builder.add_sample_with_numbers(
                &[leaf, created],
                vec![alive],
                &[("wait", "oneshot receive")],
                &[("spawned", 127, "count")],
            );
        }
        let snapshot = snapshot(&builder.build(), ProfileKind::Tasks).unwrap();
        let survivals: Vec<f64> = snapshot
            .sites
            .values()
            .map(|retained| retained.value / retained.allocated.unwrap())
            .collect();
        assert_eq!(survivals.len(), 2);
        for (survival, alive) in survivals.iter().zip([34.0, 33.0]) {
            assert!(
                (survival - alive / 127.0).abs() < 1e-9,
                "{survivals:?}: {alive} of 127 spawned"
            );
        }
    }

    #[test]
    fn a_profile_without_the_sample_type_is_an_error() {
        let profile = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            1,
        )
        .build();
        assert_eq!(
            snapshot(&profile, ProfileKind::Heap),
            Err(SnapshotError::MissingSampleType {
                wanted: "inuse_space",
                found: "samples, cpu".into()
            })
        );
    }

    #[test]
    fn dangling_ids_and_bad_indices_are_skipped_not_fatal() {
        let mut profile =
            ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 1).build();
        profile.sample.push(leakfinder_pprof::Sample {
            location_id: vec![99, 0, u64::MAX],
            value: vec![1024],
            label: vec![],
        });
        profile.sample.push(leakfinder_pprof::Sample {
            location_id: vec![],
            value: vec![],
            label: vec![],
        });
        profile.sample_type[0].unit = -5;
        profile.string_table.truncate(2);
        let _ = snapshot(&profile, ProfileKind::Heap);
        let _ = snapshot(&profile, ProfileKind::Tasks);
    }

    #[test]
    fn a_sample_of_many_ids_into_a_location_of_many_lines_is_cut_not_read_whole() {
        // 4 000 ids of one location of 4 000 lines: 16 KB on the wire, 16 million frames.
        let mut profile =
            ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 1).build();
        profile.string_table.push("app::deep".into());
        profile.function.push(leakfinder_pprof::Function {
            id: 1,
            name: profile.string_table.len() as i64 - 1,
            ..Default::default()
        });
        let line = leakfinder_pprof::Line {
            function_id: 1,
            line: 7,
            column: 0,
        };
        profile.location.push(leakfinder_pprof::Location {
            id: 1,
            line: vec![line; 4000],
            ..Default::default()
        });
        profile.sample.push(leakfinder_pprof::Sample {
            location_id: vec![1; 4000],
            value: vec![1024],
            label: vec![],
        });
        let snapshot = snapshot(&profile, ProfileKind::Heap).unwrap();
        let retained = &snapshot.sites.values().next().unwrap();
        assert_eq!(retained.stack.len(), MAX_FRAMES);
        assert_eq!(retained.value, 1024.0);
    }

    #[test]
    fn blockers_on_one_mutex_from_different_callers_do_not_merge() {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        let sema = entry(
            1,
            "internal/sync.runtime_SemacquireMutex",
            "/go/src/runtime/sema.go",
            95,
        );
        let lock = entry(2, "sync.(*Mutex).Lock", "/go/src/sync/mutex.go", 46);
        let refresh = entry(3, "main.(*cache).refresh", "/app/cache.go", 30);
        let evict = entry(4, "main.(*cache).evict", "/app/cache.go", 52);
        let exit = entry(5, "runtime.goexit", "/go/src/runtime/asm_amd64.s", 1700);
        builder.add_sample(
            &[sema.clone(), lock.clone(), refresh, exit.clone()],
            vec![4],
            &[],
        );
        builder.add_sample(&[sema, lock, evict, exit.clone()], vec![2], &[]);
        // The goroutine structs of a task leak: runtime frames only.
        let malg = entry(6, "runtime.malg", "/go/src/runtime/proc.go", 4000);
        builder.add_sample(&[malg, exit], vec![9], &[]);
        let snapshot = snapshot(&builder.build(), ProfileKind::Tasks).unwrap();
        let sites: Vec<(&str, i64, f64)> = snapshot
            .sites
            .iter()
            .map(|(site, retained)| (site.function.as_str(), site.line, retained.value))
            .collect();
        assert_eq!(
            sites,
            vec![
                ("main.(*cache).evict", 52, 2.0),
                ("main.(*cache).refresh", 30, 4.0),
                (super::frames::RUNTIME_GOROUTINES, 0, 9.0),
            ]
        );
        let refresh = snapshot.sites.values().nth(1).unwrap();
        assert_eq!(
            refresh.stack[1],
            "sync.(*Mutex).Lock /go/src/sync/mutex.go:46"
        );
        assert_eq!(refresh.family, "main.(*cache).refresh");
    }
}
