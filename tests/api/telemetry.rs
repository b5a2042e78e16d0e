//! Metrics over OTLP and profiles to Pyroscope, received by test receivers that decode the real
//! wire formats with the real protocol crates (`opentelemetry-proto`, `pyroscope`'s push types),
//! and the service's behaviour when those backends are down or stall.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Request, Route, Server, handler};
use prost::Message;
use pyroscope::encode::r#gen::push::PushRequest;

use crate::helpers::{TestApp, num, spawn_app};

/// One request a receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// An HTTP server on port 0 that records every request and answers 200.
pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Received>>>,
    _server: tokio::task::JoinHandle<()>,
}

#[handler]
async fn record(
    request: &Request,
    body: Vec<u8>,
    requests: poem::web::Data<&Arc<Mutex<Vec<Received>>>>,
) -> &'static str {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let body = if header("content-encoding") == "gzip" {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        raw
    } else {
        body
    };
    requests.lock().unwrap().push(Received {
        path: request.uri().path().to_owned(),
        content_type: header("content-type"),
        body,
    });
    "{}"
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let acceptor = TcpListener::bind(addr).into_acceptor().await.unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Route::new()
            .at("/*path", record)
            .data(Arc::clone(&requests));
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            addr,
            requests,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn taken(&self, path: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the requests to `path`.
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let taken = self.taken(path);
            if done(&taken) {
                return taken;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for requests to {path}: got {}",
                taken.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub const OTLP_PATH: &str = "/v1/metrics";
pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// The environment that points both exporters at `url`, exporting fast.
pub fn export_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ("PYROSCOPE_SERVER_ADDRESS", url.to_owned()),
        ("PYROSCOPE_CPU_INTERVAL_SECS", "1".to_owned()),
        ("PYROSCOPE_HEAP_INTERVAL_SECS", "1".to_owned()),
    ]
}

fn spawn_exporting(url: &str, extra: &[(&str, &str)]) -> TestApp {
    let env = export_env(url);
    let mut all: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    all.extend_from_slice(extra);
    spawn_app(&all)
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

/// A decoded export: metric name to (unit, data points as (attributes, value)).
type Export = BTreeMap<String, (String, Vec<(BTreeMap<String, String>, f64)>)>;

fn decode_export(body: &[u8]) -> (Export, BTreeMap<String, String>) {
    let request =
        ExportMetricsServiceRequest::decode(body).expect("an OTLP ExportMetricsServiceRequest");
    let mut export = Export::new();
    let mut resource = BTreeMap::new();
    for resource_metrics in &request.resource_metrics {
        for attribute in resource_metrics.resource.iter().flat_map(|r| &r.attributes) {
            resource.insert(attribute.key.clone(), text(&attribute.value));
        }
        for metric in resource_metrics
            .scope_metrics
            .iter()
            .flat_map(|scope| &scope.metrics)
        {
            let entry = export
                .entry(metric.name.clone())
                .or_insert((metric.unit.clone(), Vec::new()));
            let attributes = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect::<BTreeMap<_, _>>()
            };
            match &metric.data {
                Some(metric::Data::Gauge(gauge)) => {
                    for point in &gauge.data_points {
                        let value = match point.value {
                            Some(number_data_point::Value::AsInt(v)) => v as f64,
                            Some(number_data_point::Value::AsDouble(v)) => v,
                            None => f64::NAN,
                        };
                        entry.1.push((attributes(&point.attributes), value));
                    }
                }
                Some(metric::Data::Histogram(histogram)) => {
                    assert_eq!(
                        histogram.aggregation_temporality, 2,
                        "cumulative temporality"
                    );
                    for point in &histogram.data_points {
                        entry
                            .1
                            .push((attributes(&point.attributes), point.count as f64));
                    }
                }
                other => panic!("unexpected metric type for {}: {other:?}", metric.name),
            }
        }
    }
    (export, resource)
}

fn slice_bytes(export: &Export) -> Option<f64> {
    export
        .get("leakfinder.leak.retained")?
        .1
        .iter()
        .find_map(|(attributes, value)| {
            (attributes.get("leak").map(String::as_str) == Some("slice")).then_some(*value)
        })
}

