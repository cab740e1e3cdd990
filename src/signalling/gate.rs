//! The front door: what the shell refuses before any parser or front end spends work on it.
//! Per-source token buckets for SIP messages and NG commands (`rate_per_source`), the
//! `control.allow` list of the NG socket and the HTTP endpoint, whether an unparseable SIP
//! request from a stranger is answered at all (`sip.unknown`), and the counters of everything
//! refused here, by protocol and reason, for `/metrics`.
//!
//! The buckets are consulted once per datagram or framed message; the table of sources is
//! bounded so that a spoofed-source flood cannot grow it without limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Endpoint, SourceLimit, Unknown};
use crate::sip::message::{Message, ParseError};
use crate::sip::validate;

/// Sources tracked per protocol; beyond it, idle sources are forgotten (their buckets were
/// full, so forgetting them changes nothing), and if none is idle new sources are refused.
const MAX_SOURCES: usize = 65_536;
/// Inbound TCP connections one source IP may hold open at once.
const MAX_TCP_PER_SOURCE: usize = 64;
/// Inbound TCP connections held open at once, from all sources.
const MAX_TCP: usize = 4096;

/// Why the gate (or a transport) refused input; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A SIP message over its source's rate.
    SipRateLimited,
    /// Unparseable SIP request answered with 400/505/513.
    SipMalformedAnswered,
    /// Unparseable SIP bytes not answered (responses, ACKs, strangers with `unknown = "drop"`).
    SipMalformedDropped,
    /// A TCP connection closed because it sent no complete message in time (slowloris).
    SipIdleClosed,
    /// An NG command over its source's rate.
    NgRateLimited,
    /// An NG command from outside `control.allow`.
    NgNotAllowed,
    /// An HTTP connection from outside `control.allow`.
    HttpNotAllowed,
    /// An inbound TCP connection over the per-source or total limit, closed at once.
    SipTcpRefused,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::SipRateLimited,
        Refusal::SipMalformedAnswered,
        Refusal::SipMalformedDropped,
        Refusal::SipIdleClosed,
        Refusal::NgRateLimited,
        Refusal::NgNotAllowed,
        Refusal::HttpNotAllowed,
        Refusal::SipTcpRefused,
    ];

    /// The `protocol` and `reason` labels of its metric.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Refusal::SipRateLimited => ("sip", "rate_limited"),
            Refusal::SipMalformedAnswered => ("sip", "malformed_answered"),
            Refusal::SipMalformedDropped => ("sip", "malformed_dropped"),
            Refusal::SipIdleClosed => ("sip", "idle_closed"),
            Refusal::NgRateLimited => ("ng", "rate_limited"),
            Refusal::NgNotAllowed => ("ng", "not_allowed"),
            Refusal::HttpNotAllowed => ("http", "not_allowed"),
            Refusal::SipTcpRefused => ("sip", "tcp_refused"),
        }
    }
}

/// Token buckets per source address, refilled at `rate` per second up to `burst`.
#[derive(Debug)]
pub struct SourceBuckets {
    limit: SourceLimit,
    /// Tokens left and when they were counted, per source.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// When the full table was last swept for idle sources (at most once a second, so that a
    /// flood from many sources cannot make every packet walk the whole table).
    swept: Option<Instant>,
}

impl SourceBuckets {
    pub fn new(limit: SourceLimit) -> Self {
        SourceBuckets {
            limit,
            buckets: HashMap::new(),
            swept: None,
        }
    }

