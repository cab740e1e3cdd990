//! Progress of a relayed re-INVITE (issue 7), a child of `b2bua_midcall.rs` (it reads the
//! relayed request's state):
//!
//! - Provisional responses (101–199) from the answering leg are relayed to the sender of the
//!   re-INVITE (status and reason; mediagate's 100 Trying already went out).
//! - A CANCEL of a relayed re-INVITE is answered 200 and relayed as a CANCEL of mediagate's
//!   re-INVITE on the other leg (at once when that one has seen a provisional, else when the
//!   first provisional arrives, RFC 3261 §9.1). The other side's answer (normally 487) goes
//!   back to the sender like any refusal, which puts the sender's streams back: the call stays
//!   up with its previous media. A CANCEL that matches no pending relayed re-INVITE gets 481
//!   (one of the initial INVITE that carries a To tag is handled as the initial CANCEL).

use std::time::Instant;

use super::super::{B2bua, CallKey, Purpose};
use crate::media::session::Side;
use crate::sip::dialog::response_to;
use crate::sip::message::{Message, StartLine};
use crate::sip::transaction::TxnId;

impl B2bua {
    /// A provisional response to the relayed request of client transaction `txn`.
    pub(super) fn on_relayed_provisional(&mut self, txn: TxnId, resp: &Message, now: Instant) {
        let Some(rel) = self.relayed.get(&txn) else {
            return;
        };
        let (code, reason_phrase) = match &resp.start {
            StartLine::Response { code, reason } => (*code, reason.as_str()),
            StartLine::Request { .. } => return,
        };
        if code == 100 || !rel.is_invite() || rel.answered {
            return;
        }
        let r = response_to(&rel.request, code, reason_phrase, None);
        let (key, server_txn, cancel) = (rel.key, rel.server_txn, rel.cancelled);
        self.txns.respond(server_txn, r, now);
        if cancel {
            self.cancel_relayed(key, txn, now);
        }
    }

    /// A CANCEL from `side` inside call `key`: of a re-INVITE mediagate relayed, or of nothing.
    pub(in crate::sip::b2bua) fn on_midcall_cancel(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let server = self.txns.server_invite_for_cancel(&req);
        if server.is_some_and(|s| self.by_server_invite.contains_key(&s)) {
            // The initial INVITE's CANCEL, sent with the To tag of a provisional.
            return self.on_cancel(txn, req, now);
        }
        let found = self.relayed.iter_mut().find(|(_, r)| {
            r.key == key
                && r.from == side
                && Some(r.server_txn) == server
                && r.is_invite()
                && !r.answered
        });
        let Some((&client, rel)) = found else {
            return self.respond(txn, &req, 481, now);
        };
        rel.cancelled = true;
        self.respond(txn, &req, 200, now);
        tracing::info!(?side, "re-INVITE cancelled: CANCEL relayed");
        if self.txns.is_proceeding(client) {
            self.cancel_relayed(key, client, now);
        }
    }

    /// Sends the CANCEL of relayed re-INVITE `client` (once).
    fn cancel_relayed(&mut self, key: CallKey, client: TxnId, now: Instant) {
        let Some(rel) = self.relayed.get_mut(&client) else {
            return;
        };
        if std::mem::replace(&mut rel.cancel_sent, true) {
            return;
        }
        if let Some(c) = self.txns.send_cancel(client, now) {
            if let Some(call) = self.calls.get_mut(&key) {
                call.open_txns.push(c);
            }
            self.by_client_txn.insert(c, (key, Purpose::Cancel));
        }
    }
}
