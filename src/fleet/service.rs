//! One service of the fleet: its heap (and goroutine) profiles, window by window, folded into the
//! detector's per-site series as they arrive; each profile is dropped once folded, so a
//! service's memory is its series, never its profiles.
//!
//! [`Series`] is the pure part (profiles in, findings out); [`scan`] asks Pyroscope for them.

use super::client::{Client, GOROUTINE_TYPE, HEAP_TYPE, QueryError};
use super::plan::{self, Range, Window};
use leakfinder_detector::profile::{ProfileKind, SnapshotError, snapshot};
use leakfinder_detector::{Detector, Finding};
use leakfinder_pprof::Profile;

/// Why one service could not be scanned (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Pyroscope has no heap profiles of the service in the range.
    #[error("no heap profiles ({HEAP_TYPE}) in the range; it pushes only: {}", list(.types))]
    NoHeap {
        /// The profile types it does have.
        types: Vec<String>,
    },
    /// Heap profiles are listed, yet every window's merge is empty.
    #[error("every window's heap profile is empty: nothing pushed in the range")]
    NoHeapData,
    /// A merged profile lacks the sample type its profile type promises.
    #[error("the {kind} profile of the window at {at}: {source}")]
    Profile {
        /// `heap` or `goroutine`.
        kind: &'static str,
        /// The window's start, RFC 3339.
        at: String,
        /// What is missing.
        #[source]
        source: SnapshotError,
    },
}

fn list(types: &[String]) -> String {
    if types.is_empty() {
        "nothing".to_owned()
    } else {
        types.join(", ")
    }
}

/// A service's per-site series over a range (pure: profiles in, findings out).
#[derive(Debug)]
pub struct Series {
    detector: Detector,
    range: Range,
    heap_windows: usize,
    goroutine_windows: usize,
}

impl Series {
    /// Empty series over `range`, as long as its windows.
    pub fn new(range: Range) -> Self {
        Self {
            detector: Detector::new(range.windows().len()),
            range,
            heap_windows: 0,
            goroutine_windows: 0,
        }
    }

    /// Folds one window's merged profile in. An empty merge (nothing pushed in the window) is
    /// skipped, not read as "nothing retained". Returns whether it was folded.
    pub fn fold(
        &mut self,
        window: Window,
        kind: ProfileKind,
        profile: &Profile,
    ) -> Result<bool, ServiceError> {
        if profile.sample.is_empty() {
            return Ok(false);
        }
        let snapshot = snapshot(profile, kind).map_err(|source| ServiceError::Profile {
            kind: kind_name(kind),
            at: plan::format_rfc3339(window.start),
            source,
        })?;
        self.detector
            .observe(self.range.seconds(window.start), &snapshot);
        match kind {
            ProfileKind::Heap => self.heap_windows += 1,
            ProfileKind::Tasks => self.goroutine_windows += 1,
        }
        Ok(true)
    }

    /// Windows folded: heap, goroutine.
    pub fn windows(&self) -> (usize, usize) {
        (self.heap_windows, self.goroutine_windows)
    }

    /// The leaking sites, fastest first.
    pub fn findings(&self) -> Vec<Finding> {
        self.detector.findings()
    }
}

fn kind_name(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Heap => "heap",
        ProfileKind::Tasks => "goroutine",
    }
}

/// What scanning one service found.
#[derive(Debug)]
pub struct Scanned {
    /// Its leaks, fastest first.
    pub findings: Vec<Finding>,
    /// Heap windows with a profile.
    pub heap_windows: usize,
    /// Goroutine windows with a profile (0 when it pushes none).
    pub goroutine_windows: usize,
}

