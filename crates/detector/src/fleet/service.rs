//! One service of the fleet: its heap (and goroutine) profiles, window by window, folded into the
//! detector's per-site series as they arrive; each profile is dropped once folded, so a
//! service's memory is its series, never its profiles.
//!
//! [`Series`] is the pure part (profiles in, findings out); [`Followed`] asks Pyroscope for the
//! windows of a range that it has not read yet, so watch mode keeps it between periods and reads
//! only what is new; [`scan`] is one range read afresh.

use std::collections::{BTreeMap, VecDeque};

use super::client::{ALLOC_TYPE, Client, GOROUTINE_TYPE, HEAP_TYPE, QueryError};
use super::plan::{self, Range, Window};
use crate::profile::{ProfileKind, Site, SnapshotError, site_amounts, snapshot};
use crate::{Detector, Finding};
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

/// The profile kinds, as indices of per-kind arrays.
const KINDS: [ProfileKind; 2] = [ProfileKind::Heap, ProfileKind::Tasks];

fn slot(kind: ProfileKind) -> usize {
    match kind {
        ProfileKind::Heap => 0,
        ProfileKind::Tasks => 1,
    }
}

/// A service's per-site series (pure: profiles in, findings out). Times are kept as seconds
/// since `epoch`, a fixed instant, so a series goes on from one watch period to the next.
#[derive(Debug)]
pub struct Series {
    detector: Detector,
    epoch: i64,
    capacity: usize,
    /// Per kind, the windows folded that the series still holds (the latest `capacity`).
    folded: [VecDeque<Window>; 2],
    /// Per kind, the first window ever folded.
    first: [Option<Window>; 2],
}

impl Series {
    /// Empty series over `range`, as long as its windows.
    pub fn new(range: Range) -> Self {
        Self::with_epoch(range.from, range.windows().len())
    }

