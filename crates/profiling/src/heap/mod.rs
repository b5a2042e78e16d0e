//! The heap profile: jemalloc's sampled allocations as a pprof profile that reads like Go's:
//! Go's four sample types (`alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`), the
//! age of live memory on every in-use sample (a numeric label `age`, in seconds), symbolised in
//! the process, and trimmed so that flat bytes land on the code that allocated, not on jemalloc
//! or the standard library's allocation plumbing.
//!
//! - [`tracking`]: jemalloc's sample hooks and their tables (what each stack allocated and freed,
//!   and when each live sampled allocation was made);
//! - this module: from a tracking snapshot (or, when the hooks could not be installed, from
//!   jemalloc's `prof.dump`, which knows live allocations only) to the profile. Grouping,
//!   un-sampling, trimming and building are pure functions; [`dump`] is the only I/O.

pub mod tracking;

use std::collections::BTreeMap;
use std::sync::Arc;

use leakfinder_pprof::conventions::is_allocator;

use super::ProfilingError;
use super::symbols::{FramesByAddress, Symbolizer, caller};
use leakfinder_pprof::{Frame, Profile, ProfileBuilder, StackEntry};
pub use tracking::Counts;

/// The numeric label of in-use samples: the mean age of their allocations.
pub const AGE_LABEL: &str = "age";
/// Its unit (pprof reads `seconds` as a time unit: `-tagfocus=age=300s:` keeps memory at least
/// five minutes old).
pub const AGE_UNIT: &str = "seconds";

/// Live sampled allocations of one stack, made at about the same time.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveGroup {
    /// Sampled live objects.
    pub objects: u64,
    /// Their sampled bytes.
    pub bytes: u64,
    /// Their mean age, when known.
    pub age_seconds: Option<f64>,
}

/// One sampled stack, with its sampled (not yet scaled) counts.
#[derive(Debug, Clone, PartialEq)]
pub struct RawStack {
    /// Return addresses, leaf first.
    pub addresses: Vec<u64>,
    /// Its live sampled allocations, by age.
    pub live: Vec<LiveGroup>,
    /// Of the sampled allocations made here, those freed since (`None` when not tracked:
    /// jemalloc's dump knows live allocations only).
    pub freed: Option<Counts>,
}

/// A heap of sampled stacks.
#[derive(Debug, Clone, PartialEq)]
pub struct RawHeap {
    /// The average bytes between samples.
    pub sample_period: u64,
    /// Every stack with sampled allocations (live ones, and, when tracked, freed ones).
    pub stacks: Vec<RawStack>,
    /// Whether allocations and ages were tracked (Go's four sample types) or only live ones
    /// are known (two).
    pub tracked: bool,
    /// Sampled allocations the tracking tables had no room for.
    pub untracked: u64,
}

/// Why a jemalloc heap dump could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeapParseError {
    /// The dump does not start with a `heap_v2/<period>` header.
    #[error("not a jemalloc heap_v2 dump")]
    NotHeapV2,
    /// A line of the dump is malformed.
    #[error("malformed line {line} of the heap dump")]
    Malformed {
        /// The 1-based line number.
        line: usize,
    },
}

/// Parses jemalloc's `prof.dump` text format: live allocations only, without ages.
pub fn parse_heap_v2(text: &str) -> Result<RawHeap, HeapParseError> {
    let mut lines = text.lines().enumerate();
    let sample_period = lines
        .next()
        .and_then(|(_, header)| header.strip_prefix("heap_v2/"))
        .and_then(|period| period.trim().parse().ok())
        .ok_or(HeapParseError::NotHeapV2)?;
    let mut stacks = Vec::new();
    let mut pending: Option<Vec<u64>> = None;
    for (index, line) in lines {
        let malformed = || HeapParseError::Malformed { line: index + 1 };
        if line.starts_with("MAPPED_LIBRARIES:") {
            break;
        }
        if let Some(addresses) = line.strip_prefix('@') {
            let addresses = addresses
                .split_whitespace()
                .map(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| malformed())?;
            pending = Some(addresses);
        } else if let Some(counts) = line.trim_start().strip_prefix("t*:") {
            let Some(addresses) = pending.take() else {
                continue; // the process-wide total before the first stack
            };
            let (objects, bytes) = parse_counts(counts).ok_or_else(malformed)?;
            if objects > 0 {
                stacks.push(RawStack {
                    addresses,
                    live: vec![LiveGroup {
                        objects,
                        bytes,
                        age_seconds: None,
                    }],
                    freed: None,
                });
            }
        }
    }
    Ok(RawHeap {
        sample_period,
        stacks,
        tracked: false,
        untracked: 0,
    })
}

