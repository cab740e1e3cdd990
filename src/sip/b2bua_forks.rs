//! Forked early dialogs (issue 7; RFC 3261 §12.1, §13.2.2.4): a proxy behind the callee's
//! trunk may fork mediagate's INVITE, and each branch that answers with a To tag is an early
//! dialog of its own on the callee leg. Each of them gets its own early dialog toward the
//! caller, with a To tag of mediagate's, mapped 1:1:
//!
//! - The call's dialogs (`Call::b`, `Call::a`) and early-dialog state (`prack::Early`'s RSeq
//!   counter toward the caller and the callee's last RSeq) are those of the *selected* fork.
//!   A response or request of another fork selects it first (by the callee's tag on leg B, by
//!   mediagate's tag on leg A), so everything built from the call's dialogs — PRACKs, relayed
//!   UPDATEs and INFOs, the 200 to the caller — belongs to that fork without knowing of forks.
//! - The list exists only once a second fork shows up: an unforked call carries one `None`.
//! - Within the callee trunk's `max_early_dialogs`, a fork's provisionals are relayed; beyond
//!   it they are not (counted, logged at debug), and mediagate PRACKs their reliable ones.
//! - The first 2xx settles the call on its fork (a fork never heard of gets a new tag toward
//!   the caller: a 2xx creates the dialog whatever the limit); the list is dropped, the other
//!   early dialogs toward the caller are never confirmed (RFC 3261 lets them time out). A 2xx
//!   of another fork afterwards is ACKed and hung up.
//! - Media stays one session per call: the offer toward the callee had one set of ports, so all
//!   forks send to them; the SDP of the latest provisional with SDP re-anchors where mediagate
//!   sends (re-opening latching), and every early dialog toward the caller carries mediagate's
//!   caller-facing ports.

use std::time::Instant;

use super::{B2bua, Call, CallKey};
use crate::media::session::Side;
use crate::sip::dialog::{token, Dialog};
use crate::sip::header;
use crate::sip::message::{Message, Method};

/// The part of a call's state that differs per fork: swapped between the call's own fields
/// and the list when another fork is selected.
#[derive(Debug, Default)]
struct ForkLeg {
    /// `Call::b`'s remote (the callee's To with its tag), target and route set.
    b_remote: String,
    b_remote_target: String,
    b_route_set: Vec<String>,
    /// `Call::a`'s local (mediagate's To toward the caller, with this fork's tag).
    a_local: String,
    /// `prack::Early`'s callee RSeq and next RSeq toward the caller.
    from_callee: Option<(String, u32)>,
    next_rseq: u32,
}

/// One early dialog of the callee leg.
#[derive(Debug)]
struct Fork {
    /// The callee's To tag.
    b_tag: String,
    /// mediagate's To tag toward the caller.
    a_tag: String,
    /// Whether its provisionals go to the caller (within `max_early_dialogs`).
    relayed: bool,
    /// Its state while another fork is selected (stale while it is selected itself).
    leg: ForkLeg,
}

/// The early dialogs of a forked call, boxed in the call only once a second one appears.
#[derive(Debug)]
pub(super) struct Forks {
    list: Vec<Fork>,
    selected: usize,
}

/// Swaps the per-fork fields of `call` with `leg`.
fn exchange(call: &mut Call, leg: &mut ForkLeg) {
    std::mem::swap(&mut call.b.remote, &mut leg.b_remote);
    std::mem::swap(&mut call.b.remote_target, &mut leg.b_remote_target);
    std::mem::swap(&mut call.b.route_set, &mut leg.b_route_set);
    std::mem::swap(&mut call.a.local, &mut leg.a_local);
    std::mem::swap(&mut call.early.from_callee, &mut leg.from_callee);
    std::mem::swap(&mut call.early.next_rseq, &mut leg.next_rseq);
}

/// Makes fork `i` the one the call's dialogs describe.
fn select(call: &mut Call, i: usize) {
    let Some(mut forks) = call.forks.take() else {
        return;
    };
    if forks.selected != i {
        exchange(call, &mut forks.list[forks.selected].leg);
        exchange(call, &mut forks.list[i].leg);
        forks.selected = i;
    }
    call.forks = Some(forks);
}

/// The tag of a header value (`To`/`From` as kept in a dialog).
fn tag_of(value: &str) -> Option<&str> {
    header::param(value, "tag")
}

