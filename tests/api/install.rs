//! The detector as a user installs it: `cargo install --path crates/detector --locked` into an
//! empty root gives a `leakfinder` binary that answers `--help`, fails clearly on a dead address,
//! finds the slice leak of a live lab service by its function and file, writes a symbol table
//! the lab service uses, and, as `leakfinder fleet`, finds the recorded fleet's leaks in a replay
//! of a real Pyroscope.
//!
//! The install builds into this workspace's target dir, from the workspace root (so
//! `.cargo/config.toml`'s rustflags apply, as to every other build): what the tests' build made
//! with the same features is reused, and the rest (the detector's own feature set, without the
//! lab's) is built once and reused after. It uses the caller's `CARGO_HOME`: cargo fingerprints a
//! registry dependency by the absolute path of its sources, so a fresh `CARGO_HOME` would rebuild
//! every dependency into the same file names the workspace's build uses, and that build would
//! then rebuild them all again. The install root, where a stale `leakfinder` could hide, is new
//! (under the target dir, emptied first); the tests of this module share one install.
//!
//! CI (`.ci/run`) does the install from a clean `CARGO_HOME` into a target dir of its own, before
//! the tests and not beside them, and names its root in `LEAKFINDER_INSTALL_ROOT`: these tests
//! then check that binary.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{BINARY, spawn_app};
use crate::pprof::{Column, HEAP_LEAK, JOB1, go_pprof, hottest_line, leak_alone_in, top_rows};
use crate::replay::{E, Options, Replay, S};

/// Where `.ci/run` installed the detector with `cargo install --root`, if it did: the test then
/// checks that binary instead of installing one itself.
const INSTALLED_ROOT: &str = "LEAKFINDER_INSTALL_ROOT";
/// The longest the install may take: a build of the detector's dependencies from scratch takes
/// a few minutes on two cores.
const INSTALL_WITHIN: Duration = Duration::from_secs(15 * 60);
/// The longest a scan may take beyond its `--duration`.
const SCAN_GRACE: Duration = Duration::from_secs(60);
/// The slice leak's function and file, as the lab's profiles name them.
const SLICE_FUNCTION: &str = "leakfinder::leaks::slice::run_leaker_job1_simple_slice";
const SLICE_FILE: &str = "src/leaks/slice.rs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_detector_finds_the_slice_leak_of_a_live_service() {
    let scratch = tempfile::Builder::new()
        .prefix("leakfinder-install-")
        .tempdir()
        .unwrap();
    let leakfinder = tokio::task::spawn_blocking(installed_detector)
        .await
        .unwrap();

    let help = run(&leakfinder, &["--help"], Duration::from_secs(10));
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    for command in ["scan ", "fleet "] {
        assert!(
            help.stdout
                .lines()
                .any(|line| line.trim_start().starts_with(command)),
            "`leakfinder --help` lists {command}:\n{}",
            help.stdout
        );
    }
    let fleet_help = run(&leakfinder, &["fleet", "--help"], Duration::from_secs(10));
    assert_eq!(fleet_help.code, Some(0), "{}", fleet_help.stderr);
    for option in ["--pyroscope", "--every", "--ca-cert", "--otlp-endpoint"] {
        assert!(fleet_help.stdout.contains(option), "{}", fleet_help.stdout);
    }
    let scan_help = run(&leakfinder, &["scan", "--help"], Duration::from_secs(10));
    assert_eq!(scan_help.code, Some(0), "{}", scan_help.stderr);
    assert!(
        scan_help.stdout.contains("--duration"),
        "{}",
        scan_help.stdout
    );

    // Nothing listens on port 1: an error that says so, exit 2.
    let refused = run(
        &leakfinder,
        &["scan", "http://127.0.0.1:1", "--duration", "1s"],
        Duration::from_secs(30),
    );
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("connection refused")
            && refused.stderr.contains("is the service running?"),
        "{}",
        refused.stderr
    );

    // The real check: the lab service at its default leak rates, leaking through the slice.
    let app = spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "100")]);
    app.get_json("/start-leak/slice", 200).await;
    let out = scratch.path().join("profiles");
    let args = [
        "scan".to_owned(),
        app.base.clone(),
        "--duration".into(),
        "10s".into(),
        "--interval".into(),
        "1s".into(),
        "--json".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    let installed = leakfinder.clone();
    let scan = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&installed, &args, Duration::from_secs(10) + SCAN_GRACE)
    })
    .await
    .unwrap();
    assert_eq!(
        scan.code,
        Some(1),
        "leaks found means exit 1\n{}",
        scan.stderr
    );
    let json: Value = crate::helpers::scan_summary(&scan.stdout)
        .unwrap_or_else(|| panic!("the scan printed a JSON summary: {}", scan.stdout));
    let findings = json["findings"].as_array().expect("findings is a list");
    let slice = findings
        .iter()
        .find(|finding| {
            finding["kind"] == "heap"
                && finding["function"]
                    .as_str()
                    .is_some_and(|function| function.starts_with(SLICE_FUNCTION))
        })
        .unwrap_or_else(|| panic!("no heap finding in {SLICE_FUNCTION}: {json:#}"));
    assert_eq!(slice["file"], SLICE_FILE, "{slice:#}");
    assert!(
        slice["line"].as_i64().is_some_and(|line| line > 0),
        "{slice:#}"
    );
    assert!(out.join("heap-first.pb.gz").exists() && out.join("heap-last.pb.gz").exists());

    // `leakfinder fleet`, installed, over the replayed recording: the same verdicts as the lab's.
    let replay = Replay::start(Options::default());
    let (from, to) = (S.to_string(), E.to_string());
    let args = [
        "fleet".to_owned(),
        "--pyroscope".into(),
        replay.url.clone(),
        "--from".into(),
        from,
        "--to".into(),
        to,
        "--json".into(),
    ];
    let fleet = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&leakfinder, &args, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(fleet.code, Some(1), "leaks found: {}", fleet.stderr);
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
    let report: Value = serde_json::from_str(&fleet.stdout)
        .unwrap_or_else(|error| panic!("fleet printed JSON ({error}): {}", fleet.stdout));
    let mut found: Vec<(String, String)> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|service| {
            service["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|finding| {
                    (
                        service["service"].as_str().unwrap().to_owned(),
                        finding["function"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "checkout",
                format!("{SLICE_FUNCTION}::{{{{closure}}}}").as_str()
            ),
            ("orders-go", "main.cacheWithoutEviction"),
            ("orders-go", "main.leakyFanout"),
        ]
        .map(|(service, function)| (service.to_owned(), function.to_owned()))
        .to_vec(),
        "{report:#}"
    );
}