/// `" 3: 3145728 [0: 0]"` to `(3, 3145728)`.
fn parse_counts(counts: &str) -> Option<(u64, u64)> {
    let (objects, rest) = counts.split_once(':')?;
    let bytes = rest.split_whitespace().next()?;
    Some((objects.trim().parse().ok()?, bytes.parse().ok()?))
}

/// The age bucket of an allocation `age_seconds` old: four per doubling of `1 + age`, so ages
/// are told apart to within about 19% (0 to 0.19 s, ..., 60 to 71 s, ..., an hour to 71 min).
pub fn age_bucket(age_seconds: f64) -> u32 {
    (4.0 * (1.0 + age_seconds.max(0.0)).log2()) as u32
}

/// The heap of a tracking snapshot: per stack, its live sampled allocations grouped by
/// [`age_bucket`], and what was freed there.
pub fn from_snapshot(snapshot: &tracking::Snapshot, sample_period: u64) -> RawHeap {
    // (stack, bucket) -> objects, bytes, sum of ages
    let mut groups: BTreeMap<(u32, u32), (u64, u64, f64)> = BTreeMap::new();
    for live in &snapshot.live {
        let age = live.age_nanos as f64 / 1e9;
        let group = groups.entry((live.stack, age_bucket(age))).or_default();
        group.0 += 1;
        group.1 += live.bytes;
        group.2 += age;
    }
    let mut stacks: Vec<RawStack> = snapshot
        .stacks
        .iter()
        .map(|stack| RawStack {
            addresses: stack.addresses.clone(),
            live: Vec::new(),
            freed: Some(stack.freed),
        })
        .collect();
    for ((stack, _), (objects, bytes, ages)) in groups {
        if let Some(raw) = stacks.get_mut(stack as usize) {
            raw.live.push(LiveGroup {
                objects,
                bytes,
                age_seconds: Some(ages / objects as f64),
            });
        }
    }
    stacks.retain(|stack| !stack.live.is_empty() || stack.freed.is_some_and(|f| f.objects > 0));
    RawHeap {
        sample_period,
        stacks,
        tracked: true,
        untracked: snapshot.untracked,
    }
}

/// Scales sampled counts to estimated real ones, as jeprof does: an allocation of `s` bytes is
/// sampled with probability `1 - exp(-s / period)`.
pub fn unsample(objects: u64, bytes: u64, period: u64) -> (i64, i64) {
    if objects == 0 || period == 0 {
        return (objects as i64, bytes as i64);
    }
    let average = bytes as f64 / objects as f64;
    let scale = 1.0 / (1.0 - (-average / period as f64).exp());
    (
        (objects as f64 * scale).round() as i64,
        (bytes as f64 * scale).round() as i64,
    )
}

/// Whether a frame is allocation machinery (jemalloc, its profiler, the global allocator shim,
/// or the standard library's containers), which Go's profiles hide as `runtime.mallocgc`.
pub fn is_allocator_frame(frame: &Frame) -> bool {
    is_allocator(&frame.function, &frame.file)
}

/// Drops allocation machinery from the leaf end of a stack (leaf first), down to the first frame
/// that is not machinery, splitting an address's inline frames where needed. A stack that is all
/// machinery is left whole, so its bytes are still shown somewhere.
pub fn trim_allocator_frames(stack: &mut Vec<StackEntry>) {
    let Some((entry, frame)) = stack.iter().enumerate().find_map(|(index, entry)| {
        let frame = entry
            .shown()
            .iter()
            .position(|frame| !is_allocator_frame(frame))?;
        Some((index, frame))
    }) else {
        return;
    };
    stack.drain(..entry);
    stack[0].skip += frame;
}

