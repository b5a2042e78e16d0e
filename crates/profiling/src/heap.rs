//! The heap profile: jemalloc's sampled live allocations as a pprof `inuse_space` profile that
//! reads like Go's: symbolised in the process, and trimmed so that flat bytes land on the code
//! that allocated, not on jemalloc or the standard library's allocation plumbing.
//!
//! Parsing, un-sampling, trimming and building are pure functions; [`dump`] is the only I/O.

use std::sync::Arc;

use leakfinder_pprof::conventions::is_allocator;

use super::ProfilingError;
use super::symbols::{FramesByAddress, Symbolizer, caller};
use leakfinder_pprof::{Frame, Profile, ProfileBuilder, StackEntry};

/// One sampled stack of jemalloc's heap dump, with its sampled (not yet scaled) counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    /// Return addresses, leaf first.
    pub addresses: Vec<u64>,
    /// Sampled live objects.
    pub objects: u64,
    /// Sampled live bytes.
    pub bytes: u64,
}

/// jemalloc's heap dump (`heap_v2`), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeap {
    /// The average bytes between samples.
    pub sample_period: u64,
    /// Every stack with live sampled allocations.
    pub stacks: Vec<RawStack>,
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

/// Parses jemalloc's `prof.dump` text format.
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
                    objects,
                    bytes,
                });
            }
        }
    }
    Ok(RawHeap {
        sample_period,
        stacks,
    })
}

/// `" 3: 3145728 [0: 0]"` to `(3, 3145728)`.
fn parse_counts(counts: &str) -> Option<(u64, u64)> {
    let (objects, rest) = counts.split_once(':')?;
    let bytes = rest.split_whitespace().next()?;
    Some((objects.trim().parse().ok()?, bytes.parse().ok()?))
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

/// Builds the pprof profile of a parsed heap dump, given the frames of each of its addresses.
pub fn build_profile(heap: &RawHeap, frames: &FramesByAddress) -> Profile {
    let mut builder = ProfileBuilder::new(
        &[("inuse_objects", "count"), ("inuse_space", "bytes")],
        ("space", "bytes"),
        heap.sample_period as i64,
    );
    builder.comment("jemalloc heap profile, symbolised and trimmed by leakfinder");
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
        let (objects, bytes) = unsample(raw.objects, raw.bytes, heap.sample_period);
        builder.add_sample(&stack, vec![objects, bytes], &[]);
    }
    builder.build()
}

/// Dumps jemalloc's heap profile, symbolises it and builds the pprof profile. Blocking.
///
/// Its own allocations (the dump's text, the parsed stacks, the profile) are not sampled: they
/// are gone when it returns, and sampled they would bring the profiler's own stacks into the
/// next profiles, each a new set of addresses to symbolise.
pub fn dump(symbolizer: &Symbolizer) -> Result<Profile, ProfilingError> {
    let _unsampled = super::jemalloc::UnsampledThread::begin();
    let control = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or(ProfilingError::HeapProfilingDisabled)?;
    let text = {
        let control = control.blocking_lock();
        if !control.activated() {
            return Err(ProfilingError::HeapProfilingDisabled);
        }
        super::jemalloc::dump_heap_profile()
            .map_err(|error| ProfilingError::Dump(error.to_string()))?
    };
    let heap = parse_heap_v2(&text).map_err(|error| ProfilingError::Dump(error.to_string()))?;
    let addresses = heap
        .stacks
        .iter()
        .flat_map(|stack| stack.addresses.iter().map(|&address| caller(address)));
    let frames = symbolizer.resolve(addresses);
    Ok(build_profile(&heap, &frames))
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
        assert_eq!(
            heap.stacks,
            vec![
                RawStack {
                    addresses: vec![0x10, 0x20, 0x30],
                    objects: 3,
                    bytes: 3_145_728
                },
                RawStack {
                    addresses: vec![0x10, 0x40],
                    objects: 2,
                    bytes: 272
                },
            ],
            "the total and empty stacks are skipped"
        );
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
}
