//! Fetching profiles from a target over HTTP or HTTPS: this service, or any Go service that
//! serves `net/http/pprof`. The only I/O of `scan`.

use std::io::Read;
use std::time::Duration;

use super::profile::ProfileKind;
use crate::tls::{self, CaCerts, TlsFailure};
use leakfinder_pprof::{self as pprof, Profile};

/// The largest response read (compressed).
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;
/// The largest profile decoded (decompressed): anything larger is refused as a bomb.
pub const MAX_PROFILE_BYTES: usize = 256 << 20;
/// How long one fetch may take (a Go heap profile with `gc=1` runs a GC first, well within it).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a profile could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an `http://` or `https://` URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The target accepted the connection but sent no answer in time: it is hung or overloaded.
    #[error("target did not answer within {} s: {url}", FETCH_TIMEOUT.as_secs())]
    Timeout {
        /// What was fetched.
        url: String,
    },
    /// Nothing listens at the target's address.
    #[error("connection refused: {url} (is the service running?)")]
    Refused {
        /// What was fetched.
        url: String,
    },
    /// The TLS handshake failed: the certificate, the name or the protocol.
    #[error("TLS with {url} failed: {failure}")]
    Tls {
        /// What was fetched.
        url: String,
        /// What failed.
        failure: TlsFailure,
    },
    /// The request failed otherwise.
    #[error("cannot fetch {url}: {reason}")]
    Transport {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The target answered with an error status.
    #[error("{url} answered {status}: is this a pprof endpoint?")]
    Status {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// The target answered something that is not a pprof profile.
    #[error("{url} did not return a pprof profile ({content_type}): {reason}")]
    NotPprof {
        /// What was fetched.
        url: String,
        /// The response's content type.
        content_type: String,
        /// Why it is not a profile.
        reason: String,
    },
}

/// A service that serves pprof: its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    base: String,
}

impl Target {
    /// The target at `url`, which may be the base URL or any `/debug/pprof/...` URL of it.
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        let base = url.split_once("/debug/pprof").map_or(url, |(base, _)| base);
        let base = base.split_once('?').map_or(base, |(base, _)| base);
        let base = base.trim_end_matches('/');
        if base.len() <= "https://".len() {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        Ok(Self {
            base: base.to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where a profile of `kind` is fetched. Go's heap profile is fresh only with `gc=1`; this
    /// service ignores the parameter.
    pub fn url(&self, kind: ProfileKind) -> String {
        match kind {
            ProfileKind::Heap => format!("{}/debug/pprof/heap?gc=1", self.base),
            ProfileKind::Tasks => format!("{}/debug/pprof/goroutine", self.base),
        }
    }
}

/// Fetches profiles from one target.
pub struct Sampler {
    client: reqwest::blocking::Client,
    target: Target,
}

impl Sampler {
    /// A sampler for `target`, trusting the system's roots.
    pub fn new(target: Target) -> Result<Self, FetchError> {
        Self::with_ca_certs(target, &CaCerts::none())
    }

    /// A sampler for `target`, trusting the system's roots and `ca_certs` (`--ca-cert`).
    pub fn with_ca_certs(target: Target, ca_certs: &CaCerts) -> Result<Self, FetchError> {
        let client = ca_certs
            .client_builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| FetchError::Transport {
                url: target.base.clone(),
                reason: error.to_string(),
            })?;
        Ok(Self { client, target })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Fetches the goroutine dump (`/debug/pprof/goroutine?debug=2`, Go's text of every
    /// goroutine with its id and wait), as text.
    pub fn goroutine_dump(&self) -> Result<String, FetchError> {
        let url = format!("{}/debug/pprof/goroutine?debug=2", self.target.base);
        let (bytes, _) = self.get(url)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Fetches and decodes one profile; the raw bytes are returned too, to be saved.
    pub fn fetch(&self, kind: ProfileKind) -> Result<(Vec<u8>, Profile), FetchError> {
        let url = self.target.url(kind);
        let (bytes, content_type) = self.get(url.clone())?;
        let profile =
            pprof::decode(&bytes, MAX_PROFILE_BYTES).map_err(|error| FetchError::NotPprof {
                url: url.clone(),
                content_type: content_type.clone(),
                reason: error.to_string(),
            })?;
        if profile.sample_type.is_empty() {
            return Err(FetchError::NotPprof {
                url,
                content_type,
                reason: "it has no sample types".into(),
            });
        }
        Ok((bytes, profile))
    }

    /// GETs `url`: its body, read up to [`MAX_DOWNLOAD_BYTES`], and its content type. Anything
    /// but a 200 is an error.
    fn get(&self, url: String) -> Result<(Vec<u8>, String), FetchError> {
        let response = self
            .client
            .get(&url)
            .send()
            .map_err(|error| classify(&url, &error))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status { url, status });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("no content type")
            .to_owned();
        let mut bytes = Vec::new();
        response
            .take(MAX_DOWNLOAD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::TimedOut => FetchError::Timeout { url: url.clone() },
                _ => FetchError::Transport {
                    url: url.clone(),
                    reason: error.to_string(),
                },
            })?;
        if bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
            return Err(FetchError::NotPprof {
                url,
                content_type,
                reason: format!("larger than {MAX_DOWNLOAD_BYTES} bytes"),
            });
        }
        Ok((bytes, content_type))
    }
}

/// A failed request, said plainly: timed out, refused, or otherwise.
fn classify(url: &str, error: &reqwest::Error) -> FetchError {
    let url = url.to_owned();
    if error.is_timeout() {
        return FetchError::Timeout { url };
    }
    if let Some(failure) = tls::failure(error) {
        return FetchError::Tls { url, failure };
    }
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return FetchError::Refused { url },
                std::io::ErrorKind::TimedOut => return FetchError::Timeout { url },
                _ => {}
            }
        }
        source = cause.source();
    }
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        reason = format!("{reason}: {inner}");
        cause = inner.source();
    }
    FetchError::Transport { url, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_and_silent_targets_are_said_plainly() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = Sampler::new(Target::parse(&format!("http://127.0.0.1:{port}")).unwrap())
            .unwrap()
            .fetch(ProfileKind::Heap)
            .unwrap_err();
        assert!(matches!(refused, FetchError::Refused { .. }), "{refused:?}");
        assert!(
            refused.to_string().starts_with("connection refused"),
            "{refused}"
        );

        // A listener that accepts and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let started = std::time::Instant::now();
        let timed_out = Sampler::new(Target::parse(&url).unwrap())
            .unwrap()
            .fetch(ProfileKind::Tasks)
            .unwrap_err();
        assert!(
            timed_out
                .to_string()
                .starts_with("target did not answer within 10 s"),
            "{timed_out}"
        );
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_secs(5));
        drop(silent);
    }

    #[test]
    fn targets_accept_base_and_pprof_urls() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/debug/pprof/",
            "http://127.0.0.1:8080/debug/pprof/heap?gc=1",
        ] {
            assert_eq!(
                Target::parse(url).unwrap().base(),
                "http://127.0.0.1:8080",
                "{url}"
            );
        }
        let target = Target::parse("https://svc.example/app").unwrap();
        assert_eq!(
            target.url(ProfileKind::Heap),
            "https://svc.example/app/debug/pprof/heap?gc=1"
        );
        assert_eq!(
            target.url(ProfileKind::Tasks),
            "https://svc.example/app/debug/pprof/goroutine"
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