/// Builds the pprof profile of a heap, given the frames of each of its addresses. A tracked heap
/// has Go's four sample types: per stack, one sample per age group of its live allocations
/// (labelled with their `age`) and one for what was allocated there and freed since (in-use
/// values zero, no age). An untracked one has the two in-use types.
pub fn build_profile(heap: &RawHeap, frames: &FramesByAddress) -> Profile {
    let mut builder = if heap.tracked {
        ProfileBuilder::new(
            &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
            ("space", "bytes"),
            heap.sample_period as i64,
        )
    } else {
        ProfileBuilder::new(
            &[("inuse_objects", "count"), ("inuse_space", "bytes")],
            ("space", "bytes"),
            heap.sample_period as i64,
        )
    };
    builder.comment(if heap.tracked {
        "jemalloc heap profile: allocations, frees and ages from its sample hooks; symbolised and trimmed by leakfinder"
    } else {
        "jemalloc heap profile (live allocations only), symbolised and trimmed by leakfinder"
    });
    if heap.untracked > 0 {
        builder.comment(&format!(
            "{} sampled allocations were not tracked: the tables were full",
            heap.untracked
        ));
    }
    for raw in &heap.stacks {
        let mut stack: Vec<StackEntry> = raw
            .addresses
            .iter()
            .filter_map(|address| {
                let address = caller(*address);
                Some(StackEntry {
                    address,
                    frames: Arc::clone(frames.get(&address)?),
                    skip: 0,
                })
            })
            .collect();
        trim_allocator_frames(&mut stack);
        for group in &raw.live {
            let (objects, bytes) = unsample(group.objects, group.bytes, heap.sample_period);
            let values = if heap.tracked {
                vec![objects, bytes, objects, bytes]
            } else {
                vec![objects, bytes]
            };
            let age = group
                .age_seconds
                .map(|age| (AGE_LABEL, age.round() as i64, AGE_UNIT));
            builder.add_sample_with_numbers(&stack, values, &[], age.as_slice());
        }
        if let Some(freed) = raw.freed.filter(|freed| freed.objects > 0 && heap.tracked) {
            let (objects, bytes) = unsample(freed.objects, freed.bytes, heap.sample_period);
            builder.add_sample(&stack, vec![objects, bytes, 0, 0], &[]);
        }
    }
    builder.build()
}

/// Makes `sample_type` the profile's default (`alloc_space` for `/debug/pprof/allocs`, as Go's
/// handler does); false if the profile has no such type.
pub fn set_default_sample_type(profile: &mut Profile, sample_type: &str) -> bool {
    let Some(index) = profile.string_table.iter().position(|s| s == sample_type) else {
        return false;
    };
    let index = index as i64;
    if !profile.sample_type.iter().any(|t| t.r#type == index) {
        return false;
    }
    profile.default_sample_type = index;
    true
}

/// jemalloc's current average bytes between samples (`prof.lg_sample`).
#[allow(unsafe_code)]
fn sample_period() -> Result<u64, ProfilingError> {
    // SAFETY: `prof.lg_sample` is a read-only `size_t` mallctl.
    let lg = unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"prof.lg_sample\0") }
        .map_err(|error| ProfilingError::Dump(format!("prof.lg_sample: {error}")))?;
    Ok(1u64 << lg.min(62))
}

