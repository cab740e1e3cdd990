//! Trunk peers changing and failing at run time. The DNS resolver (RFC 3263,
//! `signalling::dns`) hands the B2BUA every resolved target of a trunk whose peers are given by
//! name, and the B2BUA makes them the trunk's peers: calls, OPTIONS probes and registrations
//! use them, and requests from them are recognised as the trunk's. The transports report a
//! peer they cannot connect to, and the requests waiting for it fail over at once.
//!
//! A child module of `b2bua` (it reaches the core's fields) in its own file, with two entry
//! points.

use std::sync::Arc;
use std::time::Instant;

use super::B2bua;
use crate::config::Endpoint;
use crate::sip::transaction::{Event, Target};

impl B2bua {
    /// Makes `peers` (in the order to try them) trunk `trunk`'s peer list. Peers that stay keep
    /// their health; calls setting up keep their remaining failover candidates that are still
    /// listed.
    pub fn set_peers(&mut self, trunk: usize, peers: Vec<Endpoint>, now: Instant) {
        let Some(old) = self.config.trunks.get(trunk).map(|t| t.peers.clone()) else {
            return;
        };
        if old == peers {
            return;
        }
        let moved: Vec<Option<usize>> = old
            .iter()
            .map(|p| peers.iter().position(|n| n == p))
            .collect();
        tracing::info!(trunk = %self.config.trunks[trunk].name,
            peers = ?peers.iter().map(ToString::to_string).collect::<Vec<_>>(), "trunk peers resolved");
        self.health.retarget(trunk, &moved, peers.len(), now);
        self.selector.resize(trunk, peers.len());
        for call in self.calls.values_mut().filter(|c| c.b_trunk == trunk) {
            call.remaining_peers = call
                .remaining_peers
                .iter()
                .filter_map(|p| moved.get(*p).copied().flatten())
                .collect();
        }
        let t = &mut Arc::make_mut(&mut self.config).trunks[trunk];
        t.weights = vec![1; peers.len()];
        t.peers = peers;
    }

    /// The transports could not connect to `target` (refused, timed out, TLS handshake or
    /// certificate failure): requests waiting for it end as if timed out, so an INVITE moves to
    /// the next peer or trunk now instead of after `invite_timeout_s`.
    pub fn transport_failed(&mut self, target: Target, now: Instant) {
        for ev in self.txns.transport_failed(target) {
            if let Event::Timeout { txn } = ev {
                self.on_txn_timeout(txn, now);
            }
        }
    }
}
