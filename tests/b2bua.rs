//! The B2BUA state machine driven message by message with a virtual clock: what each side
//! receives, topology hiding, every ending path releasing its ports.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mediagate::config::{self, Transport};
use mediagate::media::Command;
use mediagate::sip::b2bua::B2bua;
use mediagate::sip::header;
use mediagate::sip::message::{Message, Method};
use mediagate::sip::transaction::{Target, Transmit};

const CONFIG: &str = include_str!("data/lab.toml");
const INVITE: &str = include_str!("data/sip/invite_from_pbx.txt");

struct Harness {
    core: B2bua,
    now: Instant,
    pbx: Target,
    itsp: Target,
}

fn target(remote: &str, local: &str) -> Target {
    Target {
        transport: Transport::Udp,
        remote: remote.parse().unwrap(),
        local: local.parse().unwrap(),
    }
}

fn parse(text: &str) -> Message {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    Message::parse_datagram(text.as_bytes()).unwrap()
}

impl Harness {
    fn new() -> Self {
        let config = config::parse("lab.toml", CONFIG).unwrap();
        Harness {
            core: B2bua::new(Arc::new(config)),
            now: Instant::now(),
            pbx: target("10.99.1.2:5060", "10.99.1.1:5060"),
            itsp: target("10.99.2.2:5060", "10.99.2.1:5060"),
        }
    }

    fn send(&mut self, msg: Message, from: Target) -> Vec<Transmit> {
        self.core.handle_message(msg, from, self.now);
        self.core.drain_transmits().collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.core.drain_transmits().collect()
    }

    fn status(&self) -> serde_json::Value {
        self.core.status(self.now, SystemTime::now())
    }

    fn ports_all_free(&self) -> bool {
        let s = self.status();
        s["ports"]["free"] == s["ports"]["total"]
    }
}

