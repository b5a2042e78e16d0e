//! `leakfinder fleet --every 5m`: a long-running job that scans the fleet once per period and
//! exports the latest findings as OTLP metrics (feature `otlp`), so Prometheus alerts and
//! Grafana get a fleet row:
//!
//! - `leakfinder.fleet.suspects{service, function, kind}` (Prometheus:
//!   `leakfinder_fleet_suspects`): 1 for each leaking site;
//! - `leakfinder.fleet.heap_growth{service, function}` in By/s
//!   (`leakfinder_fleet_heap_growth_bytes_per_second`) and `leakfinder.fleet.goroutine_growth`
//!   in {goroutine}/s (`leakfinder_fleet_goroutine_growth_per_second`): each site's rate;
//! - `leakfinder.fleet.failed_services`: services the latest scan could not read.
//!
//! [`Watch`] keeps each service's series between periods, so a period reads only the windows
//! new since the last (a `--since 10m` watch every 5 minutes reads 20 windows per service, not
//! 40), and the series hold the latest `--since` of them. It stops on SIGTERM or SIGINT, after
//! one last export.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::client::Client;
use super::report::{FleetReport, ServiceReport};
use super::service::Followed;
use super::{FleetArgs, FleetError, now_ms, print, scan_range};

/// Where watch mode exports, read as OpenTelemetry's SDKs read it.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// With --every: OTLP base endpoint (`/v1/metrics` is appended), e.g.
    /// `http://prometheus:9090/api/v1/otlp`. No export when neither this nor the metrics
    /// endpoint is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// With --every: OTLP metrics endpoint, used as given (it wins over the base endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otlp_metrics_endpoint: Option<String>,
    /// With --every: `http/protobuf` or `http/json` (gRPC is not built in).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: OtlpProtocol,
    /// With --every: milliseconds between two metric exports.
    #[arg(
        long,
        env = "OTEL_METRIC_EXPORT_INTERVAL",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000),
    )]
    pub metric_export_interval_ms: u64,
    /// With --every: the `service.name` of the exported metrics.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "leakfinder-fleet")]
    pub service_name: String,
}

/// The OTLP encodings watch mode can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (the default).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP.
    #[value(name = "http/json")]
    HttpJson,
}

impl OtlpArgs {
    /// Where metrics go, if anywhere: the metrics endpoint as given, else the base endpoint with
    /// `/v1/metrics` appended, as the OpenTelemetry specification says. Empty means unset.
    pub fn metrics_url(&self) -> Option<String> {
        let non_empty = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        non_empty(&self.otlp_metrics_endpoint).or_else(|| {
            non_empty(&self.otlp_endpoint)
                .map(|base| format!("{}/v1/metrics", base.trim_end_matches('/')))
        })
    }
}

/// Why watch mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The arguments do not make a client.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// An OTLP endpoint is set, but this build cannot export.
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT is set ({url}) but this leakfinder was built without OTLP export (cargo feature `otlp`): rebuild with it, or unset the endpoint to only print"
    )]
    NoOtlp {
        /// The endpoint asked for.
        url: String,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot export to {url}: {reason}")]
    Export {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// The runtime that waits for signals could not start.
    #[error("cannot wait for SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
}

/// A fleet followed period after period: each service's series, kept between periods.
#[derive(Debug, Default)]
pub struct Watch {
    /// The first period's range start: every period's windows are on its grid.
    phase: Option<i64>,
    followed: BTreeMap<String, Followed>,
}

impl Watch {
    /// A watch that has read nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One period at `now_ms`: lists the services, reads for each the windows of the `--since`
    /// range ending now that it has not read yet, and reports on its series (the latest
    /// `--since` of windows). Its `queries` are this period's.
    pub fn period(
        &mut self,
        client: &Client,
        args: &FleetArgs,
        now_ms: i64,
    ) -> Result<FleetReport, FleetError> {
        let range = match self.phase {
            None => args.range(now_ms)?,
            Some(phase) => args.range_on_grid(now_ms, phase)?,
        };
        self.phase.get_or_insert(range.from);
        scan_range(client, args, &range, Some(&mut self.followed))
    }

    /// Services followed now.
    pub fn services(&self) -> usize {
        self.followed.len()
    }
}

/// Runs the watch until SIGTERM or SIGINT.
pub fn run(args: &FleetArgs, every: Duration) -> ExitCode {
    match watch(args, every) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("leakfinder fleet: {error}");
            ExitCode::from(2)
        }
    }
}

