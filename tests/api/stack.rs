//! The `docker compose up` stack, checked without Docker: a real Compose v2 `config`, hadolint,
//! the Grafana provisioning's internal references, and every PromQL expression of the dashboards
//! and alert rules run against a real Prometheus v3 fed by the app's real OTLP export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{num, spawn_app};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|error| panic!("{path} is YAML: {error}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/leak-finder.json"))
        .expect("the dashboard is JSON")
}

/// Runs a tool the CI installs, failing clearly when it is missing.
fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|error| panic!("{tool} is installed (.ci/run installs it): {error}"))
}

#[test]
fn compose_v2_accepts_the_stack() {
    let output = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--format", "json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: Value = serde_json::from_slice(&output.stdout).unwrap();
    let services = config["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["fleet", "grafana", "leakfinder", "prometheus", "pyroscope"])
    );
    // The fleet job runs the service's own image against the stack's Pyroscope.
    let fleet = &services["fleet"];
    assert_eq!(fleet["image"], services["leakfinder"]["image"]);
    assert_eq!(
        fleet["environment"]["LEAKFINDER_FLEET_PYROSCOPE"],
        "http://pyroscope:4040"
    );
    assert_eq!(fleet["command"][0], "fleet");
    // `go tool pprof` on the published port reaches the service from Docker's bridge gateway, a
    // private address that /debug/pprof refuses by default: the allow-list, parsed as the service
    // parses it, admits the gateway and not the internet.
    let allow = services["leakfinder"]["environment"]["LEAKFINDER_PPROF_ALLOW"]
        .as_str()
        .unwrap();
    let config = <leakfinder::config::Config as clap::Parser>::try_parse_from([
        "leakfinder-lab",
        "--pprof-allow",
        allow,
    ])
    .unwrap();
    let access = config.pprof_access();
    for gateway in ["172.17.0.1", "172.18.0.1", "192.168.65.1", "fd00::1"] {
        assert_eq!(
            access.check(gateway.parse().ok(), None),
            Ok(()),
            "{gateway}"
        );
    }
    assert!(access.check("8.8.8.8".parse().ok(), None).is_err());
    for (name, service) in services {
        if let Some(image) = service["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name} pins its image: {image}"
            );
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            assert_eq!(
                port["host_ip"], "127.0.0.1",
                "{name} binds its host port to loopback"
            );
        }
    }
    assert_eq!(
        services["leakfinder"]["build"]["context"],
        root().to_str().unwrap()
    );
    assert!(
        services["prometheus"]["command"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--web.enable-otlp-receiver"))
    );
    for (service, dependency) in [
        ("leakfinder", "prometheus"),
        ("grafana", "prometheus"),
        ("grafana", "leakfinder"),
        ("grafana", "pyroscope"),
    ] {
        assert_eq!(
            services[service]["depends_on"][dependency]["condition"], "service_healthy",
            "{service} on {dependency}"
        );
    }
    // Pyroscope takes about a minute to be ready; the service starts at once and its push retries.
    assert_eq!(
        services["leakfinder"]["depends_on"]["pyroscope"]["condition"],
        "service_started"
    );
    for healthy in ["leakfinder", "prometheus", "grafana", "pyroscope"] {
        assert!(
            services[healthy]["healthcheck"]["test"].is_array(),
            "{healthy} has a healthcheck"
        );
    }
    assert_eq!(
        services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"],
        "true"
    );

    // Current majors, and the versions the tests check against are the ones the stack runs.
    let image = |service: &str| services[service]["image"].as_str().unwrap().to_owned();
    assert!(image("pyroscope").starts_with("grafana/pyroscope:2."));
    assert!(image("grafana").starts_with("grafana/grafana:13."));
    let prometheus = image("prometheus");
    let minor = prometheus
        .strip_prefix("prom/prometheus:v3.")
        .expect("Prometheus 3");
    // v3.16.0 is the Go module's v0.316.0, which .ci/run builds for the PromQL test.
    assert!(
        read(".ci/run").contains(&format!("PROMETHEUS_VERSION=v0.3{minor} ")),
        "{prometheus} is the version .ci/run builds"
    );
    let schema: Value = serde_json::from_str(&read("tests/grafana/package.json")).unwrap();
    assert_eq!(
        image("grafana"),
        format!(
            "grafana/grafana:{}",
            schema["dependencies"]["@grafana/schema"].as_str().unwrap()
        ),
        "the dashboards are checked against the schema of the Grafana that runs them"
    );

    // Pyroscope 2: v2 storage on the filesystem, all of it in a volume, and a health check with
    // a tool its distroless image has.
    let pyroscope = &services["pyroscope"];
    let flags: Vec<&str> = pyroscope["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|flag| flag.as_str().unwrap())
        .collect();
    for flag in [
        "-architecture.storage=v2",
        "-storage.backend=filesystem",
        "-storage.filesystem.dir=/data/v2/shared",
        "-metastore.data-dir=/data/v2/metastore/data",
        "-metastore.raft.dir=/data/v2/metastore/raft",
    ] {
        assert!(
            flags.contains(&flag),
            "pyroscope runs with {flag}: {flags:?}"
        );
    }
    assert_eq!(pyroscope["volumes"][0]["type"], "volume");
    assert_eq!(pyroscope["volumes"][0]["target"], "/data");
    assert_eq!(
        pyroscope["healthcheck"]["test"],
        serde_json::json!([
            "CMD",
            "/usr/bin/profilecli",
            "ready",
            "--url=http://127.0.0.1:4040"
        ])
    );
    assert!(
        pyroscope["healthcheck"]["start_period"]
            .as_str()
            .is_some_and(|period| period.starts_with('2') && period.contains('m')),
        "about a minute to start, and room for a slow machine: {}",
        pyroscope["healthcheck"]["start_period"]
    );

    // Every pinned image names its release date in a comment above it.
    let compose = read("docker-compose.yml");
    let lines: Vec<&str> = compose.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        let Some(image) = line.trim().strip_prefix("image: ") else {
            continue;
        };
        if image == "leakfinder:local" {
            continue;
        }
        let comment: String = lines[..at]
            .iter()
            .rev()
            .take_while(|line| line.trim().starts_with('#'))
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(released_on_a_date(&comment), "{image}: {comment:?}");
    }

    // The README's one-container alternative pins its image, with its date, too.
    let readme = read("README.md");
    let lgtm = readme
        .lines()
        .find(|line| line.starts_with("docker run") && line.contains("grafana/otel-lgtm"))
        .expect("the README runs grafana/otel-lgtm");
    let tag = lgtm
        .split_whitespace()
        .find_map(|word| word.strip_prefix("grafana/otel-lgtm:"))
        .unwrap_or_else(|| panic!("otel-lgtm pinned: {lgtm}"));
    let dated = readme
        .find(&format!("{tag}, released "))
        .is_some_and(|at| released_on_a_date(&readme[at..].chars().take(40).collect::<String>()));
    assert!(dated, "the README says when otel-lgtm {tag} was released");
}

