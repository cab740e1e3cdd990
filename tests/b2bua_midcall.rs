//! Mid-call requests through the sans-IO B2BUA (issue 7), driven message by message with a
//! virtual clock: re-INVITE and UPDATE in both directions with the SDP each side sees, hold and
//! resume, error answers that keep the call, glare, INFO relay and the hold timeout.

mod sansio;

use std::time::Duration;

use mediagate::media::Command;
use mediagate::sdp::{Direction, Sdp};
use mediagate::sip::header;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::{Target, Transmit};
use sansio::{only_to, parse, Harness, INVITE, LAB as CONFIG};

/// Calls up (as `/status` counts them).
fn active_calls(h: &Harness) -> u64 {
    h.status()["active_calls"].as_u64().unwrap()
}

/// Topology hiding: nothing of the PBX side reaches the ITSP and the other way round.
fn assert_hidden(out: &[Transmit], h: &Harness) {
    for t in out {
        let text = String::from_utf8_lossy(&t.message.to_bytes()).to_string();
        let leaks: &[&str] = if t.target.remote == h.itsp.remote {
            &["10.99.1.", "pbx-call-1", "pbx-tag", "pbx-secret"]
        } else {
            &["10.99.2.", "itsptag", "itsp-secret"]
        };
        for leak in leaks {
            assert!(
                !text.contains(leak),
                "{leak} leaked to {}:\n{text}",
                t.target.remote
            );
        }
    }
}

/// Messages to `to` other than 100 Trying.
fn to_peer(out: &[Transmit], to: &Target) -> Vec<Message> {
    out.iter()
        .filter(|t| t.target.remote == to.remote && t.message.code() != Some(100))
        .map(|t| t.message.clone())
        .collect()
}

fn one_to(out: &[Transmit], to: &Target) -> Message {
    let msgs = to_peer(out, to);
    assert_eq!(
        msgs.len(),
        1,
        "expected one message to {}: {out:#?}",
        to.remote
    );
    msgs[0].clone()
}

fn code_of(m: &Message) -> u16 {
    m.code().expect("a response")
}

fn sdp_text(body: &str) -> String {
    body.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// A response from a peer to `req`.
fn reply(req: &Message, code: u16, tag: &str, contact: &str, sdp: Option<&str>) -> Message {
    let mut r = mediagate::sip::dialog::response_to(req, code, "X", Some(tag));
    if code < 300 {
        r.push_header("Contact", format!("<{contact}>"));
    }
    if let Some(body) = sdp {
        r.push_header("Content-Type", "application/sdp".into());
        r.body = sdp_text(body).into_bytes();
    }
    r
}

const ITSP_CONTACT: &str = "sip:callee@10.99.2.2:5060";
const PBX_CONTACT: &str = "sip:100@10.99.1.2:5060";

fn pbx_sdp(version: u32, port: u16, dir: &str) -> String {
    format!("v=0\no=pbx 53655765 {version} IN IP4 10.99.1.2\ns=-\nc=IN IP4 10.99.1.2\nt=0 0\nm=audio {port} RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na={dir}\n")
}

fn itsp_sdp(version: u32, ip: &str, port: u16, dir: &str) -> String {
    format!("v=0\no=callee 1 {version} IN IP4 10.99.2.2\ns=-\nc=IN IP4 {ip}\nt=0 0\nm=audio {port} RTP/AVP 8\na={dir}\n")
}

/// A confirmed call; returns the harness, the INVITE the ITSP got and the 200 the PBX got.
fn confirmed_call_with(config: &str) -> (Harness, Message, Message) {
    let mut h = Harness::with_config(config);
    h.check = assert_hidden;
    let out = h.send(parse(INVITE), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    let out = h.send(
        reply(
            &inv_b,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(1, "10.99.2.2", 7000, "sendrecv")),
        ),
        h.itsp,
    );
    let ok = only_to(&out, &h.pbx);
    assert_eq!(code_of(&ok), 200);
    let ack = pbx_request(&ok, Method::Ack, 1, "ack1", None);
    let out = h.send(ack, h.pbx);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Ack));
    h.core.drain_media_commands();
    (h, inv_b, ok)
}

fn confirmed_call() -> (Harness, Message, Message) {
    confirmed_call_with(CONFIG)
}

