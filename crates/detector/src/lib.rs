//! The leak detector: watch a live service's heap and task profiles and say which function, at
//! which line, is leaking how fast, while staying quiet about warm-ups, plateaus and churn.
//!
//! It needs no jemalloc and no profiling runtime: only the pprof format, an HTTP client and the
//! analysis, so `cargo install --path crates/detector` gives the `leakfinder` command alone.
//!
//! # Layout
//! - [`sampler`] fetches profiles over HTTP or HTTPS (I/O only);
//! - [`tls`] is HTTPS for both clients: the system's roots, `--ca-cert`, and what a failed
//!   handshake failed at;
//! - [`frames`] says which frame of a stack is the site: the program's own code (pure);
//! - [`profile`] reads a profile as the amount retained per site (pure);
//! - [`analysis`] decides, per site, whether its series leaks: a steady trend, or a ratchet of
//!   steps that never comes down (pure);
//! - [`survival`] decides from what a site retains of what it allocated, and how old that is:
//!   a leak named from one profile, one that is young but fast, one that rose and held (pure);
//! - [`goroutines`] reads Go's goroutine dump (`debug=2`): ids, waits and stacks (pure);
//! - [`Detector`] keeps the series and turns verdicts into [`Finding`]s (pure: time is passed in);
//! - [`scan`] is the `leakfinder scan` command;
//! - [`symbols`] is the `leakfinder symbols` command: a service's prebuilt symbol table;
//! - [`fleet`] is the `leakfinder fleet` command: the same analysis over every service of a
//!   fleet, read back from Pyroscope (`--every`: a watch, exported over OTLP with feature `otlp`).
//!
//! It works on this service and on any Go service with `net/http/pprof`.

#![warn(missing_docs)]

pub mod analysis;
pub mod fleet;
pub mod frames;
pub mod goroutines;
pub mod profile;
pub mod sampler;
pub mod scan;
pub mod survival;
pub mod symbols;
pub mod tls;

use std::collections::{BTreeMap, HashSet};

use analysis::{Point, Thresholds, Verdict};
use profile::{ProfileKind, Retained, Site, Snapshot};
use survival::{AgeThresholds, HeldThresholds, YoungThresholds};

/// Orders findings as reports show them: heap before tasks, fastest first.
pub fn rank(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (b.unit == "bytes")
            .cmp(&(a.unit == "bytes"))
            .then(b.rate_per_second.total_cmp(&a.rate_per_second))
    });
}

/// Seconds since `started`, to the millisecond, as sample times are kept: the first sample,
/// taken as a scan begins, is at 0 (not `5.81e-07`).
pub fn seconds_since(started: std::time::Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// The spawn site in a task stack (`function file:line` strings, leaf first): its root-most
/// `created by` frame, as this service's task profile and Go's text profiles end.
fn spawn_site(stack: &[String]) -> Option<String> {
    stack
        .last()
        .and_then(|frame| frame.strip_prefix(leakfinder_pprof::conventions::CREATED_BY))
        .map(str::to_owned)
}

/// A site whose retained amount keeps rising.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
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
    /// Seconds after the scan's (or watch's) first sample at which the site was first seen.
    pub first_seen_seconds: f64,
    /// `1 - p` of the trend tests (for a ratchet, of the Mann-Kendall test on the whole series).
    pub confidence: f64,
    /// For tasks, where they were spawned (`function file:line`), when the profile says.
    pub spawned_by: Option<String>,
    /// For runtime structures (a heap site of runtime frames only), the task leak they come
    /// from (`function file:line`), when one is found.
    pub attributed_to: Option<String>,
    /// Why: the stack, and the numbers behind the verdict.
    pub evidence: Evidence,
}

/// The evidence for a finding.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct Evidence {
    /// The stack of the largest sample at the site, leaf first.
    pub stack: Vec<String>,
    /// Profiles the series spans.
    pub samples: usize,
    /// Robust growth over the window.
    pub growth: f64,
    /// Growth per second over the recent half of the window.
    pub recent_rate_per_second: f64,
    /// Which test found it: `age` (one profile: it keeps what it allocated, made over a long
    /// time), `young` (it rose at every profile and kept all it allocated), `trend` (a steady
    /// rise), `ratchet` (a floor that rises in steps and never comes down) or `held` (it rose in
    /// steps, kept it, and stopped).
    pub test: String,
    /// When the floor rose (seconds), for a ratchet or a held leak.
    pub steps_seconds: Vec<f64>,
    /// Other sites of the same leak (`function file:line`), added up with this one: the sibling
    /// tasks that one manifestation leaves at different lines.
    pub siblings: Vec<String>,
    /// What the site retains of what it allocated (or spawned): since the target started for
    /// `age`, over the observed profiles otherwise; when the profiles say.
    pub survival: Option<f64>,
    /// What was allocated (bytes) or spawned (tasks) there, when the profile says.
    pub allocated: Option<f64>,
    /// How old what it retains is, when the profile says.
    pub ages: Option<AgeSummary>,
    /// Whether it has stopped growing and holds what it took.
    pub held: bool,
}

