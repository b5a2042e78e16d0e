//! Watch mode's findings as OTLP metrics (feature `otlp`): gauges read from the latest scan at
//! each export, cumulative, over OTLP/HTTP with `service.name` set.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use super::report::ServiceReport;
use super::watch::{OtlpArgs, OtlpProtocol};

/// An export that takes longer is abandoned (the next one carries the latest findings again).
/// Below the SDK's fixed 5 s shutdown wait, so the last export can still finish.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The running export.
pub struct Export {
    provider: SdkMeterProvider,
}

impl Export {
    /// Exports the gauges of `latest` to `url` every `otlp.metric_export_interval_ms`.
    pub fn start(
        url: &str,
        otlp: &OtlpArgs,
        latest: &Arc<RwLock<Vec<ServiceReport>>>,
    ) -> Result<Self, String> {
        let protocol = match otlp.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        // The exporter builds its own reqwest client, which needs a crypto provider.
        crate::tls::install_crypto_provider();
        let mut exporter = MetricExporter::builder()
            .with_http()
            .with_endpoint(url.to_owned())
            .with_protocol(protocol)
            .with_temporality(Temporality::Cumulative);
        if std::env::var_os("OTEL_EXPORTER_OTLP_TIMEOUT").is_none() {
            exporter = exporter.with_timeout(EXPORT_TIMEOUT);
        }
        let exporter = exporter.build().map_err(|error| error.to_string())?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(Duration::from_millis(otlp.metric_export_interval_ms))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(
                Resource::builder()
                    .with_service_name(otlp.service_name.clone())
                    .build(),
            )
            .build();
        register(&provider.meter("leakfinder.fleet"), latest);
        Ok(Self { provider })
    }

    /// Exports one last time and stops.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("leakfinder fleet: the last metric export failed: {error}");
        }
    }
}

/// The fleet gauges, read from `latest` at each export.
fn register(meter: &Meter, latest: &Arc<RwLock<Vec<ServiceReport>>>) {
    let read = |latest: &Arc<RwLock<Vec<ServiceReport>>>| {
        latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    };
    let state = Arc::clone(latest);
    meter
        .u64_observable_gauge("leakfinder.fleet.suspects")
        .with_unit("{site}")
        .with_description("Leaking sites the fleet scan found, one per service and function.")
        .with_callback(move |gauge| {
            for service in read(&state) {
                for located in &service.findings {
                    gauge.observe(
                        1,
                        &[
                            KeyValue::new("service", service.service.clone()),
                            KeyValue::new("function", located.finding.function.clone()),
                            KeyValue::new("kind", located.finding.kind.clone()),
                        ],
                    );
                }
            }
        })
        .build();
    for (name, unit, description, measured) in [
        (
            "leakfinder.fleet.heap_growth",
            "By/s",
            "Growth of each leaking heap site the fleet scan found.",
            "bytes",
        ),
        (
            "leakfinder.fleet.goroutine_growth",
            "{goroutine}/s",
            "Growth of each leaking goroutine (task) site the fleet scan found.",
            "tasks",
        ),
    ] {
        let state = Arc::clone(latest);
        meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |gauge| {
                for service in read(&state) {
                    for located in service
                        .findings
                        .iter()
                        .filter(|located| located.finding.unit == measured)
                    {
                        gauge.observe(
                            located.finding.rate_per_second,
                            &[
                                KeyValue::new("service", service.service.clone()),
                                KeyValue::new("function", located.finding.function.clone()),
                            ],
                        );
                    }
                }
            })
            .build();
    }
    let state = Arc::clone(latest);
    meter
        .u64_observable_gauge("leakfinder.fleet.failed_services")
        .with_unit("{service}")
        .with_description("Services the latest fleet scan could not read.")
        .with_callback(move |gauge| {
            let failed = read(&state).iter().filter(|s| s.error.is_some()).count();
            gauge.observe(failed as u64, &[]);
        })
        .build();
}