/// Whether `text` says `released YYYY-MM-DD`.
fn released_on_a_date(text: &str) -> bool {
    text.match_indices("released ").any(|(at, prefix)| {
        let date = &text.as_bytes()[at + prefix.len()..];
        date.len() >= 10
            && date[..10].iter().enumerate().all(|(i, byte)| match i {
                4 | 7 => *byte == b'-',
                _ => byte.is_ascii_digit(),
            })
    })
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let output = run("hadolint", &["Dockerfile"]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo chef cook"), "dependency caching");
    assert!(dockerfile.contains("USER 10001") && dockerfile.contains("HEALTHCHECK"));
    // The symbol table is written after the build and copied beside the binary it was built for.
    assert!(dockerfile.contains("&& target/release/leakfinder-lab symbols"));
    assert!(dockerfile.contains(
        "COPY --from=builder /app/target/release/leakfinder-lab /app/target/release/leakfinder-lab.symbols /usr/local/bin/"
    ));
}

/// The profiling crate's README shows how a user's own image ships the symbol table: written by
/// `leakfinder symbols` after the build, copied beside the binary, in a Dockerfile hadolint passes.
#[test]
fn hadolint_finds_nothing_in_the_profiling_readme_s_dockerfile_which_ships_the_table() {
    let dockerfile =
        crate::examples::fenced_block(&read("crates/profiling/README.md"), "dockerfile")
            .expect("crates/profiling/README.md has a ```dockerfile block");
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("Dockerfile");
    std::fs::write(&path, &dockerfile).unwrap();
    let output = run("hadolint", &[path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}{}\n{dockerfile}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dockerfile.contains("cargo install --path /src/leakfinder/crates/detector --locked"));
    assert!(dockerfile.contains("&& leakfinder symbols target/release/my-service\n"));
    assert!(dockerfile.contains(
        "COPY --from=builder /src/my-service/target/release/my-service /src/my-service/target/release/my-service.symbols /usr/local/bin/"
    ));
}

/// Every `(datasource uid, target)` of the dashboard.
fn dashboard_targets() -> Vec<(String, Value)> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            (
                target["datasource"]["uid"].as_str().unwrap().to_owned(),
                target,
            )
        })
        .collect()
}