/// How old the retained part of a site is (seconds, at the latest profile, weighted by amount).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct AgeSummary {
    /// The youngest.
    pub youngest_seconds: f64,
    /// The median.
    pub median_seconds: f64,
    /// The oldest.
    pub oldest_seconds: f64,
}

impl From<survival::AgeSpread> for AgeSummary {
    fn from(spread: survival::AgeSpread) -> Self {
        Self {
            youngest_seconds: spread.youngest,
            median_seconds: spread.median,
            oldest_seconds: spread.oldest,
        }
    }
}

/// The most goroutine ids remembered per site (for survival): past it, no more are added.
const MAX_IDS: usize = 1 << 20;

/// A site's key and its series.
type Watched<'a> = (&'a (ProfileKind, Site), &'a Series);

#[derive(Debug, Default)]
struct Series {
    points: Vec<Point>,
    /// What was allocated (or spawned) there by each point's time, cumulative, when the
    /// profiles say; empty otherwise. Goroutine ids count as spawned when first seen.
    allocated: Vec<Point>,
    first_seen: f64,
    stack: Vec<String>,
    family: String,
    /// The latest profile's evidence at the site.
    latest: Option<Retained>,
    /// Every goroutine id seen here (Go dumps).
    ids: HashSet<u64>,
}

impl Series {
    /// The allocation counts, if known at every point.
    fn allocated(&self) -> Option<&[Point]> {
        (self.allocated.len() == self.points.len()).then_some(self.allocated.as_slice())
    }

    /// Whether what the site holds now is all much younger than the time it has been watched:
    /// it frees what it allocates and holds only recent allocations (a cache, short-lived
    /// tasks), however its amount wanders. A leak keeps its oldest allocations. Only profiles
    /// with ages say; a site watched for less than [`TURNOVER_MIN_WATCH`] seconds is not judged.
    fn turns_over_by_age(&self) -> bool {
        let Some(spread) = self
            .latest
            .as_ref()
            .and_then(|latest| survival::age_spread(&latest.ages))
        else {
            return false;
        };
        let watched = self.points.last().map_or(0.0, |p| p.t) - self.first_seen;
        watched >= TURNOVER_MIN_WATCH && spread.oldest < TURNOVER_AGE_SHARE * watched
    }

    /// Seconds from its first point to its last.
    fn span(&self) -> f64 {
        match (self.points.first(), self.points.last()) {
            (Some(first), Some(last)) => last.t - first.t,
            _ => 0.0,
        }
    }

