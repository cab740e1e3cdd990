//! Call transfer (REFER, RFC 3515) inside an established call, as the sending trunk's `refer`
//! says:
//!
//! - `reject` (the default): 403. The request is understood and refused by policy: a transfer
//!   makes the other side place a new call that its trunk's owner pays for, which only the
//!   operator may allow (405 would claim the method is unknown to mediagate, 501 that it is
//!   not implemented).
//! - `pass`: the REFER becomes mediagate's own REFER on the other leg, its response is relayed
//!   back, and the transfer's NOTIFYs (`message/sipfrag` progress) from the other side are
//!   relayed to the sender. Refer-To and Referred-By are kept, except that an address of the
//!   sender's side (mediagate's own, or one of the sending trunk's peers) is replaced by
//!   mediagate's address on the other leg: the transferee's new INVITE then comes back to
//!   mediagate and is routed like any call (media anchored), and no address of one side reaches
//!   the other.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::midcall::leg;
use super::{B2bua, CallKey, Phase};
use crate::config::{Config, Refer};
use crate::media::session::Side;
use crate::sip::dialog::contact_for;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::TxnId;

/// Headers of a NOTIFY that say what it reports, relayed with its body.
const NOTIFY_HEADERS: [&str; 3] = ["Event", "Subscription-State", "Content-Type"];

/// The transfer state of one call.
#[derive(Debug, Default)]
pub(super) struct Transfer {
    /// The side whose REFER was passed: NOTIFYs from the other side are relayed to it.
    referred_by: Option<Side>,
}

/// The host part (`host` or `host:port`, IPv6 in brackets) of a SIP URI inside a header value,
/// as a byte range of `value`.
fn host_range(value: &str) -> Option<std::ops::Range<usize>> {
    let scheme = value.find("sip:").map(|i| i + 4)?;
    let rest = &value[scheme..];
    let end_of_uri = rest.find(['>', ';', '?']).unwrap_or(rest.len());
    let start = rest[..end_of_uri].find('@').map_or(0, |i| i + 1);
    Some(scheme + start..scheme + end_of_uri)
}

/// The IP of a `host` or `host:port` (IPv6 in brackets), when it is an address.
fn host_ip(host: &str) -> Option<IpAddr> {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// `value` (a Refer-To or Referred-By) with its URI's host replaced by `ours` when the host is
/// an address of the sender's side: one of mediagate's listen addresses or a peer of trunk
/// `from_trunk`. Other hosts (a domain, a third party) are kept.
fn rehost(value: &str, config: &Config, from_trunk: usize, ours: SocketAddr) -> String {
    let Some(range) = host_range(value) else {
        return value.to_string();
    };
    let own = |ip: IpAddr| {
        config.sip.listen.iter().any(|l| l.addr.ip() == ip)
            || config.trunks[from_trunk]
                .peers
                .iter()
                .any(|p| p.addr.ip() == ip)
    };
    match host_ip(&value[range.clone()]) {
        Some(ip) if own(ip) => format!("{}{ours}{}", &value[..range.start], &value[range.end..]),
        _ => value.to_string(),
    }
}

impl B2bua {
    /// A REFER from `side` of a call.
    pub(super) fn on_refer(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let call = self.calls.get_mut(&key).expect("indexed call");
        let from_trunk = leg(call, side).1;
        match call.phase {
            Phase::Confirmed => {}
            Phase::Ending => return self.respond(txn, &req, 481, now),
            Phase::Setup | Phase::Answered => return self.respond(txn, &req, 491, now),
        }
        if call.config.trunks[from_trunk].refer == Refer::Reject {
            tracing::info!(call = %call.label, ?side, "REFER refused (trunk refer = \"reject\"): 403");
            return self.respond(txn, &req, 403, now);
        }
        let refer_to: Vec<&str> = req.headers_named("Refer-To").collect();
        if refer_to.len() != 1 {
            // RFC 3515 §2.4.1: exactly one Refer-To.
            return self.respond(txn, &req, 400, now);
        }
        let config = call.config.clone();
        let (dialog, to_trunk) = leg(call, side.other());
        // mediagate's address as the other side reaches it (its public one behind 1:1 NAT).
        let local = dialog.target.local;
        let ours = SocketAddr::new(
            config.trunks[to_trunk].advertise.unwrap_or(local.ip()),
            local.port(),
        );
        let mut out = dialog.request(Method::Other("REFER".into()), None);
        out.push_header("Contact", contact_for(&dialog.target));
        out.push_header("Refer-To", rehost(refer_to[0], &config, from_trunk, ours));
        if let Some(by) = req.header("Referred-By") {
            out.push_header("Referred-By", rehost(by, &config, from_trunk, ours));
        }
        tracing::info!(call = %call.label, ?side, "REFER relayed");
        call.transfer.referred_by = Some(side);
        self.relay(key, side, txn, req, out, None, now);
    }

    /// A NOTIFY from `side`: the progress of a transfer the other side asked for, relayed to
    /// it; any other gets 481 (no subscription of this dialog, RFC 6665 §4.1.3).
    pub(super) fn on_notify(
        &mut self,
        key: CallKey,
        side: Side,
        txn: TxnId,
        req: Message,
        now: Instant,
    ) {
        let call = self.calls.get_mut(&key).expect("indexed call");
        if call.transfer.referred_by != Some(side.other()) || call.phase == Phase::Ending {
            return self.respond(txn, &req, 481, now);
        }
        let (dialog, _) = leg(call, side.other());
        let mut out = dialog.request(Method::Other("NOTIFY".into()), None);
        out.push_header("Contact", contact_for(&dialog.target));
        for name in NOTIFY_HEADERS {
            if let Some(v) = req.header(name) {
                out.push_header(name, v.to_string());
            }
        }
        out.body = req.body.clone();
        self.relay(key, side, txn, req, out, None, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_side_addresses_are_replaced_others_kept() {
        let config = crate::config::parse("lab.toml", include_str!("../../tests/data/lab.toml"))
            .expect("lab config");
        let ours: SocketAddr = "10.99.2.1:5060".parse().unwrap();
        // From the PBX (trunk 0): mediagate's PBX-side address and the PBX's own.
        assert_eq!(
            rehost("<sip:200@10.99.1.1>", &config, 0, ours),
            "<sip:200@10.99.2.1:5060>"
        );
        assert_eq!(
            rehost(
                "\"Bob\" <sip:100@10.99.1.2:5060;user=phone>",
                &config,
                0,
                ours
            ),
            "\"Bob\" <sip:100@10.99.2.1:5060;user=phone>"
        );
        assert_eq!(
            rehost("sip:200@10.99.1.1:5060?Replaces=x", &config, 0, ours),
            "sip:200@10.99.2.1:5060?Replaces=x"
        );
        // A third party and a domain are kept.
        assert_eq!(
            rehost("<sip:200@192.0.2.7>", &config, 0, ours),
            "<sip:200@192.0.2.7>"
        );
        assert_eq!(
            rehost("<sip:bob@example.com>", &config, 0, ours),
            "<sip:bob@example.com>"
        );
        // The ITSP's address is not the PBX trunk's own side.
        assert_eq!(
            rehost("<sip:200@10.99.2.2>", &config, 0, ours),
            "<sip:200@10.99.2.2>"
        );
    }
}
