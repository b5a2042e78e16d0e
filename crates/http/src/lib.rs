//! Go's `/debug/pprof` for any tokio service: heap, CPU and task profiles from
//! [`leakfinder_profiling`], served on Go's routes and parameters so that
//! `go tool pprof http://HOST/debug/pprof/heap` reads them without the binary. Mount it as a
//! `tower::Service` (axum, tonic, hyper; feature `tower`) or a poem `Endpoint` (feature `poem`).
//!
//! ```ignore
//! let pprof = leakfinder_http::Pprof::new(profilers);
//! let app = axum::Router::new().nest_service("/debug/pprof", pprof.into_tower());
//! ```
//!
//! # Routes
//! | route | answers |
//! |---|---|
//! | `/debug/pprof/` | an HTML index |
//! | `heap` | the heap (jemalloc): Go's `alloc_*` and `inuse_*` sample types, the `age` of live memory, allocator frames trimmed |
//! | `profile?seconds=N` | CPU profile of the next N seconds (1 to 60, default 30) |
//! | `goroutine?debug=N&runtime=M`, `tasks` | tokio tasks as Go's goroutine profile: `debug=0` protobuf, `1` Go's legacy text with counts, `2` Go's goroutine dump of every task; `runtime=1` shows tokio's and std's frames |
//! | `cmdline` | the arguments, NUL-separated |
//! | `symbol?0x1a2b+0x3c4d` | names of addresses, as Go's `symbol` (GET only) |
//! | `allocs` | the same profile with `alloc_space` shown by default, as Go's |
//!
//! Every error is JSON (`{"status": 400, "error": "...", "valid": "..."}`). GET and HEAD are
//! served; OPTIONS answers 204, any other method 405, both with `Allow`.
//!
//! # The task profile
//! `goroutine` (sample type `goroutine`/`count`) has one sample per distinct stack, wait and age
//! bucket (four per octave of age), with labels `wait` (string: `chan send`, `mutex lock`, ...,
//! `running`, `untraced`), `age` and `parked` (seconds: the mean time since the tasks were
//! spawned and since their last poll left them parked, for task roots only) and `spawned`
//! (count: tasks ever spawned at the spawn site). `go tool pprof -tags` shows them;
//! `-tagfocus=age=60s:` keeps tasks a minute old or more.
//!
//! `debug=1` is Go's legacy text format (`goroutine profile: total N`, then `N @ 0x...` per
//! stack with `#` frame lines), which `go tool pprof` reads with the same stacks and counts as
//! the protobuf form. `debug=2` is Go's goroutine dump: `goroutine 903 [chan send, 5 minutes]:`
//! (minutes parked, from 1 up), frames `function(...)` and `\tfile:line +0x1a`, `created by F in
//! goroutine N`, every task in id order. Both hide the runtime's frames (tokio's, std's and the
//! tracer's) as Go hides its runtime's; `runtime=1` shows them. A task with no tokio id known
//! (counted by spawn site only, or not yet polled) gets a synthetic id from
//! 900000000000000000 up, a band of a billion per spawn site: tokio numbers tasks from 1, so its
//! ids reach that range only after 9×10^17 spawns.
//!
//! # Access
//! Secure by default: only loopback peers are served ([`Access`]), as linkerd's admin server
//! does. [`Access::allow`] adds networks and [`Access::token`] admits any peer presenting
//! `Authorization: Bearer <token>`. Others get a 403 (401 for a wrong token). A framework that
//! does not say who the peer is (a tower stack without `ConnectInfo`) is treated as remote.
//!
//! # What it needs and costs
//! What `leakfinder-profiling` needs (its `jemalloc!()` allocator, `tasks::install` on the
//! runtime, `--cfg tokio_unstable` and frame pointers, line tables in release); the surface itself
//! holds no state but the policy, and each request costs what its profile costs.
//!
//! # Layout
//! - [`access`]: who may read profiles (pure).
//! - [`routes`]: Go's routes and parameters, parsed (pure).
//! - [`Pprof`]: the answer to a request, framework-neutral ([`Request`] to [`Reply`]).
//! - `tower` and `poem` (features): the adapters, each a thin conversion.

#![warn(missing_docs)]

pub mod access;
#[cfg(feature = "poem")]
mod poem;
pub mod routes;
#[cfg(feature = "tower")]
mod tower;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use access::{Access, Network, Refusal};
use leakfinder_profiling::{Profilers, ProfilingError, pprof, tasks};
#[cfg(feature = "poem")]
pub use poem::PprofEndpoint;
use routes::{BadRoute, Route};
#[cfg(feature = "tower")]
pub use tower::PprofService;

/// The methods every route serves, for `Allow`.
pub const ALLOW: &str = "GET, HEAD, OPTIONS";

/// The `/debug/pprof` surface: the process's profilers and who may read them. Cheap to clone.
#[derive(Clone)]
pub struct Pprof {
    inner: Arc<Inner>,
}