    /// What was retained over the window of what was allocated over it.
    fn window_survival(&self) -> Option<f64> {
        let allocated = self.allocated()?;
        let (first, last) = (allocated.first()?, allocated.last()?);
        let grown = last.value - first.value;
        let kept = self.points.last()?.value - self.points.first()?.value;
        if grown <= 0.0 {
            return None;
        }
        survival::survival(kept.max(0.0), grown)
    }
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
        // A site that appears after the first profile of its kind was at zero just before: its
        // series starts there, so its first step counts as one.
        let previous = (times.len() > 1).then(|| times[times.len() - 2]);
        for (site, retained) in &snapshot.sites {
            let series = self.series.entry((kind, site.clone())).or_insert_with(|| {
                let zero = previous.map(|t| Point { t, value: 0.0 });
                Series {
                    first_seen: t,
                    points: zero.into_iter().collect(),
                    // Allocation counts start at zero with it, when the profile has them.
                    allocated: zero
                        .filter(|_| retained.allocated.is_some() || !retained.ids.is_empty())
                        .into_iter()
                        .collect(),
                    ..Series::default()
                }
            });
            series.stack.clone_from(&retained.stack);
            series.family.clone_from(&retained.family);
            if series.ids.len() < MAX_IDS {
                series.ids.extend(retained.ids.iter().copied());
            }
            series.latest = Some(retained.clone());
        }
        let window = self.window;
        for ((series_kind, site), series) in self.series.iter_mut() {
            if *series_kind != kind {
                continue;
            }
            let now = snapshot.sites.get(site);
            let value = now.map_or(0.0, |retained| retained.value);
            series.points.push(Point { t, value });
            let allocated = match now {
                Some(retained) if !retained.ids.is_empty() => Some(series.ids.len() as f64),
                Some(retained) => retained.allocated,
                // Absent now: nothing more was allocated there that the profile shows.
                None => series.allocated.last().map(|point| point.value),
            };
            if let Some(allocated) = allocated {
                series.allocated.push(Point {
                    t,
                    value: allocated,
                });
            }
            if now.is_none() {
                series.latest = None;
            }
            for points in [&mut series.points, &mut series.allocated] {
                if points.len() > window {
                    points.remove(0);
                }
            }
        }
        // Sites gone for a whole window are forgotten, so churn cannot grow the map for ever.
        self.series
            .retain(|_, series| series.points.iter().any(|point| point.value > 0.0));
    }

    /// Every leaking site, fastest first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut unfound: Vec<Watched<'_>> = Vec::new();
        for (key, series) in &self.series {
            match Found::test(key.0, series) {
                Some(found) => findings.push(self.finding(key, series, found)),
                None => unfound.push((key, series)),
            }
        }
        findings.extend(self.sibling_findings(&unfound));
        attribute_runtime_structures(&mut findings);
        rank(&mut findings);
        findings
    }

    /// Leaks split over sibling sites: sites of one family (see [`frames::Placed::family`]) whose counts
    /// never come down and rise at the same profiles, added up and tested as one series (a
    /// ratchet of two steps will do: each step is seen at two sites at once).
    fn sibling_findings(&self, unfound: &[Watched<'_>]) -> Vec<Finding> {
        // Per family, its members that never came down, with the times their floor rose.
        type Member<'a> = (Watched<'a>, Vec<f64>);
        let mut families: BTreeMap<(ProfileKind, &str), Vec<Member<'_>>> = BTreeMap::new();
        for &(key, series) in unfound {
            let steps = analysis::floor_steps(&series.points);
            if series.family.is_empty() || steps.is_empty() || analysis::drops(&series.points) > 0.0
            {
                continue;
            }
            families
                .entry((key.0, series.family.as_str()))
                .or_default()
                .push(((key, series), steps));
        }
        let mut findings = Vec::new();
        for ((kind, _), mut members) in families {
            // One profile's interval, and a little more.
            let tolerance = 1.5 * self.interval(kind);
            // Largest first: it names the leak; the others join when they step together.
            let last = |series: &Series| series.points.last().map_or(0.0, |p| p.value);
            members.sort_by(|a, b| last(b.0.1).total_cmp(&last(a.0.1)));
            let lead_steps = &members[0].1;
            let together: Vec<Watched<'_>> = members
                .iter()
                .filter(|(_, steps)| steps_align(lead_steps, steps, tolerance))
                .map(|&(watched, _)| watched)
                .collect();
            if together.len() < 2 {
                continue;
            }
            let mut sum: BTreeMap<u64, f64> = BTreeMap::new();
            for (_, series) in &together {
                for point in &series.points {
                    *sum.entry(point.t.to_bits()).or_default() += point.value;
                }
            }
            let mut points: Vec<Point> = sum
                .into_iter()
                .map(|(t, value)| Point {
                    t: f64::from_bits(t),
                    value,
                })
                .collect();
            points.sort_by(|a, b| a.t.total_cmp(&b.t));
            let span = points.last().map_or(0.0, |p| p.t) - points.first().map_or(0.0, |p| p.t);
            if span < MIN_STATISTICAL_SPAN {
                continue;
            }
            // Each step is seen at two sites or more at once, so two steps are enough here.
            let mut thresholds = thresholds(kind);
            if let Some(ratchet) = &mut thresholds.ratchet {
                ratchet.steps = 2;
            }
            let Some(found) = Found::growth(&points, &thresholds) else {
                continue;
            };
            let (key, lead) = together[0];
            let mut finding = self.finding(key, lead, found);
            finding.retained = points.last().map_or(0.0, |p| p.value);
            finding.evidence.samples = points.len();
            finding.evidence.siblings = together[1..]
                .iter()
                .map(|((_, site), _)| format!("{} {}:{}", site.function, site.file, site.line))
                .collect();
            findings.push(finding);
        }
        findings
    }

    fn finding(
        &self,
        (kind, site): &(ProfileKind, Site),
        series: &Series,
        found: Found,
    ) -> Finding {
        let (kind_name, unit) = match kind {
            ProfileKind::Heap => ("heap", "bytes"),
            ProfileKind::Tasks if self.go => ("goroutines", "tasks"),
            ProfileKind::Tasks => ("tasks", "tasks"),
        };
        let latest = series.latest.as_ref();
        Finding {
            kind: kind_name.to_owned(),
            function: site.function.clone(),
            file: site.file.clone(),
            line: site.line,
            rate_per_second: found.rate,
            unit: unit.to_owned(),
            retained: series.points.last().map_or(0.0, |point| point.value),
            first_seen_seconds: series.first_seen,
            confidence: found.confidence,
            spawned_by: spawn_site(&series.stack),
            attributed_to: None,
            evidence: Evidence {
                stack: series.stack.clone(),
                samples: series.points.len(),
                growth: found.growth,
                recent_rate_per_second: found.recent_rate,
                test: found.test.to_owned(),
                steps_seconds: found.steps,
                siblings: Vec::new(),
                survival: found.survival,
                allocated: latest.and_then(|retained| retained.allocated),
                ages: latest
                    .and_then(|retained| survival::age_spread(&retained.ages))
                    .map(AgeSummary::from),
                held: found.held,
            },
        }
    }

    /// The median time between two profiles of a kind.
    fn interval(&self, kind: ProfileKind) -> f64 {
        let times = self.times.get(&kind).map_or(&[][..], Vec::as_slice);
        let mut gaps: Vec<f64> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
        gaps.sort_by(f64::total_cmp);
        gaps.get(gaps.len() / 2).copied().unwrap_or(0.0)
    }

    /// Heap sites whose series rose in steps and held, but by too little to be told from a cache
    /// warming up without allocation counts, which their profiles lacked: where fetching the
    /// counts (`memory:alloc_space` from Pyroscope) would decide.
    pub fn needing_allocations(&self) -> Vec<Site> {
        self.series
            .iter()
            .filter(|((kind, _), series)| {
                *kind == ProfileKind::Heap && series.allocated().is_none()
            })
            .filter(|(_, series)| {
                let held = &HeldThresholds::HEAP;
                survival::held(&series.points, None, held).is_none()
                    && survival::held(&series.points, Some(&series.points), held).is_some()
            })
            .map(|((_, site), _)| site.clone())
            .collect()
    }

    /// Gives a site's series the cumulative allocation counts at its points' times (seconds),
    /// from `at`; if `at` does not know one of them, the series stays without counts.
    pub fn attach_allocations(
        &mut self,
        kind: ProfileKind,
        site: &Site,
        at: impl Fn(f64) -> Option<f64>,
    ) {
        let Some(series) = self.series.get_mut(&(kind, site.clone())) else {
            return;
        };
        let allocated: Option<Vec<Point>> = series
            .points
            .iter()
            .map(|point| at(point.t).map(|value| Point { t: point.t, value }))
            .collect();
        series.allocated = allocated.unwrap_or_default();
    }

    /// How many sites are being watched.
    pub fn sites(&self) -> usize {
        self.series.len()
    }
}

