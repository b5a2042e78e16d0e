//! The detector against a corpus of blocking bugs: every program of `tests/fixtures/gocorpus`
//! (a class of real blocking bug in a loop behind `net/http/pprof`, each with its fixed twin, and
//! non-leaking controls) and the tokio twins of `examples/tokio_twins.rs`, each scanned as a user
//! would: `leakfinder scan URL --duration 20s --interval 1s --json`.
//!
//! It prints, per program, the verdict and the function named, then the totals: recall with the
//! right function named, false positives on fixed twins and controls, and the median time to
//! detect. Side by side, in the same processes, it asks Go 1.26's own runtime-assisted detector
//! (the programs are built with `GOEXPERIMENT=goroutineleakprofile`) for its
//! `/debug/pprof/goroutineleak` once the scan is over, and prints the same totals for it.
//! It fails when our recall is under 96% or under Go's, or on any false positive of ours.
//!
//! `cargo bench --bench corpus` runs the whole corpus; `cargo bench --bench corpus -- --reduced`
//! (what CI runs) takes the first program of each class with its fixed twin, every control and
//! the tokio twins. `CORPUS_SCANNER=/path/to/leakfinder` scores another build's scan (an older
//! release, say) on the same corpus.

#[path = "../tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use helpers::{BINARY, start_listening, twin_leaks};

/// Recall the corpus must reach: Go 1.26's own detector found 96% of a comparable corpus.
const MIN_RECALL: f64 = 0.96;
/// Scans that run at once. Each is a small Go program and a scanner that sleeps between samples.
const PARALLEL: usize = 6;
const SCAN: &[&str] = &["--duration", "20s", "--interval", "1s", "--json"];
const TOKIO_CLASS: &str = "tokio twins";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Leaky,
    Fixed,
    Control,
}

/// One program to scan, and what a correct scan says.
#[derive(Debug, Clone)]
struct Case {
    /// `doublelock`, `tokio twins`...
    name: String,
    class: String,
    variant: Variant,
    program: PathBuf,
    args: Vec<String>,
    /// Per leak in the program: its name and the functions a finding may name for it.
    leaks: Vec<(String, Vec<String>)>,
}

/// What one scan said.
struct Verdict {
    case: Case,
    /// Per leak: the function named, if a finding named a wanted one.
    found: Vec<Option<String>>,
    /// Every finding's function.
    named: Vec<String>,
    /// Seconds from the scan's start to its first suspect.
    detected_after: Option<f64>,
    error: Option<String>,
    /// Go's own detector on a Go program: the functions on its leaked goroutines' stacks.
    go_leaked: Option<Vec<String>>,
}

impl Verdict {
    /// Per leak, whether Go's detector reported a goroutine with a wanted function on its stack.
    fn go_found(&self) -> Option<Vec<bool>> {
        let leaked = self.go_leaked.as_ref()?;
        Some(
            self.case
                .leaks
                .iter()
                .map(|(_, wanted)| leaked.iter().any(|function| wanted.contains(function)))
                .collect(),
        )
    }
}