struct Inner {
    profilers: Arc<Profilers>,
    access: Access,
}

/// A request, as any framework sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `HEAD`, ...
    pub method: &'a str,
    /// The path, with or without the `/debug/pprof` prefix.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The peer's address, when the server knows it.
    pub peer: Option<IpAddr>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
}

/// An answer, as any framework sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// Headers besides the body's length: content type, disposition, `Allow`, ...
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Pprof {
    /// The routes over `profilers`, for loopback peers only ([`Self::with_access`] admits more).
    pub fn new(profilers: Arc<Profilers>) -> Self {
        Self::with_access(profilers, Access::loopback_only())
    }

    /// The routes over `profilers`, for the peers `access` admits.
    pub fn with_access(profilers: Arc<Profilers>, access: Access) -> Self {
        Self {
            inner: Arc::new(Inner { profilers, access }),
        }
    }

    /// The answer to `request`. A CPU profile takes its `seconds`; anything else well under one.
    pub async fn respond(&self, request: Request<'_>) -> Reply {
        if let Err(refusal) = self.inner.access.check(request.peer, request.authorization) {
            tracing::warn!(peer = ?request.peer, ?refusal, path = request.path, "profile request refused");
            return match refusal {
                Refusal::Forbidden => Reply::error(
                    403,
                    "this peer may not read profiles",
                    self.inner.access.advice(),
                ),
                Refusal::BadToken => {
                    let mut reply = Reply::error(
                        401,
                        "the bearer token is not the one configured",
                        "send Authorization: Bearer <token> with the service's token",
                    );
                    reply
                        .headers
                        .push(("www-authenticate", "Bearer".to_owned()));
                    reply
                }
            };
        }
        match request.method {
            "GET" | "HEAD" => {}
            "OPTIONS" => {
                return Reply {
                    status: 204,
                    headers: vec![("allow", ALLOW.to_owned())],
                    body: Vec::new(),
                };
            }
            method => {
                let mut reply = Reply::error(
                    405,
                    &format!("{method} is not served at this route"),
                    &format!("this route serves {ALLOW}"),
                );
                reply.headers.push(("allow", ALLOW.to_owned()));
                return reply;
            }
        }
        match Route::parse(request.path, request.query) {
            Ok(route) => self.serve(route).await,
            Err(BadRoute {
                status,
                error,
                valid,
            }) => Reply::error(status, &error, valid),
        }
    }

    async fn serve(&self, route: Route) -> Reply {
        let profilers = &self.inner.profilers;
        match route {
            Route::Index => Reply::ok("text/html; charset=utf-8", INDEX.as_bytes().to_vec()),
            Route::Heap => match profilers.heap().await {
                Ok(profile) => Reply::profile("heap", &profile),
                Err(error) => Reply::failure(&error),
            },
            Route::Allocs => match profilers.heap().await {
                Ok(mut profile) => {
                    if leakfinder_profiling::heap::set_default_sample_type(
                        &mut profile,
                        "alloc_space",
                    ) {
                        Reply::profile("allocs", &profile)
                    } else {
                        Reply::error(
                            501,
                            "allocs is not collected: jemalloc's sample hooks are not installed, so only live allocations are known",
                            "read heap (live bytes and objects by allocation site)",
                        )
                    }
                }
                Err(error) => Reply::failure(&error),
            },
            Route::Cpu { seconds } => match profilers.cpu(Duration::from_secs(seconds)).await {
                Ok(profile) => Reply::profile("profile", &profile),
                Err(error) => Reply::failure(&error),
            },
            Route::Tasks { debug: 0, .. } => match profilers.tasks().await {
                Ok(stacks) => Reply::profile("goroutine", &tasks::build_profile(&stacks)),
                Err(error) => Reply::failure(&error),
            },
            Route::Tasks { debug, runtime } => {
                match profilers
                    .tasks_text(tasks::TextForm { debug, runtime })
                    .await
                {
                    Ok(text) => Reply::ok("text/plain; charset=utf-8", text.into_bytes()),
                    Err(error) => Reply::failure(&error),
                }
            }
            Route::Cmdline => {
                let arguments: Vec<String> = std::env::args_os()
                    .map(|argument| argument.to_string_lossy().into_owned())
                    .collect();
                Reply::ok(
                    "text/plain; charset=utf-8",
                    arguments.join("\0").into_bytes(),
                )
            }
            Route::Symbol { addresses } => {
                let symbols = Arc::clone(&profilers.symbols);
                let lines =
                    tokio::task::spawn_blocking(move || symbol_lines(&symbols, &addresses)).await;
                match lines {
                    Ok(text) => Reply::ok("text/plain; charset=utf-8", text.into_bytes()),
                    Err(error) => Reply::failure(&ProfilingError::Job(error)),
                }
            }
        }
    }
}