impl B2bua {
    /// Selects (or creates) the fork of a response from the callee to the call's INVITE:
    /// whether its provisionals are relayed to the caller. `answer`: a 2xx, which creates its
    /// dialog whatever the limit. A response without a To tag creates no dialog and leaves
    /// the selection as it is.
    pub(super) fn fork_of_response(&mut self, key: CallKey, resp: &Message, answer: bool) -> bool {
        let call = self.calls.get_mut(&key).expect("live");
        let Some(tag) = header::tag(resp, "To") else {
            return true;
        };
        let Some(current) = tag_of(&call.b.remote) else {
            return true; // the first early dialog
        };
        if call.forks.is_none() {
            if current == tag {
                return true;
            }
            let first = Fork {
                b_tag: current.to_string(),
                a_tag: tag_of(&call.a.local).unwrap_or_default().to_string(),
                relayed: true,
                leg: ForkLeg::default(),
            };
            call.forks = Some(Box::new(Forks {
                list: vec![first],
                selected: 0,
            }));
        }
        let forks = call.forks.as_mut().expect("made above");
        if let Some(i) = forks.list.iter().position(|f| f.b_tag == tag) {
            let relayed = forks.list[i].relayed;
            select(call, i);
            return relayed || answer;
        }
        let relayed_now = forks.list.iter().filter(|f| f.relayed).count();
        let limit = call.config.trunks[call.b_trunk].max_early_dialogs;
        let relayed = relayed_now < limit;
        let a_tag = token();
        let base = call
            .a
            .local
            .rsplit_once(";tag=")
            .map_or(call.a.local.as_str(), |(base, _)| base);
        let leg = ForkLeg {
            b_remote: call.b.remote.clone(),
            b_remote_target: call.b.remote_target.clone(),
            b_route_set: Vec::new(),
            a_local: format!("{base};tag={a_tag}"),
            from_callee: None,
            next_rseq: fastrand::u32(1..=1 << 20),
        };
        tracing::info!(call = %call.label, forks = forks.list.len() + 1, relayed,
            "the callee forked: new early dialog");
        forks.list.push(Fork {
            b_tag: tag.to_string(),
            a_tag,
            relayed,
            leg,
        });
        let i = forks.list.len() - 1;
        select(call, i);
        relayed || answer
    }

    /// Selects the fork an in-dialog request of a call being set up belongs to: by mediagate's
    /// To tag from the caller, by the callee's From tag from the callee. False when the call
    /// is forked and the tag names none of its early dialogs (the request gets 481).
    pub(super) fn fork_of_request(&mut self, key: CallKey, side: Side, req: &Message) -> bool {
        let call = self.calls.get_mut(&key).expect("live");
        let Some(forks) = &call.forks else {
            return true;
        };
        let found = match side {
            Side::A => header::tag(req, "To")
                .and_then(|t| forks.list.iter().position(|f| f.relayed && f.a_tag == t)),
            Side::B => {
                header::tag(req, "From").and_then(|t| forks.list.iter().position(|f| f.b_tag == t))
            }
        };
        match found {
            Some(i) => {
                select(call, i);
                true
            }
            None => false,
        }
    }

    /// The call is answered by the selected fork: the other early dialogs are forgotten.
    pub(super) fn forks_settled(&mut self, key: CallKey) {
        let call = self.calls.get_mut(&key).expect("live");
        if let Some(forks) = call.forks.take() {
            tracing::debug!(call = %call.label, forks = forks.list.len(),
                "answered: the other early dialogs end");
        }
    }

    /// A 2xx to the call's INVITE after its answer: when it comes from another fork than the
    /// one that answered, that dialog is ACKed and hung up (true); a retransmission of the
    /// answer is left to the caller of this (false).
    pub(super) fn hang_up_late_fork(&mut self, key: CallKey, resp: &Message, now: Instant) -> bool {
        let call = &self.calls[&key];
        let tag = header::tag(resp, "To");
        if tag.is_none() || tag == tag_of(&call.b.remote) {
            return false;
        }
        tracing::info!(call = %call.label, "a second fork answered: ACK and BYE");
        let dialog = call.b.clone();
        self.ack_and_bye(dialog, resp, now);
        true
    }

    /// Confirms the dialog a 2xx made from `dialog` (the INVITE's leg) with an ACK and ends it
    /// with a BYE: for answers nobody wants (a late fork, an abandoned INVITE).
    pub(super) fn ack_and_bye(&mut self, mut dialog: Dialog, resp: &Message, now: Instant) {
        dialog.establish_from_response(resp);
        let cseq = header::cseq(resp).map_or(1, |(n, _)| n);
        let ack = dialog.request(Method::Ack, Some(cseq));
        self.txns.send_stateless(ack, dialog.target);
        let bye = dialog.request(Method::Bye, None);
        self.txns.send_request(bye, dialog.target, now);
    }
}
