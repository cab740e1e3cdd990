//! Digest authentication and registration in the B2BUA, driven message by message with a
//! virtual clock: challenges from the trunk are answered without the caller seeing them,
//! rejected credentials fail the attempt, inbound challenges, REGISTER refresh and back-off.

mod sansio;

use std::time::Duration;

use mediagate::sip::dialog::response_to;
use mediagate::sip::digest::{self, Challenge, Credentials};
use mediagate::sip::header;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::{Target, Transmit};
use sansio::{parse, Harness, INVITE, LAB};

const ITSP_TRUNK: &str = "local = \"udp:10.99.2.1:5060\"\n";

/// The lab's B2BUA with `itsp_extra` added to the ITSP trunk.
fn lab_with(itsp_extra: &str) -> Harness {
    assert!(LAB.contains(ITSP_TRUNK));
    Harness::with_config(&LAB.replace(ITSP_TRUNK, &format!("{ITSP_TRUNK}{itsp_extra}\n")))
}

fn to(out: &[Transmit], t: &Target) -> Vec<Message> {
    out.iter()
        .filter(|x| x.target.remote == t.remote)
        .map(|x| x.message.clone())
        .collect()
}

fn requests(out: &[Transmit], t: &Target, method: Method) -> Vec<Message> {
    to(out, t)
        .into_iter()
        .filter(|m| m.method() == Some(&method))
        .collect()
}

fn challenge(req: &Message, code: u16, value: &str) -> Message {
    let mut r = response_to(req, code, "Unauthorized", Some("itsp-tag"));
    let name = if code == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    r.push_header(name, value.into());
    r
}

fn answer(req: &Message, code: u16, sdp: bool) -> Message {
    let mut r = response_to(req, code, "X", Some("b1"));
    r.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    if sdp {
        r.push_header("Content-Type", "application/sdp".into());
        r.body = b"v=0\r\no=c 1 1 IN IP4 10.99.2.2\r\ns=-\r\nc=IN IP4 10.99.2.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n".to_vec();
    }
    r
}

/// A request of the PBX inside the dialog that the 200 `ok` confirmed (no body).
fn from_pbx_in_dialog(ok: &Message, method: Method, cseq: u32, branch: &str) -> Message {
    let mut m = parse(INVITE);
    m.start = StartLine::Request {
        method: method.clone(),
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    m.set_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-{branch}"),
    );
    m.set_header("To", ok.header("To").unwrap().into());
    m.set_header("CSeq", format!("{cseq} {}", method.as_str()));
    m.body.clear();
    m.remove_headers("Content-Type");
    m
}

const AUTH: &str = r#"auth = { user = "acme", password = "pw-1", realm = "itsp.example" }"#;
const MD5_CHALLENGE: &str =
    r#"Digest realm="itsp.example", nonce="n-1", qop="auth", algorithm=MD5"#;

/// Checks `req` carries valid credentials in `header` for `password`.
fn assert_authorized(req: &Message, header: &str, password: &str) -> Credentials {
    let creds = Credentials::parse(req.header(header).expect(header)).expect("digest");
    let method = req.method().unwrap().as_str().to_string();
    assert_eq!(Some(creds.uri.as_str()), req.uri());
    assert!(creds.verify(&method, password), "{creds:?}");
    creds
}