#[tokio::test]
async fn otlp_metrics_have_semantic_names_units_attributes_and_the_leak_grows() {
    let receiver = Receiver::start().await;
    let app = spawn_exporting(
        &receiver.url(),
        &[("OTEL_SERVICE_NAME", "leakfinder-under-test")],
    );
    app.get_json("/leak-test", 200).await;
    app.get_json("/start-leak/slice", 200).await;
    let taken = receiver
        .wait_for(OTLP_PATH, Duration::from_secs(30), |taken| {
            let grown: Vec<f64> = taken
                .iter()
                .filter_map(|r| slice_bytes(&decode_export(&r.body).0))
                .collect();
            grown.len() >= 3 && grown.last() > grown.first()
        })
        .await;
    assert!(
        taken
            .iter()
            .all(|r| r.content_type == "application/x-protobuf"),
        "HTTP/protobuf"
    );
    let (export, resource) = decode_export(&taken.last().unwrap().body);
    assert_eq!(resource["service.name"], "leakfinder-under-test");

    let expected = [
        ("process.memory.usage", "By"),
        ("leakfinder.jemalloc.allocated", "By"),
        ("leakfinder.jemalloc.resident", "By"),
        ("leakfinder.tokio.tasks.alive", "{task}"),
        ("leakfinder.leak.retained", "By"),
        ("leakfinder.leak.items", "{chunk}"),
        ("leakfinder.leak.blocked_tasks", "{task}"),
        ("http.server.request.duration", "s"),
        ("leakfinder.detector.suspects", "{site}"),
    ];
    for (name, unit) in expected {
        let (actual, points) = export
            .get(name)
            .unwrap_or_else(|| panic!("{name} in {:?}", export.keys()));
        assert_eq!(actual, unit, "{name}");
        assert!(!points.is_empty(), "{name} has data");
    }
    for name in [
        "leakfinder.leak.retained",
        "leakfinder.leak.items",
        "leakfinder.leak.blocked_tasks",
    ] {
        let leaks: BTreeSet<&str> = export[name]
            .1
            .iter()
            .map(|(a, _)| a["leak"].as_str())
            .collect();
        assert_eq!(
            leaks,
            BTreeSet::from(["channel", "mutex", "slice"]),
            "{name}"
        );
    }
    let routes: BTreeSet<&str> = export["http.server.request.duration"]
        .1
        .iter()
        .map(|(attributes, _)| {
            assert!(attributes.contains_key("http.request.method"));
            assert!(attributes.contains_key("http.response.status_code"));
            attributes["http.route"].as_str()
        })
        .collect();
    assert!(
        routes.contains("/leak-test") && routes.contains("/start-leak/{kind}"),
        "{routes:?}"
    );
    assert!(num(&app.report().await, "leaks/slice/bytes") > 0);
}

