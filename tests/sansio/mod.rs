//! The sans-IO B2BUA driven message by message with a virtual clock, shared by the tests that
//! drive it so (tests/b2bua.rs, tests/b2bua_midcall.rs, tests/auth.rs, tests/b2bua_prack.rs,
//! tests/b2bua_forks.rs, tests/reload.rs, tests/restart_sansio.rs): the lab's trunks as
//! targets, message parsing, the harness that collects what the core sends, the early-dialog
//! messages (provisionals from a callee fork, PRACKs) of the 100rel and forking tests, and a
//! call from the PBX answered and acknowledged.
#![allow(dead_code)] // each test file uses its own subset

pub mod ng;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mediagate::config::{self, Transport};
use mediagate::sip::b2bua::B2bua;
use mediagate::sip::dialog::response_to;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::{Target, Transmit};

/// The lab topology's configuration (a PBX on 10.99.1.2, an ITSP on 10.99.2.2).
pub const LAB: &str = include_str!("../data/lab.toml");
/// A PBX's INVITE with SDP to +4930123.
pub const INVITE: &str = include_str!("../data/sip/invite_from_pbx.txt");

/// A UDP target: `remote` as seen from mediagate's `local` socket.
pub fn target(remote: &str, local: &str) -> Target {
    Target {
        transport: Transport::Udp,
        remote: remote.parse().unwrap(),
        local: local.parse().unwrap(),
    }
}

/// A SIP message from test text (any line endings).
pub fn parse(text: &str) -> Message {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    Message::parse_datagram(text.as_bytes()).unwrap()
}

/// The caller's INVITE offering 100rel.
pub fn invite_100rel() -> Message {
    let mut inv = parse(INVITE);
    inv.push_header("Supported", "100rel".into());
    inv
}

/// Messages to `to` other than 100 Trying.
pub fn to_peer(out: &[Transmit], to: &Target) -> Vec<Message> {
    out.iter()
        .filter(|t| t.target.remote == to.remote && t.message.code() != Some(100))
        .map(|t| t.message.clone())
        .collect()
}

pub fn one_to(out: &[Transmit], to: &Target) -> Message {
    let msgs = to_peer(out, to);
    assert_eq!(msgs.len(), 1, "one message to {}: {out:#?}", to.remote);
    msgs[0].clone()
}

/// A provisional from the callee (a fork with To tag `tag`) to mediagate's INVITE `inv_b`,
/// reliable with `rseq` if given.
pub fn provisional_from(inv_b: &Message, code: u16, tag: &str, rseq: Option<u32>) -> Message {
    let mut r = response_to(inv_b, code, "X", Some(tag));
    r.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    if let Some(n) = rseq {
        r.push_header("Require", "100rel".into());
        r.push_header("RSeq", n.to_string());
    }
    r
}

/// The caller's PRACK in the early dialog of `resp` (a provisional it received).
pub fn prack(resp: &Message, rack: &str, branch: &str) -> Message {
    let mut m = Message {
        start: StartLine::Request {
            method: Method::Other("PRACK".into()),
            uri: "sip:mediagate@10.99.1.1:5060".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    m.push_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-{branch}"),
    );
    for name in ["From", "To", "Call-ID"] {
        m.push_header(name, resp.header(name).unwrap().to_string());
    }
    m.push_header("CSeq", "2 PRACK".into());
    m.push_header("RAck", rack.into());
    m.push_header("Max-Forwards", "70".into());
    m
}

pub fn rseq_of(m: &Message) -> u32 {
    m.header("RSeq").and_then(|v| v.parse().ok()).expect("RSeq")
}

/// A call set up with a 100rel caller up to mediagate's INVITE on the callee leg.
pub fn calling() -> (Harness, Message) {
    calling_with(LAB)
}

/// [`calling`] on the configuration `text`.
pub fn calling_with(text: &str) -> (Harness, Message) {
    let mut h = Harness::with_config(text);
    let out = h.send(invite_100rel(), h.pbx);
    let inv_b = one_to(&out, &h.itsp);
    assert_eq!(inv_b.header("Supported"), Some("100rel"));
    (h, inv_b)
}

/// A B2BUA on a config, with a virtual clock and the lab's two peers.
pub struct Harness {
    pub core: B2bua,
    pub now: Instant,
    pub pbx: Target,
    pub itsp: Target,
    /// Run on everything [`Harness::send`] returns (a test's own invariant, e.g. topology hiding).
    pub check: fn(&[Transmit], &Harness),
}

impl Harness {
    /// The lab configuration.
    pub fn new() -> Self {
        Self::with_config(LAB)
    }

    /// The configuration `text`.
    pub fn with_config(text: &str) -> Self {
        let config = config::parse("lab.toml", text).unwrap();
        Harness {
            core: B2bua::new(Arc::new(config)),
            now: Instant::now(),
            pbx: target("10.99.1.2:5060", "10.99.1.1:5060"),
            itsp: target("10.99.2.2:5060", "10.99.2.1:5060"),
            check: |_, _| {},
        }
    }

    /// Feeds `msg` from `from`; returns what the core sends in response.
    pub fn send(&mut self, msg: Message, from: Target) -> Vec<Transmit> {
        self.core.handle_message(msg, from, self.now);
        let out: Vec<Transmit> = self.core.drain_transmits().collect();
        (self.check)(&out, self);
        out
    }

    /// Moves the clock on by `by` and runs the timers; returns what the core sends.
    pub fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.core.drain_transmits().collect()
    }

    /// The `/status` document now.
    pub fn status(&self) -> serde_json::Value {
        self.core.status(self.now, SystemTime::now())
    }

    /// Whether every media port is back in the pool.
    pub fn ports_all_free(&self) -> bool {
        let s = self.status();
        s["ports"]["free"] == s["ports"]["total"]
    }
}

