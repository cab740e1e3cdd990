//! Requests inside an established call (issue 7): re-INVITE and UPDATE from either leg become
//! the same request on the other leg, with their SDP re-anchored through [`CallMedia`]; INFO is
//! relayed as it is. Each leg keeps its own dialog identifiers and CSeq, so nothing of one side
//! reaches the other.
//!
//! - An offer from side X (re-INVITE or UPDATE with SDP) is anchored as an offer from X (X's
//!   streams re-open latching toward the new addresses) and sent on leg Y; Y's answer in the 2xx
//!   is anchored as an answer and relayed to X. A re-INVITE without SDP gets Y's offer in the 2xx
//!   (anchored as an offer from Y) and X's answer in the ACK, which is anchored and sent in the
//!   ACK toward Y.
//! - The ACK for a relayed re-INVITE's 2xx goes out on Y when X's ACK arrives (end to end); the
//!   2xx toward X is retransmitted until then, like the initial answer.
//! - An error answer (488, 491, ...) is relayed and X's streams go back to where they sent
//!   before the offer: the call stays up with its previous media. A 481, 408 or no answer at
//!   all ends the call instead (`b2bua_dialog_gone.rs`); provisionals and a CANCEL of a
//!   re-INVITE are in `b2bua_reinvite.rs`.
//! - Glare (RFC 3261 §14.1, RFC 3311 §5.2): an offer arriving on leg Y while mediagate's own
//!   re-INVITE or UPDATE is pending there gets 491; a second offer from X while its first one is
//!   still in progress gets 500 with Retry-After (RFC 3261 §14.2).

use std::net::SocketAddr;
use std::time::Instant;

#[path = "b2bua_dialog_gone.rs"]
mod dialog_gone;
#[path = "b2bua_reinvite.rs"]
mod reinvite;

use super::{B2bua, CallKey, PendingOk, Phase, Purpose};
use crate::media::session::{AnchorError, Side};
use crate::sdp::Sdp;
use crate::sip::dialog::{contact_for, reason, response_to, with_sdp, Dialog, ALLOW};
use crate::sip::header;
use crate::sip::message::{Message, Method, StartLine};
use crate::sip::negotiate;
use crate::sip::transaction::{TxnId, T1};

/// Streams of one side before an offer, to put back when the offer is rejected.
type Snapshot = Vec<Option<[Option<SocketAddr>; 2]>>;

/// Mid-call state of one call.
#[derive(Debug, Default)]
pub(super) struct MidCall {
    /// The offer/answer exchange in progress (client transaction on the other leg), for glare.
    pub negotiation: Option<TxnId>,
    /// The 2xx of a relayed re-INVITE, retransmitted until the ACK.
    pub ok: Option<PendingOk>,
    /// The latest completed negotiation put the call on hold (`media.hold_timeout_s`).
    pub held: bool,
    /// Client transactions of relayed requests kept in [`B2bua::relayed`].
    pub relays: Vec<TxnId>,
}

/// An in-dialog request from one leg relayed on the other.
#[derive(Debug)]
pub(super) struct Relayed {
    key: CallKey,
    /// The side the request came from.
    from: Side,
    server_txn: TxnId,
    /// The request as received (to build its responses).
    request: Message,
    /// CSeq of the relayed request on the other leg (its ACK reuses it).
    cseq: u32,
    /// The offer it carried, and where the sender's streams went before it.
    offer: Option<(Sdp, Snapshot)>,
    /// A 2xx carried the other side's offer (re-INVITE without SDP): the answer is in the ACK.
    offer_in_ok: Option<Sdp>,
    /// A final response arrived; later 2xx are retransmissions.
    answered: bool,
    /// The ACK sent on the other leg, repeated for 2xx retransmissions.
    ack: Option<Message>,
    /// When that ACK went: 64×T1 later no 2xx retransmission can come, and the entry goes.
    acked_at: Option<Instant>,
    /// The sender cancelled the re-INVITE; whether the CANCEL went out (`b2bua_reinvite.rs`).
    cancelled: bool,
    cancel_sent: bool,
}

