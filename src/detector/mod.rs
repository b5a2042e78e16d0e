//! The leak detector: watch a live service's heap and task profiles and say which function, at
//! which line, is leaking how fast, while staying quiet about warm-ups, plateaus and churn.
//!
//! - [`sampler`] fetches profiles over HTTP (I/O only);
//! - [`profile`] reads a profile as the amount retained per site (pure);
//! - [`analysis`] decides, per site, whether its series leaks (pure);
//! - [`Detector`] keeps the series and turns verdicts into [`Finding`]s (pure: time is passed in);
//! - [`scan`] is the `leakfinder scan` command.
//!
//! It works on this service and on any Go service with `net/http/pprof`.

pub mod analysis;
pub mod profile;
pub mod sampler;
pub mod scan;
pub mod watch;

use std::collections::BTreeMap;

use analysis::{Point, Thresholds, Verdict};
use profile::{ProfileKind, Site, Snapshot};

/// Orders findings as reports show them: heap before tasks, fastest first.
pub fn rank(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (b.unit == "bytes")
            .cmp(&(a.unit == "bytes"))
            .then(b.rate_per_second.total_cmp(&a.rate_per_second))
    });
}

/// The spawn site in a task stack (`function file:line` strings, leaf first): its root-most
/// `created by` frame, as this service's task profile and Go's text profiles end.
fn spawn_site(stack: &[String]) -> Option<String> {
    stack
        .last()
        .and_then(|frame| frame.strip_prefix(crate::profiling::tasks::profile::CREATED_BY))
        .map(str::to_owned)
}

/// A site whose retained amount keeps rising.
#[derive(Debug, Clone, PartialEq, serde::Serialize, poem_openapi::Object)]
pub struct Finding {
    /// `heap`, `tasks`, or `goroutines` for a Go target's tasks.
    pub kind: String,
    /// The leaking function.
    pub function: String,
    /// Its source file.
    pub file: String,
    /// The line that retains.
    pub line: i64,
    /// Growth per second (Theil-Sen), in `unit`s.
    pub rate_per_second: f64,
    /// `bytes` or `tasks`.
    pub unit: String,
    /// What the site retains in the latest profile.
    pub retained: f64,
    /// Seconds after the first sample at which the site was first seen.
    pub first_seen_seconds: f64,
    /// `1 - p` of the trend tests.
    pub confidence: f64,
    /// For tasks, where they were spawned (`function file:line`), when the profile says.
    pub spawned_by: Option<String>,
    /// Why: the stack, and the numbers behind the verdict.
    pub evidence: Evidence,
}

/// The evidence for a finding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, poem_openapi::Object)]
pub struct Evidence {
    /// The stack of the largest sample at the site, leaf first.
    pub stack: Vec<String>,
    /// Profiles the series spans.
    pub samples: usize,
    /// Robust growth over the window.
    pub growth: f64,
    /// Growth per second over the recent half of the window.
    pub recent_rate_per_second: f64,
}

#[derive(Debug, Default)]
struct Series {
    points: Vec<Point>,
    first_seen: f64,
    stack: Vec<String>,
}

/// Per-site series of one profile kind, and the verdicts on them.
#[derive(Debug)]
pub struct Detector {
    window: usize,
    go: bool,
    series: BTreeMap<(ProfileKind, Site), Series>,
    times: BTreeMap<ProfileKind, Vec<f64>>,
}