/// The one message sent to `to`, asserting there is exactly one (100 Trying included, unlike
/// [`one_to`]).
pub fn only_to(out: &[Transmit], to: &Target) -> Message {
    let msgs: Vec<&Transmit> = out
        .iter()
        .filter(|t| t.target.remote == to.remote)
        .collect();
    assert_eq!(
        msgs.len(),
        1,
        "expected one message to {}: {out:#?}",
        to.remote
    );
    msgs[0].message.clone()
}

pub fn code_of(m: &Message) -> u16 {
    m.code().expect("a response")
}

/// A response from the far side to a request mediagate sent it.
pub fn answer(req: &Message, code: u16, to_tag: &str, sdp: Option<&str>) -> Message {
    let mut r = mediagate::sip::dialog::response_to(req, code, "X", Some(to_tag));
    r.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    if let Some(body) = sdp {
        r.push_header("Content-Type", "application/sdp".into());
        r.body = body.replace('\n', "\r\n").into_bytes();
    }
    r
}

pub const ANSWER_SDP: &str =
    "v=0\no=callee 1 1 IN IP4 10.99.2.2\ns=-\nc=IN IP4 10.99.2.2\nt=0 0\nm=audio 7000 RTP/AVP 8\n";

/// Runs a call from the PBX up to the 200 relayed; returns the harness, the INVITE mediagate sent
/// to the ITSP, and the 200 the PBX received.
pub fn answered_call() -> (Harness, Message, Message) {
    answered_call_on(Harness::new())
}

/// [`answered_call`] on harness `h`.
pub fn answered_call_on(mut h: Harness) -> (Harness, Message, Message) {
    let out = h.send(parse(INVITE), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 100);
    let inv_b = only_to(&out, &h.itsp);
    let out = h.send(answer(&inv_b, 180, "b1", None), h.itsp);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 180);
    let out = h.send(answer(&inv_b, 200, "b1", Some(ANSWER_SDP)), h.itsp);
    let ok = only_to(&out, &h.pbx);
    assert_eq!(code_of(&ok), 200);
    (h, inv_b, ok)
}

/// A request from the PBX in the dialog the 200 `ok` confirmed: `method` with CSeq number `cseq`
/// and Via branch `branch`, without a body.
pub fn in_dialog_from_pbx(ok: &Message, method: Method, cseq: u32, branch: &str) -> Message {
    let mut req = parse(INVITE);
    req.set_header("CSeq", format!("{cseq} {}", method.as_str()));
    req.start = mediagate::sip::message::StartLine::Request {
        method,
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    req.set_header("Via", format!("SIP/2.0/UDP 10.99.1.2:5060;branch={branch}"));
    req.set_header("To", ok.header("To").unwrap().to_string());
    req.body.clear();
    req.remove_headers("Content-Type");
    req
}

/// The PBX's ACK of the 200 `ok`.
pub fn ack_from_pbx(ok: &Message) -> Message {
    in_dialog_from_pbx(ok, Method::Ack, 1, "z9hG4bK-ack")
}

/// The PBX hanging up the call the 200 `ok` confirmed.
pub fn bye_from_pbx(ok: &Message) -> Message {
    in_dialog_from_pbx(ok, Method::Bye, 2, "z9hG4bK-bye")
}

/// An UPDATE without a body from the callee's fork `tag`, in its early dialog of the call whose
/// INVITE toward the ITSP was `inv_b`.
pub fn early_update_from_callee(inv_b: &Message, tag: &str) -> Message {
    let mut update = Message {
        start: mediagate::sip::message::StartLine::Request {
            method: Method::Other("UPDATE".into()),
            uri: "sip:mediagate@10.99.2.1:5060".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    update.push_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.2.2:5060;branch=z9hG4bK-u{tag}"),
    );
    update.push_header("From", format!("{};tag={tag}", inv_b.header("To").unwrap()));
    update.push_header("To", inv_b.header("From").unwrap().to_string());
    update.push_header("Call-ID", inv_b.header("Call-ID").unwrap().to_string());
    update.push_header("CSeq", "10 UPDATE".into());
    update.push_header("Max-Forwards", "70".into());
    update
}
