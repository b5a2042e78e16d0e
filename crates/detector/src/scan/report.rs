//! What `leakfinder scan` prints: each finding as it is confirmed, then a summary; as text for
//! people, or as JSON Lines (one object per line: `"type": "finding"` for each confirmed leak the
//! moment it is confirmed, and one `"type": "summary"` last). Pure: strings out.

use std::fmt::Write as _;
use std::path::Path;

use crate::Finding;

/// A finding as the scan reports it: with the command that confirms it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reported {
    /// The finding.
    #[serde(flatten)]
    pub finding: Finding,
    /// `go tool pprof -top -base FIRST LAST`.
    pub confirm: String,
}

/// The scan's last line: every confirmed finding (in its latest state), fastest first.
#[derive(Debug, serde::Serialize)]
pub struct Summary<'a> {
    /// The target's base URL.
    pub target: &'a str,
    /// Rounds of profiles taken.
    pub samples: usize,
    /// Seconds the scan ran.
    pub elapsed_seconds: f64,
    /// The signal that stopped the scan early, if one did.
    pub interrupted: Option<&'a str>,
    /// Where the first and latest profiles are saved.
    pub profiles: String,
    /// Every finding confirmed during the scan.
    pub findings: &'a [Reported],
}

/// A finding's JSON line.
pub fn finding_line(reported: &Reported, at_seconds: f64) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        r#type: &'static str,
        at_seconds: f64,
        #[serde(flatten)]
        reported: &'a Reported,
    }
    serde_json::to_string(&Line {
        r#type: "finding",
        at_seconds,
        reported,
    })
    .expect("a finding serialises")
}

/// The summary's JSON line.
pub fn summary_line(summary: &Summary<'_>) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        summary: &'a Summary<'a>,
    }
    serde_json::to_string(&Line {
        r#type: "summary",
        summary,
    })
    .expect("a summary serialises")
}

/// An amount for people: bytes in B, KiB, MiB or GiB; tasks as a whole number.
pub fn human(value: f64, unit: &str) -> String {
    if unit != "bytes" {
        return format!("{value:.0} {unit}");
    }
    let mut value = value;
    for suffix in ["B", "KiB", "MiB", "GiB"] {
        if value.abs() < 1024.0 || suffix == "GiB" {
            return format!("{value:.1} {suffix}");
        }
        value /= 1024.0;
    }
    unreachable!("the loop returns at GiB")
}

/// A rate for people: bytes as [`human`] does, tasks to a tenth (`0.3 tasks/s`).
pub fn rate(value: f64, unit: &str) -> String {
    if unit == "bytes" {
        format!("{}/s", human(value, unit))
    } else {
        format!("{value:.1} {unit}/s")
    }
}

