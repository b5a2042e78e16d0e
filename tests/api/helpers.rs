//! `spawn_app`: starts the real binary on port 0 and talks to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test, built by cargo in the same profile as this test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_leakfinder-lab");

/// Longer than `/leak-test` caches its memory figures (100 ms): an answer fetched after this
/// wait has memory figures read after anything that happened before it.
pub const MEMORY_FRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// A running service.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Starts the service with small, fast leaks unless `env` says otherwise.
pub fn spawn_app(env: &[(&str, &str)]) -> TestApp {
    spawn_binary(std::path::Path::new(BINARY), env)
}

/// [`spawn_app`] with another copy of the binary.
pub fn spawn_binary(binary: &std::path::Path, env: &[(&str, &str)]) -> TestApp {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("LEAKFINDER_ADDR", "127.0.0.1:0")
        .env("LEAK_INTERVAL_MS", "5")
        .env("LEAK_CHUNK_BYTES", "262144")
        .env("LEAK_MAX_BYTES", "268435456");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the leakfinder binary was built by cargo for this test");
    let stdout = child.stdout.take().expect("stdout is piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    let sink = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = addr_tx.send(addr);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let Ok(addr) = addr_rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the service did not log its address within 20 s");
    };
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        child,
        logs,
    }
}

/// The `addr=` field of the start-up line.
pub fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("leakfinder listening") {
        return None;
    }
    let rest = &line[line.find(" addr=")? + 6..];
    Some(rest.split_whitespace().next()?.to_owned())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// GET, asserting the status, returning the JSON body.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status().as_u16(), status, "GET {path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "GET {path}: {content_type}"
        );
        response.json().await.unwrap()
    }

    pub async fn report(&self) -> Value {
        self.get_json("/leak-test", 200).await
    }

    /// Polls `/leak-test` until `done` holds for it, for at most `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let report = self.report().await;
            if done(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {report}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit, for at most `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number in a JSON report, by a `/`-separated path.
pub fn num(report: &Value, path: &str) -> u64 {
    let pointer = format!("/{path}");
    report
        .pointer(&pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is a number in {report}"))
}

/// A boolean in a JSON report, by a `/`-separated path.
pub fn flag(report: &Value, path: &str) -> bool {
    let pointer = format!("/{path}");
    report
        .pointer(&pointer)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{path} is a boolean in {report}"))
}

/// A fixture process that printed `listening on ADDR`, serving at `url`; killed on drop.
pub struct Listening {
    child: Child,
    pub url: String,
    /// A directory that goes with the process (its binary), removed after it.
    scratch: Option<tempfile::TempDir>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the Go fixture `tests/fixtures/NAME` with the local toolchain and starts it with `args`.
pub fn start_go(name: &str, args: &[&str]) -> Listening {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("leakfinder-{name}-"))
        .tempdir()
        .unwrap();
    let binary = scratch.path().join(name);
    build_go(name, &binary);
    let mut listening = start_listening(Command::new(&binary).args(args));
    listening.scratch = Some(scratch);
    listening
}

/// Builds the Go fixture `tests/fixtures/NAME` into `binary` with the local toolchain.
pub fn build_go(name: &str, binary: &std::path::Path) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(binary)
        .arg(".")
        .current_dir(&source)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("go is installed");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// Starts a fixture that prints `listening on ADDR` first.
pub fn start_listening(command: &mut Command) -> Listening {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?} starts: {error}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{command:?} prints its address first: {line:?}"))
        .to_owned();
    Listening {
        child,
        url: format!("http://{addr}"),
        scratch: None,
    }
}

/// Each `// twin-leak: NAME` marker in `examples/tokio_twins.rs`: its name, the async function it
/// is in, and its line.
pub fn twin_leaks() -> Vec<(String, String, i64)> {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tokio_twins.rs"),
    )
    .unwrap();
    let mut function = String::new();
    let mut leaks = Vec::new();
    for (index, line) in source.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("async fn ") {
            function = rest.split('(').next().unwrap().to_owned();
        }
        if let Some((code, name)) = line.split_once("// twin-leak: ")
            && !code.trim_start().starts_with("//")
        {
            leaks.push((name.trim().to_owned(), function.clone(), index as i64 + 1));
        }
    }
    leaks
}

/// The summary line of `leakfinder scan --json` output (JSON Lines: a `"finding"` object per
/// finding as it is confirmed, then one `"summary"`); an older build's single
/// `{"findings": [...]}` object is read as its summary.
pub fn scan_summary(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["type"] == "summary" || value["type"].is_null())
        .find(|value| value["findings"].is_array())
}

/// The scan-relative time of the first finding line of `leakfinder scan --json` output.
pub fn first_finding_at(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|value| value["type"] == "finding")
        .and_then(|value| value["at_seconds"].as_f64())
}
