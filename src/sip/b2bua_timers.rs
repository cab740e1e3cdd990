//! Session timers (RFC 4028), negotiated on each leg on its own: mediagate is the UAS of leg A
//! and the UAC of leg B, and one leg's interval or refresher says nothing about the other's.
//!
//! - A peer's Session-Expires and `refresher` are honoured; one below Min-SE (90 s) gets 422
//!   with `Min-SE: 90`, one that does not parse 400.
//! - Legs toward a trunk with `session_timer_s` ask for that interval (the INVITE toward it, or
//!   the 2xx toward a caller that asked for none or for more).
//! - When mediagate refreshes a leg it sends a refresh at half the interval: UPDATE without SDP
//!   when the peer allows UPDATE, else a re-INVITE with the description it last sent there. A
//!   408 or 481 to it, or no answer, ends the call.
//! - When the peer refreshes and no refresh (any re-INVITE or UPDATE answered 2xx on that leg,
//!   whichever side sent it) comes by the interval minus min(32 s, interval / 3), the session
//!   is over: both legs get BYE and the record says `session-timer`. This is how a call to a
//!   peer that died ends without waiting for the media timeout.
//! - A refresh concerns its leg only: an UPDATE without SDP is answered here, not relayed; a
//!   re-INVITE or UPDATE with SDP is relayed as any offer (`b2bua_midcall.rs`) and refreshes
//!   each leg when its 2xx passes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::midcall::leg;
use super::{B2bua, CallKey, Deadline, Phase, Purpose};
use crate::cdr::Ending;
use crate::config::{Trunk, MIN_SESSION_TIMER_S};
use crate::media::session::Side;
use crate::sdp::Sdp;
use crate::sip::dialog::{contact_for, reason, response_to, with_sdp, ALLOW};
use crate::sip::header;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::TxnId;

/// Min-SE in seconds, as sent in 422 and requests.
const MIN_SE: u32 = MIN_SESSION_TIMER_S as u32;
/// A re-INVITE refresh that finds another offer/answer exchange in progress waits this long.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// The per-call deadline heap of the B2BUA.
type Deadlines = BinaryHeap<Reverse<(Instant, CallKey, Deadline)>>;

/// Who refreshes, as the `refresher` parameter says it: relative to the transaction that
/// carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresher {
    Uac,
    Uas,
}

/// What one message says about session timers.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    /// Session-Expires in seconds, with its `refresher` parameter.
    expires: Option<(u32, Option<Refresher>)>,
    /// `timer` in Supported or Require.
    supports: bool,
    /// UPDATE in Allow.
    allows_update: bool,
}

impl Asked {
    /// Reads a message whose Session-Expires passed [`check`] (an unreadable one counts as
    /// absent).
    fn of(msg: &Message) -> Self {
        Asked {
            expires: session_expires(msg).ok().flatten(),
            supports: has_token(msg, &["Supported", "Require"], "timer"),
            allows_update: has_token(msg, &["Allow"], "UPDATE"),
        }
    }
}

/// The Session-Expires header (or its compact form `x`): `Ok(None)` when absent, `Err` when it
/// is not `delta-seconds *(;param)` with an optional `refresher=uac|uas`.
fn session_expires(msg: &Message) -> Result<Option<(u32, Option<Refresher>)>, ()> {
    let Some(value) = msg.header("Session-Expires").or_else(|| msg.header("x")) else {
        return Ok(None);
    };
    let mut parts = value.split(';');
    let secs = parts
        .next()
        .unwrap_or_default()
        .trim()
        .parse::<u32>()
        .map_err(|_| ())?;
    let mut refresher = None;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("refresher") {
            refresher = Some(match v.trim().to_ascii_lowercase().as_str() {
                "uac" => Refresher::Uac,
                "uas" => Refresher::Uas,
                _ => return Err(()),
            });
        }
    }
    Ok(Some((secs, refresher)))
}

