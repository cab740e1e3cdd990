//! Reliable provisional responses (RFC 3262) through the sans-IO B2BUA with a virtual clock
//! (issue 7): retransmission of a reliable 183 toward the caller until its PRACK, RAck mapping
//! onto the callee leg, one outstanding reliable provisional at a time, callee retransmissions
//! not relayed twice, PRACKs that match nothing, and a caller that never PRACKs.

mod sansio;

use mediagate::sip::dialog::response_to;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::T1;
use sansio::{
    calling, early_update_from_callee, invite_100rel, one_to, parse, prack, provisional_from,
    rseq_of, to_peer, Harness, INVITE,
};

/// A provisional from the callee (To tag `itsptag`), reliable with `rseq` if given.
fn provisional(inv_b: &Message, code: u16, rseq: Option<u32>) -> Message {
    provisional_from(inv_b, code, "itsptag", rseq)
}

#[test]
fn reliable_183_is_retransmitted_until_pracked_and_the_prack_is_mapped() {
    let (mut h, inv_b) = calling();
    let out = h.send(provisional(&inv_b, 183, Some(41)), h.itsp);
    let p183 = one_to(&out, &h.pbx);
    assert_eq!(p183.code(), Some(183));
    assert_eq!(p183.header("Require"), Some("100rel"));
    let rseq = rseq_of(&p183);
    // The callee's retransmission of its 183 is not relayed again.
    let out = h.send(provisional(&inv_b, 183, Some(41)), h.itsp);
    assert!(to_peer(&out, &h.pbx).is_empty(), "{out:#?}");
    // Retransmitted to the caller after T1, then 2*T1 later.
    let out = h.advance(T1);
    assert_eq!(rseq_of(&one_to(&out, &h.pbx)), rseq);
    assert!(to_peer(&h.advance(T1), &h.pbx).is_empty());
    assert_eq!(rseq_of(&one_to(&h.advance(T1), &h.pbx)), rseq);
    // A PRACK for another RSeq matches nothing; a bad RAck is a bad request.
    let out = h.send(prack(&p183, &format!("{} 1 INVITE", rseq + 1), "p0"), h.pbx);
    assert_eq!(one_to(&out, &h.pbx).code(), Some(481));
    let out = h.send(prack(&p183, "x 1 INVITE", "p00"), h.pbx);
    assert_eq!(one_to(&out, &h.pbx).code(), Some(400));
    // The right one goes to the callee with the callee's RSeq and INVITE CSeq.
    let out = h.send(prack(&p183, &format!("{rseq} 1 INVITE"), "p1"), h.pbx);
    let prack_b = one_to(&out, &h.itsp);
    assert_eq!(prack_b.method(), Some(&Method::Other("PRACK".into())));
    let inv_cseq = inv_b
        .header("CSeq")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(
        prack_b.header("RAck").unwrap(),
        format!("41 {inv_cseq} INVITE")
    );
    assert_eq!(prack_b.header("Call-ID"), inv_b.header("Call-ID"));
    // The callee's 200 answers the caller's PRACK; retransmissions stopped.
    let ok = response_to(&prack_b, 200, "OK", None);
    let out = h.send(ok, h.itsp);
    let ok_a = one_to(&out, &h.pbx);
    assert_eq!(ok_a.code(), Some(200));
    assert_eq!(ok_a.header("CSeq"), Some("2 PRACK"));
    assert!(to_peer(&h.advance(8 * T1), &h.pbx).is_empty());
}

#[test]
fn one_reliable_provisional_outstanding_at_a_time() {
    let (mut h, inv_b) = calling();
    let p180 = one_to(&h.send(provisional(&inv_b, 180, Some(1)), h.itsp), &h.pbx);
    let out = h.send(provisional(&inv_b, 183, Some(2)), h.itsp);
    assert!(to_peer(&out, &h.pbx).is_empty(), "183 held back: {out:#?}");
    let rseq = rseq_of(&p180);
    let out = h.send(prack(&p180, &format!("{rseq} 1 INVITE"), "p1"), h.pbx);
    let p183 = one_to(&out, &h.pbx);
    assert_eq!(p183.code(), Some(183));
    assert_eq!(rseq_of(&p183), rseq + 1, "RSeq counts up by one");
}

#[test]
fn unreliable_provisional_sent_unreliably_and_its_duplicate_prack_answered_481() {
    let (mut h, inv_b) = calling();
    let p180 = one_to(&h.send(provisional(&inv_b, 180, None), h.itsp), &h.pbx);
    assert_eq!(p180.header("RSeq"), None, "the caller only supports 100rel");
    let out = h.send(prack(&p180, "1 1 INVITE", "p1"), h.pbx);
    assert_eq!(one_to(&out, &h.pbx).code(), Some(481));
}