/// An in-dialog request from the PBX (dialog of the 200 it received).
fn pbx_request(
    ok: &Message,
    method: Method,
    cseq: u32,
    branch: &str,
    sdp: Option<&str>,
) -> Message {
    let mut m = Message {
        start: StartLine::Request {
            method: method.clone(),
            uri: "sip:mediagate@10.99.1.1:5060".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    m.push_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-{branch}"),
    );
    m.push_header("From", ok.header("From").unwrap().to_string());
    m.push_header("To", ok.header("To").unwrap().to_string());
    m.push_header("Call-ID", "pbx-call-1".into());
    m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
    m.push_header("Contact", format!("<{PBX_CONTACT}>"));
    m.push_header("Max-Forwards", "70".into());
    m.push_header("X-Secret", "pbx-secret".into());
    if let Some(body) = sdp {
        m.push_header("Content-Type", "application/sdp".into());
        m.body = sdp_text(body).into_bytes();
    }
    m
}

/// An in-dialog request from the ITSP (dialog of the INVITE it received).
fn itsp_request(
    inv_b: &Message,
    method: Method,
    cseq: u32,
    branch: &str,
    sdp: Option<&str>,
) -> Message {
    let mut m = Message {
        start: StartLine::Request {
            method: method.clone(),
            uri: header::uri_of(inv_b.header("Contact").unwrap()).to_string(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    m.push_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.2.2:5060;branch=z9hG4bK-{branch}"),
    );
    m.push_header(
        "From",
        format!("{};tag=itsptag", inv_b.header("To").unwrap()),
    );
    m.push_header("To", inv_b.header("From").unwrap().to_string());
    m.push_header("Call-ID", inv_b.header("Call-ID").unwrap().to_string());
    m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
    m.push_header("Contact", format!("<{ITSP_CONTACT}>"));
    m.push_header("Max-Forwards", "70".into());
    m.push_header("X-Secret", "itsp-secret".into());
    if let Some(body) = sdp {
        m.push_header("Content-Type", "application/sdp".into());
        m.body = sdp_text(body).into_bytes();
    }
    m
}

fn sdp_of(m: &Message) -> Sdp {
    Sdp::parse(&m.body).unwrap_or_else(|e| panic!("no SDP ({e}) in {m:#?}"))
}

/// The `o=` session version of a body.
fn version_of(m: &Message) -> u64 {
    let text = String::from_utf8(m.body.clone()).unwrap();
    let o = text.lines().find(|l| l.starts_with("o=")).unwrap();
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn renegotiated(h: &mut Harness) -> Vec<Option<std::net::SocketAddr>> {
    h.core
        .drain_media_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Renegotiate { sdp, .. } => Some(sdp),
            _ => None,
        })
        .collect()
}

fn addr(s: &str) -> Option<std::net::SocketAddr> {
    Some(s.parse().unwrap())
}

/// The PBX re-INVITEs with `offer`; the ITSP answers `answer`; returns what the ITSP got and
/// what the PBX got (the 200, then the ACK on the ITSP side).
fn reinvite_from_pbx(
    h: &mut Harness,
    ok: &Message,
    cseq: u32,
    offer: &str,
    answer: &str,
) -> (Message, Message, Message) {
    let out = h.send(
        pbx_request(ok, Method::Invite, cseq, &format!("re{cseq}"), Some(offer)),
        h.pbx,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 100);
    let reinv = only_to(&out, &h.itsp);
    let out = h.send(
        reply(&reinv, 200, "itsptag", ITSP_CONTACT, Some(answer)),
        h.itsp,
    );
    let ok2 = only_to(&out, &h.pbx);
    assert_eq!(code_of(&ok2), 200);
    let out = h.send(
        pbx_request(ok, Method::Ack, cseq, &format!("ack{cseq}"), None),
        h.pbx,
    );
    let ack = only_to(&out, &h.itsp);
    (reinv, ok2, ack)
}

#[test]
fn hold_and_resume_from_the_caller() {
    let (mut h, inv_b, ok) = confirmed_call();
    let b_port = sdp_of(&inv_b).media()[0].rtp.port();
    let a_port = sdp_of(&ok).media()[0].rtp.port();

    // Hold: a=sendonly from a new PBX media port.
    let (reinv, ok2, ack) = reinvite_from_pbx(
        &mut h,
        &ok,
        2,
        &pbx_sdp(2353687638, 6002, "sendonly"),
        &itsp_sdp(2, "10.99.2.2", 7000, "recvonly"),
    );
    // The ITSP sees a re-INVITE in mediagate's own dialog with it.
    assert_eq!(reinv.method(), Some(&Method::Invite));
    assert_eq!(reinv.uri(), Some(ITSP_CONTACT));
    assert_eq!(reinv.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(header::tag(&reinv, "From"), header::tag(&inv_b, "From"));
    assert_eq!(header::tag(&reinv, "To"), Some("itsptag"));
    assert_eq!(reinv.header("CSeq"), Some("2 INVITE"));
    assert!(reinv.header("Contact").unwrap().contains("10.99.2.1"));
    let offer_b = sdp_of(&reinv);
    assert_eq!(
        offer_b.media()[0].rtp,
        format!("10.99.2.1:{b_port}").parse().unwrap()
    );
    assert_eq!(offer_b.media()[0].direction, Direction::SendOnly);
    assert_eq!(
        version_of(&reinv),
        version_of(&inv_b) + 1,
        "o= version bumped"
    );
    // The PBX sees the answer anchored on the same mediagate port, version bumped.
    let answer_a = sdp_of(&ok2);
    assert_eq!(
        answer_a.media()[0].rtp,
        format!("10.99.1.1:{a_port}").parse().unwrap()
    );
    assert_eq!(answer_a.media()[0].direction, Direction::RecvOnly);
    assert_eq!(version_of(&ok2), version_of(&ok) + 1);
    assert_eq!(header::tag(&ok2, "To"), header::tag(&ok, "To"));
    // ACK relayed end to end with the re-INVITE's CSeq.
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.header("CSeq"), Some("2 ACK"));
    // The PBX's streams re-open latching toward its new port; the ITSP's stay.
    let r = renegotiated(&mut h);
    assert!(r.contains(&addr("10.99.1.2:6002")), "{r:?}");
    assert!(r.contains(&addr("10.99.2.2:7000")), "{r:?}");
    assert!(
        h.advance(Duration::from_secs(2)).is_empty(),
        "no 200 retransmit after ACK"
    );

    // Resume.
    let (reinv, ok3, _) = reinvite_from_pbx(
        &mut h,
        &ok,
        3,
        &pbx_sdp(2353687639, 6002, "sendrecv"),
        &itsp_sdp(3, "10.99.2.2", 7000, "sendrecv"),
    );
    assert_eq!(reinv.header("CSeq"), Some("3 INVITE"));
    assert_eq!(sdp_of(&reinv).media()[0].direction, Direction::SendRecv);
    assert_eq!(sdp_of(&ok3).media()[0].direction, Direction::SendRecv);
    assert_eq!(version_of(&ok3), version_of(&ok2) + 1);
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn hold_and_new_address_from_the_callee() {
    let (mut h, inv_b, ok) = confirmed_call();
    let a_port = sdp_of(&ok).media()[0].rtp.port();
    // The ITSP holds with a=inactive and moves its media to another address.
    let out = h.send(
        itsp_request(
            &inv_b,
            Method::Invite,
            1,
            "ire1",
            Some(&itsp_sdp(2, "10.99.2.3", 7100, "inactive")),
        ),
        h.itsp,
    );
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 100);
    let reinv = only_to(&out, &h.pbx);
    assert_eq!(reinv.uri(), Some(PBX_CONTACT));
    assert_eq!(reinv.header("Call-ID"), Some("pbx-call-1"));
    assert_eq!(reinv.header("CSeq"), Some("1 INVITE"));
    assert_eq!(
        header::tag(&reinv, "From"),
        header::tag(&ok, "To"),
        "mediagate's tag"
    );
    assert_eq!(header::tag(&reinv, "To"), Some("pbx-tag"));
    let offer_a = sdp_of(&reinv);
    assert_eq!(
        offer_a.media()[0].rtp,
        format!("10.99.1.1:{a_port}").parse().unwrap()
    );
    assert_eq!(offer_a.media()[0].direction, Direction::Inactive);
    assert_eq!(version_of(&reinv), version_of(&ok) + 1);
    let r = renegotiated(&mut h);
    assert!(
        r.contains(&addr("10.99.2.3:7100")),
        "new far-side address re-opens latching: {r:?}"
    );

    let out = h.send(
        reply(
            &reinv,
            200,
            "x",
            PBX_CONTACT,
            Some(&pbx_sdp(2353687638, 6000, "inactive")),
        ),
        h.pbx,
    );
    let ok_b = only_to(&out, &h.itsp);
    assert_eq!(code_of(&ok_b), 200);
    assert_eq!(ok_b.header("CSeq"), Some("1 INVITE"));
    assert_eq!(sdp_of(&ok_b).media()[0].rtp.ip().to_string(), "10.99.2.1");
    assert_eq!(sdp_of(&ok_b).media()[0].direction, Direction::Inactive);
    // The 200 is retransmitted to the ITSP until its ACK, which goes on to the PBX.
    let out = h.advance(Duration::from_millis(500));
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 200);
    let out = h.send(itsp_request(&inv_b, Method::Ack, 1, "iack1", None), h.itsp);
    let ack = only_to(&out, &h.pbx);
    assert_eq!(ack.header("CSeq"), Some("1 ACK"));
    assert_eq!(ack.uri(), Some(PBX_CONTACT));
    assert!(h.advance(Duration::from_secs(3)).is_empty());

    // Resume from the callee; the PBX's retransmitted 200 gets the same ACK again.
    let out = h.send(
        itsp_request(
            &inv_b,
            Method::Invite,
            2,
            "ire2",
            Some(&itsp_sdp(3, "10.99.2.3", 7100, "sendrecv")),
        ),
        h.itsp,
    );
    let reinv = only_to(&out, &h.pbx);
    assert_eq!(reinv.header("CSeq"), Some("2 INVITE"));
    assert_eq!(sdp_of(&reinv).media()[0].direction, Direction::SendRecv);
    let ok_pbx = reply(
        &reinv,
        200,
        "x",
        PBX_CONTACT,
        Some(&pbx_sdp(2353687639, 6000, "sendrecv")),
    );
    let out = h.send(ok_pbx.clone(), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 200);
    let out = h.send(itsp_request(&inv_b, Method::Ack, 2, "iack2", None), h.itsp);
    let ack = only_to(&out, &h.pbx);
    let out = h.send(ok_pbx, h.pbx);
    assert_eq!(only_to(&out, &h.pbx), ack, "2xx retransmission re-ACKed");
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn error_answer_to_a_reinvite_keeps_the_call_and_its_media() {
    let (mut h, _, ok) = confirmed_call();
    let out = h.send(
        pbx_request(
            &ok,
            Method::Invite,
            2,
            "re2",
            Some(&pbx_sdp(2353687638, 6004, "sendrecv")),
        ),
        h.pbx,
    );
    let reinv = only_to(&out, &h.itsp);
    assert!(renegotiated(&mut h).contains(&addr("10.99.1.2:6004")));
    let out = h.send(reply(&reinv, 488, "itsptag", ITSP_CONTACT, None), h.itsp);
    let refused = one_to(&out, &h.pbx);
    assert_eq!(code_of(&refused), 488);
    assert_eq!(refused.header("CSeq"), Some("2 INVITE"));
    let ack = one_to(&out, &h.itsp);
    assert_eq!(
        ack.method(),
        Some(&Method::Ack),
        "the 488 is ACKed on the ITSP leg"
    );
    // The PBX's streams go back to its previous address.
    let r = renegotiated(&mut h);
    assert!(r.contains(&addr("10.99.1.2:6000")), "{r:?}");
    assert_eq!(active_calls(&h), 1);
    // The PBX's ACK for the 488 is absorbed; a new offer goes through.
    let out = h.send(pbx_request(&ok, Method::Ack, 2, "re2", None), h.pbx);
    assert!(out.is_empty(), "{out:#?}");
    let (reinv, ok3, _) = reinvite_from_pbx(
        &mut h,
        &ok,
        3,
        &pbx_sdp(2353687639, 6000, "sendrecv"),
        &itsp_sdp(2, "10.99.2.2", 7000, "sendrecv"),
    );
    assert_eq!(reinv.header("CSeq"), Some("3 INVITE"));
    assert_eq!(code_of(&ok3), 200);
}

#[test]
fn glare_gets_491_and_a_second_offer_500() {
    let (mut h, inv_b, ok) = confirmed_call();
    let out = h.send(
        pbx_request(
            &ok,
            Method::Invite,
            2,
            "re2",
            Some(&pbx_sdp(2353687638, 6000, "sendonly")),
        ),
        h.pbx,
    );
    let reinv = only_to(&out, &h.itsp);
    // The ITSP's own re-INVITE crosses mediagate's: 491 on that leg.
    let out = h.send(
        itsp_request(
            &inv_b,
            Method::Invite,
            1,
            "ire1",
            Some(&itsp_sdp(2, "10.99.2.2", 7000, "sendonly")),
        ),
        h.itsp,
    );
    let glare = one_to(&out, &h.itsp);
    assert_eq!(code_of(&glare), 491);
    assert!(to_peer(&out, &h.pbx).is_empty());
    // An UPDATE with an offer on that leg too.
    let mut upd = itsp_request(
        &inv_b,
        Method::Other("UPDATE".into()),
        2,
        "iupd",
        Some(&itsp_sdp(2, "10.99.2.2", 7000, "sendrecv")),
    );
    upd.set_header("CSeq", "2 UPDATE".into());
    let out = h.send(upd, h.itsp);
    assert_eq!(code_of(&one_to(&out, &h.itsp)), 491);
    // A second offer from the PBX while its first is pending: 500 with Retry-After.
    let out = h.send(
        pbx_request(
            &ok,
            Method::Invite,
            3,
            "re3",
            Some(&pbx_sdp(2353687639, 6000, "sendrecv")),
        ),
        h.pbx,
    );
    let busy = one_to(&out, &h.pbx);
    assert_eq!(code_of(&busy), 500);
    assert!(busy.header("Retry-After").is_some());
    // The first exchange completes normally.
    let out = h.send(
        reply(
            &reinv,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(2, "10.99.2.2", 7000, "recvonly")),
        ),
        h.itsp,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    let out = h.send(pbx_request(&ok, Method::Ack, 2, "ack2", None), h.pbx);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Ack));
    // and the ITSP's retry after 491 goes through.
    let out = h.send(
        itsp_request(
            &inv_b,
            Method::Invite,
            3,
            "ire3",
            Some(&itsp_sdp(3, "10.99.2.2", 7000, "sendrecv")),
        ),
        h.itsp,
    );
    assert_eq!(only_to(&out, &h.pbx).method(), Some(&Method::Invite));
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn reinvite_without_sdp_takes_the_offer_from_the_200_and_the_answer_from_the_ack() {
    let (mut h, _, ok) = confirmed_call();
    let out = h.send(pbx_request(&ok, Method::Invite, 2, "re2", None), h.pbx);
    let reinv = only_to(&out, &h.itsp);
    assert!(reinv.body.is_empty());
    let out = h.send(
        reply(
            &reinv,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(2, "10.99.2.2", 7002, "sendrecv")),
        ),
        h.itsp,
    );
    let ok2 = only_to(&out, &h.pbx);
    assert_eq!(sdp_of(&ok2).media()[0].rtp.ip().to_string(), "10.99.1.1");
    assert!(renegotiated(&mut h).contains(&addr("10.99.2.2:7002")));
    let ack = pbx_request(
        &ok,
        Method::Ack,
        2,
        "ack2",
        Some(&pbx_sdp(2353687638, 6006, "sendrecv")),
    );
    let out = h.send(ack, h.pbx);
    let ack_b = only_to(&out, &h.itsp);
    assert_eq!(ack_b.header("CSeq"), Some("2 ACK"));
    let answer_b = sdp_of(&ack_b);
    assert_eq!(answer_b.media()[0].rtp.ip().to_string(), "10.99.2.1");
    assert!(renegotiated(&mut h).contains(&addr("10.99.1.2:6006")));
}

