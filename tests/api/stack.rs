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
        BTreeSet::from(["grafana", "leakfinder", "prometheus", "pyroscope"])
    );
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
    ] {
        assert_eq!(
            services[service]["depends_on"][dependency]["condition"], "service_healthy",
            "{service} on {dependency}"
        );
    }
    for healthy in ["leakfinder", "prometheus", "grafana"] {
        assert!(
            services[healthy]["healthcheck"]["test"].is_array(),
            "{healthy} has a healthcheck"
        );
    }
    assert_eq!(
        services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"],
        "true"
    );
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
    assert!(dockerfile.contains("&& target/release/leakfinder symbols"));
    assert!(dockerfile.contains(
        "COPY --from=builder /app/target/release/leakfinder /app/target/release/leakfinder.symbols /usr/local/bin/"
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
                leakfinder::telemetry::push::CPU_PROFILE
            ),
            format!(
                "{}:inuse_space:bytes:space:bytes",
                leakfinder::telemetry::push::HEAP_PROFILE
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
    for expr in &expressions {
        let result = instant_query(&client, &prometheus.url, expr).await;
        assert!(!result.is_empty(), "no data for {expr}");
    }
}