/// The functions on every stack of Go's `goroutineleak` profile (`debug=1` text: frame lines
/// read `#\t0x4a1b2c\tmain.f+0x23\t/path/main.go:24`).
fn go_leak_profile(url: &str) -> Result<Vec<String>, String> {
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let text = reqwest::blocking::get(format!("{url}/debug/pprof/goroutineleak?debug=1"))
        .and_then(reqwest::blocking::Response::error_for_status)
        .and_then(reqwest::blocking::Response::text)
        .map_err(|error| format!("Go's goroutineleak profile: {error}"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter_map(|frame| frame.split_whitespace().nth(1))
        .map(|function| {
            function
                .rsplit_once("+0x")
                .map_or(function, |(name, _)| name)
                .to_owned()
        })
        .collect())
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds every Go program of the corpus into `target/gocorpus/`.
fn build_go_corpus() -> PathBuf {
    let out = root().join("target/gocorpus");
    let status = Command::new("go")
        .env("GOEXPERIMENT", "goroutineleakprofile")
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-o"])
        .arg(format!("{}/", out.display()))
        .arg("./...")
        .current_dir(root().join("tests/fixtures/gocorpus"))
        .status()
        .expect("go is installed");
    assert!(status.success(), "the Go corpus builds");
    out
}

/// `// class:` and `// want:` of a program's main.go.
fn header(source: &str, key: &str) -> Option<String> {
    source
        .lines()
        .find_map(|line| line.strip_prefix(&format!("// {key}: ")))
        .map(|value| value.trim().to_owned())
}

fn go_cases(bin: &Path) -> Vec<Case> {
    let dir = root().join("tests/fixtures/gocorpus");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("main.go").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut cases = Vec::new();
    for name in names {
        let source = std::fs::read_to_string(dir.join(&name).join("main.go")).unwrap();
        let class = header(&source, "class").unwrap_or_else(|| panic!("{name} has a class"));
        let case = |variant: Variant, arg: &str, leaks: Vec<(String, Vec<String>)>| Case {
            name: name.clone(),
            class: class.clone(),
            variant,
            program: bin.join(&name),
            args: vec!["-variant".into(), arg.into()],
            leaks,
        };
        if class == "control" {
            cases.push(case(Variant::Control, "leaky", Vec::new()));
            continue;
        }
        let want: Vec<String> = header(&source, "want")
            .unwrap_or_else(|| panic!("{name} says which function leaks"))
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        cases.push(case(Variant::Leaky, "leaky", vec![(name.clone(), want)]));
        cases.push(case(Variant::Fixed, "fixed", Vec::new()));
    }
    cases
}

/// The tokio twins: one program per variant, one leak per `// twin-leak: NAME` marker (the join
/// twin's worker counts for the join twin).
fn tokio_cases() -> Vec<Case> {
    let program = Path::new(BINARY)
        .parent()
        .unwrap()
        .join("examples/tokio_twins");
    if !program.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "--example", "tokio_twins"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "the tokio twins build");
    }
    let mut leaks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, function, _) in twin_leaks() {
        let twin = name.split('-').next().unwrap().to_owned();
        leaks
            .entry(format!("tokio {twin}"))
            .or_default()
            .push(format!("tokio_twins::{function}"));
    }
    let case = |variant: Variant, arg: &str, leaks: Vec<(String, Vec<String>)>| Case {
        name: "tokio_twins".into(),
        class: TOKIO_CLASS.into(),
        variant,
        program: program.clone(),
        args: vec![arg.into()],
        leaks,
    };
    vec![
        case(Variant::Leaky, "leaky", leaks.into_iter().collect()),
        case(Variant::Fixed, "fixed", Vec::new()),
    ]
}

/// Whether a finding's function is a wanted one: exactly, or (for Rust async functions, whose
/// frames carry `::{{closure}}` suffixes) as a prefix at a path boundary.
fn names(function: &str, wanted: &str) -> bool {
    function == wanted
        || function
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with("::"))
}

