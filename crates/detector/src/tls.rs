//! HTTPS for the detector's two clients, `scan`'s [`crate::sampler`] and `fleet`'s Pyroscope
//! client: rustls, with the system's roots (rustls-platform-verifier) and the CAs of
//! `--ca-cert FILE` beside them, and a failed handshake said as what failed: the certificate,
//! the name, or the protocol.
//!
//! It builds clients and reads errors; it sends nothing itself.

use std::error::Error;
use std::path::{Path, PathBuf};

/// Why `--ca-cert` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaCertError {
    /// The file cannot be read.
    #[error("cannot read --ca-cert {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("--ca-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----){}", .path.display(), .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said, if it said anything.
        reason: Option<String>,
    },
}

/// Certificate authorities trusted beside the system's roots (`--ca-cert FILE`).
#[derive(Clone, Default)]
pub struct CaCerts {
    certificates: Vec<reqwest::Certificate>,
}

impl CaCerts {
    /// The system's roots only.
    pub fn none() -> Self {
        Self::default()
    }

    /// The certificates of a PEM file (one or more), or none without a file.
    pub fn read(path: Option<&Path>) -> Result<Self, CaCertError> {
        let Some(path) = path else {
            return Ok(Self::none());
        };
        let pem = std::fs::read(path).map_err(|source| CaCertError::Read {
            path: path.to_owned(),
            source,
        })?;
        let not_pem = |reason: Option<String>| CaCertError::NotPem {
            path: path.to_owned(),
            reason,
        };
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| not_pem(Some(error.to_string())))?;
        if certificates.is_empty() {
            return Err(not_pem(None));
        }
        Ok(Self { certificates })
    }

    /// How many certificates were read.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    /// Whether there are none (the system's roots only).
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// A client builder that trusts the system's roots and these.
    pub fn client_builder(&self) -> reqwest::blocking::ClientBuilder {
        install_crypto_provider();
        let builder = reqwest::blocking::Client::builder();
        if self.certificates.is_empty() {
            builder
        } else {
            builder.tls_certs_merge(self.certificates.iter().cloned())
        }
    }
}

/// Makes ring the process's rustls crypto provider, unless one is set already: reqwest is built
/// without a provider of its own (see `Cargo.toml`), so every client, ours and those that
/// libraries build (the OTLP exporter's), needs one before it is built. Idempotent.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: that one serves as well.
        let _ = ring_provider().install_default();
    }
}

/// rustls's ring provider. rustls 0.23.48 deprecates it for lacking post-quantum key exchange
/// (X25519MLKEM768, which aws-lc-rs has); classical X25519 protects a profile scan or query.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// What failed in a TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The server's certificate is not trusted (unknown issuer, expired, not valid yet, ...).
    #[error("its certificate is not trusted ({0}): pass the CA that signed it with --ca-cert FILE")]
    Certificate(String),
    /// The certificate is trusted but not for the host name in the URL.
    #[error("its certificate is not valid for this host name (name mismatch: {0})")]
    Name(String),
    /// There was no TLS handshake to speak of: the server answered something else (a plain
    /// `http://` server behind an `https://` URL) or broke the handshake off.
    #[error("no TLS handshake (protocol error: {0}): is it a plain http:// server?")]
    Protocol(String),
}

/// The TLS failure behind a failed request, if that is what failed.
pub fn failure(error: &(dyn Error + 'static)) -> Option<TlsFailure> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(classify(tls));
        }
        match current.downcast_ref::<std::io::Error>() {
            Some(io) => {
                if io.kind() == std::io::ErrorKind::UnexpectedEof
                    && io.to_string().contains("tls handshake")
                {
                    return Some(TlsFailure::Protocol(
                        "the server closed the connection during the handshake".into(),
                    ));
                }
                // An I/O error's `source()` skips the error it wraps (it is that error's own
                // source): the connector wraps rustls' error in one or two of them.
                cause = match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn Error + 'static)),
                    None => current.source(),
                };
            }
            None => cause = current.source(),
        }
    }
    None
}

fn classify(error: &rustls::Error) -> TlsFailure {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                TlsFailure::Name(certificate.to_string())
            }
            C::UnknownIssuer => {
                TlsFailure::Certificate("unknown issuer: no trusted root signed it".into())
            }
            other => TlsFailure::Certificate(other.to_string()),
        },
        rustls::Error::NoCertificatesPresented => {
            TlsFailure::Certificate("the server presented no certificate".into())
        }
        other => TlsFailure::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_say_what_failed() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            failure(&unknown),
            Some(TlsFailure::Certificate(
                "unknown issuer: no trusted root signed it".into()
            ))
        );
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert!(matches!(failure(&name), Some(TlsFailure::Name(_))));
        // Wrapped in two I/O errors, as the connector returns it.
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ));
        let failed = failure(&wrapped).unwrap();
        assert!(matches!(failed, TlsFailure::Protocol(_)), "{failed:?}");
        assert!(
            failed
                .to_string()
                .ends_with("is it a plain http:// server?"),
            "{failed}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(failure(&refused), None);
    }

    #[test]
    fn a_ca_file_is_read_or_refused_clearly() {
        assert!(CaCerts::read(None).unwrap().is_empty());
        let missing = CaCerts::read(Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .unwrap();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read --ca-cert /nonexistent/ca.pem: "),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("leakfinder-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = CaCerts::read(Some(&garbage)).err().unwrap();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
