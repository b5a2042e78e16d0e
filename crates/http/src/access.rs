//! Who may read profiles. Profiles show a process's code, memory and arguments, so the default
//! is loopback peers only, as linkerd's admin server does; a bearer token or an allow-list of
//! networks opens them to more. Pure: a decision from a peer address and a header.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The policy: loopback peers, peers in the allowed networks, and any peer with the token.
#[derive(Clone, Default)]
pub struct Access {
    allowed: Vec<Network>,
    token: Option<String>,
    everyone: bool,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("allowed", &self.allowed)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("everyone", &self.everyone)
            .finish()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not loopback nor allowed, and presented no token (403).
    Forbidden,
    /// The request presented a token, and it is not the one configured (401).
    BadToken,
}

impl Access {
    /// Loopback peers only (the default).
    pub fn loopback_only() -> Self {
        Self::default()
    }

    /// Also peers in `network` (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`).
    pub fn allow(mut self, network: Network) -> Self {
        self.allowed.push(network);
        self
    }

    /// Also any peer whose request carries `Authorization: Bearer <token>`. An empty token is
    /// ignored: it would let everyone in.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Every peer, with no check at all: only for a listener that something else guards.
    pub fn everyone() -> Self {
        Self {
            everyone: true,
            ..Self::default()
        }
    }

    /// Whether a request from `peer` (`None` when the server did not say) with this
    /// `Authorization` header may be served.
    pub fn check(&self, peer: Option<IpAddr>, authorization: Option<&str>) -> Result<(), Refusal> {
        if self.everyone {
            return Ok(());
        }
        if let Some(presented) = authorization.and_then(bearer) {
            return match &self.token {
                Some(token) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => Ok(()),
                _ => Err(Refusal::BadToken),
            };
        }
        match peer {
            Some(peer) if is_loopback(peer) => Ok(()),
            Some(peer) if self.allowed.iter().any(|network| network.contains(peer)) => Ok(()),
            _ => Err(Refusal::Forbidden),
        }
    }

    /// What would have let the request in, for the refusal's body.
    pub fn advice(&self) -> &'static str {
        if self.token.is_some() {
            "connect from loopback or an allowed network, or send Authorization: Bearer <token>"
        } else {
            "profiles are served to loopback peers only unless the service configures a token or \
             an allow-list"
        }
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Loopback, including an IPv4 loopback address mapped into IPv6 (`::ffff:127.0.0.1`), as a
/// dual-stack listener reports it.
fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An address or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `peer` is in this network.
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.address, peer.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(peer)) => {
                prefix_eq(&network.octets(), &peer.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(peer)) => {
                prefix_eq(&network.octets(), &peer.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(network: &[u8], peer: &[u8], prefix: u8) -> bool {
    let bits = usize::from(prefix);
    let (whole, rest) = (bits / 8, bits % 8);
    if network[..whole] != peer[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        network[whole] & mask == peer[whole] & mask
    }
}

/// Why a network did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkError(String);

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IP address or a network (10.0.0.0/8, fd00::/8)",
            self.0
        )
    }
}

impl std::error::Error for NetworkError {}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || NetworkError(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= width)
                .ok_or_else(error)?,
        };
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn by_default_only_loopback_peers_are_served() {
        let access = Access::loopback_only();
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(access.check(ip(peer), None), Ok(()), "{peer}");
        }
        for peer in [
            "10.1.2.3",
            "192.168.0.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert_eq!(
                access.check(ip(peer), None),
                Err(Refusal::Forbidden),
                "{peer}"
            );
        }
        assert_eq!(access.check(None, None), Err(Refusal::Forbidden));
    }

    #[test]
    fn a_token_admits_any_peer_and_a_wrong_one_is_refused_even_on_loopback() {
        let access = Access::loopback_only().token("s3cret");
        assert_eq!(access.check(ip("10.1.2.3"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            access.check(ip("10.1.2.3"), Some("bearer  s3cret ")),
            Ok(())
        );
        assert_eq!(access.check(None, Some("Bearer s3cret")), Ok(()));
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET"] {
            assert_eq!(
                access.check(ip("10.1.2.3"), Some(wrong)),
                Err(Refusal::BadToken)
            );
            assert_eq!(
                access.check(ip("127.0.0.1"), Some(wrong)),
                Err(Refusal::BadToken)
            );
        }
        // Not a bearer credential: judged by the peer alone.
        assert_eq!(
            access.check(ip("10.1.2.3"), Some("Basic czNjcmV0")),
            Err(Refusal::Forbidden)
        );
        assert_eq!(access.check(ip("127.0.0.1"), Some("Bearer ")), Ok(()));
    }

    #[test]
    fn without_a_configured_token_every_presented_token_is_wrong() {
        let access = Access::loopback_only().token("");
        assert_eq!(
            access.check(ip("10.1.2.3"), Some("Bearer ")),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            access.check(ip("10.1.2.3"), Some("Bearer x")),
            Err(Refusal::BadToken)
        );
    }

    #[test]
    fn allowed_networks_admit_their_peers_only() {
        let access = Access::loopback_only()
            .allow("10.0.0.0/8".parse().unwrap())
            .allow("192.168.1.7".parse().unwrap())
            .allow("fd00::/8".parse().unwrap())
            .allow("172.16.0.0/12".parse().unwrap());
        for peer in [
            "10.255.0.1",
            "::ffff:10.0.0.1",
            "192.168.1.7",
            "fd12::1",
            "172.31.255.255",
        ] {
            assert_eq!(access.check(ip(peer), None), Ok(()), "{peer}");
        }
        for peer in ["11.0.0.1", "192.168.1.8", "fe00::1", "172.32.0.1"] {
            assert_eq!(
                access.check(ip(peer), None),
                Err(Refusal::Forbidden),
                "{peer}"
            );
        }
    }

    #[test]
    fn everyone_is_everyone() {
        assert_eq!(Access::everyone().check(None, Some("Bearer x")), Ok(()));
    }

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Network>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Network>().unwrap().to_string(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/-1",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        assert_eq!(
            "nope".parse::<Network>().unwrap_err().to_string(),
            "\"nope\" is not an IP address or a network (10.0.0.0/8, fd00::/8)"
        );
    }

    #[test]
    fn the_token_is_not_printed() {
        let debug = format!("{:?}", Access::loopback_only().token("s3cret"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