impl Relayed {
    fn is_invite(&self) -> bool {
        self.request.method() == Some(&Method::Invite)
    }

    /// Whether a final response arrived (a challenge after that is not answered).
    pub(super) fn answered(&self) -> bool {
        self.answered
    }

    /// The request was resent with credentials under `cseq` (its ACK takes that CSeq).
    pub(super) fn resent_as(&mut self, cseq: u32) {
        self.cseq = cseq;
    }
}

/// The dialog of `side` of a call, and its trunk.
pub(super) fn leg(call: &mut super::Call, side: Side) -> (&mut Dialog, usize) {
    match side {
        Side::A => (&mut call.a, call.a_trunk),
        Side::B => (&mut call.b, call.b_trunk),
    }
}

impl B2bua {
    /// A re-INVITE or UPDATE from `side` of an established call.
    pub(super) fn on_reoffer(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let call = &self.calls[&key];
        let is_update = req.method() == Some(&Method::Other("UPDATE".into()));
        match call.phase {
            Phase::Confirmed => {}
            Phase::Ending => return self.respond(txn, &req, 481, now),
            // RFC 3311: UPDATE in the early dialog (`b2bua_prack.rs`); no re-INVITE before
            // the dialog is confirmed.
            Phase::Setup if is_update && self.early_dialog_up(key) => {}
            Phase::Setup => return self.respond(txn, &req, 501, now),
            Phase::Answered => return self.respond(txn, &req, 491, now),
        }
        if let Some(pending) = call.mid.negotiation {
            let ours_on_this_leg = self.relayed.get(&pending).is_some_and(|r| r.from != side)
                || call.timers.refreshing(side) == Some(pending);
            if ours_on_this_leg {
                tracing::info!(call = %call.label, ?side, "glare: 491");
                return self.respond(txn, &req, 491, now);
            }
            let mut r = response_to(&req, 500, reason(500), None);
            r.push_header("Retry-After", fastrand::u32(1..=10).to_string());
            return self.txns.respond(txn, r, now);
        }
        if let Err(code) = super::timers::check(&req) {
            return self.respond(txn, &req, code, now);
        }
        if let Err(unmet) = negotiate::readable_body(&req) {
            return self.refuse_unmet(txn, &req, None, unmet, now);
        }
        let offer = if req.body.is_empty() {
            None
        } else {
            match Sdp::parse(&req.body) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::info!(call = %call.label, error = %e, "bad SDP in re-offer: 488");
                    return self.respond(txn, &req, 488, now);
                }
            }
        };
        let is_invite = req.method() == Some(&Method::Invite);
        if is_invite {
            let mut trying = response_to(&req, 100, reason(100), None);
            trying.remove_headers("Server");
            self.txns.respond(txn, trying, now);
        }
        let call = self.calls.get_mut(&key).expect("live");
        let offer = match call.offer_for(side.other(), offer.as_ref()) {
            Ok(filtered) => filtered.or(offer),
            Err(()) => {
                tracing::info!(call = %call.label, "no codec of the re-offer is allowed toward the trunk: 488");
                return self.respond(txn, &req, 488, now);
            }
        };
        let mut anchored = None;
        if let Some(sdp) = offer {
            let snapshot = call.media.remotes(side);
            let mut res = self.media.borrow_mut();
            let mut ctx = res.ctx(now);
            match call.media.anchor_as(side, &sdp, true, &mut ctx) {
                Ok(body) => anchored = Some((body, sdp, snapshot)),
                Err(e) => {
                    call.media.restore(side, &snapshot, &mut ctx);
                    drop(res);
                    let code = if e == AnchorError::NoPorts { 503 } else { 488 };
                    tracing::info!(call = %call.label, error = %e, code, "cannot anchor re-offer");
                    return self.respond(txn, &req, code, now);
                }
            }
        }
        // A target refresh (RFC 3261 §12.2.2): the sender's new Contact.
        if let Some(contact) = req.header("Contact") {
            leg(call, side).0.remote_target = header::uri_of(contact).to_string();
        }
        tracing::info!(call = %call.label, ?side, method = req.method().map_or("", |m| m.as_str()),
            offer = anchored.is_some(), "mid-call offer relayed");
        let (body, offer) = match anchored {
            Some((body, sdp, snapshot)) => (Some(body), Some((sdp, snapshot))),
            None => (None, None),
        };
        let method = req.method().cloned().expect("request");
        let (dialog, _) = leg(call, side.other());
        let mut out = dialog.request(method, None);
        out.push_header("Contact", contact_for(&dialog.target));
        out.push_header("Allow", ALLOW.into());
        call.timers.request_headers(side.other(), &mut out);
        let out = with_sdp(out, body);
        let client = self.relay(key, side, txn, req, out, offer, now);
        if is_invite || offer_pending(&self.relayed[&client]) {
            self.calls.get_mut(&key).expect("live").mid.negotiation = Some(client);
        }
    }

    /// An INFO (DTMF, RFC 6086) from `side`: the same request on the other leg, body and
    /// package as received.
    pub(super) fn on_info(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let call = self.calls.get_mut(&key).expect("live");
        match call.phase {
            Phase::Answered | Phase::Confirmed => {}
            Phase::Ending => return self.respond(txn, &req, 481, now),
            Phase::Setup => return self.respond(txn, &req, 501, now),
        }
        let (dialog, _) = leg(call, side.other());
        let mut out = dialog.request(Method::Other("INFO".into()), None);
        for name in ["Info-Package", "Content-Disposition", "Content-Type"] {
            if let Some(v) = req.header(name) {
                out.push_header(name, v.to_string());
            }
        }
        out.body = req.body.clone();
        self.relay(key, side, txn, req, out, None, now);
    }

    /// Sends `out` on the other leg of `from` and remembers how to answer `req`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay(
        &mut self,
        key: CallKey,
        from: Side,
        server_txn: TxnId,
        req: Message,
        out: Message,
        offer: Option<(Sdp, Snapshot)>,
        now: Instant,
    ) -> TxnId {
        let cseq = header::cseq(&out).map_or(0, |(n, _)| n);
        self.forget_acked_relays(key, now);
        let call = self.calls.get_mut(&key).expect("live");
        let (dialog, trunk) = leg(call, from.other());
        let target = dialog.target;
        let client = self.send_request_to(trunk, out, target, now);
        let call = self.calls.get_mut(&key).expect("live");
        call.open_txns.push(client);
        call.mid.relays.push(client);
        self.by_client_txn.insert(client, (key, Purpose::Relay));
        self.relayed.insert(
            client,
            Relayed {
                key,
                from,
                server_txn,
                request: req,
                cseq,
                offer,
                offer_in_ok: None,
                answered: false,
                ack: None,
                acked_at: None,
                cancelled: false,
                cancel_sent: false,
            },
        );
        client
    }

    /// Drops the call's relayed re-INVITEs ACKed 64×T1 ago or more: they were kept only to
    /// repeat the ACK to retransmissions of their 2xx, so a long call's re-INVITEs do not pile up.
    fn forget_acked_relays(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let (relayed, by_client_txn) = (&mut self.relayed, &mut self.by_client_txn);
        call.mid.relays.retain(|txn| {
            let done = relayed
                .get(txn)
                .and_then(|r| r.acked_at)
                .is_some_and(|at| now >= at + 64 * T1);
            if done {
                relayed.remove(txn);
                by_client_txn.remove(txn);
            }
            !done
        });
    }

    /// A response to a relayed request, from the other leg.
    pub(super) fn on_relayed_response(
        &mut self,
        txn: TxnId,
        resp: Message,
        code: u16,
        now: Instant,
    ) {
        if code < 200 {
            return self.on_relayed_provisional(txn, &resp, now);
        }
        if self.relayed_dialog_gone(txn, Some(code), now) {
            return;
        }
        let Some(rel) = self.relayed.get_mut(&txn) else {
            return;
        };
        let (key, from) = (rel.key, rel.from);
        let to = from.other();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if rel.answered || call.phase == Phase::Ending {
            // A 2xx retransmission (or an answer after the hang-up): repeat or send the ACK.
            let ending = call.phase == Phase::Ending;
            if ending && !std::mem::replace(&mut rel.answered, true) {
                let r = response_to(&rel.request, 487, reason(487), None);
                self.txns.respond(rel.server_txn, r, now);
            }
            if code < 300 && rel.is_invite() {
                let ack = match &rel.ack {
                    Some(a) => a.clone(),
                    None if call.phase == Phase::Ending => {
                        leg(call, to).0.request(Method::Ack, Some(rel.cseq))
                    }
                    None => return,
                };
                let target = leg(call, to).0.target;
                self.txns.send_stateless(ack, target);
            }
            if ending {
                self.finish_if_idle(key);
            }
            return;
        }
        rel.answered = true;
        let (reason_phrase, is_invite) = match &resp.start {
            StartLine::Response { reason, .. } => (reason.clone(), rel.is_invite()),
            StartLine::Request { .. } => return,
        };
        let mut answer = response_to(&rel.request, code, &reason_phrase, None);
        if code >= 300 {
            if let Some(v) = resp.header("Retry-After") {
                answer.push_header("Retry-After", v.to_string());
            }
            let rel = self.relayed.remove(&txn).expect("present");
            let call = self.calls.get_mut(&key).expect("live");
            call.mid.relays.retain(|t| *t != txn);
            if call.mid.negotiation == Some(txn) {
                call.mid.negotiation = None;
            }
            if let Some((_, snapshot)) = &rel.offer {
                call.media
                    .restore(from, snapshot, &mut self.media.borrow_mut().ctx(now));
            }
            tracing::info!(call = %call.label, code, "mid-call request refused: call stays up");
            return self.txns.respond(rel.server_txn, answer, now);
        }
        // Disjoint fields (`rel` and `call` stay borrowed): `journal_changed`, inline.
        if self.config.media.handover {
            self.journal_dirty.push(key);
        }
        // 2xx: a target refresh on the answering leg; its SDP is the answer or a new offer.
        let refresh = is_invite || rel.request.method() == Some(&Method::Other("UPDATE".into()));
        if let (true, Some(contact)) = (refresh, resp.header("Contact")) {
            leg(call, to).0.remote_target = header::uri_of(contact).to_string();
        }
        let mut body = None;
        if let Some(sdp) = header::has_sdp(&resp)
            .then(|| Sdp::parse(&resp.body).ok())
            .flatten()
        {
            let offered = rel.offer.as_ref().map(|(o, _)| o.is_hold());
            let result = call.media.anchor_as(
                to,
                &sdp,
                offered.is_none(),
                &mut self.media.borrow_mut().ctx(now),
            );
            match (result, offered) {
                (Ok(b), Some(offer_held)) => {
                    call.mid.held = offer_held || sdp.is_hold();
                    body = Some(b);
                }
                (Ok(b), None) => {
                    rel.offer_in_ok = Some(sdp);
                    body = Some(b);
                }
                (Err(e), _) => {
                    tracing::warn!(call = %call.label, error = %e, "cannot anchor mid-call SDP")
                }
            }
        }
        if refresh {
            let trunks = [
                &call.config.trunks[call.a_trunk],
                &call.config.trunks[call.b_trunk],
            ];
            let due =
                call.timers
                    .relayed_refresh(from, &rel.request, &resp, &mut answer, trunks, now);
            super::timers::schedule(&mut self.deadlines, key, due);
        }
        let (dialog, _) = leg(call, from);
        answer.push_header("Contact", contact_for(&dialog.target));
        answer.push_header("Allow", ALLOW.into());
        let answer = with_sdp(answer, body);
        let server_txn = rel.server_txn;
        if is_invite {
            call.mid.ok = Some(PendingOk {
                response: answer.clone(),
                target: dialog.target,
                next: now + T1,
                interval: T1,
                give_up: now + 64 * T1,
            });
        } else {
            if call.mid.negotiation == Some(txn) {
                call.mid.negotiation = None;
            }
            call.mid.relays.retain(|t| *t != txn);
            self.relayed.remove(&txn);
            self.by_client_txn.remove(&txn);
        }
        self.txns.respond(server_txn, answer, now);
    }

    /// A relayed request got no final response: in an answered call the dialog is gone
    /// (`b2bua_dialog_gone.rs`); otherwise (early dialog) 408 to its sender, the call goes on.
    pub(super) fn on_relayed_timeout(&mut self, txn: TxnId, now: Instant) {
        if self.relayed_dialog_gone(txn, None, now) {
            return;
        }
        let Some(rel) = self.relayed.remove(&txn) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&rel.key) else {
            return;
        };
        call.mid.relays.retain(|t| *t != txn);
        if call.mid.negotiation == Some(txn) {
            call.mid.negotiation = None;
        }
        if let Some((_, snapshot)) = &rel.offer {
            call.media
                .restore(rel.from, snapshot, &mut self.media.borrow_mut().ctx(now));
        }
        if rel.answered {
            return;
        }
        let r = response_to(&rel.request, 408, reason(408), None);
        self.txns.respond(rel.server_txn, r, now);
        self.finish_if_idle(rel.key);
    }

    /// An ACK from `side` other than the initial one: the ACK for a relayed re-INVITE's 2xx,
    /// sent on to the other leg (with the answer, anchored, when the 2xx carried the offer).
    pub(super) fn on_midcall_ack(&mut self, key: CallKey, side: Side, ack: &Message, now: Instant) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let cseq = header::cseq(ack).map(|(n, _)| n);
        let Some(&txn) = call.mid.relays.iter().rev().find(|t| {
            self.relayed.get(t).is_some_and(|r| {
                r.from == side
                    && r.is_invite()
                    && r.answered
                    && header::cseq(&r.request).map(|(n, _)| n) == cseq
            })
        }) else {
            return;
        };
        let rel = self.relayed.get_mut(&txn).expect("found");
        rel.acked_at = Some(now);
        let to = side.other();
        if let Some(previous) = &rel.ack {
            // A retransmitted ACK (our 2xx was repeated): repeat ours.
            let target = leg(call, to).0.target;
            return self.txns.send_stateless(previous.clone(), target);
        }
        call.mid.ok = None;
        let mut out = leg(call, to).0.request(Method::Ack, Some(rel.cseq));
        if let Some(offer) = rel.offer_in_ok.take() {
            // The answer to the offer in our 2xx.
            if let Some(sdp) = header::has_sdp(ack)
                .then(|| Sdp::parse(&ack.body).ok())
                .flatten()
            {
                let result =
                    call.media
                        .anchor_as(side, &sdp, false, &mut self.media.borrow_mut().ctx(now));
                match result {
                    Ok(body) => {
                        call.mid.held = offer.is_hold() || sdp.is_hold();
                        out = with_sdp(out, Some(body));
                    }
                    Err(e) => {
                        tracing::warn!(call = %call.label, error = %e, "cannot anchor answer in ACK")
                    }
                }
            }
        }
        call.mid.negotiation = None;
        let target = leg(call, to).0.target;
        rel.ack = Some(out.clone());
        self.txns.send_stateless(out, target);
        self.journal_changed(key);
    }
}

/// Whether a relayed request carries an offer still waiting for its answer.
fn offer_pending(rel: &Relayed) -> bool {
    rel.offer.is_some()
}
