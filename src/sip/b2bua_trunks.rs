//! The trunk list changing at run time: a reload (SIGHUP) hands the B2BUA a configuration whose
//! trunks sit in fixed slots (`config::live`). Kept trunks keep their slot and with it their peer
//! health, limits, drain, registration and counters; an added trunk starts probing and
//! registering in its slot; a removed one stops both (un-REGISTERing) and only finishes its
//! calls, which keep the configuration they started with. A removed trunk's slot becomes free
//! for a later reload once no call uses it.
//!
//! A child module of `b2bua` (it reaches the core's fields) in its own file, with two entry
//! points.

use std::sync::Arc;
use std::time::Instant;

use super::B2bua;
use crate::config::{Config, Trunk};

impl B2bua {
    /// Takes a reloaded configuration (SIGHUP) for new calls: routes, translation, policy,
    /// limits and timeouts change at once, while calls in progress keep the configuration they
    /// started with. `config` holds the trunks in their slots ([`crate::config::live::merge`]),
    /// `added` the slots of new trunks and `removed` those retired by this reload.
    pub fn reconfigure(
        &mut self,
        mut config: Arc<Config>,
        added: &[usize],
        removed: &[usize],
        now: Instant,
    ) {
        // Peers are restart-only (config::live keeps the file's), but a trunk whose peers are
        // DNS names runs with the targets its resolver found (b2bua_peers::set_peers), which
        // the reloaded file does not have: those stay until the next resolution.
        if config.trunks.iter().any(Trunk::has_named_peers) {
            let running = &self.config.trunks;
            for (new, old) in Arc::make_mut(&mut config).trunks.iter_mut().zip(running) {
                if new.has_named_peers() && new.name == old.name {
                    new.peers = old.peers.clone();
                    new.weights = old.weights.clone();
                }
            }
        }
        self.limits.reconfigure(&config);
        self.calls_started.resize(config.trunks.len(), 0);
        self.config = config;
        for &t in removed {
            tracing::info!(trunk = %self.config.trunks[t].name, calls = self.limits.active(t),
                "trunk removed by the reload: its calls finish, it takes no new one");
            self.health.stop_trunk(t);
            if self.registrations.stop_trunk(t, now) {
                self.send_register(t, 0, now);
            }
        }
        for &t in added {
            let trunk = &self.config.trunks[t];
            tracing::info!(trunk = %trunk.name, "trunk added by the reload");
            self.health.start_trunk(t, trunk, now);
            self.selector.start_trunk(t, trunk);
            self.limits.start_trunk(t, &self.config);
            self.registrations.start_trunk(&self.config, t, now);
            self.calls_started[t] = 0;
        }
    }

    /// Slots of trunks removed by a reload that nothing uses any more (no call, not even one
    /// that could fail over to it, and no un-REGISTER waiting for its answer): the next reload
    /// may put a new trunk there. A removed trunk whose peers are DNS names keeps its slot: its
    /// resolver task still reports targets for that slot.
    pub fn free_trunk_slots(&self) -> Vec<usize> {
        let trunks = &self.config.trunks;
        (0..trunks.len())
            .filter(|&t| trunks[t].retired && !trunks[t].has_named_peers())
            .filter(|&t| !self.registrations.unregistering_trunk(t))
            .filter(|&t| {
                !self
                    .calls
                    .values()
                    .any(|c| c.a_trunk == t || c.b_trunk == t || c.remaining_trunks.contains(&t))
            })
            .collect()
    }
}