#[test]
fn challenged_invite_is_resent_with_credentials_and_the_caller_sees_no_401() {
    let mut h = lab_with(AUTH);
    let out = h.send(parse(INVITE), h.pbx);
    let inv1 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let out = h.send(challenge(&inv1, 401, MD5_CHALLENGE), h.itsp);
    assert!(
        to(&out, &h.pbx).is_empty(),
        "the caller sees nothing: {out:#?}"
    );
    let acks = requests(&out, &h.itsp, Method::Ack);
    assert_eq!(acks.len(), 1, "the 401 is ACKed");
    assert_eq!(acks[0].header("CSeq"), Some("1 ACK"));
    let inv2 = requests(&out, &h.itsp, Method::Invite).remove(0);
    assert_eq!(inv2.header("Call-ID"), inv1.header("Call-ID"));
    assert_eq!(inv2.header("From"), inv1.header("From"));
    assert_eq!(inv2.header("CSeq"), Some("2 INVITE"));
    assert_ne!(header::top_branch(&inv2), header::top_branch(&inv1));
    assert_eq!(inv2.body, inv1.body, "same offer");
    let creds = assert_authorized(&inv2, "Authorization", "pw-1");
    assert_eq!(creds.username, "acme");
    assert!(creds.qop.is_some());
    // Answered: the caller gets the 200, the ACK toward the trunk carries the new CSeq.
    let out = h.send(answer(&inv2, 200, true), h.itsp);
    let ok = to(&out, &h.pbx).remove(0);
    assert_eq!(ok.code(), Some(200));
    let out = h.send(from_pbx_in_dialog(&ok, Method::Ack, 1, "ack"), h.pbx);
    assert_eq!(
        requests(&out, &h.itsp, Method::Ack)[0].header("CSeq"),
        Some("2 ACK")
    );
    // The callee hangs up... no: the caller does; the trunk challenges the BYE with 407.
    let out = h.send(from_pbx_in_dialog(&ok, Method::Bye, 2, "bye"), h.pbx);
    let bye1 = requests(&out, &h.itsp, Method::Bye).remove(0);
    assert_eq!(bye1.header("CSeq"), Some("3 BYE"));
    let sha = r#"Digest realm="itsp.example", nonce="n-2", qop="auth", algorithm=SHA-256"#;
    let out = h.send(challenge(&bye1, 407, sha), h.itsp);
    let bye2 = requests(&out, &h.itsp, Method::Bye).remove(0);
    assert_eq!(bye2.header("CSeq"), Some("4 BYE"));
    assert_eq!(bye2.header("Call-ID"), bye1.header("Call-ID"));
    let creds = assert_authorized(&bye2, "Proxy-Authorization", "pw-1");
    assert_eq!(creds.algorithm, digest::Algorithm::Sha256);
    let out = h.send(answer(&bye2, 200, false), h.itsp);
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(h.status()["active_calls"], 0);
    assert!(h.status()["transactions"].as_u64().unwrap() > 0);
}

#[test]
fn challenged_re_invite_is_resent_with_credentials_and_the_caller_sees_no_401() {
    let mut h = lab_with(AUTH);
    let out = h.send(parse(INVITE), h.pbx);
    let inv = requests(&out, &h.itsp, Method::Invite).remove(0);
    let out = h.send(answer(&inv, 200, true), h.itsp);
    let ok = to(&out, &h.pbx).remove(0);
    h.send(from_pbx_in_dialog(&ok, Method::Ack, 1, "ack"), h.pbx);

    // The PBX puts the call on hold; the trunk challenges the re-INVITE.
    let mut hold = from_pbx_in_dialog(&ok, Method::Invite, 2, "hold");
    hold.push_header("Content-Type", "application/sdp".into());
    hold.body = b"v=0\r\no=pbx 1 2 IN IP4 10.99.1.2\r\ns=-\r\nc=IN IP4 10.99.1.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\na=sendonly\r\n".to_vec();
    let out = h.send(hold, h.pbx);
    let re1 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let out = h.send(challenge(&re1, 401, MD5_CHALLENGE), h.itsp);
    assert!(to(&out, &h.pbx).is_empty(), "the PBX sees no 401: {out:#?}");
    let re2 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let (n1, _) = header::cseq(&re1).unwrap();
    assert_eq!(
        re2.header("CSeq"),
        Some(format!("{} INVITE", n1 + 1).as_str())
    );
    assert_eq!(re2.header("Call-ID"), re1.header("Call-ID"));
    assert_eq!(re2.body, re1.body, "same offer");
    assert_authorized(&re2, "Authorization", "pw-1");

    // Answered: the PBX gets the 200, and its ACK reaches the trunk with the resent CSeq.
    let out = h.send(answer(&re2, 200, true), h.itsp);
    let ok2 = to(&out, &h.pbx).remove(0);
    assert_eq!(ok2.code(), Some(200));
    let out = h.send(from_pbx_in_dialog(&ok, Method::Ack, 2, "ack2"), h.pbx);
    assert_eq!(
        requests(&out, &h.itsp, Method::Ack)[0].header("CSeq"),
        Some(format!("{} ACK", n1 + 1).as_str())
    );
}

