//! `/leak-report`: the detector, run continuously on this service's own heap and task profiles.
//!
//! Every interval it takes the heap profile in-process (the one `/debug/pprof/heap` serves), and
//! five times as often the task profile (the one `/debug/pprof/goroutine` serves: spawn-site
//! counts and traced await stacks, cheap and safe to take in a loop). Each kind feeds a sliding
//! window of its own to a [`Detector`]; the latest findings, and the alive tasks per spawn site,
//! are served as JSON and exported as metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use leakfinder_detector::profile::{ProfileKind, Retained, Site, Snapshot, snapshot};
use leakfinder_detector::{Detector, Finding};
use leakfinder_profiling::Profilers;
use leakfinder_profiling::tasks::{self, TaskStack};

/// Profiles kept per series: five minutes at the default interval of a second (long series are
/// reduced to block medians before the trend tests, so more points cost little).
pub const WINDOW: usize = 300;
/// The shortest interval between two task profiles: a task profile traces every parked task
/// (12 ms for 10,000 of them), so it is taken at most once a second, however often the heap is.
const MIN_TASK_INTERVAL: Duration = Duration::from_secs(1);

/// Alive tasks spawned at one site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, poem_openapi::Object)]
pub struct SpawnSiteTasks {
    /// The function that spawned them (`created by ...` in the task profile).
    pub function: String,
    /// Its source file.
    pub file: String,
    /// The line of the spawn.
    pub line: i64,
    /// Tasks alive.
    pub alive: u64,
}

/// The latest verdicts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, poem_openapi::Object)]
pub struct WatchReport {
    /// Leaking sites, fastest first.
    pub findings: Vec<Finding>,
    /// Heap profiles taken so far.
    pub samples: u64,
    /// Task profiles taken so far.
    pub task_samples: u64,
    /// Milliseconds between two heap profiles.
    pub interval_ms: u64,
    /// Milliseconds between two task profiles.
    pub task_interval_ms: u64,
    /// Profiles of each kind the analysis looks back over.
    pub window: u64,
    /// Alive tasks by spawn site in the latest task profile, most first.
    pub tasks_by_spawn_site: Vec<SpawnSiteTasks>,
}

/// The continuously updated report.
pub struct LeakWatch {
    interval: Duration,
    task_interval: Duration,
    report: RwLock<WatchReport>,
}

impl LeakWatch {
    /// A watch that profiles the heap every `interval`, and tasks as often but at most once a
    /// second.
    pub fn new(interval: Duration) -> Self {
        let task_interval = interval.max(MIN_TASK_INTERVAL);
        Self {
            interval,
            task_interval,
            report: RwLock::new(WatchReport {
                interval_ms: interval.as_millis() as u64,
                task_interval_ms: task_interval.as_millis() as u64,
                window: WINDOW as u64,
                ..WatchReport::default()
            }),
        }
    }

