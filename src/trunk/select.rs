//! The order in which a call tries a trunk's peers: the first is the strategy's pick, the rest
//! its failover candidates in configuration order. Peers that are down are left out.

use crate::config::{Strategy, Trunk};

/// Per-trunk rotation state for round-robin and weighted spreading.
#[derive(Debug)]
pub struct Selector {
    /// Round robin: calls so far, per trunk.
    next: Vec<usize>,
    /// Smooth weighted round robin (as nginx does it): current weights per trunk and peer.
    current: Vec<Vec<i64>>,
}

impl Selector {
    /// Fresh rotation state for `trunks`.
    pub fn new(trunks: &[Trunk]) -> Self {
        Selector {
            next: vec![0; trunks.len()],
            current: trunks.iter().map(|t| vec![0; t.peers.len()]).collect(),
        }
    }

    /// Slot `t` holds a trunk a reload added: its rotation starts from scratch.
    pub fn start_trunk(&mut self, t: usize, trunk: &Trunk) {
        if t >= self.next.len() {
            self.next.resize(t + 1, 0);
            self.current.resize_with(t + 1, Vec::new);
        }
        self.next[t] = 0;
        self.current[t] = vec![0; trunk.peers.len()];
    }

    /// Trunk `t` now has `len` peers (DNS changed its list): its rotation starts again.
    pub fn resize(&mut self, t: usize, len: usize) {
        self.current[t] = vec![0; len];
    }

    /// The peers of trunk `t` a new call tries, in order; `usable` says which are not down.
    /// Advances the trunk's rotation by one call.
    pub fn order(&mut self, t: usize, trunk: &Trunk, usable: impl Fn(usize) -> bool) -> Vec<usize> {
        let candidates: Vec<usize> = (0..trunk.peers.len()).filter(|p| usable(*p)).collect();
        if candidates.is_empty() {
            return candidates;
        }
        let first = match trunk.strategy {
            Strategy::Priority => candidates[0],
            Strategy::RoundRobin => {
                // Turns among the usable peers, so a down peer's share is spread evenly.
                let turn = self.next[t] % candidates.len();
                self.next[t] = self.next[t].wrapping_add(1);
                candidates[turn]
            }
            Strategy::Weighted => {
                let current = &mut self.current[t];
                let total: i64 = candidates
                    .iter()
                    .map(|p| i64::from(trunk.weights[*p]))
                    .sum();
                for p in &candidates {
                    current[*p] += i64::from(trunk.weights[*p]);
                }
                let best = *candidates
                    .iter()
                    .max_by_key(|p| (current[**p], std::cmp::Reverse(**p)))
                    .expect("candidates is not empty");
                current[best] -= total;
                best
            }
        };
        let mut order = vec![first];
        order.extend(candidates.into_iter().filter(|p| *p != first));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(strategy: &str, weights: &str) -> Vec<Trunk> {
        let text = format!(
            r#"
[sip]
listen = ["udp:10.0.0.1:5060"]
[media]
ports = "30000-30099"
dataplane = "socket"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:192.0.2.1:5060", "udp:192.0.2.2:5060", "udp:192.0.2.3:5060"]
local = "udp:10.0.0.1:5060"
strategy = "{strategy}"
{weights}
"#
        );
        crate::config::parse("t.toml", &text).unwrap().trunks
    }

    fn firsts(trunks: &[Trunk], calls: usize, usable: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let mut s = Selector::new(trunks);
        let mut counts = vec![0; trunks[0].peers.len()];
        for _ in 0..calls {
            counts[s.order(0, &trunks[0], usable)[0]] += 1;
        }
        counts
    }

    #[test]
    fn priority_takes_the_first_usable_peer_and_keeps_the_rest_as_failover() {
        let t = trunk("priority", "");
        let mut s = Selector::new(&t);
        assert_eq!(s.order(0, &t[0], |_| true), vec![0, 1, 2]);
        assert_eq!(s.order(0, &t[0], |p| p != 0), vec![1, 2]);
        assert!(s.order(0, &t[0], |_| false).is_empty());
    }

    #[test]
    fn round_robin_spreads_evenly_and_skips_down_peers() {
        let t = trunk("round-robin", "");
        assert_eq!(firsts(&t, 99, |_| true), vec![33, 33, 33]);
        assert_eq!(firsts(&t, 100, |p| p != 1), vec![50, 0, 50]);
        let mut s = Selector::new(&t);
        assert_eq!(s.order(0, &t[0], |_| true), vec![0, 1, 2]);
        assert_eq!(s.order(0, &t[0], |_| true), vec![1, 0, 2]);
    }

    #[test]
    fn weighted_spreads_in_proportion() {
        let t = trunk("weighted", "weights = [5, 3, 2]");
        assert_eq!(firsts(&t, 100, |_| true), vec![50, 30, 20]);
        assert_eq!(firsts(&t, 100, |p| p != 0), vec![0, 60, 40]);
    }
}