/// Whether any of the comma-separated headers `names` lists `token`.
fn has_token(msg: &Message, names: &[&str], token: &str) -> bool {
    names
        .iter()
        .flat_map(|n| msg.headers_named(n))
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The error status a request's session timer calls for (RFC 4028 §8.1.1): 400 when its
/// Session-Expires does not parse, 422 (the response then carries [`min_se`]) when it is below
/// Min-SE.
pub(super) fn check(req: &Message) -> Result<(), u16> {
    match session_expires(req) {
        Err(()) => Err(400),
        Ok(Some((secs, _))) if secs < MIN_SE => Err(422),
        Ok(_) => Ok(()),
    }
}

/// The `Min-SE` header value a 422 carries.
pub(super) fn min_se() -> String {
    MIN_SE.to_string()
}

/// The trunk's `session_timer_s`, 0 when off.
fn trunk_interval(trunk: &Trunk) -> u32 {
    trunk
        .session_timer
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The session timer of one leg.
#[derive(Debug, Clone, Copy, Default)]
struct Leg {
    /// Session interval in seconds; 0: no session timer on this leg.
    interval: u32,
    /// mediagate refreshes; otherwise the peer does and mediagate watches for expiry.
    ours: bool,
    /// The peer supports timers (a response to it may say `Require: timer`).
    supports: bool,
    /// The peer allows UPDATE: refreshes toward it need no SDP.
    update: bool,
    /// Bumped at every restart, so that older deadlines are recognised as stale.
    generation: u32,
}

impl Leg {
    /// Takes what a request from the peer asks for (mediagate answers it, as UAS): its
    /// interval, reduced to `trunk` seconds when the trunk has a shorter one, and its
    /// refresher; without one, the peer refreshes if it supports timers.
    fn asked_by_peer(&mut self, asked: &Asked, trunk: u32) {
        self.supports |= asked.supports;
        self.update |= asked.allows_update;
        match asked.expires {
            Some((secs, refresher)) => {
                let ours_before = self.interval > 0 && self.ours;
                self.interval = if trunk > 0 { secs.min(trunk) } else { secs };
                self.ours = match refresher {
                    Some(Refresher::Uac) => false,
                    Some(Refresher::Uas) => true,
                    None if ours_before => true,
                    None => !self.supports,
                };
            }
            None if self.interval == 0 && trunk > 0 => {
                self.interval = trunk;
                self.ours = !self.supports;
            }
            None => {}
        }
    }

    /// Takes what a 2xx from the peer to mediagate's request says (mediagate is the UAC):
    /// its interval and refresher; without Session-Expires mediagate keeps the interval it
    /// has (or asked for, `trunk`) and refreshes itself, so a dead peer is still noticed.
    fn answered_by_peer(&mut self, asked: &Asked, trunk: u32) {
        self.supports |= asked.supports;
        self.update |= asked.allows_update;
        match asked.expires {
            Some((secs, refresher)) => {
                self.interval = secs.max(MIN_SE);
                self.ours = refresher != Some(Refresher::Uas);
            }
            None if self.interval == 0 => {
                self.interval = trunk;
                self.ours = true;
            }
            None => {}
        }
    }

    /// Session headers of a request mediagate sends on this leg.
    fn request_headers(&self, msg: &mut Message) {
        msg.push_header("Supported", "timer".into());
        if self.interval > 0 {
            let who = if self.ours { "uac" } else { "uas" };
            msg.push_header(
                "Session-Expires",
                format!("{};refresher={who}", self.interval),
            );
            msg.push_header("Min-SE", min_se());
        }
    }

    /// Session headers of a 2xx mediagate sends on this leg, to a request from the peer.
    fn response_headers(&self, msg: &mut Message) {
        if self.interval == 0 {
            return;
        }
        let who = if self.ours { "uas" } else { "uac" };
        msg.push_header(
            "Session-Expires",
            format!("{};refresher={who}", self.interval),
        );
        if self.supports {
            msg.push_header("Require", "timer".into());
        }
    }

    /// Starts the interval again (a refresh went through): the deadline to check it at, if
    /// the leg has a timer.
    fn restart(&mut self, side: Side, now: Instant) -> Option<(Instant, Deadline)> {
        self.generation = self.generation.wrapping_add(1);
        if self.interval == 0 {
            return None;
        }
        let interval = u64::from(self.interval);
        let after = if self.ours {
            interval / 2
        } else {
            // RFC 4028 §10: the session expires this long before the interval's end.
            interval - (interval / 3).min(32)
        };
        Some((
            now + Duration::from_secs(after),
            Deadline::Session(side, self.generation),
        ))
    }
}

/// A refresh mediagate sent.
#[derive(Debug)]
struct Refresh {
    txn: TxnId,
    side: Side,
    /// A re-INVITE (else an UPDATE).
    invite: bool,
    cseq: u32,
    /// The ACK sent for its 2xx, repeated for retransmissions of that 2xx.
    ack: Option<Message>,
}

/// The session timers of one call.
#[derive(Debug, Default)]
pub(super) struct SessionTimers {
    legs: [Leg; 2],
    /// The latest refresh mediagate sent.
    refresh: Option<Refresh>,
    /// The Min-SE a 422 from leg B asked for, with the Call-ID of the B dialog it applies to
    /// (a failover's new dialog starts again from the trunk's interval).
    b_min_se: Option<(String, u32)>,
}

fn slot(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl SessionTimers {
    /// Both legs' negotiated timers, for the call-state journal.
    pub(super) fn record(&self) -> [super::journal::TimerRecord; 2] {
        self.legs.map(|l| super::journal::TimerRecord {
            interval: l.interval,
            ours: l.ours,
            supports: l.supports,
            update: l.update,
        })
    }

    /// The timers of a call adopted from the journal after a restart, started again from
    /// `now` (the deadlines to schedule): a refresh or expiry falls due one interval after
    /// the restart, never earlier than the old process would have checked.
    pub(super) fn adopted(
        rec: &[super::journal::TimerRecord; 2],
        now: Instant,
    ) -> (Self, [Option<(Instant, Deadline)>; 2]) {
        let mut timers = SessionTimers::default();
        for (leg, r) in timers.legs.iter_mut().zip(rec) {
            *leg = Leg {
                interval: r.interval,
                ours: r.ours,
                supports: r.supports,
                update: r.update,
                generation: 0,
            };
        }
        let due = [
            timers.legs[0].restart(Side::A, now),
            timers.legs[1].restart(Side::B, now),
        ];
        (timers, due)
    }

    /// Leg A's timer as the caller's INVITE (from trunk `trunk`) asks for it; it starts when
    /// the call is answered.
    pub(super) fn for_caller(invite: &Message, trunk: &Trunk) -> Self {
        let mut timers = SessionTimers::default();
        timers.legs[0].asked_by_peer(&Asked::of(invite), trunk_interval(trunk));
        timers
    }

    /// The interval to ask for on the INVITE of B dialog `call_id` toward `trunk`: the trunk's,
    /// raised to what a 422 of that dialog asked for.
    fn b_interval(&self, trunk: &Trunk, call_id: &str) -> u32 {
        let asked = trunk_interval(trunk);
        match self.b_min_se(call_id) {
            Some(min) => asked.max(min),
            None => asked,
        }
    }

    /// The Min-SE a 422 asked for on B dialog `call_id`.
    fn b_min_se(&self, call_id: &str) -> Option<u32> {
        self.b_min_se
            .as_ref()
            .filter(|(id, _)| id == call_id)
            .map(|(_, min)| *min)
    }

    /// Headers of the INVITE of B dialog `call_id` toward `trunk`: support for timers, and
    /// the interval to ask for when there is one (the answerer picks the refresher).
    pub(super) fn offer(&self, trunk: &Trunk, call_id: &str, inv: &mut Message) {
        inv.push_header("Supported", "timer".into());
        let interval = self.b_interval(trunk, call_id);
        if interval > 0 {
            inv.push_header("Session-Expires", interval.to_string());
            let min = self.b_min_se(call_id).unwrap_or(MIN_SE).max(MIN_SE);
            inv.push_header("Min-SE", min.to_string());
        }
    }

    /// Session headers of a request mediagate relays onto leg `side`.
    pub(super) fn request_headers(&self, side: Side, msg: &mut Message) {
        self.legs[slot(side)].request_headers(msg);
    }

    /// The client transaction of mediagate's refresh on leg `side` while it waits for its
    /// answer (an offer from that peer meanwhile is glare).
    pub(super) fn refreshing(&self, side: Side) -> Option<TxnId> {
        self.refresh
            .as_ref()
            .filter(|r| r.side == side && r.ack.is_none())
            .map(|r| r.txn)
    }

    /// The client transaction of mediagate's latest refresh, to forget with the call.
    pub(super) fn refresh_txn(&self) -> Option<TxnId> {
        self.refresh.as_ref().map(|r| r.txn)
    }

    /// A re-INVITE or UPDATE from `from` relayed to the other leg got `ok`: both legs were
    /// refreshed. Adds `from`'s session headers to `answer`, the 2xx relayed back.
    pub(super) fn relayed_refresh(
        &mut self,
        from: Side,
        request: &Message,
        ok: &Message,
        answer: &mut Message,
        trunks: [&Trunk; 2],
        now: Instant,
    ) -> [Option<(Instant, Deadline)>; 2] {
        let (i, j) = (slot(from), slot(from.other()));
        self.legs[i].asked_by_peer(&Asked::of(request), trunk_interval(trunks[i]));
        self.legs[j].answered_by_peer(&Asked::of(ok), trunk_interval(trunks[j]));
        self.legs[i].response_headers(answer);
        [
            self.legs[i].restart(from, now),
            self.legs[j].restart(from.other(), now),
        ]
    }
}

/// Puts a call's session deadlines on the B2BUA's heap.
pub(super) fn schedule(
    deadlines: &mut Deadlines,
    key: CallKey,
    due: impl IntoIterator<Item = Option<(Instant, Deadline)>>,
) {
    deadlines.extend(
        due.into_iter()
            .flatten()
            .map(|(at, d)| Reverse((at, key, d))),
    );
}

impl B2bua {
    /// The call was answered with `b_ok` from leg B: leg B's timer from it, leg A's headers on
    /// `ok_to_a` (the 2xx for the caller), and both timers started.
    pub(super) fn start_session_timers(
        &mut self,
        key: CallKey,
        b_ok: &Message,
        ok_to_a: &mut Message,
        now: Instant,
    ) {
        let call = self.calls.get_mut(&key).expect("live");
        let b_trunk = call
            .timers
            .b_interval(&call.config.trunks[call.b_trunk], &call.b.call_id);
        let timers = &mut call.timers;
        timers.legs[1].answered_by_peer(&Asked::of(b_ok), b_trunk);
        timers.legs[0].response_headers(ok_to_a);
        if timers.legs[0].interval > 0 {
            ok_to_a.push_header("Supported", "timer".into());
        }
        let due = [
            timers.legs[0].restart(Side::A, now),
            timers.legs[1].restart(Side::B, now),
        ];
        for (side, leg) in [(Side::A, &timers.legs[0]), (Side::B, &timers.legs[1])] {
            if leg.interval > 0 {
                tracing::info!(call = %call.label, ?side, interval = leg.interval,
                    refresher = if leg.ours { "mediagate" } else { "peer" }, "session timer");
            }
        }
        schedule(&mut self.deadlines, key, due);
    }

    /// A 422 from leg B to the INVITE: sends the INVITE again (next CSeq, same dialog) asking
    /// for the peer's Min-SE, once per B dialog (RFC 4028 §7.4). False when it does not apply
    /// (no usable Min-SE, or already retried): the 422 is then an ordinary error answer.
    pub(super) fn retry_with_min_se(&mut self, key: CallKey, resp: &Message, now: Instant) -> bool {
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let min = resp
            .header("Min-SE")
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let retried = call.timers.b_min_se(&call.b.call_id).is_some();
        let Some(min) = min.filter(|m| (MIN_SE..=86_400).contains(m) && !retried) else {
            return false;
        };
        tracing::info!(call = %call.label, min_se = min, "422 from the trunk: INVITE again with its Min-SE");
        call.timers.b_min_se = Some((call.b.call_id.clone(), min));
        call.b_invite_cseq += 1;
        self.send_b_invite(key, now);
        true
    }

    /// An UPDATE from `side`: without SDP on an established call it is a session refresh of
    /// that leg, answered here; anything else is an offer for the other side.
    pub(super) fn on_update(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let call = self.calls.get_mut(&key).expect("indexed call");
        if !req.body.is_empty() || call.phase != Phase::Confirmed {
            return self.on_reoffer(key, side, txn, req, now);
        }
        if let Err(code) = check(&req) {
            return self.respond(txn, &req, code, now);
        }
        let config = call.config.clone();
        let (dialog, trunk) = leg(call, side);
        let interval = trunk_interval(&config.trunks[trunk]);
        if let Some(contact) = req.header("Contact") {
            dialog.remote_target = header::uri_of(contact).to_string();
        }
        let mut ok = response_to(&req, 200, reason(200), None);
        ok.push_header("Contact", contact_for(&dialog.target));
        ok.push_header("Allow", ALLOW.into());
        let leg = &mut call.timers.legs[slot(side)];
        leg.asked_by_peer(&Asked::of(&req), interval);
        leg.response_headers(&mut ok);
        let due = leg.restart(side, now);
        tracing::debug!(call = %call.label, ?side, "session refreshed by UPDATE");
        schedule(&mut self.deadlines, key, [due]);
        self.txns.respond(txn, ok, now);
    }

    /// A session deadline of leg `side` came: refresh it (mediagate is the refresher) or end
    /// the call (the peer is, and sent nothing).
    pub(super) fn on_session_deadline(
        &mut self,
        key: CallKey,
        side: Side,
        generation: u32,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let leg = call.timers.legs[slot(side)];
        if !matches!(call.phase, Phase::Answered | Phase::Confirmed)
            || leg.generation != generation
            || leg.interval == 0
        {
            return;
        }
        if !leg.ours {
            tracing::info!(call = %call.label, ?side, "session expired without a refresh: hanging up both legs");
            return self.hang_up_both(key, Ending::SessionTimer, now);
        }
        if call
            .timers
            .refresh
            .as_ref()
            .is_some_and(|r| r.ack.is_none() && r.side == side)
        {
            return; // still waiting for the answer to the previous one
        }
        if !leg.update && (call.mid.negotiation.is_some() || call.phase != Phase::Confirmed) {
            // A re-INVITE would collide with the offer/answer exchange in progress.
            let retry = Some((now + BUSY_RETRY, Deadline::Session(side, generation)));
            return schedule(&mut self.deadlines, key, [retry]);
        }
        self.send_refresh(key, side, !leg.update, now);
    }

    /// Sends mediagate's refresh on leg `side`: a re-INVITE with the description last sent
    /// there (nothing changes) or an UPDATE without SDP.
    fn send_refresh(&mut self, key: CallKey, side: Side, invite: bool, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        let body = invite
            .then(|| call.media.last_description(side).map(<[u8]>::to_vec))
            .flatten();
        let method = if invite {
            Method::Invite
        } else {
            Method::Other("UPDATE".into())
        };
        let timer = call.timers.legs[slot(side)];
        let (dialog, trunk) = leg(call, side);
        let mut req = dialog.request(method, None);
        req.push_header("Contact", contact_for(&dialog.target));
        req.push_header("Allow", ALLOW.into());
        timer.request_headers(&mut req);
        let target = dialog.target;
        let req = with_sdp(req, body);
        let cseq = header::cseq(&req).map_or(0, |(n, _)| n);
        tracing::info!(call = %call.label, ?side, method = req.method().map_or("", |m| m.as_str()),
            "session refresh");
        let txn = self.send_request_to(trunk, req, target, now);
        let call = self.calls.get_mut(&key).expect("live");
        call.open_txns.push(txn);
        if invite {
            call.mid.negotiation = Some(txn);
        }
        let old = call.timers.refresh.replace(Refresh {
            txn,
            side,
            invite,
            cseq,
            ack: None,
        });
        if let Some(old) = old {
            self.by_client_txn.remove(&old.txn);
        }
        self.by_client_txn.insert(txn, (key, Purpose::Refresh));
    }

    /// A response to mediagate's refresh: a 2xx restarts the leg's timer (a re-INVITE's is
    /// ACKed, its answer anchored); 408 or 481 ends the call (RFC 4028 §10); another error
    /// leaves the session as it is and the refresh is tried again later (with a re-INVITE when
    /// the peer refused the UPDATE).
    pub(super) fn on_refresh_response(
        &mut self,
        key: CallKey,
        txn: TxnId,
        resp: Message,
        code: u16,
        now: Instant,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(refresh) = call.timers.refresh.as_ref().filter(|r| r.txn == txn) else {
            return;
        };
        if code < 200 {
            return;
        }
        let (side, invite, cseq, acked) = (
            refresh.side,
            refresh.invite,
            refresh.cseq,
            refresh.ack.clone(),
        );
        let (dialog, trunk) = leg(call, side);
        let target = dialog.target;
        if let Some(ack) = acked {
            // A retransmitted 2xx of the re-INVITE.
            return self.txns.send_stateless(ack, target);
        }
        if code < 300 && invite {
            let ack = dialog.request(Method::Ack, Some(cseq));
            self.txns.send_stateless(ack.clone(), target);
            if let Some(r) = call.timers.refresh.as_mut() {
                r.ack = Some(ack);
            }
        }
        if invite && call.mid.negotiation == Some(txn) {
            call.mid.negotiation = None;
        }
        if call.phase == Phase::Ending {
            return self.finish_if_idle(key);
        }
        let interval = trunk_interval(&call.config.trunks[trunk]);
        match code {
            200..=299 => {
                if let Some(sdp) = header::has_sdp(&resp)
                    .then(|| Sdp::parse(&resp.body).ok())
                    .flatten()
                {
                    let mut media = self.media.borrow_mut();
                    if let Err(e) = call.media.anchor_as(side, &sdp, false, &mut media.ctx(now)) {
                        tracing::warn!(call = %call.label, error = %e, "cannot anchor refresh answer");
                    }
                }
                if !invite {
                    call.timers.refresh = None;
                    self.by_client_txn.remove(&txn);
                }
                let leg = &mut call.timers.legs[slot(side)];
                leg.answered_by_peer(&Asked::of(&resp), interval);
                let due = leg.restart(side, now);
                schedule(&mut self.deadlines, key, [due]);
            }
            408 | 481 => {
                tracing::info!(call = %call.label, ?side, code, "session refresh failed: hanging up both legs");
                self.hang_up_both(key, Ending::SessionTimer, now);
            }
            _ => {
                call.timers.refresh = None;
                let leg = &mut call.timers.legs[slot(side)];
                let refused_update = !invite && matches!(code, 405 | 501);
                if refused_update {
                    leg.update = false;
                }
                tracing::info!(call = %call.label, ?side, code, "session refresh refused: trying again");
                let wait = if refused_update {
                    Duration::ZERO
                } else {
                    Duration::from_secs(u64::from(leg.interval) / 4)
                };
                let retry = Some((now + wait, Deadline::Session(side, leg.generation)));
                schedule(&mut self.deadlines, key, [retry]);
            }
        }
    }

    /// mediagate's refresh got no answer at all: the peer is gone, the call ends.
    pub(super) fn on_refresh_timeout(&mut self, key: CallKey, txn: TxnId, now: Instant) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.timers.refresh_txn() != Some(txn) {
            return;
        }
        call.timers.refresh = None;
        if call.mid.negotiation == Some(txn) {
            call.mid.negotiation = None;
        }
        if call.phase == Phase::Ending {
            return self.finish_if_idle(key);
        }
        tracing::info!(call = %call.label, "no answer to the session refresh: hanging up both legs");
        self.hang_up_both(key, Ending::SessionTimer, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &str) -> Message {
        let text = format!(
            "UPDATE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
             To: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 2 UPDATE\r\n{headers}\r\n"
        );
        Message::parse_datagram(text.as_bytes()).expect("parses")
    }

    #[test]
    fn session_expires_is_checked() {
        assert_eq!(check(&msg("")), Ok(()));
        assert_eq!(check(&msg("Session-Expires: 90\r\n")), Ok(()));
        assert_eq!(check(&msg("x: 1800;refresher=uas\r\n")), Ok(()));
        assert_eq!(check(&msg("Session-Expires: 89\r\n")), Err(422));
        assert_eq!(check(&msg("Session-Expires: soon\r\n")), Err(400));
        assert_eq!(
            check(&msg("Session-Expires: 90;refresher=me\r\n")),
            Err(400)
        );
    }

    #[test]
    fn refresher_and_deadlines_per_role() {
        let now = Instant::now();
        // A peer asking for 1800 s, refreshing itself, toward a trunk with 600 s.
        let mut leg = Leg::default();
        leg.asked_by_peer(
            &Asked::of(&msg(
                "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n",
            )),
            600,
        );
        assert_eq!((leg.interval, leg.ours, leg.supports), (600, false, true));
        let (at, _) = leg.restart(Side::A, now).expect("has a timer");
        assert_eq!(at - now, Duration::from_secs(600 - 32), "expiry");
        // A peer without timer support: mediagate refreshes at half the interval.
        let mut leg = Leg::default();
        leg.asked_by_peer(&Asked::of(&msg("Allow: INVITE, UPDATE\r\n")), 90);
        assert_eq!((leg.interval, leg.ours, leg.update), (90, true, true));
        let (at, _) = leg.restart(Side::A, now).expect("has a timer");
        assert_eq!(at - now, Duration::from_secs(45));
        // A 2xx naming the UAS (the peer) as refresher: expiry at 90 - 30.
        let mut leg = Leg::default();
        leg.answered_by_peer(&Asked::of(&msg("Session-Expires: 90;refresher=uas\r\n")), 0);
        let (at, _) = leg.restart(Side::B, now).expect("has a timer");
        assert_eq!((leg.ours, at - now), (false, Duration::from_secs(60)));
        // No timer anywhere: none.
        let mut leg = Leg::default();
        leg.answered_by_peer(&Asked::of(&msg("")), 0);
        assert!(leg.restart(Side::B, now).is_none());
    }
}
