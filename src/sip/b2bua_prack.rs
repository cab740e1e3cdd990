//! The early dialog (issue 7): reliable provisional responses (RFC 3262, `100rel` and PRACK)
//! across the two legs of a call, and UPDATE before the answer (RFC 3311). Reliability is
//! terminated per leg, each with its own RSeq space:
//!
//! - The caller's `Supported`/`Require: 100rel` is carried on the callee leg's INVITE.
//! - A provisional from the callee is sent to the caller reliably (`Require: 100rel`, an RSeq
//!   of mediagate's own, retransmitted from T1 doubling until PRACKed, RFC 3262 §3) when the
//!   caller requires 100rel, or supports it and the callee's was reliable. Only one is
//!   outstanding at a time; later ones wait for the PRACK of the first.
//! - The caller's PRACK of a provisional the callee sent reliably becomes a PRACK on the callee
//!   leg (RAck mapped to the callee's RSeq and CSeq), relayed as any in-dialog request
//!   (`b2bua_midcall.rs`), so the caller's 200 is the callee's. A PRACK of a provisional the
//!   callee sent unreliably is answered by mediagate.
//! - A reliable provisional the caller is not sent reliably (it did not offer 100rel) is
//!   PRACKed by mediagate itself and relayed unreliably.
//! - An SDP answer in the caller's PRACK (to an offer in the provisional, the caller's INVITE
//!   having none) is anchored and carried in the PRACK on the callee leg.
//! - Callee retransmissions of a reliable provisional (same To tag and RSeq) are not relayed
//!   again. SDP in any provisional is anchored as before (early media).
//! - UPDATE (RFC 3311) from either side in the early dialog is relayed like a mid-call one
//!   (`b2bua_midcall.rs`), its SDP re-anchored, once the callee's early dialog exists.
//! - A forked callee (`b2bua_forks.rs`): each early dialog toward the caller has its own RSeq
//!   space and callee RSeq; a PRACK acknowledges the outstanding provisional only in that
//!   provisional's early dialog (its To tag). A fork beyond `max_early_dialogs` is not relayed
//!   at all, and mediagate PRACKs its reliable provisionals.
//! - No PRACK from the caller within 64*T1: the caller gets 500 and the callee a CANCEL
//!   (RFC 3262 §3 "SHOULD reject the original request with a 5xx").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{B2bua, CallKey, Phase, Purpose};
use crate::cdr::Ending;
use crate::media::session::Side;
use crate::sdp::Sdp;
use crate::sip::dialog::{with_sdp, Dialog};
use crate::sip::header;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{TxnId, T1};

/// The option tag of RFC 3262.
const TAG: &str = "100rel";

/// Whether header `name` of `msg` lists the 100rel option tag (in one or several values).
fn lists_100rel(msg: &Message, name: &str) -> bool {
    msg.headers_named(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(TAG))
}

/// The RSeq of a reliable provisional response (`Require: 100rel` with a valid RSeq).
fn reliable_rseq(resp: &Message) -> Option<u32> {
    if !lists_100rel(resp, "Require") {
        return None;
    }
    resp.header("RSeq")
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
}

/// The RAck of a PRACK: response number, CSeq number and method (RFC 3262 §7.2).
fn rack(req: &Message) -> Option<(u32, u32, Method)> {
    let mut words = req.header("RAck")?.split_whitespace();
    let rseq = words.next()?.parse().ok()?;
    let cseq = words.next()?.parse().ok()?;
    let method = Method::parse(words.next()?);
    words.next().is_none().then_some((rseq, cseq, method))
}

/// What the caller's INVITE said about 100rel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Caller {
    #[default]
    Unaware,
    Supports,
    Requires,
}

/// A provisional response for the caller sent reliably, kept until its PRACK.
#[derive(Debug)]
struct Reliable {
    response: Message,
    rseq: u32,
    /// The callee's RSeq and CSeq when it sent this provisional reliably: the PRACK on its leg.
    callee_rack: Option<(u32, u32)>,
    /// The Call-ID of the callee leg it came from (a failover replaces that leg).
    callee_call_id: String,
    /// Next retransmission (none until it is on the wire), current interval and the end.
    next: Option<Instant>,
    interval: Duration,
    give_up: Instant,
}

