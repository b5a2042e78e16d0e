//! The setups a user copies (`examples/axum_service.rs`, `examples/poem_service.rs`), run as
//! built on port 0: each serves heap, CPU and task profiles that the real `go tool pprof` reads
//! without the binary (`top` names the example's own leaking functions, under the example's own
//! name rather than its framework's, `list` the line of the allocation and of the await), pushes
//! its last profiles to a stand-in Pyroscope, and stops on SIGTERM.
//!
//! The example binaries are the ones `cargo test` builds into `target/<profile>/examples/`; with
//! a target selection (`--test api`) cargo does not build them, so each test builds its example
//! first (`cargo build --example NAME`, a no-op when it is fresh).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pprof::{Column, TopRow, go_pprof, hottest_line, top_rows};

/// How many times the tests call `/leak`: 4 x 8 MiB and 4 x 100 parked tasks.
const LEAKS: usize = 4;
/// Tasks the leaks park, as the examples define them (`LEAK_TASKS`).
const LEAKED_TASKS: u64 = 100 * LEAKS as u64;
/// The longest an example may take to print its address, or to stop after SIGTERM.
const START_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// The longest building an example may take, when the test has to.
const BUILD_WITHIN: Duration = Duration::from_secs(600);

#[test]
fn the_axum_example_serves_profiles_that_name_its_leaks_and_stops_on_sigterm() {
    check_example("axum_service", "axum-example");
}

#[test]
fn the_poem_example_serves_profiles_that_name_its_leaks_and_stops_on_sigterm() {
    check_example("poem_service", "poem-example");
}

/// The crate READMEs that open with a program a user pastes as `src/main.rs`, and the example that
/// holds it.
const PROFILING_README: (&str, &str) = ("crates/profiling/README.md", "profiling_readme");
const HTTP_README: (&str, &str) = ("crates/http/README.md", "http_readme");
/// The service name the READMEs' programs push as.
const README_SERVICE: &str = "my-service";

/// Both READMEs give the same dependency lines, and each names a crate of this checkout by path
/// (the crates are not published) with features it has.
#[test]
fn the_crate_readmes_give_one_dependency_block_of_path_dependencies_on_this_checkout() {
    let [profiling, http] = [PROFILING_README, HTTP_README].map(|(readme, _)| {
        fenced_block(&repository_file(readme), "toml")
            .unwrap_or_else(|| panic!("{readme} has a ```toml block"))
    });
    assert_eq!(profiling, http, "the same dependency block in both READMEs");
    let mut crates = 0;
    for line in profiling.lines() {
        assert!(!line.contains("git ="), "no git dependency: {line}");
        let Some((name, rest)) = line.split_once(" = { path = \"../leakfinder/") else {
            continue;
        };
        let directory = rest.split('"').next().unwrap();
        let manifest = repository_file(&format!("{directory}/Cargo.toml"));
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{directory} is {name}"
        );
        let features = rest
            .split_once("features = [")
            .map(|(_, list)| list.split(']').next().unwrap())
            .unwrap_or_default();
        for feature in features.split(',').map(|f| f.trim().trim_matches('"')) {
            assert!(
                feature.is_empty() || manifest.contains(&format!("\n{feature} = [")),
                "{name} has a feature {feature}"
            );
        }
        crates += 1;
    }
    assert_eq!(
        crates, 2,
        "leakfinder-profiling and leakfinder-http:\n{profiling}"
    );
}

#[test]
fn the_profiling_readme_s_program_pushes_its_last_profiles_on_sigterm_and_exits_0() {
    let mut program = start_readme_program(PROFILING_README);
    program.first_line(PROFILING_README.1, |line| line.starts_with("running"));
    stop_readme_program(program);
}

