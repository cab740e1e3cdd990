//! A relayed mid-dialog request whose answer says the answering side's dialog is gone (issue 7,
//! RFC 3261 §12.2.1.2, RFC 5057 §5.1): a 481, a 408 or no response at all to a re-INVITE,
//! UPDATE or INFO relayed in an answered call. (A PRACK's 481 says only that no reliable
//! provisional matched, RFC 3262 §3, e.g. one racing the answer: it never ends a call.) The call cannot go on with one dead leg,
//! so mediagate answers the sender the same code (408 for a timeout), sends BYE on the sender's
//! leg (and on the silent leg too after a 408 or timeout, in case it is still there; after a
//! 481 it is not) and ends the call with `end_reason` `dialog-gone` in its record, `ended_by`
//! the side whose dialog vanished. Any other error keeps the call (`b2bua_midcall.rs`).

use std::time::Instant;

use super::super::{B2bua, Phase};
use crate::cdr::Ending;
use crate::media::session::Side;
use crate::sip::dialog::{reason, response_to};
use crate::sip::message::Method;
use crate::sip::transaction::TxnId;

impl B2bua {
    /// Ends the call of relayed request `txn` when its final response `code` (`None`: it timed
    /// out) means the answering dialog is gone; true when it did (the response is handled).
    pub(super) fn relayed_dialog_gone(
        &mut self,
        txn: TxnId,
        code: Option<u16>,
        now: Instant,
    ) -> bool {
        if !matches!(code, None | Some(481 | 408)) {
            return false;
        }
        let Some(rel) = self.relayed.get(&txn) else {
            return false;
        };
        let key = rel.key;
        let prack = rel.request.method() == Some(&Method::Other("PRACK".into()));
        let up = self
            .calls
            .get(&key)
            .is_some_and(|c| matches!(c.phase, Phase::Answered | Phase::Confirmed));
        if !up || rel.answered || prack {
            return false;
        }
        let rel = self.relayed.remove(&txn).expect("present");
        let call = self.calls.get_mut(&key).expect("up");
        call.mid.relays.retain(|t| *t != txn);
        if call.mid.negotiation == Some(txn) {
            call.mid.negotiation = None;
        }
        let gone = rel.from.other();
        tracing::info!(call = %call.label, ?gone, code, "the other side's dialog is gone: hanging up");
        let answer = code.unwrap_or(408);
        let r = response_to(&rel.request, answer, reason(answer), None);
        self.txns.respond(rel.server_txn, r, now);
        let ending = match gone {
            Side::A => Ending::CallerDialogGone,
            Side::B => Ending::CalleeDialogGone,
        };
        self.end_call(key, ending, now);
        self.send_bye(key, rel.from, now);
        if code != Some(481) {
            self.send_bye(key, gone, now);
        }
        self.finish_if_idle(key);
        true
    }
}
