//! Continuous profiles pushed to Pyroscope from one thread: the CPU sampler's windows (the same
//! windows `/debug/pprof/profile` serves), and the heap and task profiles `/debug/pprof/heap` and
//! `/debug/pprof/goroutine` serve (the task profile as Pyroscope's `goroutine` type, so a Rust
//! service's task leak shows beside Go services' goroutines), over Pyroscope's own push API
//! (`push.v1.PusherService/Push`, encoded with the `pyroscope` crate's protocol types), over
//! `http://` or `https://`, with the tenant (`X-Scope-OrgID`) and credentials (basic auth or a
//! bearer token) of [`PushSettings`], which are never logged.
//!
//! - **Snapshots never closer than the heap interval.** Heap and task profiles are snapshots, and
//!   Pyroscope adds up the snapshots of a range: two in one window read double. Every snapshot is
//!   stamped with the time it was due, and the last push at shutdown takes one only if the
//!   previous is at least an interval old (its CPU windows are always pushed).
//! - **Labels Pyroscope keeps** ([`labels`]): numeric sample labels are dropped by Pyroscope, so
//!   the pushed copies carry a numeric `age` as a coarse string and drop the other numbers.
//! - **Allocations as deltas** ([`deltas`]): each heap push's `alloc_*` values are what was
//!   allocated since the previous push (series label `__delta__="false"`), as Go's agent sends
//!   them; the last push at shutdown always carries the allocations since the previous one, with
//!   in-use values only when they cannot share a window with the previous snapshot.
//!
//! What the `pyroscope` crate's agent, used before, did not do:
//! - **Nothing is lost to an outage.** A push that fails stays in a queue bounded by count and
//!   bytes ([`QUEUE_PROFILES`], [`QUEUE_BYTES`]; the oldest is dropped first and counted in
//!   [`PushStats::dropped`], exported as `leakfinder.profiles.dropped`) and is retried, oldest
//!   first, with backoff; once the server is back, the whole outage arrives.
//! - **Nothing is lost at shutdown.** [`ProfilePush::finish`] pushes the windows since the last
//!   push and a last heap profile, with whatever is queued, by the shutdown deadline, and logs
//!   it. (The agent's stop waited for its timer's next tick, up to a whole interval, so every
//!   deploy lost its last window.)
//! - **Plain label names.** `__name__`, `service_name`, `service_version`: the agent's dotted
//!   names (`otel.scope.name`, ...) are hidden by Pyroscope 2's label APIs unless a client asks
//!   for UTF-8 names.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use pyroscope::encode::r#gen::push::{PushRequest, RawProfileSeries, RawSample};
use pyroscope::encode::r#gen::types::LabelPair;
use tokio::sync::broadcast;

pub mod deltas;
pub mod labels;

use crate::Profilers;
use crate::cpu::{self, CpuWindow, DemandGuard};
use crate::heap;
use crate::tasks;
use leakfinder_pprof::{Profile, encode_gzip, gzip};

/// Pyroscope's name of the CPU profile type (`process_cpu:cpu:nanoseconds:cpu:nanoseconds`).
pub const CPU_PROFILE: &str = "process_cpu";
/// Pyroscope's name of the heap profile type (`memory:inuse_space:bytes:space:bytes`).
pub const HEAP_PROFILE: &str = "memory";
/// Pyroscope's name of the goroutine profile type (`goroutine:goroutine:count:goroutine:count`),
/// which the task profile is pushed as.
pub const GOROUTINE_PROFILE: &str = "goroutine";
/// Where pushes go, under the server's address.
pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// The most profiles kept for retry: six minutes of an outage at the default intervals.
pub const QUEUE_PROFILES: usize = 64;
/// The most bytes kept for retry (compressed pushes).
pub const QUEUE_BYTES: usize = 4 << 20;
/// The longest one push may take outside shutdown.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the last push waits for the sampler's last, partial window (it publishes it within
/// 50 ms of the shutdown).
const LAST_WINDOW_WAIT: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the pusher has done, for the exported metrics.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Profiles dropped: the oldest when the queue was full, or one the server refused as bad.
    pub dropped: AtomicU64,
    /// Profiles waiting in the queue now.
    pub queued: AtomicU64,
}