fn run(case: Case) -> Verdict {
    let target = start_listening(Command::new(&case.program).args(&case.args));
    let url = target.url.clone();
    let out = std::env::temp_dir().join(format!(
        "leakfinder-corpus-{}-{}",
        std::process::id(),
        url.rsplit(':').next().unwrap()
    ));
    let started = Instant::now();
    let mut scan = Command::new(scanner())
        .arg("scan")
        .arg(&url)
        .args(SCAN)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the scan starts");
    let stderr = scan.stderr.take().unwrap();
    let progress = std::thread::spawn(move || {
        // Progress lines; an older build says "N suspected" when it first suspects a leak.
        let mut detected = None;
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let suspects = line
                .strip_suffix(" suspected")
                .and_then(|head| head.rsplit(' ').next())
                .and_then(|count| count.parse::<u32>().ok());
            if detected.is_none() && suspects.is_some_and(|count| count > 0) {
                detected = Some(started.elapsed().as_secs_f64());
            }
            lines.push(line);
        }
        (detected, lines)
    });
    let output = scan.wait_with_output().expect("the scan runs");
    let (suspected_after, lines) = progress.join().unwrap();
    let go_leaked = (case.class != TOKIO_CLASS).then(|| go_leak_profile(&url));
    let _ = std::fs::remove_dir_all(&out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // This build prints each finding the moment it is confirmed: its time is the time to detect.
    let detected_after = helpers::first_finding_at(&stdout).or(suspected_after);
    let (findings, error) = match helpers::scan_summary(&stdout) {
        Some(json) => (
            json["findings"].as_array().cloned().unwrap_or_default(),
            None,
        ),
        None => (Vec::new(), Some(lines.last().cloned().unwrap_or_default())),
    };
    let (go_leaked, error) = match go_leaked {
        Some(Err(go_error)) => (None, error.or(Some(go_error))),
        Some(Ok(leaked)) => (Some(leaked), error),
        None => (None, error),
    };
    let named: Vec<String> = findings
        .iter()
        .map(|finding| finding["function"].as_str().unwrap_or("?").to_owned())
        .collect();
    let found = case
        .leaks
        .iter()
        .map(|(_, wanted)| {
            named
                .iter()
                .find(|function| wanted.iter().any(|want| names(function, want)))
                .cloned()
        })
        .collect();
    Verdict {
        case,
        found,
        named,
        detected_after,
        error,
        go_leaked,
    }
}

/// The `leakfinder` whose scan is scored: this build, or `CORPUS_SCANNER`.
fn scanner() -> PathBuf {
    std::env::var_os("CORPUS_SCANNER").map_or_else(|| PathBuf::from(BINARY), PathBuf::from)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn main() {
    let reduced = std::env::args().any(|arg| arg == "--reduced");
    println!(
        "leakfinder corpus benchmark ({}): `{} scan URL {}` per program, {PARALLEL} at a time",
        if reduced {
            "reduced: one program per class"
        } else {
            "whole corpus"
        },
        scanner().display(),
        SCAN.join(" ")
    );
    let bin = build_go_corpus();
    let mut cases = go_cases(&bin);
    if reduced {
        let mut seen = std::collections::BTreeSet::new();
        let first_of_class: std::collections::BTreeSet<String> = cases
            .iter()
            .filter(|case| case.variant == Variant::Leaky && seen.insert(case.class.clone()))
            .map(|case| case.name.clone())
            .collect();
        cases
            .retain(|case| case.variant == Variant::Control || first_of_class.contains(&case.name));
    }
    cases.extend(tokio_cases());
    let started = Instant::now();
    let queue = Mutex::new(cases.into_iter().rev().collect::<Vec<_>>());
    let verdicts = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let Some(case) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let verdict = run(case);
                    print_verdict(&verdict);
                    verdicts.lock().unwrap().push(verdict);
                }
            });
        }
    });
    let verdicts = verdicts.into_inner().unwrap();
    let leaks: usize = verdicts.iter().map(|v| v.case.leaks.len()).sum();
    let found: usize = verdicts
        .iter()
        .map(|v| v.found.iter().filter(|found| found.is_some()).count())
        .sum();
    let quiet_runs: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| v.case.variant != Variant::Leaky)
        .collect();
    let false_positives: usize = quiet_runs.iter().map(|v| v.named.len()).sum();
    let noisy = quiet_runs.iter().filter(|v| !v.named.is_empty()).count();
    let errors = verdicts.iter().filter(|v| v.error.is_some()).count();
    let mut times: Vec<f64> = verdicts
        .iter()
        .filter(|v| v.case.variant == Variant::Leaky && v.found.iter().any(Option::is_some))
        .filter_map(|v| v.detected_after)
        .collect();
    let recall = found as f64 / leaks.max(1) as f64;
    println!(
        "\nleakfinder: recall with the right function named: {found}/{leaks} leaks ({:.1}%, target {:.0}%)",
        100.0 * recall,
        100.0 * MIN_RECALL
    );
    println!(
        "leakfinder: false positives: {false_positives} findings in {noisy} of {} fixed twins and controls (target 0)",
        quiet_runs.len()
    );
    match median(&mut times) {
        Some(median) => {
            println!("leakfinder: median time to detect: {median:.1} s (scan every 1 s)")
        }
        None => println!("leakfinder: median time to detect: none detected"),
    }
    // The same Go processes, as Go's own detector saw them at the end of the scan.
    let go_runs: Vec<&Verdict> = verdicts.iter().filter(|v| v.go_leaked.is_some()).collect();
    let go_leaks: usize = go_runs.iter().map(|v| v.case.leaks.len()).sum();
    let go_found: usize = go_runs
        .iter()
        .filter_map(|v| v.go_found())
        .map(|found| found.into_iter().filter(|&found| found).count())
        .sum();
    let our_go_found: usize = go_runs
        .iter()
        .map(|v| v.found.iter().filter(|found| found.is_some()).count())
        .sum();
    let go_noisy = go_runs
        .iter()
        .filter(|v| v.case.variant != Variant::Leaky)
        .filter(|v| {
            v.go_leaked
                .as_ref()
                .is_some_and(|leaked| !leaked.is_empty())
        })
        .count();
    println!(
        "on the Go programs alone: leakfinder {our_go_found}/{go_leaks}, Go 1.26 goroutineleak {go_found}/{go_leaks} (a wanted function anywhere on a leaked stack); Go's false positives: {go_noisy}"
    );
    println!(
        "{} programs scanned in {:.0} s",
        verdicts.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(errors, 0, "every scan ran");
    assert!(
        recall >= MIN_RECALL,
        "recall {recall:.3} is under {MIN_RECALL}"
    );
    assert!(
        our_go_found >= go_found,
        "Go's own detector found more of the Go programs: {go_found} against {our_go_found}"
    );
    assert_eq!(false_positives, 0, "no fixed twin or control is reported");
}