#[test]
fn update_with_sdp_in_both_directions() {
    let (mut h, inv_b, ok) = confirmed_call();
    let update = Method::Other("UPDATE".into());
    // From the ITSP.
    let out = h.send(
        itsp_request(
            &inv_b,
            update.clone(),
            1,
            "u1",
            Some(&itsp_sdp(2, "10.99.2.2", 7008, "sendrecv")),
        ),
        h.itsp,
    );
    assert!(to_peer(&out, &h.itsp).is_empty(), "no 100 for a non-INVITE");
    let upd_a = only_to(&out, &h.pbx);
    assert_eq!(upd_a.method(), Some(&update));
    assert_eq!(upd_a.header("CSeq"), Some("1 UPDATE"));
    assert_eq!(sdp_of(&upd_a).media()[0].rtp.ip().to_string(), "10.99.1.1");
    assert!(renegotiated(&mut h).contains(&addr("10.99.2.2:7008")));
    let out = h.send(
        reply(
            &upd_a,
            200,
            "x",
            PBX_CONTACT,
            Some(&pbx_sdp(2353687638, 6008, "sendrecv")),
        ),
        h.pbx,
    );
    let ok_b = only_to(&out, &h.itsp);
    assert_eq!(code_of(&ok_b), 200);
    assert_eq!(ok_b.header("CSeq"), Some("1 UPDATE"));
    assert_eq!(sdp_of(&ok_b).media()[0].rtp.ip().to_string(), "10.99.2.1");
    assert!(renegotiated(&mut h).contains(&addr("10.99.1.2:6008")));
    // From the PBX.
    let out = h.send(
        pbx_request(
            &ok,
            update.clone(),
            2,
            "u2",
            Some(&pbx_sdp(2353687639, 6010, "sendonly")),
        ),
        h.pbx,
    );
    let upd_b = only_to(&out, &h.itsp);
    assert_eq!(upd_b.header("CSeq"), Some("2 UPDATE"));
    assert_eq!(sdp_of(&upd_b).media()[0].direction, Direction::SendOnly);
    let out = h.send(
        reply(
            &upd_b,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(3, "10.99.2.2", 7008, "recvonly")),
        ),
        h.itsp,
    );
    let ok_a = only_to(&out, &h.pbx);
    assert_eq!(sdp_of(&ok_a).media()[0].direction, Direction::RecvOnly);
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn info_is_relayed_end_to_end() {
    let (mut h, inv_b, ok) = confirmed_call();
    let info = Method::Other("INFO".into());
    let mut req = pbx_request(&ok, info.clone(), 2, "i2", None);
    req.push_header("Content-Type", "application/dtmf-relay".into());
    req.body = b"Signal=5\r\nDuration=160\r\n".to_vec();
    let out = h.send(req, h.pbx);
    let info_b = only_to(&out, &h.itsp);
    assert_eq!(info_b.method(), Some(&info));
    assert_eq!(
        info_b.header("Content-Type"),
        Some("application/dtmf-relay")
    );
    assert_eq!(info_b.body, b"Signal=5\r\nDuration=160\r\n");
    assert_eq!(info_b.header("Call-ID"), inv_b.header("Call-ID"));
    let out = h.send(reply(&info_b, 200, "itsptag", ITSP_CONTACT, None), h.itsp);
    let ok_a = only_to(&out, &h.pbx);
    assert_eq!((code_of(&ok_a), ok_a.header("CSeq")), (200, Some("2 INFO")));
    // And from the ITSP, with an error answer relayed back.
    let mut req = itsp_request(&inv_b, info.clone(), 1, "ii1", None);
    req.push_header("Content-Type", "application/dtmf-relay".into());
    req.body = b"Signal=#\r\nDuration=100\r\n".to_vec();
    let out = h.send(req, h.itsp);
    let info_a = only_to(&out, &h.pbx);
    assert_eq!(info_a.body, b"Signal=#\r\nDuration=100\r\n");
    let out = h.send(reply(&info_a, 415, "x", PBX_CONTACT, None), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 415);
    assert_eq!(active_calls(&h), 1);
    // REFER is refused by the trunk's default policy, other in-dialog methods as unsupported.
    let out = h.send(
        pbx_request(&ok, Method::Other("REFER".into()), 3, "r3", None),
        h.pbx,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 403);
    let out = h.send(
        pbx_request(&ok, Method::Other("MESSAGE".into()), 4, "m4", None),
        h.pbx,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 501);
}