/// The early-dialog reliability state of one call.
#[derive(Debug, Default)]
pub(super) struct Early {
    caller: Caller,
    /// The next RSeq toward the caller (RFC 3262 §3: starts at a random value), of the
    /// selected fork (`b2bua_forks.rs`).
    pub(super) next_rseq: u32,
    /// Reliable provisionals not yet PRACKed, oldest first; only the first is on the wire.
    queue: VecDeque<Reliable>,
    /// The callee's latest reliable provisional (To tag, RSeq), to skip its retransmissions,
    /// of the selected fork.
    pub(super) from_callee: Option<(String, u32)>,
}

impl Early {
    /// The state for a call set up by `invite`.
    pub(super) fn of_invite(invite: &Message) -> Early {
        let caller = if lists_100rel(invite, "Require") {
            Caller::Requires
        } else if lists_100rel(invite, "Supported") {
            Caller::Supports
        } else {
            Caller::Unaware
        };
        Early {
            caller,
            next_rseq: fastrand::u32(1..=1 << 20),
            ..Early::default()
        }
    }

    /// The header carrying the caller's 100rel option on the callee leg's INVITE.
    pub(super) fn toward_callee(&self) -> Option<(&'static str, String)> {
        match self.caller {
            Caller::Unaware => None,
            Caller::Supports => Some(("Supported", TAG.into())),
            Caller::Requires => Some(("Require", TAG.into())),
        }
    }

    /// When the outstanding reliable provisional is due for retransmission, or to be given up.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.queue
            .front()
            .and_then(|r| r.next.map(|next| next.min(r.give_up)))
    }
}

/// A PRACK on `dialog` (the callee leg) for the provisional numbered `rseq` of INVITE `cseq`.
fn prack_on(dialog: &mut Dialog, (rseq, cseq): (u32, u32)) -> Message {
    let mut p = dialog.request(Method::Other("PRACK".into()), None);
    p.push_header("RAck", format!("{rseq} {cseq} INVITE"));
    p
}

impl B2bua {
    /// A provisional response (101–199) from the callee while the call is being set up: its
    /// SDP anchored and the response relayed to the caller, reliably or not as the module
    /// documentation says.
    pub(super) fn on_provisional(&mut self, key: CallKey, resp: &Message, now: Instant) {
        let relayed = self.fork_of_response(key, resp, false);
        let callee_rseq = reliable_rseq(resp);
        let call = self.calls.get_mut(&key).expect("live");
        if let Some(rseq) = callee_rseq {
            let tag = header::tag(resp, "To").unwrap_or_default().to_string();
            if matches!(&call.early.from_callee, Some((t, n)) if *t == tag && rseq <= *n) {
                return; // a retransmission: our PRACK (or the caller's) answers it
            }
            call.early.from_callee = Some((tag, rseq));
        }
        let cseq = header::cseq(resp).map_or(call.b_invite_cseq, |(n, _)| n);
        let callee_rack = callee_rseq.map(|rseq| (rseq, cseq));
        let reliable = match call.early.caller {
            Caller::Requires => true,
            Caller::Supports => callee_rack.is_some(),
            Caller::Unaware => false,
        };
        call.b.establish_from_response(resp);
        if !relayed {
            self.forks_unrelayed += 1;
            tracing::debug!(call = %call.label, "provisional of a fork beyond max_early_dialogs not relayed");
            if let Some(rack) = callee_rack {
                self.prack_callee(key, rack, now);
            }
            return;
        }
        let body = self.anchor_from_b(key, resp, now);
        if !reliable {
            if let Some(rack) = callee_rack {
                self.prack_callee(key, rack, now);
            }
            return self.relay_to_a(key, resp, body, now);
        }
        let mut response = self.response_for_a(key, resp, body);
        let call = self.calls.get_mut(&key).expect("live");
        let rseq = call.early.next_rseq;
        call.early.next_rseq += 1;
        response.push_header("Require", TAG.into());
        response.push_header("RSeq", rseq.to_string());
        let callee_call_id = call.b.call_id.clone();
        call.early.queue.push_back(Reliable {
            response,
            rseq,
            callee_rack,
            callee_call_id,
            next: None,
            interval: T1,
            give_up: now,
        });
        if call.early.queue.len() == 1 {
            self.send_reliable(key, now);
        }
    }