    /// Empty series whose times count from `epoch` (unix ms), holding the latest `capacity`
    /// profiles of each kind.
    pub fn with_epoch(epoch: i64, capacity: usize) -> Self {
        Self {
            detector: Detector::new(capacity),
            epoch,
            capacity,
            folded: Default::default(),
            first: [None, None],
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
        self.detector.observe(self.seconds(window.start), &snapshot);
        let folded = &mut self.folded[slot(kind)];
        folded.push_back(window);
        if folded.len() > self.capacity {
            folded.pop_front();
        }
        self.first[slot(kind)].get_or_insert(window);
        Ok(true)
    }

    /// Windows the series holds: heap, goroutine.
    pub fn windows(&self) -> (usize, usize) {
        (self.folded[0].len(), self.folded[1].len())
    }

    /// The first window of `kind` ever folded.
    pub fn first_window(&self, kind: ProfileKind) -> Option<Window> {
        self.first[slot(kind)]
    }

    /// The latest window of `kind` folded: the one a finding's `retained` comes from.
    pub fn last_window(&self, kind: ProfileKind) -> Option<Window> {
        self.folded[slot(kind)].back().copied()
    }

    /// Seconds from the epoch to `at` (ms): the time axis of the analysis.
    pub fn seconds(&self, at: i64) -> f64 {
        (at - self.epoch) as f64 / 1000.0
    }

    /// Unix ms of `seconds` on the time axis.
    pub fn at(&self, seconds: f64) -> i64 {
        self.epoch + (seconds * 1000.0).round() as i64
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

fn type_id(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Heap => HEAP_TYPE,
        ProfileKind::Tasks => GOROUTINE_TYPE,
    }
}

/// A service followed over time: its series, and per kind the start of the first window not
/// read yet.
#[derive(Debug)]
pub struct Followed {
    series: Series,
    /// Per kind: every window before this one has been read (unix ms).
    next: [Option<i64>; 2],
    /// What each heap window allocated per site (`memory:alloc_space`), for the windows it was
    /// asked for, by window start: read only when a held leak needs it (see
    /// [`Detector::needing_allocations`]), and kept while the series holds the window.
    allocations: BTreeMap<i64, BTreeMap<Site, f64>>,
}

impl Followed {
    /// A service not read yet: its series count time from `epoch` and hold `capacity` profiles
    /// of each kind (the windows of a range).
    pub fn new(epoch: i64, capacity: usize) -> Self {
        Self {
            series: Series::with_epoch(epoch, capacity),
            next: [None, None],
            allocations: BTreeMap::new(),
        }
    }

    /// Its series.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// Reads the windows of `range` not read yet: which profile types the service has, then its
    /// heap and goroutine profiles, one window at a time. A window that comes back empty after
    /// the last one with data is read again next time (its push may not have landed yet).
    pub fn update(
        &mut self,
        client: &Client,
        service: &str,
        range: &Range,
    ) -> Result<(), ServiceError> {
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
        for window in range.windows() {
            for kind in KINDS {
                if kind == ProfileKind::Tasks && !goroutines {
                    continue;
                }
                if self.next[slot(kind)].is_some_and(|next| window.start < next) {
                    continue;
                }
                let profile =
                    client.merge_profile(type_id(kind), &selector, window.start, window.end)?;
                if self.series.fold(window, kind, &profile)? {
                    self.next[slot(kind)] = Some(window.end);
                }
            }
        }
        if self.series.windows().0 == 0 {
            return Err(ServiceError::NoHeapData);
        }
        if types.iter().any(|t| t == ALLOC_TYPE) {
            self.prove_held_leaks(client, &selector)?;
        }
        Ok(())
    }

    /// Gives the heap sites that rose and held, but too little to be called a leak without
    /// allocation counts, the counts of every window the series holds (asking Pyroscope for the
    /// windows not asked before): a site that kept what it allocated is a held leak; a cache
    /// that warmed up and churns is not.
    fn prove_held_leaks(&mut self, client: &Client, selector: &str) -> Result<(), ServiceError> {
        let wanted = self.series.detector.needing_allocations();
        if wanted.is_empty() {
            return Ok(());
        }
        let windows: Vec<Window> = self.series.folded[slot(ProfileKind::Heap)]
            .iter()
            .copied()
            .collect();
        if let Some(first) = windows.first() {
            self.allocations = self.allocations.split_off(&first.start);
        }
        for window in &windows {
            if self.allocations.contains_key(&window.start) {
                continue;
            }
            let profile = client.merge_profile(ALLOC_TYPE, selector, window.start, window.end)?;
            let shares = if profile.sample.is_empty() {
                BTreeMap::new()
            } else {
                site_amounts(&profile, "alloc_space").map_err(|source| ServiceError::Profile {
                    kind: "alloc_space",
                    at: plan::format_rfc3339(window.start),
                    source,
                })?
            };
            self.allocations.insert(window.start, shares);
        }
        for site in wanted {
            // Cumulative from the first window held, at each window's time on the series' axis.
            let mut total = 0.0;
            let cumulative: Vec<(f64, f64)> = windows
                .iter()
                .map(|window| {
                    total += self.allocations[&window.start]
                        .get(&site)
                        .copied()
                        .unwrap_or(0.0);
                    (self.series.seconds(window.start), total)
                })
                .collect();
            self.series
                .detector
                .attach_allocations(ProfileKind::Heap, &site, |t| {
                    cumulative
                        .iter()
                        .find(|(at, _)| (*at - t).abs() < 1e-6)
                        .map(|&(_, total)| total)
                });
        }
        Ok(())
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

/// Scans one service over the whole `range`: which profile types it has, then its heap and
/// goroutine profiles, one window at a time.
pub fn scan(client: &Client, service: &str, range: &Range) -> Result<Scanned, ServiceError> {
    let mut followed = Followed::new(range.from, range.windows().len());
    followed.update(client, service, range)?;
    let (heap_windows, goroutine_windows) = followed.series.windows();
    Ok(Scanned {
        findings: followed.series.findings(),
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

    /// The smallest range fleet accepts, 8 windows, is enough for a steady heap leak (issue 21,
    /// item 2: the trend's recent part had 5 points there, which could never pass).
    #[test]
    fn a_steady_heap_leak_over_eight_windows_is_found() {
        let range = Range::new(S, S + 8 * 15_000, Duration::from_secs(15)).unwrap();
        assert_eq!(range.windows().len(), 8);
        let mut series = Series::new(range.clone());
        for (k, window) in range.windows().into_iter().enumerate() {
            let profile = heap(&[("app::leak", (1 << 20) * 15 * (k as i64 + 1))]);
            assert!(series.fold(window, ProfileKind::Heap, &profile).unwrap());
        }
        let findings = series.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].evidence.test, "trend");
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
        // The workspace's fixtures, two levels up from this crate.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pyroscope/merge_profile/checkout/memory_inuse_space_bytes_space_bytes/1796136458000.pb.gz"
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
