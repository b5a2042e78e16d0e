//! What a fleet scan says: per service, its leaks ranked by rate, each with the time it started
//! and the Pyroscope query that shows it; services with leaks first, errors last.
//!
//! Pure: outcomes in, JSON or text out.

use std::fmt::Write as _;

use super::client::{GOROUTINE_TYPE, HEAP_TYPE};
use super::plan;
use super::service::Series;
use crate::Finding;
use crate::profile::ProfileKind;
use crate::scan::{human, rate};

/// A leak as the fleet report shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Located {
    /// The finding, as `scan` reports it (its `first_seen_seconds` count from the start of the
    /// first range read: the range's start, or a watch's first period's).
    #[serde(flatten)]
    pub finding: Finding,
    /// When the site was first seen: the start of its first window, RFC 3339; or, when it was
    /// there already in the first window read (it began before the range), `before` that
    /// window's start.
    pub since: String,
    /// Whether the site was there already in the first window read: its leak began before the
    /// range, and `since` is not its onset.
    pub began_before_range: bool,
    /// A `profilecli` command that shows the site in Pyroscope over one window, the latest (what
    /// `retained` was read from): a longer range would sum the window's snapshots.
    pub query: String,
}

/// One service's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceReport {
    /// Its `service_name`.
    pub service: String,
    /// Its leaks, fastest first.
    pub findings: Vec<Located>,
    /// Heap windows read.
    pub heap_windows: usize,
    /// Goroutine windows read.
    pub goroutine_windows: usize,
    /// Why it could not be scanned, if it could not.
    pub error: Option<String>,
}

/// The whole scan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Pyroscope's base URL.
    pub pyroscope: String,
    /// The range's start, RFC 3339.
    pub from: String,
    /// The range's end, RFC 3339.
    pub to: String,
    /// The push window, in seconds.
    pub window_seconds: f64,
    /// Services listed in the range, before `--services` and `--shard`.
    pub listed: usize,
    /// Services scanned, leaks first.
    pub services: Vec<ServiceReport>,
    /// Queries sent to Pyroscope.
    pub queries: u64,
}

impl FleetReport {
    /// Orders services as the report shows them: by their fastest heap leak, then their fastest
    /// task leak; then clean services by name; errors last.
    pub fn rank(&mut self) {
        let key = |report: &ServiceReport| {
            let fastest = |unit: &str| {
                report
                    .findings
                    .iter()
                    .filter(|located| located.finding.unit == unit)
                    .map(|located| located.finding.rate_per_second)
                    .fold(0.0, f64::max)
            };
            (
                report.error.is_some(),
                report.findings.is_empty(),
                -fastest("bytes"),
                -fastest("tasks"),
            )
        };
        self.services.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.cmp(&kb.1))
                .then(ka.2.total_cmp(&kb.2))
                .then(ka.3.total_cmp(&kb.3))
                .then(a.service.cmp(&b.service))
        });
    }

    /// Leaks found, over all services.
    pub fn leaks(&self) -> usize {
        self.services.iter().map(|s| s.findings.len()).sum()
    }

    /// Services that could not be scanned.
    pub fn errors(&self) -> usize {
        self.services.iter().filter(|s| s.error.is_some()).count()
    }
}

/// Places a finding of `series` in time and gives the query that shows it.
pub fn locate(
    finding: Finding,
    service: &str,
    series: &Series,
    base: &str,
    tenant: Option<&str>,
) -> Located {
    let (kind, profile_type) = if finding.unit == "bytes" {
        (ProfileKind::Heap, HEAP_TYPE)
    } else {
        (ProfileKind::Tasks, GOROUTINE_TYPE)
    };
    let since_ms = series.at(finding.first_seen_seconds);
    // Seen in the first window read: it was there before, and when it began is not known.
    let began_before_range = series
        .first_window(kind)
        .is_none_or(|first| since_ms <= first.start);
    let since = if began_before_range {
        format!("before {}", plan::format_rfc3339(since_ms))
    } else {
        plan::format_rfc3339(since_ms)
    };
    // The latest window: where `retained` was read. A finding always has one.
    let (from, to) = series
        .last_window(kind)
        .map_or((since_ms, since_ms), |window| (window.start, window.end));
    let mut query = format!(
        "profilecli query profile --url {} --profile-type {profile_type} --query {} --from {} --to {}",
        shell_quote(base),
        shell_quote(&plan::selector(service)),
        plan::format_rfc3339(from),
        plan::format_rfc3339(to),
    );
    if let Some(tenant) = tenant {
        let _ = write!(query, " --tenant-id {}", shell_quote(tenant));
    }
    Located {
        finding,
        since,
        began_before_range,
        query,
    }
}