/// The running pusher. [`Self::finish`] asks for the last push; [`Self::join`] waits for it.
/// Dropping it does both, giving the last push [`DROP_DEADLINE`].
pub struct ProfilePush {
    finish: mpsc::Sender<Instant>,
    thread: Option<JoinHandle<()>>,
}

/// The time a dropped [`ProfilePush`] gives its last push.
pub const DROP_DEADLINE: Duration = Duration::from_secs(2);
/// The default interval of CPU pushes.
pub const DEFAULT_CPU_EVERY: Duration = Duration::from_secs(10);
/// The default interval of heap pushes.
pub const DEFAULT_HEAP_EVERY: Duration = Duration::from_secs(15);
/// The environment variable [`ProfilePush::from_env`] reads Pyroscope's URL from.
pub const SERVER_ADDRESS_ENV: &str = "PYROSCOPE_SERVER_ADDRESS";
/// The tenant, sent as `X-Scope-OrgID` (as Pyroscope's Java agent reads it).
pub const TENANT_ID_ENV: &str = "PYROSCOPE_TENANT_ID";
/// The basic auth user (with [`BASIC_AUTH_PASSWORD_ENV`]).
pub const BASIC_AUTH_USER_ENV: &str = "PYROSCOPE_BASIC_AUTH_USER";
/// The basic auth password (with [`BASIC_AUTH_USER_ENV`]).
pub const BASIC_AUTH_PASSWORD_ENV: &str = "PYROSCOPE_BASIC_AUTH_PASSWORD";
/// A bearer token.
pub const AUTH_TOKEN_ENV: &str = "PYROSCOPE_AUTH_TOKEN";

/// How pushes authenticate. Its `Debug` shows the kind, never the secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum PushAuth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Basic ...` of `user:password`.
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: <hidden> }}"),
            Self::Bearer(_) => f.write_str("Bearer(<hidden>)"),
        }
    }
}

/// Credentials that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Only one half of basic auth is set.
    #[error(
        "{BASIC_AUTH_USER_ENV} and {BASIC_AUTH_PASSWORD_ENV} go together: set both, or neither"
    )]
    HalfBasic,
    /// Both basic auth and a bearer token are set.
    #[error("set {AUTH_TOKEN_ENV} or {BASIC_AUTH_USER_ENV}/{BASIC_AUTH_PASSWORD_ENV}, not both")]
    Both,
}

impl PushAuth {
    /// The credentials of a user and password (basic auth) or a token (bearer); empty values
    /// count as unset.
    pub fn from_parts(
        user: Option<&str>,
        password: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, AuthError> {
        let set = |value: Option<&str>| value.filter(|value| !value.is_empty()).map(str::to_owned);
        match (set(user), set(password), set(token)) {
            (None, None, None) => Ok(Self::None),
            (None, None, Some(token)) => Ok(Self::Bearer(token)),
            (Some(user), Some(password), None) => Ok(Self::Basic { user, password }),
            (Some(_), Some(_), Some(_)) => Err(AuthError::Both),
            _ => Err(AuthError::HalfBasic),
        }
    }

    /// The kind, for logs: `none`, `basic` or `bearer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic { .. } => "basic",
            Self::Bearer(_) => "bearer",
        }
    }

    /// The settings to check when Pyroscope refuses the credentials.
    fn what_to_check(&self) -> String {
        match self {
            Self::None => format!(
                "it wants credentials: set {AUTH_TOKEN_ENV}, or {BASIC_AUTH_USER_ENV} and {BASIC_AUTH_PASSWORD_ENV}"
            ),
            Self::Basic { .. } => {
                format!("check {BASIC_AUTH_USER_ENV} and {BASIC_AUTH_PASSWORD_ENV}")
            }
            Self::Bearer(_) => format!("check {AUTH_TOKEN_ENV}"),
        }
    }
}