fn thresholds(kind: ProfileKind) -> Thresholds {
    match kind {
        ProfileKind::Heap => Thresholds::HEAP,
        ProfileKind::Tasks => Thresholds::TASKS,
    }
}

/// What a test found, in the terms of a [`Finding`].
struct Found {
    rate: f64,
    recent_rate: f64,
    growth: f64,
    confidence: f64,
    test: &'static str,
    steps: Vec<f64>,
    survival: Option<f64>,
    held: bool,
}

/// The least time a series spans (seconds) before the trend, ratchet and held tests judge it.
const MIN_STATISTICAL_SPAN: f64 = 15.0;

/// A site is judged by [`Series::turns_over_by_age`] once watched this long (seconds).
const TURNOVER_MIN_WATCH: f64 = 10.0;
/// ... when the oldest thing it holds is younger than this share of the time it was watched.
const TURNOVER_AGE_SHARE: f64 = 0.5;

/// Below this survival over the window, a task site's rise is turnover (a growing stream of
/// short-lived tasks), not a leak: the trend and ratchet tests are not asked.
const TURNOVER_SURVIVAL: f64 = 0.5;

impl Found {
    /// Every test, strongest evidence first: the ages of one profile, a young and fast site
    /// that keeps all it allocates, a steady trend, a ratchet, a rise that held.
    fn test(kind: ProfileKind, series: &Series) -> Option<Self> {
        let (ages, young, held) = match kind {
            ProfileKind::Heap => (
                AgeThresholds::HEAP,
                YoungThresholds::HEAP,
                Some(HeldThresholds::HEAP),
            ),
            ProfileKind::Tasks => (AgeThresholds::TASKS, YoungThresholds::TASKS, None),
        };
        if let Some(found) = Self::by_age(series, &ages) {
            return Some(found);
        }
        if series.turns_over_by_age() {
            return None;
        }
        if let Some(found) = Self::young(kind, series, &young) {
            return Some(found);
        }
        // The statistical tests judge a series once it spans enough time: sooner, a cache
        // warming up or a population ramping up is rising as a leak would, and sampling noise
        // random-walks (the fast leaks are `young` by then).
        if series.span() < MIN_STATISTICAL_SPAN {
            return None;
        }
        let window_survival = series.window_survival();
        let turnover =
            kind == ProfileKind::Tasks && window_survival.is_some_and(|s| s < TURNOVER_SURVIVAL);
        if !turnover && let Some(mut found) = Self::growth(&series.points, &thresholds(kind)) {
            found.survival = window_survival;
            return Some(found);
        }
        let held = survival::held(&series.points, series.allocated(), held.as_ref()?)?;
        Some(Self {
            rate: held.rate,
            recent_rate: 0.0,
            growth: held.rise,
            confidence: held.confidence,
            test: "held",
            steps: held.steps,
            survival: held.survival,
            held: true,
        })
    }

