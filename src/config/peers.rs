//! Trunk peers written as addresses (`udp:192.0.2.1:5060`) or as DNS host names
//! (`udp:itsp.example`, `tls:itsp.example:5061`), and `[sip] dns_servers`.
//!
//! A named peer is resolved at run time by `signalling::dns` (RFC 3263): without a port by
//! NAPTR and SRV, then A/AAAA; with a port by A/AAAA only.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::{Endpoint, Transport};

/// A trunk peer given by host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPeer {
    pub transport: Transport,
    /// The host name, lower case, without a trailing dot.
    pub host: String,
    /// The port when given: the name is then resolved by A/AAAA only (no NAPTR/SRV).
    pub port: Option<u16>,
}

impl NamedPeer {
    /// The port used for the host's own addresses when no SRV record names one (RFC 3263
    /// §4.2): 5061 for TLS, else 5060.
    pub fn default_port(&self) -> u16 {
        match self.transport {
            Transport::Tls => 5061,
            Transport::Udp | Transport::Tcp => 5060,
        }
    }
}

impl fmt::Display for NamedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport.lower(), self.host)?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// A trunk peer as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerSpec {
    Addr(Endpoint),
    Name(NamedPeer),
}

impl PeerSpec {
    pub fn transport(&self) -> Transport {
        match self {
            PeerSpec::Addr(e) => e.transport,
            PeerSpec::Name(n) => n.transport,
        }
    }
}

/// Whether `host` is a DNS host name: two or more dot-separated labels of letters, digits and
/// hyphens (not at either end of a label), at most 253 characters, with a letter somewhere (so
/// never an IP address). A single label (`udp:itsp`) is refused: it is more likely a typo than
/// a name meant for the resolver's search list.
fn is_host_name(host: &str) -> bool {
    let labels_ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    labels_ok
        && host.contains('.')
        && host.len() <= 253
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Parses a `peers` entry: an address endpoint, else `PROTO:HOST` or `PROTO:HOST:PORT`.
pub(super) fn parse_peer(s: &str) -> Result<PeerSpec, String> {
    let endpoint_error = match s.parse::<Endpoint>() {
        Ok(e) => return Ok(PeerSpec::Addr(e)),
        Err(e) => e,
    };
    let Some((proto, rest)) = s.split_once(':') else {
        return Err(endpoint_error);
    };
    let Some(transport) = Transport::from_lower(proto) else {
        return Err(endpoint_error);
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, Some(port)),
            _ => return Err(format!("`{p}` is not a port (1-65535)")),
        },
        None => (rest, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() || !is_host_name(&host) {
        return Err(format!(
            "`{s}` is neither PROTO:IP:PORT nor PROTO:HOST[:PORT] with a DNS host name"
        ));
    }
    Ok(PeerSpec::Name(NamedPeer {
        transport,
        host,
        port,
    }))
}

/// Parses a `dns_servers` entry: `IP` (port 53) or `IP:PORT`.
pub(super) fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not an IP address or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_by_address_or_name() {
        assert!(matches!(
            parse_peer("udp:192.0.2.1:5060"),
            Ok(PeerSpec::Addr(_))
        ));
        let n = |s| match parse_peer(s) {
            Ok(PeerSpec::Name(n)) => n,
            other => panic!("{s}: {other:?}"),
        };
        let a = n("udp:ITSP.example.");
        assert_eq!((a.host.as_str(), a.port), ("itsp.example", None));
        assert_eq!(a.default_port(), 5060);
        let b = n("tls:sip.itsp.example:5071");
        assert_eq!((b.transport, b.port), (Transport::Tls, Some(5071)));
        assert_eq!(b.to_string(), "tls:sip.itsp.example:5071");
        assert_eq!(n("tls:itsp.example").default_port(), 5061);
        for bad in [
            "udp:192.0.2.1",
            "udp:-bad.example",
            "udp:a..b",
            "udp:itsp.example:0",
            "udp:itsp.example:x",
            "sctp:itsp.example",
            "itsp.example",
            "udp:under_score.example",
            "udp:nowhere",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_dns_server("10.0.0.53"),
            Ok("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("10.0.0.53:5353"),
            Ok("10.0.0.53:5353".parse().unwrap())
        );
        assert!(parse_dns_server("dns.example").is_err());
    }
}