    /// Puts the first queued reliable provisional on the wire and starts its timer.
    fn send_reliable(&mut self, key: CallKey, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        let a_txn = call.a_txn;
        let Some(head) = call.early.queue.front_mut() else {
            return;
        };
        head.next = Some(now + T1);
        head.interval = T1;
        head.give_up = now + 64 * T1;
        let response = head.response.clone();
        tracing::debug!(call = %call.label, rseq = head.rseq, "reliable provisional to the caller");
        self.txns.respond(a_txn, response, now);
    }

    /// Sends mediagate's own PRACK on the callee leg.
    fn prack_callee(&mut self, key: CallKey, rack: (u32, u32), now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        let prack = prack_on(&mut call.b, rack);
        let (trunk, target) = (call.b_trunk, call.b.target);
        let txn: TxnId = self.send_request_to(trunk, prack, target, now);
        self.calls.get_mut(&key).expect("live").open_txns.push(txn);
        self.by_client_txn.insert(txn, (key, Purpose::Prack));
    }

    /// A PRACK from `side` of call `key` (RFC 3262 §3): 481 unless it acknowledges the
    /// outstanding reliable provisional of the caller's INVITE.
    pub(super) fn on_prack(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let Some((rseq, cseq, method)) = rack(&req) else {
            return self.respond(txn, &req, 400, now);
        };
        let call = self.calls.get_mut(&key).expect("live");
        let invite_cseq = header::cseq(&call.a_invite).map(|(n, _)| n);
        let outstanding = call.early.queue.front().is_some_and(|r| r.next.is_some());
        let head = call.early.queue.front();
        let acknowledges = side == Side::A
            && call.phase == Phase::Setup
            && outstanding
            && head.map(|r| r.rseq) == Some(rseq)
            && head.and_then(|r| header::tag(&r.response, "To")) == header::tag(&req, "To")
            && invite_cseq == Some(cseq)
            && method == Method::Invite;
        if !acknowledges {
            tracing::info!(call = %call.label, ?side, rseq, cseq, "PRACK matches no reliable provisional: 481");
            return self.respond(txn, &req, 481, now);
        }
        let answer = match self.prack_answer(key, &req, now) {
            Ok(answer) => answer,
            Err(()) => return self.respond(txn, &req, 488, now),
        };
        let call = self.calls.get_mut(&key).expect("live");
        let head = call.early.queue.pop_front().expect("outstanding");
        match head.callee_rack {
            // (after a failover the callee that sent it is gone: nothing to PRACK there)
            Some(rack) if head.callee_call_id == call.b.call_id => {
                let out = with_sdp(prack_on(&mut call.b, rack), answer);
                self.relay(key, side, txn, req, out, None, now);
            }
            _ => self.respond(txn, &req, 200, now),
        }
        self.send_reliable(key, now);
    }

    /// Whether call `key` has an early dialog on both legs (a provisional with a To tag came
    /// from the callee and went to the caller), so an UPDATE from either side can be relayed
    /// (RFC 3311 §5.1; whether the initial offer/answer is complete is the far end's to judge).
    pub(super) fn early_dialog_up(&self, key: CallKey) -> bool {
        let call = &self.calls[&key];
        call.phase == Phase::Setup
            && !call.cancelled
            && header::param(&call.b.remote, "tag").is_some()
    }