#[test]
fn the_http_readme_s_program_serves_pprof_and_pushes_its_last_profiles_on_sigterm() {
    let mut program = start_readme_program(HTTP_README);
    let line = program.first_line(HTTP_README.1, |line| line.starts_with("listening on "));
    program.example.base = line["listening on ".len()..].trim().to_owned();
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let heap = reqwest::blocking::get(program.example.url("/debug/pprof/heap")).unwrap();
    assert_eq!(heap.status(), 200);
    assert!(
        heap.bytes().unwrap().starts_with(&[0x1f, 0x8b]),
        "a gzipped profile"
    );
    stop_readme_program(program);
}

/// A README's program, running, and the stand-in Pyroscope it pushes to.
struct ReadmeProgram {
    example: Example,
    pyroscope: FakePyroscope,
}

impl ReadmeProgram {
    fn first_line(&mut self, name: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.example.first_line(name, wanted)
    }
}

/// Checks that the README's first ```rust block is the example's program, word for word, then
/// starts the example, pushing to a stand-in Pyroscope.
fn start_readme_program((readme, name): (&str, &str)) -> ReadmeProgram {
    let snippet = fenced_block(&repository_file(readme), "rust")
        .unwrap_or_else(|| panic!("{readme} has a ```rust block"));
    let source = example_source(name);
    // The example is the README's program below a `//!` header that says where it comes from.
    let program = source
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .skip_while(|line| line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        snippet.trim_end(),
        program.trim_end(),
        "{readme}'s program is examples/{name}.rs"
    );
    let pyroscope = FakePyroscope::start();
    let example = Example::spawn(name, &pyroscope.url);
    ReadmeProgram { example, pyroscope }
}

/// SIGTERM, as `docker stop` and Kubernetes send: the program exits 0, and its last profiles
/// (none went out before: the first push is due 10 s after the start) reach Pyroscope.
fn stop_readme_program(mut program: ReadmeProgram) {
    let before = program.pyroscope.received();
    assert!(before.is_empty(), "no push before the stop: {before:?}");
    let (status, took) = program.example.terminate(STOP_WITHIN);
    assert_eq!(status.code(), Some(0), "exit 0 on SIGTERM, not {status}");
    assert!(took < STOP_WITHIN, "{took:?}");
    let pushes = program.pyroscope.received();
    assert!(
        pushes
            .iter()
            .any(|push| push.path == "/push.v1.PusherService/Push"
                && contains(&push.body, README_SERVICE.as_bytes())
                && contains(&push.body, b"memory")),
        "the last heap profile pushed for {README_SERVICE}: {pushes:?}"
    );
}

/// The text of the first fenced block of `language` in `markdown`, without its fences.
pub fn fenced_block(markdown: &str, language: &str) -> Option<String> {
    let opening = format!("```{language}");
    let mut lines = markdown.lines().skip_while(|line| line.trim() != opening);
    lines.next()?;
    let block: Vec<&str> = lines.take_while(|line| line.trim() != "```").collect();
    Some(block.join("\n") + "\n")
}

