//! `leakfinder fleet --pyroscope URL`: the leak detector over a whole fleet, on the profile
//! store it already runs. No pod is touched: every service's heap (and goroutine) profiles are
//! read back from Pyroscope, one push window at a time, and run through the same per-site
//! analysis and site rules as `leakfinder scan`.
//!
//! - [`plan`] says which services and windows to ask for (pure);
//! - [`client`] asks Pyroscope's query API over HTTP or HTTPS, with bounded, panic-free decoding
//!   (I/O);
//! - [`service`] folds one service's windows into its series as they arrive (a window's
//!   profile is dropped once folded, so memory is bounded per service), and keeps them between
//!   watch periods;
//! - [`report`] ranks and prints the findings, each with a `profilecli` query (pure);
//! - [`watch`] is `--every`: a scan per period that reads only the windows new since the last,
//!   exported as OTLP metrics (feature `otlp`, in `export`).
//!
//! Heap profiles are snapshots: merging a range *sums* them, so each query covers one push
//! window (`--window`, 15 s by default, the push interval of Pyroscope's agents).
//!
//! Exit codes, as for `scan`: 0 when nothing leaks, 1 when leaks are found (even if some
//! services failed), 2 on error (Pyroscope down, bad arguments, or services that failed with no
//! leak found elsewhere: a clean verdict is not given for what was not read).

pub mod client;
#[cfg(feature = "otlp")]
mod export;
pub mod plan;
pub mod report;
pub mod service;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use client::{Auth, Client, QueryError};
use plan::{PlanError, Range, Shard};
use report::{FleetReport, ServiceReport};
use service::Followed;

use crate::scan::parse_duration;
use crate::tls::{CaCertError, CaCerts};

/// The `fleet` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Pyroscope's base URL (`http://pyroscope:4040`, or `https://...`).
    #[arg(long, env = "LEAKFINDER_FLEET_PYROSCOPE")]
    pub pyroscope: String,
    /// Only services whose `service_name` this regular expression matches.
    #[arg(long, env = "LEAKFINDER_FLEET_SERVICES", value_parser = parse_regex)]
    pub services: Option<regex::Regex>,
    /// How far back from now to look (default 30m; `10m`, `3m30s`, `2h`). Not with --from/--to.
    #[arg(long, env = "LEAKFINDER_FLEET_SINCE", value_parser = parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// Start of the range: RFC 3339 or unix milliseconds.
    #[arg(long, value_parser = parse_time, requires = "to")]
    pub from: Option<i64>,
    /// End of the range: RFC 3339 or unix milliseconds.
    #[arg(long, value_parser = parse_time, requires = "from")]
    pub to: Option<i64>,
    /// One query per window per profile type: the agents' push interval (heap profiles are
    /// snapshots, and merging a longer range sums them).
    #[arg(long, env = "LEAKFINDER_FLEET_WINDOW", default_value = "15s", value_parser = parse_duration)]
    pub window: Duration,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Services scanned at once (1 to 256).
    #[arg(long, env = "LEAKFINDER_FLEET_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Scan only this instance's share of the services: `N/M` (1 <= N <= M).
    #[arg(long, env = "LEAKFINDER_FLEET_SHARD", default_value = "1/1", value_parser = parse_shard)]
    pub shard: Shard,
    /// A bearer token for Pyroscope (or a proxy in front of it).
    #[arg(
        long,
        env = "LEAKFINDER_FLEET_TOKEN",
        conflicts_with = "basic_auth",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Basic auth for Pyroscope, `user:password`.
    #[arg(long, env = "LEAKFINDER_FLEET_BASIC_AUTH", hide_env_values = true)]
    pub basic_auth: Option<String>,
    /// The tenant (`X-Scope-OrgID`).
    #[arg(long, env = "LEAKFINDER_FLEET_TENANT")]
    pub tenant: Option<String>,
    /// A PEM file of CA certificates to trust beside the system's roots, for an `https://`
    /// Pyroscope whose certificate a private CA signed.
    #[arg(long, env = "LEAKFINDER_FLEET_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Watch: every this long, until SIGTERM, read the windows new since the last period (the
    /// last --since of them make the analysis) and export the findings as OTLP metrics
    /// (`leakfinder_fleet_suspects`, `leakfinder_fleet_heap_growth_bytes_per_second`,
    /// `leakfinder_fleet_goroutine_growth_per_second`) to OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "LEAKFINDER_FLEET_EVERY", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Where watch mode exports its findings.
    #[command(flatten)]
    pub otlp: watch::OtlpArgs,
}

