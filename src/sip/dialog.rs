//! One side of a B2BUA call as a SIP dialog (RFC 3261 §12): identifiers, remote target, route
//! set and CSeq, and the requests and responses built from them.

use std::net::IpAddr;

use super::header;
use super::message::{Message, Method, StartLine};
use super::transaction::{new_branch, via_value, Target};
use crate::config::Transport;

/// Product token sent in User-Agent and Server headers.
pub const PRODUCT: &str = concat!("mediagate/", env!("CARGO_PKG_VERSION"));
/// Methods mediagate accepts, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, PRACK";

/// A dialog as seen from mediagate's side of one leg.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Where requests on this leg go (the trunk peer, or the source of the leg's INVITE).
    pub target: Target,
    pub call_id: String,
    /// Our From (UAC leg) or To (UAS leg) header value, with our tag.
    pub local: String,
    /// The other side's header value, with its tag once known.
    pub remote: String,
    /// Request-URI for in-dialog requests (the peer's Contact).
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    /// Source IP of the peer's signalling, used by media latching.
    pub signalling_ip: IpAddr,
}

/// A random token for tags and Call-IDs.
pub fn token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The Contact mediagate advertises on a leg: its own address, never the other side's.
pub fn contact_for(target: &Target) -> String {
    format!(
        "<sip:mediagate@{}{}>",
        target.local,
        uri_transport(target.transport)
    )
}

/// The `;transport=` URI parameter for a Contact reached over `transport` (none for UDP, the
/// default): `;transport=tcp` or `;transport=tls`.
pub fn uri_transport(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    }
}

/// The reason phrase mediagate uses for a status code it generates.
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Unsupported URI Scheme",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Unknown",
    }
}

/// A response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied, a To tag
/// added when given and absent.
pub fn response_to(
    request: &Message,
    code: u16,
    reason_phrase: &str,
    to_tag: Option<&str>,
) -> Message {
    let mut r = Message {
        start: StartLine::Response {
            code,
            reason: reason_phrase.to_string(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    for v in request.headers_named("Via") {
        r.push_header("Via", v.to_string());
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = request.header(name) {
            r.push_header(name, v.to_string());
        }
    }
    if let (Some(tag), Some(to)) = (to_tag, request.header("To")) {
        if header::param(to, "tag").is_none() {
            r.set_header("To", format!("{to};tag={tag}"));
        }
    }
    r.push_header("Server", PRODUCT.into());
    r
}

/// Attaches an SDP body (or none) to a message.
pub fn with_sdp(mut msg: Message, sdp: Option<Vec<u8>>) -> Message {
    if let Some(body) = sdp {
        msg.set_header("Content-Type", "application/sdp".into());
        msg.body = body;
    }
    msg
}

impl Dialog {
    /// Builds an in-dialog request (BYE, ACK, ...). ACK reuses `cseq` of its INVITE; other methods
    /// take the next local CSeq. ACK gets its own Via here since it is sent without a transaction.
    pub fn request(&mut self, method: Method, ack_cseq: Option<u32>) -> Message {
        let cseq = match ack_cseq {
            Some(n) => n,
            None => {
                self.local_cseq += 1;
                self.local_cseq
            }
        };
        let mut m = Message {
            start: StartLine::Request {
                method: method.clone(),
                uri: self.remote_target.clone(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        if method == Method::Ack {
            m.push_header(
                "Via",
                via_value(self.target.transport, self.target.local, &new_branch()),
            );
        }
        for r in &self.route_set {
            m.push_header("Route", r.clone());
        }
        m.push_header("Max-Forwards", "70".into());
        m.push_header("From", self.local.clone());
        m.push_header("To", self.remote.clone());
        m.push_header("Call-ID", self.call_id.clone());
        m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
        m.push_header("User-Agent", PRODUCT.into());
        m
    }

    /// Takes the remote tag, target and route set from a response that establishes the dialog
    /// on a leg where mediagate is the UAC (RFC 3261 §12.1.2).
    pub fn establish_from_response(&mut self, response: &Message) {
        if let Some(to) = response.header("To") {
            self.remote = to.to_string();
        }
        if let Some(contact) = response.header("Contact") {
            self.remote_target = header::uri_of(contact).to_string();
        }
        let mut routes: Vec<String> = response
            .headers_named("Record-Route")
            .map(str::to_string)
            .collect();
        routes.reverse();
        self.route_set = routes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_copies_identity_and_adds_tag() {
        let req = Message::parse_datagram(
            b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK0\r\n\
              From: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\n\r\n",
        )
        .unwrap();
        let r = response_to(&req, 486, reason(486), Some("t1"));
        assert_eq!(r.headers_named("Via").count(), 2);
        assert_eq!(header::tag(&r, "To"), Some("t1"));
        assert_eq!(r.header("CSeq"), Some("5 INVITE"));
    }

    #[test]
    fn in_dialog_requests_count_cseq_and_ack_reuses_it() {
        let mut d = Dialog {
            target: Target {
                transport: Transport::Udp,
                remote: "10.0.0.2:5060".parse().unwrap(),
                local: "10.0.0.1:5060".parse().unwrap(),
            },
            call_id: "c".into(),
            local: "<sip:a@10.0.0.1>;tag=l".into(),
            remote: "<sip:b@10.0.0.2>;tag=r".into(),
            remote_target: "sip:b@10.0.0.2:5070".into(),
            route_set: vec!["<sip:p1;lr>".into()],
            local_cseq: 1,
            signalling_ip: "10.0.0.2".parse().unwrap(),
        };
        let ack = d.request(Method::Ack, Some(1));
        assert_eq!(ack.header("CSeq"), Some("1 ACK"));
        assert!(ack.header("Via").is_some());
        let bye = d.request(Method::Bye, None);
        assert_eq!(bye.header("CSeq"), Some("2 BYE"));
        assert_eq!(bye.uri(), Some("sip:b@10.0.0.2:5070"));
        assert_eq!(bye.header("Route"), Some("<sip:p1;lr>"));
    }
}