    /// Takes a token for `ip` at `now`; false when its bucket is empty. When the table is full
    /// a new source is refused unless `trusted` says it is one of ours (a trunk peer), so a
    /// flood from spoofed addresses cannot lock the peers out.
    pub fn admit(&mut self, ip: IpAddr, now: Instant, trusted: impl FnOnce() -> bool) -> bool {
        let SourceLimit { rate, burst } = self.limit;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES && !trusted() {
            if self
                .swept
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
            {
                return false;
            }
            self.swept = Some(now);
            let refill_time = Duration::try_from_secs_f64(burst / rate).unwrap_or(Duration::MAX);
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < refill_time);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The shell's front door, shared by the SIP transports, the NG socket and the HTTP endpoint.
pub struct Gate {
    config: Arc<Config>,
    sip: Option<Mutex<SourceBuckets>>,
    ng: Option<Mutex<SourceBuckets>>,
    /// Open inbound TCP connections per source.
    tcp: Mutex<HashMap<IpAddr, usize>>,
    /// The addresses DNS gave the trunks whose peers are names, by trunk index.
    resolved: Mutex<HashMap<usize, Vec<IpAddr>>>,
    counts: [AtomicU64; Refusal::ALL.len()],
}

/// One admitted inbound TCP connection; dropping it (when the connection ends) frees its place.
pub struct TcpSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.gate.tcp.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

impl Gate {
    pub fn new(config: Arc<Config>) -> Self {
        let buckets = |l: Option<SourceLimit>| l.map(|l| Mutex::new(SourceBuckets::new(l)));
        Gate {
            sip: buckets(config.sip.per_source),
            ng: buckets(config.control.per_source),
            tcp: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            config,
            counts: Default::default(),
        }
    }

    /// A place for an inbound TCP connection from `ip`, or `None` (counted) when that source
    /// or the box already holds as many as allowed.
    pub fn open_tcp(self: &Arc<Self>, ip: IpAddr) -> Option<TcpSlot> {
        let admitted = self.tcp.lock().is_ok_and(|mut open| {
            let total: usize = open.values().sum();
            let mine = open.entry(ip).or_insert(0);
            let ok = *mine < MAX_TCP_PER_SOURCE && total < MAX_TCP;
            if ok {
                *mine += 1;
            } else if *mine == 0 {
                open.remove(&ip);
            }
            ok
        });
        if !admitted {
            self.count(Refusal::SipTcpRefused);
            return None;
        }
        Some(TcpSlot {
            gate: self.clone(),
            ip,
        })
    }

    /// Whether `ip` is one of the trunks' peers (configured, or resolved from a name).
    pub fn is_peer(&self, ip: IpAddr) -> bool {
        self.config.trunk_of_peer(ip).is_some()
            || self
                .resolved
                .lock()
                .is_ok_and(|r| r.values().flatten().any(|p| *p == ip))
    }

    /// The peers DNS now gives trunk `trunk` (replacing what it gave before), or those of a
    /// trunk a reload added in slot `trunk`.
    pub fn set_peers(&self, trunk: usize, peers: &[Endpoint]) {
        if let Ok(mut r) = self.resolved.lock() {
            r.insert(trunk, peers.iter().map(|p| p.addr.ip()).collect());
        }
    }

    /// Counts one refusal.
    pub fn count(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every refusal reason with its count, for `/metrics`.
    pub fn counts(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
    }

    /// Whether a SIP message from `ip` may be looked at (counted when not).
    pub fn admit_sip(&self, ip: IpAddr) -> bool {
        self.admit(&self.sip, ip, Refusal::SipRateLimited, || self.is_peer(ip))
    }

    /// Whether an NG command from `ip` may be handled: inside `control.allow` and within its
    /// rate (counted when not).
    pub fn admit_ng(&self, ip: IpAddr) -> bool {
        if !self.allowed(ip) {
            self.count(Refusal::NgNotAllowed);
            return false;
        }
        self.admit(&self.ng, ip, Refusal::NgRateLimited, || false)
    }

    /// Whether an HTTP client at `ip` may be served (counted when not).
    pub fn admit_http(&self, ip: IpAddr) -> bool {
        let ok = self.allowed(ip);
        if !ok {
            self.count(Refusal::HttpNotAllowed);
        }
        ok
    }

    /// The answer to unparseable SIP bytes from `ip` (see `validate::reply_to_unparseable`),
    /// counted either way: strangers get none with `sip.unknown = "drop"`.
    pub fn reply_to_unparseable(
        &self,
        data: &[u8],
        error: &ParseError,
        ip: IpAddr,
    ) -> Option<Message> {
        let answers = self.config.sip.unknown == Unknown::Reject || self.is_peer(ip);
        let reply = answers
            .then(|| validate::reply_to_unparseable(data, error))
            .flatten();
        self.count(match reply {
            Some(_) => Refusal::SipMalformedAnswered,
            None => Refusal::SipMalformedDropped,
        });
        reply
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.config
            .control
            .allow
            .as_ref()
            .is_none_or(|a| a.allows(ip))
    }

    fn admit(
        &self,
        buckets: &Option<Mutex<SourceBuckets>>,
        ip: IpAddr,
        why: Refusal,
        trusted: impl FnOnce() -> bool,
    ) -> bool {
        let Some(b) = buckets else {
            return true;
        };
        // A poisoned lock means a panic elsewhere, which already stops the process.
        let ok = b
            .lock()
            .map(|mut b| b.admit(ip, Instant::now(), trusted))
            .unwrap_or(true);
        if !ok {
            self.count(why);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_the_burst_then_the_rate_per_source() {
        let mut b = SourceBuckets::new(SourceLimit {
            rate: 10.0,
            burst: 3.0,
        });
        let (a, c): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.admit(a, t0, || false)));
        assert!(!b.admit(a, t0, || false), "burst spent");
        assert!(
            b.admit(c, t0, || false),
            "another source has its own bucket"
        );
        assert!(!b.admit(a, t0 + Duration::from_millis(50), || false));
        assert!(
            b.admit(a, t0 + Duration::from_millis(150), || false),
            "one token per 100 ms"
        );
        assert!((0..3).all(|_| b.admit(a, t0 + Duration::from_secs(60), || false)));
        assert!(
            !b.admit(a, t0 + Duration::from_secs(60), || false),
            "never more than the burst"
        );
    }

    #[test]
    fn a_full_table_refuses_new_strangers_but_not_trunk_peers() {
        let mut b = SourceBuckets::new(SourceLimit {
            rate: 1.0,
            burst: 5.0,
        });
        let t0 = Instant::now();
        for n in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(b.admit(ip, t0, || false));
        }
        let (stranger, peer): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(!b.admit(stranger, t0, || false), "table full");
        assert!(
            b.admit(peer, t0, || true),
            "a trunk peer still gets a bucket"
        );
    }
}