/// The heap profile, now: from the tracking tables when the sample hooks are installed (Go's
/// four sample types and the ages), else from jemalloc's dump (live allocations only);
/// symbolised and trimmed. Blocking.
///
/// Its own allocations (the copies, the profile) are not sampled: they are gone when it returns,
/// and sampled they would bring the profiler's own stacks into the next profiles, each a new set
/// of addresses to symbolise.
pub fn dump(symbolizer: &Symbolizer) -> Result<Profile, ProfilingError> {
    let _unsampled = super::jemalloc::UnsampledThread::begin();
    let control = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or(ProfilingError::HeapProfilingDisabled)?;
    let heap = {
        let control = control.blocking_lock();
        if !control.activated() {
            return Err(ProfilingError::HeapProfilingDisabled);
        }
        if tracking::installed() {
            from_snapshot(&tracking::snapshot(), sample_period()?)
        } else {
            let text = super::jemalloc::dump_heap_profile()
                .map_err(|error| ProfilingError::Dump(error.to_string()))?;
            parse_heap_v2(&text).map_err(|error| ProfilingError::Dump(error.to_string()))?
        }
    };
    let addresses = heap
        .stacks
        .iter()
        .flat_map(|stack| stack.addresses.iter().map(|&address| caller(address)));
    let frames = symbolizer.resolve(addresses);
    let mut profile = build_profile(&heap, &frames);
    profile.time_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i64);
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "heap_v2/524288
  t*: 5: 3146000 [0: 0]
  t0: 5: 3146000 [0: 0]
@ 0x10 0x20 0x30
  t*: 3: 3145728 [0: 0]
  t0: 3: 3145728 [0: 0]
@ 0x10 0x40
  t*: 2: 272 [0: 0]
@ 0x50
  t*: 0: 0 [0: 0]

