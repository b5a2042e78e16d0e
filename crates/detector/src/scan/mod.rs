//! `leakfinder scan <URL>`: watch a service's heap and task profiles and report the sites that
//! leak, each the moment it is confirmed.
//!
//! Every `--interval` it fetches the heap profile and the task profile (for a Go target, its
//! goroutine dump, whose ids tell a leak from a stream of short-lived goroutines), and runs the
//! detector. A finding is printed as soon as a test confirms it (stdout; with `--json`, one JSON
//! object per line); `--until-found` ends the scan there. SIGINT or SIGTERM end it early with the
//! report so far; the first and latest profiles are kept under `--out` either way.
//!
//! Exit codes: 0 when nothing leaks, 1 when leaks are found, 2 on error (for example a URL that
//! does not serve pprof), 130/143 when SIGINT/SIGTERM stopped a scan that had found nothing.
//!
//! - [`report`]: what is printed (pure);
//! - [`interrupt`]: SIGINT and SIGTERM.

pub mod interrupt;
pub mod report;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frames::Language;
use crate::profile::{ProfileKind, SnapshotError, snapshot};
use crate::sampler::{FetchError, Sampler, Target};
use crate::tls::{CaCertError, CaCerts};
use crate::{Detector, Finding, goroutines};
use report::{Reported, Summary};
pub use report::{human, rate};

/// The `scan` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// The service: its base URL, or any of its `/debug/pprof/` URLs (`http://` or `https://`).
    pub url: String,
    /// How long to watch at most (`30s`, `2m`, `3m30s`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between two samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print JSON Lines on stdout instead of text: one `{"type":"finding",...}` object per
    /// finding the moment it is confirmed, then one `{"type":"summary","findings":[...],...}`.
    #[arg(long)]
    pub json: bool,
    /// End the scan at the first confirmed finding (exit 1), rather than after --duration.
    #[arg(long)]
    pub until_found: bool,
    /// Where to save the first and latest profiles (default: a new directory under the system's
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
    Profile(#[from] SnapshotError),
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
    /// A Go target's goroutines: read from its dump each round, the profile only when saved.
    dump_only: bool,
}

