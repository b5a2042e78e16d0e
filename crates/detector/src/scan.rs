//! `leakfinder scan <URL>`: watch a service's heap and task profiles for a while and report the
//! sites that leak, ranked by rate.
//!
//! Exit codes: 0 when nothing leaks, 1 when leaks are found, 2 on error (for example a URL that
//! does not serve pprof).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::profile::{ProfileKind, snapshot};
use crate::sampler::{FetchError, Sampler, Target};
use crate::tls::{CaCertError, CaCerts};
use crate::{Detector, Finding};

/// The `scan` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// The service: its base URL, or any of its `/debug/pprof/` URLs (`http://` or `https://`).
    pub url: String,
    /// How long to watch (`30s`, `2m`, `3m30s`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between two samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print `{"findings": [...]}` as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where to save the first and last profiles (default: a new directory under the system's
    /// temporary directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A PEM file of CA certificates to trust beside the system's roots, for an `https://`
    /// target whose certificate a private CA signed.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// `30s`, `2m`, `1h`, `500ms`, compounds of them (`3m30s`, `1h15m`) or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration like 30s, 2m, 3m30s or 500ms");
    if text.is_empty() {
        return Err(bad());
    }
    let mut seconds = 0.0;
    let mut rest = text;
    let mut first = true;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let letters = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(letters);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            // A bare number is seconds, alone; within a compound every part has its unit.
            "" if first => 1.0,
            "" => return Err(bad()),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
                ));
            }
        };
        seconds += number * scale;
        first = false;
        rest = after;
    }
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A finding as the scan reports it: with the command that confirms it.
#[derive(Debug, serde::Serialize)]
struct Reported<'a> {
    #[serde(flatten)]
    finding: &'a Finding,
    confirm: String,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    CaCert(#[from] CaCertError),
    #[error("cannot save profiles under {dir}: {source}")]
    Save {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Profile(#[from] super::profile::SnapshotError),
}

/// Consecutive failed fetches after which a profile is no longer fetched.
const GIVE_UP_AFTER: u32 = 3;

/// One profile kind being scanned.
struct Watched {
    kind: ProfileKind,
    /// The latest profile fetched, as served.
    last: Option<Vec<u8>>,
    /// Failed fetches in a row, and the latest error.
    failures: u32,
    error: Option<FetchError>,
}

impl Watched {
    fn new(kind: ProfileKind) -> Self {
        Self {
            kind,
            last: None,
            failures: 0,
            error: None,
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ProfileKind::Heap => "heap",
            ProfileKind::Tasks => "task",
        }
    }

    /// Whether to stop fetching it: it failed [`GIVE_UP_AFTER`] times in a row, or on the very
    /// first round when the target refused, answered an error status or answered something that
    /// is not pprof (nothing there, or it does not serve that profile).
    fn given_up(&self, first_round: bool) -> bool {
        self.failures >= GIVE_UP_AFTER
            || (first_round
                && self.last.is_none()
                && matches!(
                    self.error,
                    Some(
                        FetchError::Status { .. }
                            | FetchError::Refused { .. }
                            | FetchError::Tls { .. }
                            | FetchError::NotPprof { .. }
                    )
                ))
    }
}

/// Runs the scan and returns its exit code.
pub fn run(args: &ScanArgs) -> ExitCode {
    match scan(args) {
        Ok(findings) if findings.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("leakfinder scan: {error}");
            ExitCode::from(2)
        }
    }
}

fn file_name(kind: ProfileKind, which: &str) -> String {
    let name = match kind {
        ProfileKind::Heap => "heap",
        ProfileKind::Tasks => "goroutine",
    };
    format!("{name}-{which}.pb.gz")
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ScanError> {
    // Made on the first profile saved: a scan that fails before leaves nothing behind.
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(name), bytes))
        .map_err(|source| ScanError::Save {
            dir: dir.to_owned(),
            source,
        })
}

