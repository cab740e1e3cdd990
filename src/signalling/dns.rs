//! Trunk peers by DNS name (RFC 3263 §4): one task per trunk with named peers resolves them
//! and sends the control loop the trunk's whole target list, again whenever the records'
//! TTLs run out. Resolution runs beside the control loop (tokio tasks) and never blocks it.
//!
//! For `PROTO:HOST` (no port): NAPTR records of HOST whose service fits the transport
//! (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, flag `S`) name the SRV records to use, in order and
//! preference; without such NAPTR records, `_sip._udp.HOST`, `_sip._tcp.HOST` or
//! `_sips._tcp.HOST`. SRV targets are ordered by priority and, within a priority, by weighted
//! random choice (RFC 2782), and each target's addresses (A/AAAA) become candidates with the
//! SRV port. Without SRV records, HOST's own addresses with port 5060 (5061 for TLS). For
//! `PROTO:HOST:PORT`: HOST's addresses only. Every address found is a failover candidate, in
//! this order; only addresses of the trunk's `local` family are kept.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;

use crate::config::{Config, Endpoint, NamedPeer, PeerSpec, Transport, TrunkTls};

/// Shortest time between two resolutions of a trunk, whatever the TTLs say.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Longest time a resolution is used.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Wait before trying again when a name did not resolve at all.
const RETRY: Duration = Duration::from_secs(30);

/// A trunk's peer list after resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub trunk: usize,
    /// Every target, in the order calls try them.
    pub peers: Vec<Endpoint>,
    /// The TLS settings of the TLS targets: the host name their certificate must carry (the
    /// configured name, as RFC 5922 asks, unless the trunk has `tls_name`) and the trunk's
    /// `tls_client_auth`.
    pub tls: Vec<(SocketAddr, TrunkTls)>,
}

/// Starts the resolver tasks; `None` when no trunk has a peer given by name.
pub fn spawn(config: &Config) -> std::io::Result<Option<mpsc::Receiver<Resolved>>> {
    let named: Vec<usize> = (0..config.trunks.len())
        .filter(|t| config.trunks[*t].has_named_peers())
        .collect();
    if named.is_empty() {
        return Ok(None);
    }
    let resolver = Arc::new(resolver(&config.sip.dns_servers)?);
    let (tx, rx) = mpsc::channel(16);
    for t in named {
        let trunk = &config.trunks[t];
        let task = TrunkTask {
            trunk: t,
            specs: trunk.peer_specs.clone(),
            ipv4: trunk.local.addr.is_ipv4(),
            tls: trunk.tls.clone(),
        };
        tokio::spawn(task.run(resolver.clone(), tx.clone()));
    }
    Ok(Some(rx))
}

/// The system's resolver (`/etc/resolv.conf`), or one asking `servers` (UDP, then TCP).
fn resolver(servers: &[SocketAddr]) -> std::io::Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    if servers.is_empty() {
        let builder = TokioResolver::builder(provider).map_err(|e| {
            std::io::Error::other(format!("reading the system's DNS configuration: {e}"))
        })?;
        return Ok(builder.build());
    }
    let mut config = ResolverConfig::new();
    for s in servers {
        config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
    }
    let mut builder = TokioResolver::builder_with_config(config, provider);
    *builder.options_mut() = ResolverOpts::default();
    Ok(builder.build())
}

struct TrunkTask {
    trunk: usize,
    specs: Vec<PeerSpec>,
    /// The trunk's local address family: targets of the other family are left out.
    ipv4: bool,
    /// The trunk's `tls_name` and `tls_client_auth`.
    tls: TrunkTls,
}

