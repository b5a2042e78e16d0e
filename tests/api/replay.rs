//! A Pyroscope that only answers what was recorded: a recording's `manifest.json` maps each real
//! request (method, path, content type, body bytes) to the real answer. Any other request is
//! answered 404 and kept in [`Replay::unrecorded`], which tests assert is empty: a request the
//! recording does not have is a failure, not a guess. Two recordings of real Pyroscopes are
//! served ([`Recording`]): `tests/fixtures/pyroscope` (leaks that grow) and
//! `tests/fixtures/pyroscope-held` (leaks that grow, then hold), each with its README and ground
//! truth.
//!
//! Options model what a deployment adds in front of the same answers: required credentials and
//! tenant (a 401 otherwise), a service whose profile answers arrive truncated, renamed services
//! (a synthetic fleet for the benchmark: each alias is answered with its recorded service's
//! answers, and the service list with the aliases), and time wrapped around the recorded span
//! (for watch mode's benchmark: any window is answered with the recorded window it falls on
//! modulo the span, any range's listings with the span's).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use leakfinder_detector::fleet::client::SelectMergeProfileRequest;
use poem::http::StatusCode;
use poem::{Body, Request, Response};
use prost::Message;

/// The first recording's span: `[S, E)`, 24 windows of 15 s.
pub const S: i64 = 1_796_136_113_000;
/// The end of the first recording's span.
pub const E: i64 = 1_796_136_473_000;
/// The held recording's span: `[HELD_S, HELD_E)`, 24 windows of 15 s.
pub const HELD_S: i64 = 1_796_559_102_000;
/// The end of the held recording's span.
pub const HELD_E: i64 = 1_796_559_462_000;
/// The recordings' push window.
const WINDOW_MS: i64 = 15_000;

/// A recording of a real Pyroscope that a replay serves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// `tests/fixtures/pyroscope` (Pyroscope 2.2, 2026-12-01): checkout's slice leak, catalog
    /// healthy, orders-go's goroutine and heap leaks, all growing.
    #[default]
    Growing,
    /// `tests/fixtures/pyroscope-held` (the same Pyroscope commit, 2026-12-06): billing's slice
    /// leak capped and held, auth healthy, notify-go's goroutine leak and a heap leak that holds
    /// after its traffic stops.
    Held,
}