    /// The age test on the latest profile, where it carries ages and what was allocated since
    /// the target started (leakfinder's own profiles).
    fn by_age(series: &Series, thresholds: &AgeThresholds) -> Option<Self> {
        let latest = series.latest.as_ref()?;
        if !latest.ids.is_empty() {
            return None; // ids count what this scan saw, not what the target ever spawned
        }
        let aged = survival::by_age(
            latest.value,
            latest.allocated?,
            &latest.ages,
            latest.samples.round() as u64,
            thresholds,
        )?;
        Some(Self {
            rate: aged.rate,
            recent_rate: if aged.held { 0.0 } else { aged.rate },
            growth: latest.value,
            confidence: aged.confidence,
            test: "age",
            steps: Vec::new(),
            survival: Some(aged.survival),
            held: aged.held,
        })
    }

    /// The fast test on the series' trailing run of rises, with the allocation counts at the
    /// same profiles; for tasks only when they are blocked (not sleeping, in I/O or running).
    fn young(kind: ProfileKind, series: &Series, thresholds: &YoungThresholds) -> Option<Self> {
        let allocated = series.allocated()?;
        let latest = series.latest.as_ref()?;
        if kind == ProfileKind::Tasks && latest.blocked < 0.9 * latest.value {
            return None;
        }
        let rising = series
            .points
            .windows(2)
            .rev()
            .take_while(|pair| pair[1].value > pair[0].value)
            .count();
        let from = series.points.len() - rising - 1;
        let young = survival::young(&series.points[from..], &allocated[from..], thresholds)?;
        Some(Self {
            rate: young.rate,
            recent_rate: young.rate,
            growth: young.growth,
            confidence: young.confidence,
            test: "young",
            steps: Vec::new(),
            survival: Some(young.survival),
            held: false,
        })
    }

    /// The trend test, then the ratchet: what the first that finds a leak found.
    fn growth(points: &[Point], thresholds: &Thresholds) -> Option<Self> {
        match analysis::assess(points, thresholds) {
            Verdict::Leak(trend) => Some(Self::trend(trend)),
            Verdict::Quiet(_) => analysis::ratchet(points, thresholds).map(Self::ratchet),
        }
    }

    fn trend(trend: analysis::Trend) -> Self {
        Self {
            rate: trend.rate,
            recent_rate: trend.recent_rate,
            growth: trend.growth,
            confidence: trend.confidence,
            test: "trend",
            steps: Vec::new(),
            survival: None,
            held: false,
        }
    }

    fn ratchet(ratchet: analysis::Ratchet) -> Self {
        Self {
            rate: ratchet.rate,
            recent_rate: ratchet.rate,
            growth: ratchet.rise,
            confidence: ratchet.confidence,
            test: "ratchet",
            steps: ratchet.steps,
            survival: None,
            held: false,
        }
    }
}

/// Whether two sites' floors rise at the same profiles, give or take `tolerance` seconds (a
/// manifestation can straddle a profile).
fn steps_align(a: &[f64], b: &[f64], tolerance: f64) -> bool {
    let near = |steps: &[f64], t: f64| steps.iter().any(|&step| (step - t).abs() <= tolerance);
    a.len() == b.len() && a.iter().all(|&t| near(b, t)) && b.iter().all(|&t| near(a, t))
}