#[test]
fn held_calls_use_the_hold_timeout() {
    let config = CONFIG.replace("timeout_s = 30", "timeout_s = 30\nhold_timeout_s = 120");
    let (mut h, _, ok) = confirmed_call_with(&config);
    reinvite_from_pbx(
        &mut h,
        &ok,
        2,
        &pbx_sdp(2353687638, 6000, "sendonly"),
        &itsp_sdp(2, "10.99.2.2", 7000, "recvonly"),
    );
    let byes = |out: &[Transmit]| {
        let mut to: Vec<_> = out
            .iter()
            .filter(|t| t.message.method() == Some(&Method::Bye))
            .map(|t| t.target.remote)
            .collect();
        to.sort();
        to.dedup();
        to.len()
    };
    for _ in 0..60 {
        assert_eq!(
            byes(&h.advance(Duration::from_secs(1))),
            0,
            "held call kept past timeout_s"
        );
    }
    // Resume: the ordinary timeout applies again.
    reinvite_from_pbx(
        &mut h,
        &ok,
        3,
        &pbx_sdp(2353687639, 6000, "sendrecv"),
        &itsp_sdp(3, "10.99.2.2", 7000, "sendrecv"),
    );
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        byes(&out),
        2,
        "resumed call silent beyond timeout_s hung up"
    );

    // A held call silent beyond hold_timeout_s is hung up.
    let (mut h, _, ok) = confirmed_call_with(&config);
    reinvite_from_pbx(
        &mut h,
        &ok,
        2,
        &pbx_sdp(2353687638, 6000, "inactive"),
        &itsp_sdp(2, "10.99.2.2", 7000, "inactive"),
    );
    let mut out = Vec::new();
    for _ in 0..119 {
        out.extend(h.advance(Duration::from_secs(1)));
    }
    assert_eq!(byes(&out), 0);
    for _ in 0..2 {
        out.extend(h.advance(Duration::from_secs(1)));
    }
    assert_eq!(byes(&out), 2);
    assert_eq!(active_calls(&h), 0);
}