    /// The latest report.
    pub fn report(&self) -> WatchReport {
        self.report
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut WatchReport)) {
        change(&mut self.report.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Profiles this service until `cancel`, updating the report.
    pub async fn run(&self, profilers: &Profilers, cancel: CancellationToken) {
        let mut heap = Detector::new(WINDOW);
        // Tasks by the await they are parked at (or their spawn site, where no await is known),
        // and by spawn site alone: a leak split over several awaits still rises at its spawn.
        let mut awaits = Detector::new(WINDOW);
        let mut spawns = Detector::new(WINDOW);
        let (mut heap_findings, mut task_findings) = (Vec::new(), Vec::new());
        let started = Instant::now();
        let mut heap_ticks = tokio::time::interval(self.interval);
        let mut task_ticks = tokio::time::interval(self.task_interval);
        for ticks in [&mut heap_ticks, &mut task_ticks] {
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let (mut heap_samples, mut task_samples) = (0, 0);
        loop {
            let kind = tokio::select! {
                () = cancel.cancelled() => return,
                _ = heap_ticks.tick() => ProfileKind::Heap,
                _ = task_ticks.tick() => ProfileKind::Tasks,
            };
            let t = leakfinder_detector::seconds_since(started);
            match kind {
                ProfileKind::Heap => {
                    match profilers.heap().await {
                        Ok(profile) => {
                            if let Ok(snapshot) = snapshot(&profile, ProfileKind::Heap) {
                                heap.observe(t, &snapshot);
                                heap_findings = heap.findings();
                            }
                        }
                        Err(error) => {
                            tracing::debug!(%error, "leak watch: no heap profile this round");
                        }
                    }
                    heap_samples += 1;
                }
                ProfileKind::Tasks => {
                    match profilers.tasks().await {
                        Ok(stacks) => {
                            let profile = tasks::build_profile(&stacks);
                            if let Ok(snapshot) = snapshot(&profile, ProfileKind::Tasks) {
                                awaits.observe(t, &snapshot);
                            }
                            let by_site = by_spawn_site(&stacks);
                            spawns.observe(t, &spawn_snapshot(&by_site));
                            task_findings =
                                merge_spawn_findings(awaits.findings(), spawns.findings());
                            self.update(|report| report.tasks_by_spawn_site = by_site);
                        }
                        Err(error) => {
                            tracing::debug!(%error, "leak watch: no task profile this round");
                        }
                    }
                    task_samples += 1;
                }
            }
            let mut findings = heap_findings.clone();
            findings.extend(task_findings.iter().cloned());
            leakfinder_detector::rank(&mut findings);
            self.update(|report| {
                report.findings = findings;
                report.samples = heap_samples;
                report.task_samples = task_samples;
            });
        }
    }
}

/// Alive tasks per spawn site (the `created by` frame ending each stack), most first.
pub fn by_spawn_site(stacks: &[TaskStack]) -> Vec<SpawnSiteTasks> {
    let mut sites: BTreeMap<(String, String, i64), u64> = BTreeMap::new();
    for task in stacks {
        let Some(frame) = task.stack.last().and_then(|entry| entry.shown().last()) else {
            continue;
        };
        let Some(function) = frame
            .function
            .strip_prefix(leakfinder_pprof::conventions::CREATED_BY)
        else {
            continue;
        };
        let key = (
            function.to_owned(),
            frame.file.to_string(),
            i64::from(frame.line),
        );
        *sites.entry(key).or_default() += task.count;
    }
    let mut sites: Vec<SpawnSiteTasks> = sites
        .into_iter()
        .map(|((function, file, line), alive)| SpawnSiteTasks {
            function,
            file,
            line,
            alive,
        })
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.alive));
    sites
}

/// Alive tasks per spawn site as a snapshot for the detector: each site is its `created by`
/// frame, so its findings name the spawn.
fn spawn_snapshot(sites: &[SpawnSiteTasks]) -> Snapshot {
    Snapshot {
        kind: ProfileKind::Tasks,
        go: false,
        sites: sites
            .iter()
            .map(|site| {
                let function = format!(
                    "{}{}",
                    leakfinder_pprof::conventions::CREATED_BY,
                    site.function
                );
                let frame = format!("{function} {}:{}", site.file, site.line);
                let key = Site {
                    function,
                    file: site.file.clone(),
                    line: site.line,
                };
                (key, Retained::new(site.alive as f64, vec![frame]))
            })
            .collect(),
    }
}

/// The task findings: every await-site finding, and the spawn-site findings whose spawn no
/// await-site finding already names (one leak, one finding).
fn merge_spawn_findings(mut awaits: Vec<Finding>, spawns: Vec<Finding>) -> Vec<Finding> {
    let named: Vec<Option<String>> = awaits.iter().map(|f| f.spawned_by.clone()).collect();
    awaits.extend(
        spawns
            .into_iter()
            .filter(|finding| !named.contains(&finding.spawned_by)),
    );
    awaits
}