/// The one message sent to `to`, asserting there is exactly one.
fn only_to(out: &[Transmit], to: &Target) -> Message {
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

fn code_of(m: &Message) -> u16 {
    m.code().expect("a response")
}

/// A response from the far side to a request mediagate sent it.
fn answer(req: &Message, code: u16, to_tag: &str, sdp: Option<&str>) -> Message {
    let mut r = mediagate::sip::dialog::response_to(req, code, "X", Some(to_tag));
    r.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    if let Some(body) = sdp {
        r.push_header("Content-Type", "application/sdp".into());
        r.body = body.replace('\n', "\r\n").into_bytes();
    }
    r
}

const ANSWER_SDP: &str =
    "v=0\no=callee 1 1 IN IP4 10.99.2.2\ns=-\nc=IN IP4 10.99.2.2\nt=0 0\nm=audio 7000 RTP/AVP 8\n";

/// Runs a call from the PBX up to the 200 relayed; returns the harness, the INVITE mediagate sent
/// to the ITSP, and the 200 the PBX received.
fn answered_call() -> (Harness, Message, Message) {
    let mut h = Harness::new();
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

fn ack_from_pbx(ok: &Message) -> Message {
    let mut ack = parse(INVITE);
    ack.start = mediagate::sip::message::StartLine::Request {
        method: Method::Ack,
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    ack.set_header(
        "Via",
        "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-ack".into(),
    );
    ack.set_header("To", ok.header("To").unwrap().to_string());
    ack.set_header("CSeq", "1 ACK".into());
    ack.body.clear();
    ack.remove_headers("Content-Type");
    ack
}

#[test]
fn outbound_invite_hides_the_caller_side() {
    let (_, inv_b, ok) = answered_call();
    let text = String::from_utf8(inv_b.to_bytes()).unwrap();
    assert!(
        !text.contains("10.99.1.2"),
        "caller address leaked:\n{text}"
    );
    assert!(!text.contains("pbx-call-1"), "caller Call-ID leaked");
    assert_eq!(inv_b.uri(), Some("sip:+4930123@10.99.2.2:5060"));
    assert_eq!(header::max_forwards(&inv_b), Some(69));
    assert!(
        text.contains("c=IN IP4 10.99.2.1"),
        "SDP not anchored:\n{text}"
    );
    let ok_text = String::from_utf8(ok.to_bytes()).unwrap();
    assert!(
        !ok_text.contains("10.99.2.2"),
        "callee address leaked:\n{ok_text}"
    );
    assert!(ok_text.contains("c=IN IP4 10.99.1.1"));
    assert_eq!(header::tag(&ok, "From"), Some("pbx-tag"));
    assert!(header::tag(&ok, "To").is_some());
}

#[test]
fn caller_hang_up_relays_bye_and_frees_ports() {
    let (mut h, inv_b, ok) = answered_call();
    // The 200 is retransmitted to A until its ACK; the ACK then goes on to B.
    let out = h.advance(Duration::from_millis(500));
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    let out = h.send(ack_from_pbx(&ok), h.pbx);
    let ack_b = only_to(&out, &h.itsp);
    assert_eq!(ack_b.method(), Some(&Method::Ack));
    assert_eq!(ack_b.uri(), Some("sip:callee@10.99.2.2:5060"));
    assert_eq!(ack_b.header("Call-ID"), inv_b.header("Call-ID"));
    assert!(
        h.advance(Duration::from_secs(2)).is_empty(),
        "no 200 retransmit after ACK"
    );
    assert_eq!(h.status()["active_calls"], 1);

    let mut bye = ack_from_pbx(&ok);
    bye.start = mediagate::sip::message::StartLine::Request {
        method: Method::Bye,
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    bye.set_header("CSeq", "2 BYE".into());
    bye.set_header(
        "Via",
        "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-bye".into(),
    );
    let out = h.send(bye, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    let bye_b = only_to(&out, &h.itsp);
    assert_eq!(bye_b.method(), Some(&Method::Bye));
    assert_eq!(header::tag(&bye_b, "To"), Some("b1"));
    assert_eq!(h.status()["active_calls"], 0, "ended call not listed");
    assert!(h.ports_all_free());
    h.send(answer(&bye_b, 200, "b1", None), h.itsp);
    assert!(h.status()["transactions"].as_u64().unwrap() > 0);
    h.advance(Duration::from_secs(40));
    assert_eq!(h.status()["transactions"], 0, "all transactions ended");
}

#[test]
fn media_timeout_hangs_up_both_legs() {
    let (mut h, _, ok) = answered_call();
    h.send(ack_from_pbx(&ok), h.pbx);
    // lab.toml sets timeout_s = 30; no packets ever flow in this test.
    let mut byes = Vec::new();
    for _ in 0..31 {
        byes.extend(h.advance(Duration::from_secs(1)));
    }
    let byes: Vec<&Transmit> = byes
        .iter()
        .filter(|t| t.message.method() == Some(&Method::Bye))
        .collect();
    assert!(byes.iter().any(|t| t.target.remote == h.pbx.remote));
    assert!(byes.iter().any(|t| t.target.remote == h.itsp.remote));
    assert!(h.ports_all_free());
}

/// The caller's CANCEL of `invite` (RFC 3261 §9.1: same Via, Call-ID, From, To, CSeq number).
fn cancel_of(invite: &Message) -> Message {
    let mut cancel = invite.clone();
    cancel.start = mediagate::sip::message::StartLine::Request {
        method: Method::Cancel,
        uri: invite.uri().unwrap().to_string(),
    };
    cancel.set_header("CSeq", "1 CANCEL".into());
    cancel.body.clear();
    cancel.remove_headers("Content-Type");
    cancel
}

/// A call from the PBX ringing at the ITSP; returns the INVITE mediagate sent to the ITSP.
fn ringing_call(h: &mut Harness, invite: &Message) -> Message {
    let out = h.send(invite.clone(), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    h.send(answer(&inv_b, 180, "b1", None), h.itsp);
    inv_b
}

#[test]
fn cancel_before_answer() {
    let mut h = Harness::new();
    let invite = parse(INVITE);
    let inv_b = ringing_call(&mut h, &invite);
    let out = h.send(cancel_of(&invite), h.pbx);
    let to_pbx: Vec<u16> = out
        .iter()
        .filter(|t| t.target.remote == h.pbx.remote)
        .map(|t| code_of(&t.message))
        .collect();
    assert_eq!(to_pbx, vec![200, 487]);
    let cancel_b = only_to(&out, &h.itsp);
    assert_eq!(cancel_b.method(), Some(&Method::Cancel));
    assert_eq!(header::top_branch(&cancel_b), header::top_branch(&inv_b));
    assert!(h.ports_all_free());
    // The callee answers 487; mediagate ACKs it.
    let out = h.send(answer(&inv_b, 487, "b1", None), h.itsp);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Ack));
}

#[test]
fn cancel_racing_a_200_hangs_up_the_callee() {
    let mut h = Harness::new();
    let invite = parse(INVITE);
    let inv_b = ringing_call(&mut h, &invite);
    h.send(cancel_of(&invite), h.pbx);
    let out = h.send(answer(&inv_b, 200, "b1", Some(ANSWER_SDP)), h.itsp);
    let methods: Vec<_> = out
        .iter()
        .filter(|t| t.target.remote == h.itsp.remote)
        .filter_map(|t| t.message.method().cloned())
        .collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(
        out.iter().all(|t| t.target.remote != h.pbx.remote),
        "caller already got 487"
    );
}

#[test]
fn busy_is_relayed_and_acked() {
    let mut h = Harness::new();
    let out = h.send(parse(INVITE), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    let out = h.send(answer(&inv_b, 486, "b1", None), h.itsp);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Ack));
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 486);
    assert!(h.ports_all_free());
    assert_eq!(h.status()["active_calls"], 0);
}

#[test]
fn unanswered_invite_times_out_with_408() {
    let mut h = Harness::new();
    h.send(parse(INVITE), h.pbx);
    let mut to_pbx = Vec::new();
    for _ in 0..40 {
        for t in h.advance(Duration::from_secs(1)) {
            if t.target.remote == h.pbx.remote {
                to_pbx.push(code_of(&t.message));
            }
        }
    }
    assert_eq!(to_pbx.first(), Some(&408));
    assert!(h.ports_all_free());
}

#[test]
fn refusals_create_no_state() {
    let mut h = Harness::new();
    let stranger = target("10.99.1.3:5060", "10.99.1.1:5060");
    let out = h.send(parse(INVITE), stranger);
    assert_eq!(code_of(&only_to(&out, &stranger)), 403);

    let mut no_route = parse(INVITE);
    no_route.start = mediagate::sip::message::StartLine::Request {
        method: Method::Invite,
        uri: "sip:alice@10.99.1.1".into(),
    };
    no_route.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-1".into());
    let out = h.send(no_route, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 404);

    let mut bad_sdp = parse(INVITE);
    bad_sdp.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-2".into());
    bad_sdp.body = b"v=0\r\nc=IN IP4 nowhere\r\n".to_vec();
    let out = h.send(bad_sdp, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 488);

    let mut looped = parse(INVITE);
    looped.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-3".into());
    looped.set_header("Max-Forwards", "0".into());
    let out = h.send(looped, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 483);

    let mut no_callid = parse(INVITE);
    no_callid.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-4".into());
    no_callid.remove_headers("Call-ID");
    let out = h.send(no_callid, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 400);

    assert_eq!(h.status()["active_calls"], 0);
    assert!(h.ports_all_free());
    let media: Vec<Command> = h.core.drain_media_commands();
    assert!(media.is_empty(), "a refused call touched the data plane");
}

#[test]
fn call_cap_answers_503() {
    let text = CONFIG.replace("max_calls = 100", "max_calls = 1");
    let mut h = Harness::new();
    h.core = B2bua::new(Arc::new(config::parse("x", &text).unwrap()));
    h.send(parse(INVITE), h.pbx);
    let mut second = parse(INVITE);
    second.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-5".into());
    second.set_header("Call-ID", "pbx-call-2".into());
    let out = h.send(second, h.pbx);
    let r = only_to(&out, &h.pbx);
    assert_eq!(code_of(&r), 503);
    assert!(r.header("Retry-After").is_some());
}

// ---------------------------------------------------------------------------------------------
// Routing and translation (issue 5): translation, match_calling, response_map, deny, emergency.
// ---------------------------------------------------------------------------------------------

/// tests/data/routing.toml: the lab config with every routing and policy key.
fn policy_config() -> Arc<config::Config> {
    let text = include_str!("data/routing.toml");
    Arc::new(config::parse("routing.toml", text).unwrap())
}

fn policy_harness() -> Harness {
    let mut h = Harness::new();
    h.core = B2bua::new(policy_config());
    h
}

/// The PBX's INVITE dialling `called` from `calling`, with a P-Asserted-Identity; `n` keeps
/// branches and Call-IDs apart.
fn invite_from(called: &str, calling: &str, n: u32) -> Message {
    let mut inv = parse(INVITE);
    inv.start = mediagate::sip::message::StartLine::Request {
        method: Method::Invite,
        uri: format!("sip:{called}@10.99.1.1:5060"),
    };
    inv.set_header("To", format!("<sip:{called}@10.99.1.1:5060>"));
    inv.set_header(
        "From",
        format!("\"Front Desk\" <sip:{calling}@10.99.1.2:5060>;tag=pbx-tag"),
    );
    inv.set_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-p{n}"),
    );
    inv.set_header("Call-ID", format!("pbx-policy-{n}"));
    inv.push_header(
        "P-Asserted-Identity",
        format!("\"Front Desk\" <sip:{calling}@10.99.1.2;user=phone>"),
    );
    inv.push_header("Privacy", "none".into());
    inv
}

#[test]
fn translation_reaches_request_uri_to_from_and_pai() {
    let mut h = policy_harness();
    let out = h.send(invite_from("004930123", "100", 1), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    assert_eq!(inv_b.uri(), Some("sip:030123@10.99.2.2:5060"));
    assert_eq!(inv_b.header("To"), Some("<sip:030123@10.99.2.2:5060>"));
    let from = inv_b.header("From").unwrap();
    assert_eq!(header::uri_of(from), "sip:+4930555100@10.99.2.1:5060");
    assert_eq!(
        inv_b.header("P-Asserted-Identity"),
        Some("\"Front Desk\" <sip:+4930555100@10.99.2.1:5060;user=phone>")
    );
    assert!(inv_b.header("Privacy").is_none(), "not passed: stripped");
    assert!(inv_b
        .header("User-Agent")
        .unwrap()
        .starts_with("mediagate/"));
    let text = String::from_utf8(inv_b.to_bytes()).unwrap();
    assert!(
        !text.contains("10.99.1.2"),
        "caller address leaked:\n{text}"
    );
}

#[test]
fn failover_applies_the_next_trunks_rules_and_looks_at_the_original_code() {
    let mut h = policy_harness();
    let out = h.send(invite_from("004930123", "100", 2), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    // 503 is mapped to 486 for the caller, yet it still fails over: failover sees 503.
    let out = h.send(answer(&inv_b, 503, "b1", None), h.itsp);
    let inv_pbx = only_to(&out, &h.pbx);
    assert_eq!(inv_pbx.method(), Some(&Method::Invite));
    assert_eq!(
        inv_pbx.uri(),
        Some("sip:+4930123@10.99.1.2:5060"),
        "the PBX trunk's (empty) outbound rules start from the inbound-translated number"
    );
    assert_eq!(
        header::uri_of(inv_pbx.header("From").unwrap()),
        "sip:100@10.99.1.1:5060"
    );
    assert!(
        inv_pbx.header("P-Asserted-Identity").is_none(),
        "the PBX trunk passes no PAI"
    );
}

#[test]
fn match_calling_selects_the_route() {
    let mut h = policy_harness();
    let out = h.send(invite_from("+4930123", "999", 3), h.pbx);
    let to_pbx: Vec<&Transmit> = out
        .iter()
        .filter(|t| t.message.method() == Some(&Method::Invite))
        .collect();
    assert_eq!(to_pbx.len(), 1, "{out:#?}");
    assert_eq!(
        to_pbx[0].target.remote, h.pbx.remote,
        "calling 999 routes back to the PBX"
    );
    let out = h.send(invite_from("+4930123", "100", 4), h.pbx);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Invite));
}

#[test]
fn response_map_translates_the_final_answer() {
    let mut h = policy_harness();
    let out = h.send(invite_from("+4930123", "100", 5), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    let out = h.send(answer(&inv_b, 404, "b1", None), h.itsp);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 480);
    assert!(h.ports_all_free());
}

#[test]
fn denied_destinations_get_403_or_skip_the_trunk() {
    let mut h = policy_harness();
    let out = h.send(invite_from("00882123", "100", 6), h.pbx);
    assert_eq!(out.len(), 1, "only the 403: {out:#?}");
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 403);
    let out = h.send(invite_from("113", "100", 7), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 403);
    // The ITSP denies +1900: the route's next trunk takes the call.
    let out = h.send(invite_from("+1900555", "100", 8), h.pbx);
    assert!(out.iter().all(|t| t.target.remote != h.itsp.remote));
    assert!(out
        .iter()
        .any(|t| t.message.method() == Some(&Method::Invite) && t.target.remote == h.pbx.remote));
    assert_eq!(h.status()["active_calls"], 1);
}

#[test]
fn emergency_calls_bypass_deny_lists() {
    let mut h = policy_harness();
    let out = h.send(invite_from("112", "100", 9), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    assert_eq!(inv_b.uri(), Some("sip:112@10.99.2.2:5060"));
    assert!(mediagate::sip::policy::is_emergency(
        &policy_config(),
        "112"
    ));
}