    /// The caller's SDP answer in its PRACK (to an offer in a reliable provisional, for an
    /// INVITE without SDP, RFC 3262 §5), anchored for the callee; `Err` when the body is not
    /// usable SDP (the PRACK gets 488 and the provisional stays outstanding).
    fn prack_answer(
        &mut self,
        key: CallKey,
        req: &Message,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, ()> {
        if req.body.is_empty() {
            return Ok(None);
        }
        let call = self.calls.get_mut(&key).expect("live");
        let sdp = header::has_sdp(req)
            .then(|| Sdp::parse(&req.body).ok())
            .flatten()
            .ok_or(())?;
        let mut res = self.media.borrow_mut();
        match call
            .media
            .anchor_as(Side::A, &sdp, false, &mut res.ctx(now))
        {
            Ok(body) => Ok(Some(body)),
            Err(e) => {
                tracing::info!(call = %call.label, error = %e, "cannot anchor the answer in a PRACK");
                Err(())
            }
        }
    }

    /// Retransmits reliable provisionals not yet PRACKed (T1 doubling, RFC 3262 §3) and fails
    /// the calls whose caller never PRACKed within 64*T1.
    pub(super) fn retransmit_reliable(&mut self, now: Instant) {
        let mut unacknowledged = Vec::new();
        for (key, call) in &mut self.calls {
            if call.phase != Phase::Setup {
                call.early.queue.clear();
                continue;
            }
            let Some(head) = call.early.queue.front_mut() else {
                continue;
            };
            match head.next {
                Some(_) if head.give_up <= now => unacknowledged.push(*key),
                Some(next) if next <= now => {
                    self.txns
                        .send_stateless(head.response.clone(), call.a.target);
                    head.interval *= 2;
                    head.next = Some(now + head.interval);
                }
                _ => {}
            }
        }
        for key in unacknowledged {
            let span = self.span_of(key);
            let _in_call = span.enter();
            let call = self.calls.get_mut(&key).expect("live");
            tracing::info!(call = %call.label, "no PRACK for a reliable provisional: 500");
            call.early.queue.clear();
            self.cancel_b(key, now);
            self.calls.get_mut(&key).expect("live").cancelled = true;
            self.fail_call(key, 500, Ending::Failed, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Message {
        let text = text.replace('\n', "\r\n");
        Message::parse_datagram(text.as_bytes()).unwrap()
    }

    #[test]
    fn option_tag_found_in_lists_and_repeated_headers() {
        let m = msg("SIP/2.0 183 Session Progress\nRequire: timer, 100REL\nRSeq: 7\n\n");
        assert_eq!(reliable_rseq(&m), Some(7));
        let m = msg("SIP/2.0 183 Session Progress\nRequire: timer\nRequire: 100rel\nRSeq: x\n\n");
        assert_eq!(
            reliable_rseq(&m),
            None,
            "an unparseable RSeq is not reliable"
        );
        let m = msg("SIP/2.0 183 Session Progress\nSupported: 100rel\nRSeq: 1\n\n");
        assert_eq!(reliable_rseq(&m), None, "Supported is not Require");
    }

    #[test]
    fn rack_needs_three_fields() {
        let p = |v: &str| msg(&format!("PRACK sip:a@h SIP/2.0\nRAck: {v}\n\n"));
        assert_eq!(rack(&p("5 1 INVITE")), Some((5, 1, Method::Invite)));
        assert_eq!(rack(&p("5 1")), None);
        assert_eq!(rack(&p("5 x INVITE")), None);
        assert_eq!(rack(&p("5 1 INVITE extra")), None);
    }

    #[test]
    fn caller_option_goes_on_the_callee_invite() {
        let inv = |h: &str| Early::of_invite(&msg(&format!("INVITE sip:a@h SIP/2.0\n{h}\n\n")));
        assert_eq!(
            inv("Supported: timer, 100rel").toward_callee(),
            Some(("Supported", "100rel".into()))
        );
        assert_eq!(
            inv("Require: 100rel").toward_callee(),
            Some(("Require", "100rel".into()))
        );
        assert_eq!(inv("Supported: timer").toward_callee(), None);
    }
}