#[test]
fn hang_up_during_a_reinvite_acks_the_late_answer_and_forgets_the_call() {
    let (mut h, _, ok) = confirmed_call();
    let out = h.send(
        pbx_request(
            &ok,
            Method::Invite,
            2,
            "re2",
            Some(&pbx_sdp(2353687638, 6000, "sendonly")),
        ),
        h.pbx,
    );
    let reinv = only_to(&out, &h.itsp);
    let out = h.send(pbx_request(&ok, Method::Bye, 3, "bye3", None), h.pbx);
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 200);
    let bye_b = one_to(&out, &h.itsp);
    assert_eq!(bye_b.method(), Some(&Method::Bye));
    assert_eq!(active_calls(&h), 0);
    let out = h.send(reply(&bye_b, 200, "itsptag", ITSP_CONTACT, None), h.itsp);
    assert!(out.is_empty());
    // The re-INVITE is answered after the hang-up: ACKed; the PBX's re-INVITE gets 487.
    let out = h.send(
        reply(
            &reinv,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(2, "10.99.2.2", 7000, "recvonly")),
        ),
        h.itsp,
    );
    assert_eq!(one_to(&out, &h.itsp).method(), Some(&Method::Ack));
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 487);
    h.send(pbx_request(&ok, Method::Ack, 2, "re2", None), h.pbx);
    h.advance(Duration::from_secs(40));
    assert!(h.core.is_idle(), "call and transactions forgotten");
}

/// How the only recorded call ended: (`ended_by`, `end_reason`).
fn ending(h: &mut Harness) -> (String, String) {
    let records = h.core.drain_cdrs();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = serde_json::to_value(&records[0]).unwrap();
    (
        r["ended_by"].as_str().unwrap().to_string(),
        r["end_reason"].as_str().unwrap().to_string(),
    )
}

/// BYE requests in `out`, by where they went.
fn byes_to(out: &[Transmit], to: &Target) -> usize {
    to_peer(out, to)
        .iter()
        .filter(|m| m.method() == Some(&Method::Bye))
        .count()
}

/// RFC 3261 §12.2.1.2: no response at all to a relayed request is a 408; the callee's dialog
/// may be gone, so the call ends: 408 to the PBX, BYE on both legs, ports freed.
#[test]
fn an_unanswered_relayed_request_gets_408_and_ends_the_call() {
    let config = CONFIG.replace("timeout_s = 30", "timeout_s = 300");
    let (mut h, _, ok) = confirmed_call_with(&config);
    let out = h.send(
        pbx_request(
            &ok,
            Method::Invite,
            2,
            "re2",
            Some(&pbx_sdp(2353687638, 6002, "sendrecv")),
        ),
        h.pbx,
    );
    only_to(&out, &h.itsp);
    let mut out = Vec::new();
    for _ in 0..33 {
        out.extend(h.advance(Duration::from_secs(1)));
    }
    // (repeated by the server transaction until the PBX ACKs it)
    let to_pbx: Vec<Message> = to_peer(&out, &h.pbx)
        .into_iter()
        .filter(|m| m.method() != Some(&Method::Bye))
        .collect();
    assert!(!to_pbx.is_empty(), "{out:#?}");
    assert!(to_pbx.iter().all(|m| code_of(m) == 408), "{to_pbx:#?}");
    // (each BYE retransmitted, as nobody answers here)
    assert!(byes_to(&out, &h.pbx) >= 1, "{out:#?}");
    assert!(byes_to(&out, &h.itsp) >= 1, "{out:#?}");
    assert_eq!(active_calls(&h), 0);
    assert!(h.ports_all_free());
    assert_eq!(ending(&mut h), ("callee".into(), "dialog-gone".into()));
}

/// A 481 to a relayed re-INVITE: the callee's dialog is gone, so the PBX gets the 481 and a
/// BYE, the callee none, and the record says so.
#[test]
fn a_481_to_a_relayed_reinvite_ends_the_call() {
    let (mut h, _, ok) = confirmed_call();
    let reinv = pending_reinvite(&mut h, &ok);
    let out = h.send(reply(&reinv, 481, "itsptag", ITSP_CONTACT, None), h.itsp);
    let to_pbx = to_peer(&out, &h.pbx);
    assert_eq!(to_pbx.len(), 2, "{out:#?}");
    assert_eq!(
        (code_of(&to_pbx[0]), to_pbx[0].header("CSeq")),
        (481, Some("2 INVITE"))
    );
    assert_eq!(to_pbx[1].method(), Some(&Method::Bye));
    assert_eq!(byes_to(&out, &h.itsp), 0, "{out:#?}");
    assert_eq!(active_calls(&h), 0);
    assert_eq!(ending(&mut h), ("callee".into(), "dialog-gone".into()));
}

/// A 408 to an INFO relayed from the callee: the caller's dialog may be gone; both legs get
/// BYE and the record names the caller.
#[test]
fn a_408_to_a_relayed_info_ends_the_call() {
    let (mut h, inv_b, _) = confirmed_call();
    let info = itsp_request(&inv_b, Method::Other("INFO".into()), 2, "info2", None);
    let info_a = only_to(&h.send(info, h.itsp), &h.pbx);
    let out = h.send(response_to_request(&info_a, 408), h.pbx);
    let to_itsp = to_peer(&out, &h.itsp);
    assert_eq!(code_of(&to_itsp[0]), 408, "{out:#?}");
    assert_eq!(byes_to(&out, &h.itsp), 1, "{out:#?}");
    assert_eq!(byes_to(&out, &h.pbx), 1, "{out:#?}");
    assert_eq!(active_calls(&h), 0);
    assert_eq!(ending(&mut h), ("caller".into(), "dialog-gone".into()));
}