fn pushes(taken: &[Received]) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
    taken
        .iter()
        .flat_map(|request| {
            let push = PushRequest::decode(request.body.as_slice()).expect("a push.v1 PushRequest");
            push.series
                .into_iter()
                .flat_map(|series| {
                    let labels: BTreeMap<String, String> = series
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect();
                    series
                        .samples
                        .into_iter()
                        .map(move |sample| (labels.clone(), sample.raw_profile))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The function that holds the most flat value of `sample_type` in a pprof profile.
fn top_function(raw: &[u8], sample_type: &str) -> Option<String> {
    let profile = leakfinder::profiling::pprof::decode(raw, 64 << 20).ok()?;
    let name = |index: i64| profile.string_table[index as usize].clone();
    let column = profile
        .sample_type
        .iter()
        .position(|t| name(t.r#type) == sample_type)?;
    let mut flat: BTreeMap<String, i64> = BTreeMap::new();
    for sample in &profile.sample {
        let leaf_id = *sample.location_id.first()?;
        let leaf = profile.location.iter().find(|l| l.id == leaf_id)?;
        let function_id = leaf.line.first()?.function_id;
        let function = profile.function.iter().find(|f| f.id == function_id)?;
        *flat.entry(name(function.name)).or_default() += sample.value[column];
    }
    flat.into_iter()
        .max_by_key(|(_, value)| *value)
        .map(|(name, _)| name)
}

#[tokio::test]
async fn cpu_and_heap_profiles_reach_pyroscope_with_the_service_name() {
    let receiver = Receiver::start().await;
    let app = spawn_exporting(
        &receiver.url(),
        &[
            ("LEAK_CHUNK_BYTES", "1048576"),
            ("LEAK_INTERVAL_MS", "5"),
            ("LEAK_MAX_BYTES", "67108864"),
        ],
    );
    app.get_json("/start-leak/slice", 200).await;
    let is = |labels: &BTreeMap<String, String>, kind: &str| {
        labels.get("__name__").map(String::as_str) == Some(kind)
    };
    let taken = receiver
        .wait_for(PUSH_PATH, Duration::from_secs(30), |taken| {
            let pushed = pushes(taken);
            let heap_with_leak = pushed.iter().any(|(labels, raw)| {
                is(labels, "memory")
                    && top_function(raw, "inuse_space")
                        .is_some_and(|top| top.contains("run_leaker_job1_simple_slice"))
            });
            let cpu_with_samples = pushed.iter().any(|(labels, raw)| {
                is(labels, "process_cpu") && top_function(raw, "cpu").is_some()
            });
            heap_with_leak && cpu_with_samples
        })
        .await;
    for (labels, _) in pushes(&taken) {
        assert_eq!(
            labels.get("service_name").map(String::as_str),
            Some("leakfinder"),
            "{labels:?}"
        );
        assert!(labels.contains_key("service_version"), "{labels:?}");
    }
    // The pull CPU profile keeps working while the agent runs: both share the one sampler.
    let response = app.get("/debug/pprof/profile?seconds=1").await;
    assert_eq!(response.status(), 200);
    let profile =
        leakfinder::profiling::pprof::decode(&response.bytes().await.unwrap(), 64 << 20).unwrap();
    assert!(profile.duration_nanos > 0);
}

/// A port with nothing listening on it.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A server that accepts connections and never answers.
pub fn stalling_server() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(10_000) {
            match stream {
                Ok(stream) => open.push(stream),
                Err(_) => break,
            }
        }
    });
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_backends_down_or_stalled_memory_stays_flat_and_warnings_are_rate_limited() {
    const MIB: u64 = 1 << 20;
    let (stalled, _held) = stalling_server();
    let apps = [
        (
            "closed port",
            spawn_exporting(&format!("http://{}", closed_port()), &[]),
        ),
        (
            "stalling server",
            spawn_exporting(&format!("http://{stalled}"), &[]),
        ),
    ];
    let load = async |app: &TestApp, rounds: usize| {
        for _ in 0..rounds {
            app.get_json("/safe-test?tasks=20", 200).await;
            app.get_json("/leak-test", 200).await;
        }
    };
    for (_, app) in &apps {
        load(app, 50).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<_> = futures_reports(&apps).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        for (_, app) in &apps {
            load(app, 10).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after: Vec<_> = futures_reports(&apps).await;
    for (((what, app), before), after) in apps.iter().zip(&before).zip(&after) {
        let grew = |path: &str| num(after, path).saturating_sub(num(before, path));
        assert!(
            grew("process/heap_allocated_bytes") <= 2 * MIB,
            "{what}: heap grew by {}",
            grew("process/heap_allocated_bytes")
        );
        assert!(
            grew("process/rss_bytes") <= 8 * MIB,
            "{what}: RSS grew by {}",
            grew("process/rss_bytes")
        );
        let warnings = app
            .logs()
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .count();
        assert!(
            warnings <= 12,
            "{what}: {warnings} warnings in ~70 s:\n{}",
            app.logs().join("\n")
        );
        assert_eq!(
            app.get_json("/healthz", 200).await["status"],
            "ok",
            "{what}"
        );
    }
}

async fn futures_reports(apps: &[(&str, TestApp)]) -> Vec<serde_json::Value> {
    let mut reports = Vec::new();
    for (_, app) in apps {
        reports.push(app.report().await);
    }
    reports
}

#[tokio::test]
async fn export_resumes_by_itself_when_the_backend_returns() {
    let addr = closed_port();
    let app = spawn_exporting(&format!("http://{addr}"), &[]);
    tokio::time::sleep(Duration::from_secs(3)).await; // exports fail meanwhile
    let receiver = Receiver::start_on(addr).await;
    receiver
        .wait_for(OTLP_PATH, Duration::from_secs(30), |taken| {
            !taken.is_empty()
        })
        .await;
    receiver
        .wait_for(PUSH_PATH, Duration::from_secs(30), |taken| {
            let pushed = pushes(taken);
            ["memory", "process_cpu"]
                .iter()
                .all(|kind| pushed.iter().any(|(labels, _)| labels["__name__"] == *kind))
        })
        .await;
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
}
