//! Status operations: the leak report, the safe comparison run, and the health check.

use std::sync::Arc;
use std::time::Duration;

use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Serialize;

use super::error::ErrorBody;
use super::payload::SerdeJson;
use crate::app::AppState;
use crate::leaks::safe::run_safe_channel_tasks;
use crate::leaks::{LeakKind, LeakStatus};

/// How long a safe task waits to send before it gives up.
const SAFE_SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Tags)]
enum ApiTags {
    /// What the leaks hold, and how the process is doing.
    Status,
}

/// The status operations.
pub struct StatusApi {
    state: Arc<AppState>,
}

impl StatusApi {
    /// The status operations over the application's state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// One leak's state.
#[derive(Debug, Object, Serialize)]
pub struct LeakState {
    /// A producer is started and not stopped (it may have stopped growing at its cap).
    pub active: bool,
    /// The leak reached `LEAK_MAX_BYTES` (or its chunk limit) and stopped growing.
    pub capped: bool,
    /// Bytes the leak retains.
    pub bytes: u64,
    /// Chunks the leak retains.
    pub items: u64,
    /// Tasks blocked forever on the channel (leak 2 only).
    pub blocked_tasks: u64,
}

impl From<LeakStatus> for LeakState {
    fn from(status: LeakStatus) -> Self {
        Self {
            active: status.active,
            capped: status.capped,
            bytes: status.bytes,
            items: status.items,
            blocked_tasks: status.blocked_tasks,
        }
    }
}

/// The three leaks, by kind.
#[derive(Debug, Object, Serialize)]
pub struct LeakStates {
    /// Leak 1: the global slice `LEAKY_STORE_1`.
    pub slice: LeakState,
    /// Leak 2: tasks blocked on `LEAKY_CHANNEL_2`.
    pub channel: LeakState,
    /// Leak 3: the global map `LEAKY_MAP_3`.
    pub mutex: LeakState,
}

/// The process as a whole.
#[derive(Debug, Object, Serialize)]
pub struct ProcessState {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Bytes allocated and not freed (jemalloc `stats.allocated`).
    pub heap_allocated_bytes: u64,
    /// Bytes in resident pages mapped by jemalloc (jemalloc `stats.resident`).
    pub heap_resident_bytes: u64,
    /// Tokio tasks alive, blocked ones included.
    pub alive_tasks: u64,
    /// How old the memory figures above are, in milliseconds: they are read at most every
    /// 100 ms and cached in between, so polling this endpoint costs almost nothing.
    pub memory_age_ms: u64,
    /// Bytes held by the symbol index: every address the profiles have named, with its frames
    /// (part of `heap_allocated_bytes`, never part of the heap profile).
    pub symbol_index_bytes: u64,
    /// CPU milliseconds spent symbolising since start, all profiles together (debug info is read
    /// once per line of code; every later profile finds its addresses in the index).
    pub symbolising_cpu_ms: u64,
    /// Whether the CPU sampler runs now: only while a CPU profile is taken or pushed, and for
    /// a couple of seconds after, so that profiles taken back to back share it.
    pub cpu_sampling: bool,
    /// CPU microseconds CPU profiling has cost since start: the SIGPROF handler on every thread
    /// it sampled, and the sampler thread. Against the process's CPU time over a profile, this
    /// is the share a profile takes from the service.
    pub cpu_sampling_cpu_us: u64,
    /// Time jemalloc's sample hooks have taken since start (allocation and age tracking: one
    /// call per sampled allocation and per free of one, on whichever thread allocates), in
    /// microseconds. Against the process's CPU time, the share tracking costs.
    pub heap_tracking_cpu_us: u64,
    /// Calls of those hooks since start.
    pub heap_tracking_calls: u64,
    /// Bytes the tracking tables hold (refreshed with the memory figures).
    pub heap_tracking_bytes: u64,
    /// Live sampled allocations they track (refreshed with the memory figures).
    pub heap_tracking_live: u64,
}

/// How the leaks grow.
#[derive(Debug, Object, Serialize)]
pub struct LeakSettingsView {
    /// Bytes retained per tick (`LEAK_CHUNK_BYTES`).
    pub chunk_bytes: u64,
    /// Milliseconds between ticks (`LEAK_INTERVAL_MS`).
    pub interval_ms: u64,
    /// Bytes at which each leak stops growing (`LEAK_MAX_BYTES`).
    pub max_bytes: u64,
}

/// The leak report.
#[derive(Debug, Object, Serialize)]
pub struct LeakReport {
    /// Each leak's state.
    pub leaks: LeakStates,
    /// The process's memory and tasks.
    pub process: ProcessState,
    /// How the leaks grow.
    pub settings: LeakSettingsView,
}

/// What a safe run did.
#[derive(Debug, Object)]
pub struct SafeTestReport {
    /// Tasks spawned.
    pub tasks: u64,
    /// Values received: every one that was sent.
    pub received: u64,
    /// Sends that gave up at their timeout.
    pub timed_out: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Wall time of the run, in milliseconds. The answer comes only once every task has ended.
    pub elapsed_ms: f64,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_safe_test")]
enum SafeTestResponse {
    /// Every task ended; nothing was leaked.
    #[oai(status = 200)]
    Ok(Json<SafeTestReport>),
    /// `tasks` is not a whole number from 1 to 1000.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
}

fn bad_safe_test(error: poem::Error) -> SafeTestResponse {
    SafeTestResponse::BadRequest(Json(ErrorBody::bad_request(
        &error,
        "tasks is a whole number from 1 to 1000 (default 10)",
    )))
}

/// The health check's answer.
#[derive(Debug, Object)]
pub struct Health {
    /// Always `ok` while the service serves.
    pub status: String,
}

#[OpenApi(tag = "ApiTags::Status")]
impl StatusApi {
    /// Report the leaks
    ///
    /// For each leak: whether it is active or capped, and the bytes and chunks it retains. For the
    /// process: RSS, jemalloc's allocated and resident bytes (at most 100 ms old, with their age),
    /// and the number of alive tasks.
    #[oai(path = "/leak-test", method = "get")]
    async fn leak_test(&self) -> SerdeJson<LeakReport> {
        let leaks = &self.state.leaks;
        let reading = self.state.memory.read();
        let memory = reading.stats;
        let tracking_cost = leakfinder_profiling::heap::tracking::cost();
        let settings = leaks.settings();
        SerdeJson(LeakReport {
            leaks: LeakStates {
                slice: leaks.status(LeakKind::Slice).into(),
                channel: leaks.status(LeakKind::Channel).into(),
                mutex: leaks.status(LeakKind::Mutex).into(),
            },
            process: ProcessState {
                rss_bytes: memory.rss_bytes,
                heap_allocated_bytes: memory.heap_allocated_bytes,
                heap_resident_bytes: memory.heap_resident_bytes,
                alive_tasks: tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks() as u64,
                memory_age_ms: reading.age.as_millis() as u64,
                symbol_index_bytes: self.state.profilers.symbols.index_bytes() as u64,
                symbolising_cpu_ms: self.state.profilers.symbols.cpu_time().as_millis() as u64,
                cpu_sampling: leakfinder_profiling::sigprof::running(),
                cpu_sampling_cpu_us: self.state.profilers.cpu_sampling_cpu_time().as_micros()
                    as u64,
                heap_tracking_cpu_us: tracking_cost.0.as_micros() as u64,
                heap_tracking_calls: tracking_cost.1,
                heap_tracking_bytes: memory.heap_tracking_bytes,
                heap_tracking_live: memory.heap_tracking_live,
            },
            settings: LeakSettingsView {
                chunk_bytes: settings.chunk_bytes as u64,
                interval_ms: settings.interval.as_millis() as u64,
                max_bytes: settings.max_bytes,
            },
        })
    }

