//! What the fuzz targets share: an allocator that turns an oversized allocation into a crash,
//! and the checks every decoded profile and every verdict must pass.
//!
//! The targets are built without a sanitizer (`--sanitizer none`), so libFuzzer's
//! `-malloc_limit_mb` (which needs a sanitizer's malloc hooks) cannot see one huge allocation
//! made from a few bytes of input; [`Capped`] does, and aborts, so libFuzzer keeps the input.
//!
//! # Layout
//! - [`Capped`] and [`cap_allocations`]: the allocation cap;
//! - [`check_snapshot`], [`growing_series`], [`check_findings`]: what must hold of a snapshot
//!   read from untrusted input and of the findings the detector draws from it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use leakfinder_detector::profile::Snapshot;
use leakfinder_detector::{Detector, Finding};

/// The largest single allocation allowed until a target sets its own: the decoders' own
/// decompression limit (`leakfinder_detector::sampler::MAX_PROFILE_BYTES`).
pub const DEFAULT_CAP: usize = 256 << 20;

static CAP: AtomicUsize = AtomicUsize::new(DEFAULT_CAP);

/// Sets the largest single allocation the code under test may make (for this input).
pub fn cap_allocations(bytes: usize) {
    CAP.store(bytes, Ordering::Relaxed);
}

/// The system allocator, aborting on any allocation larger than the cap.
pub struct Capped;

impl Capped {
    fn check(size: usize) {
        if size > CAP.load(Ordering::Relaxed) {
            // No formatting: it could allocate. libFuzzer reports the abort and keeps the input.
            let _ = std::io::stderr()
                .write_all(b"leakfinder-fuzz: an allocation larger than the cap (out of memory)\n");
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, after a size check that
// only aborts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System with `layout` (every allocation goes through it).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as for dealloc; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The allocator of every target: one crate in the graph may declare it, and this one is
/// linked into all of them.
#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// What a snapshot read from any input must be: amounts positive and finite (they are sums of
/// clamped counts), the blocked part within the whole, survival counts finite.
pub fn check_snapshot(snapshot: &Snapshot) {
    for (site, retained) in &snapshot.sites {
        assert!(
            retained.value > 0.0 && retained.value.is_finite(),
            "{site:?}: {}",
            retained.value
        );
        assert!(
            (0.0..=retained.value).contains(&retained.blocked),
            "{site:?}: blocked {} of {}",
            retained.blocked,
            retained.value
        );
        assert!(retained.samples.is_finite() && retained.samples >= 0.0);
        if let Some(allocated) = retained.allocated {
            assert!(
                allocated.is_finite() && allocated >= 0.0,
                "{site:?}: {allocated}"
            );
        }
        for &(age, amount) in &retained.ages {
            assert!(
                age.is_finite() && amount.is_finite(),
                "{site:?}: {age} {amount}"
            );
        }
    }
}

/// Profiles in a series: enough for every test (trend, ratchet, held) to reach a verdict.
pub const SERIES: usize = 8;

/// `snapshot` as if it had grown: the `k`th of [`SERIES`] profiles, taken `15 k` seconds in,
/// holds `k + 1` times as much everywhere. What the detector then finds.
pub fn growing_series(snapshot: &Snapshot) -> Vec<Finding> {
    let mut detector = Detector::new(SERIES);
    for k in 0..SERIES {
        let factor = (k + 1) as f64;
        let mut grown = snapshot.clone();
        for retained in grown.sites.values_mut() {
            retained.value *= factor;
            retained.blocked *= factor;
            retained.samples *= factor;
            if let Some(allocated) = &mut retained.allocated {
                *allocated *= factor;
            }
        }
        detector.observe(15.0 * k as f64, &grown);
    }
    detector.findings()
}

/// What every finding must be: every number finite (`--json` would print a NaN or an infinity
/// as `null`), the confidence a probability.
pub fn check_findings(findings: &[Finding]) {
    for finding in findings {
        let evidence = &finding.evidence;
        for (what, number) in [
            ("rate_per_second", finding.rate_per_second),
            ("retained", finding.retained),
            ("first_seen_seconds", finding.first_seen_seconds),
            ("confidence", finding.confidence),
            ("growth", evidence.growth),
            ("recent_rate_per_second", evidence.recent_rate_per_second),
        ]
        .into_iter()
        .chain(evidence.survival.map(|n| ("survival", n)))
        .chain(evidence.allocated.map(|n| ("allocated", n)))
        .chain(evidence.steps_seconds.iter().map(|&n| ("steps_seconds", n)))
        {
            assert!(number.is_finite(), "{what} is {number}: {finding:#?}");
        }
        assert!(
            (0.0..=1.0).contains(&finding.confidence),
            "confidence {}: {finding:#?}",
            finding.confidence
        );
        if let Some(ages) = &evidence.ages {
            for age in [
                ages.youngest_seconds,
                ages.median_seconds,
                ages.oldest_seconds,
            ] {
                assert!(age.is_finite(), "age {age}: {finding:#?}");
            }
        }
    }
}
