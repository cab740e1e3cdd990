//! OPTIONS keepalive state of every trunk peer. A peer goes down after `down_after`
//! consecutive failed probes and comes back after `up_after` successes; a down peer is skipped
//! by new calls. A probe fails when no final response arrives within the trunk's probe timeout
//! (a few seconds, not the 32 s of Timer F) or when the peer answers 503; any other final
//! response proves the peer is alive, whatever it thinks of OPTIONS.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::{Config, Probe, Trunk};
use crate::sip::transaction::TxnId;

/// What mediagate knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Never probed (probing off, or no answer yet): tried by calls.
    Unprobed,
    Up,
    Down,
}

impl PeerState {
    fn name(self) -> &'static str {
        match self {
            PeerState::Unprobed => "unprobed",
            PeerState::Up => "up",
            PeerState::Down => "down",
        }
    }
}

#[derive(Debug)]
struct Peer {
    state: PeerState,
    successes: u32,
    failures: u32,
    changed: Option<Instant>,
    rtt: Option<Duration>,
    next_probe: Instant,
    /// The probe in flight: its transaction and when it was sent.
    outstanding: Option<(TxnId, Instant)>,
}

impl Peer {
    /// A peer not probed yet, its first probe due at `next_probe`.
    fn unprobed(next_probe: Instant) -> Peer {
        Peer {
            state: PeerState::Unprobed,
            successes: 0,
            failures: 0,
            changed: None,
            rtt: None,
            next_probe,
            outstanding: None,
        }
    }
}

/// A peer of a trunk: (trunk index, peer index).
pub type PeerRef = (usize, usize);

/// Health of all trunk peers.
#[derive(Debug)]
pub struct Health {
    probes: Vec<Option<Probe>>,
    peers: Vec<Vec<Peer>>,
    by_txn: HashMap<TxnId, PeerRef>,
}

impl Health {
    /// Every peer unprobed; the first probes go out at `now`, spread over the first interval so
    /// that a big trunk list does not burst.
    pub fn new(config: &Config, now: Instant) -> Self {
        let mut health = Health {
            probes: Vec::new(),
            peers: Vec::new(),
            by_txn: HashMap::new(),
        };
        for (t, trunk) in config.trunks.iter().enumerate() {
            health.start_trunk(t, trunk, now);
        }
        health
    }

    /// Slot `t` holds `trunk` from now on (at start, or added by a reload): its peers start
    /// unprobed, their first probes spread over one interval from `now`.
    pub fn start_trunk(&mut self, t: usize, trunk: &Trunk, now: Instant) {
        let n = trunk.peers.len() as u32;
        let peers = (0..n)
            .map(|i| {
                Peer::unprobed(now + trunk.probe.map_or(Duration::ZERO, |p| p.interval * i / n))
            })
            .collect();
        if t >= self.peers.len() {
            self.peers.resize_with(t + 1, Vec::new);
            self.probes.resize(t + 1, None);
        }
        self.stop_trunk(t);
        self.peers[t] = peers;
        self.probes[t] = trunk.probe;
    }

    /// Slot `t`'s trunk was removed by a reload: it is not probed any more (a probe in flight
    /// is forgotten); its peers keep their last state for the calls still on the trunk.
    pub fn stop_trunk(&mut self, t: usize) {
        self.probes[t] = None;
        for p in &mut self.peers[t] {
            p.outstanding = None;
        }
        self.by_txn.retain(|_, (pt, _)| *pt != t);
    }

    /// Trunk `t`'s peer list changed (DNS): `moved[i]` is the new index of old peer `i`, or
    /// `None` when it is gone; the list now has `len` peers. Kept peers keep their state and
    /// probe in flight; new ones start unprobed with a probe due at `now`.
    pub fn retarget(&mut self, t: usize, moved: &[Option<usize>], len: usize, now: Instant) {
        let mut old: Vec<Option<Peer>> = std::mem::take(&mut self.peers[t])
            .into_iter()
            .map(Some)
            .collect();
        let mut fresh: Vec<Option<Peer>> = (0..len).map(|_| None).collect();
        for (i, to) in moved.iter().enumerate() {
            if let (Some(j), Some(peer)) = (to, old.get_mut(i).and_then(Option::take)) {
                fresh[*j] = Some(peer);
            }
        }
        self.peers[t] = fresh
            .into_iter()
            .map(|p| p.unwrap_or_else(|| Peer::unprobed(now)))
            .collect();
        self.by_txn.retain(|_, (pt, pp)| {
            if *pt != t {
                return true;
            }
            match moved.get(*pp).copied().flatten() {
                Some(j) => {
                    *pp = j;
                    true
                }
                None => false,
            }
        });
    }

