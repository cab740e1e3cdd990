//! Forked early dialogs through the sans-IO B2BUA with a virtual clock (issue 7,
//! `max_early_dialogs`): each fork of the callee leg becomes an early dialog of its own toward
//! the caller, within the trunk's limit; the answering fork's tag is the caller's dialog; a
//! second answer is ACKed and hung up; PRACKs and UPDATEs follow the fork whose tag they carry.

mod sansio;

use mediagate::sip::dialog::response_to;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::T1;
use sansio::{
    calling, calling_with, early_update_from_callee, one_to, prack, provisional_from, rseq_of,
    to_peer, Harness, LAB,
};

/// The lab configuration with `max_early_dialogs = limit` on the ITSP trunk.
fn limited(limit: u32) -> String {
    let itsp = "local = \"udp:10.99.2.1:5060\"\n";
    assert!(LAB.contains(itsp));
    LAB.replace(itsp, &format!("{itsp}max_early_dialogs = {limit}\n"))
}

/// The To tag of a message.
fn to_tag(m: &Message) -> String {
    let to = m.header("To").expect("To");
    to.split(";tag=").nth(1).expect("To tag").to_string()
}

fn with_sdp(mut m: Message, port: u16) -> Message {
    let sdp = format!("v=0\no=callee 1 1 IN IP4 10.99.2.2\ns=-\nc=IN IP4 10.99.2.2\nt=0 0\nm=audio {port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\na=sendrecv\n");
    m.push_header("Content-Type", "application/sdp".into());
    m.body = sdp.replace('\n', "\r\n").into_bytes();
    m
}

/// The callee leg's media destination in `/status`.
fn callee_remote(h: &Harness) -> String {
    let st = h.status();
    st["calls"][0]["legs"][1]["streams"][0]["remote"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A 200 from fork `tag` to mediagate's INVITE.
fn answer_from(inv_b: &Message, tag: &str) -> Message {
    let mut ok = response_to(inv_b, 200, "OK", Some(tag));
    ok.push_header("Contact", format!("<sip:{tag}@10.99.2.2:5060>"));
    with_sdp(ok, 7000)
}

/// An UPDATE from fork `tag` in its early dialog.
fn update_from(inv_b: &Message, tag: &str) -> Message {
    with_sdp(early_update_from_callee(inv_b, tag), 7010)
}

#[test]
fn two_forks_become_two_early_dialogs_toward_the_caller() {
    let (mut h, inv_b) = calling();
    let p1 = one_to(
        &h.send(
            with_sdp(provisional_from(&inv_b, 183, "f1", None), 7100),
            h.itsp,
        ),
        &h.pbx,
    );
    assert!(callee_remote(&h).ends_with(":7100"), "{:#}", h.status());
    let p2 = one_to(
        &h.send(
            with_sdp(provisional_from(&inv_b, 183, "f2", None), 7200),
            h.itsp,
        ),
        &h.pbx,
    );
    let (a1, a2) = (to_tag(&p1), to_tag(&p2));
    assert_ne!(a1, a2, "each fork is its own early dialog");
    assert!(!["f1", "f2"].contains(&a1.as_str()) && !["f1", "f2"].contains(&a2.as_str()));
    assert_eq!(p1.header("Call-ID"), p2.header("Call-ID"));
    // The latest SDP re-anchors where mediagate sends; both dialogs carry its own ports.
    assert!(callee_remote(&h).ends_with(":7200"), "{:#}", h.status());
    assert_eq!(p1.body.is_empty(), p2.body.is_empty());
    let port = |m: &Message| {
        String::from_utf8_lossy(&m.body)
            .lines()
            .find(|l| l.starts_with("m=audio"))
            .unwrap()
            .to_string()
    };
    assert_eq!(port(&p1), port(&p2));
    // A later provisional of fork 1 keeps fork 1's tag.
    let again = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", None), h.itsp),
        &h.pbx,
    );
    assert_eq!(to_tag(&again), a1);
    // A request from fork 2 reaches the caller in fork 2's early dialog.
    let update_a = one_to(&h.send(update_from(&inv_b, "f2"), h.itsp), &h.pbx);
    assert_eq!(
        to_tag(&p2),
        update_a
            .header("From")
            .unwrap()
            .split(";tag=")
            .nth(1)
            .unwrap()
    );
    assert_eq!(h.core.counters().forks_unrelayed, 0);
}

#[test]
fn the_limit_relays_only_the_first_forks_and_pracks_the_others() {
    let (mut h, inv_b) = calling_with(&limited(1));
    let p1 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", None), h.itsp),
        &h.pbx,
    );
    // Fork 2 is beyond the limit: nothing to the caller; its reliable 180 PRACKed by mediagate.
    let out = h.send(provisional_from(&inv_b, 180, "f2", Some(5)), h.itsp);
    assert!(to_peer(&out, &h.pbx).is_empty(), "{out:#?}");
    let prack_b = one_to(&out, &h.itsp);
    assert_eq!(prack_b.method(), Some(&Method::Other("PRACK".into())));
    assert_eq!(to_tag(&prack_b), "f2");
    assert_eq!(prack_b.header("RAck"), Some("5 1 INVITE"));
    assert_eq!(h.core.counters().forks_unrelayed, 1);
    // Its retransmission is neither relayed nor PRACKed twice.
    assert!(h
        .send(provisional_from(&inv_b, 180, "f2", Some(5)), h.itsp)
        .is_empty());
    // Fork 1 still relays.
    let again = one_to(
        &h.send(provisional_from(&inv_b, 183, "f1", None), h.itsp),
        &h.pbx,
    );
    assert_eq!(to_tag(&again), to_tag(&p1));
    // Fork 2 answering first is the call, with a tag of its own toward the caller.
    let ok = one_to(&h.send(answer_from(&inv_b, "f2"), h.itsp), &h.pbx);
    assert_eq!(ok.code(), Some(200));
    assert_ne!(to_tag(&ok), to_tag(&p1));
}