/// Spawns the watch of `state`'s profilers.
pub fn spawn(watch: Arc<LeakWatch>, profilers: Arc<Profilers>, cancel: CancellationToken) {
    tokio::spawn(tasks::root(async move {
        watch.run(&profilers, cancel).await;
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakfinder_pprof::{Frame, StackEntry};

    fn group(count: u64, frames: &[(&str, &str, u32)]) -> TaskStack {
        TaskStack {
            count,
            stack: frames
                .iter()
                .enumerate()
                .map(|(address, &(function, file, line))| StackEntry {
                    address: address as u64,
                    frames: vec![Frame::new(function, file, line)].into(),
                    skip: 0,
                })
                .collect(),
            wait: "chan send",
            ..TaskStack::default()
        }
    }

    #[test]
    fn tasks_are_summed_per_spawn_site_most_first() {
        let stacks = [
            group(
                3,
                &[
                    ("job", "src/a.rs", 9),
                    ("created by spawner", "src/a.rs", 4),
                ],
            ),
            group(
                5,
                &[
                    ("other", "src/a.rs", 12),
                    ("created by spawner", "src/a.rs", 4),
                ],
            ),
            group(2, &[("created by poem::serve", "poem/src/server.rs", 242)]),
            group(7, &[("no spawn frame", "src/b.rs", 1)]),
        ];
        let sites = by_spawn_site(&stacks);
        let summary: Vec<(&str, i64, u64)> = sites
            .iter()
            .map(|site| (site.function.as_str(), site.line, site.alive))
            .collect();
        assert_eq!(summary, vec![("spawner", 4, 8), ("poem::serve", 242, 2)]);
        let snapshot = spawn_snapshot(&sites);
        let (site, retained) = snapshot.sites.iter().next().unwrap();
        assert_eq!(site.function, "created by poem::serve");
        assert_eq!(retained.value, 2.0);
    }

    /// A detector's findings after 20 snapshots, one a second.
    fn findings(snapshots: impl Fn(f64) -> Snapshot) -> Vec<Finding> {
        let mut detector = Detector::new(WINDOW);
        for i in 0..20 {
            detector.observe(f64::from(i), &snapshots(f64::from(i)));
        }
        detector.findings()
    }

    #[test]
    fn a_leak_split_over_awaits_is_found_at_its_spawn_and_a_named_spawn_is_not_reported_twice() {
        let site = |function: &str, line| SpawnSiteTasks {
            function: function.into(),
            file: "src/a.rs".into(),
            line,
            alive: 0,
        };
        let rising = |sites: Vec<SpawnSiteTasks>| {
            move |t: f64| {
                let sites: Vec<SpawnSiteTasks> = sites
                    .iter()
                    .map(|s| SpawnSiteTasks {
                        alive: (t * 10.0) as u64,
                        ..s.clone()
                    })
                    .collect();
                spawn_snapshot(&sites)
            }
        };
        let spawns = findings(rising(vec![site("split", 4), site("named", 8)]));
        assert_eq!(spawns.len(), 2, "{spawns:#?}");
        // An await-site finding already names the `named` spawn; `split` has none.
        let mut awaited = spawns[0].clone();
        awaited.function = "named::{{closure}}".into();
        awaited.spawned_by = spawns
            .iter()
            .find(|f| f.function == "created by named")
            .unwrap()
            .spawned_by
            .clone();
        assert_eq!(awaited.spawned_by.as_deref(), Some("named src/a.rs:8"));
        let merged = merge_spawn_findings(vec![awaited], spawns);
        let functions: Vec<&str> = merged.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(functions, vec!["named::{{closure}}", "created by split"]);
    }

    #[test]
    fn tasks_are_profiled_as_often_as_the_heap_but_at_most_once_a_second() {
        let interval = |ms| LeakWatch::new(Duration::from_millis(ms)).task_interval;
        assert_eq!(interval(5000), Duration::from_secs(5));
        assert_eq!(interval(1000), Duration::from_secs(1));
        assert_eq!(interval(100), Duration::from_secs(1));
    }
}