#[test]
fn rejected_credentials_end_the_attempt_and_the_caller_gets_503() {
    let mut h = lab_with(AUTH);
    let out = h.send(parse(INVITE), h.pbx);
    let inv1 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let out = h.send(challenge(&inv1, 407, MD5_CHALLENGE), h.itsp);
    let inv2 = requests(&out, &h.itsp, Method::Invite).remove(0);
    assert_authorized(&inv2, "Proxy-Authorization", "pw-1");
    let out = h.send(challenge(&inv2, 407, MD5_CHALLENGE), h.itsp);
    assert!(
        requests(&out, &h.itsp, Method::Invite).is_empty(),
        "one retry only"
    );
    let to_pbx = to(&out, &h.pbx);
    assert_eq!(to_pbx.len(), 1, "{out:#?}");
    assert_eq!(to_pbx[0].code(), Some(503));
    assert!(to_pbx[0].header("Proxy-Authenticate").is_none());
}

#[test]
fn challenges_of_another_realm_are_not_answered() {
    let mut h = lab_with(AUTH);
    let out = h.send(parse(INVITE), h.pbx);
    let inv1 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let other = r#"Digest realm="elsewhere", nonce="n""#;
    let out = h.send(challenge(&inv1, 401, other), h.itsp);
    assert!(requests(&out, &h.itsp, Method::Invite).is_empty());
    assert_eq!(to(&out, &h.pbx)[0].code(), Some(503));
}

#[test]
fn without_credentials_a_challenge_is_the_trunks_answer_as_before() {
    let mut h = lab_with("");
    let out = h.send(parse(INVITE), h.pbx);
    let inv1 = requests(&out, &h.itsp, Method::Invite).remove(0);
    let out = h.send(challenge(&inv1, 401, MD5_CHALLENGE), h.itsp);
    assert!(requests(&out, &h.itsp, Method::Invite).is_empty());
    assert_eq!(to(&out, &h.pbx)[0].code(), Some(401));
}

#[test]
fn inbound_challenge_then_right_credentials_route_and_wrong_ones_get_403() {
    let extra = format!("{AUTH}\nchallenge_inbound = true");
    let mut h = lab_with(&extra);
    let from_itsp = |cseq: u32, branch: &str| {
        let mut m = parse(INVITE);
        m.start = StartLine::Request {
            method: Method::Invite,
            uri: "sip:100@10.99.2.1:5060".into(),
        };
        m.set_header(
            "Via",
            format!("SIP/2.0/UDP 10.99.2.2:5060;branch=z9hG4bK-{branch}"),
        );
        m.set_header("From", "<sip:+4930999@10.99.2.2>;tag=itsp".into());
        m.set_header("To", "<sip:100@10.99.2.1>".into());
        m.set_header("Call-ID", "itsp-call-1".into());
        m.set_header("CSeq", format!("{cseq} INVITE"));
        m
    };
    let out = h.send(from_itsp(1, "a"), h.itsp);
    let r = to(&out, &h.itsp).remove(0);
    assert_eq!(r.code(), Some(401));
    assert!(to(&out, &h.pbx).is_empty());
    let values: Vec<&str> = r.headers_named("WWW-Authenticate").collect();
    assert_eq!(values.len(), 2);
    let ch = Challenge::parse(values[1]).unwrap();
    assert_eq!(ch.realm, "itsp.example");
    let with = |password: &str, cseq, branch| {
        let mut m = from_itsp(cseq, branch);
        m.push_header(
            "Authorization",
            digest::authorization(
                &ch,
                "acme",
                password,
                "INVITE",
                "sip:100@10.99.2.1:5060",
                "c",
                1,
            ),
        );
        m
    };
    let out = h.send(with("wrong", 2, "b"), h.itsp);
    assert_eq!(to(&out, &h.itsp)[0].code(), Some(403));
    assert!(to(&out, &h.pbx).is_empty());
    let out = h.send(with("pw-1", 3, "c"), h.itsp);
    assert_eq!(to(&out, &h.itsp)[0].code(), Some(100));
    assert_eq!(
        requests(&out, &h.pbx, Method::Invite).len(),
        1,
        "routed to the PBX"
    );
    // Calls from the PBX trunk are not challenged.
    let out = h.send(parse(INVITE), h.pbx);
    assert_eq!(to(&out, &h.pbx)[0].code(), Some(100));
}

const REGISTER: &str = r#"register = { user = "4930123", password = "reg-pw", domain = "itsp.example", expires = 600 }"#;

