//! The abuse-defence keys: what happens to requests from sources that are no trunk peer
//! (`sip.unknown`), per-source rate limits for SIP requests and NG commands
//! (`rate_per_source` / `burst_per_source` in `[sip]` and `[control]`), and the address
//! allow-list of the operator endpoints (`control.allow`), required when they listen beyond
//! loopback.
//!
//! A child module of `config` so that these keys share its file:line:key errors.

use std::net::{IpAddr, SocketAddr};

use super::{ConfigError, Seg};
use crate::config::routing::ErrAt;

/// What mediagate does with a request from an address that is no configured trunk peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unknown {
    /// Answer 403 Forbidden (statelessly, no transaction is kept).
    #[default]
    Reject,
    /// Send nothing: a scanner learns nothing, not even that SIP runs here.
    Drop,
}

/// A token bucket per source IP address: `rate` per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceLimit {
    pub rate: f64,
    pub burst: f64,
}

/// Networks allowed to reach the NG socket and the HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<(IpAddr, u8)>);

impl AllowList {
    /// Whether `ip` is inside one of the networks (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            _ => false,
        })
    }
}

fn prefix_eq(net: &[u8], addr: &[u8], len: u8) -> bool {
    let (whole, bits) = (usize::from(len / 8), len % 8);
    net[..whole] == addr[..whole]
        && (bits == 0 || (net[whole] ^ addr[whole]) & (0xffu8 << (8 - bits)) == 0)
}

/// The raw keys of `[sip]` this module validates.
pub(super) struct RawSipAbuse<'a> {
    pub unknown: Option<&'a str>,
    pub rate_per_source: Option<f64>,
    pub burst_per_source: Option<f64>,
}

/// The raw keys of `[control]` this module validates, with the addresses it guards.
pub(super) struct RawControlAbuse<'a> {
    pub rate_per_source: Option<f64>,
    pub burst_per_source: Option<f64>,
    pub allow: Option<&'a [String]>,
    pub http: Option<SocketAddr>,
    pub ng: Option<SocketAddr>,
}

/// `sip.unknown` and the SIP per-source limit.
pub(super) fn sip(
    raw: RawSipAbuse,
    err: ErrAt,
) -> Result<(Unknown, Option<SourceLimit>), ConfigError> {
    let unknown = match raw.unknown {
        None | Some("reject") => Unknown::Reject,
        Some("drop") => Unknown::Drop,
        Some(other) => {
            return Err(err(
                &[Seg::Key("sip"), Seg::Key("unknown")],
                format!("`{other}` is not \"reject\" or \"drop\""),
            ))
        }
    };
    let limit = source_limit("sip", raw.rate_per_source, raw.burst_per_source, err)?;
    Ok((unknown, limit))
}

/// The NG per-source limit and `control.allow`, which must be present when the NG socket or
/// the HTTP endpoint listens on an address other than loopback.
pub(super) fn control(
    raw: RawControlAbuse,
    err: ErrAt,
) -> Result<(Option<SourceLimit>, Option<AllowList>), ConfigError> {
    let limit = source_limit("control", raw.rate_per_source, raw.burst_per_source, err)?;
    let allow = match raw.allow {
        None => None,
        Some(nets) => {
            let mut list = Vec::new();
            for (i, n) in nets.iter().enumerate() {
                list.push(parse_net(n).map_err(|m| {
                    err(&[Seg::Key("control"), Seg::Key("allow"), Seg::Index(i)], m)
                })?);
            }
            Some(AllowList(list))
        }
    };
    if allow.is_none() {
        for (key, addr) in [("http", raw.http), ("ng", raw.ng)] {
            if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                return Err(err(
                    &[Seg::Key("control"), Seg::Key(key)],
                    format!(
                        "listens on {a}, beyond loopback: name who may reach it in \
                         control.allow (e.g. allow = [\"10.0.0.0/8\"])"
                    ),
                ));
            }
        }
    }
    Ok((limit, allow))
}

fn source_limit(
    section: &str,
    rate: Option<f64>,
    burst: Option<f64>,
    err: ErrAt,
) -> Result<Option<SourceLimit>, ConfigError> {
    let positive = |key, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(err(
                &[Seg::Key(section), Seg::Key(key)],
                format!("{v} is not a positive number"),
            ))
        }
    };
    match (rate, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(err(
            &[Seg::Key(section), Seg::Key("burst_per_source")],
            "needs rate_per_source".into(),
        )),
        (Some(r), b) => {
            let rate = positive("rate_per_source", r)?;
            let burst = match b {
                Some(b) => positive("burst_per_source", b)?,
                None => rate.max(1.0),
            };
            if burst < 1.0 {
                return Err(err(
                    &[Seg::Key(section), Seg::Key("burst_per_source")],
                    format!("{burst} is less than one request"),
                ));
            }
            Ok(Some(SourceLimit { rate, burst }))
        }
    }
}

/// `"10.0.0.0/8"`, `"192.0.2.7"` (a single address) or `"fd00::/8"`.
fn parse_net(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("`{s}` is not an address or network like \"10.0.0.0/8\"");
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_by_prefix() {
        let list = AllowList(vec![
            parse_net("10.99.0.0/16").unwrap(),
            parse_net("192.0.2.7").unwrap(),
            parse_net("fd00::/8").unwrap(),
            parse_net("172.16.0.0/12").unwrap(),
        ]);
        for ok in [
            "10.99.3.4",
            "192.0.2.7",
            "fd12::1",
            "::ffff:10.99.0.1",
            "172.31.255.1",
        ] {
            assert!(list.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "10.98.0.1",
            "192.0.2.8",
            "fe80::1",
            "172.32.0.1",
            "127.0.0.1",
        ] {
            assert!(!list.allows(no.parse().unwrap()), "{no}");
        }
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("ten/8").is_err());
    }
}