fn repository_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The example `name` (its frames are named `name::...`, not as the framework it uses), pushing
/// as `service`.
fn check_example(name: &'static str, service: &str) {
    let source = example_source(name);
    let allocation = marked_line(&source, "// leak: memory");
    let await_line = marked_line(&source, "// leak: tasks");
    let pyroscope = FakePyroscope::start();
    let mut example = Example::start(name, &pyroscope.url);
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..LEAKS {
        let response = client.get(example.url("/leak")).send().unwrap();
        assert_eq!(response.status(), 200);
    }

    // Heap: the chunks leak_memory keeps, at the line that allocates them.
    let heap = example.url("/debug/pprof/heap");
    let rows = top_rows(&go_pprof(&["-top"], &heap));
    assert_eq!(rows[0].name, format!("{name}::leak_memory"), "{rows:#?}");
    assert!(rows[0].flat_percent >= 80.0, "{rows:#?}");
    let list = go_pprof(&["-list", "leak_memory"], &heap);
    let (line, share) = hottest_line(&list, Column::Flat);
    assert_eq!(line_number(&line), Some(allocation.0), "{list}");
    assert!(line.contains(&allocation.1), "{line}\n{list}");
    assert!(share >= 0.8, "{share} of the bytes on {line}\n{list}");

    // Tasks: the tasks leak_tasks parked, at their await, created by leak_tasks.
    let tasks = example.url("/debug/pprof/goroutine");
    let rows = top_rows(&go_pprof(&["-top", "-cum"], &tasks));
    let parked = row(&rows, &format!("{name}::leak_tasks::{{{{closure}}}}"));
    assert!(parked.cum_percent >= 80.0, "{rows:#?}");
    let created = row(&rows, &format!("created by {name}::leak_tasks"));
    assert!(created.cum_percent >= 80.0, "{rows:#?}");
    let list = go_pprof(&["-list", "leak_tasks"], &tasks);
    let at_await = tasks_at_line(&list, await_line.0);
    assert!(
        at_await >= LEAKED_TASKS,
        "{at_await} tasks at the await\n{list}"
    );
    assert!(
        list.lines()
            .any(|row| line_number(row) == Some(await_line.0) && row.contains(&await_line.1)),
        "{list}"
    );

    // CPU: a profile taken while /spin burns CPU in burn_cpu.
    let spin = {
        let (client, url) = (client.clone(), example.url("/spin"));
        std::thread::spawn(move || client.get(url).send().map(|response| response.status()))
    };
    std::thread::sleep(Duration::from_millis(200));
    let cpu = go_pprof(
        &["-top", "-cum", "-seconds", "2"],
        &example.url("/debug/pprof/profile"),
    );
    assert!(cpu.contains("Type: cpu"), "{cpu}");
    let total = cpu
        .lines()
        .find_map(|line| line.split("Total samples = ").nth(1))
        .unwrap_or_else(|| panic!("a sample total\n{cpu}"));
    assert!(!total.starts_with('0'), "{cpu}");
    let rows = top_rows(&cpu);
    let burning = row(&rows, &format!("{name}::burn_cpu"));
    assert!(burning.cum_percent >= 50.0, "{rows:#?}");
    assert_eq!(spin.join().unwrap().unwrap(), 200);

    // SIGTERM: a graceful stop, with a last push of the heap profile on the way out.
    drop(client);
    let (status, took) = example.terminate(STOP_WITHIN);
    assert!(
        status.success(),
        "{name} exits cleanly on SIGTERM: {status}"
    );
    assert!(took < STOP_WITHIN, "{took:?}");
    let pushes = pyroscope.received();
    assert!(
        pushes
            .iter()
            .any(|push| push.path == "/push.v1.PusherService/Push"
                && contains(&push.body, b"service_name")
                && contains(&push.body, service.as_bytes())
                && contains(&push.body, b"memory")),
        "a heap profile pushed for {service}: {pushes:?}"
    );
}

/// The row of `top` named `name`.
fn row<'a>(rows: &'a [TopRow], name: &str) -> &'a TopRow {
    rows.iter()
        .find(|row| row.name == name)
        .unwrap_or_else(|| panic!("{name} in {rows:#?}"))
}

/// The line number of a row of `-list` (`flat cum NUMBER: source`).
fn line_number(row: &str) -> Option<usize> {
    row.split_whitespace()
        .nth(2)?
        .strip_suffix(':')?
        .parse()
        .ok()
}

/// The most tasks any function of `-list` shows at `line` (its cum column).
fn tasks_at_line(list: &str, line: usize) -> u64 {
    list.lines()
        .filter(|row| line_number(row) == Some(line))
        .filter_map(|row| row.split_whitespace().nth(1)?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn example_source(name: &str) -> String {
    repository_file(&format!("examples/{name}.rs"))
}

/// The number and code of the one line marked with `marker`.
fn marked_line(source: &str, marker: &str) -> (usize, String) {
    let marked: Vec<(usize, String)> = source
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let (code, _) = line.split_once(marker)?;
            Some((index + 1, code.trim().to_owned()))
        })
        .collect();
    assert_eq!(marked.len(), 1, "one line marked {marker}: {marked:?}");
    marked.into_iter().next().unwrap()
}

