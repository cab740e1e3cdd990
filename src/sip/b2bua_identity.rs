//! The B2BUA's side of trunk identity: every request toward a trunk with credentials goes out
//! through [`B2bua::send_request_to`] so that a 401/407 is answered here (INVITE, BYE, OPTIONS
//! probe, REGISTER, and re-INVITE, UPDATE and INFO relayed mid-call) and never reaches the other
//! leg; new INVITEs from trunks with
//! `challenge_inbound` are checked before routing; registrations are sent and refreshed.
//!
//! A child module of `b2bua` (it reaches the core's fields) kept in its own file so that the
//! call logic in `b2bua.rs` has only a few call points.

use std::net::IpAddr;
use std::time::Instant;

use super::{B2bua, Phase, Purpose};
use crate::sip::auth::{ClientAuth, OnChallenge, Retry, Verdict};
use crate::sip::dialog::{response_to, token};
use crate::sip::message::Message;
use crate::sip::transaction::{Target, TxnId};

impl B2bua {
    /// Starts a client transaction for `request` toward `trunk`, keeping a copy of it when the
    /// trunk has credentials so that a challenge can be answered.
    pub(super) fn send_request_to(
        &mut self,
        trunk: usize,
        request: Message,
        target: Target,
        now: Instant,
    ) -> TxnId {
        let copy = ClientAuth::wants(&self.config, trunk).then(|| request.clone());
        let txn = self.txns.send_request(request, target, now);
        if let Some(c) = copy {
            self.auth.track(txn, trunk, c, target);
        }
        txn
    }

    /// First look at a response to one of our requests: answers challenges and takes REGISTER
    /// responses. True when the response is handled (the caller must not look at it again).
    pub(super) fn on_identity_response(
        &mut self,
        txn: TxnId,
        resp: &Message,
        code: u16,
        now: Instant,
    ) -> bool {
        if code < 200 {
            return false;
        }
        let mut failure = None;
        if matches!(code, 401 | 407) && self.may_resend(txn) {
            match self.auth.on_challenge(&self.config, txn, resp) {
                OnChallenge::Retry(retry) => {
                    self.resend(txn, retry, now);
                    return true;
                }
                OnChallenge::Failed(why) => {
                    tracing::warn!(error = %why, "trunk authentication failed");
                    failure = Some(why);
                }
                OnChallenge::NotOurs => {}
            }
        } else {
            self.auth.forget(txn);
        }
        self.registrations.on_response(txn, resp, failure, now)
    }

    /// Whether the request of `txn` may still be resent with credentials: its call is still
    /// being set up (INVITE), it is a relayed mid-call request not answered yet, or a BYE, probe
    /// or REGISTER.
    fn may_resend(&self, txn: TxnId) -> bool {
        if self.registrations.trunk_of(txn).is_some() || self.health.probing(txn) {
            return true;
        }
        match self.by_client_txn.get(&txn) {
            Some(&(key, Purpose::Invite)) => self
                .calls
                .get(&key)
                .is_some_and(|c| c.phase == Phase::Setup && !c.cancelled && c.b_txn == txn),
            Some((_, Purpose::Bye)) => true,
            // A mid-call request relayed to a trunk (re-INVITE, UPDATE, INFO) not answered yet.
            Some((_, Purpose::Relay)) => self.relayed.get(&txn).is_some_and(|r| !r.answered()),
            _ => false,
        }
    }

    /// Sends the authenticated resend of `old` and moves everything that pointed at `old` to it.
    fn resend(&mut self, old: TxnId, retry: Retry, now: Instant) {
        let (request, target, cseq) = (
            retry.tracked.request.clone(),
            retry.tracked.target,
            retry.cseq,
        );
        let call_id = request.header("Call-ID").unwrap_or_default().to_string();
        let new = self.txns.send_request(request, target, now);
        self.auth.resume(new, retry);
        if let Some(t) = self.registrations.trunk_of(old) {
            self.registrations.sent(t, new, Some(cseq));
            return;
        }
        if self.health.replace_txn(old, new) {
            return;
        }
        let Some((key, purpose)) = self.by_client_txn.remove(&old) else {
            return;
        };
        self.by_client_txn.insert(new, (key, purpose));
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        for t in call.open_txns.iter_mut().filter(|t| **t == old) {
            *t = new;
        }
        if purpose == Purpose::Relay {
            for t in call.mid.relays.iter_mut().filter(|t| **t == old) {
                *t = new;
            }
            if call.mid.negotiation == Some(old) {
                call.mid.negotiation = Some(new);
            }
            if let Some(mut relayed) = self.relayed.remove(&old) {
                relayed.resent_as(cseq);
                self.relayed.insert(new, relayed);
            }
        }
        for d in [&mut call.a, &mut call.b] {
            if d.call_id == call_id {
                d.local_cseq = d.local_cseq.max(cseq);
            }
        }
        if purpose == Purpose::Invite {
            call.b_txn = new;
            call.b_invite_cseq = cseq;
        }
        tracing::debug!(call = %call.label, "challenged request resent with credentials");
    }

    /// Sends the REGISTERs due at `now`.
    pub(super) fn send_registers(&mut self, now: Instant) {
        for due in self.registrations.due(now) {
            self.send_register(due.trunk, due.expires, now);
        }
    }

    /// A REGISTER (or un-REGISTER with `expires` 0) of `trunk` to its first usable peer.
    pub(super) fn send_register(&mut self, trunk: usize, expires: u32, now: Instant) {
        let peers = self.config.trunks[trunk].peers.len();
        if peers == 0 {
            if expires > 0 {
                self.registrations.no_peer(trunk, now);
            }
            return;
        }
        let peer = (0..peers)
            .find(|&p| self.health.usable((trunk, p)))
            .unwrap_or(0);
        let Some((req, target)) = self
            .registrations
            .request(&self.config, trunk, expires, peer)
        else {
            return;
        };
        let txn = self.send_request_to(trunk, req, target, now);
        self.registrations.sent(trunk, txn, None);
    }

    /// Removes every registration (`Expires: 0`), for shutdown. Run the loop until
    /// [`Self::unregistering`] is false (bounded in time) so the answers, and challenges, are
    /// handled.
    pub fn unregister_all(&mut self, now: Instant) {
        for trunk in self.registrations.unregister_all(now) {
            self.send_register(trunk, 0, now);
        }
    }

    /// Whether an un-REGISTER still waits for its answer.
    pub fn unregistering(&self) -> bool {
        self.registrations.unregistering()
    }

    /// `challenge_inbound`: true when the new INVITE may proceed; otherwise it has been
    /// answered (401 with a challenge, or 403 for wrong credentials).
    pub(super) fn inbound_allowed(
        &mut self,
        txn: TxnId,
        req: &Message,
        source: IpAddr,
        trunk: usize,
        now: Instant,
    ) -> bool {
        if !self.config.trunks[trunk].identity.challenge_inbound {
            return true;
        }
        match self.inbound.check(&self.config, trunk, req, source, now) {
            Verdict::Accept => true,
            Verdict::Challenge(values) => {
                let mut r = response_to(req, 401, "Unauthorized", Some(&token()));
                for v in values {
                    r.push_header("WWW-Authenticate", v);
                }
                self.txns.respond(txn, r, now);
                false
            }
            Verdict::Forbidden => {
                tracing::warn!(trunk = %self.config.trunks[trunk].name, from = %source,
                    "INVITE with wrong credentials: 403");
                self.respond(txn, req, 403, now);
                false
            }
        }
    }
}
