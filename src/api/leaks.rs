//! The leak operations: start, stop and reset each of the three leaks.
//!
//! Every operation answers both GET and POST, because the seed's walkthrough drives them with a
//! plain `curl`.

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};

use super::error::{ErrorBody, bad_kind};
use crate::app::AppState;
use crate::leaks::{LeakKind, StartOutcome, StopOutcome};

#[derive(Tags)]
enum ApiTags {
    /// Start, stop and reset the three deliberate leaks.
    Leaks,
    /// A benign scenario the leak detector must not report.
    Benign,
}

/// The warm-up cache's state.
#[derive(Debug, Object)]
pub struct BenignCache {
    /// Its filler is running.
    pub active: bool,
    /// Entries held (at most 128).
    pub entries: u64,
    /// Bytes held (at most 8 MiB).
    pub bytes: u64,
    /// For a start: whether this request started it.
    pub started: bool,
}

/// The leak operations.
pub struct LeakApi {
    state: Arc<AppState>,
}

impl LeakApi {
    /// The operations over the application's leaks.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl BenignCache {
    fn now(state: &AppState, started: bool) -> Self {
        let status = state.benign.status();
        Self {
            active: status.active,
            entries: status.entries,
            bytes: status.bytes,
            started,
        }
    }
}

/// What a start request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum StartStatus {
    /// This request started the leak.
    Started,
    /// The leak was already started; nothing changed.
    AlreadyRunning,
}

/// The answer to a start request.
#[derive(Debug, Object)]
pub struct LeakStarted {
    /// Which leak.
    pub kind: LeakKind,
    /// `started` or `already_running`.
    pub status: StartStatus,
}

/// What a stop request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum StopStatus {
    /// This request stopped the leak's growth.
    Stopped,
    /// The leak was not running; nothing changed.
    NotRunning,
}

/// The answer to a stop request: growth stops, and the memory stays retained.
#[derive(Debug, Object)]
pub struct LeakStopped {
    /// Which leak.
    pub kind: LeakKind,
    /// `stopped` or `not_running`.
    pub status: StopStatus,
    /// Bytes the leak still retains: stopping the producer does not free what a global holds.
    pub retained_bytes: u64,
    /// Chunks the leak still retains.
    pub retained_items: u64,
}

/// The answer to a reset request: the leak is stopped and its memory released.
#[derive(Debug, Object)]
pub struct LeakReset {
    /// Which leak.
    pub kind: LeakKind,
    /// Bytes the leak held and released.
    pub released_bytes: u64,
    /// Chunks the leak held and released.
    pub released_items: u64,
    /// Bytes the leak retains after the reset (0 unless some of job 2's tasks failed to end).
    pub retained_bytes: u64,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_start")]
enum StartResponse {
    /// The leak is started (by this request or an earlier one).
    #[oai(status = 200)]
    Ok(Json<LeakStarted>),
    /// The kind is not one of the three leaks.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
}

fn bad_start(_: poem::Error) -> StartResponse {
    StartResponse::BadRequest(Json(bad_kind()))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_stop")]
enum StopResponse {
    /// The leak is not growing; its memory stays retained.
    #[oai(status = 200)]
    Ok(Json<LeakStopped>),
    /// The kind is not one of the three leaks.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
}

fn bad_stop(_: poem::Error) -> StopResponse {
    StopResponse::BadRequest(Json(bad_kind()))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_reset")]
enum ResetResponse {
    /// The leak is stopped and its memory released.
    #[oai(status = 200)]
    Ok(Json<LeakReset>),
    /// The kind is not one of the three leaks.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
}

fn bad_reset(_: poem::Error) -> ResetResponse {
    ResetResponse::BadRequest(Json(bad_kind()))
}

#[OpenApi(tag = "ApiTags::Leaks")]
impl LeakApi {
    /// Start the benign warm-up cache
    ///
    /// Not a leak: a cache that grows one 64 KiB entry every 50 ms until it holds 8 MiB, then
    /// evicts its oldest entry for every new one, so it stays flat while it keeps allocating. For
    /// the first seconds it looks exactly like a leak; the detector must stay quiet about it.
    #[oai(
        path = "/start-benign/cache-warmup",
        method = "get",
        method = "post",
        tag = "ApiTags::Benign"
    )]
    async fn start_benign(&self) -> Json<BenignCache> {
        let started = self.state.benign.start(&self.state.shutdown).await;
        Json(BenignCache::now(&self.state, started))
    }

    /// Reset the benign warm-up cache
    ///
    /// Stops the filler and empties the cache.
    #[oai(
        path = "/reset-benign/cache-warmup",
        method = "get",
        method = "post",
        tag = "ApiTags::Benign"
    )]
    async fn reset_benign(&self) -> Json<BenignCache> {
        self.state.benign.reset().await;
        Json(BenignCache::now(&self.state, false))
    }

    /// Start a leak
    ///
    /// Starts the producer of one leak: `slice` (leak 1, a global vector), `channel` (leak 2,
    /// tasks blocked on a channel nobody reads) or `mutex` (leak 3, a global mutex-guarded map).
    /// Idempotent: a leak that is already started is left as it is.
    #[oai(path = "/start-leak/:kind", method = "get", method = "post")]
    async fn start_leak(
        &self,
        /// Which leak: slice, channel or mutex.
        #[oai(name = "kind")]
        kind: Path<LeakKind>,
    ) -> StartResponse {
        let status = match self.state.leaks.start(kind.0).await {
            StartOutcome::Started => StartStatus::Started,
            StartOutcome::AlreadyRunning => StartStatus::AlreadyRunning,
        };
        StartResponse::Ok(Json(LeakStarted {
            kind: kind.0,
            status,
        }))
    }

    /// Stop a leak's growth
    ///
    /// Stops the producer and keeps the memory: what a global holds is not freed by stopping the
    /// code that filled it. Use reset to release it.
    #[oai(path = "/stop-leak/:kind", method = "get", method = "post")]
    async fn stop_leak(
        &self,
        /// Which leak: slice, channel or mutex.
        #[oai(name = "kind")]
        kind: Path<LeakKind>,
    ) -> StopResponse {
        let status = match self.state.leaks.stop(kind.0).await {
            StopOutcome::Stopped => StopStatus::Stopped,
            StopOutcome::NotRunning => StopStatus::NotRunning,
        };
        let now = self.state.leaks.status(kind.0);
        StopResponse::Ok(Json(LeakStopped {
            kind: kind.0,
            status,
            retained_bytes: now.bytes,
            retained_items: now.items,
        }))
    }

    /// Reset a leak
    ///
    /// Stops the leak and releases everything it holds; for `channel`, every blocked task ends.
    /// jemalloc is then asked to return the freed pages, so the process RSS drops.
    #[oai(path = "/reset-leak/:kind", method = "get", method = "post")]
    async fn reset_leak(
        &self,
        /// Which leak: slice, channel or mutex.
        #[oai(name = "kind")]
        kind: Path<LeakKind>,
    ) -> ResetResponse {
        let released = self.state.leaks.reset(kind.0).await;
        if !released.complete {
            tracing::warn!(leak = %kind.0, "some released tasks did not end in time");
        }
        let now = self.state.leaks.status(kind.0);
        ResetResponse::Ok(Json(LeakReset {
            kind: kind.0,
            released_bytes: released.bytes.saturating_sub(now.bytes),
            released_items: released.items.saturating_sub(now.items),
            retained_bytes: now.bytes,
        }))
    }
}