impl Recording {
    /// Where its fixtures are.
    pub fn dir(self) -> PathBuf {
        let name = match self {
            Self::Growing => "pyroscope",
            Self::Held => "pyroscope-held",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Its span, `[start, end)` in unix ms: 24 windows of 15 s.
    pub fn span(self) -> (i64, i64) {
        match self {
            Self::Growing => (S, E),
            Self::Held => (HELD_S, HELD_E),
        }
    }
}

/// What a replay adds to the recording.
#[derive(Default, Clone)]
pub struct Options {
    /// The recording served.
    pub recording: Recording,
    /// Time wrapped around the recorded span: a window at any whole number of windows from its
    /// start is answered with the recorded window it falls on modulo the span, and a listing of
    /// any range with the span's listing.
    pub wrap: bool,
    /// Headers (lowercase name, value) every request must carry, else 401.
    pub require: Vec<(String, String)>,
    /// The service whose `SelectMergeProfile` answers are cut in half.
    pub truncate_profiles_of: Option<String>,
    /// Alias → recorded service; when set, the service list answers the aliases.
    pub aliases: Vec<(String, String)>,
    /// Where to listen; 127.0.0.1 on a free port when unset.
    pub addr: Option<String>,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

type Key = (String, String, String, Vec<u8>);

struct State {
    recorded: HashMap<Key, Answer>,
    listing: Vec<u8>,
    span: (i64, i64),
    options: Options,
    aliases: HashMap<String, String>,
    unrecorded: Mutex<Vec<String>>,
    served: AtomicU64,
    bytes: AtomicU64,
}

/// A running replay on 127.0.0.1, port 0; stopped on drop.
pub struct Replay {
    pub url: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replay {
    /// Serves the recording with `options`.
    pub fn start(options: Options) -> Self {
        let (recorded, listing) = load(&options.recording.dir());
        let state = Arc::new(State {
            recorded,
            listing,
            span: options.recording.span(),
            aliases: options.aliases.iter().cloned().collect(),
            options,
            unrecorded: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let bind = state.options.addr.as_deref().unwrap_or("127.0.0.1:0");
        let listener = std::net::TcpListener::bind(bind)
            .unwrap_or_else(|error| panic!("the replay listens on {bind}: {error}"));
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let endpoint = poem::endpoint::make(move |request: Request| {
                    let state = Arc::clone(&served);
                    async move { answer(&state, request).await }
                });
                let _ = poem::Server::new_with_acceptor(
                    poem::listener::TcpAcceptor::from_tokio(listener).unwrap(),
                )
                .run_with_graceful_shutdown(
                    endpoint,
                    async {
                        let _ = stopped.await;
                    },
                    None,
                )
                .await;
            });
        });
        Self {
            url: format!("http://{addr}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Requests the recording does not have.
    pub fn unrecorded(&self) -> Vec<String> {
        self.state.unrecorded.lock().unwrap().clone()
    }

    /// Requests answered from the recording.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Response body bytes sent.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every manifest entry's request and answer, and the service listing's request body.
fn load(dir: &Path) -> (HashMap<Key, Answer>, Vec<u8>) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut recorded = HashMap::new();
    let mut listing = Vec::new();
    for entry in manifest["entries"].as_array().unwrap() {
        let request: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(entry["request_file"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let body = match (request["body"].as_str(), request["body_base64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(encoded)) => base64_decode(encoded),
            (None, None) => Vec::new(),
        };
        let stored = std::fs::read(dir.join(entry["response_file"].as_str().unwrap())).unwrap();
        let body_out = if entry["response_file"].as_str().unwrap().ends_with(".gz") {
            // The capturer gzipped the profile; the server sent it plain.
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(stored.as_slice())
                .read_to_end(&mut plain)
                .unwrap();
            plain
        } else {
            stored
        };
        assert_eq!(
            body_out.len() as u64,
            entry["response_bytes"].as_u64().unwrap(),
            "{} is the answer as received",
            entry["id"]
        );
        if entry["id"] == "metadata/label_values_service_name" {
            listing = body.clone();
        }
        // Header names as recorded: `Content-Type` in one recording, `content-type` in the other.
        let content_type = request["headers"]
            .as_object()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            })
            .and_then(|(_, value)| value.as_str())
            .unwrap_or("")
            .to_owned();
        recorded.insert(
            (
                entry["method"].as_str().unwrap().to_owned(),
                entry["path"].as_str().unwrap().to_owned(),
                content_type,
                body,
            ),
            Answer {
                status: entry["status"].as_u64().unwrap() as u16,
                content_type: entry["response_content_type"]
                    .as_str()
                    .unwrap_or("application/octet-stream")
                    .to_owned(),
                body: body_out,
            },
        );
    }
    assert!(
        !listing.is_empty(),
        "the manifest records the service listing"
    );
    (recorded, listing)
}

async fn answer(state: &State, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header("content-type");
    for (name, value) in &state.options.require {
        if header(name) != *value {
            return respond(
                401,
                "application/json",
                format!(r#"{{"code":"unauthenticated","message":"{name} missing or wrong"}}"#)
                    .into_bytes(),
            );
        }
    }
    let body = request.into_body().into_vec().await.unwrap_or_default();
    let body = if state.options.wrap {
        unwrap_time(state.span, &path, body)
    } else {
        body
    };
    let (body, service) = unalias(state, &path, body);
    if !state.aliases.is_empty() && body == state.listing {
        let names: Vec<&String> = state.aliases.keys().collect();
        let listing = serde_json::to_vec(&serde_json::json!({ "names": names })).unwrap();
        state.served.fetch_add(1, Ordering::Relaxed);
        return respond(200, "application/json", listing);
    }
    let key = (
        method.clone(),
        path.clone(),
        content_type.clone(),
        body.clone(),
    );
    let Some(recorded) = state.recorded.get(&key) else {
        state.unrecorded.lock().unwrap().push(format!(
            "{method} {path} ({content_type}) {}",
            String::from_utf8_lossy(&body)
        ));
        return respond(404, "text/plain", b"not in the recording".to_vec());
    };
    state.served.fetch_add(1, Ordering::Relaxed);
    let mut out = recorded.body.clone();
    if path.ends_with("/SelectMergeProfile")
        && service.is_some()
        && service == state.options.truncate_profiles_of
    {
        out.truncate(out.len() / 2);
    }
    state.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
    respond(recorded.status, &recorded.content_type, out)
}

/// The body with an alias replaced by its recorded service, and the service it names.
fn unalias(state: &State, path: &str, body: Vec<u8>) -> (Vec<u8>, Option<String>) {
    if path.ends_with("/SelectMergeProfile") {
        let Ok(mut request) = SelectMergeProfileRequest::decode(body.as_slice()) else {
            return (body, None);
        };
        let service = selector_service(&request.label_selector);
        if let Some(recorded) = service.as_ref().and_then(|s| state.aliases.get(s)) {
            request.label_selector = format!("{{service_name=\"{recorded}\"}}");
            let recorded = recorded.clone();
            return (request.encode_to_vec(), Some(recorded));
        }
        return (body, service);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let service = selector_service(&text.replace("\\\"", "\""));
    if let Some(recorded) = service.as_ref().and_then(|s| state.aliases.get(s)) {
        let from = format!("service_name=\\\"{}\\\"", service.as_ref().unwrap());
        let to = format!("service_name=\\\"{recorded}\\\"");
        return (
            text.replace(&from, &to).into_bytes(),
            Some(recorded.clone()),
        );
    }
    (body, service)
}

/// The body with its time moved into the recorded `span`: a window onto the recorded window it
/// falls on modulo the span, a JSON request's `"start":..,"end":..}` (always last, as the tools
/// send them) onto the span.
fn unwrap_time((start, end): (i64, i64), path: &str, body: Vec<u8>) -> Vec<u8> {
    if path.ends_with("/SelectMergeProfile") {
        let Ok(mut request) = SelectMergeProfileRequest::decode(body.as_slice()) else {
            return body;
        };
        if request.end - request.start != WINDOW_MS || (request.start - start) % WINDOW_MS != 0 {
            return body;
        }
        let windows = (end - start) / WINDOW_MS;
        let k = ((request.start - start) / WINDOW_MS).rem_euclid(windows);
        request.start = start + k * WINDOW_MS;
        request.end = request.start + WINDOW_MS;
        return request.encode_to_vec();
    }
    let text = String::from_utf8_lossy(&body);
    match text.rfind(",\"start\":") {
        Some(at) => format!("{},\"start\":{start},\"end\":{end}}}", &text[..at]).into_bytes(),
        None => body,
    }
}

/// `NAME` of the first `service_name="NAME"` in `text`.
fn selector_service(text: &str) -> Option<String> {
    let start = text.find("service_name=\"")? + "service_name=\"".len();
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_owned())
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .content_type(content_type)
        .body(Body::from(body))
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