/// `leakfinder symbols EXE`, installed, writes the table of a copy of the lab's binary beside it;
/// the copy symbolises through that table (it says so), and its heap profile names the slice
/// leak and its line as with the debug info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_detector_writes_a_symbol_table_the_lab_service_uses() {
    let leakfinder = tokio::task::spawn_blocking(installed_detector)
        .await
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let binary = directory.path().join("leakfinder-lab");
    std::fs::copy(BINARY, &binary).unwrap();
    let args = ["symbols".to_owned(), binary.display().to_string()];
    let written = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&leakfinder, &args, Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(written.code, Some(0), "{}", written.stderr);
    let table = directory.path().join("leakfinder-lab.symbols");
    assert!(
        written
            .stdout
            .starts_with(&format!("wrote {} (", table.display())),
        "{}",
        written.stdout
    );
    assert!(table.is_file());

    let app = leak_alone_in(&binary, "slice", HEAP_LEAK).await;
    assert!(
        app.logs()
            .iter()
            .any(|line| line.contains("symbolising through the prebuilt symbol table")),
        "{:#?}",
        app.logs()
    );
    let heap = app.url("/debug/pprof/heap");
    let rows = top_rows(&go_pprof(&["-top"], &heap));
    assert_eq!(rows[0].name, JOB1, "{rows:#?}");
    let list = go_pprof(&["-list", "run_leaker_job1_simple_slice"], &heap);
    let (line, _) = hottest_line(&list, Column::Flat);
    assert!(
        line.contains("lock(&LEAKY_STORE_1).push(vec![FILL_BYTE; len]);"),
        "{list}"
    );
}

