//! Building and running the application: bind (port 0 works), report the real address, serve
//! until a shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::Server;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use tokio_util::sync::CancellationToken;

use leakfinder_http::{Access, Pprof};
use leakfinder_profiling::Profilers;

use crate::api;
use crate::config::{Config, LeakSettings};
use crate::leaks::Leaks;
use crate::leaks::benign::WarmupCache;
use crate::process::MemoryGauge;
use crate::telemetry::TelemetryGuard;
use crate::telemetry::metrics::instrument;
use crate::watch::{self, LeakWatch};

/// How long in-flight requests get to finish once shutdown begins.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the request handlers share.
pub struct AppState {
    /// The three leaks.
    pub leaks: Leaks,
    /// The benign warm-up cache, which the detector must not report.
    pub benign: WarmupCache,
    /// The process's profilers.
    pub profilers: Arc<Profilers>,
    /// `/debug/pprof`, over the same profilers, for the peers the configuration admits.
    pub pprof: Pprof,
    /// The continuous leak watch behind `/leak-report`.
    pub watch: Arc<LeakWatch>,
    /// The process's memory figures, cached for `/leak-test`.
    pub memory: MemoryGauge,
    /// What the profile push has sent and dropped, for the exported metrics.
    pub profile_push: Arc<leakfinder_profiling::push::PushStats>,
    /// Cancelled at shutdown; background work started on request hangs off it.
    pub shutdown: CancellationToken,
}

/// How old `/leak-test`'s memory figures may be.
pub const MEMORY_MAX_AGE: Duration = Duration::from_millis(100);

impl AppState {
    /// The state of a fresh application whose background work stops when `shutdown` is cancelled.
    pub fn new(
        settings: LeakSettings,
        watch_interval: Duration,
        pprof_access: Access,
        shutdown: &CancellationToken,
    ) -> Self {
        // Profiles show this crate's files as `src/...`, so `go tool pprof -list` finds them in
        // a checkout.
        let profilers =
            Arc::new(Profilers::start(shutdown).with_source_root(env!("CARGO_MANIFEST_DIR")));
        Self {
            leaks: Leaks::new(settings, shutdown.child_token()),
            benign: WarmupCache::default(),
            pprof: Pprof::with_access(Arc::clone(&profilers), pprof_access),
            profilers,
            watch: Arc::new(LeakWatch::new(watch_interval)),
            memory: MemoryGauge::new(MEMORY_MAX_AGE),
            profile_push: Arc::default(),
            shutdown: shutdown.clone(),
        }
    }
}

/// A bound, not yet serving, application.
pub struct Application {
    acceptor: TcpAcceptor,
    addr: SocketAddr,
    state: Arc<AppState>,
    telemetry: TelemetryGuard,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds the configured address. Nothing is served until [`Application::run_until_stopped`].
    pub async fn build(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let settings = config.leak_settings()?;
        let acceptor = TcpListener::bind(config.addr)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .context("the TCP listener reports no local address")?;
        let watch_interval = Duration::from_millis(config.leak_report_interval_ms);
        let state = Arc::new(AppState::new(
            settings,
            watch_interval,
            config.pprof_access(),
            &shutdown,
        ));
        watch::spawn(
            Arc::clone(&state.watch),
            Arc::clone(&state.profilers),
            shutdown.child_token(),
        );
        let telemetry = TelemetryGuard::start(config, &state)?;
        Ok(Self {
            acceptor,
            addr,
            state,
            telemetry,
            shutdown,
        })
    }

    /// The address actually bound: with port 0, the port the kernel picked.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the shutdown token is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            acceptor,
            addr,
            state,
            telemetry,
            shutdown,
        } = self;
        tracing::info!(
            %addr,
            url = %format!("http://{addr}/"),
            swagger = %format!("http://{addr}/swagger/"),
            pprof = %format!("http://{addr}/debug/pprof/"),
            "leakfinder listening; no leak is active yet"
        );
        let routes = instrument(api::routes(state), telemetry.http_metrics());
        let served = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(routes, shutdown.cancelled_owned(), Some(GRACEFUL_TIMEOUT))
            .await
            .context("the HTTP server failed");
        tokio::task::spawn_blocking(move || drop(telemetry))
            .await
            .context("flushing telemetry failed")?;
        tracing::info!("leakfinder stopped");
        served
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}