/// A response from a peer to a request mediagate sent it (no body, no new tag).
fn response_to_request(req: &Message, code: u16) -> Message {
    mediagate::sip::dialog::response_to(req, code, "X", None)
}

/// The PBX re-INVITEs with a hold offer from a new port; returns the re-INVITE the ITSP got.
fn pending_reinvite(h: &mut Harness, ok: &Message) -> Message {
    let offer = pbx_sdp(2353687638, 6004, "sendonly");
    let out = h.send(
        pbx_request(ok, Method::Invite, 2, "re2", Some(&offer)),
        h.pbx,
    );
    let reinv = only_to(&out, &h.itsp);
    assert!(renegotiated(h).contains(&addr("10.99.1.2:6004")));
    reinv
}

/// The ITSP refuses the cancelled re-INVITE with 487: the PBX gets it, its streams go back to
/// where they were, the call stays up.
fn cancelled_reinvite_refused(h: &mut Harness, reinv: &Message) {
    let out = h.send(reply(reinv, 487, "itsptag", ITSP_CONTACT, None), h.itsp);
    let refused = one_to(&out, &h.pbx);
    assert_eq!(code_of(&refused), 487);
    assert_eq!(refused.header("CSeq"), Some("2 INVITE"));
    let r = renegotiated(h);
    assert!(r.contains(&addr("10.99.1.2:6000")), "{r:?}");
    assert_eq!(active_calls(h), 1);
}

#[test]
fn reinvite_provisionals_are_relayed_and_its_cancel_too() {
    let (mut h, _, ok) = confirmed_call();
    let reinv = pending_reinvite(&mut h, &ok);
    let out = h.send(reply(&reinv, 180, "itsptag", ITSP_CONTACT, None), h.itsp);
    let ringing = one_to(&out, &h.pbx);
    assert_eq!(code_of(&ringing), 180);
    assert_eq!(ringing.header("CSeq"), Some("2 INVITE"));
    let out = h.send(pbx_request(&ok, Method::Cancel, 2, "re2", None), h.pbx);
    let cancel_ok = one_to(&out, &h.pbx);
    assert_eq!(
        (code_of(&cancel_ok), cancel_ok.header("CSeq")),
        (200, Some("2 CANCEL"))
    );
    let cancel = one_to(&out, &h.itsp);
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(
        cancel.header("Via"),
        reinv.header("Via"),
        "CANCEL of our re-INVITE"
    );
    cancelled_reinvite_refused(&mut h, &reinv);
}

#[test]
fn cancel_of_a_reinvite_waits_for_its_first_provisional() {
    let (mut h, _, ok) = confirmed_call();
    let reinv = pending_reinvite(&mut h, &ok);
    let out = h.send(pbx_request(&ok, Method::Cancel, 2, "re2", None), h.pbx);
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 200);
    assert!(
        to_peer(&out, &h.itsp).is_empty(),
        "no CANCEL before a provisional"
    );
    let out = h.send(reply(&reinv, 183, "itsptag", ITSP_CONTACT, None), h.itsp);
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 183);
    assert_eq!(one_to(&out, &h.itsp).method(), Some(&Method::Cancel));
    cancelled_reinvite_refused(&mut h, &reinv);
}

#[test]
fn cancel_matching_no_reinvite_gets_481() {
    let (mut h, _, ok) = confirmed_call();
    let out = h.send(pbx_request(&ok, Method::Cancel, 2, "nothing", None), h.pbx);
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 481);
    assert_eq!(active_calls(&h), 1);
}

/// A fax switch as many gateways send it: the re-INVITE's only media line turns from audio into
/// T.38 (`m=image ... udptl t38`) in place. It is anchored on the line's mediagate ports with its
/// T.38 attributes intact, both sides' streams re-learn toward the new ports, and `/status`
/// calls the line `image`.
#[test]
fn a_reinvite_turning_audio_into_t38_in_place_is_anchored() {
    let (mut h, inv_b, ok) = confirmed_call();
    let b_port = sdp_of(&inv_b).media()[0].rtp.port();
    let a_port = sdp_of(&ok).media()[0].rtp.port();
    let t38 = |o: &str, ip: &str, port: u16| {
        format!("v=0\no={o} 2 2 IN IP4 {ip}\ns=-\nc=IN IP4 {ip}\nt=0 0\nm=image {port} udptl t38\na=T38FaxVersion:0\na=T38FaxUdpEC:t38UDPRedundancy\n")
    };
    let (reinv, ok2, _) = reinvite_from_pbx(
        &mut h,
        &ok,
        2,
        &t38("pbx", "10.99.1.2", 6004),
        &t38("callee", "10.99.2.2", 7004),
    );
    for (m, ip, port) in [(&reinv, "10.99.2.1", b_port), (&ok2, "10.99.1.1", a_port)] {
        let text = String::from_utf8(m.body.clone()).unwrap();
        assert!(
            text.contains(&format!("m=image {port} udptl t38\r\n")),
            "{text}"
        );
        assert!(text.contains("a=T38FaxUdpEC:t38UDPRedundancy"), "{text}");
        assert_eq!(
            sdp_of(m).media()[0].rtp,
            format!("{ip}:{port}").parse().unwrap()
        );
    }
    let r = renegotiated(&mut h);
    assert!(
        r.contains(&addr("10.99.1.2:6004")) && r.contains(&addr("10.99.2.2:7004")),
        "{r:?}"
    );
    let st = h.status();
    assert_eq!(
        st["calls"][0]["legs"][0]["streams"][0]["kind"], "image",
        "{st:#}"
    );
    assert_eq!(
        st["calls"][0]["legs"][1]["streams"][0]["kind"], "image",
        "{st:#}"
    );
}

// ---------------------------------------------------------------------------
// Session timers (RFC 4028, `sip/b2bua_timers.rs`)
// ---------------------------------------------------------------------------

/// The lab config with `itsp_keys` on the ITSP trunk and a media timeout longer than the
/// session intervals (no media flows here).
fn timer_config(itsp_keys: &str) -> String {
    let itsp_local = "local = \"udp:10.99.2.1:5060\"\n";
    assert_eq!(CONFIG.matches(itsp_local).count(), 1);
    CONFIG
        .replace(itsp_local, &format!("{itsp_local}{itsp_keys}\n"))
        .replace("timeout_s = 30", "timeout_s = 600")
}

fn requests_of<'a>(out: &'a [Transmit], to: &Target, method: &Method) -> Vec<&'a Message> {
    out.iter()
        .filter(|t| t.target.remote == to.remote && t.message.method() == Some(method))
        .map(|t| &t.message)
        .collect()
}