fn parse_regex(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|error| error.to_string())
}

fn parse_time(text: &str) -> Result<i64, String> {
    plan::parse_time(text).map_err(|error| error.to_string())
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    Shard::parse(text).map_err(|error| error.to_string())
}

/// Why a fleet scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The range or window does not work.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Listing the services failed.
    #[error("cannot list the services: {0}")]
    Listing(#[source] QueryError),
    /// `--basic-auth` is not `user:password`.
    #[error("--basic-auth must be user:password")]
    BasicAuth,
    /// `--ca-cert` cannot be used.
    #[error(transparent)]
    CaCert(#[from] CaCertError),
    /// The client could not be built.
    #[error(transparent)]
    Client(QueryError),
    /// No service pushed in the range.
    #[error("Pyroscope lists no service in the range{}", .tenant.as_deref().map(|t| format!(" for tenant {t:?} (is the tenant right?)")).unwrap_or_default())]
    NoServices {
        /// The tenant asked for.
        tenant: Option<String>,
    },
    /// Services exist, but none is this instance's.
    #[error("none of the {listed} services matches --services and --shard")]
    NoneSelected {
        /// Services listed.
        listed: usize,
    },
}

impl FleetArgs {
    /// The client these arguments describe.
    pub fn client(&self) -> Result<Client, FleetError> {
        let auth = match (&self.token, &self.basic_auth) {
            (Some(token), _) => Auth::Bearer(token.clone()),
            (None, Some(pair)) => {
                let (user, password) = pair.split_once(':').ok_or(FleetError::BasicAuth)?;
                Auth::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                }
            }
            (None, None) => Auth::None,
        };
        let tenant = self.tenant.clone().filter(|t| !t.is_empty());
        let ca_certs = CaCerts::read(self.ca_cert.as_deref())?;
        Client::new(&self.pyroscope, auth, tenant, &ca_certs).map_err(FleetError::Client)
    }

    /// The range to scan, with "now" passed in for `--since`.
    pub fn range(&self, now_ms: i64) -> Result<Range, PlanError> {
        match (self.from, self.to) {
            (Some(from), Some(to)) => Range::new(from, to, self.window),
            _ => Range::since(now_ms, self.since(), self.window),
        }
    }

    /// The range of a later watch period: as [`Self::range`], its windows on the grid of the
    /// first period's (`phase`, one of its window starts), so periods share their windows.
    pub fn range_on_grid(&self, now_ms: i64, phase: i64) -> Result<Range, PlanError> {
        match (self.from, self.to) {
            (Some(from), Some(to)) => Range::new(from, to, self.window),
            _ => Range::since_on_grid(now_ms, self.since(), self.window, phase),
        }
    }

    fn since(&self) -> Duration {
        self.since.unwrap_or(Duration::from_secs(30 * 60))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// Runs `leakfinder fleet` and returns its exit code.
pub fn run(args: &FleetArgs) -> ExitCode {
    if let Some(every) = args.every {
        return watch::run(args, every);
    }
    let outcome = args
        .client()
        .and_then(|client| scan_fleet(&client, args, &args.range(now_ms())?));
    match outcome {
        Ok(report) => {
            print(&report, args.json);
            if report.leaks() > 0 {
                ExitCode::from(1)
            } else if report.errors() > 0 {
                eprintln!(
                    "leakfinder fleet: {} service(s) could not be scanned",
                    report.errors()
                );
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("leakfinder fleet: {error}");
            ExitCode::from(2)
        }
    }
}

fn print(report: &FleetReport, json: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if json {
        let json = serde_json::to_string(report).expect("the report serialises");
        let _ = writeln!(stdout, "{json}");
    } else {
        let _ = write!(stdout, "{}", report::render(report));
    }
}

/// Lists the services, scans this instance's share of them over the whole `range` on a pool of
/// `--concurrency` workers, and ranks the outcome.
pub fn scan_fleet(
    client: &Client,
    args: &FleetArgs,
    range: &Range,
) -> Result<FleetReport, FleetError> {
    scan_range(client, args, range, None)
}

/// [`scan_fleet`] that, given `followed` (each service's state of earlier periods), asks only
/// for windows not read yet and leaves there the state of every service scanned without error (a
/// service that failed starts afresh next time). Without it, each service's series is dropped
/// as soon as it is scanned.
pub fn scan_range(
    client: &Client,
    args: &FleetArgs,
    range: &Range,
    mut followed: Option<&mut BTreeMap<String, Followed>>,
) -> Result<FleetReport, FleetError> {
    let queries_before = client.queries();
    let listed = client
        .label_values("service_name", &[], range.from, range.to)
        .map_err(FleetError::Listing)?;
    if listed.is_empty() {
        return Err(FleetError::NoServices {
            tenant: client.tenant().map(str::to_owned),
        });
    }
    let services = plan::select(&listed, args.services.as_ref(), args.shard);
    if services.is_empty() {
        return Err(FleetError::NoneSelected {
            listed: listed.len(),
        });
    }
    // Services no longer listed are forgotten; new ones start with an empty series.
    let keep = followed.is_some();
    let mut kept = followed
        .as_deref_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let work: Vec<(String, Option<Followed>)> = services
        .into_iter()
        .map(|service| {
            let state = kept.remove(&service);
            (service, state)
        })
        .collect();
    let workers = usize::from(args.concurrency);
    let mut reports = Vec::with_capacity(work.len());
    for (report, state) in scan_services(client, work, range, workers, keep) {
        if let (Some(followed), Some(state)) = (followed.as_deref_mut(), state) {
            followed.insert(report.service.clone(), state);
        }
        reports.push(report);
    }
    let mut report = FleetReport {
        pyroscope: client.base().to_owned(),
        from: plan::format_rfc3339(range.from),
        to: plan::format_rfc3339(range.to),
        window_seconds: range.window.as_secs_f64(),
        listed: listed.len(),
        services: reports,
        queries: client.queries() - queries_before,
    };
    report.rank();
    Ok(report)
}

/// Scans `services` (each with its state of earlier periods, if any) on `workers` threads, each
/// taking the next service when done with one. Returns each service's report and, with `keep`,
/// its state (`None` when it failed).
pub fn scan_services(
    client: &Client,
    services: Vec<(String, Option<Followed>)>,
    range: &Range,
    workers: usize,
    keep: bool,
) -> Vec<(ServiceReport, Option<Followed>)> {
    let workers = workers.clamp(1, services.len().max(1));
    let capacity = range.windows().len();
    let queue = Mutex::new(services.into_iter());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let sender = sender.clone();
            let queue = &queue;
            scope.spawn(move || {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some((service, state)) = next else {
                        return;
                    };
                    let state = state.unwrap_or_else(|| Followed::new(range.from, capacity));
                    let (report, state) = scan_one(client, service, state, range);
                    // Dropped here, not held to the end, when nothing follows.
                    let state = state.filter(|_| keep);
                    if sender.send((report, state)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    drop(sender);
    receiver.into_iter().collect()
}

fn scan_one(
    client: &Client,
    service: String,
    mut state: Followed,
    range: &Range,
) -> (ServiceReport, Option<Followed>) {
    match state.update(client, &service, range) {
        Ok(()) => {
            let findings = state
                .series()
                .findings()
                .into_iter()
                .map(|finding| {
                    report::locate(
                        finding,
                        &service,
                        state.series(),
                        client.base(),
                        client.tenant(),
                    )
                })
                .collect();
            let (heap_windows, goroutine_windows) = state.series().windows();
            let report = ServiceReport {
                service,
                findings,
                heap_windows,
                goroutine_windows,
                error: None,
            };
            (report, Some(state))
        }
        Err(error) => {
            let report = ServiceReport {
                service,
                findings: Vec::new(),
                heap_windows: 0,
                goroutine_windows: 0,
                error: Some(error.to_string()),
            };
            (report, None)
        }
    }
}