/// Where and how often to push, as whom, and the labels every profile carries.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Pyroscope's base URL (`http://pyroscope:4040`), without a trailing slash.
    pub url: String,
    /// The `service_name` label: the application in Pyroscope's UI.
    pub service_name: String,
    /// The `service_version` label (left out when empty).
    pub service_version: String,
    /// How often CPU windows are pushed.
    pub cpu_every: Duration,
    /// How often heap and task profiles are taken and pushed.
    pub heap_every: Duration,
    /// The tenant (`X-Scope-OrgID`), for a multi-tenant Pyroscope.
    pub tenant_id: Option<String>,
    /// The credentials (never logged).
    pub auth: PushAuth,
}

impl PushSettings {
    /// Pushes to `url` as `service_name`, CPU every 10 s and heap every 15 s, with no version,
    /// tenant or credentials.
    pub fn new(url: &str, service_name: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            service_name: service_name.to_owned(),
            service_version: String::new(),
            cpu_every: DEFAULT_CPU_EVERY,
            heap_every: DEFAULT_HEAP_EVERY,
            tenant_id: None,
            auth: PushAuth::None,
        }
    }

    /// [`Self::new`] for [`SERVER_ADDRESS_ENV`] when it is set and not empty, with the tenant
    /// and credentials of [`TENANT_ID_ENV`], [`BASIC_AUTH_USER_ENV`] and
    /// [`BASIC_AUTH_PASSWORD_ENV`], or [`AUTH_TOKEN_ENV`] (the variables Pyroscope's Java agent
    /// reads); `None` without a server address.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, AuthError> {
        let var = |name: &str| std::env::var(name).ok();
        let Some(url) = var(SERVER_ADDRESS_ENV).filter(|url| !url.trim().is_empty()) else {
            return Ok(None);
        };
        let mut settings = Self::new(url.trim(), service_name);
        settings.tenant_id = var(TENANT_ID_ENV).filter(|tenant| !tenant.is_empty());
        settings.auth = PushAuth::from_parts(
            var(BASIC_AUTH_USER_ENV).as_deref(),
            var(BASIC_AUTH_PASSWORD_ENV).as_deref(),
            var(AUTH_TOKEN_ENV).as_deref(),
        )?;
        Ok(Some(settings))
    }
}

/// `url` without credentials in it (`https://user:secret@host` logs as `https://host`).
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl ProfilePush {
    /// Starts pushing as [`PushSettings::from_env`] says (`PYROSCOPE_SERVER_ADDRESS`, Pyroscope's
    /// base URL, and the tenant and credentials beside it) as `service_name`, if the address is
    /// set and not empty; `None` otherwise. Keep the value alive while the service runs: dropping
    /// it pushes the last profiles.
    pub fn from_env(
        service_name: &str,
        profilers: &Arc<Profilers>,
    ) -> std::io::Result<Option<Self>> {
        match PushSettings::from_env(service_name) {
            Ok(Some(settings)) => Self::start(settings, profilers, Arc::default()).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, error)),
        }
    }

    /// Starts the push thread: CPU windows from `profilers`' sampler (held in demand while the
    /// push runs), heap and task profiles, symbolised by `profilers`' symboliser, counted in
    /// `stats`.
    pub fn start(
        settings: PushSettings,
        profilers: &Arc<Profilers>,
        stats: Arc<PushStats>,
    ) -> std::io::Result<Self> {
        let cpu = profilers
            .cpu
            .as_ref()
            .map(|sampler| (sampler.subscribe(), sampler.demand()));
        if cpu.is_none() {
            tracing::warn!("no CPU sampler: only heap profiles are pushed");
        }
        let pusher = Pusher {
            endpoint: format!("{}{PUSH_PATH}", settings.url),
            labels: [
                ("service_name", settings.service_name.clone()),
                ("service_version", settings.service_version),
            ]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect(),
            tenant_id: settings.tenant_id.clone(),
            auth: settings.auth.clone(),
            cpu,
            cpu_every: settings.cpu_every,
            heap_every: settings.heap_every,
            profilers: Arc::clone(profilers),
            last_snapshot: None,
            deltas: deltas::AllocDeltas::default(),
            stats,
            queue: Queue::default(),
            sequence: 0,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            failing: false,
            refused: None,
        };
        let (finish, finished) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("profile-push".into())
            .spawn(move || pusher.run(&finished))?;
        tracing::info!(
            url = %redacted(&settings.url),
            service = %settings.service_name,
            tenant = settings.tenant_id.as_deref().unwrap_or("none"),
            auth = settings.auth.kind(),
            "pushing CPU, heap and task (goroutine) profiles to Pyroscope"
        );
        Ok(Self {
            finish,
            thread: Some(thread),
        })
    }

    /// Asks for the last profiles (and what is queued) to be pushed by `deadline`.
    pub fn finish(&self, deadline: Instant) {
        let _ = self.finish.send(deadline);
    }

    /// Waits for the pusher to end (after [`Self::finish`], by its deadline; without it, the last
    /// push gets the usual push timeout).
    pub fn join(mut self) {
        self.wait(Instant::now() + PUSH_TIMEOUT);
    }

    /// Asks for the last push by `deadline` (unless an earlier [`Self::finish`] did) and waits.
    fn wait(&mut self, deadline: Instant) {
        if let Some(thread) = self.thread.take() {
            self.finish(deadline);
            let _ = thread.join();
        }
    }
}