#[test]
fn register_at_start_with_digest_refresh_at_half_and_back_off() {
    let mut h = lab_with(REGISTER);
    let out = h.advance(Duration::ZERO);
    let reg1 = requests(&out, &h.itsp, Method::Register).remove(0);
    assert_eq!(reg1.uri(), Some("sip:itsp.example"));
    assert_eq!(reg1.header("To"), Some("<sip:4930123@itsp.example>"));
    assert_eq!(reg1.header("Contact"), Some("<sip:4930123@10.99.2.1:5060>"));
    assert_eq!(reg1.header("Expires"), Some("600"));
    assert_eq!(
        h.status()["trunks"][1]["registration"]["state"],
        "registering"
    );
    assert!(h.status()["trunks"][0]["registration"].is_null());
    let md5 = r#"Digest realm="itsp.example", nonce="r-1""#;
    let out = h.send(challenge(&reg1, 401, md5), h.itsp);
    let reg2 = requests(&out, &h.itsp, Method::Register).remove(0);
    assert_eq!(reg2.header("CSeq"), Some("2 REGISTER"));
    assert_eq!(reg2.header("Call-ID"), reg1.header("Call-ID"));
    let creds = assert_authorized(&reg2, "Authorization", "reg-pw");
    assert_eq!(creds.username, "4930123");
    assert!(creds.qop.is_none(), "legacy challenge, legacy answer");
    let mut ok = answer(&reg2, 200, false);
    ok.set_header("Contact", "<sip:4930123@10.99.2.1:5060>;expires=400".into());
    let out = h.send(ok, h.itsp);
    assert!(out.is_empty());
    let st = h.status();
    let reg = &st["trunks"][1]["registration"];
    assert_eq!(reg["state"], "registered");
    assert!(reg["expires_at"].is_string());
    let text = st.to_string();
    assert!(!text.contains("reg-pw"), "{text}");
    // Refresh at half the granted 400 s.
    let out = h.advance(Duration::from_secs(199));
    assert!(requests(&out, &h.itsp, Method::Register).is_empty());
    let out = h.advance(Duration::from_secs(1));
    let reg3 = requests(&out, &h.itsp, Method::Register).remove(0);
    assert_eq!(reg3.header("CSeq"), Some("3 REGISTER"));
    // Failures: 30 s, then 60 s.
    let out = h.send(answer(&reg3, 503, false), h.itsp);
    assert!(out.is_empty());
    assert_eq!(
        h.status()["trunks"][1]["registration"]["last_error"],
        "503 X"
    );
    let out = h.advance(Duration::from_secs(29));
    assert!(requests(&out, &h.itsp, Method::Register).is_empty());
    let out = h.advance(Duration::from_secs(1));
    let reg4 = requests(&out, &h.itsp, Method::Register).remove(0);
    h.send(answer(&reg4, 403, false), h.itsp);
    let out = h.advance(Duration::from_secs(59));
    assert!(requests(&out, &h.itsp, Method::Register).is_empty());
    let out = h.advance(Duration::from_secs(1));
    let reg5 = requests(&out, &h.itsp, Method::Register).remove(0);
    // A timeout (no answer at all) is a failure too: the next try after 120 s.
    let mut sent = 1;
    for _ in 0..40 {
        let out = h.advance(Duration::from_secs(1));
        sent += requests(&out, &h.itsp, Method::Register).len();
    }
    assert!(sent > 1, "retransmitted while waiting");
    // The binding granted at 0 s for 400 s still holds at 330 s, with the last error shown.
    let st = h.status();
    assert_eq!(st["trunks"][1]["registration"]["state"], "registered");
    assert!(st["trunks"][1]["registration"]["last_error"]
        .as_str()
        .unwrap()
        .contains("timeout"));
    drop(reg5);
    h.advance(Duration::from_secs(75));
    let st = h.status();
    assert_eq!(st["trunks"][1]["registration"]["state"], "expired");
    assert!(st["trunks"][1]["registration"]["expires_at"].is_null());
    // Shutdown: nothing is bound and nothing is out, so nothing to remove.
    h.core.unregister_all(h.now);
    assert!(!h.core.unregistering());
    assert!(h.core.drain_transmits().next().is_none());
}