    /// Whether new calls may be sent to the peer.
    pub fn usable(&self, (t, p): PeerRef) -> bool {
        self.peers[t][p].state != PeerState::Down
    }

    /// The peer's state.
    pub fn state(&self, (t, p): PeerRef) -> PeerState {
        self.peers[t][p].state
    }

    /// Peers whose probe is due at `now` (and not still in flight).
    pub fn due(&self, now: Instant) -> Vec<PeerRef> {
        let mut due = Vec::new();
        for (t, peers) in self.peers.iter().enumerate() {
            if self.probes[t].is_none() {
                continue;
            }
            for (p, peer) in peers.iter().enumerate() {
                if peer.outstanding.is_none() && peer.next_probe <= now {
                    due.push((t, p));
                }
            }
        }
        due
    }

    /// Records that the probe of `peer` went out as transaction `txn`.
    pub fn sent(&mut self, peer: PeerRef, txn: TxnId, now: Instant) {
        let interval = self.probes[peer.0].map_or(Duration::MAX, |p| p.interval);
        let p = &mut self.peers[peer.0][peer.1];
        p.outstanding = Some((txn, now));
        p.next_probe = now + interval;
        self.by_txn.insert(txn, peer);
    }

    /// A final response to a transaction; true when it answered a probe (the caller must not
    /// treat it as anything else).
    pub fn on_response(&mut self, txn: TxnId, code: u16, now: Instant) -> bool {
        let Some(peer) = self.by_txn.remove(&txn) else {
            return false;
        };
        let sent = self.peers[peer.0][peer.1]
            .outstanding
            .take()
            .map(|(_, at)| at);
        self.peers[peer.0][peer.1].rtt = sent.map(|at| now.saturating_duration_since(at));
        self.record(peer, code != 503, now);
        true
    }

    /// Whether `txn` is an outstanding probe.
    pub fn probing(&self, txn: TxnId) -> bool {
        self.by_txn.contains_key(&txn)
    }

    /// A probe was resent as `new` (answering a digest challenge); its send time stays.
    pub fn replace_txn(&mut self, old: TxnId, new: TxnId) -> bool {
        let Some(peer) = self.by_txn.remove(&old) else {
            return false;
        };
        if let Some((txn, _)) = &mut self.peers[peer.0][peer.1].outstanding {
            *txn = new;
        }
        self.by_txn.insert(new, peer);
        true
    }

    /// Fails the probes whose timeout passed by `now`. Their transactions may still end later;
    /// those late answers are ignored.
    pub fn expire(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (t, peers) in self.peers.iter().enumerate() {
            let Some(probe) = self.probes[t] else {
                continue;
            };
            for (p, peer) in peers.iter().enumerate() {
                if let Some((txn, at)) = peer.outstanding {
                    if now.saturating_duration_since(at) >= probe.timeout {
                        late.push(((t, p), txn));
                    }
                }
            }
        }
        for (peer, txn) in late {
            self.by_txn.remove(&txn);
            self.peers[peer.0][peer.1].outstanding = None;
            self.record(peer, false, now);
        }
    }

    /// The next instant at which a probe is due or times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (t, peers) in self.peers.iter().enumerate() {
            let Some(probe) = self.probes[t] else {
                continue;
            };
            for peer in peers {
                let at = match peer.outstanding {
                    Some((_, sent)) => sent + probe.timeout,
                    None => peer.next_probe,
                };
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }

    fn record(&mut self, (t, p): PeerRef, ok: bool, now: Instant) {
        let Some(probe) = self.probes[t] else { return };
        let peer = &mut self.peers[t][p];
        let before = peer.state;
        if ok {
            peer.failures = 0;
            peer.successes = peer.successes.saturating_add(1);
            if peer.state != PeerState::Up
                && (peer.state == PeerState::Unprobed || peer.successes >= probe.up_after)
            {
                peer.state = PeerState::Up;
            }
        } else {
            peer.successes = 0;
            peer.failures = peer.failures.saturating_add(1);
            if peer.state != PeerState::Down && peer.failures >= probe.down_after {
                peer.state = PeerState::Down;
            }
        }
        if peer.state != before {
            peer.changed = Some(now);
            tracing::warn!(
                trunk = t,
                peer = p,
                from = before.name(),
                to = peer.state.name(),
                "trunk peer state changed"
            );
        }
    }