/// `text` quoted for a POSIX shell when it needs it.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The report as text, for people.
pub fn render(report: &FleetReport) -> String {
    let mut text = String::new();
    let leaking = report
        .services
        .iter()
        .filter(|s| !s.findings.is_empty())
        .count();
    let _ = writeln!(
        text,
        "fleet scan of {} from {} to {} ({} s windows): {} service(s) scanned of {} listed, {} with leaks, {} failed, {} queries\n",
        report.pyroscope,
        report.from,
        report.to,
        report.window_seconds,
        report.services.len(),
        report.listed,
        leaking,
        report.errors(),
        report.queries,
    );
    for service in &report.services {
        if let Some(error) = &service.error {
            let _ = writeln!(text, "{}: not scanned: {error}", service.service);
            continue;
        }
        if service.findings.is_empty() {
            let _ = writeln!(
                text,
                "{}: no leak ({} heap, {} goroutine windows)",
                service.service, service.heap_windows, service.goroutine_windows
            );
            continue;
        }
        let _ = writeln!(
            text,
            "{}: {} leak(s), fastest first:",
            service.service,
            service.findings.len()
        );
        for (
            rank,
            Located {
                finding,
                since,
                query,
                ..
            },
        ) in service.findings.iter().enumerate()
        {
            let _ = writeln!(
                text,
                "  {}. {} leak: {} in {}\n     at {}:{}, since {since}, retained {}, confidence {:.3} ({})\n     query: {query}",
                rank + 1,
                finding.kind,
                if finding.evidence.held {
                    format!("{} held", human(finding.retained, &finding.unit))
                } else {
                    rate(finding.rate_per_second, &finding.unit)
                },
                finding.function,
                finding.file,
                finding.line,
                human(finding.retained, &finding.unit),
                finding.confidence,
                finding.evidence.test,
            );
            if let Some(task_leak) = &finding.attributed_to {
                let _ = writeln!(
                    text,
                    "     runtime structures of the task leak at {task_leak}"
                );
            }
        }
        let _ = writeln!(text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Evidence;
    use crate::fleet::plan::Range;
    use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry};
    use std::time::Duration;

    const S: i64 = 1_796_136_113_000;

    /// A series over the 6 minutes from `S` with a heap and a goroutine profile in each window.
    fn series() -> Series {
        let range = Range::new(S, S + 360_000, Duration::from_secs(15)).unwrap();
        let mut series = Series::new(range.clone());
        for window in range.windows() {
            for (kind, sample_type) in [
                (ProfileKind::Heap, ("inuse_space", "bytes")),
                (ProfileKind::Tasks, ("goroutine", "count")),
            ] {
                let mut builder = ProfileBuilder::new(&[sample_type], sample_type, 1);
                let entry = StackEntry {
                    address: 1,
                    frames: vec![Frame::new("main.flat", "main.go", 7)].into(),
                    skip: 0,
                };
                builder.add_sample(&[entry], vec![100], &[]);
                assert!(series.fold(window, kind, &builder.build()).unwrap());
            }
        }
        series
    }

    fn finding(function: &str, unit: &str, rate: f64, first_seen: f64) -> Finding {
        Finding {
            kind: if unit == "bytes" {
                "heap"
            } else {
                "goroutines"
            }
            .into(),
            function: function.into(),
            file: "main.go".into(),
            line: 37,
            rate_per_second: rate,
            unit: unit.into(),
            retained: 1e6,
            first_seen_seconds: first_seen,
            confidence: 0.999,
            spawned_by: None,
            attributed_to: None,
            evidence: Evidence {
                stack: vec![],
                samples: 24,
                growth: 1e6,
                recent_rate_per_second: rate,
                test: "trend".into(),
                steps_seconds: vec![],
                siblings: vec![],
                ..Evidence::default()
            },
        }
    }

    fn service(name: &str, findings: Vec<Located>, error: Option<&str>) -> ServiceReport {
        ServiceReport {
            service: name.into(),
            findings,
            heap_windows: 24,
            goroutine_windows: 0,
            error: error.map(String::from),
        }
    }

    #[test]
    fn a_finding_is_placed_in_time_with_a_query_over_its_latest_window() {
        let located = locate(
            finding("main.leakyFanout", "tasks", 2.0, 45.0),
            "orders-go",
            &series(),
            "http://127.0.0.1:4040",
            Some("team a"),
        );
        assert_eq!(located.since, "2026-12-01T14:42:38Z");
        assert!(!located.began_before_range);
        // One window, the last: a longer range would sum its snapshots.
        assert_eq!(
            located.query,
            "profilecli query profile --url http://127.0.0.1:4040 --profile-type goroutine:goroutine:count:goroutine:count --query '{service_name=\"orders-go\"}' --from 2026-12-01T14:47:38Z --to 2026-12-01T14:47:53Z --tenant-id 'team a'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_leak_there_from_the_first_window_is_said_to_predate_the_range_not_to_start_with_it() {
        let located = locate(
            finding("main.cache", "bytes", 2.0, 0.0),
            "orders-go",
            &series(),
            "http://p",
            None,
        );
        assert_eq!(located.since, "before 2026-12-01T14:41:53Z");
        assert!(located.began_before_range);
        assert!(
            located
                .query
                .ends_with("--from 2026-12-01T14:47:38Z --to 2026-12-01T14:47:53Z"),
            "{}",
            located.query
        );
        let report = FleetReport {
            pyroscope: "http://p".into(),
            from: String::new(),
            to: String::new(),
            window_seconds: 15.0,
            listed: 1,
            services: vec![service("orders-go", vec![located], None)],
            queries: 1,
        };
        let text = render(&report);
        assert!(
            text.contains("at main.go:37, since before 2026-12-01T14:41:53Z, retained"),
            "{text}"
        );
    }

    #[test]
    fn task_counts_print_as_whole_numbers() {
        let mut tasks = finding("main.subscribe", "tasks", 10.0, 15.0);
        tasks.retained = 8180.0;
        let report = FleetReport {
            pyroscope: "http://p".into(),
            from: String::new(),
            to: String::new(),
            window_seconds: 15.0,
            listed: 1,
            services: vec![service(
                "notify-go",
                vec![locate(tasks, "notify-go", &series(), "http://p", None)],
                None,
            )],
            queries: 1,
        };
        let text = render(&report);
        assert!(text.contains("10.0 tasks/s in main.subscribe"), "{text}");
        assert!(text.contains(", retained 8180 tasks, "), "{text}");
    }

    #[test]
    fn services_rank_by_their_fastest_heap_leak_then_tasks_and_errors_come_last() {
        let series = series();
        let at = |f| locate(f, "x", &series, "http://p", None);
        let mut report = FleetReport {
            pyroscope: "http://p".into(),
            from: String::new(),
            to: String::new(),
            window_seconds: 15.0,
            listed: 5,
            services: vec![
                service("broken", vec![], Some("no heap profiles")),
                service("clean", vec![], None),
                service("tasks", vec![at(finding("t", "tasks", 9.0, 0.0))], None),
                service("slow", vec![at(finding("s", "bytes", 1e3, 0.0))], None),
                service("fast", vec![at(finding("f", "bytes", 1e6, 0.0))], None),
            ],
            queries: 3,
        };
        report.rank();
        let order: Vec<&str> = report.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(order, ["fast", "slow", "tasks", "clean", "broken"]);
        assert_eq!((report.leaks(), report.errors()), (3, 1));
        let text = render(&report);
        assert!(text.contains("fast: 1 leak(s)"), "{text}");
        assert!(
            text.contains(
                "  1. heap leak: 976.6 KiB/s in f\n     at main.go:37, since before 2026-12-01T14:41:53Z"
            ),
            "{text}"
        );
        assert!(
            text.contains("broken: not scanned: no heap profiles"),
            "{text}"
        );
        assert!(
            text.contains("clean: no leak (24 heap, 0 goroutine windows)"),
            "{text}"
        );
    }
}