impl TrunkTask {
    async fn run(self, resolver: Arc<TokioResolver>, tx: mpsc::Sender<Resolved>) {
        let mut last: Option<Vec<Endpoint>> = None;
        loop {
            let mut peers = Vec::new();
            let mut tls = Vec::new();
            let mut until = Instant::now() + MAX_REFRESH;
            let mut failed = false;
            for spec in &self.specs {
                match spec {
                    PeerSpec::Addr(e) => peers.push(*e),
                    PeerSpec::Name(n) => match resolve(&resolver, n).await {
                        Ok((addrs, valid_until)) => {
                            until = until.min(valid_until);
                            for addr in addrs.into_iter().filter(|a| a.is_ipv4() == self.ipv4) {
                                let e = Endpoint {
                                    transport: n.transport,
                                    addr,
                                };
                                if !peers.contains(&e) {
                                    peers.push(e);
                                }
                                if n.transport == Transport::Tls {
                                    let name = self.tls.name.clone().unwrap_or(n.host.clone());
                                    let settings = TrunkTls {
                                        name: Some(name),
                                        client_auth: self.tls.client_auth,
                                    };
                                    tls.push((addr, settings));
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(peer = %n, error = %e, "cannot resolve trunk peer");
                            failed = true;
                        }
                    },
                }
            }
            // A name that failed keeps the previous list (its targets may still be good).
            let usable = !(failed && last.is_some());
            if usable && last.as_ref() != Some(&peers) {
                last = Some(peers.clone());
                let resolved = Resolved {
                    trunk: self.trunk,
                    peers,
                    tls,
                };
                if tx.send(resolved).await.is_err() {
                    return;
                }
            }
            let now = Instant::now();
            let wait = if failed {
                RETRY
            } else {
                until
                    .saturating_duration_since(now)
                    .clamp(MIN_REFRESH, MAX_REFRESH)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Every address of `peer` in RFC 3263 order, and until when the answer holds.
async fn resolve(
    resolver: &TokioResolver,
    peer: &NamedPeer,
) -> Result<(Vec<SocketAddr>, Instant), String> {
    let host = format!("{}.", peer.host);
    if let Some(port) = peer.port {
        return addresses(resolver, &host, port).await;
    }
    let mut until = Instant::now() + MAX_REFRESH;
    let mut srv_names = Vec::new();
    if let Ok(naptr) = resolver.lookup(host.as_str(), RecordType::NAPTR).await {
        until = until.min(naptr.valid_until());
        let records: Vec<Naptr> = naptr
            .iter()
            .filter_map(|r| match r {
                RData::NAPTR(n) => Some(Naptr {
                    order: n.order(),
                    preference: n.preference(),
                    flags: String::from_utf8_lossy(n.flags()).into_owned(),
                    service: String::from_utf8_lossy(n.services()).into_owned(),
                    replacement: n.replacement().to_ascii(),
                }),
                _ => None,
            })
            .collect();
        srv_names = naptr_srv_names(records, peer.transport);
    }
    if srv_names.is_empty() {
        srv_names.push(format!("{}{host}", srv_prefix(peer.transport)));
    }
    let mut found = Vec::new();
    for name in srv_names {
        let Ok(srv) = resolver.srv_lookup(name.as_str()).await else {
            continue;
        };
        until = until.min(srv.as_lookup().valid_until());
        let records: Vec<Srv> = srv
            .iter()
            .map(|s| Srv {
                priority: s.priority(),
                weight: s.weight(),
                target: s.target().to_ascii(),
                port: s.port(),
            })
            .collect();
        for (target, port) in srv_order(records, |n| fastrand::u32(0..n)) {
            match addresses(resolver, &target, port).await {
                Ok((addrs, valid)) => {
                    until = until.min(valid);
                    found.extend(addrs);
                }
                Err(e) => tracing::info!(%target, error = %e, "SRV target does not resolve"),
            }
        }
        if !found.is_empty() {
            return Ok((found, until));
        }
    }
    let (addrs, valid) = addresses(resolver, &host, peer.default_port()).await?;
    Ok((addrs, until.min(valid)))
}

/// The A/AAAA addresses of `host` with `port`.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, Instant), String> {
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let addrs = ips
        .iter()
        .map(|ip: IpAddr| SocketAddr::new(ip, port))
        .collect();
    Ok((addrs, ips.valid_until()))
}

/// The SRV owner prefix for a transport (RFC 3263 §4.1).
fn srv_prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "_sip._udp.",
        Transport::Tcp => "_sip._tcp.",
        Transport::Tls => "_sips._tcp.",
    }
}

/// A NAPTR record's fields that RFC 3263 uses.
#[derive(Debug, Clone)]
struct Naptr {
    order: u16,
    preference: u16,
    flags: String,
    service: String,
    replacement: String,
}

/// The SRV names the NAPTR records give for `transport`: records with flag `S` and the
/// transport's service, by order then preference.
fn naptr_srv_names(mut records: Vec<Naptr>, transport: Transport) -> Vec<String> {
    let service = match transport {
        Transport::Udp => "SIP+D2U",
        Transport::Tcp => "SIP+D2T",
        Transport::Tls => "SIPS+D2T",
    };
    records
        .retain(|r| r.flags.eq_ignore_ascii_case("s") && r.service.eq_ignore_ascii_case(service));
    records.sort_by_key(|r| (r.order, r.preference));
    records.into_iter().map(|r| r.replacement).collect()
}

/// An SRV record's fields.
#[derive(Debug, Clone)]
struct Srv {
    priority: u16,
    weight: u16,
    target: String,
    port: u16,
}

/// SRV targets in the order to try (RFC 2782): lowest priority first; within a priority,
/// repeatedly a weighted random pick among those left (`pick(n)` gives a number in `0..n`;
/// zero-weight records come first in the running sums, so they have a small chance). A target
/// of "." (service not offered) is left out.
fn srv_order(mut records: Vec<Srv>, mut pick: impl FnMut(u32) -> u32) -> Vec<(String, u16)> {
    records.retain(|r| r.target != ".");
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut order = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let mut group: Vec<Srv> = Vec::new();
        while records.first().is_some_and(|r| r.priority == priority) {
            group.push(records.remove(0));
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let n = pick(total + 1);
            let mut running = 0;
            let chosen = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= n
                })
                .unwrap_or(group.len() - 1);
            let r = group.remove(chosen);
            order.push((r.target, r.port));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            target: target.into(),
            port: 5060,
        }
    }