fn watch(args: &FleetArgs, every: Duration) -> Result<(), WatchError> {
    let client = args.client()?;
    let latest: Arc<RwLock<Vec<ServiceReport>>> = Arc::default();
    let export = start_export(&args.otlp, &latest)?;
    // A small runtime only for the signals and the waits; the scans run on this thread. The
    // signal handlers are set before the first scan, so a SIGTERM during one is not lost.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WatchError::Signals)?;
    let mut signals = runtime
        .block_on(async { Signals::new() })
        .map_err(WatchError::Signals)?;
    let mut watch = Watch::new();
    loop {
        let started = Instant::now();
        match watch.period(&client, args, now_ms()) {
            Ok(report) => {
                print(&report, args.json);
                *latest.write().unwrap_or_else(PoisonError::into_inner) = report.services;
            }
            // Pyroscope down: said, and the previous findings stay exported until it is back.
            Err(error) => eprintln!("leakfinder fleet: this scan failed: {error}"),
        }
        let rest = every.saturating_sub(started.elapsed());
        if let Some(signal) = runtime.block_on(signals.within(rest)) {
            eprintln!("leakfinder fleet: {signal}: stopping");
            break;
        }
    }
    drop(runtime);
    if let Some(export) = export {
        export.shutdown();
    }
    Ok(())
}

/// The running export; dropping it without [`Export::shutdown`] loses the last export.
#[cfg(feature = "otlp")]
type Export = super::export::Export;

#[cfg(feature = "otlp")]
fn start_export(
    otlp: &OtlpArgs,
    latest: &Arc<RwLock<Vec<ServiceReport>>>,
) -> Result<Option<Export>, WatchError> {
    let Some(url) = otlp.metrics_url() else {
        eprintln!("leakfinder fleet: no OTEL_EXPORTER_OTLP_ENDPOINT: printing findings only");
        return Ok(None);
    };
    let export = Export::start(&url, otlp, latest).map_err(|reason| WatchError::Export {
        url: url.clone(),
        reason,
    })?;
    eprintln!("leakfinder fleet: exporting findings to {url}");
    Ok(Some(export))
}

/// Without the `otlp` feature nothing can export: an endpoint set is an error, not ignored.
#[cfg(not(feature = "otlp"))]
enum Export {}

#[cfg(not(feature = "otlp"))]
impl Export {
    fn shutdown(self) {
        match self {}
    }
}

#[cfg(not(feature = "otlp"))]
fn start_export(
    otlp: &OtlpArgs,
    _latest: &Arc<RwLock<Vec<ServiceReport>>>,
) -> Result<Option<Export>, WatchError> {
    match otlp.metrics_url() {
        Some(url) => Err(WatchError::NoOtlp { url }),
        None => {
            eprintln!("leakfinder fleet: built without OTLP export: printing findings only");
            Ok(None)
        }
    }
}

/// SIGTERM and SIGINT, registered once.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers (inside the runtime).
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The signal that arrived within `wait`, if one did.
    async fn within(&mut self, wait: Duration) -> Option<&'static str> {
        let sleep = tokio::time::sleep(wait);
        #[cfg(unix)]
        {
            tokio::select! {
                () = sleep => None,
                _ = self.terminate.recv() => Some("SIGTERM"),
                _ = self.interrupt.recv() => Some("SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::select! {
                () = sleep => None,
                _ = tokio::signal::ctrl_c() => Some("ctrl-c"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        otlp: OtlpArgs,
    }

    fn otlp(args: &[&str]) -> OtlpArgs {
        Cli::try_parse_from(std::iter::once("fleet").chain(args.iter().copied()))
            .unwrap()
            .otlp
    }

    #[test]
    fn the_otlp_endpoint_resolves_as_the_specification_says() {
        let base = otlp(&["--otlp-endpoint", "http://prom:9090/api/v1/otlp/"]);
        assert_eq!(
            base.metrics_url().as_deref(),
            Some("http://prom:9090/api/v1/otlp/v1/metrics")
        );
        let both = otlp(&[
            "--otlp-endpoint",
            "http://a",
            "--otlp-metrics-endpoint",
            "http://b/custom",
        ]);
        assert_eq!(both.metrics_url().as_deref(), Some("http://b/custom"));
        assert_eq!(otlp(&["--otlp-endpoint", " "]).metrics_url(), None);
        assert_eq!(
            otlp(&["--otlp-protocol", "http/json"]).otlp_protocol,
            OtlpProtocol::HttpJson
        );
    }
}