/// Every `(datasource uid, PromQL)` of the alert rules.
fn alert_queries() -> Vec<(String, String)> {
    let rules = yaml("grafana/provisioning/alerting/leak-alerts.yaml");
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap().clone())
        .flat_map(|rule| rule["data"].as_sequence().unwrap().clone())
        .filter_map(|query| {
            let expr = query["model"]["expr"].as_str()?.to_owned();
            Some((query["datasourceUid"].as_str().unwrap().to_owned(), expr))
        })
        .collect()
}

#[test]
fn the_dashboards_and_rules_refer_to_provisioned_datasources_and_pushed_profile_types() {
    let datasources = yaml("grafana/provisioning/datasources/datasources.yaml");
    let uids: BTreeSet<String> = datasources["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|source| source["uid"].as_str().unwrap().to_owned())
        .collect();
    let dashboard = dashboard();
    assert_eq!(dashboard["title"], "Leak Finder");
    for panel in dashboard["panels"].as_array().unwrap() {
        if let Some(uid) = panel["datasource"]["uid"].as_str() {
            assert!(uids.contains(uid), "panel {} uses {uid}", panel["title"]);
        }
    }
    let mut profile_types = BTreeSet::new();
    for (uid, target) in dashboard_targets() {
        assert!(uids.contains(&uid), "{target}");
        if let Some(profile_type) = target["profileTypeId"].as_str() {
            profile_types.insert(profile_type.to_owned());
        }
    }
    // What the app pushes: `process_cpu` with samples/count + cpu/nanoseconds, and `memory` with
    // inuse_space/bytes over a space/bytes period (see telemetry::push and profiling).
    assert_eq!(
        profile_types,
        BTreeSet::from([
            format!(
                "{}:cpu:nanoseconds:cpu:nanoseconds",
                leakfinder_profiling::push::CPU_PROFILE
            ),
            format!(
                "{}:inuse_space:bytes:space:bytes",
                leakfinder_profiling::push::HEAP_PROFILE
            ),
        ])
    );
    for (uid, _) in alert_queries() {
        assert!(uids.contains(&uid), "alert rule datasource {uid}");
    }
    let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
}

/// Runs `tests/grafana/validate.mjs KIND FILES...` (`npm ci` there by .ci/run): its exit code and
/// what it printed, one `FILE: PATH: PROBLEM` line per problem or `ok FILE` per valid file.
fn grafana_schema_check(kind: &str, files: &[PathBuf]) -> (Option<i32>, String) {
    let checker = root().join("tests/grafana");
    assert!(
        checker.join("node_modules/@grafana/schema").is_dir(),
        "run `npm ci` in tests/grafana first (.ci/run does)"
    );
    let output = Command::new("node")
        .arg(checker.join("validate.mjs"))
        .arg(kind)
        .args(files)
        .output()
        .expect("node is installed");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

/// Writes each `(name, contents)` into `dir`, returning the paths in the same order.
fn write_copies(dir: &Path, copies: &[(&str, String)]) -> Vec<PathBuf> {
    copies
        .iter()
        .map(|(name, contents)| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        })
        .collect()
}

/// Asserts the check found `problem` at `path` in `file`, and did not pass it.
/// Checks every case's copy (name, path of the break, the problem printed, contents) in one run
/// of the schema check: the first, unchanged, passes in that same run, so each other failure is
/// its one change, found at its path with its problem.
fn each_broken_copy_is_rejected<P: AsRef<str>, Q: AsRef<str>>(
    kind: &str,
    cases: &[(&str, P, Q, String)],
) {
    let scratch = tempfile::tempdir().unwrap();
    let files = write_copies(
        scratch.path(),
        &cases
            .iter()
            .map(|(name, _, _, contents)| (*name, contents.clone()))
            .collect::<Vec<_>>(),
    );
    let (status, printed) = grafana_schema_check(kind, &files);
    assert_eq!(status, Some(1), "{printed}");
    assert!(
        printed.contains(&format!("ok {}\n", files[0].display())),
        "{printed}"
    );
    for ((_, path, problem, _), file) in cases.iter().zip(&files).skip(1) {
        assert_rejected(&printed, file, path.as_ref(), problem.as_ref());
    }
}

fn assert_rejected(printed: &str, file: &Path, path: &str, problem: &str) {
    let file = file.display();
    assert!(
        !printed.contains(&format!("ok {file}\n")),
        "{file} passed: {printed}"
    );
    assert!(
        printed
            .lines()
            .any(|line| line.starts_with(&format!("{file}: {path}: ")) && line.contains(problem)),
        "{file}: expected {problem:?} at {path}:\n{printed}"
    );
}

#[test]
fn the_dashboards_satisfy_grafanas_schema_for_the_pinned_version() {
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(root().join("grafana/dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty());

    let (status, printed) = grafana_schema_check("dashboard", &dashboards);

    assert_eq!(status, Some(0), "{printed}");
    for dashboard in &dashboards {
        assert!(
            printed.contains(&format!("ok {}\n", dashboard.display())),
            "{printed}"
        );
    }
}

#[test]
fn a_dashboard_grafana_would_reject_fails_the_schema_check() {
    let original = dashboard();
    let panels = original["panels"].as_array().unwrap();
    let series = panels
        .iter()
        .position(|panel| panel["type"] == "timeseries")
        .unwrap();
    let flame = panels
        .iter()
        .position(|panel| panel["type"] == "flamegraph")
        .unwrap();
    let broken = |change: &dyn Fn(&mut Value)| {
        let mut copy = original.clone();
        change(&mut copy);
        serde_json::to_string_pretty(&copy).unwrap()
    };
    let p = format!("panels[{series}]");
    let cases = [
        ("unchanged.json", "", "", broken(&|_| {})),
        (
            "grid-position-a-string.json",
            &*format!("{p}.gridPos"),
            "Type 'string' is not assignable",
            broken(&|d| d["panels"][series]["gridPos"] = "x".into()),
        ),
        (
            "targets-an-object.json",
            &*format!("{p}.targets"),
            "is missing the following properties",
            broken(&|d| d["panels"][series]["targets"] = serde_json::json!({})),
        ),
        (
            "unknown-panel-field.json",
            &*format!("{p}.colour"),
            "'\"colour\"' does not exist",
            broken(&|d| d["panels"][series]["colour"] = "red".into()),
        ),
        (
            "legend-mode-misspelt.json",
            &*format!("{p}.options.legend.displayMode"),
            "Type '\"lists\"' is not assignable",
            broken(&|d| d["panels"][series]["options"]["legend"]["displayMode"] = "lists".into()),
        ),
        (
            "line-width-a-string.json",
            &*format!("{p}.fieldConfig.defaults.custom.lineWidth"),
            "Type 'string' is not assignable to type 'number'",
            broken(&|d| {
                d["panels"][series]["fieldConfig"]["defaults"]["custom"]["lineWidth"] = "2".into()
            }),
        ),
        (
            "query-field-misspelt.json",
            &*format!("{p}.targets[0].legendFromat"),
            "'\"legendFromat\"' does not exist",
            broken(&|d| d["panels"][series]["targets"][0]["legendFromat"] = "RSS".into()),
        ),
        (
            "profile-group-by-a-string.json",
            &*format!("panels[{flame}].targets[0].groupBy"),
            "not assignable to type 'string[]'",
            broken(&|d| d["panels"][flame]["targets"][0]["groupBy"] = "thread_name".into()),
        ),
        (
            "schema-version-a-string.json",
            "schemaVersion",
            "Type 'string' is not assignable to type 'number'",
            broken(&|d| d["schemaVersion"] = "39".into()),
        ),
    ];
    each_broken_copy_is_rejected("dashboard", &cases);
}

#[test]
fn the_alert_rules_satisfy_grafanas_provisioning_format() {
    let rules = root().join("grafana/provisioning/alerting/leak-alerts.yaml");

    let (status, printed) = grafana_schema_check("alert-rules", std::slice::from_ref(&rules));

    assert_eq!(status, Some(0), "{printed}");
    assert!(
        printed.contains(&format!("ok {}\n", rules.display())),
        "{printed}"
    );
}

#[test]
fn alert_rules_grafana_would_reject_fail_the_check() {
    let original = read("grafana/provisioning/alerting/leak-alerts.yaml");
    let broken = |from: &str, to: &str| {
        let copy = original.replacen(from, to, 1);
        assert_ne!(copy, original, "{from:?} is in the rules");
        copy
    };
    let range = "relativeTimeRange: { from: 600, to: 0 }";
    let rule = "groups.0.rules.0";
    let cases = [
        (
            "unchanged.yaml",
            String::new(),
            String::new(),
            original.clone(),
        ),
        (
            "range-a-duration.yaml",
            format!("{rule}.data.0.relativeTimeRange.from"),
            "must be integer".to_owned(),
            broken(range, "relativeTimeRange: { from: 10m, to: 0 }"),
        ),
        (
            "range-ends-before-it-starts.yaml",
            format!("{rule}.data.0.relativeTimeRange"),
            "from must be greater than to".to_owned(),
            broken(range, "relativeTimeRange: { from: 0, to: 600 }"),
        ),
        (
            "for-in-words.yaml",
            format!("{rule}.for"),
            "must match pattern".to_owned(),
            broken("for: 5m", "for: 5 minutes"),
        ),
        (
            "labels-misspelt.yaml",
            rule.to_owned(),
            "must NOT have additional properties: lables".to_owned(),
            broken("labels:", "lables:"),
        ),
        (
            "no-data-state-misspelt.yaml",
            format!("{rule}.noDataState"),
            "must be equal to one of the allowed values".to_owned(),
            broken("for: 5m", "for: 5m\n        noDataState: Nodata"),
        ),
        (
            "condition-names-no-query.yaml",
            format!("{rule}.condition"),
            "C is none of the queries".to_owned(),
            broken("condition: B", "condition: C"),
        ),
        (
            "threshold-of-no-query.yaml",
            format!("{rule}.data.1.model.expression"),
            "Z is none of the queries".to_owned(),
            broken("expression: A", "expression: Z"),
        ),
    ];
    each_broken_copy_is_rejected("alert-rules", &cases);
}

/// A real Prometheus v3, built from its Go module by `.ci/run`.
struct Prometheus {
    child: Child,
    url: String,
    _data: tempdir::Scratch,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Scratch(pub std::path::PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("leakfinder-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS") {
        return path.into();
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .expect("go is installed");
    let installed =
        PathBuf::from(String::from_utf8_lossy(&gopath.stdout).trim()).join("bin/prometheus");
    assert!(
        installed.exists(),
        "Prometheus is installed at {installed:?} (.ci/run: go install)"
    );
    installed
}

async fn start_prometheus() -> Prometheus {
    let binary = prometheus_binary();
    let module = Command::new("go")
        .args(["version", "-m"])
        .arg(&binary)
        .output()
        .unwrap();
    let module = String::from_utf8_lossy(&module.stdout);
    assert!(
        module
            .lines()
            .any(|line| line.contains("github.com/prometheus/prometheus\tv0.3")),
        "Prometheus v3 (module v0.3xx): {module}"
    );
    // The compose file's own Prometheus configuration.
    let compose = yaml("docker-compose.yml");
    let config = compose["configs"]["prometheus"]["content"]
        .as_str()
        .unwrap();
    let data = tempdir::Scratch::new("prometheus");
    std::fs::write(data.0.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            data.0.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-otlp-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _data: data,
    };
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let client = reqwest::Client::new();
    for _ in 0..300 {
        let ready = client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .await;
        if ready.is_ok_and(|response| response.status() == 200) {
            return prometheus;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Prometheus did not become ready");
}

async fn instant_query(client: &reqwest::Client, prometheus: &str, query: &str) -> Vec<Value> {
    let response: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["status"], "success", "{query}: {response}");
    response["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promql_expression_returns_data_from_real_prometheus() {
    let prometheus = start_prometheus().await;
    let app = spawn_app(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("{}/api/v1/otlp", prometheus.url),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ("OTEL_SERVICE_NAME", "leakfinder"),
        ("LEAK_REPORT_INTERVAL_MS", "500"),
        ("LEAK_CHUNK_BYTES", "65536"),
        ("LEAK_INTERVAL_MS", "20"),
    ]);
    app.get_json("/start-leak/slice", 200).await;
    app.get_json("/start-leak/channel", 200).await;
    // The fleet row and its alert: the fleet job, over the recorded Pyroscope fleet, exporting
    // to the same Prometheus.
    let replay = crate::replay::Replay::start(crate::replay::Options::default());
    let mut fleet = FleetJob(
        Command::new(crate::helpers::BINARY)
            .env_clear()
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/api/v1/otlp", prometheus.url),
            )
            .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
            .env("OTEL_SERVICE_NAME", "leakfinder-fleet")
            .args(["fleet", "--pyroscope", &replay.url, "--every", "1h"])
            .args(["--from", &crate::replay::S.to_string()])
            .args(["--to", &crate::replay::E.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    leakfinder_detector::tls::install_crypto_provider(); // reqwest brings no rustls provider here
    let client = reqwest::Client::new();
    let slice = "leakfinder_leak_retained_bytes{job=\"leakfinder\", leak=\"slice\"}";
    let value = |result: &[Value]| -> f64 {
        result.first().map_or(0.0, |sample| {
            sample["value"][1].as_str().unwrap().parse().unwrap()
        })
    };
    let mut first_seen = None;
    for _ in 0..60 {
        for _ in 0..5 {
            app.get_json("/safe-test?tasks=5", 200).await;
        }
        let now = value(&instant_query(&client, &prometheus.url, slice).await);
        if now > 0.0 && first_seen.is_none() {
            first_seen = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = first_seen.expect("the slice leak's series arrived over OTLP");
    let last = value(&instant_query(&client, &prometheus.url, slice).await);
    assert!(
        last > first,
        "the leak series increases: {first} then {last}"
    );
    assert!(num(&app.report().await, "leaks/slice/bytes") as f64 >= last);

    let expressions: Vec<String> = dashboard_targets()
        .into_iter()
        .filter(|(uid, _)| uid == "leakfinder-prometheus")
        .map(|(_, target)| target["expr"].as_str().unwrap().to_owned())
        .chain(
            alert_queries()
                .into_iter()
                .filter(|(uid, _)| uid == "leakfinder-prometheus")
                .map(|(_, expr)| expr),
        )
        .map(|expr| expr.replace("$service", "leakfinder"))
        .collect();
    assert!(expressions.len() >= 12, "{expressions:?}");
    assert!(
        expressions
            .iter()
            .any(|expr| expr.contains("leakfinder_fleet_suspects")),
        "the fleet row and alert are checked: {expressions:?}"
    );
    for expr in &expressions {
        let result = instant_query(&client, &prometheus.url, expr).await;
        assert!(!result.is_empty(), "no data for {expr}");
    }
    assert!(replay.unrecorded().is_empty(), "{:?}", replay.unrecorded());
    let _ = fleet.0.kill();
}

/// The fleet job, killed when the test ends however it ends.
struct FleetJob(Child);

impl Drop for FleetJob {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
