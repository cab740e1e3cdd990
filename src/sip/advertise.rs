//! A trunk behind 1:1 NAT (`trunk.advertise`): the far side must see mediagate's public
//! address, not the private one its socket is bound to, wherever mediagate names itself in
//! SIP, or the far side's responses and in-dialog requests would go to an address it cannot
//! reach. mediagate names itself with its listen address in exactly two places: the top Via
//! of the requests it sends and the Contact of its requests and responses (a B2BUA relays
//! no Via and adds no Record-Route). The rewrite happens as messages leave, so transaction and
//! dialog state keeps the socket's own address and every kind of message (requests,
//! responses, ACKs and CANCELs built by the transaction layer, retransmissions) is covered by
//! one rule. The SDP side is `media::session::CallMedia::advertise`.

use std::net::{IpAddr, SocketAddr};

use super::message::Message;

/// Writes `public` (with `local`'s port) instead of `local` into the top Via of a request and
/// into every Contact that names `local` as its host. Contacts naming another host (a 3xx
/// relayed with the far side's Contact) are left alone.
pub fn rewrite(message: &mut Message, local: SocketAddr, public: IpAddr) {
    let from = local.to_string();
    let to = SocketAddr::new(public, local.port()).to_string();
    let request = message.is_request();
    let mut top_via = true;
    for h in &mut message.headers {
        let ours = match h.name.as_str() {
            "Via" => request && std::mem::replace(&mut top_via, false),
            "Contact" => true,
            _ => false,
        };
        if ours {
            if let Some(v) = replace_host(&h.value, &from, &to) {
                h.value = v;
            }
        }
    }
}

/// `value` with its host-and-port `from` (after a space, as in a Via sent-by, or an `@`, as in
/// a URI) replaced by `to`; `None` when `value` does not name `from`.
fn replace_host(value: &str, from: &str, to: &str) -> Option<String> {
    let at = value.match_indices(from).map(|(i, _)| i).find(|&i| {
        let before = value[..i].chars().next_back();
        let after = value[i + from.len()..].chars().next();
        matches!(before, Some(' ' | '@' | ':')) && !after.is_some_and(|c| c.is_ascii_digit())
    })?;
    Some(format!("{}{to}{}", &value[..at], &value[at + from.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> Message {
        Message::parse_datagram(text.replace('\n', "\r\n").as_bytes()).unwrap()
    }

    const LOCAL: &str = "10.99.2.1:5060";

    #[test]
    fn request_top_via_and_contact_carry_the_public_address() {
        let mut m = message(
            "INVITE sip:1@10.99.3.2 SIP/2.0\nVia: SIP/2.0/UDP 10.99.2.1:5060;branch=z9hG4bK1;rport\n\
             Via: SIP/2.0/UDP 10.99.2.1:5060;branch=z9hG4bK0\nFrom: <sip:a@10.99.2.1:5060>;tag=1\n\
             To: <sip:1@10.99.3.2>\nCall-ID: x@10.99.2.1\nCSeq: 1 INVITE\n\
             Contact: <sip:mediagate@10.99.2.1:5060;transport=tcp>\nContent-Length: 0\n\n",
        );
        rewrite(
            &mut m,
            LOCAL.parse().unwrap(),
            "203.0.113.5".parse().unwrap(),
        );
        let vias: Vec<&str> = m.headers_named("Via").collect();
        assert_eq!(
            vias[0],
            "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1;rport"
        );
        assert_eq!(
            vias[1], "SIP/2.0/UDP 10.99.2.1:5060;branch=z9hG4bK0",
            "only ours"
        );
        assert_eq!(
            m.header("Contact"),
            Some("<sip:mediagate@203.0.113.5:5060;transport=tcp>")
        );
        assert_eq!(m.header("From"), Some("<sip:a@10.99.2.1:5060>;tag=1"));
        assert_eq!(m.header("Call-ID"), Some("x@10.99.2.1"), "dialog ids stay");
    }

    #[test]
    fn responses_keep_the_peers_via_and_foreign_contacts() {
        let mut m = message(
            "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.99.2.1:5060;branch=z9hG4bK1\n\
             From: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\nCall-ID: x\nCSeq: 1 INVITE\n\
             Contact: <sip:mediagate@10.99.2.1:5060>\nContact: <sip:bob@10.99.2.1:50601>\n\
             Content-Length: 0\n\n",
        );
        rewrite(
            &mut m,
            LOCAL.parse().unwrap(),
            "203.0.113.5".parse().unwrap(),
        );
        assert_eq!(
            m.header("Via"),
            Some("SIP/2.0/UDP 10.99.2.1:5060;branch=z9hG4bK1"),
            "a response's Via is the peer's"
        );
        let contacts: Vec<&str> = m.headers_named("Contact").collect();
        assert_eq!(
            contacts,
            [
                "<sip:mediagate@203.0.113.5:5060>",
                "<sip:bob@10.99.2.1:50601>"
            ]
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let local: SocketAddr = "[fd00:99::1]:5060".parse().unwrap();
        assert_eq!(
            replace_host(
                "<sip:mediagate@[fd00:99::1]:5060>",
                &local.to_string(),
                "[2001:db8::5]:5060"
            )
            .as_deref(),
            Some("<sip:mediagate@[2001:db8::5]:5060>")
        );
        assert_eq!(
            replace_host("<sip:x@[fd00:99::10]:5060>", &local.to_string(), "y"),
            None
        );
    }
}