#[test]
fn caller_that_never_pracks_gets_500_and_the_callee_a_cancel() {
    let (mut h, inv_b) = calling();
    let start = h.now;
    one_to(&h.send(provisional(&inv_b, 183, Some(1)), h.itsp), &h.pbx);
    // Wake up only when the core asks to (as the I/O shell does) until the caller gets the 500.
    let mut out = Vec::new();
    for _ in 0..1000 {
        let at = h.core.poll_timeout().expect("timers pending");
        out.extend(h.advance(at.saturating_duration_since(h.now)));
        if to_peer(&out, &h.pbx).iter().any(|m| m.code() == Some(500)) {
            break;
        }
    }
    assert_eq!(h.now - start, 64 * T1, "given up after 64*T1, not later");
    let finals: Vec<Message> = to_peer(&out, &h.pbx)
        .into_iter()
        .filter(|m| m.code() != Some(183))
        .collect();
    assert!(!finals.is_empty(), "{out:#?}");
    assert!(finals.iter().all(|m| m.code() == Some(500)), "{finals:#?}");
    assert!(
        to_peer(&out, &h.itsp)
            .iter()
            .any(|m| m.method() == Some(&Method::Cancel)),
        "{out:#?}"
    );
    assert_eq!(h.status()["active_calls"], 0);
}

/// An SDP body from test text.
fn with_body(mut m: Message, sdp: &str) -> Message {
    m.push_header("Content-Type", "application/sdp".into());
    m.body = sdp.replace('\n', "\r\n").into_bytes();
    m
}

fn sdp(owner: &str, ip: &str, version: u32, port: u16) -> String {
    format!("v=0\no={owner} 1 {version} IN IP4 {ip}\ns=-\nc=IN IP4 {ip}\nt=0 0\nm=audio {port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\na=sendrecv\n")
}

/// The `c=` address and `m=audio` port of a body.
fn conn(m: &Message) -> (String, u16) {
    let text = String::from_utf8_lossy(&m.body).to_string();
    let ip = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    (ip.trim().to_string(), port.parse().unwrap())
}

/// A call with a PRACKed reliable 183 with SDP: the 183 the caller got.
fn early_call() -> (Harness, Message, Message) {
    let (mut h, inv_b) = calling();
    let p183 = with_body(
        provisional(&inv_b, 183, Some(1)),
        &sdp("callee", "10.99.2.2", 1, 7000),
    );
    let p183 = one_to(&h.send(p183, h.itsp), &h.pbx);
    let rack = format!("{} 1 INVITE", rseq_of(&p183));
    let prack_b = one_to(&h.send(prack(&p183, &rack, "p1"), h.pbx), &h.itsp);
    one_to(
        &h.send(response_to(&prack_b, 200, "OK", None), h.itsp),
        &h.pbx,
    );
    (h, inv_b, p183)
}