MAPPED_LIBRARIES:
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /bin/leakfinder
";

    #[test]
    fn heap_v2_dumps_parse_into_stacks() {
        let heap = parse_heap_v2(DUMP).unwrap();
        assert_eq!(heap.sample_period, 524_288);
        let live = |objects, bytes| RawStack {
            addresses: Vec::new(),
            live: vec![LiveGroup {
                objects,
                bytes,
                age_seconds: None,
            }],
            freed: None,
        };
        assert_eq!(
            heap.stacks,
            vec![
                RawStack {
                    addresses: vec![0x10, 0x20, 0x30],
                    ..live(3, 3_145_728)
                },
                RawStack {
                    addresses: vec![0x10, 0x40],
                    ..live(2, 272)
                },
            ],
            "the total and empty stacks are skipped"
        );
        assert!(!heap.tracked);
    }

    #[test]
    fn malformed_dumps_are_errors_not_panics() {
        assert_eq!(parse_heap_v2(""), Err(HeapParseError::NotHeapV2));
        assert_eq!(
            parse_heap_v2("heap_v1/12\n"),
            Err(HeapParseError::NotHeapV2)
        );
        assert_eq!(
            parse_heap_v2("heap_v2/512\n@ 0xZZ\n"),
            Err(HeapParseError::Malformed { line: 2 })
        );
        assert_eq!(
            parse_heap_v2("heap_v2/512\n@ 0x1\n  t*: x: y\n"),
            Err(HeapParseError::Malformed { line: 3 })
        );
    }

    #[test]
    fn unsampling_scales_small_allocations_up_and_leaves_large_ones() {
        let period = 524_288;
        // A 1 MiB allocation is sampled with probability ~0.86.
        let (objects, bytes) = unsample(1, 1 << 20, period);
        assert_eq!(objects, 1);
        assert!((1_200_000..1_230_000).contains(&bytes), "{bytes}");
        // A 64-byte allocation stands for ~8192 like it.
        let (objects, bytes) = unsample(1, 64, period);
        assert!((8000..8300).contains(&objects), "{objects}");
        assert!((512_000..530_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn trimming_drops_allocator_frames_at_the_leaf_only() {
        let leaf = StackEntry {
            address: 1,
            frames: vec![
                Frame::new(
                    "prof_backtrace_impl",
                    "target/release/build/tikv-jemalloc-sys-1/out/build/src/prof.c",
                    10,
                ),
                Frame::new("_rjem_je_malloc_default", "", 0),
            ]
            .into(),
            skip: 0,
        };
        let user = StackEntry {
            address: 2,
            frames: vec![
                Frame::new(
                    "alloc::vec::from_elem",
                    "/rustc/abc/library/alloc/src/vec/mod.rs",
                    3,
                ),
                Frame::new("__rustc::__rust_alloc", "src/main.rs", 20),
                Frame::new(
                    "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}",
                    "src/leaks/slice.rs",
                    24,
                ),
                Frame::new(
                    "std::thread::spawn",
                    "/rustc/abc/library/std/src/thread.rs",
                    5,
                ),
            ]
            .into(),
            skip: 0,
        };
        let root = StackEntry {
            address: 3,
            frames: vec![Frame::new(
                "core::ops::function::FnOnce::call_once",
                "/rustc/abc/library/core/src/ops.rs",
                1,
            )]
            .into(),
            skip: 0,
        };
        let mut stack = vec![leaf, user, root];
        trim_allocator_frames(&mut stack);
        assert_eq!(stack.len(), 2);
        assert_eq!(stack[0].address, 2);
        assert_eq!(
            &*stack[0].shown()[0].function,
            "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}"
        );
        assert_eq!(
            stack[0].shown().len(),
            2,
            "frames above the first user frame stay"
        );
        assert_eq!(stack[1].shown().len(), 1, "machinery nearer the root stays");

        let mut all_machinery = vec![StackEntry {
            address: 9,
            frames: vec![Frame::new("malloc", "", 0)].into(),
            skip: 0,
        }];
        trim_allocator_frames(&mut all_machinery);
        assert_eq!(all_machinery[0].shown().len(), 1);
    }

    #[test]
    fn the_profile_attributes_scaled_bytes_to_the_trimmed_leaf() {
        let heap = parse_heap_v2(DUMP).unwrap();
        let frames: FramesByAddress = [
            (0xf, vec![Frame::new("_rjem_malloc", "", 0)]),
            (0x1f, vec![Frame::new("leakfinder::leak", "src/leak.rs", 7)]),
            (0x2f, vec![Frame::new("main", "src/main.rs", 1)]),
            (
                0x3f,
                vec![Frame::new("leakfinder::other", "src/other.rs", 3)],
            ),
        ]
        .into_iter()
        .map(|(address, frames)| (address, frames.into()))
        .collect();
        let profile = build_profile(&heap, &frames);
        let name = |index: i64| profile.string_table[index as usize].clone();
        assert_eq!(name(profile.sample_type[1].r#type), "inuse_space");
        assert_eq!(name(profile.sample_type[1].unit), "bytes");
        assert_eq!(profile.period, 524_288);
        assert_eq!(profile.sample.len(), 2);
        let leaf_function = |sample: usize| {
            let location = profile.sample[sample].location_id[0];
            let line = profile.location[location as usize - 1].line[0];
            name(profile.function[line.function_id as usize - 1].name)
        };
        assert_eq!(leaf_function(0), "leakfinder::leak");
        assert_eq!(leaf_function(1), "leakfinder::other");
        assert!(
            profile.sample[0].value[1] > 3_145_728,
            "scaled up from the sampled bytes"
        );
    }

    fn snapshot() -> tracking::Snapshot {
        let stack = |addresses: Vec<u64>, allocated: (u64, u64), freed: (u64, u64)| {
            tracking::StackAllocations {
                addresses,
                allocated: Counts {
                    objects: allocated.0,
                    bytes: allocated.1,
                },
                freed: Counts {
                    objects: freed.0,
                    bytes: freed.1,
                },
            }
        };
        let live = |stack, bytes, age_seconds: f64| tracking::LiveAllocation {
            stack,
            bytes,
            age_nanos: (age_seconds * 1e9) as u64,
        };
        tracking::Snapshot {
            stacks: vec![
                // A leak: four 1 MiB chunks, none freed, made over a minute.
                stack(vec![0x10, 0x20, 0x30], (4, 4 << 20), (0, 0)),
                // Churn: a hundred 64 KiB buffers, all but one freed.
                stack(vec![0x10, 0x40], (100, 100 << 16), (99, 99 << 16)),
                // Freed entirely: in alloc_* only.
                stack(vec![0x50], (3, 3000), (3, 3000)),
            ],
            live: vec![
                live(0, 1 << 20, 60.4),
                live(0, 1 << 20, 59.9),
                live(0, 1 << 20, 20.0),
                live(0, 1 << 20, 0.1),
                live(1, 1 << 16, 0.05),
            ],
            untracked: 0,
        }
    }

    fn frames() -> FramesByAddress {
        [
            (0xf, vec![Frame::new("_rjem_malloc", "", 0)]),
            (0x1f, vec![Frame::new("app::leak", "src/leak.rs", 7)]),
            (0x2f, vec![Frame::new("main", "src/main.rs", 1)]),
            (0x3f, vec![Frame::new("app::churn", "src/churn.rs", 3)]),
            (0x4f, vec![Frame::new("app::gone", "src/gone.rs", 9)]),
        ]
        .into_iter()
        .map(|(address, frames)| (address, frames.into()))
        .collect()
    }

    #[test]
    fn ages_are_grouped_in_buckets_of_about_a_fifth() {
        assert_eq!(age_bucket(0.0), 0);
        assert_eq!(age_bucket(-3.0), 0);
        assert_eq!(age_bucket(59.9), age_bucket(60.4));
        assert_ne!(age_bucket(20.0), age_bucket(60.0));
        assert_ne!(age_bucket(60.0), age_bucket(80.0));
        assert!(age_bucket(3600.0) < 50);
    }

    #[test]
    fn a_tracked_heap_has_go_s_four_sample_types_ages_and_what_was_freed() {
        let heap = from_snapshot(&snapshot(), 524_288);
        assert!(heap.tracked);
        assert_eq!(heap.stacks.len(), 3);
        assert_eq!(heap.stacks[0].live.len(), 3, "60 s, 20 s and 0.1 s old");
        let profile = build_profile(&heap, &frames());
        let name = |index: i64| profile.string_table[index as usize].as_str();
        let types: Vec<&str> = profile.sample_type.iter().map(|t| name(t.r#type)).collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        assert_eq!(name(profile.default_sample_type), "inuse_space");
        let leaf = |sample: &leakfinder_pprof::Sample| {
            let location = &profile.location[sample.location_id[0] as usize - 1];
            name(profile.function[location.line[0].function_id as usize - 1].name)
        };
        let age = |sample: &leakfinder_pprof::Sample| {
            sample
                .label
                .iter()
                .find(|label| name(label.key) == AGE_LABEL)
                .map(|label| (label.num, name(label.num_unit)))
        };
        let total = |function: &str, column: usize| -> i64 {
            profile
                .sample
                .iter()
                .filter(|s| leaf(s) == function)
                .map(|s| s.value[column])
                .sum()
        };
        // The leak: everything allocated is in use, its ages labelled.
        assert_eq!(total("app::leak", 1), total("app::leak", 3));
        let mut leak_ages: Vec<(i64, &str)> = profile
            .sample
            .iter()
            .filter(|s| leaf(s) == "app::leak")
            .filter_map(age)
            .collect();
        leak_ages.sort_unstable();
        assert_eq!(
            leak_ages,
            [(0, "seconds"), (20, "seconds"), (60, "seconds")]
        );
        // Churn: a hundred allocated, one in use.
        assert!(total("app::churn", 1) > 50 * total("app::churn", 3));
        assert_eq!(
            profile
                .sample
                .iter()
                .filter(|s| leaf(s) == "app::churn" && s.value[3] == 0)
                .map(age)
                .collect::<Vec<_>>(),
            [None],
            "what was freed has no age"
        );
        // Freed entirely: allocated, nothing in use.
        assert!(total("app::gone", 1) > 0);
        assert_eq!(total("app::gone", 3), 0);

        let mut allocs = profile.clone();
        assert!(set_default_sample_type(&mut allocs, "alloc_space"));
        assert_eq!(
            allocs.string_table[allocs.default_sample_type as usize],
            "alloc_space"
        );
        assert!(!set_default_sample_type(&mut allocs, "cpu"));
    }

    #[test]
    fn an_untracked_heap_keeps_the_two_in_use_types() {
        let heap = parse_heap_v2(DUMP).unwrap();
        let profile = build_profile(&heap, &frames());
        assert_eq!(profile.sample_type.len(), 2);
        assert!(profile.sample.iter().all(|s| s.label.is_empty()));
    }
}