/// Scans one service: which profile types it has, then its heap and goroutine profiles, one
/// window at a time.
pub fn scan(client: &Client, service: &str, range: &Range) -> Result<Scanned, ServiceError> {
    let selector = plan::selector(service);
    let types = client.label_values(
        "__profile_type__",
        std::slice::from_ref(&selector),
        range.from,
        range.to,
    )?;
    if !types.iter().any(|t| t == HEAP_TYPE) {
        return Err(ServiceError::NoHeap { types });
    }
    let goroutines = types.iter().any(|t| t == GOROUTINE_TYPE);
    let mut series = Series::new(range.clone());
    for window in range.windows() {
        let heap = client.merge_profile(HEAP_TYPE, &selector, window.start, window.end)?;
        series.fold(window, ProfileKind::Heap, &heap)?;
        drop(heap);
        if goroutines {
            let tasks =
                client.merge_profile(GOROUTINE_TYPE, &selector, window.start, window.end)?;
            series.fold(window, ProfileKind::Tasks, &tasks)?;
        }
    }
    let (heap_windows, goroutine_windows) = series.windows();
    if heap_windows == 0 {
        return Err(ServiceError::NoHeapData);
    }
    Ok(Scanned {
        findings: series.findings(),
        heap_windows,
        goroutine_windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry};
    use std::time::Duration;

    const S: i64 = 1_796_136_113_000;

    fn heap(sites: &[(&str, i64)]) -> Profile {
        let mut builder = ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 1);
        for (index, (function, bytes)) in sites.iter().enumerate() {
            let entry = StackEntry {
                address: index as u64 + 1,
                frames: vec![Frame::new(function, "src/app.rs", 7)].into(),
                skip: 0,
            };
            builder.add_sample(&[entry], vec![*bytes], &[]);
        }
        builder.build()
    }

    fn range() -> Range {
        Range::new(S, S + 360_000, Duration::from_secs(15)).unwrap()
    }

    #[test]
    fn windows_fold_into_series_and_a_growing_site_is_found_from_its_first_window() {
        let range = range();
        let mut series = Series::new(range.clone());
        for (k, window) in range.windows().into_iter().enumerate() {
            let k = k as i64;
            let profile = heap(&[
                ("app::leak", (1 << 20) * 15 * k + 1),
                ("app::flat", 8 << 20),
            ]);
            assert!(series.fold(window, ProfileKind::Heap, &profile).unwrap());
        }
        assert_eq!(series.windows(), (24, 0));
        let findings = series.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].function, "app::leak");
        assert!((findings[0].rate_per_second - f64::from(1 << 20)).abs() < 1.0);
        assert_eq!(findings[0].first_seen_seconds, 0.0);
    }

    #[test]
    fn an_empty_window_is_skipped_not_read_as_zero() {
        let range = range();
        let mut series = Series::new(range.clone());
        for (k, window) in range.windows().into_iter().enumerate() {
            let profile = if k % 3 == 1 {
                Profile::default()
            } else {
                heap(&[("app::flat", 8 << 20)])
            };
            series.fold(window, ProfileKind::Heap, &profile).unwrap();
        }
        assert_eq!(series.windows(), (16, 0));
        assert!(series.findings().is_empty());
    }

    #[test]
    fn a_profile_without_its_sample_type_names_the_window() {
        let range = range();
        let mut series = Series::new(range.clone());
        let error = series
            .fold(range.windows()[1], ProfileKind::Tasks, &heap(&[("a", 1)]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the goroutine profile of the window at 2026-12-01T14:42:08Z: the profile has no goroutine samples (it has: inuse_space)"
        );
    }

    /// A real merged heap profile: checkout's last window, as Pyroscope sent it.
    fn recorded() -> Vec<u8> {
        use std::io::Read;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pyroscope/merge_profile/checkout/memory_inuse_space_bytes_space_bytes/1796136458000.pb.gz"
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(std::fs::read(path).unwrap().as_slice())
            .read_to_end(&mut plain)
            .unwrap();
        plain
    }

    /// Reads an answer as the fleet does: decode, then fold into a service's series.
    fn read_answer(series: &mut Series, window: Window, bytes: &[u8]) -> Result<(), String> {
        let profile = super::super::client::parse_profile(bytes).map_err(|e| e.to_string())?;
        series
            .fold(window, ProfileKind::Heap, &profile)
            .map_err(|e| e.to_string())?;
        series
            .fold(window, ProfileKind::Tasks, &profile)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn assert_clear(error: &str) {
        assert!(
            error.starts_with("Pyroscope's answer to SelectMergeProfile is malformed: ")
                || error.starts_with("the goroutine profile of the window at ")
                || error.starts_with("the heap profile of the window at "),
            "{error}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random bytes: a clear error (or, rarely, an empty profile), never a panic.
        #[test]
        fn random_answers_give_a_clear_error_never_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let range = range();
            let mut series = Series::new(range.clone());
            if let Err(error) = read_answer(&mut series, range.windows()[0], &bytes) {
                assert_clear(&error);
            }
            let _ = series.findings();
        }

        /// A real answer cut short or with bytes flipped: a clear error or a profile read as far
        /// as it makes sense, never a panic.
        #[test]
        fn truncated_or_corrupted_answers_never_panic(cut in 0usize..100_000, flips in proptest::collection::vec((0usize..100_000, proptest::prelude::any::<u8>()), 0..8)) {
            let mut bytes = recorded();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let range = range();
            let mut series = Series::new(range.clone());
            for window in range.windows().into_iter().take(9) {
                if let Err(error) = read_answer(&mut series, window, &bytes) {
                    assert_clear(&error);
                }
            }
            let _ = series.findings();
        }

        /// Huge counts (values near i64::MAX, negative, huge ids, a length prefix past the end):
        /// a finite verdict or a clear error.
        #[test]
        fn huge_counts_are_read_without_overflow(value in proptest::prelude::any::<i64>(), id in proptest::prelude::any::<u64>(), claimed in 1u64..u64::MAX) {
            let mut profile = heap(&[("app::big", value)]);
            profile.sample[0].location_id.push(id);
            profile.sample.push(leakfinder_pprof::Sample { location_id: vec![1; 64], value: vec![i64::MAX], label: vec![] });
            let range = range();
            let mut series = Series::new(range.clone());
            for window in range.windows() {
                series.fold(window, ProfileKind::Heap, &profile).unwrap();
            }
            for finding in series.findings() {
                assert!(finding.rate_per_second.is_finite());
            }
            // A length prefix that claims more bytes than there are.
            let mut claim = vec![0x12u8];
            let mut n = claimed;
            while n >= 0x80 {
                claim.push((n as u8) | 0x80);
                n >>= 7;
            }
            claim.push(n as u8);
            claim.extend_from_slice(b"short");
            let error = super::super::client::parse_profile(&claim).unwrap_err();
            assert_clear(&error.to_string());
        }
    }

    #[test]
    fn an_answer_past_the_size_limit_is_refused_before_it_is_decoded() {
        let oversized = vec![0u8; super::super::client::MAX_PROFILE_BYTES + 1];
        let error = super::super::client::parse_profile(&oversized).unwrap_err();
        assert!(
            error.to_string().contains("decompresses to more than"),
            "{error}"
        );
    }
}