fn print_verdict(verdict: &Verdict) {
    let case = &verdict.case;
    let variant = match case.variant {
        Variant::Leaky => "leaky",
        Variant::Fixed => "fixed",
        Variant::Control => "control",
    };
    let time = verdict
        .detected_after
        .map_or("-".to_owned(), |seconds| format!("{seconds:.1} s"));
    if let Some(error) = &verdict.error {
        println!("{:<18} {variant:<8} ERROR: {error}", case.name);
        return;
    }
    let go = match (&verdict.go_leaked, verdict.go_found()) {
        (None, _) => String::new(),
        (Some(_), Some(found)) if case.variant == Variant::Leaky => {
            let missed = found.iter().filter(|&&found| !found).count();
            if missed == 0 {
                "; Go: found".into()
            } else {
                "; Go: missed".into()
            }
        }
        (Some(leaked), _) if leaked.is_empty() => "; Go: quiet".into(),
        (Some(_), _) => "; Go: false positive".into(),
    };
    if case.variant == Variant::Leaky {
        for ((leak, wanted), found) in case.leaks.iter().zip(&verdict.found) {
            match found {
                Some(function) => println!(
                    "{leak:<18} {variant:<8} found    {function}  (first suspect at {time}; {}{go})",
                    case.class
                ),
                None => println!(
                    "{leak:<18} {variant:<8} MISSED   wanted {}; named [{}]{go}",
                    wanted.join(" or "),
                    verdict.named.join(", ")
                ),
            }
        }
    } else if verdict.named.is_empty() {
        println!("{:<18} {variant:<8} quiet{go}", case.name);
    } else {
        println!(
            "{:<18} {variant:<8} FALSE POSITIVE: [{}]{go}",
            case.name,
            verdict.named.join(", ")
        );
    }
}