    fn targets(order: Vec<(String, u16)>) -> Vec<String> {
        order.into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn srv_priorities_come_first_and_dot_targets_are_dropped() {
        let records = vec![
            srv(20, 0, "c."),
            srv(10, 5, "a."),
            srv(10, 0, "."),
            srv(30, 1, "d."),
        ];
        assert_eq!(targets(srv_order(records, |_| 0)), ["a.", "c.", "d."]);
    }

    #[test]
    fn srv_weights_decide_within_a_priority() {
        // RFC 2782: zero weights first, then running sums z 0, x 1, y 4; a pick n in 0..=4
        // selects the first record whose running sum is >= n.
        let group = || vec![srv(1, 1, "x."), srv(1, 3, "y."), srv(1, 0, "z.")];
        assert_eq!(targets(srv_order(group(), |_| 0)), ["z.", "x.", "y."]);
        assert_eq!(targets(srv_order(group(), |_| 1))[0], "x.");
        assert_eq!(targets(srv_order(group(), |_| 2))[0], "y.");
        assert_eq!(targets(srv_order(group(), |_| 4))[0], "y.");
        // Over many draws y leads 3 times in 5 (picks 2, 3 and 4 of 0..=4).
        let mut seed = 7u32;
        let mut first_y = 0;
        for _ in 0..4000 {
            let order = srv_order(group(), |n| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 8) % n
            });
            first_y += usize::from(order[0].0 == "y.");
        }
        assert!((2250..2550).contains(&first_y), "{first_y}");
    }

    #[test]
    fn naptr_gives_the_srv_names_of_the_transport_in_order() {
        let n = |order, preference, flags: &str, service: &str, replacement: &str| Naptr {
            order,
            preference,
            flags: flags.into(),
            service: service.into(),
            replacement: replacement.into(),
        };
        let records = vec![
            n(20, 10, "S", "SIP+D2U", "_sip._udp.b.example."),
            n(10, 20, "s", "SIP+D2U", "_sip._udp.a.example."),
            n(10, 10, "S", "SIP+D2T", "_sip._tcp.a.example."),
            n(10, 5, "S", "SIPS+D2T", "_sips._tcp.a.example."),
            n(5, 5, "A", "SIP+D2U", "host.example."),
        ];
        assert_eq!(
            naptr_srv_names(records.clone(), Transport::Udp),
            ["_sip._udp.a.example.", "_sip._udp.b.example."]
        );
        assert_eq!(
            naptr_srv_names(records.clone(), Transport::Tcp),
            ["_sip._tcp.a.example."]
        );
        assert_eq!(
            naptr_srv_names(records, Transport::Tls),
            ["_sips._tcp.a.example."]
        );
    }
}
