//! `leakfinder fleet`, end to end: the real binary against a replay of a real Pyroscope that
//! answers only what was recorded (`tests/fixtures/pyroscope` and `tests/fixtures/pyroscope-held`,
//! ground truth in their `ground_truth.json`).

use std::process::Command;

use serde_json::Value;

use crate::helpers::BINARY;
use crate::replay::{E, Options, Recording, Replay, S};

/// What a fleet run printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("fleet printed JSON ({error}): {}", self.stderr))
    }
}

/// Runs `leakfinder fleet --pyroscope URL ARGS...` over the recorded span.
pub fn fleet(url: &str, args: &[&str]) -> Run {
    fleet_over(Recording::Growing, url, args)
}

/// Runs `leakfinder fleet --pyroscope URL ARGS...` over `recording`'s span.
pub fn fleet_over(recording: Recording, url: &str, args: &[&str]) -> Run {
    let (from, to) = recording.span();
    let output = Command::new(BINARY)
        .env_clear()
        .args(["fleet", "--pyroscope", url])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(args)
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

/// (kind, function, file, line) of a service's findings.
fn findings(report: &Value, name: &str) -> Vec<(String, String, String, i64)> {
    service(report, name)["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["function"].as_str().unwrap().to_owned(),
                f["file"].as_str().unwrap().to_owned(),
                f["line"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn fleet_finds_the_recorded_leaks_with_their_functions_and_nothing_else() {
    let replay = Replay::start(Options::default());
    let run = fleet(&replay.url, &["--json"]);
    assert_eq!(replay.unrecorded(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.code, 1, "leaks found: {}", run.stderr);
    let report = run.json();

    let checkout = findings(&report, "checkout");
    assert_eq!(
        checkout,
        vec![(
            "heap".into(),
            "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}".into(),
            "src/leaks/slice.rs".into(),
            21
        )],
        "{report:#}"
    );
    let slice = &service(&report, "checkout")["findings"][0];
    let rate = slice["rate_per_second"].as_f64().unwrap();
    assert!(
        (0.8 * 1048576.0..1.2 * 1048576.0).contains(&rate),
        "about 1 MiB/s: {rate}"
    );
    // The leak started at 14:42:46.261, inside window 3 (14:42:38): seen there or in the next.
    let since = slice["since"].as_str().unwrap();
    assert!(
        ["2026-12-01T14:42:38Z", "2026-12-01T14:42:53Z"].contains(&since),
        "{since}"
    );
    // The query covers one window, the last (issue 21, item 4): a longer range sums snapshots.
    assert_eq!(
        slice["query"].as_str().unwrap(),
        format!(
            "profilecli query profile --url {} --profile-type memory:inuse_space:bytes:space:bytes --query '{{service_name=\"checkout\"}}' --from 2026-12-01T14:47:38Z --to 2026-12-01T14:47:53Z",
            replay.url
        ),
        "{slice}"
    );

    let orders = findings(&report, "orders-go");
    let functions: Vec<(&str, &str)> = orders
        .iter()
        .map(|(kind, function, _, _)| (kind.as_str(), function.as_str()))
        .collect();
    assert!(
        functions.contains(&("goroutines", "main.leakyFanout")),
        "{orders:?}"
    );
    assert!(
        functions.contains(&("heap", "main.cacheWithoutEviction")),
        "{orders:?}"
    );
    assert!(
        orders
            .iter()
            .all(|(_, function, _, _)| function != "main.poolChurn"
                && function != "main.priceOrders"),
        "churn is not a leak: {orders:?}"
    );
    let fanout = service(&report, "orders-go")["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "main.leakyFanout")
        .unwrap();
    let rate = fanout["rate_per_second"].as_f64().unwrap();
    assert!((1.8..2.2).contains(&rate), "+2 goroutines/s: {rate}");
    assert!(fanout["file"].as_str().unwrap().ends_with("main.go"));
    assert_eq!(fanout["line"], 37);

    assert_eq!(findings(&report, "catalog"), vec![], "{report:#}");
    assert_eq!(service(&report, "catalog")["error"], Value::Null);
    assert_eq!(service(&report, "catalog")["heap_windows"], 24);
    assert_eq!(service(&report, "orders-go")["goroutine_windows"], 24);
    // Service list, three type lists, 24 heap windows each, 24 goroutine windows of orders-go.
    assert_eq!(report["queries"], 1 + 3 + 3 * 24 + 24);
    assert_eq!(replay.served(), 100);
    assert!(replay.bytes() > 100_000, "{} bytes", replay.bytes());
}

#[test]
fn fleet_text_report_groups_by_service_fastest_first_with_a_query_to_paste() {
    let replay = Replay::start(Options::default());
    let run = fleet(&replay.url, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
    let text = &run.stdout;
    let checkout = text.find("checkout: 1 leak(s)").expect(text);
    let orders = text.find("orders-go: 2 leak(s)").expect(text);
    let catalog = text
        .find("catalog: no leak (24 heap, 0 goroutine windows)")
        .expect(text);
    assert!(checkout < orders && orders < catalog, "{text}");
    assert!(
        text.contains("in leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}\n     at src/leaks/slice.rs:21, since 2026-12-01T14:4"),
        "{text}"
    );
    assert!(
        text.contains("query: profilecli query profile --url http://127.0.0.1:"),
        "{text}"
    );
}

#[test]
fn fleet_sends_the_token_and_tenant_and_is_refused_clearly_without_them() {
    let options = Options {
        require: vec![
            ("authorization".into(), "Bearer s3cret".into()),
            ("x-scope-orgid".into(), "team-a".into()),
        ],
        ..Options::default()
    };
    let replay = Replay::start(options);
    let run = fleet(
        &replay.url,
        &[
            "--json",
            "--token",
            "s3cret",
            "--tenant",
            "team-a",
            "--services",
            "^checkout$",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
    let report = run.json();
    assert_eq!(report["services"].as_array().unwrap().len(), 1);
    let query = report["services"][0]["findings"][0]["query"]
        .as_str()
        .unwrap();
    assert!(query.ends_with(" --tenant-id team-a"), "{query}");

    let refused = fleet(&replay.url, &["--tenant", "team-a"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("cannot list the services: Pyroscope refused LabelValues with 401 (unauthenticated: authorization missing or wrong): check --token/--basic-auth and --tenant"),
        "{}",
        refused.stderr
    );
    let basic = fleet(
        &replay.url,
        &["--basic-auth", "me:pw", "--tenant", "team-a"],
    );
    assert_eq!(basic.code, 2, "Basic is not the Bearer required");
}

#[test]
fn fleet_says_pyroscope_is_down_and_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = fleet(&format!("http://127.0.0.1:{port}"), &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with(&format!(
            "leakfinder fleet: cannot list the services: cannot reach Pyroscope at http://127.0.0.1:{port}"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn fleet_a_malformed_answer_fails_its_service_and_the_others_are_still_scanned() {
    let replay = Replay::start(Options {
        truncate_profiles_of: Some("orders-go".into()),
        ..Options::default()
    });
    let run = fleet(&replay.url, &["--json", "--concurrency", "1"]);
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
    assert_eq!(run.code, 1, "checkout still leaks: {}", run.stderr);
    let report = run.json();
    let orders = service(&report, "orders-go");
    let error = orders["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "Pyroscope's answer to SelectMergeProfile is malformed: not a pprof protobuf"
        ),
        "{error}"
    );
    assert_eq!(findings(&report, "checkout").len(), 1);
    assert_eq!(service(&report, "catalog")["error"], Value::Null);
    // Failed services come last.
    assert_eq!(report["services"][2]["service"], "orders-go");
}

#[test]
fn fleet_services_regex_and_shards_split_the_fleet() {
    let replay = Replay::start(Options::default());
    let mut seen = Vec::new();
    for shard in ["1/2", "2/2"] {
        let run = fleet(&replay.url, &["--json", "--shard", shard]);
        assert!([0, 1].contains(&run.code), "{}", run.stderr);
        let report = run.json();
        assert_eq!(report["listed"], 3);
        for s in report["services"].as_array().unwrap() {
            seen.push(s["service"].as_str().unwrap().to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, ["catalog", "checkout", "orders-go"]);
    let none = fleet(&replay.url, &["--services", "^nothing$"]);
    assert_eq!(none.code, 2);
    assert!(
        none.stderr
            .contains("none of the 3 services matches --services and --shard"),
        "{}",
        none.stderr
    );
    let healthy = fleet(&replay.url, &["--services", "^catalog$"]);
    assert_eq!(
        healthy.code, 0,
        "nothing leaks in catalog: {}",
        healthy.stdout
    );
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_watch_exports_its_suspects_and_growth_rates_over_otlp() {
    use crate::telemetry::{OTLP_PATH, Receiver, decode_export};
    let sink = Receiver::start().await;
    let replay = Replay::start(Options::default());
    let mut child = std::process::Command::new(BINARY)
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env("OTEL_SERVICE_NAME", "fleet-test")
        .args([
            "fleet",
            "--pyroscope",
            &replay.url,
            "--every",
            "1h",
            "--json",
        ])
        .args(["--from", &S.to_string(), "--to", &E.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let suspects = |body: &[u8]| {
        let (export, resource) = decode_export(body);
        assert_eq!(resource["service.name"], "fleet-test");
        export
            .get("leakfinder.fleet.suspects")
            .map(|(_, points)| points.clone())
            .unwrap_or_default()
    };
    let taken = sink
        .wait_for(OTLP_PATH, std::time::Duration::from_secs(20), |taken| {
            taken.iter().any(|r| suspects(&r.body).len() == 3)
        })
        .await;
    let last = taken
        .iter()
        .rev()
        .find(|r| suspects(&r.body).len() == 3)
        .unwrap();
    let mut found: Vec<(String, String, f64)> = suspects(&last.body)
        .into_iter()
        .map(|(attributes, value)| {
            (
                attributes["service"].clone(),
                attributes["function"].clone(),
                value,
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(
        found,
        vec![
            (
                "checkout".into(),
                "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}".into(),
                1.0
            ),
            ("orders-go".into(), "main.cacheWithoutEviction".into(), 1.0),
            ("orders-go".into(), "main.leakyFanout".into(), 1.0),
        ]
    );
    let (export, _) = decode_export(&last.body);
    let (unit, growth) = &export["leakfinder.fleet.goroutine_growth"];
    assert_eq!(unit, "{goroutine}/s");
    assert_eq!(growth.len(), 1);
    assert!((1.8..2.2).contains(&growth[0].1), "{growth:?}");
    let (unit, heap) = &export["leakfinder.fleet.heap_growth"];
    assert_eq!(unit, "By/s");
    assert_eq!(heap.len(), 2);
    assert_eq!(export["leakfinder.fleet.failed_services"].1[0].1, 0.0);
    // SIGTERM stops it cleanly.
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
}

/// The README's fixed-range command, as typed (with the built binary for `cargo run --release
/// --`), against the recording served where the README points: Pyroscope's own port.
#[test]
fn the_readmes_fixed_range_command_runs_as_written() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let command = readme
        .replace("\\\n", " ")
        .lines()
        .find(|line| line.starts_with("cargo run --release -- fleet") && line.contains("--from"))
        .expect("the README shows a fixed-range fleet command")
        .to_owned();
    assert!(
        command.contains("--pyroscope http://127.0.0.1:4040"),
        "{command}"
    );
    let replay = Replay::start(Options {
        addr: Some("127.0.0.1:4040".to_owned()),
        ..Options::default()
    });
    let output = Command::new("sh")
        .arg("-c")
        .arg(command.replacen("cargo run --release --", BINARY, 1))
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "{command}: JSON ({error}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(replay.unrecorded(), Vec::<String>::new(), "{command}");
    let scanned: Vec<&str> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|service| service["service"].as_str().unwrap())
        .collect();
    assert!(!scanned.is_empty(), "{report}");
    assert!(
        scanned
            .iter()
            .all(|name| name.starts_with("checkout") || name.starts_with("orders")),
        "{scanned:?}"
    );
    let leaking = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|service| !service["findings"].as_array().unwrap().is_empty());
    assert_eq!(
        output.status.code(),
        Some(if leaking { 1 } else { 0 }),
        "{report}"
    );
}

/// The held recording's goroutine leak, `main.subscribe` (+10 goroutines/s), with nothing
/// reported for the healthy `auth` nor for notify-go's benign `main.renderPage` (churn) and
/// `main.warmIndex` (a table built once), over the span as recorded.
#[test]
fn fleet_finds_the_held_recordings_goroutine_leak_and_no_benign_site() {
    let replay = Replay::start(Options {
        recording: Recording::Held,
        ..Options::default()
    });
    let run = fleet_over(Recording::Held, &replay.url, &["--json"]);
    assert_eq!(replay.unrecorded(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.code, 1, "leaks found: {}", run.stderr);
    let report = run.json();
    assert_eq!(report["listed"], 3);
    let notify = findings(&report, "notify-go");
    assert!(
        notify.contains(&(
            "goroutines".into(),
            "main.subscribe".into(),
            "/src/notify-go/main.go".into(),
            43
        )),
        "{notify:?}"
    );
    let subscribe = service(&report, "notify-go")["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "main.subscribe")
        .unwrap();
    let rate = subscribe["rate_per_second"].as_f64().unwrap();
    assert!((9.0..11.0).contains(&rate), "+10 goroutines/s: {rate}");
    // Leaking from before the span: its start is not an onset.
    assert_eq!(subscribe["since"], "before 2026-12-06T12:11:42Z");
    assert_eq!(subscribe["began_before_range"], true);
    assert_eq!(findings(&report, "auth"), vec![], "{report:#}");
    for benign in ["main.renderPage", "main.warmIndex"] {
        assert!(
            notify.iter().all(|(_, function, _, _)| function != benign),
            "{benign} is not a leak: {notify:?}"
        );
    }
    for name in ["auth", "billing", "notify-go"] {
        assert_eq!(service(&report, name)["error"], Value::Null, "{name}");
        assert_eq!(service(&report, name)["heap_windows"], 24, "{name}");
    }
    assert_eq!(service(&report, "notify-go")["goroutine_windows"], 24);
    // The 100 requests the tool sent before survival evidence (as the recording has them), and
    // notify-go's 24 windows of `memory:alloc_space`, asked for because `main.appendAudit` rose
    // and held by too little to be called a leak without them. billing pushes no allocation
    // counts; its rise is large enough to stand alone.
    assert_eq!(report["queries"], 124);
}

/// The held recording's ground truth in full (`expected_findings`): `main.subscribe`
/// (goroutines), and the two held heap leaks, `main.appendAudit` (grew for 180 s, then flat)
/// and billing's slice leak (rose in windows 1-3, capped, then flat for 21 windows); nothing
/// else. The held leaks are found by the survival test (`held`): billing's by its rise alone,
/// notify-go's with the allocation counts Pyroscope keeps for it.
#[test]
fn fleet_finds_the_held_recordings_three_leaks_and_nothing_else() {
    let replay = Replay::start(Options {
        recording: Recording::Held,
        ..Options::default()
    });
    let run = fleet_over(Recording::Held, &replay.url, &["--json"]);
    assert_eq!(replay.unrecorded(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.code, 1, "leaks found: {}", run.stderr);
    let report = run.json();
    let functions = |name: &str| {
        let mut found: Vec<(String, String)> = findings(&report, name)
            .into_iter()
            .map(|(kind, function, _, _)| (kind, function))
            .collect();
        found.sort();
        found
    };
    assert!(
        functions("notify-go").contains(&("goroutines".into(), "main.subscribe".into())),
        "the goroutine leak: {report:#}"
    );
    assert_eq!(
        functions("notify-go"),
        vec![
            ("goroutines".into(), "main.subscribe".into()),
            ("heap".into(), "main.appendAudit".into()),
        ],
        "notify-go's held heap leak, and no benign site: {report:#}"
    );
    assert_eq!(
        findings(&report, "billing"),
        vec![(
            "heap".into(),
            "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}".into(),
            "src/leaks/slice.rs".into(),
            21
        )],
        "billing's held slice leak: {report:#}"
    );
    assert_eq!(findings(&report, "auth"), vec![], "{report:#}");
    for (name, function, survival) in [
        (
            "billing",
            "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}",
            None,
        ),
        ("notify-go", "main.appendAudit", Some(0.9)),
    ] {
        let finding = service(&report, name)["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["function"] == function)
            .unwrap()
            .clone();
        let evidence = &finding["evidence"];
        assert_eq!(evidence["test"], "held", "{finding:#}");
        assert_eq!(evidence["held"], true, "{finding:#}");
        match survival {
            // Pushed allocation counts show it kept what it allocated.
            Some(least) => assert!(
                evidence["survival"].as_f64().unwrap() >= least,
                "{finding:#}"
            ),
            // No allocation counts pushed (this lab build pushed in-use only).
            None => assert_eq!(evidence["survival"], Value::Null, "{finding:#}"),
        }
    }
}

/// Watch mode keeps each service's series between periods and asks only for windows it has not
/// read: over a fixed range, the first period sends the 100 queries a scan sends, and each later
/// one only the service list and the three type lists, with the same findings.
#[test]
fn fleet_watch_reads_each_window_once_and_keeps_its_findings_between_periods() {
    use std::io::BufRead;
    let replay = Replay::start(Options::default());
    let mut child = Command::new(BINARY)
        .env_clear()
        .args([
            "fleet",
            "--pyroscope",
            &replay.url,
            "--every",
            "1s",
            "--json",
        ])
        .args(["--from", &S.to_string(), "--to", &E.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reports: Vec<Value> = std::io::BufReader::new(stdout)
        .lines()
        .take(3)
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(reports.len(), 3);
    let queries: Vec<u64> = reports
        .iter()
        .map(|report| report["queries"].as_u64().unwrap())
        .collect();
    assert_eq!(queries, [100, 4, 4], "each window read once");
    assert_eq!(replay.served(), 108);
    let leaks = |report: &Value| {
        let mut found: Vec<(String, String, String)> = ["checkout", "catalog", "orders-go"]
            .iter()
            .flat_map(|name| {
                findings(report, name)
                    .into_iter()
                    .map(move |(kind, function, _, _)| ((*name).to_owned(), kind, function))
            })
            .collect();
        found.sort();
        found
    };
    assert_eq!(leaks(&reports[0]).len(), 3, "{:#}", reports[0]);
    for report in &reports[1..] {
        assert_eq!(leaks(report), leaks(&reports[0]));
        assert_eq!(service(report, "catalog")["heap_windows"], 24);
        let rate =
            |report: &Value| service(report, "checkout")["findings"][0]["rate_per_second"].clone();
        assert_eq!(rate(report), rate(&reports[0]), "nothing folded twice");
    }
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
}