    /// `/status` fields of a peer: state, last change (wall clock) and round-trip time.
    pub fn status(&self, (t, p): PeerRef, now: Instant, wall: SystemTime) -> Value {
        let peer = &self.peers[t][p];
        json!({
            "state": peer.state.name(),
            "since": peer.changed.map(|c| {
                humantime::format_rfc3339_seconds(wall - now.saturating_duration_since(c)).to_string()
            }),
            "rtt_ms": peer.rtt.map(|r| r.as_secs_f64() * 1000.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[sip]
listen = ["udp:10.0.0.1:5060"]
[media]
ports = "30000-30099"
dataplane = "socket"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:192.0.2.1:5060", "udp:192.0.2.2:5060"]
local = "udp:10.0.0.1:5060"
options_interval_s = 10
options_timeout_s = 2
down_after = 2
up_after = 2
"#;
        crate::config::parse("t.toml", text).unwrap()
    }

    #[test]
    fn probes_are_spread_and_rescheduled() {
        let t0 = Instant::now();
        let mut h = Health::new(&config(), t0);
        assert_eq!(h.due(t0), vec![(0, 0)]);
        assert_eq!(h.poll_timeout(), Some(t0));
        h.sent((0, 0), 1, t0);
        assert_eq!(h.due(t0 + Duration::from_secs(5)), vec![(0, 1)]);
        assert!(h.on_response(1, 200, t0 + Duration::from_millis(30)));
        assert!(
            !h.on_response(1, 200, t0),
            "a second answer is not a probe's"
        );
        assert_eq!(
            h.state((0, 0)),
            PeerState::Up,
            "an unprobed peer is up at once"
        );
        assert_eq!(h.due(t0 + Duration::from_secs(9)), vec![(0, 1)]);
        assert!(h.due(t0 + Duration::from_secs(10)).contains(&(0, 0)));
    }

    #[test]
    fn retarget_keeps_the_state_of_peers_that_stay() {
        let t0 = Instant::now();
        let mut h = Health::new(&config(), t0);
        h.sent((0, 0), 1, t0);
        assert!(h.on_response(1, 200, t0));
        h.sent((0, 1), 2, t0);
        // DNS now lists a new target first, old peer 1 second; old peer 0 is gone.
        h.retarget(0, &[None, Some(1)], 2, t0);
        assert_eq!(h.state((0, 0)), PeerState::Unprobed);
        assert!(
            h.due(t0).contains(&(0, 0)),
            "a new target is probed at once"
        );
        assert!(h.probing(2), "the probe in flight stays with its peer");
        assert!(h.on_response(2, 200, t0));
        assert_eq!(h.state((0, 1)), PeerState::Up);
    }

    #[test]
    fn down_after_failures_and_up_after_successes() {
        let t0 = Instant::now();
        let mut h = Health::new(&config(), t0);
        let peer = (0, 0);
        let mut now = t0;
        let mut txn = 0;
        let mut probe = |h: &mut Health, now: Instant, answer: Option<u16>| {
            txn += 1;
            h.sent(peer, txn, now);
            match answer {
                Some(code) => {
                    h.on_response(txn, code, now + Duration::from_millis(10));
                }
                None => h.expire(now + Duration::from_secs(2)),
            }
        };
        probe(&mut h, now, None);
        assert_eq!(h.state(peer), PeerState::Unprobed, "one failure of two");
        now += Duration::from_secs(10);
        probe(&mut h, now, Some(503));
        assert_eq!(h.state(peer), PeerState::Down, "503 is a failure");
        assert!(!h.usable(peer));
        now += Duration::from_secs(10);
        probe(&mut h, now, Some(404));
        assert_eq!(h.state(peer), PeerState::Down, "one success of two");
        now += Duration::from_secs(10);
        probe(&mut h, now, Some(200));
        assert_eq!(h.state(peer), PeerState::Up);
        assert!(h.usable(peer));
        let st = h.status(peer, now, SystemTime::now());
        assert_eq!(st["state"], "up");
        assert!(st["rtt_ms"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn late_answers_after_expiry_are_ignored() {
        let t0 = Instant::now();
        let mut h = Health::new(&config(), t0);
        h.sent((0, 0), 7, t0);
        h.expire(t0 + Duration::from_secs(1));
        assert!(
            h.due(t0 + Duration::from_secs(1)).is_empty(),
            "still in flight"
        );
        h.expire(t0 + Duration::from_secs(2));
        assert!(!h.on_response(7, 200, t0 + Duration::from_secs(3)));
        assert_eq!(h.state((0, 0)), PeerState::Unprobed);
    }
}
