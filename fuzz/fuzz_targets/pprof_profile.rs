//! A profile from any URL a user scans: `leakfinder_pprof::decode` with `scan`'s limit, then
//! what the detector does with it (the heap and task snapshots, `site_amounts`, a series of
//! profiles through `Detector::observe` and `findings`).
//!
//! Asserts: a decoded profile encodes back to itself (plain and gzipped); snapshots hold positive,
//! finite amounts; every finding's numbers are finite.

#![no_main]

use leakfinder_detector::profile::{self, ProfileKind};
use leakfinder_detector::sampler::MAX_PROFILE_BYTES;
use leakfinder_fuzz::{check_findings, check_snapshot, growing_series};
use leakfinder_pprof::{self as pprof, Profile};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = pprof::decode(data, MAX_PROFILE_BYTES) else {
        return;
    };
    let plain = profile.encode_to_vec();
    assert_eq!(
        Profile::decode(plain.as_slice()).expect("an encoded profile decodes"),
        profile
    );
    assert_eq!(
        pprof::decode(&pprof::encode_gzip(&profile), MAX_PROFILE_BYTES)
            .expect("a gzipped profile decodes"),
        profile
    );
    let _ = profile::language(&profile);
    for kind in [ProfileKind::Heap, ProfileKind::Tasks] {
        if let Ok(snapshot) = profile::snapshot(&profile, kind) {
            assert_eq!(snapshot.kind, kind);
            check_snapshot(&snapshot);
            check_findings(&growing_series(&snapshot));
        }
    }
    for sample_type in ["alloc_space", "inuse_space", "goroutine"] {
        if let Ok(amounts) = profile::site_amounts(&profile, sample_type) {
            for (site, amount) in amounts {
                assert!(amount > 0.0 && amount.is_finite(), "{site:?}: {amount}");
            }
        }
    }
});