fn scan(args: &ScanArgs) -> Result<Vec<Finding>, ScanError> {
    let target = Target::parse(&args.url)?;
    let sampler = Sampler::with_ca_certs(target, &CaCerts::read(args.ca_cert.as_deref())?)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        std::env::temp_dir().join(format!("leakfinder-scan-{stamp}-{}", std::process::id()))
    });
    let interactive = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut detector = Detector::new(usize::MAX);
    let mut watched = vec![
        Watched::new(ProfileKind::Heap),
        Watched::new(ProfileKind::Tasks),
    ];
    let mut samples = 0usize;
    loop {
        let tick = Instant::now();
        let t = super::seconds_since(started);
        for profile in &mut watched {
            match sampler.fetch(profile.kind) {
                Ok((bytes, fetched)) => {
                    detector.observe(t, &snapshot(&fetched, profile.kind)?);
                    if profile.last.is_none() {
                        save(&out, &file_name(profile.kind, "first"), &bytes)?;
                    }
                    profile.last = Some(bytes);
                    profile.failures = 0;
                }
                Err(error) => {
                    profile.failures += 1;
                    eprintln!(
                        "leakfinder scan: no {} profile this round: {error}",
                        profile.name()
                    );
                    profile.error = Some(error);
                }
            }
        }
        // A profile that keeps failing is given up; the others are still scanned. With none
        // left, the scan fails with the last error, said plainly.
        let (kept, dropped): (Vec<Watched>, Vec<Watched>) = watched
            .into_iter()
            .partition(|profile| !profile.given_up(samples == 0));
        watched = kept;
        for profile in &dropped {
            if !watched.is_empty() {
                eprintln!(
                    "leakfinder scan: no longer fetching the {} profile; scanning the rest",
                    profile.name()
                );
            }
        }
        if watched.is_empty() {
            let error = dropped
                .into_iter()
                .rev()
                .find_map(|profile| profile.error)
                .expect("a profile is given up only after an error");
            return Err(error.into());
        }
        samples += 1;
        let suspects = detector.findings().len();
        let line = format!(
            "scanning {}: {samples} samples, {:.0}/{:.0} s, {} sites watched, {suspects} suspected",
            sampler.target().base(),
            started.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            detector.sites(),
        );
        if interactive {
            eprint!("\r{line}  ");
        } else {
            eprintln!("{line}");
        }
        if started.elapsed() + args.interval > args.duration {
            break;
        }
        std::thread::sleep(args.interval.saturating_sub(tick.elapsed()));
    }
    if interactive {
        eprintln!();
    }
    if watched.iter().all(|profile| profile.last.is_none()) {
        // Not one profile in the whole scan: that is an error, not "no leak".
        let error = watched.into_iter().find_map(|profile| profile.error);
        return Err(error.expect("a profile without data failed").into());
    }
    for profile in &watched {
        if let Some(bytes) = &profile.last {
            save(&out, &file_name(profile.kind, "last"), bytes)?;
        }
    }
    let findings = detector.findings();
    let reported: Vec<Reported> = findings
        .iter()
        .map(|finding| {
            let kind = if finding.unit == "bytes" {
                ProfileKind::Heap
            } else {
                ProfileKind::Tasks
            };
            let confirm = format!(
                "go tool pprof -top -base {} {}",
                out.join(file_name(kind, "first")).display(),
                out.join(file_name(kind, "last")).display()
            );
            Reported { finding, confirm }
        })
        .collect();
    let mut stdout = std::io::stdout().lock();
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let json = serde_json::json!({ "findings": reported });
        let _ = writeln!(stdout, "{json}");
    } else {
        let _ = write!(
            stdout,
            "{}",
            render(&reported, sampler.target().base(), samples, elapsed, &out)
        );
    }
    Ok(findings)
}

/// An amount for people: bytes as [`human`] says them; a count of tasks (or goroutines) as the
/// whole number it is (`8180 tasks`, not `8180.0 tasks`).
pub fn amount(value: f64, unit: &str) -> String {
    if unit == "bytes" {
        human(value, unit)
    } else {
        format!("{value:.0} {unit}")
    }
}