/// The `leakfinder` binary the tests check: the one `.ci/run` installed, alone, in a clean
/// `CARGO_HOME` and its own target dir; else one installed here, once for every test of this
/// module, into a new root under the target dir.
fn installed_detector() -> PathBuf {
    /// One install for every test of this module: it takes minutes.
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    let leakfinder = INSTALLED.get_or_init(|| match std::env::var_os(INSTALLED_ROOT) {
        Some(installed) => PathBuf::from(installed).join("bin/leakfinder"),
        None => {
            let root = target_dir().join("install-test-root");
            // A new root: a stale `leakfinder` from an earlier run must not pass for this one.
            let _ = std::fs::remove_dir_all(&root);
            let leakfinder = install(&root);
            assert_eq!(leakfinder, root.join("bin/leakfinder"));
            leakfinder
        }
    });
    assert!(
        leakfinder.is_file(),
        "{} is installed",
        leakfinder.display()
    );
    leakfinder.clone()
}

/// `cargo install --path crates/detector --locked --root ROOT`, from the workspace root into its
/// target dir; returns the installed binary. Prints how long it took and the crates it compiled:
/// what it costs CI.
fn install(root: &Path) -> PathBuf {
    let log = root.with_file_name("cargo-install.log");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["install", "--path", "crates/detector", "--locked", "--root"])
        .arg(root)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir())
        // As CI runs cargo: RUSTFLAGS would replace .cargo/config.toml's and rebuild everything.
        .env_remove("RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let started = Instant::now();
    let status = ProcessGroup::spawn(&mut command).wait(INSTALL_WITHIN);
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("cargo install took more than {INSTALL_WITHIN:?} and was killed:\n{output}")
    });
    assert!(
        status.success(),
        "cargo install failed ({status}):\n{output}"
    );
    let compiled: Vec<&str> = output
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("Compiling "))
        .filter_map(|crate_| crate_.split_whitespace().next())
        .collect();
    let blocked = output.contains("Blocking waiting for file lock");
    eprintln!(
        "cargo install --path crates/detector took {:.1} s{}, compiling {} crates: {}",
        elapsed.as_secs_f64(),
        if blocked {
            " (part of it waiting for another build's lock)"
        } else {
            ""
        },
        compiled.len(),
        compiled.join(" ")
    );
    root.join("bin/leakfinder")
}

/// The target dir this test binary was built in: it is `TARGET/PROFILE/deps/api-HASH`.
fn target_dir() -> PathBuf {
    let executable = std::env::current_exe().unwrap();
    let target = executable
        .ancestors()
        .nth(3)
        .expect("the test binary is in TARGET/PROFILE/deps");
    assert!(
        target.join("CACHEDIR.TAG").exists(),
        "{} is cargo's target dir",
        target.display()
    );
    target.to_owned()
}

/// What a command printed and how it exited (`None`: killed by a signal).
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `program` with `args` and an empty environment, killed if it outlives `within`.
fn run(program: &Path, args: &[&str], within: Duration) -> Run {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = ProcessGroup::spawn(&mut command);
    let child = group.child.as_mut().expect("just spawned");
    let stdout = read_to_end(child.stdout.take());
    let stderr = read_to_end(child.stderr.take());
    let status = group
        .wait(within)
        .unwrap_or_else(|| panic!("{program:?} {args:?} ran longer than {within:?}"));
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Reads a pipe to its end on a thread of its own, so the child never blocks on a full pipe.
fn read_to_end(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// A child in a process group of its own, so that the whole group (cargo and its rustc
/// processes) is killed if it outlives its time or the test panics first.
struct ProcessGroup {
    /// `None` once reaped.
    child: Option<Child>,
}

impl ProcessGroup {
    fn spawn(command: &mut Command) -> Self {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("{command:?} starts: {error}"));
        Self { child: Some(child) }
    }

    /// Waits at most `within` for the exit; `None` if the group had to be killed.
    fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            let child = self.child.as_mut().expect("waited for once");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// SIGKILL to the whole group, then reaps the child.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}