#[test]
fn unregister_on_shutdown_answers_a_challenge_too() {
    let mut h = lab_with(REGISTER);
    let out = h.advance(Duration::ZERO);
    let reg1 = requests(&out, &h.itsp, Method::Register).remove(0);
    h.send(answer(&reg1, 200, false), h.itsp);
    assert_eq!(
        h.status()["trunks"][1]["registration"]["state"],
        "registered"
    );
    h.core.unregister_all(h.now);
    let out: Vec<Transmit> = h.core.drain_transmits().collect();
    let un = requests(&out, &h.itsp, Method::Register).remove(0);
    assert_eq!(un.header("Expires"), Some("0"));
    assert!(h.core.unregistering());
    let out = h.send(challenge(&un, 401, MD5_CHALLENGE), h.itsp);
    let un2 = requests(&out, &h.itsp, Method::Register).remove(0);
    assert_eq!(un2.header("Expires"), Some("0"));
    assert_authorized(&un2, "Authorization", "reg-pw");
    assert!(h.core.unregistering());
    h.send(answer(&un2, 200, false), h.itsp);
    assert!(!h.core.unregistering());
    assert_eq!(
        h.status()["trunks"][1]["registration"]["state"],
        "unregistered"
    );
    let out = h.advance(Duration::from_secs(3600));
    assert!(requests(&out, &h.itsp, Method::Register).is_empty());
}

/// A reload that renames the registered ITSP trunk: the removed trunk's binding is removed
/// (un-REGISTER on its own Call-ID), the new trunk registers afresh, and nothing refreshes the
/// old binding afterwards; the slot of the removed trunk is free (no call used it).
#[test]
fn a_reload_unregisters_a_removed_trunk_and_registers_an_added_one() {
    let text = LAB.replace(ITSP_TRUNK, &format!("{ITSP_TRUNK}{REGISTER}\n"));
    let mut h = Harness::with_config(&text);
    let out = h.advance(Duration::ZERO);
    let reg = requests(&out, &h.itsp, Method::Register).remove(0);
    h.send(answer(&reg, 200, false), h.itsp);
    assert_eq!(
        h.status()["trunks"][1]["registration"]["state"],
        "registered"
    );

    let renamed = text
        .replace("name = \"itsp\"", "name = \"carrier\"")
        .replace("[\"itsp\"]", "[\"carrier\"]");
    let running = mediagate::config::parse("lab.toml", &text).unwrap();
    let file = mediagate::config::parse("lab.toml", &renamed).unwrap();
    let m = mediagate::config::live::merge(&running, file, &h.core.free_trunk_slots()).unwrap();
    assert_eq!(
        (m.added.as_slice(), m.removed.as_slice()),
        (&[2][..], &[1][..])
    );
    h.core
        .reconfigure(std::sync::Arc::new(m.config), &m.added, &m.removed, h.now);
    let out = h.advance(Duration::ZERO);
    let regs = requests(&out, &h.itsp, Method::Register);
    assert_eq!(regs.len(), 2, "{regs:?}");
    let (un, new): (Vec<_>, Vec<_>) = regs
        .into_iter()
        .partition(|r| r.header("Call-ID") == reg.header("Call-ID"));
    assert_eq!(
        un[0].header("Expires"),
        Some("0"),
        "the removed trunk's binding"
    );
    assert_eq!(
        new[0].header("Expires"),
        Some("600"),
        "the added trunk's registration"
    );
    let st = h.status();
    let names: Vec<_> = st["trunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, ["pbx", "carrier"]);
    assert_eq!(st["trunks"][1]["registration"]["state"], "registering");
    assert!(
        h.core.free_trunk_slots().is_empty(),
        "the un-REGISTER is still out"
    );
    h.send(answer(&un[0], 200, false), h.itsp);
    h.send(answer(&new[0], 200, false), h.itsp);
    assert_eq!(h.core.free_trunk_slots(), [1]);
    // Only the new trunk refreshes (at half its 600 s).
    let out = h.advance(Duration::from_secs(300));
    let refresh = requests(&out, &h.itsp, Method::Register);
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    assert_eq!(refresh[0].header("Call-ID"), new[0].header("Call-ID"));
}

#[test]
fn challenged_probe_is_answered() {
    let extra = format!("{AUTH}\noptions_interval_s = 10");
    let mut h = lab_with(&extra);
    let out = h.advance(Duration::ZERO);
    let opt1 = requests(&out, &h.itsp, Method::Options).remove(0);
    let out = h.send(challenge(&opt1, 407, MD5_CHALLENGE), h.itsp);
    let opt2 = requests(&out, &h.itsp, Method::Options).remove(0);
    assert_authorized(&opt2, "Proxy-Authorization", "pw-1");
    h.send(answer(&opt2, 200, false), h.itsp);
    assert_eq!(h.status()["trunks"][1]["peers"][0]["state"], "up");
}
