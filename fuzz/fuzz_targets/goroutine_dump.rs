//! Go's goroutine dump (`/debug/pprof/goroutine?debug=2`) as `leakfinder scan` reads it from a Go
//! target: the bytes as text (lossily, as the sampler does), `goroutines::parse`, the snapshot
//! for Go and for Rust stacks, and the same dump seen again and again by the detector.
//!
//! Asserts: never more than `MAX_GOROUTINES` goroutines nor `MAX_FRAMES` frames each; every
//! goroutine with frames is counted once at one site, with its id; the blocked part within the
//! whole; every finding's numbers are finite.

#![no_main]

use leakfinder_detector::frames::Language;
use leakfinder_detector::goroutines::{self, MAX_FRAMES, MAX_GOROUTINES};
use leakfinder_fuzz::{check_findings, check_snapshot, growing_series};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = goroutines::parse(&text);
    assert!(parsed.len() <= MAX_GOROUTINES);
    assert!(
        parsed
            .iter()
            .all(|goroutine| goroutine.frames.len() <= MAX_FRAMES)
    );
    let with_frames = parsed
        .iter()
        .filter(|goroutine| !goroutine.frames.is_empty());
    let mut ids: Vec<u64> = with_frames.map(|goroutine| goroutine.id).collect();
    ids.sort_unstable();
    for language in [
        Language::Go {
            goroot_src: Some("/usr/local/go/src/".into()),
        },
        Language::Rust,
    ] {
        let snapshot = goroutines::snapshot(&parsed, &language);
        check_snapshot(&snapshot);
        let mut counted: Vec<u64> = snapshot
            .sites
            .values()
            .flat_map(|retained| retained.ids.iter().copied())
            .collect();
        counted.sort_unstable();
        assert_eq!(counted, ids, "every goroutine with frames, once");
        let total: f64 = snapshot.sites.values().map(|retained| retained.value).sum();
        assert_eq!(total, ids.len() as f64);
        if language.is_go() {
            check_findings(&growing_series(&snapshot));
        }
    }
});