/// Heap growth of runtime structures alone (goroutine structs under `runtime.newproc1`) is the
/// footprint of a task leak: it names the fastest task leak found, if any, never a user site.
fn attribute_runtime_structures(findings: &mut [Finding]) {
    let task_leak = findings
        .iter()
        .filter(|finding| finding.unit == "tasks" && !is_runtime_site(finding))
        .max_by(|a, b| a.rate_per_second.total_cmp(&b.rate_per_second))
        .map(|finding| format!("{} {}:{}", finding.function, finding.file, finding.line));
    for finding in findings
        .iter_mut()
        .filter(|finding| is_runtime_site(finding))
    {
        finding.attributed_to.clone_from(&task_leak);
    }
}

fn is_runtime_site(finding: &Finding) -> bool {
    finding.function == frames::RUNTIME_GOROUTINES || finding.function == frames::RUNTIME_TASKS
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
        for i in 0..20 {
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
        assert_eq!(findings[0].retained, 20e6);
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
        use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry, encode_gzip};
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
        use leakfinder_pprof::decode;
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

    /// Observes `sites` (function, family, series) of Go task profiles at 1 s intervals; a zero
    /// is an absent site.
    fn observe_go_tasks(detector: &mut Detector, sites: &[(&str, &str, &[f64])]) {
        let n = sites[0].2.len();
        for i in 0..n {
            let snapshot = Snapshot {
                kind: ProfileKind::Tasks,
                go: true,
                sites: sites
                    .iter()
                    .filter(|(_, _, values)| values[i] > 0.0)
                    .map(|(function, family, values)| {
                        let site = Site {
                            function: (*function).into(),
                            file: "/app/main.go".into(),
                            line: 7,
                        };
                        let mut retained =
                            Retained::new(values[i], vec![format!("{function} /app/main.go:7")]);
                        retained.family = (*family).into();
                        (site, retained)
                    })
                    .collect(),
            };
            detector.observe(i as f64, &snapshot);
        }
    }

    #[test]
    fn a_step_wise_leak_first_seen_late_is_a_ratchet_seen_at_its_first_step() {
        let steps: [f64; 20] = [
            0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 6.0, 6.0,
            6.0, 9.0, 9.0,
        ];
        let flat = [1.0; 20];
        let mut detector = Detector::new(usize::MAX);
        observe_go_tasks(
            &mut detector,
            &[
                ("main.rare", "main.rare", &steps),
                ("main.ticker", "main.ticker", &flat),
            ],
        );
        let findings = detector.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let finding = &findings[0];
        assert_eq!(finding.function, "main.rare");
        assert_eq!(finding.kind, "goroutines");
        assert_eq!(finding.evidence.test, "ratchet");
        assert_eq!(finding.evidence.steps_seconds, vec![1.0, 15.0, 18.0]);
        assert_eq!(finding.first_seen_seconds, 1.0);
        assert_eq!(finding.retained, 9.0);
    }

    #[test]
    fn a_leak_split_over_sibling_sites_is_added_up_and_unrelated_sites_are_not() {
        // Each manifestation leaves one goroutine at each of three sibling sites: two steps of
        // one are too little for any site alone.
        let sibling: [f64; 20] = [
            0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0,
            2.0, 2.0, 2.0,
        ];
        // A site of another family stepping at the same moments, and one of the same family
        // stepping at other moments: neither joins.
        let mut late = sibling;
        late[3..7].fill(0.0);
        let mut detector = Detector::new(usize::MAX);
        observe_go_tasks(
            &mut detector,
            &[
                ("main.fanout.func1", "main.fanout", &sibling),
                ("main.fanout.func2", "main.fanout", &sibling),
                ("main.fanout.func3", "main.fanout", &sibling),
                ("main.fanout.func4", "main.fanout", &late),
                ("main.other", "main.other", &sibling),
            ],
        );
        let findings = detector.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let finding = &findings[0];
        assert!(finding.function.starts_with("main.fanout.func"));
        assert_eq!(finding.retained, 6.0);
        assert_eq!(finding.evidence.siblings.len(), 2, "{finding:#?}");
        assert!(
            finding
                .evidence
                .siblings
                .iter()
                .all(|site| !site.contains("func4") && !site.contains("main.other"))
        );
        // Alone, a sibling is quiet.
        let mut alone = Detector::new(usize::MAX);
        observe_go_tasks(
            &mut alone,
            &[("main.fanout.func1", "main.fanout", &sibling)],
        );
        assert!(alone.findings().is_empty());
    }

    #[test]
    fn runtime_structures_name_the_task_leak_they_come_from() {
        let mut detector = Detector::new(usize::MAX);
        for i in 0..20 {
            let t = f64::from(i);
            let mut heap = snapshot(ProfileKind::Heap, &[(frames::RUNTIME_GOROUTINES, 1e6 * t)]);
            heap.go = true;
            detector.observe(t, &heap);
            let mut tasks = snapshot(ProfileKind::Tasks, &[("main.leak", 10.0 * t)]);
            tasks.go = true;
            detector.observe(t, &tasks);
        }
        let findings = detector.findings();
        assert_eq!(findings.len(), 2, "{findings:#?}");
        let heap = findings.iter().find(|f| f.unit == "bytes").unwrap();
        assert_eq!(heap.function, frames::RUNTIME_GOROUTINES);
        assert_eq!(heap.attributed_to.as_deref(), Some("main.leak src/x.rs:1"));
    }

    #[test]
    fn the_first_sample_of_a_scan_is_at_zero() {
        assert_eq!(seconds_since(std::time::Instant::now()), 0.0);
    }

    const MIB: f64 = 1024.0 * 1024.0;

    /// A heap snapshot of one site with survival evidence: `retained` of `allocated`, its live
    /// bytes by age `(seconds, bytes)`, from `samples` sampled allocations.
    fn evidenced(retained: f64, allocated: f64, ages: Vec<(f64, f64)>, samples: f64) -> Snapshot {
        let mut snapshot = snapshot(ProfileKind::Heap, &[("app::site", retained)]);
        for value in snapshot.sites.values_mut() {
            value.allocated = Some(allocated);
            value.ages = ages.clone();
            value.samples = samples;
        }
        snapshot
    }

    fn spread(from: f64, to: f64, total: f64) -> Vec<(f64, f64)> {
        (0..100)
            .map(|i| (to + (from - to) * f64::from(i) / 99.0, total / 100.0))
            .collect()
    }

    #[test]
    fn one_profile_of_a_site_that_kept_what_it_allocated_over_a_minute_is_a_leak() {
        let mut detector = Detector::new(60);
        detector.observe(
            0.0,
            &evidenced(
                600.0 * MIB,
                600.0 * MIB,
                spread(60.0, 0.0, 600.0 * MIB),
                520.0,
            ),
        );
        let findings = detector.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let evidence = &findings[0].evidence;
        assert_eq!((evidence.test.as_str(), evidence.held), ("age", false));
        assert_eq!(evidence.survival, Some(1.0));
        let ages = evidence.ages.unwrap();
        assert_eq!((ages.youngest_seconds, ages.oldest_seconds), (0.0, 60.0));

        // The same memory, allocated five minutes ago and kept since: held.
        let mut held = Detector::new(60);
        held.observe(
            0.0,
            &evidenced(
                600.0 * MIB,
                600.0 * MIB,
                spread(360.0, 300.0, 600.0 * MIB),
                520.0,
            ),
        );
        let findings = held.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].evidence.held);
        assert_eq!(findings[0].evidence.recent_rate_per_second, 0.0);
    }

    #[test]
    fn a_site_that_holds_only_young_memory_is_not_a_leak_whatever_its_curve() {
        // Sampled sizes that happen to rise for a minute, at a site whose oldest live
        // allocation is 6 s old: it frees what it allocates (a cache turning over).
        let mut detector = Detector::new(120);
        for i in 0..60 {
            let t = f64::from(i);
            let bytes = 8.0 * MIB + 0.2 * MIB * t;
            detector.observe(
                t,
                &evidenced(
                    bytes,
                    100.0 * MIB + 2.0 * MIB * t,
                    spread(6.0, 0.0, bytes),
                    300.0,
                ),
            );
        }
        assert!(detector.findings().is_empty(), "{:#?}", detector.findings());
        // The same curve with its oldest memory as old as the watch: a leak.
        let mut detector = Detector::new(120);
        for i in 0..60 {
            let t = f64::from(i);
            let bytes = 8.0 * MIB + 0.2 * MIB * t;
            detector.observe(
                t,
                &evidenced(
                    bytes,
                    30.0 * MIB + 0.2 * MIB * t,
                    spread(t + 20.0, 0.0, bytes),
                    60.0,
                ),
            );
        }
        assert_eq!(detector.findings().len(), 1);
    }

    #[test]
    fn goroutines_that_turn_over_are_not_a_leak_and_ones_that_stay_are() {
        // A ramp of 5 s goroutines, 13 a second: 13, 26, ... 65, then 64 to 66 as they end at
        // the rate they start (the count a 1 s profile sees wobbles with the phase).
        let wobble = [
            0i64, 1, -1, 1, 0, 1, -1, 0, 1, 1, 0, -1, 1, 0, 1, 1, 0, 1, 1, 1,
        ];
        let observe = |ids: Option<bool>| {
            let mut detector = Detector::new(usize::MAX);
            let mut next_id = 0u64;
            let mut alive: Vec<u64> = Vec::new();
            for i in 0..25usize {
                for _ in 0..13 {
                    alive.push(next_id);
                    next_id += 1;
                }
                let keep = if i < 5 {
                    alive.len()
                } else {
                    (65 + wobble[i - 5]) as usize
                };
                if ids != Some(false) && alive.len() > keep {
                    alive.drain(..alive.len() - keep);
                }
                let count = if ids == Some(false) {
                    alive.len()
                } else {
                    keep.min(alive.len())
                };
                let mut snapshot = snapshot(ProfileKind::Tasks, &[("main.worker", count as f64)]);
                snapshot.go = true;
                if ids.is_some() {
                    for site in snapshot.sites.values_mut() {
                        site.ids = alive.clone();
                    }
                }
                detector.observe(i as f64, &snapshot);
            }
            detector.findings()
        };
        // Counts alone: the wobble's late floor steps look like a ratchet that has not settled.
        let counts_only = observe(None);
        assert_eq!(
            counts_only.len(),
            1,
            "the false positive the ids remove: {counts_only:#?}"
        );
        assert_eq!(counts_only[0].evidence.test, "ratchet");
        // With the dump's ids: the goroutines seen are replaced, not kept.
        let turning_over = observe(Some(true));
        assert!(turning_over.is_empty(), "{turning_over:#?}");
        // Goroutines that are all kept: a leak, all of them still there.
        let kept = observe(Some(false));
        assert_eq!(kept.len(), 1, "{kept:#?}");
        assert_eq!(kept[0].evidence.survival, Some(1.0));
    }

    #[test]
    fn a_held_rise_too_small_to_judge_alone_asks_for_allocation_counts() {
        let mut detector = Detector::new(24);
        let mut values = vec![
            4.5, 6.0, 6.5, 7.5, 8.5, 9.0, 11.0, 11.5, 13.0, 13.0, 13.0, 13.5,
        ];
        values.extend([13.5; 12]);
        for (i, value) in values.iter().enumerate() {
            detector.observe(
                15.0 * i as f64,
                &snapshot(ProfileKind::Heap, &[("app::audit", value * MIB)]),
            );
        }
        assert!(
            detector.findings().is_empty(),
            "unproven: too small without counts"
        );
        let wanted = detector.needing_allocations();
        assert_eq!(wanted.len(), 1);
        // Counts that kept pace: held. (Counts that churned would leave it quiet.)
        detector.attach_allocations(ProfileKind::Heap, &wanted[0], |t| {
            Some(values[(t / 15.0) as usize] * MIB)
        });
        let findings = detector.findings();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].evidence.test, "held");
        assert!(detector.needing_allocations().is_empty());
    }

    /// The benign cache scanned from its first second (the controls benchmark's one false
    /// positive): jemalloc samples about 15 of its 128 entries, and that sampled size random-walks
    /// as entries are replaced; its first ten profiles (KiB) rose nearly every second, and the
    /// trend test called it a leak at 7 to 9 s. Nothing older than 6.4 s is alive there.
    #[test]
    fn a_cache_warming_up_is_not_judged_before_its_turnover_shows() {
        let kib = [
            1633.0, 3812.0, 5446.0, 6535.0, 7080.0, 9803.0, 10348.0, 10893.0, 11437.0, 11982.0,
        ];
        let mut detector = Detector::new(300);
        for (i, value) in kib.iter().enumerate() {
            let t = i as f64;
            let bytes = value * 1024.0;
            let allocated = (1.6 + 1.25 * t) * MIB;
            let ages = spread(t.min(6.4), 0.0, bytes);
            detector.observe(t, &evidenced(bytes, allocated.max(bytes), ages, 60.0));
            assert!(
                detector.findings().is_empty(),
                "at {t} s: {:#?}",
                detector.findings()
            );
        }
    }
}