#[test]
fn session_timer_refreshes_by_reinvite_without_update_and_a_481_ends_the_call() {
    let (mut h, inv_b, _) = confirmed_call_with(&timer_config("session_timer_s = 90"));
    assert_eq!(inv_b.header("Session-Expires"), Some("90"));
    assert_eq!(inv_b.header("Min-SE"), Some("90"));
    // The ITSP's 200 had no Session-Expires and no Allow: mediagate refreshes by re-INVITE at
    // half the interval, with the description it sent before.
    assert!(h.advance(Duration::from_secs(44)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    let reinv = only_to(&out, &h.itsp);
    assert_eq!(reinv.method(), Some(&Method::Invite));
    assert_eq!(reinv.header("CSeq"), Some("2 INVITE"));
    assert_eq!(reinv.header("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(reinv.body, inv_b.body, "the same SDP, the same o= version");
    // An offer from the ITSP while the refresh waits for its answer is glare.
    let glare = itsp_request(
        &inv_b,
        Method::Invite,
        2,
        "g1",
        Some(&itsp_sdp(2, "10.99.2.2", 7002, "sendrecv")),
    );
    let out = h.send(glare, h.itsp);
    assert_eq!(code_of(&one_to(&out, &h.itsp)), 491);
    let out = h.send(
        reply(
            &reinv,
            200,
            "itsptag",
            ITSP_CONTACT,
            Some(&itsp_sdp(1, "10.99.2.2", 7000, "sendrecv")),
        ),
        h.itsp,
    );
    let ack = only_to(&out, &h.itsp);
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.header("CSeq"), Some("2 ACK"));
    assert!(
        to_peer(&out, &h.pbx).is_empty(),
        "the refresh stays on its leg"
    );
    // The next refresh is refused with 481: the session is gone, both legs get BYE.
    let out = h.advance(Duration::from_secs(45));
    let reinv = only_to(&out, &h.itsp);
    assert_eq!(reinv.header("CSeq"), Some("3 INVITE"));
    let out = h.send(reply(&reinv, 481, "itsptag", ITSP_CONTACT, None), h.itsp);
    assert_eq!(
        requests_of(&out, &h.itsp, &Method::Bye).len(),
        1,
        "{out:#?}"
    );
    assert_eq!(requests_of(&out, &h.pbx, &Method::Bye).len(), 1, "{out:#?}");
    let cdr = h.core.drain_cdrs().pop().expect("a record");
    assert_eq!(cdr.ending.reason(), "session-timer");
}

#[test]
fn a_bodiless_update_refreshes_its_leg_only_and_a_silent_refresher_ends_the_call() {
    let (mut h, _, ok) = confirmed_call_with(&timer_config(""));
    let update = Method::Other("UPDATE".into());
    // Below Min-SE: 422 with Min-SE.
    let mut small = pbx_request(&ok, update.clone(), 2, "se1", None);
    small.push_header("Session-Expires", "60".into());
    let out = h.send(small, h.pbx);
    let r = only_to(&out, &h.pbx);
    assert_eq!((code_of(&r), r.header("Min-SE")), (422, Some("90")));
    // A refresh asking for 120 s with the PBX refreshing: answered here, not relayed.
    let mut refresh = pbx_request(&ok, update.clone(), 3, "se2", None);
    refresh.push_header("Session-Expires", "120;refresher=uac".into());
    refresh.push_header("Supported", "timer".into());
    let out = h.send(refresh, h.pbx);
    assert!(to_peer(&out, &h.itsp).is_empty(), "relayed: {out:#?}");
    let r = only_to(&out, &h.pbx);
    assert_eq!(code_of(&r), 200);
    assert_eq!(r.header("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(r.header("Require"), Some("timer"));
    // No refresh comes: at 120 - 32 s both legs get BYE.
    assert!(h.advance(Duration::from_secs(87)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        requests_of(&out, &h.itsp, &Method::Bye).len(),
        1,
        "{out:#?}"
    );
    assert_eq!(requests_of(&out, &h.pbx, &Method::Bye).len(), 1, "{out:#?}");
    assert_eq!(active_calls(&h), 0);
}

// ---------------------------------------------------------------------------
// REFER (`sip/b2bua_refer.rs`)
// ---------------------------------------------------------------------------

#[test]
fn a_passed_refer_is_relayed_rehosted_and_its_notifies_come_back() {
    let pbx_local = "local = \"udp:10.99.1.1:5060\"\n";
    let config = CONFIG.replacen(pbx_local, &format!("{pbx_local}refer = \"pass\"\n"), 1);
    let (mut h, inv_b, ok) = confirmed_call_with(&config);
    // A NOTIFY with no transfer behind it: no such subscription.
    let out = h.send(
        pbx_request(&ok, Method::Other("NOTIFY".into()), 2, "n0", None),
        h.pbx,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 481);
    let mut refer = pbx_request(&ok, Method::Other("REFER".into()), 3, "r1", None);
    refer.push_header("Refer-To", "<sip:200@10.99.1.1>".into());
    refer.push_header("Referred-By", "<sip:100@10.99.1.2:5060>".into());
    let out = h.send(refer, h.pbx); // `assert_hidden` checks nothing of the PBX side leaks
    let refer_b = only_to(&out, &h.itsp);
    assert_eq!(refer_b.method(), Some(&Method::Other("REFER".into())));
    assert_eq!(refer_b.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(refer_b.header("Refer-To"), Some("<sip:200@10.99.2.1:5060>"));
    assert_eq!(
        refer_b.header("Referred-By"),
        Some("<sip:100@10.99.2.1:5060>")
    );
    let out = h.send(reply(&refer_b, 202, "itsptag", ITSP_CONTACT, None), h.itsp);
    let accepted = only_to(&out, &h.pbx);
    assert_eq!(
        (code_of(&accepted), accepted.header("CSeq")),
        (202, Some("3 REFER"))
    );
    // The transferee's progress comes back to the transferor.
    let mut notify = itsp_request(&inv_b, Method::Other("NOTIFY".into()), 1, "n1", None);
    notify.push_header("Event", "refer".into());
    notify.push_header("Subscription-State", "terminated;reason=noresource".into());
    notify.push_header("Content-Type", "message/sipfrag;version=2.0".into());
    notify.body = b"SIP/2.0 200 OK\r\n".to_vec();
    let out = h.send(notify, h.itsp);
    let notify_a = only_to(&out, &h.pbx);
    assert_eq!(notify_a.header("Event"), Some("refer"));
    assert_eq!(
        notify_a.header("Subscription-State"),
        Some("terminated;reason=noresource")
    );
    assert_eq!(notify_a.body, b"SIP/2.0 200 OK\r\n");
    let out = h.send(reply(&notify_a, 200, "x", PBX_CONTACT, None), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 200);
    // A REFER without Refer-To is malformed.
    let out = h.send(
        pbx_request(&ok, Method::Other("REFER".into()), 4, "r2", None),
        h.pbx,
    );
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 400);
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn a_refer_from_the_itsp_side_is_relayed_to_the_pbx_rehosted() {
    // The other direction: the transferor is behind the ITSP trunk, which passes REFER.
    let itsp_local = "local = \"udp:10.99.2.1:5060\"\n";
    let config = CONFIG.replacen(itsp_local, &format!("{itsp_local}refer = \"pass\"\n"), 1);
    let (mut h, inv_b, ok) = confirmed_call_with(&config);
    let mut refer = itsp_request(&inv_b, Method::Other("REFER".into()), 2, "r1", None);
    refer.push_header("Refer-To", "<sip:300@10.99.2.1>".into());
    refer.push_header("Referred-By", "<sip:+4930555@10.99.2.2:5060>".into());
    let out = h.send(refer, h.itsp);
    let refer_a = only_to(&out, &h.pbx);
    assert_eq!(refer_a.method(), Some(&Method::Other("REFER".into())));
    assert_eq!(refer_a.header("Call-ID"), Some("pbx-call-1"));
    assert_eq!(refer_a.header("Refer-To"), Some("<sip:300@10.99.1.1:5060>"));
    assert_eq!(
        refer_a.header("Referred-By"),
        Some("<sip:+4930555@10.99.1.1:5060>")
    );
    let out = h.send(reply(&refer_a, 202, "x", PBX_CONTACT, None), h.pbx);
    let accepted = only_to(&out, &h.itsp);
    assert_eq!(
        (code_of(&accepted), accepted.header("CSeq")),
        (202, Some("2 REFER"))
    );
    // The transferee (the PBX side) reports progress back to the ITSP.
    let mut notify = pbx_request(&ok, Method::Other("NOTIFY".into()), 2, "n1", None);
    notify.push_header("Event", "refer".into());
    notify.push_header("Subscription-State", "terminated;reason=noresource".into());
    notify.push_header("Content-Type", "message/sipfrag;version=2.0".into());
    notify.body = b"SIP/2.0 200 OK\r\n".to_vec();
    let out = h.send(notify, h.pbx);
    let notify_b = only_to(&out, &h.itsp);
    assert_eq!(notify_b.header("Event"), Some("refer"));
    assert_eq!(notify_b.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(notify_b.body, b"SIP/2.0 200 OK\r\n");
    let out = h.send(reply(&notify_b, 200, "itsptag", ITSP_CONTACT, None), h.itsp);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    assert_eq!(active_calls(&h), 1);
}

#[test]
fn session_interval_too_small_both_ways() {
    let mut h = Harness::with_config(&timer_config("session_timer_s = 90"));
    // A caller asking for less than Min-SE: 422 with Min-SE, no call.
    let mut small = parse(
        &INVITE
            .replace("z9hG4bK-pbx-1", "z9hG4bK-pbx-small")
            .replace("pbx-call-1", "pbx-call-small"),
    );
    small.push_header("Session-Expires", "30".into());
    let out = h.send(small, h.pbx);
    let r = only_to(&out, &h.pbx);
    assert_eq!((code_of(&r), r.header("Min-SE")), (422, Some("90")));
    assert_eq!(active_calls(&h), 0);
    // A trunk asking for more: the INVITE again, once, with its Min-SE.
    let out = h.send(parse(INVITE), h.pbx);
    let inv_b = only_to(&out, &h.itsp);
    let mut too_small = reply(&inv_b, 422, "itsptag", ITSP_CONTACT, None);
    too_small.push_header("Min-SE", "1800".into());
    let out = h.send(too_small, h.itsp);
    let invites = requests_of(&out, &h.itsp, &Method::Invite);
    assert_eq!(invites.len(), 1, "{out:#?}");
    let again = invites[0].clone();
    assert_eq!(again.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(again.header("CSeq"), Some("2 INVITE"));
    assert_eq!(again.header("Session-Expires"), Some("1800"));
    assert_eq!(again.header("Min-SE"), Some("1800"));
    assert_eq!(again.body, inv_b.body);
    let mut still = reply(&again, 422, "itsptag", ITSP_CONTACT, None);
    still.push_header("Min-SE", "3600".into());
    let out = h.send(still, h.itsp);
    assert!(
        requests_of(&out, &h.itsp, &Method::Invite).is_empty(),
        "{out:#?}"
    );
    assert_eq!(code_of(&one_to(&out, &h.pbx)), 422);
    assert_eq!(active_calls(&h), 0);
}

#[test]
fn a_relayed_reinvite_is_forgotten_64_t1_after_its_ack() {
    // Every offer holds the call, so that 40 s without media do not end it (hold timeout).
    let (mut h, _inv_b, ok) = confirmed_call();
    let answer = itsp_sdp(2, "10.99.2.2", 7000, "recvonly");
    let (reinv, _ok2, ack) = reinvite_from_pbx(
        &mut h,
        &ok,
        2,
        &pbx_sdp(2353687638, 6002, "sendonly"),
        &answer,
    );
    let ok_b = reply(&reinv, 200, "itsptag", ITSP_CONTACT, Some(&answer));
    // Within 64×T1 a retransmitted 2xx gets the same ACK again.
    let out = h.send(ok_b.clone(), h.itsp);
    assert_eq!(only_to(&out, &h.itsp).header("CSeq"), ack.header("CSeq"));
    reinvite_from_pbx(
        &mut h,
        &ok,
        3,
        &pbx_sdp(2353687639, 6002, "sendonly"),
        &itsp_sdp(3, "10.99.2.2", 7000, "recvonly"),
    );
    assert_eq!(h.core.counters().relayed, 2, "both re-INVITEs remembered");
    // The next re-INVITE, 40 s after their ACKs, drops their state.
    h.advance(Duration::from_secs(40));
    reinvite_from_pbx(
        &mut h,
        &ok,
        4,
        &pbx_sdp(2353687640, 6002, "sendonly"),
        &itsp_sdp(4, "10.99.2.2", 7000, "recvonly"),
    );
    assert_eq!(
        h.core.counters().relayed,
        1,
        "only the new one: the others were ACKed 40 s ago"
    );
}
