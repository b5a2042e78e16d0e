//! OTLP metrics: the process, jemalloc, tokio tasks, each leak, and HTTP requests, named and
//! unitised by OpenTelemetry's semantic conventions so that Prometheus names come out clean
//! (`process_memory_usage_bytes`, `http_server_request_duration_seconds`, ...).
//!
//! Gauges are read by callbacks on the exporter's own thread at each export; nothing here runs on
//! a request's path except one histogram record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use poem::{Endpoint, EndpointExt, Request, Response};

use crate::app::AppState;
use crate::config::{Config, OtlpProtocol};
use crate::leaks::LeakKind;

/// An export that takes longer is abandoned (the next one carries the cumulative totals again).
/// Below the SDK's fixed 5 s shutdown wait, so the last export can still finish.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Bucket bounds of `http.server.request.duration`, in seconds, as the semantic conventions advise.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The running metric export.
pub struct MetricsExport {
    provider: SdkMeterProvider,
    http: HttpMetrics,
}

impl MetricsExport {
    /// Starts exporting if an OTLP endpoint is configured; `None` otherwise.
    pub fn start(config: &Config, state: &Arc<AppState>) -> anyhow::Result<Option<Self>> {
        let Some(url) = config.otlp_metrics_url() else {
            tracing::info!("metric export is off: no OTEL_EXPORTER_OTLP_ENDPOINT");
            return Ok(None);
        };
        let provider = meter_provider(
            &url,
            config.otlp_protocol,
            config.metric_export_interval(),
            &config.service_name,
        )?;
        let meter = provider.meter("leakfinder");
        register_gauges(&meter, state);
        let http = HttpMetrics::new(&meter);
        tracing::info!(%url, interval = ?config.metric_export_interval(), "exporting metrics over OTLP");
        Ok(Some(Self { provider, http }))
    }

    /// The request histogram, for the HTTP middleware.
    pub fn http(&self) -> HttpMetrics {
        self.http.clone()
    }

    /// Exports one last time and stops.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(target: "leakfinder::telemetry", %error, "metric export did not shut down cleanly");
        }
    }
}

/// A meter provider exporting every `interval` to `url` over OTLP/HTTP, cumulative, with
/// `service.name` set.
pub fn meter_provider(
    url: &str,
    protocol: OtlpProtocol,
    interval: Duration,
    service_name: &str,
) -> anyhow::Result<SdkMeterProvider> {
    let protocol = match protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let mut exporter = MetricExporter::builder()
        .with_http()
        .with_endpoint(url.to_owned())
        .with_protocol(protocol)
        .with_temporality(Temporality::Cumulative);
    if std::env::var_os("OTEL_EXPORTER_OTLP_TIMEOUT").is_none() {
        exporter = exporter.with_timeout(EXPORT_TIMEOUT);
    }
    let exporter = exporter
        .build()
        .context("cannot build the OTLP metric exporter")?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    Ok(SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

/// The memory gauges share `/leak-test`'s cached reading: one export reads jemalloc and RSS once.
fn register_gauges(meter: &Meter, state: &Arc<AppState>) {
    let runtime = tokio::runtime::Handle::current();
    meter
        .u64_observable_gauge("process.memory.usage")
        .with_unit("By")
        .with_description("The amount of physical memory in use (RSS).")
        .with_callback({
            let state = Arc::clone(state);
            move |gauge| gauge.observe(state.memory.read().stats.rss_bytes, &[])
        })
        .build();
    meter
        .u64_observable_gauge("leakfinder.jemalloc.allocated")
        .with_unit("By")
        .with_description(
            "Bytes allocated by the application and not freed (jemalloc stats.allocated).",
        )
        .with_callback({
            let state = Arc::clone(state);
            move |gauge| gauge.observe(state.memory.read().stats.heap_allocated_bytes, &[])
        })
        .build();
    meter
        .u64_observable_gauge("leakfinder.jemalloc.resident")
        .with_unit("By")
        .with_description("Bytes in physically resident pages mapped by jemalloc (stats.resident).")
        .with_callback({
            let state = Arc::clone(state);
            move |gauge| gauge.observe(state.memory.read().stats.heap_resident_bytes, &[])
        })
        .build();
    meter
        .u64_observable_gauge("leakfinder.tokio.tasks.alive")
        .with_unit("{task}")
        .with_description("Tokio tasks alive, blocked ones included.")
        .with_callback(move |gauge| {
            gauge.observe(runtime.metrics().num_alive_tasks() as u64, &[]);
        })
        .build();
    let leak_gauge = |name: &'static str,
                      unit: &'static str,
                      description: &'static str,
                      read: fn(&crate::leaks::LeakStatus) -> u64| {
        let state = Arc::clone(state);
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |gauge| {
                for kind in LeakKind::ALL {
                    let status = state.leaks.status(kind);
                    gauge.observe(read(&status), &[KeyValue::new("leak", kind.as_str())]);
                }
            })
            .build();
    };
    let watch = Arc::clone(&state.watch);
    meter
        .u64_observable_gauge("leakfinder.tokio.tasks.by_spawn_site")
        .with_unit("{task}")
        .with_description(
            "Tokio tasks alive per spawn site, from the leak watch's latest task profile.",
        )
        .with_callback(move |gauge| {
            for site in watch.report().tasks_by_spawn_site {
                gauge.observe(
                    site.alive,
                    &[
                        KeyValue::new("function", site.function),
                        KeyValue::new("code.filepath", site.file),
                        KeyValue::new("code.lineno", site.line),
                    ],
                );
            }
        })
        .build();
    let push = Arc::clone(&state.profile_push);
    meter
        .u64_observable_counter("leakfinder.profiles.dropped")
        .with_unit("{profile}")
        .with_description(
            "Profiles the push dropped: the oldest of a full retry queue, or one Pyroscope refused.",
        )
        .with_callback(move |counter| counter.observe(push.dropped.load(Ordering::Relaxed), &[]))
        .build();
    let push = Arc::clone(&state.profile_push);
    meter
        .u64_observable_gauge("leakfinder.profiles.queued")
        .with_unit("{profile}")
        .with_description("Profiles waiting to be pushed again after a failed push.")
        .with_callback(move |gauge| gauge.observe(push.queued.load(Ordering::Relaxed), &[]))
        .build();
    let watch = Arc::clone(&state.watch);
    meter
        .u64_observable_gauge("leakfinder.detector.suspects")
        .with_unit("{site}")
        .with_description("Sites the continuous leak watch reports as leaking.")
        .with_callback(move |gauge| gauge.observe(watch.report().findings.len() as u64, &[]))
        .build();
    for (name, unit, description, measured) in [
        (
            "leakfinder.detector.heap_growth",
            "By/s",
            "Growth of each heap site the leak watch reports.",
            "bytes",
        ),
        (
            "leakfinder.detector.task_growth",
            "{task}/s",
            "Growth of each task site the leak watch reports.",
            "tasks",
        ),
    ] {
        let watch = Arc::clone(&state.watch);
        meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |gauge| {
                for finding in watch
                    .report()
                    .findings
                    .iter()
                    .filter(|f| f.unit == measured)
                {
                    gauge.observe(
                        finding.rate_per_second,
                        &[
                            KeyValue::new("function", finding.function.clone()),
                            KeyValue::new("code.filepath", finding.file.clone()),
                            KeyValue::new("code.lineno", finding.line),
                        ],
                    );
                }
            })
            .build();
    }
    leak_gauge(
        "leakfinder.leak.retained",
        "By",
        "Bytes a deliberate leak retains.",
        |status| status.bytes,
    );
    leak_gauge(
        "leakfinder.leak.items",
        "{chunk}",
        "Chunks a deliberate leak retains.",
        |status| status.items,
    );
    leak_gauge(
        "leakfinder.leak.blocked_tasks",
        "{task}",
        "Tasks blocked forever by a deliberate leak.",
        |status| status.blocked_tasks,
    );
}

