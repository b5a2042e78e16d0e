//! Pull-style profiles under `/debug/pprof/`, as Go's `net/http/pprof` serves them, for
//! `go tool pprof http://HOST/debug/pprof/heap` and friends.
//!
//! These are plain routes, not OpenAPI operations: their payloads are pprof protobuf, and their
//! client is `go tool pprof`, not Swagger. Errors are the same JSON as everywhere else.
//!
//! # Parameters
//! - `/debug/pprof/profile?seconds=N`: CPU profile of the next N seconds, 1 to 60 (default 30).
//!   Requests that overlap share the sampler's windows.
//! - `/debug/pprof/goroutine?debug=N` (alias `/debug/pprof/tasks`): tokio tasks. `debug=0`
//!   (default) is a pprof profile, `debug=1` text with counts per stack, `debug=2` one entry per task.
//! - `/debug/pprof/heap`: live heap, sampled every 512 KiB on average; no parameters.

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Html, Json, Query};
use poem::{IntoResponse, Response, handler};

use super::error::ErrorBody;
use super::methods::RouteTable;
use crate::app::AppState;
use crate::profiling::{ProfilingError, pprof, tasks};

/// The CPU profile's default length, as Go's.
const DEFAULT_SECONDS: u64 = 30;
/// The longest CPU profile served.
const MAX_SECONDS: u64 = 60;

/// The `/debug/pprof` routes, to nest under that prefix.
pub fn routes() -> RouteTable {
    RouteTable::new()
        .get("/", serve_index)
        .get("/heap", serve_heap)
        .get("/profile", serve_cpu)
        .get("/goroutine", serve_tasks)
        .get("/tasks", serve_tasks)
}

/// The query parameters any profile accepts, as text, so that bad values get our own message.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    seconds: Option<String>,
    debug: Option<String>,
}

fn json_error(status: StatusCode, error: impl ToString, valid: &str) -> Response {
    Json(ErrorBody {
        status: status.as_u16(),
        error: error.to_string(),
        valid: valid.to_owned(),
    })
    .with_status(status)
    .into_response()
}

fn failure(error: &ProfilingError) -> Response {
    let status = match error {
        ProfilingError::HeapProfilingDisabled => StatusCode::FORBIDDEN,
        ProfilingError::Unavailable(_) | ProfilingError::Timeout(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ProfilingError::Dump(_) | ProfilingError::Job(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(%error, "profile failed");
    json_error(status, error, "")
}

fn attachment(name: &str, profile: &pprof::Profile) -> Response {
    Response::builder()
        .content_type("application/octet-stream")
        .header(
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        )
        .body(pprof::encode_gzip(profile))
}

/// A whole number from `min` to `max`, or the default when absent.
fn bounded(value: Option<&str>, default: u64, min: u64, max: u64) -> Option<u64> {
    match value {
        None => Some(default),
        Some(text) => text.trim().parse().ok().filter(|n| (min..=max).contains(n)),
    }
}

#[handler]
fn serve_index() -> Html<&'static str> {
    Html(INDEX)
}

#[handler]
async fn serve_heap(Data(state): Data<&Arc<AppState>>) -> Response {
    match state.profilers.heap().await {
        Ok(profile) => attachment("heap", &profile),
        Err(error) => failure(&error),
    }
}

#[handler]
async fn serve_cpu(Data(state): Data<&Arc<AppState>>, params: Option<Query<Params>>) -> Response {
    let params = params.map(|query| query.0).unwrap_or_default();
    let Some(seconds) = bounded(params.seconds.as_deref(), DEFAULT_SECONDS, 1, MAX_SECONDS) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid seconds: {:?}", params.seconds.unwrap_or_default()),
            "seconds is a whole number from 1 to 60 (default 30)",
        );
    };
    match state.profilers.cpu(Duration::from_secs(seconds)).await {
        Ok(profile) => attachment("profile", &profile),
        Err(error) => failure(&error),
    }
}

#[handler]
async fn serve_tasks(Data(state): Data<&Arc<AppState>>, params: Option<Query<Params>>) -> Response {
    let params = params.map(|query| query.0).unwrap_or_default();
    let Some(debug) = bounded(params.debug.as_deref(), 0, 0, 2) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid debug: {:?}", params.debug.unwrap_or_default()),
            "debug is 0 (pprof protobuf, default), 1 (text, counts per stack) or 2 (text, every task)",
        );
    };
    match state.profilers.tasks().await {
        Ok(stacks) if debug == 0 => attachment("goroutine", &tasks::build_profile(&stacks)),
        Ok(stacks) => Response::builder()
            .content_type("text/plain; charset=utf-8")
            .body(tasks::render_text(&stacks, debug as u8)),
        Err(error) => failure(&error),
    }
}

const INDEX: &str = r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>/debug/pprof/</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{padding:.3em 1em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
code{background:#f4f4f4;padding:0 .2em}</style></head>
<body>
<h1>/debug/pprof/</h1>
<p>Profiles of this leakfinder process, symbolised in the process: read them with
<code>go tool pprof http://HOST/debug/pprof/heap</code>, no binary needed.</p>
<table>
<tr><th>Profile</th><th>What it is</th><th>Parameters</th></tr>
<tr><td><a href="heap">heap</a></td>
<td>Live heap allocations (jemalloc), sampled every 512 KiB on average, as <code>inuse_space</code>
bytes and <code>inuse_objects</code>. Allocator frames are trimmed, so flat bytes land on the code
that allocated.</td><td>none</td></tr>
<tr><td><a href="profile?seconds=5">profile</a></td>
<td>CPU profile (99 Hz). Overlapping requests share the one sampler's windows.</td>
<td><code>seconds</code>: 1 to 60, default 30</td></tr>
<tr><td><a href="goroutine?debug=1">goroutine</a></td>
<td>Tokio tasks, as Go's goroutine profile: one sample per distinct stack, its value the number
of tasks there, labelled with what they wait for (<code>wait</code>), each stack ending in the
<code>created by</code> frame of its spawn site. Taken without pausing the runtime.</td>
<td><code>debug</code>: 0 protobuf (default), <a href="goroutine?debug=1">1</a> text with counts,
<a href="goroutine?debug=2">2</a> one entry per task</td></tr>
<tr><td><a href="tasks?debug=1">tasks</a></td><td>Alias of goroutine.</td>
<td>as goroutine</td></tr>
</table>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_profile_that_cannot_be_taken_is_a_json_503() {
        let response = failure(&ProfilingError::Timeout("task profile"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|value| value.to_str().unwrap().starts_with("application/json"))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&response.into_body().into_bytes().await.unwrap()).unwrap();
        assert_eq!(body["status"], 503);
        assert_eq!(body["error"], "the task profile took too long");
    }

    #[test]
    fn seconds_are_bounded_whole_numbers_with_a_default() {
        assert_eq!(bounded(None, 30, 1, 60), Some(30));
        assert_eq!(bounded(Some("1"), 30, 1, 60), Some(1));
        assert_eq!(bounded(Some("60"), 30, 1, 60), Some(60));
        for bad in ["0", "61", "-1", "1.5", "abc", "", "99999999999999999999999"] {
            assert_eq!(bounded(Some(bad), 30, 1, 60), None, "{bad}");
        }
    }
}