/// Go's `symbol` answer: `num_symbols: 1`, then one `0xADDRESS name` line per address found
/// (the innermost frame's function, as Go's does).
fn symbol_lines(symbols: &leakfinder_profiling::symbols::Symbolizer, addresses: &[u64]) -> String {
    let mut text = String::from("num_symbols: 1\n");
    let frames = symbols.resolve(addresses.iter().copied());
    for address in addresses {
        if let Some(frame) = frames.get(address).and_then(|frames| frames.first())
            && !frame.file.is_empty()
        {
            text.push_str(&format!("{address:#x} {}\n", frame.function));
        }
    }
    text
}

impl Reply {
    fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type", content_type.to_owned())],
            body,
        }
    }

    fn profile(name: &str, profile: &pprof::Profile) -> Self {
        let mut reply = Self::ok("application/octet-stream", pprof::encode_gzip(profile));
        reply.headers.push((
            "content-disposition",
            format!("attachment; filename=\"{name}\""),
        ));
        reply
    }

    /// The JSON error every refusal and failure carries.
    pub fn error(status: u16, error: &str, valid: &str) -> Self {
        let body = serde_json::json!({ "status": status, "error": error, "valid": valid });
        Self {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8".to_owned())],
            body: body.to_string().into_bytes(),
        }
    }

    fn failure(error: &ProfilingError) -> Self {
        let status = match error {
            ProfilingError::HeapProfilingDisabled => 403,
            ProfilingError::Unavailable(_) | ProfilingError::Timeout(_) => 503,
            ProfilingError::Dump(_) | ProfilingError::Job(_) => 500,
        };
        let valid = match error {
            ProfilingError::HeapProfilingDisabled => {
                "build with jemalloc as the global allocator and prof:true in malloc_conf"
            }
            _ => "",
        };
        tracing::warn!(%error, "profile failed");
        Self::error(status, &error.to_string(), valid)
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
<p>Profiles of this process, symbolised in the process: read them with
<code>go tool pprof http://HOST/debug/pprof/heap</code>, no binary needed.</p>
<table>
<tr><th>Profile</th><th>What it is</th><th>Parameters</th></tr>
<tr><td><a href="heap">heap</a></td>
<td>Heap allocations (jemalloc), sampled every 512 KiB on average, with Go's sample types:
<code>inuse_space</code> and <code>inuse_objects</code> (live, the default), <code>alloc_space</code>
and <code>alloc_objects</code> (everything allocated since the start, freed or not). Every live
sample carries its <code>age</code> in seconds (<code>go tool pprof -tags</code>;
<code>-tagfocus=age=300s:</code> keeps memory at least five minutes old). Allocator frames are
trimmed, so flat bytes land on the code that allocated.</td><td>none</td></tr>
<tr><td><a href="profile?seconds=5">profile</a></td>
<td>CPU profile (99 Hz). Overlapping requests share the one sampler's windows.</td>
<td><code>seconds</code>: 1 to 60, default 30</td></tr>
<tr><td><a href="goroutine?debug=1">goroutine</a></td>
<td>Tokio tasks, as Go's goroutine profile: one sample per distinct stack, wait and age bucket,
its value the number of tasks there, each stack ending in the <code>created by</code> frame of its
spawn site. Labels: <code>wait</code> (what they wait for), <code>age</code> and
<code>parked</code> (seconds since spawned and since parked, for task roots), <code>spawned</code>
(tasks ever spawned at the site); try <code>-tags</code> and <code>-tagfocus=age=60s:</code>.
Text forms as Go's: <code>debug=1</code> counts per stack (<code>go tool pprof</code> reads it),
<code>debug=2</code> every task by id (<code>goroutine 903 [chan send, 5 minutes]:</code>; tasks
with no tokio id get ids from 900000000000000000 up). Taken without pausing the runtime.</td>
<td><code>debug</code>: 0 protobuf (default), <a href="goroutine?debug=1">1</a> Go's text with
counts, <a href="goroutine?debug=2">2</a> Go's dump of every task;
<code>runtime</code>: <a href="goroutine?debug=2&amp;runtime=1">1</a> shows tokio's and std's
frames, hidden by default as Go hides its runtime's</td></tr>
<tr><td><a href="tasks?debug=1">tasks</a></td><td>Alias of goroutine.</td>
<td>as goroutine</td></tr>
<tr><td><a href="cmdline">cmdline</a></td><td>The process's arguments, NUL-separated.</td>
<td>none</td></tr>
<tr><td><a href="symbol">symbol</a></td><td>Function names of addresses, as Go's.</td>
<td>the addresses: <code>symbol?0x1a2b+0x3c4d</code></td></tr>
<tr><td><a href="allocs">allocs</a></td><td>The same profile as heap, showing
<code>alloc_space</code> by default: everything sampled since the start, freed or not, as Go's.</td>
<td>none</td></tr>
</table>
</body>
</html>
"#;