impl Drop for ProfilePush {
    fn drop(&mut self) {
        self.wait(Instant::now() + DROP_DEADLINE);
    }
}

/// A push waiting to be sent: the profile type and the compressed request.
struct Pending {
    profile_type: &'static str,
    body: Vec<u8>,
}

/// Pushes waiting to be sent, oldest first, bounded by count and bytes.
#[derive(Default)]
struct Queue {
    pushes: VecDeque<Pending>,
    bytes: usize,
}

impl Queue {
    /// Adds a push; returns how many of the oldest were dropped to make room.
    fn add(&mut self, pending: Pending) -> u64 {
        let mut dropped = 0;
        while !self.pushes.is_empty()
            && (self.pushes.len() >= QUEUE_PROFILES
                || self.bytes + pending.body.len() > QUEUE_BYTES)
        {
            self.pop();
            dropped += 1;
        }
        self.bytes += pending.body.len();
        self.pushes.push_back(pending);
        dropped
    }

    fn pop(&mut self) -> Option<Pending> {
        let pending = self.pushes.pop_front()?;
        self.bytes -= pending.body.len();
        Some(pending)
    }
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
enum PushError {
    /// The server could not be reached, or failed: worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// The server refused the push as bad (a 4xx other than 408 and 429): retrying cannot help.
    #[error("refused with {0}")]
    Refused(u16),
}

struct Pusher {
    endpoint: String,
    labels: Vec<(&'static str, String)>,
    tenant_id: Option<String>,
    auth: PushAuth,
    cpu: Option<(broadcast::Receiver<Arc<CpuWindow>>, DemandGuard)>,
    cpu_every: Duration,
    heap_every: Duration,
    profilers: Arc<Profilers>,
    /// When the latest heap and task snapshots were due.
    last_snapshot: Option<Instant>,
    /// The previous heap push's allocation totals.
    deltas: deltas::AllocDeltas,
    stats: Arc<PushStats>,
    queue: Queue,
    sequence: u64,
    retry_at: Instant,
    backoff: Duration,
    /// Whether the last push failed (warnings are logged on the change, not per push).
    failing: bool,
    /// The status of the latest refusal, while pushes are refused (warned once per change).
    refused: Option<u16>,
}

/// The wall-clock time `at` (an instant at or before now) stands for, in unix nanoseconds.
fn unix_nanos(at: Instant) -> i64 {
    let now = SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i64)
}

impl Pusher {
    fn run(mut self, finish: &mpsc::Receiver<Instant>) {
        // reqwest is built without a crypto provider of its own (see Cargo.toml): ring, unless
        // the service installed one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange;
            // classical X25519 protects a profile push.
            #[allow(deprecated)]
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        // Built here: a blocking client must not be created inside the async runtime.
        let client = match reqwest::blocking::Client::builder()
            .timeout(PUSH_TIMEOUT)
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the profile push client; no profiles will be pushed");
                return;
            }
        };
        // The task profile is taken through `Profilers::tasks`, which is async: on a runtime of
        // this thread's own, so the push never waits on the service's.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => Some(runtime),
            Err(error) => {
                tracing::warn!(%error, "cannot start the task profile's runtime; task profiles will not be pushed");
                None
            }
        };
        let started = Instant::now();
        let (mut next_cpu, mut next_heap) = (started + self.cpu_every, started + self.heap_every);
        loop {
            let mut wake = next_cpu.min(next_heap);
            if !self.queue.pushes.is_empty() {
                wake = wake.min(self.retry_at);
            }
            let deadline = match finish.recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(deadline) => Some(deadline),
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Instant::now() + PUSH_TIMEOUT),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            if let Some(deadline) = deadline {
                self.last_push(&client, runtime.as_ref(), deadline);
                return;
            }
            let now = Instant::now();
            if now >= next_cpu {
                self.collect_cpu(false);
                next_cpu = now + self.cpu_every;
            }
            if now >= next_heap {
                self.collect_snapshots(now, runtime.as_ref());
                next_heap = now + self.heap_every;
            }
            if now >= self.retry_at {
                self.send_queued(&client, None);
            }
        }
    }

    /// The windows since the last push and, when the latest snapshots are at least an interval
    /// old, last heap and task snapshots; then everything queued, by `deadline`.
    fn last_push(
        &mut self,
        client: &reqwest::blocking::Client,
        runtime: Option<&tokio::runtime::Runtime>,
        deadline: Instant,
    ) {
        self.collect_cpu(true);
        let now = Instant::now();
        // Sooner, they would land in the window of the latest snapshots and read double there;
        // what was allocated since the latest push goes out alone (in-use values left out).
        if self
            .last_snapshot
            .is_none_or(|last| now.duration_since(last) >= self.heap_every)
        {
            self.collect_snapshots(now, runtime);
        } else {
            tracing::debug!(
                "the latest heap and task profiles are recent: allocations only at exit"
            );
            match heap::dump(&self.profilers.symbols) {
                Ok(mut profile) => {
                    if self.deltas.apply(&mut profile, true) && !profile.sample.is_empty() {
                        self.enqueue_snapshot(HEAP_PROFILE, profile, unix_nanos(now));
                    }
                }
                Err(error) => tracing::warn!(%error, "no heap profile to push at exit"),
            }
        }
        let profiles = self.queue.pushes.len();
        self.send_queued(client, Some(deadline));
        let left = self.queue.pushes.len();
        if left == 0 {
            tracing::info!(profiles, "pushed the last profiles before exit");
        } else {
            tracing::warn!(
                pushed = profiles - left,
                left,
                "could not push every profile before exit"
            );
        }
    }

    /// Queues a CPU profile of the windows since the last one. With `last`, it first waits (at
    /// most [`LAST_WINDOW_WAIT`]) for the partial window the sampler publishes when it stops.
    fn collect_cpu(&mut self, last: bool) {
        let Some((windows, _)) = self.cpu.as_mut() else {
            return;
        };
        let waited = Instant::now() + LAST_WINDOW_WAIT;
        let mut collected = Vec::new();
        loop {
            match windows.try_recv() {
                Ok(window) => {
                    let partial = window.duration < cpu::WINDOW;
                    collected.push(window);
                    if last && partial {
                        break;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "CPU windows were dropped before a push");
                }
                Err(broadcast::error::TryRecvError::Empty) if last && Instant::now() < waited => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
        if collected.is_empty() {
            return;
        }
        let frames = self
            .profilers
            .symbols
            .resolve_samples(cpu::lookup_addresses(&collected));
        let profile = cpu::build_profile(&collected, &frames);
        self.enqueue(CPU_PROFILE, encode_gzip(&profile));
    }

    /// Queues a heap and a task snapshot, both stamped `due` (when they were due, not when they
    /// were taken, so two are never stamped less than an interval apart), their labels as
    /// Pyroscope keeps them.
    fn collect_snapshots(&mut self, due: Instant, runtime: Option<&tokio::runtime::Runtime>) {
        self.last_snapshot = Some(due);
        let stamp = unix_nanos(due);
        match heap::dump(&self.profilers.symbols) {
            Ok(mut profile) => {
                self.deltas.apply(&mut profile, false);
                self.enqueue_snapshot(HEAP_PROFILE, profile, stamp);
            }
            Err(error) => tracing::warn!(%error, "no heap profile to push this round"),
        }
        let Some(runtime) = runtime else {
            return;
        };
        match runtime.block_on(self.profilers.tasks()) {
            Ok(stacks) => {
                self.enqueue_snapshot(GOROUTINE_PROFILE, tasks::build_profile(&stacks), stamp);
            }
            Err(error) => tracing::warn!(%error, "no task profile to push this round"),
        }
    }

    fn enqueue_snapshot(&mut self, profile_type: &'static str, profile: Profile, stamp: i64) {
        let mut profile = labels::for_pyroscope(profile);
        profile.time_nanos = stamp;
        self.enqueue(profile_type, encode_gzip(&profile));
    }

    /// Wraps a gzipped pprof profile in a push request and queues it.
    fn enqueue(&mut self, profile_type: &'static str, raw_profile: Vec<u8>) {
        self.sequence += 1;
        // A heap push's allocations are deltas already (see [`deltas`]).
        let delta = (profile_type == HEAP_PROFILE).then(|| ("__delta__", "false".to_owned()));
        let labels = std::iter::once(("__name__", profile_type.to_owned()))
            .chain(delta)
            .chain(
                self.labels
                    .iter()
                    .map(|(name, value)| (*name, value.clone())),
            )
            .map(|(name, value)| LabelPair {
                name: name.to_owned(),
                value,
            })
            .collect();
        let request = PushRequest {
            series: vec![RawProfileSeries {
                labels,
                samples: vec![RawSample {
                    raw_profile,
                    id: format!("{}-{}", std::process::id(), self.sequence),
                }],
            }],
        };
        let body = gzip(&request.encode_to_vec());
        let dropped = self.queue.add(Pending { profile_type, body });
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(dropped, "profile queue full: the oldest were dropped");
        }
        self.stats
            .queued
            .store(self.queue.pushes.len() as u64, Ordering::Relaxed);
    }

    /// Sends queued pushes, oldest first, until one fails (then waits for the backoff) or, with a
    /// deadline, until it passes.
    fn send_queued(&mut self, client: &reqwest::blocking::Client, deadline: Option<Instant>) {
        while let Some(pending) = self.queue.pushes.front() {
            let timeout = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => PUSH_TIMEOUT,
            };
            if timeout.is_zero() {
                break;
            }
            let request = Request {
                endpoint: &self.endpoint,
                tenant_id: self.tenant_id.as_deref(),
                auth: &self.auth,
            };
            match request.post(client, &pending.body, timeout) {
                Ok(()) => {
                    self.queue.pop();
                    self.backoff = FIRST_BACKOFF;
                    self.refused = None;
                    if self.failing {
                        self.failing = false;
                        tracing::info!(
                            queued = self.queue.pushes.len(),
                            "profile push works again; sending what the outage kept"
                        );
                    }
                }
                Err(PushError::Refused(status)) => {
                    let profile_type = pending.profile_type;
                    self.queue.pop();
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if self.refused == Some(status) {
                        tracing::debug!(
                            status,
                            profile_type,
                            "Pyroscope refused a profile; dropped it"
                        );
                    } else if status == 401 || status == 403 {
                        tracing::warn!(
                            status,
                            profile_type,
                            tenant = self.tenant_id.as_deref().unwrap_or("none"),
                            "Pyroscope refused the credentials; profiles are dropped until it accepts them: {}{}",
                            self.auth.what_to_check(),
                            if status == 403 {
                                format!(", and {TENANT_ID_ENV}")
                            } else {
                                String::new()
                            }
                        );
                    } else {
                        tracing::warn!(
                            status,
                            profile_type,
                            "Pyroscope refused a profile; dropped it (and any it refuses the same way)"
                        );
                    }
                    self.refused = Some(status);
                }
                Err(error) => {
                    if !self.failing {
                        self.failing = true;
                        tracing::warn!(%error, queued = self.queue.pushes.len(), "profile push failing; keeping profiles to retry with backoff");
                    }
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
        self.stats
            .queued
            .store(self.queue.pushes.len() as u64, Ordering::Relaxed);
    }
}

/// Where one push goes, as whom.
struct Request<'a> {
    endpoint: &'a str,
    tenant_id: Option<&'a str>,
    auth: &'a PushAuth,
}

impl Request<'_> {
    fn post(
        &self,
        client: &reqwest::blocking::Client,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(), PushError> {
        let mut request = client
            .post(self.endpoint)
            .header("Content-Type", "application/proto")
            .header("Content-Encoding", "gzip")
            .header(
                "User-Agent",
                concat!("leakfinder-profiling/", env!("CARGO_PKG_VERSION")),
            )
            .timeout(timeout)
            .body(body.to_vec());
        if let Some(tenant) = self.tenant_id {
            request = request.header("X-Scope-OrgID", tenant);
        }
        request = match self.auth {
            PushAuth::None => request,
            PushAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            PushAuth::Bearer(token) => request.bearer_auth(token),
        };
        let response = request
            .send()
            .map_err(|error| PushError::Unavailable(error.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            Err(PushError::Refused(status.as_u16()))
        } else {
            Err(PushError::Unavailable(format!("status {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(bytes: usize) -> Pending {
        Pending {
            profile_type: HEAP_PROFILE,
            body: vec![0; bytes],
        }
    }

    #[test]
    fn credentials_are_basic_or_a_token_and_debug_never_shows_them() {
        assert_eq!(PushAuth::from_parts(None, None, None), Ok(PushAuth::None));
        assert_eq!(
            PushAuth::from_parts(Some(""), Some(""), Some("")),
            Ok(PushAuth::None),
            "empty counts as unset"
        );
        let basic = PushAuth::from_parts(Some("me"), Some("pw-s3cret"), None).unwrap();
        assert_eq!(basic.kind(), "basic");
        let token = PushAuth::from_parts(None, None, Some("t0k-s3cret")).unwrap();
        assert_eq!(token, PushAuth::Bearer("t0k-s3cret".into()));
        let mut settings = PushSettings::new("http://p:4040/", "svc");
        settings.auth = basic;
        let shown = format!("{settings:?} {token:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<hidden>"),
            "{shown}"
        );
        assert_eq!(
            PushAuth::from_parts(Some("me"), None, None),
            Err(AuthError::HalfBasic)
        );
        assert_eq!(
            PushAuth::from_parts(None, Some("pw"), None),
            Err(AuthError::HalfBasic)
        );
        assert_eq!(
            PushAuth::from_parts(Some("me"), Some("pw"), Some("t")),
            Err(AuthError::Both)
        );
        let check = settings.auth.what_to_check();
        assert!(
            check.contains(BASIC_AUTH_USER_ENV) && !check.contains("s3cret"),
            "{check}"
        );
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted("https://user:s3cret@pyroscope.example:443/tenant"),
            "https://pyroscope.example:443/tenant"
        );
        assert_eq!(redacted("http://pyroscope:4040"), "http://pyroscope:4040");
        assert_eq!(redacted("pyroscope:4040"), "pyroscope:4040");
    }

    #[test]
    fn the_queue_drops_its_oldest_past_its_count_or_its_bytes() {
        let mut queue = Queue::default();
        for _ in 0..QUEUE_PROFILES {
            assert_eq!(queue.add(pending(10)), 0);
        }
        assert_eq!(queue.add(pending(10)), 1, "one too many by count");
        assert_eq!(queue.pushes.len(), QUEUE_PROFILES);
        assert_eq!(queue.bytes, QUEUE_PROFILES * 10);
        // One push of nearly the whole budget pushes out all but what still fits beside it.
        assert_eq!(
            queue.add(pending(QUEUE_BYTES - 25)) as usize,
            QUEUE_PROFILES - 2
        );
        assert_eq!(queue.bytes, QUEUE_BYTES - 5);
        assert_eq!(queue.pushes.len(), 3);
        // A push bigger than the budget alone is still kept (never an empty queue by dropping).
        queue.add(pending(QUEUE_BYTES + 1));
        assert_eq!(queue.pushes.len(), 1);
        while queue.pop().is_some() {}
        assert_eq!(queue.bytes, 0);
    }
}
