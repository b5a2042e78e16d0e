//! A client of Pyroscope's query API over HTTP or HTTPS: connect unary calls, `POST
//! /querier.v1.QuerierService/<Method>`, JSON for metadata and protobuf for `SelectMergeProfile`
//! (whose answer is then a pprof profile).
//!
//! Every answer is read with a size limit and decoded without panicking: a malformed, truncated
//! or oversized answer is a [`QueryError`], said plainly. Requests carry exactly the body and
//! headers Pyroscope's own clients send, so recorded answers replay byte for byte.
//!
//! I/O only: what the answers mean is [`super::service`]'s business.

use std::io::Read;
use std::time::Duration;

use prost::Message;

use crate::tls::{self, CaCerts, TlsFailure};
use leakfinder_pprof::{self as pprof, Profile};

/// A JSON answer larger than this is refused (a service list of 100 000 names is ~3 MiB).
pub const MAX_JSON_BYTES: usize = 16 << 20;
/// A merged profile larger than this is refused: one window of one service.
pub const MAX_PROFILE_BYTES: usize = 64 << 20;
/// How long one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pyroscope's profile type of live heap bytes.
pub const HEAP_TYPE: &str = "memory:inuse_space:bytes:space:bytes";
/// Pyroscope's profile type of bytes allocated (each push's share: what was allocated since the
/// previous push), beside the heap's in-use bytes.
pub const ALLOC_TYPE: &str = "memory:alloc_space:bytes:space:bytes";
/// Pyroscope's profile type of goroutine counts.
pub const GOROUTINE_TYPE: &str = "goroutine:goroutine:count:goroutine:count";

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing answers at the address (Pyroscope down, or a wrong URL).
    #[error("cannot reach Pyroscope at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What the connection said.
        reason: String,
    },
    /// The TLS handshake failed: the certificate, the name or the protocol.
    #[error("TLS with Pyroscope at {url} failed: {failure}")]
    Tls {
        /// The URL.
        url: String,
        /// What failed.
        failure: TlsFailure,
    },
    /// Pyroscope took longer than [`QUERY_TIMEOUT`].
    #[error("Pyroscope did not answer {method} within {} s", QUERY_TIMEOUT.as_secs())]
    Timeout {
        /// The RPC.
        method: &'static str,
    },
    /// Pyroscope (or a proxy in front of it) refused the credentials or the tenant.
    #[error(
        "Pyroscope refused {method} with {status} ({message}): check --token/--basic-auth and --tenant"
    )]
    Unauthorized {
        /// The RPC.
        method: &'static str,
        /// 401 or 403.
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// Any other error status.
    #[error("Pyroscope answered {method} with {status}: {message}")]
    Status {
        /// The RPC.
        method: &'static str,
        /// The status.
        status: u16,
        /// The connect error's message, or the start of the body.
        message: String,
    },
    /// The answer is larger than allowed.
    #[error("Pyroscope's answer to {method} is larger than {limit} bytes")]
    TooLarge {
        /// The RPC.
        method: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The answer is not what the method answers.
    #[error("Pyroscope's answer to {method} is malformed: {reason}")]
    Malformed {
        /// The RPC.
        method: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// How to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// `Authorization: Basic ...` of `user:password`.
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

/// `LabelValues`' request, fields in the order Pyroscope's clients send them.
#[derive(serde::Serialize)]
struct LabelValuesRequest<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matchers: Vec<String>,
    start: i64,
    end: i64,
}

/// `LabelValues`' answer (`{}` when there are none).
#[derive(serde::Deserialize)]
struct LabelValuesResponse {
    #[serde(default)]
    names: Vec<String>,
}

/// `querier.v1.SelectMergeProfileRequest`, fields 1 to 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SelectMergeProfileRequest {
    /// The profile type ID.
    #[prost(string, tag = "1")]
    pub profile_type_id: String,
    /// The label selector.
    #[prost(string, tag = "2")]
    pub label_selector: String,
    /// Start, unix ms.
    #[prost(int64, tag = "3")]
    pub start: i64,
    /// End, unix ms.
    #[prost(int64, tag = "4")]
    pub end: i64,
}

/// A Pyroscope query endpoint with its credentials and tenant.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
    auth: Auth,
    tenant: Option<String>,
    queries: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Client {
    /// A client of the Pyroscope at `base` (`http://pyroscope:4040`, `https://...`), trusting
    /// the system's roots and `ca_certs`.
    pub fn new(
        base: &str,
        auth: Auth,
        tenant: Option<String>,
        ca_certs: &CaCerts,
    ) -> Result<Self, QueryError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(QueryError::Unreachable {
                url: base,
                reason: "not an http:// or https:// URL".into(),
            });
        }
        let http = ca_certs
            .client_builder()
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| QueryError::Unreachable {
                url: base.clone(),
                reason: error.to_string(),
            })?;
        Ok(Self {
            base,
            http,
            auth,
            tenant,
            queries: Default::default(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Queries sent so far (by this client and its clones).
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The values of `label` in `[start, end]`, among series `matchers` select.
    pub fn label_values(
        &self,
        label: &str,
        matchers: &[String],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QueryError> {
        const METHOD: &str = "LabelValues";
        let body = serde_json::to_vec(&LabelValuesRequest {
            name: label,
            matchers: matchers.to_vec(),
            start,
            end,
        })
        .expect("a struct of strings and integers serialises");
        let answer = self.call(METHOD, "application/json", body, MAX_JSON_BYTES)?;
        parse_label_values(&answer)
    }

    /// The profile of `profile_type` merged over `[start, end]` for the series `selector` picks.
    pub fn merge_profile(
        &self,
        profile_type: &str,
        selector: &str,
        start: i64,
        end: i64,
    ) -> Result<Profile, QueryError> {
        const METHOD: &str = "SelectMergeProfile";
        let body = SelectMergeProfileRequest {
            profile_type_id: profile_type.to_owned(),
            label_selector: selector.to_owned(),
            start,
            end,
        }
        .encode_to_vec();
        let answer = self.call(METHOD, "application/proto", body, MAX_PROFILE_BYTES)?;
        parse_profile(&answer)
    }

    /// One connect unary call; the answer's body, read up to `limit` bytes.
    fn call(
        &self,
        method: &'static str,
        content_type: &str,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<u8>, QueryError> {
        let url = format!("{}/querier.v1.QuerierService/{method}", self.base);
        let mut request = self
            .http
            .post(&url)
            .header("Content-Type", content_type)
            .header("Connect-Protocol-Version", "1")
            .header("Accept-Encoding", "identity")
            .body(body);
        request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
        };
        if let Some(tenant) = &self.tenant {
            request = request.header("X-Scope-OrgID", tenant);
        }
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = request
            .send()
            .map_err(|error| classify(&self.base, method, &error))?;
        let status = response.status().as_u16();
        let body = read_bounded(response, limit, method)?;
        if status == 200 {
            return Ok(body);
        }
        let message = connect_message(&body);
        Err(match status {
            401 | 403 => QueryError::Unauthorized {
                method,
                status,
                message,
            },
            _ => QueryError::Status {
                method,
                status,
                message,
            },
        })
    }
}

/// Reads at most `limit` bytes of `reader`: more is [`QueryError::TooLarge`], and no more than
/// `limit + 1` bytes are ever held.
pub fn read_bounded(
    reader: impl Read,
    limit: usize,
    method: &'static str,
) -> Result<Vec<u8>, QueryError> {
    let mut body = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|error| {
            if error.to_string().contains("timed out") {
                QueryError::Timeout { method }
            } else {
                QueryError::Malformed {
                    method,
                    reason: format!("the answer broke off: {error}"),
                }
            }
        })?;
    if body.len() > limit {
        return Err(QueryError::TooLarge { method, limit });
    }
    Ok(body)
}

/// `LabelValues`' answer: the names.
pub fn parse_label_values(body: &[u8]) -> Result<Vec<String>, QueryError> {
    serde_json::from_slice::<LabelValuesResponse>(body)
        .map(|answer| answer.names)
        .map_err(|error| QueryError::Malformed {
            method: "LabelValues",
            reason: format!("not a LabelValues JSON answer: {error}"),
        })
}

/// `SelectMergeProfile`'s answer: a pprof profile (Pyroscope sends it uncompressed; gzip is
/// accepted too).
pub fn parse_profile(body: &[u8]) -> Result<Profile, QueryError> {
    pprof::decode(body, MAX_PROFILE_BYTES).map_err(|error| QueryError::Malformed {
        method: "SelectMergeProfile",
        reason: error.to_string(),
    })
}

/// A connect error's message (`{"code":"...","message":"..."}`), else the body's first line:
/// what an error status from Pyroscope (or a proxy in front of it) says.
pub fn connect_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ConnectError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(error) = serde_json::from_slice::<ConnectError>(body)
        && !(error.code.is_empty() && error.message.is_empty())
    {
        return format!("{}: {}", error.code, error.message);
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "no message".to_owned()
    } else {
        line.to_owned()
    }
}

/// A failed request, said plainly.
fn classify(base: &str, method: &'static str, error: &reqwest::Error) -> QueryError {
    if error.is_timeout() {
        return QueryError::Timeout { method };
    }
    if let Some(failure) = tls::failure(error) {
        return QueryError::Tls {
            url: base.to_owned(),
            failure,
        };
    }
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        reason = format!("{reason}: {inner}");
        cause = inner.source();
    }
    QueryError::Unreachable {
        url: base.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_request_encodes_as_pyroscope_clients_send_it() {
        // The body of merge_profile/checkout/memory_inuse_space_bytes_space_bytes/1796136113000.
        let recorded = "CiRtZW1vcnk6aW51c2Vfc3BhY2U6Ynl0ZXM6c3BhY2U6Ynl0ZXMSGXtzZXJ2aWNlX25hbWU9ImNoZWNrb3V0In0Y6Ka4kKM0IICcuZCjNA==";
        let body = SelectMergeProfileRequest {
            profile_type_id: HEAP_TYPE.into(),
            label_selector: r#"{service_name="checkout"}"#.into(),
            start: 1_796_136_113_000,
            end: 1_796_136_128_000,
        }
        .encode_to_vec();
        assert_eq!(base64_encode(&body), recorded);
    }

    #[test]
    fn label_values_requests_are_compact_and_in_field_order() {
        let body = serde_json::to_string(&LabelValuesRequest {
            name: "__profile_type__",
            matchers: vec![r#"{service_name="catalog"}"#.into()],
            start: 1,
            end: 2,
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"name":"__profile_type__","matchers":["{service_name=\"catalog\"}"],"start":1,"end":2}"#
        );
        let body = serde_json::to_string(&LabelValuesRequest {
            name: "service_name",
            matchers: vec![],
            start: 1,
            end: 2,
        })
        .unwrap();
        assert_eq!(body, r#"{"name":"service_name","start":1,"end":2}"#);
    }

    #[test]
    fn answers_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_label_values(br#"{"names":["a", "b"]}"#).unwrap(),
            vec!["a", "b"]
        );
        assert!(parse_label_values(b"{}").unwrap().is_empty());
        let error = parse_label_values(b"<html>").unwrap_err();
        assert!(error.to_string().contains("LabelValues"), "{error}");
        let error = parse_profile(&[0x0a, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Pyroscope's answer to SelectMergeProfile is malformed"),
            "{error}"
        );
        assert_eq!(
            connect_message(br#"{"code":"invalid_argument","message":"bad selector"}"#),
            "invalid_argument: bad selector"
        );
        assert_eq!(
            connect_message(b"404 page not found\n"),
            "404 page not found"
        );
        assert_eq!(connect_message(b""), "no message");
    }

    #[test]
    fn an_endless_answer_is_cut_at_the_limit() {
        let endless = std::io::repeat(b'x');
        let error = read_bounded(endless, 1024, "LabelValues").unwrap_err();
        assert!(matches!(error, QueryError::TooLarge { limit: 1024, .. }));
        assert_eq!(read_bounded(&b"ok"[..], 2, "LabelValues").unwrap(), b"ok");
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