/// Records `http.server.request.duration` for every request, by route template.
#[derive(Clone)]
pub struct HttpMetrics {
    duration: Histogram<f64>,
}

impl HttpMetrics {
    fn new(meter: &Meter) -> Self {
        Self {
            duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP server requests.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// Wraps the routes so that every request is timed, when metrics are exported.
pub fn instrument<E: Endpoint + 'static>(routes: E, metrics: Option<HttpMetrics>) -> impl Endpoint {
    routes.around(move |endpoint, request: Request| {
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            let method = request.method().as_str().to_owned();
            let route = route_label(request.uri().path());
            let response: Response = endpoint.get_response(request).await;
            if let Some(metrics) = metrics {
                metrics.duration.record(
                    started.elapsed().as_secs_f64(),
                    &[
                        KeyValue::new("http.request.method", method),
                        KeyValue::new("http.route", route),
                        KeyValue::new(
                            "http.response.status_code",
                            i64::from(response.status().as_u16()),
                        ),
                    ],
                );
            }
            Ok(response)
        }
    })
}

/// The route template a path matched, so the route label has bounded cardinality.
pub fn route_label(path: &str) -> &'static str {
    const FIXED: &[&str] = &[
        "/leak-test",
        "/safe-test",
        "/healthz",
        "/leak-report",
        "/openapi.json",
        "/openapi.yaml",
        "/debug/pprof/heap",
        "/debug/pprof/profile",
        "/debug/pprof/goroutine",
        "/debug/pprof/tasks",
    ];
    const WITH_KIND: &[(&str, &str)] = &[
        ("/start-leak/", "/start-leak/{kind}"),
        ("/stop-leak/", "/stop-leak/{kind}"),
        ("/reset-leak/", "/reset-leak/{kind}"),
        ("/start-benign/", "/start-benign/{kind}"),
        ("/reset-benign/", "/reset-benign/{kind}"),
    ];
    if let Some(fixed) = FIXED.iter().find(|fixed| **fixed == path) {
        return fixed;
    }
    if let Some((_, template)) = WITH_KIND.iter().find(|(prefix, _)| {
        path.strip_prefix(prefix)
            .is_some_and(|kind| !kind.is_empty() && !kind.contains('/'))
    }) {
        return template;
    }
    match path {
        "/swagger" | "/swagger/" | "/swagger/index.html" => "/swagger/",
        "/debug/pprof" | "/debug/pprof/" => "/debug/pprof/",
        _ => "unmatched",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates_with_bounded_cardinality() {
        assert_eq!(route_label("/start-leak/slice"), "/start-leak/{kind}");
        assert_eq!(
            route_label("/start-leak/anything-at-all"),
            "/start-leak/{kind}"
        );
        assert_eq!(route_label("/reset-leak/mutex"), "/reset-leak/{kind}");
        assert_eq!(route_label("/leak-test"), "/leak-test");
        assert_eq!(route_label("/debug/pprof/heap"), "/debug/pprof/heap");
        assert_eq!(route_label("/swagger/index.html"), "/swagger/");
        assert_eq!(route_label("/start-leak/"), "unmatched");
        assert_eq!(route_label("/start-leak/a/b"), "unmatched");
        assert_eq!(route_label("/random/1234"), "unmatched");
    }
}