/// A rate or amount for people: bytes in B, KiB, MiB or GiB; any other unit as it is.
pub fn human(value: f64, unit: &str) -> String {
    if unit != "bytes" {
        return format!("{value:.1} {unit}");
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

fn render(reported: &[Reported], base: &str, samples: usize, elapsed: f64, out: &Path) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if reported.is_empty() {
        let _ = writeln!(
            text,
            "no leak found at {base} ({samples} samples over {elapsed:.1} s); profiles saved in {}",
            out.display()
        );
        return text;
    }
    let _ = writeln!(
        text,
        "{} leak(s) found at {base} ({samples} samples over {elapsed:.1} s), fastest first:\n",
        reported.len()
    );
    for (rank, Reported { finding, confirm }) in reported.iter().enumerate() {
        let _ = writeln!(
            text,
            "{}. {} leak: {}/s in {}\n   at {}:{}\n   retained now {}, first seen at {:.1} s, confidence {:.3}",
            rank + 1,
            finding.kind,
            human(finding.rate_per_second, &finding.unit),
            finding.function,
            finding.file,
            finding.line,
            amount(finding.retained, &finding.unit),
            finding.first_seen_seconds,
            finding.confidence,
        );
        let evidence = &finding.evidence;
        if evidence.test == "ratchet" {
            let steps: Vec<String> = evidence
                .steps_seconds
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect();
            let _ = writeln!(
                text,
                "   never came down; rose in steps at {} s",
                steps.join(", ")
            );
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
        let _ = writeln!(text, "   confirm: {confirm}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(kind: ProfileKind, failures: u32, error: FetchError, fetched: bool) -> Watched {
        Watched {
            kind,
            last: fetched.then(Vec::new),
            failures,
            error: Some(error),
        }
    }

    #[test]
    fn a_profile_is_given_up_after_three_failures_or_at_once_when_it_is_not_served() {
        let url = || "http://127.0.0.1:1/debug/pprof/heap".to_owned();
        let timeout = || FetchError::Timeout { url: url() };
        // A hang is retried: given up only on the third failure in a row.
        assert!(!failing(ProfileKind::Heap, 1, timeout(), false).given_up(true));
        assert!(!failing(ProfileKind::Heap, 2, timeout(), true).given_up(false));
        assert!(failing(ProfileKind::Heap, 3, timeout(), true).given_up(false));
        // Not served at all on the first round: given up at once.
        let status = FetchError::Status {
            url: url(),
            status: 404,
        };
        assert!(failing(ProfileKind::Tasks, 1, status, false).given_up(true));
        let refused = FetchError::Refused { url: url() };
        assert!(failing(ProfileKind::Heap, 1, refused, false).given_up(true));
        // Later, a refusal is a restart or an outage: retried like a hang.
        let refused = FetchError::Refused { url: url() };
        assert!(!failing(ProfileKind::Heap, 1, refused, true).given_up(false));
    }

    #[test]
    fn durations_parse_with_units_and_bounds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m30s"), Ok(Duration::from_secs(210)));
        assert_eq!(parse_duration("1h15m"), Ok(Duration::from_secs(4500)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
        for bad in [
            "", "s", "10x", "-1s", "0s", "25h", "1e9", "3m30", "3m 30s", "m30s", "3m30x",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(10.0 * 1024.0 * 1024.0, "bytes"), "10.0 MiB");
        assert_eq!(human(512.0, "bytes"), "512.0 B");
        assert_eq!(
            human(3.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0, "bytes"),
            "3072.0 GiB"
        );
        assert_eq!(human(9.5, "tasks"), "9.5 tasks");
        assert_eq!(amount(8180.0, "tasks"), "8180 tasks");
        assert_eq!(amount(10.0 * 1024.0 * 1024.0, "bytes"), "10.0 MiB");
    }

    #[test]
    fn a_ratchet_over_siblings_reads_with_its_steps_and_its_other_sites() {
        let finding = Finding {
            kind: "goroutines".into(),
            function: "main.fanoutLeaky.func1".into(),
            file: "/app/main.go".into(),
            line: 30,
            rate_per_second: 0.3,
            unit: "tasks".into(),
            retained: 6.0,
            first_seen_seconds: 0.0,
            confidence: 0.999,
            spawned_by: None,
            attributed_to: None,
            evidence: super::super::Evidence {
                stack: vec!["runtime.chansend1 /go/src/runtime/chan.go:161".into()],
                samples: 20,
                growth: 6.0,
                recent_rate_per_second: 0.3,
                test: "ratchet".into(),
                steps_seconds: vec![3.0, 12.0],
                siblings: vec!["main.fanoutLeaky.func2 /app/main.go:31".into()],
            },
        };
        let reported = [Reported {
            finding: &finding,
            confirm: "go tool pprof -top".into(),
        }];
        let text = render(&reported, "http://x", 20, 19.0, Path::new("/tmp/out"));
        assert!(
            text.contains("0.3 tasks/s in main.fanoutLeaky.func1"),
            "{text}"
        );
        assert!(text.contains("first seen at 0.0 s"), "{text}");
        assert!(text.contains("retained now 6 tasks,"), "{text}");
        assert!(
            text.contains("never came down; rose in steps at 3, 12 s"),
            "{text}"
        );
        assert!(
            text.contains("with the sibling site main.fanoutLeaky.func2 /app/main.go:31"),
            "{text}"
        );
    }
}
