//! `leakfinder healthcheck`: a container health probe that needs no curl in the image.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long the probe waits, in all.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why the service is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The service could not be reached or did not answer in time.
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        /// Where the probe went.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The service answered something other than 200.
    #[error("{addr}/healthz answered {status:?}")]
    Unhealthy {
        /// Where the probe went.
        addr: SocketAddr,
        /// The status line it got.
        status: String,
    },
}

/// The address to probe for a service listening on `addr`: a wildcard address is reached
/// through loopback.
pub fn probe_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// GETs `/healthz` and checks for a 200.
pub fn probe(addr: SocketAddr) -> Result<(), ProbeError> {
    let addr = probe_addr(addr);
    let unreachable = |source| ProbeError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).map_err(unreachable)?;
    let status = String::from_utf8_lossy(&head[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy { addr, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.0.0.5:80".parse().unwrap()),
            "10.0.0.5:80".parse().unwrap()
        );
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(probe(port), Err(ProbeError::Unreachable { .. })));
    }
}