impl Detector {
    /// A detector that keeps at most `window` points per series (older ones slide out).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(4),
            go: false,
            series: BTreeMap::new(),
            times: BTreeMap::new(),
        }
    }

    /// Adds one profile taken `t` seconds after the start. A site seen before but absent now
    /// retains nothing now.
    pub fn observe(&mut self, t: f64, snapshot: &Snapshot) {
        self.go |= snapshot.go;
        let kind = snapshot.kind;
        let times = self.times.entry(kind).or_default();
        times.push(t);
        if times.len() > self.window {
            times.remove(0);
        }
        for (site, retained) in &snapshot.sites {
            let series = self
                .series
                .entry((kind, site.clone()))
                .or_insert_with(|| Series {
                    first_seen: t,
                    ..Series::default()
                });
            series.stack.clone_from(&retained.stack);
        }
        let window = self.window;
        for ((series_kind, site), series) in self.series.iter_mut() {
            if *series_kind != kind {
                continue;
            }
            let value = snapshot
                .sites
                .get(site)
                .map_or(0.0, |retained| retained.value);
            series.points.push(Point { t, value });
            if series.points.len() > window {
                series.points.remove(0);
            }
        }
        // Sites gone for a whole window are forgotten, so churn cannot grow the map for ever.
        self.series
            .retain(|_, series| series.points.iter().any(|point| point.value > 0.0));
    }

    /// Every leaking site, fastest first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut findings: Vec<Finding> = self
            .series
            .iter()
            .filter_map(|((kind, site), series)| {
                let thresholds = match kind {
                    ProfileKind::Heap => Thresholds::HEAP,
                    ProfileKind::Tasks => Thresholds::TASKS,
                };
                let Verdict::Leak(trend) = analysis::assess(&series.points, &thresholds) else {
                    return None;
                };
                let (kind_name, unit) = match kind {
                    ProfileKind::Heap => ("heap", "bytes"),
                    ProfileKind::Tasks if self.go => ("goroutines", "tasks"),
                    ProfileKind::Tasks => ("tasks", "tasks"),
                };
                Some(Finding {
                    kind: kind_name.to_owned(),
                    function: site.function.clone(),
                    file: site.file.clone(),
                    line: site.line,
                    rate_per_second: trend.rate,
                    unit: unit.to_owned(),
                    retained: series.points.last().map_or(0.0, |point| point.value),
                    first_seen_seconds: series.first_seen,
                    confidence: trend.confidence,
                    spawned_by: spawn_site(&series.stack),
                    evidence: Evidence {
                        stack: series.stack.clone(),
                        samples: series.points.len(),
                        growth: trend.growth,
                        recent_rate_per_second: trend.recent_rate,
                    },
                })
            })
            .collect();
        rank(&mut findings);
        findings
    }

    /// How many sites are being watched.
    pub fn sites(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profile::Retained;

    fn snapshot(kind: ProfileKind, sites: &[(&str, f64)]) -> Snapshot {
        Snapshot {
            kind,
            go: false,
            sites: sites
                .iter()
                .map(|(function, value)| {
                    let site = Site {
                        function: (*function).into(),
                        file: "src/x.rs".into(),
                        line: 1,
                    };
                    (
                        site,
                        Retained::new(*value, vec![format!("{function} src/x.rs:1")]),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_growing_site_is_found_and_a_flat_one_is_not() {
        let mut detector = Detector::new(60);
        for i in 0..12 {
            let t = i as f64;
            detector.observe(
                t,
                &snapshot(
                    ProfileKind::Heap,
                    &[("leaky", 1e6 * t + 1e6), ("steady", 5e6)],
                ),
            );
        }
        let findings = detector.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].function, "leaky");
        assert_eq!(findings[0].kind, "heap");
        assert!((findings[0].rate_per_second - 1e6).abs() < 1.0);
        assert_eq!(findings[0].retained, 12e6);
    }

    /// A deterministic xorshift stream, so the property tests are repeatable.
    fn random(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    fn valid_profile() -> Vec<u8> {
        use crate::profiling::pprof::{Frame, ProfileBuilder, StackEntry, encode_gzip};
        let mut builder = ProfileBuilder::new(
            &[("inuse_objects", "count"), ("inuse_space", "bytes")],
            ("space", "bytes"),
            524_288,
        );
        for i in 0..20u64 {
            let frame = |name: String| Frame {
                function: name.into(),
                file: "src/x.rs".into(),
                line: i as u32,
            };
            let stack = vec![
                StackEntry {
                    address: i,
                    frames: vec![frame(format!("leaf{i}")), frame("runtime.mallocgc".into())]
                        .into(),
                    skip: 0,
                },
                StackEntry {
                    address: 100 + i,
                    frames: vec![frame("main.main".into())].into(),
                    skip: 0,
                },
            ];
            builder.add_sample(&stack, vec![i as i64, (i * 1000) as i64], &[("k", "v")]);
        }
        encode_gzip(&builder.build())
    }

    /// Property: whatever bytes arrive, decoding, reading per site and analysing never panic.
    #[test]
    fn malformed_profiles_never_panic_the_decoder_or_the_analysis() {
        use crate::profiling::pprof::decode;
        let valid = valid_profile();
        let raw = {
            use std::io::Read;
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(valid.as_slice())
                .read_to_end(&mut raw)
                .unwrap();
            raw
        };
        let mut next = random(42);
        let mut detector = Detector::new(16);
        let mut decoded = 0;
        for round in 0..4000u64 {
            let mut bytes = if round % 2 == 0 {
                raw.clone()
            } else {
                valid.clone()
            };
            match next() % 4 {
                0 => {
                    for _ in 0..1 + next() % 8 {
                        let at = (next() as usize) % bytes.len();
                        bytes[at] ^= 1 << (next() % 8);
                    }
                }
                1 => bytes.truncate((next() as usize) % bytes.len()),
                2 => {
                    let at = (next() as usize) % bytes.len();
                    bytes.splice(at..at, (0..next() % 64).map(|_| next() as u8));
                }
                _ => bytes = (0..next() % 512).map(|_| next() as u8).collect(),
            }
            if let Ok(profile) = decode(&bytes, 1 << 20) {
                decoded += 1;
                for kind in [ProfileKind::Heap, ProfileKind::Tasks] {
                    if let Ok(snapshot) = profile::snapshot(&profile, kind) {
                        detector.observe(round as f64, &snapshot);
                    }
                }
                let _ = detector.findings();
            }
        }
        assert!(
            decoded > 100,
            "mutations still decode often enough to exercise the reader: {decoded}"
        );
    }

    /// Property: any series, however odd its numbers, gets a verdict without panicking.
    #[test]
    fn odd_series_never_panic_the_analysis() {
        let mut next = random(7);
        let odd = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            -f64::MAX,
            0.0,
            -0.0,
            1e-300,
        ];
        for _ in 0..2000 {
            let n = (next() % 40) as usize;
            let points: Vec<analysis::Point> = (0..n)
                .map(|i| analysis::Point {
                    t: if next().is_multiple_of(10) {
                        odd[(next() % 8) as usize]
                    } else {
                        i as f64
                    },
                    value: if next().is_multiple_of(5) {
                        odd[(next() % 8) as usize]
                    } else {
                        (next() % 1_000_000) as f64
                    },
                })
                .collect();
            let _ = analysis::assess(&points, &Thresholds::HEAP);
            let _ = analysis::theil_sen(&points);
            let _ = analysis::mann_kendall(&points.iter().map(|p| p.value).collect::<Vec<_>>());
        }
    }

    #[test]
    fn vanished_sites_read_zero_then_are_forgotten() {
        let mut detector = Detector::new(5);
        detector.observe(0.0, &snapshot(ProfileKind::Heap, &[("once", 1e6)]));
        for i in 1..10 {
            detector.observe(i as f64, &snapshot(ProfileKind::Heap, &[]));
        }
        assert_eq!(detector.sites(), 0);
    }
}