    /// Run leak 2's work safely
    ///
    /// Spawns `tasks` tasks that each send a chunk on a channel of capacity 1, as leak 2 does, but
    /// here every value is received and every send has a timeout. Answers once every task ended.
    #[oai(path = "/safe-test", method = "get", method = "post")]
    async fn safe_test(
        &self,
        /// How many tasks to spawn (1 to 1000).
        #[oai(
            default = "default_safe_tasks",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        tasks: Query<u32>,
    ) -> SafeTestResponse {
        let run = run_safe_channel_tasks(
            tasks.0 as usize,
            self.state.leaks.settings().chunk_bytes,
            SAFE_SEND_TIMEOUT,
        )
        .await;
        SafeTestResponse::Ok(Json(SafeTestReport {
            tasks: run.tasks as u64,
            received: run.received as u64,
            timed_out: run.timed_out as u64,
            bytes_received: run.bytes_received,
            elapsed_ms: run.elapsed.as_secs_f64() * 1000.0,
        }))
    }

    /// Report what leaks, continuously
    ///
    /// The leak detector, run on this service's own heap profile every interval
    /// (`LEAK_REPORT_INTERVAL_MS`): each site whose retained bytes keep rising, with its function,
    /// file, line, rate, confidence and stack. Warm-ups that plateau and churn are not reported.
    /// (Task leaks: `leakfinder scan`, or the alive and blocked task metrics.)
    #[oai(path = "/leak-report", method = "get")]
    async fn leak_report(&self) -> Json<crate::watch::WatchReport> {
        Json(self.state.watch.report())
    }

    /// Health check
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".to_owned(),
        })
    }
}

fn default_safe_tasks() -> u32 {
    10
}
