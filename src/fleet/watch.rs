//! `leakfinder fleet --every 5m`: a long-running job that scans the fleet once per period and
//! exports the latest findings as OTLP metrics, so Prometheus alerts and Grafana get a fleet row:
//!
//! - `leakfinder.fleet.suspects{service, function, kind}` (Prometheus:
//!   `leakfinder_fleet_suspects`): 1 for each leaking site;
//! - `leakfinder.fleet.heap_growth{service, function}` in By/s
//!   (`leakfinder_fleet_heap_growth_bytes_per_second`) and `leakfinder.fleet.goroutine_growth`
//!   in {goroutine}/s (`leakfinder_fleet_goroutine_growth_per_second`): each site's rate;
//! - `leakfinder.fleet.failed_services`: services the latest scan could not read.
//!
//! Each period scans the `--since` range ending then. It stops on SIGTERM or SIGINT, after one
//! last export.

use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider};
use tokio_util::sync::CancellationToken;

use super::report::ServiceReport;
use super::{FleetArgs, now_ms, print, scan_fleet};
use crate::config::Config;

/// The latest scan's outcome, read by the metric callbacks at each export.
#[derive(Default)]
struct Latest {
    services: Vec<ServiceReport>,
}

/// Runs the watch until SIGTERM or SIGINT.
pub fn run(args: &FleetArgs, every: Duration, config: &Config) -> ExitCode {
    match watch(args, every, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("leakfinder fleet: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn watch(args: &FleetArgs, every: Duration, config: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = args.client()?;
    let latest = Arc::new(RwLock::new(Latest::default()));
    let provider = match config.otlp_metrics_url() {
        Some(url) => {
            let provider = crate::telemetry::metrics::meter_provider(
                &url,
                config.otlp_protocol,
                config.metric_export_interval(),
                &config.service_name,
            )?;
            register(&provider.meter("leakfinder.fleet"), &latest);
            eprintln!("leakfinder fleet: exporting findings to {url}");
            Some(provider)
        }
        None => {
            eprintln!("leakfinder fleet: no OTEL_EXPORTER_OTLP_ENDPOINT: printing findings only");
            None
        }
    };
    // One small runtime only for the signal and the waits; the scans run on this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the runtime that waits for signals")?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    runtime.spawn(async move {
        if let Ok(signal) = crate::app::shutdown_signal().await {
            eprintln!("leakfinder fleet: {signal}: stopping");
        }
        on_signal.cancel();
    });
    while !stop.is_cancelled() {
        let started = Instant::now();
        let outcome = args
            .range(now_ms())
            .map_err(super::FleetError::from)
            .and_then(|range| scan_fleet(&client, args, &range));
        match outcome {
            Ok(report) => {
                print(&report, args.json);
                latest
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .services = report.services;
            }
            // Pyroscope down: said, and the previous findings stay exported until it is back.
            Err(error) => eprintln!("leakfinder fleet: this scan failed: {error}"),
        }
        let rest = every.saturating_sub(started.elapsed());
        let stop = stop.clone();
        runtime.block_on(async move {
            tokio::select! {
                () = tokio::time::sleep(rest) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    if let Some(provider) = provider
        && let Err(error) = provider.shutdown()
    {
        eprintln!("leakfinder fleet: the last metric export failed: {error}");
    }
    Ok(())
}

/// The fleet gauges, read from `latest` at each export.
fn register(meter: &Meter, latest: &Arc<RwLock<Latest>>) {
    let read = |latest: &Arc<RwLock<Latest>>| {
        latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .services
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