impl Watched {
    fn new(kind: ProfileKind) -> Self {
        Self {
            kind,
            last: None,
            failures: 0,
            error: None,
            dump_only: false,
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
    interrupt::catch();
    match scan(args) {
        Ok(outcome) if !outcome.findings.is_empty() => ExitCode::from(1),
        Ok(Outcome {
            interrupted: Some(signal),
            ..
        }) => ExitCode::from(interrupt::exit_code(signal)),
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("leakfinder scan: {error}");
            ExitCode::from(2)
        }
    }
}

/// How a scan ended.
#[derive(Debug)]
pub struct Outcome {
    /// Every finding confirmed, in its latest state.
    pub findings: Vec<Finding>,
    /// The signal that ended it early, if one did.
    pub interrupted: Option<&'static str>,
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

/// Runs `job` on a thread of its own and waits for it, unless SIGINT or SIGTERM comes first
/// (then `None`: a hung target does not keep a stopped scan waiting).
fn interruptible<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(job());
    });
    loop {
        if interrupt::received().is_some() {
            return None;
        }
        match receiver.recv_timeout(Duration::from_millis(20)) {
            Ok(value) => return Some(value),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// A finding's identity across rounds.
type Key = (String, String, String, i64);

fn key(finding: &Finding) -> Key {
    (
        finding.kind.clone(),
        finding.function.clone(),
        finding.file.clone(),
        finding.line,
    )
}

/// Unix seconds now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The scan's state between rounds: what was confirmed and printed.
struct Printer {
    json: bool,
    out: PathBuf,
    /// Confirmed findings in the order they were confirmed, each in its latest state.
    confirmed: Vec<Reported>,
    index: BTreeMap<Key, usize>,
    /// Rounds in a row each unconfirmed finding has been found in.
    streaks: BTreeMap<Key, usize>,
}

/// Rounds in a row a statistical test must find a site before it is confirmed.
const CONFIRM_ROUNDS: usize = 3;

impl Printer {
    fn confirm_command(&self, finding: &Finding) -> String {
        let kind = if finding.unit == "bytes" {
            ProfileKind::Heap
        } else {
            ProfileKind::Tasks
        };
        format!(
            "go tool pprof -top -base {} {}",
            self.out.join(file_name(kind, "first")).display(),
            self.out.join(file_name(kind, "last")).display()
        )
    }

    /// Records this round's `findings`; returns the ones confirmed for the first time. The
    /// tests that read one profile (`age`) or a run of rises with every allocation kept
    /// (`young`) confirm at once; the statistical ones (`trend`, `ratchet`, `held`) once they
    /// have held for [`CONFIRM_ROUNDS`] rounds in a row, so that a round whose noise happens to
    /// pass a test is not printed as a leak.
    fn update(&mut self, findings: Vec<Finding>) -> Vec<usize> {
        let mut new = Vec::new();
        let mut streaks = BTreeMap::new();
        for finding in findings {
            let key = key(&finding);
            let streak = self.streaks.get(&key).copied().unwrap_or(0) + 1;
            streaks.insert(key.clone(), streak);
            let immediate = matches!(finding.evidence.test.as_str(), "age" | "young");
            match self.index.get(&key) {
                Some(&at) => self.confirmed[at].finding = finding,
                None if immediate || streak >= CONFIRM_ROUNDS => {
                    let confirm = self.confirm_command(&finding);
                    self.index.insert(key, self.confirmed.len());
                    new.push(self.confirmed.len());
                    self.confirmed.push(Reported { finding, confirm });
                }
                None => {}
            }
        }
        self.streaks = streaks;
        new
    }

    fn print_finding(&self, at: usize, t: f64) {
        let reported = &self.confirmed[at];
        let mut stdout = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(stdout, "{}", report::finding_line(reported, t))
        } else {
            writeln!(
                stdout,
                "{}",
                report::render_finding(at + 1, reported, unix_now())
            )
        };
        let _ = stdout.flush();
    }
}

/// What one fetch brought.
enum Fetched {
    /// A profile, as served and decoded.
    Profile(Vec<u8>, Box<leakfinder_pprof::Profile>),
    /// A Go goroutine dump, read.
    Dump(crate::profile::Snapshot),
}

/// Where a scan of the target's tasks reads them from.
enum TaskSource {
    /// The protobuf profile (leakfinder's carries ages and spawn counts).
    Profile,
    /// Go's goroutine dump (`debug=2`): ids and waits, for the target's language.
    Dump(Language),
}

fn scan(args: &ScanArgs) -> Result<Outcome, ScanError> {
    let target = Target::parse(&args.url)?;
    let sampler = Arc::new(Sampler::with_ca_certs(
        target,
        &CaCerts::read(args.ca_cert.as_deref())?,
    )?);
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
    let mut tasks = TaskSource::Profile;
    let mut printer = Printer {
        json: args.json,
        out: out.clone(),
        confirmed: Vec::new(),
        index: BTreeMap::new(),
        streaks: BTreeMap::new(),
    };
    let mut samples = 0usize;
    let mut interrupted = None;
    'rounds: loop {
        let tick = Instant::now();
        let t = super::seconds_since(started);
        for profile in &mut watched {
            let kind = profile.kind;
            let fetched = match (&tasks, profile.dump_only) {
                (TaskSource::Dump(language), true) => {
                    let dumping = Arc::clone(&sampler);
                    let language = language.clone();
                    interruptible(move || {
                        dumping.goroutine_dump().map(|dump| {
                            Fetched::Dump(goroutines::snapshot(
                                &goroutines::parse(&dump),
                                &language,
                            ))
                        })
                    })
                }
                _ => {
                    let fetching = Arc::clone(&sampler);
                    interruptible(move || {
                        fetching
                            .fetch(kind)
                            .map(|(bytes, profile)| Fetched::Profile(bytes, Box::new(profile)))
                    })
                }
            };
            let Some(fetched) = fetched else {
                interrupted = interrupt::received();
                break 'rounds;
            };
            let snapshot = match fetched {
                Ok(Fetched::Dump(snapshot)) => snapshot,
                Ok(Fetched::Profile(bytes, fetched)) => {
                    let mut read = snapshot(&fetched, kind)?;
                    if profile.last.is_none() {
                        save(&out, &file_name(kind, "first"), &bytes)?;
                        let language = crate::profile::language(&fetched);
                        // A Go target's goroutines are read from its dump from now on (its ids
                        // tell a leak from turnover); the profile is fetched again only to be
                        // saved.
                        if kind == ProfileKind::Tasks && language.is_go() {
                            let dumping = Arc::clone(&sampler);
                            match interruptible(move || dumping.goroutine_dump()) {
                                None => {
                                    interrupted = interrupt::received();
                                    break 'rounds;
                                }
                                Some(Ok(dump)) => {
                                    read =
                                        goroutines::snapshot(&goroutines::parse(&dump), &language);
                                    tasks = TaskSource::Dump(language);
                                    profile.dump_only = true;
                                }
                                Some(Err(error)) => eprintln!(
                                    "leakfinder scan: no goroutine dump ({error}); reading the goroutine profile"
                                ),
                            }
                        }
                    }
                    profile.last = Some(bytes);
                    read
                }
                Err(error) => {
                    profile.failures += 1;
                    eprintln!(
                        "leakfinder scan: no {} profile this round: {error}",
                        profile.name()
                    );
                    profile.error = Some(error);
                    continue;
                }
            };
            profile.failures = 0;
            detector.observe(t, &snapshot);
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
        let new = printer.update(detector.findings());
        if !new.is_empty() {
            save_latest(&out, &watched, &sampler)?;
            for at in new {
                printer.print_finding(at, t);
            }
        }
        let line = format!(
            "scanning {}: {samples} samples, {:.0}/{:.0} s, {} sites watched, {} confirmed",
            sampler.target().base(),
            started.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            detector.sites(),
            printer.confirmed.len(),
        );
        if interactive {
            eprint!("\r{line}  ");
        } else {
            eprintln!("{line}");
        }
        if args.until_found && !printer.confirmed.is_empty() {
            break;
        }
        if started.elapsed() + args.interval > args.duration {
            break;
        }
        if interrupt::sleep_until(tick + args.interval) {
            interrupted = interrupt::received();
            break;
        }
    }
    if interactive {
        eprintln!();
    }
    if watched.iter().all(|profile| profile.last.is_none()) {
        if let Some(signal) = interrupted {
            eprintln!("leakfinder scan: stopped by {signal} before any profile was taken");
            print_summary(args, &sampler, samples, started, interrupted, &out, &[]);
            return Ok(Outcome {
                findings: Vec::new(),
                interrupted,
            });
        }
        // Not one profile in the whole scan: that is an error, not "no leak".
        let error = watched.into_iter().find_map(|profile| profile.error);
        return Err(error.expect("a profile without data failed").into());
    }
    save_latest(&out, &watched, &sampler)?;
    let mut findings: Vec<Reported> = printer.confirmed.clone();
    findings.sort_by(|a, b| {
        let (a, b) = (&a.finding, &b.finding);
        (b.unit == "bytes")
            .cmp(&(a.unit == "bytes"))
            .then(b.rate_per_second.total_cmp(&a.rate_per_second))
    });
    print_summary(
        args,
        &sampler,
        samples,
        started,
        interrupted,
        &out,
        &findings,
    );
    Ok(Outcome {
        findings: findings
            .into_iter()
            .map(|reported| reported.finding)
            .collect(),
        interrupted,
    })
}

/// Prints the closing summary: text, or the `"summary"` JSON line.
fn print_summary(
    args: &ScanArgs,
    sampler: &Sampler,
    samples: usize,
    started: Instant,
    interrupted: Option<&str>,
    out: &Path,
    findings: &[Reported],
) {
    let summary = Summary {
        target: sampler.target().base(),
        samples,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        interrupted,
        profiles: out.display().to_string(),
        findings,
    };
    let mut stdout = std::io::stdout().lock();
    let _ = if args.json {
        writeln!(stdout, "{}", report::summary_line(&summary))
    } else {
        write!(stdout, "{}", report::render_summary(&summary, out))
    };
}

/// Saves the latest profile of each kind (a Go target's goroutine profile is fetched for it:
/// its dump is what the rounds read).
fn save_latest(out: &Path, watched: &[Watched], sampler: &Arc<Sampler>) -> Result<(), ScanError> {
    for profile in watched {
        let bytes = if profile.dump_only {
            let fetching = Arc::clone(sampler);
            let kind = profile.kind;
            match interruptible(move || fetching.fetch(kind)) {
                Some(Ok((bytes, _))) => Some(bytes),
                _ => profile.last.clone(),
            }
        } else {
            profile.last.clone()
        };
        if let Some(bytes) = bytes {
            save(out, &file_name(profile.kind, "last"), &bytes)?;
        }
    }
    Ok(())
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
            dump_only: false,
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
}