#[test]
fn the_answering_fork_is_the_call_and_a_second_answer_is_hung_up() {
    let (mut h, inv_b) = calling();
    let _p1 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", None), h.itsp),
        &h.pbx,
    );
    let p2 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f2", None), h.itsp),
        &h.pbx,
    );
    let p3 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", None), h.itsp),
        &h.pbx,
    );
    assert_ne!(to_tag(&p3), to_tag(&p2));
    let ok = one_to(&h.send(answer_from(&inv_b, "f2"), h.itsp), &h.pbx);
    assert_eq!(ok.code(), Some(200));
    assert_eq!(
        to_tag(&ok),
        to_tag(&p2),
        "fork 2's early dialog is confirmed"
    );
    assert!(callee_remote(&h).ends_with(":7000"));
    // Fork 1 answers too: ACKed and hung up, nothing to the caller.
    let out = h.send(answer_from(&inv_b, "f1"), h.itsp);
    assert!(to_peer(&out, &h.pbx).is_empty(), "{out:#?}");
    let to_b = to_peer(&out, &h.itsp);
    let methods: Vec<_> = to_b.iter().map(|m| m.method().cloned()).collect();
    assert_eq!(methods, [Some(Method::Ack), Some(Method::Bye)], "{to_b:#?}");
    assert!(to_b.iter().all(|m| to_tag(m) == "f1"));
    assert_eq!(to_b[0].uri(), Some("sip:f1@10.99.2.2:5060"));
    // The caller's ACK confirms fork 2 on the callee leg.
    let mut ack = prack(&ok, "1 1 INVITE", "ack");
    ack.start = StartLine::Request {
        method: Method::Ack,
        uri: "sip:mediagate@10.99.1.1:5060".into(),
    };
    ack.set_header("CSeq", "1 ACK".into());
    let ack_b = one_to(&h.send(ack, h.pbx), &h.itsp);
    assert_eq!(ack_b.method(), Some(&Method::Ack));
    assert_eq!(to_tag(&ack_b), "f2");
    assert_eq!(h.status()["calls"][0]["state"], "confirmed");
}

#[test]
fn pracks_go_to_the_fork_whose_dialog_they_name() {
    let (mut h, inv_b) = calling();
    let p1 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", Some(11)), h.itsp),
        &h.pbx,
    );
    // One reliable provisional outstanding at a time: fork 2's waits for the PRACK of fork 1's.
    let out = h.send(provisional_from(&inv_b, 180, "f2", Some(21)), h.itsp);
    assert!(to_peer(&out, &h.pbx).is_empty(), "{out:#?}");
    let rseq1 = rseq_of(&p1);
    let out = h.send(prack(&p1, &format!("{rseq1} 1 INVITE"), "p1"), h.pbx);
    let prack1 = one_to(&out, &h.itsp);
    assert_eq!(to_tag(&prack1), "f1");
    assert_eq!(prack1.header("RAck"), Some("11 1 INVITE"));
    let p2 = one_to(&out, &h.pbx);
    assert_eq!(p2.code(), Some(180));
    assert_ne!(to_tag(&p2), to_tag(&p1));
    let ok1 = one_to(
        &h.send(response_to(&prack1, 200, "OK", None), h.itsp),
        &h.pbx,
    );
    assert_eq!(ok1.header("CSeq"), Some("2 PRACK"));
    // A PRACK of fork 2's provisional in fork 1's dialog matches nothing.
    let rseq2 = rseq_of(&p2);
    let out = h.send(prack(&p1, &format!("{rseq2} 1 INVITE"), "px"), h.pbx);
    assert_eq!(one_to(&out, &h.pbx).code(), Some(481));
    // In fork 2's dialog it goes to fork 2 with fork 2's RSeq.
    let out = h.send(prack(&p2, &format!("{rseq2} 1 INVITE"), "p2"), h.pbx);
    let prack2 = one_to(&out, &h.itsp);
    assert_eq!(to_tag(&prack2), "f2");
    assert_eq!(prack2.header("RAck"), Some("21 1 INVITE"));
    // Nothing left to retransmit toward the caller once fork 2's 200 is relayed.
    one_to(
        &h.send(response_to(&prack2, 200, "OK", None), h.itsp),
        &h.pbx,
    );
    assert!(to_peer(&h.advance(4 * T1), &h.pbx).is_empty());
}

#[test]
fn a_request_naming_no_early_dialog_of_a_forked_call_gets_481() {
    let (mut h, inv_b) = calling();
    let p1 = one_to(
        &h.send(provisional_from(&inv_b, 180, "f1", None), h.itsp),
        &h.pbx,
    );
    one_to(
        &h.send(provisional_from(&inv_b, 180, "f2", None), h.itsp),
        &h.pbx,
    );
    let mut stray = prack(&p1, "1 1 INVITE", "s1");
    let to = p1.header("To").unwrap().replace(&to_tag(&p1), "nosuchtag");
    stray.set_header("To", to);
    assert_eq!(one_to(&h.send(stray, h.pbx), &h.pbx).code(), Some(481));
}