#[test]
fn early_update_from_the_caller_is_relayed_with_its_sdp_reanchored() {
    let (mut h, inv_b, p183) = early_call();
    let mut update = prack(&p183, "", "u1");
    update.start = StartLine::Request {
        method: Method::Other("UPDATE".into()),
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    update.remove_headers("RAck");
    update.set_header("CSeq", "3 UPDATE".into());
    update.push_header("Contact", "<sip:100@10.99.1.2:5060>".into());
    // The caller moves its media to another port.
    let update = with_body(update, &sdp("pbx", "10.99.1.2", 2, 6002));
    let out = h.send(update, h.pbx);
    let update_b = one_to(&out, &h.itsp);
    assert_eq!(update_b.method(), Some(&Method::Other("UPDATE".into())));
    assert_eq!(update_b.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(
        conn(&update_b),
        conn(&inv_b),
        "same anchor on the callee leg"
    );
    let answer = with_body(
        response_to(&update_b, 200, "OK", None),
        &sdp("callee", "10.99.2.2", 2, 7002),
    );
    let ok = one_to(&h.send(answer, h.itsp), &h.pbx);
    assert_eq!(ok.code(), Some(200));
    assert_eq!(ok.header("CSeq"), Some("3 UPDATE"));
    assert_eq!(conn(&ok), conn(&p183), "same anchor on the caller leg");
    let st = h.status();
    let remotes: Vec<String> = st["calls"][0]["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["streams"][0]["remote"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(remotes.iter().any(|r| r.ends_with(":6002")), "{st:#}");
    assert!(remotes.iter().any(|r| r.ends_with(":7002")), "{st:#}");
}

#[test]
fn early_update_from_the_callee_reaches_the_caller_in_its_dialog() {
    let (mut h, inv_b, p183) = early_call();
    let update = with_body(
        early_update_from_callee(&inv_b, "itsptag"),
        &sdp("callee", "10.99.2.2", 3, 7004),
    );
    let update_a = one_to(&h.send(update, h.itsp), &h.pbx);
    assert_eq!(update_a.header("Call-ID"), Some("pbx-call-1"));
    assert_eq!(
        update_a.header("From"),
        p183.header("To"),
        "mediagate's early dialog"
    );
    assert_eq!(conn(&update_a), conn(&p183));
    let answer = with_body(
        response_to(&update_a, 200, "OK", None),
        &sdp("pbx", "10.99.1.2", 3, 6000),
    );
    let ok = one_to(&h.send(answer, h.pbx), &h.itsp);
    assert_eq!(ok.code(), Some(200));
    assert_eq!(conn(&ok).0, "10.99.2.1");
}

#[test]
fn update_before_any_early_dialog_gets_501() {
    let (mut h, _inv_b) = calling();
    let mut update = parse(INVITE);
    update.start = StartLine::Request {
        method: Method::Other("UPDATE".into()),
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    update.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-u0".into());
    update.set_header("To", "<sip:+4930123@10.99.1.1:5060>;tag=guess".into());
    update.set_header("CSeq", "2 UPDATE".into());
    assert_eq!(one_to(&h.send(update, h.pbx), &h.pbx).code(), Some(501));
}

/// A PRACK the callee refuses 481 after answering (the two crossed) ends nothing: the PRACK's
/// 481 only says no provisional matched (RFC 3262 §3).
#[test]
fn a_481_to_a_prack_racing_the_answer_keeps_the_call() {
    let (mut h, inv_b) = calling();
    let p183 = one_to(&h.send(provisional(&inv_b, 183, Some(1)), h.itsp), &h.pbx);
    let rack = format!("{} 1 INVITE", rseq_of(&p183));
    let prack_b = one_to(&h.send(prack(&p183, &rack, "p1"), h.pbx), &h.itsp);
    let mut ok = response_to(&inv_b, 200, "OK", Some("itsptag"));
    ok.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    let out = h.send(with_body(ok, &sdp("callee", "10.99.2.2", 1, 7000)), h.itsp);
    assert_eq!(one_to(&out, &h.pbx).code(), Some(200));
    let out = h.send(response_to(&prack_b, 481, "X", None), h.itsp);
    let refused = one_to(&out, &h.pbx);
    assert_eq!(
        (refused.code(), refused.header("CSeq")),
        (Some(481), Some("2 PRACK"))
    );
    assert!(to_peer(&out, &h.itsp).is_empty(), "no BYE: {out:#?}");
    assert_eq!(h.status()["active_calls"], 1);
}

/// An INVITE without SDP: the callee's offer comes in its reliable 183 and the caller's answer
/// in its PRACK, which reaches the callee anchored (RFC 3262 §5).
#[test]
fn answer_in_the_prack_is_anchored_and_relayed() {
    let mut h = Harness::new();
    let mut inv = invite_100rel();
    inv.body.clear();
    inv.remove_headers("Content-Type");
    let inv_b = one_to(&h.send(inv, h.pbx), &h.itsp);
    assert!(inv_b.body.is_empty());
    let offer = with_body(
        provisional(&inv_b, 183, Some(1)),
        &sdp("callee", "10.99.2.2", 1, 7000),
    );
    let p183 = one_to(&h.send(offer, h.itsp), &h.pbx);
    assert_eq!(
        conn(&p183).0,
        "10.99.1.1",
        "the offer anchored for the caller"
    );
    let rack = format!("{} 1 INVITE", rseq_of(&p183));
    // A body that is no SDP gets 488 and the 183 stays outstanding.
    let mut bad = prack(&p183, &rack, "p0");
    bad.push_header("Content-Type", "text/plain".into());
    bad.body = b"hello".to_vec();
    assert_eq!(one_to(&h.send(bad, h.pbx), &h.pbx).code(), Some(488));
    let answer = with_body(prack(&p183, &rack, "p1"), &sdp("pbx", "10.99.1.2", 1, 6000));
    let prack_b = one_to(&h.send(answer, h.pbx), &h.itsp);
    assert_eq!(prack_b.header("Content-Type"), Some("application/sdp"));
    assert_eq!(
        conn(&prack_b).0,
        "10.99.2.1",
        "the answer anchored for the callee"
    );
    let text = String::from_utf8_lossy(&prack_b.to_bytes()).to_string();
    assert!(!text.contains("10.99.1.2"), "caller leaked:\n{text}");
}