/// `HH:MM:SS UTC` of a unix time in seconds.
pub fn clock(unix_seconds: f64) -> String {
    let seconds = unix_seconds.max(0.0) as u64 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// One finding as text: what leaks where, how fast, the evidence, the stack and the command that
/// confirms it. `now` is the unix time of the latest profile, to turn ages into clock times.
pub fn render_finding(rank: usize, reported: &Reported, now: f64) -> String {
    let Reported { finding, confirm } = reported;
    let evidence = &finding.evidence;
    let mut text = String::new();
    let speed = if evidence.held {
        format!("{} held", human(finding.retained, &finding.unit))
    } else {
        rate(finding.rate_per_second, &finding.unit)
    };
    let _ = writeln!(
        text,
        "{rank}. {} leak: {speed} in {}\n   at {}:{}\n   retained now {}, first seen at {:.1} s, confidence {:.3} ({})",
        finding.kind,
        finding.function,
        finding.file,
        finding.line,
        human(finding.retained, &finding.unit),
        finding.first_seen_seconds,
        finding.confidence,
        evidence.test,
    );
    let made = if finding.unit == "bytes" {
        "allocated"
    } else {
        "spawned"
    };
    let kept = |survival: f64| {
        if survival >= 0.995 {
            "none freed".to_owned()
        } else {
            format!("{:.0}% of it still alive", 100.0 * survival)
        }
    };
    match evidence.test.as_str() {
        "age" => {
            if let (Some(ages), Some(survival)) = (evidence.ages, evidence.survival) {
                let from = clock(now - ages.oldest_seconds);
                let to = clock(now - ages.youngest_seconds);
                let amount = human(finding.retained, &finding.unit);
                let _ = if evidence.held {
                    writeln!(
                        text,
                        "   held: {amount} {made} between {from} and {to}, {}; growth stopped at {to}",
                        kept(survival)
                    )
                } else {
                    writeln!(
                        text,
                        "   {amount} {made} since {from}, {}; still growing",
                        kept(survival)
                    )
                };
            }
        }
        "young" => {
            let _ = writeln!(
                text,
                "   rose at every profile and kept {:.0}% of what was {made} meanwhile",
                100.0 * evidence.survival.unwrap_or(1.0)
            );
        }
        "ratchet" | "held" => {
            let steps: Vec<String> = evidence
                .steps_seconds
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect();
            let what = if evidence.test == "held" {
                "held: rose in steps at"
            } else {
                "never came down; rose in steps at"
            };
            let _ = write!(text, "   {what} {} s", steps.join(", "));
            if evidence.held {
                let _ = write!(text, ", then stopped growing");
            }
            if let Some(survival) = evidence.survival {
                let _ = write!(text, "; {}", kept(survival));
            }
            text.push('\n');
        }
        _ => {}
    }
    for sibling in &evidence.siblings {
        let _ = writeln!(text, "   with the sibling site {sibling}");
    }
    if let Some(task_leak) = &finding.attributed_to {
        let _ = writeln!(
            text,
            "   runtime structures of the task leak at {task_leak}"
        );
    }
    for frame in evidence.stack.iter().take(10) {
        let _ = writeln!(text, "     {frame}");
    }
    let _ = writeln!(text, "   confirm: {confirm}");
    text
}

/// The closing summary as text.
pub fn render_summary(summary: &Summary<'_>, out: &Path) -> String {
    let mut text = String::new();
    let over = format!(
        "{} samples over {:.1} s",
        summary.samples, summary.elapsed_seconds
    );
    let stopped = summary
        .interrupted
        .map(|signal| format!("; stopped by {signal}"))
        .unwrap_or_default();
    if summary.findings.is_empty() {
        let _ = writeln!(
            text,
            "no leak found at {} ({over}{stopped}); profiles saved in {}",
            summary.target,
            out.display()
        );
    } else {
        let _ = writeln!(
            text,
            "{} leak(s) found at {} ({over}{stopped}), fastest first: {}; profiles saved in {}",
            summary.findings.len(),
            summary.target,
            summary
                .findings
                .iter()
                .map(|reported| format!(
                    "{} ({})",
                    reported.finding.function,
                    if reported.finding.evidence.held {
                        format!(
                            "held {}",
                            human(reported.finding.retained, &reported.finding.unit)
                        )
                    } else {
                        rate(reported.finding.rate_per_second, &reported.finding.unit)
                    }
                ))
                .collect::<Vec<_>>()
                .join(", "),
            out.display()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgeSummary, Evidence};

    fn finding(test: &str, unit: &str) -> Finding {
        Finding {
            kind: if unit == "bytes" {
                "heap"
            } else {
                "goroutines"
            }
            .into(),
            function: "main.leak".into(),
            file: "/app/main.go".into(),
            line: 30,
            rate_per_second: 0.3,
            unit: unit.into(),
            retained: 8180.0,
            first_seen_seconds: 0.0,
            confidence: 0.999,
            spawned_by: None,
            attributed_to: None,
            evidence: Evidence {
                stack: vec!["runtime.chansend1 /go/src/runtime/chan.go:161".into()],
                samples: 20,
                growth: 6.0,
                recent_rate_per_second: 0.3,
                test: test.into(),
                steps_seconds: vec![3.0, 12.0],
                siblings: vec!["main.fanoutLeaky.func2 /app/main.go:31".into()],
                survival: None,
                allocated: None,
                ages: None,
                held: false,
            },
        }
    }

    fn reported(finding: Finding) -> Reported {
        Reported {
            finding,
            confirm: "go tool pprof -top".into(),
        }
    }

    #[test]
    fn sizes_and_counts_read_as_people_write_them() {
        assert_eq!(human(10.0 * 1024.0 * 1024.0, "bytes"), "10.0 MiB");
        assert_eq!(human(512.0, "bytes"), "512.0 B");
        assert_eq!(
            human(3.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0, "bytes"),
            "3072.0 GiB"
        );
        assert_eq!(human(8180.0, "tasks"), "8180 tasks", "whole tasks");
        assert_eq!(rate(0.3, "tasks"), "0.3 tasks/s");
        assert_eq!(clock(1_796_559_150.9), "12:12:30 UTC");
    }

    #[test]
    fn a_ratchet_over_siblings_reads_with_its_steps_and_its_other_sites() {
        let text = render_finding(1, &reported(finding("ratchet", "tasks")), 0.0);
        assert!(text.contains("0.3 tasks/s in main.leak"), "{text}");
        assert!(text.contains("retained now 8180 tasks"), "{text}");
        assert!(text.contains("first seen at 0.0 s"), "{text}");
        assert!(
            text.contains("never came down; rose in steps at 3, 12 s"),
            "{text}"
        );
        assert!(
            text.contains("with the sibling site main.fanoutLeaky.func2 /app/main.go:31"),
            "{text}"
        );
    }

    #[test]
    fn a_held_leak_reads_with_when_it_was_allocated_and_when_it_stopped() {
        let mut held = finding("age", "bytes");
        held.retained = 1024.0 * 1024.0 * 1024.0;
        held.evidence.held = true;
        held.evidence.survival = Some(1.0);
        held.evidence.ages = Some(AgeSummary {
            youngest_seconds: 300.0,
            median_seconds: 350.0,
            oldest_seconds: 420.0,
        });
        // 11:27:00 now: allocated 11:20:00 to 11:22:00.
        let now = (11 * 3600 + 27 * 60) as f64;
        let text = render_finding(1, &reported(held), now);
        assert!(text.contains("leak: 1.0 GiB held in main.leak"), "{text}");
        assert!(
            text.contains(
                "held: 1.0 GiB allocated between 11:20:00 UTC and 11:22:00 UTC, none freed; growth stopped at 11:22:00 UTC"
            ),
            "{text}"
        );
        let reported = [reported(finding("trend", "bytes"))];
        let summary = Summary {
            target: "http://x",
            samples: 3,
            elapsed_seconds: 2.0,
            interrupted: Some("SIGINT"),
            profiles: "/tmp/out".into(),
            findings: &reported,
        };
        let text = render_summary(&summary, Path::new("/tmp/out"));
        assert!(text.contains("stopped by SIGINT"), "{text}");
        let line: serde_json::Value = serde_json::from_str(&summary_line(&summary)).unwrap();
        assert_eq!(line["type"], "summary");
        assert_eq!(line["findings"][0]["function"], "main.leak");
        assert_eq!(line["findings"][0]["confirm"], "go tool pprof -top");
        let line: serde_json::Value =
            serde_json::from_str(&finding_line(&summary.findings[0], 1.5)).unwrap();
        assert_eq!(
            (line["type"].as_str(), line["at_seconds"].as_f64()),
            (Some("finding"), Some(1.5))
        );
    }
}