/// The example binary, built by cargo in the profile of this test, beside `deps/`.
fn example_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = profile_dir.join("examples").join(name);
    build_example(name, profile_dir);
    binary
}

/// Brings the example up to date with `cargo build --example NAME`, in this test's profile.
fn build_example(name: &str, profile_dir: &Path) {
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--locked", "--example", name])
        .args(if profile == "debug" {
            vec![]
        } else {
            vec!["--profile", profile]
        })
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .expect("cargo runs the tests, so it is there");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_for_exit(&mut child, BUILD_WITHIN);
    let stderr = reader.join().unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("building the {name} example took more than {BUILD_WITHIN:?}: {stderr}");
    };
    assert!(status.success(), "cargo build --example {name}: {stderr}");
}

fn wait_for_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A running example; killed on drop.
struct Example {
    child: Child,
    base: String,
    /// What it prints, line by line.
    stdout: mpsc::Receiver<String>,
}

impl Example {
    /// Starts the example on port 0, pushing to `pyroscope`, and waits for its address.
    fn start(name: &str, pyroscope: &str) -> Self {
        let mut example = Self::spawn(name, pyroscope);
        let line = example.first_line(name, |line| line.starts_with("listening on "));
        example.base = line["listening on ".len()..].trim().to_owned();
        assert!(
            example.base.starts_with("http://127.0.0.1:"),
            "{}",
            example.base
        );
        example
    }

    /// Starts the example with the argument `127.0.0.1:0`, pushing to `pyroscope`; what it prints
    /// arrives in `stdout`, line by line.
    fn spawn(name: &str, pyroscope: &str) -> Self {
        let mut child = Command::new(example_binary(name))
            .arg("127.0.0.1:0")
            .env("PYROSCOPE_SERVER_ADDRESS", pyroscope)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("the {name} example starts: {error}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines, printed) = mpsc::channel();
        // Reads stdout to its end, so that the example never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Self {
            child,
            base: String::new(),
            stdout: printed,
        }
    }

    /// The first line the example prints that `wanted` accepts, within [`START_WITHIN`]; fails
    /// if the example exits first.
    fn first_line(&mut self, name: &str, wanted: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        while started.elapsed() < START_WITHIN {
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_for_exit(&mut self.child, Duration::from_secs(5));
                    panic!("the {name} example exited ({status:?}) before it was stopped");
                }
            }
        }
        panic!("the {name} example printed no such line within {START_WITHIN:?}")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits at most `within` for the exit.
    fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = wait_for_exit(&mut self.child, within)
            .unwrap_or_else(|| panic!("no exit within {within:?} of SIGTERM"));
        (status, started.elapsed())
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the stand-in Pyroscope received: its path and its body, gunzipped.
struct Push {
    path: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.path, self.body.len())
    }
}

/// A stand-in Pyroscope: answers every request 200 and keeps it.
struct FakePyroscope {
    url: String,
    pushes: mpsc::Receiver<Push>,
}

impl FakePyroscope {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, pushes) = mpsc::channel();
        // Ends with the test binary; blocked in accept until then.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                if let Some(push) = receive(stream)
                    && sender.send(push).is_err()
                {
                    break;
                }
            }
        });
        Self { url, pushes }
    }

    /// What arrived so far.
    fn received(&self) -> Vec<Push> {
        self.pushes.try_iter().collect()
    }
}

/// Reads one HTTP/1.1 request, answers 200 and closes.
fn receive(mut stream: std::net::TcpStream) -> Option<Push> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_owned();
    let (mut length, mut gzipped) = (0, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-encoding" => gzipped = value.trim() == "gzip",
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .ok()?;
    if gzipped {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .ok()?;
        body = plain;
    }
    Some(Push { path, body })
}
