//! The B2BUA state machine driven message by message with a virtual clock: what each side
//! receives, topology hiding, every ending path releasing its ports.

mod sansio;

use std::sync::Arc;
use std::time::Duration;

use mediagate::config;
use mediagate::media::Command;
use mediagate::sip::b2bua::B2bua;
use mediagate::sip::header;
use mediagate::sip::message::{Message, Method};
use mediagate::sip::transaction::Transmit;
use sansio::{
    ack_from_pbx, answer, answered_call, bye_from_pbx, code_of, only_to, parse, target, Harness,
    ANSWER_SDP, INVITE, LAB as CONFIG,
};

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

    let bye = bye_from_pbx(&ok);
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

    // What mediagate cannot do is refused with what it would take (RFC 3261 §8.2.2.3, §8.2.3).
    let unmet = |branch: &str, header: (&str, &str), body: Option<&[u8]>| {
        let mut inv = parse(INVITE);
        inv.set_header("Via", format!("SIP/2.0/UDP 10.99.1.2:5060;branch={branch}"));
        inv.set_header(header.0, header.1.into());
        if let Some(body) = body {
            inv.body = body.to_vec();
        }
        inv
    };
    let out = h.send(unmet("z9hG4bK-5", ("Require", "timer, fancy"), None), h.pbx);
    let r = only_to(&out, &h.pbx);
    assert_eq!((code_of(&r), r.header("Unsupported")), (420, Some("fancy")));
    let out = h.send(
        unmet(
            "z9hG4bK-6",
            ("Content-Type", "application/unknownformat"),
            Some(b"<audio/>"),
        ),
        h.pbx,
    );
    let r = only_to(&out, &h.pbx);
    assert_eq!(
        (code_of(&r), r.header("Accept")),
        (415, Some("application/sdp"))
    );
    let out = h.send(unmet("z9hG4bK-7", ("Accept", "text/plain"), None), h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 406);

    assert_eq!(h.status()["active_calls"], 0);
    assert!(h.ports_all_free());
    let media: Vec<Command> = h.core.drain_media_commands();
    assert!(media.is_empty(), "a refused call touched the data plane");

    // The INVITEs refused from a trunk peer are recorded, as calls mediagate could not connect
    // that reached no trunk; the stranger's 403 and the malformed request (400) are not.
    let records = cdrs(&mut h);
    let endings: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["final_code"].as_u64(),
                r["ended_by"].as_str(),
                r["end_reason"].as_str(),
            )
        })
        .collect();
    let failed = |code| (Some(code), Some("mediagate"), Some("failed"));
    assert_eq!(
        endings,
        [
            failed(404),
            failed(488),
            failed(483),
            failed(420),
            failed(415),
            failed(406)
        ]
    );
    for r in &records {
        assert_eq!(r["trunk_in"], "pbx", "{r}");
        assert!(
            r["trunk_out"].is_null()
                && r["called_out"].is_null()
                && r["answer_time"].is_null()
                && r["attempts"] == serde_json::json!([]),
            "{r}"
        );
    }
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
    let records = cdrs(&mut h);
    assert_eq!(records.len(), 1, "the refused call only: {records:?}");
    assert_eq!(
        (
            &records[0]["sip_call_id"],
            &records[0]["final_code"],
            &records[0]["end_reason"]
        ),
        (
            &serde_json::json!("pbx-call-2"),
            &serde_json::json!(503),
            &serde_json::json!("failed")
        )
    );
}

// ---- trunks: peers, failover, limits, health (issue: trunks as operators run them) ----

/// The lab config with the ITSP trunk's `peers` line replaced by `itsp` (more keys may follow
/// on new lines), and `extra` appended.
fn lab_with(itsp: &str, extra: &str) -> Harness {
    let text = CONFIG.replace("peers = [\"udp:10.99.2.2:5060\"]", itsp) + extra;
    let mut h = Harness::new();
    h.core = B2bua::new(Arc::new(config::parse("lab.toml", &text).unwrap()));
    h
}

const TWO_PEERS: &str = "peers = [\"udp:10.99.2.2:5060\", \"udp:10.99.2.3:5060\"]";

/// The caller's INVITE number `n` (own branch and Call-ID).
fn invite_n(n: u32) -> Message {
    let mut inv = parse(INVITE);
    inv.set_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-n{n}"),
    );
    inv.set_header("Call-ID", format!("pbx-call-n{n}"));
    inv
}

/// The INVITEs in `out` and where they went.
fn invites(out: &[Transmit]) -> Vec<(std::net::SocketAddr, Message)> {
    out.iter()
        .filter(|t| t.message.method() == Some(&Method::Invite))
        .map(|t| (t.target.remote, t.message.clone()))
        .collect()
}

/// Final response codes the PBX received in `out`.
fn finals_to_pbx(h: &Harness, out: &[Transmit]) -> Vec<u16> {
    out.iter()
        .filter(|t| t.target.remote == h.pbx.remote)
        .filter_map(|t| t.message.code())
        .filter(|c| *c >= 200)
        .collect()
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

#[test]
fn silent_peer_is_given_up_after_invite_timeout_and_its_late_answer_hung_up() {
    let mut h = lab_with(&format!("{TWO_PEERS}\ninvite_timeout_s = 2"), "");
    let out = h.send(parse(INVITE), h.pbx);
    let first = invites(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, addr("10.99.2.2:5060"));
    let out = h.advance(Duration::from_millis(1900));
    assert!(
        invites(&out)
            .iter()
            .all(|(to, _)| *to == addr("10.99.2.2:5060")),
        "retransmits only"
    );
    let out = h.advance(Duration::from_millis(100));
    let second: Vec<_> = invites(&out)
        .into_iter()
        .filter(|(to, _)| *to == addr("10.99.2.3:5060"))
        .collect();
    assert_eq!(second.len(), 1, "failed over to the second peer: {out:#?}");
    let out = h.send(answer(&second[0].1, 200, "b2", Some(ANSWER_SDP)), h.itsp);
    assert_eq!(finals_to_pbx(&h, &out), vec![200]);
    // The first peer wakes up and answers: it is ACKed and hung up, the caller sees nothing.
    let late = target("10.99.2.2:5060", "10.99.2.1:5060");
    let out = h.send(answer(&first[0].1, 200, "late", Some(ANSWER_SDP)), late);
    let methods: Vec<_> = out
        .iter()
        .filter(|t| t.target.remote == late.remote)
        .filter_map(|t| t.message.method().cloned())
        .collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(finals_to_pbx(&h, &out).is_empty());
}

/// A peer given up on that never answers leaves nothing behind once its INVITE transaction
/// ends (Timer B), and the call failed over meanwhile keeps only its own two dialogs.
#[test]
fn a_peer_that_never_answers_leaves_no_dialog_behind() {
    let mut h = lab_with(&format!("{TWO_PEERS}\ninvite_timeout_s = 2"), "");
    let out = h.send(parse(INVITE), h.pbx);
    assert_eq!(invites(&out).len(), 1);
    let out = h.advance(Duration::from_secs(2));
    let second = invites(&out)
        .into_iter()
        .find(|(to, _)| *to == addr("10.99.2.3:5060"))
        .expect("failed over to the second peer");
    h.send(answer(&second.1, 200, "b2", Some(ANSWER_SDP)), h.itsp);
    assert_eq!(
        h.core.counters().dialogs,
        3,
        "the call's two and the abandoned one"
    );
    h.advance(Duration::from_secs(33));
    assert_eq!(
        h.core.counters().dialogs,
        2,
        "Timer B ended the abandoned INVITE"
    );
}

#[test]
fn failover_walks_peers_then_trunks_and_the_caller_sees_one_answer() {
    let extra = "\n[[trunk]]\nname = \"backup\"\nkind = \"itsp\"\npeers = [\"udp:10.99.2.4:5060\"]\nlocal = \"udp:10.99.2.1:5060\"\n";
    let mut h = lab_with(TWO_PEERS, extra);
    // Route the PBX's calls to itsp, then backup.
    let text = CONFIG.replace("peers = [\"udp:10.99.2.2:5060\"]", TWO_PEERS) + extra;
    let text = text.replacen("to = [\"itsp\"]", "to = [\"itsp\", \"backup\"]", 1);
    h.core = B2bua::new(Arc::new(config::parse("lab.toml", &text).unwrap()));
    let mut out = h.send(parse(INVITE), h.pbx);
    let mut tried = Vec::new();
    for code in [503, 500, 486] {
        let (to, inv) = invites(&out).pop().expect("an INVITE");
        tried.push(to);
        let from = target(&to.to_string(), "10.99.2.1:5060");
        let step = h.send(answer(&inv, code, "b", None), from);
        if code != 486 {
            assert!(
                finals_to_pbx(&h, &step).is_empty(),
                "no answer to the caller yet"
            );
        } else {
            assert_eq!(
                finals_to_pbx(&h, &step),
                vec![486],
                "486 is not a failover code"
            );
        }
        out = step;
    }
    assert_eq!(
        tried,
        vec![
            addr("10.99.2.2:5060"),
            addr("10.99.2.3:5060"),
            addr("10.99.2.4:5060")
        ]
    );
    assert!(h.ports_all_free());
    assert_eq!(h.status()["trunks"][1]["active_calls"], 0);
}

#[test]
fn round_robin_and_weighted_spread_new_calls() {
    for (keys, want) in [
        ("strategy = \"round-robin\"", vec![5, 5]),
        ("strategy = \"weighted\"\nweights = [4, 1]", vec![8, 2]),
        ("", vec![10, 0]),
    ] {
        let mut h = lab_with(&format!("{TWO_PEERS}\n{keys}"), "");
        let mut counts = vec![0; 2];
        for n in 0..10 {
            let out = h.send(invite_n(n), h.pbx);
            let (to, _) = invites(&out).pop().unwrap();
            counts[usize::from(to == addr("10.99.2.3:5060"))] += 1;
        }
        assert_eq!(counts, want, "{keys}");
    }
}

/// Runs `n` probe rounds at the trunk's interval; `answers(peer)` says which peers answer 200.
fn probe_rounds(h: &mut Harness, n: u32, interval: Duration, answers: impl Fn(&str) -> bool) {
    for _ in 0..n {
        let out = h.advance(interval);
        for t in out
            .iter()
            .filter(|t| t.message.method() == Some(&Method::Options))
        {
            let peer = t.target.remote.to_string();
            if answers(&peer) {
                let from = target(&peer, "10.99.2.1:5060");
                h.send(answer(&t.message, 200, "o", None), from);
            }
        }
    }
    h.advance(Duration::from_secs(3));
}

#[test]
fn options_probes_take_a_silent_peer_down_and_back_up() {
    let keys = "options_interval_s = 10\noptions_timeout_s = 2\ndown_after = 2\nup_after = 2";
    let mut h = lab_with(&format!("{TWO_PEERS}\n{keys}"), "");
    let peers = |h: &Harness| -> Vec<String> {
        h.status()["trunks"][1]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["state"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(peers(&h), vec!["unprobed", "unprobed"]);
    let interval = Duration::from_secs(10);
    probe_rounds(&mut h, 3, interval, |p| p == "10.99.2.3:5060");
    assert_eq!(peers(&h), vec!["down", "up"]);
    let st = h.status();
    assert!(st["trunks"][1]["peers"][1]["rtt_ms"].as_f64().is_some());
    assert!(st["trunks"][1]["peers"][0]["since"].as_str().is_some());
    // New calls skip the down peer even though it comes first.
    let out = h.send(parse(INVITE), h.pbx);
    assert_eq!(invites(&out)[0].0, addr("10.99.2.3:5060"));
    // It answers again: up after two successes.
    probe_rounds(&mut h, 2, interval, |_| true);
    assert_eq!(peers(&h), vec!["up", "up"]);
    // Every peer down: the trunk is skipped and the caller gets 503.
    probe_rounds(&mut h, 2, interval, |_| false);
    assert_eq!(peers(&h), vec!["down", "down"]);
    let out = h.send(invite_n(9), h.pbx);
    assert_eq!(finals_to_pbx(&h, &out), vec![503]);
}

#[test]
fn trunk_call_limit_and_drain_refuse_with_503_and_release_slots() {
    let mut h = lab_with("peers = [\"udp:10.99.2.2:5060\"]\nmax_calls = 1", "");
    let out = h.send(invite_n(1), h.pbx);
    let (_, inv1) = invites(&out).pop().unwrap();
    let out = h.send(invite_n(2), h.pbx);
    let refused = only_to(&out, &h.pbx);
    assert_eq!(code_of(&refused), 503);
    assert_eq!(refused.header("Retry-After"), Some("5"));
    assert_eq!(h.status()["trunks"][1]["active_calls"], 1);
    // The first call fails: its slot is free again.
    h.send(answer(&inv1, 486, "b", None), h.itsp);
    let out = h.send(invite_n(3), h.pbx);
    let (_, inv3) = invites(&out).pop().expect("slot free again");
    // Draining stops new calls to the trunk; the call up is untouched.
    h.core.set_draining("itsp", true).unwrap();
    assert!(h.core.set_draining("nope", true).is_err());
    assert_eq!(h.status()["trunks"][1]["draining"], true);
    let out = h.send(invite_n(4), h.pbx);
    assert_eq!(finals_to_pbx(&h, &out), vec![503]);
    assert_eq!(h.status()["active_calls"], 1);
    h.core.set_draining("itsp", false).unwrap();
    h.send(answer(&inv3, 486, "b", None), h.itsp);
    let out = h.send(invite_n(5), h.pbx);
    assert!(finals_to_pbx(&h, &out).is_empty());
}

#[test]
fn calls_per_second_limit() {
    let text = CONFIG.replace("max_calls = 100", "max_calls = 100\nmax_cps = 2");
    let mut h = Harness::new();
    h.core = B2bua::new(Arc::new(config::parse("x", &text).unwrap()));
    let codes: Vec<Vec<u16>> = (0..3)
        .map(|n| {
            let out = h.send(invite_n(n), h.pbx);
            finals_to_pbx(&h, &out)
        })
        .collect();
    assert_eq!(codes, vec![vec![], vec![], vec![503]]);
    h.advance(Duration::from_millis(500));
    let out = h.send(invite_n(3), h.pbx);
    assert!(
        finals_to_pbx(&h, &out).is_empty(),
        "one token back after half a second"
    );
}

#[test]
fn max_duration_hangs_up_both_legs() {
    // max_duration_s below the lab's 30 s media timeout, so that it is what ends the call.
    let mut h = lab_with("peers = [\"udp:10.99.2.2:5060\"]\nmax_duration_s = 20", "");
    let out = h.send(parse(INVITE), h.pbx);
    let (_, inv) = invites(&out).pop().unwrap();
    let out = h.send(answer(&inv, 200, "b1", Some(ANSWER_SDP)), h.itsp);
    let ok = only_to(&out, &h.pbx);
    h.send(ack_from_pbx(&ok), h.pbx);
    let byes = |out: &[Transmit]| -> Vec<std::net::SocketAddr> {
        out.iter()
            .filter(|t| t.message.method() == Some(&Method::Bye))
            .map(|t| t.target.remote)
            .collect()
    };
    let out = h.advance(Duration::from_millis(19_900));
    assert!(byes(&out).is_empty());
    let out = h.advance(Duration::from_millis(100));
    assert_eq!(byes(&out), vec![h.pbx.remote, h.itsp.remote]);
    assert!(h.ports_all_free());
}

#[test]
fn redirects_are_followed_passed_or_rejected_as_configured() {
    let redirect = |inv: &Message| {
        let mut r = answer(inv, 302, "r", None);
        r.remove_headers("Contact");
        r.push_header("Contact", "<sip:+4930999@10.99.2.9:5070>".into());
        r
    };
    let mut h = lab_with(
        "peers = [\"udp:10.99.2.2:5060\"]\nredirect = \"follow\"",
        "",
    );
    let out = h.send(parse(INVITE), h.pbx);
    let (_, inv) = invites(&out).pop().unwrap();
    let out = h.send(redirect(&inv), h.itsp);
    let (to, next) = invites(&out).pop().expect("followed");
    assert_eq!(to, addr("10.99.2.9:5070"));
    assert_eq!(next.uri(), Some("sip:+4930999@10.99.2.9:5070"));
    assert!(finals_to_pbx(&h, &out).is_empty());

    let mut h = lab_with("peers = [\"udp:10.99.2.2:5060\"]\nredirect = \"pass\"", "");
    let out = h.send(parse(INVITE), h.pbx);
    let (_, inv) = invites(&out).pop().unwrap();
    let out = h.send(redirect(&inv), h.itsp);
    let to_pbx = only_to(&out, &h.pbx);
    assert_eq!(code_of(&to_pbx), 302);
    assert_eq!(
        to_pbx.header("Contact"),
        Some("<sip:+4930999@10.99.2.9:5070>")
    );

    let mut h = lab_with("peers = [\"udp:10.99.2.2:5060\"]", "");
    let out = h.send(parse(INVITE), h.pbx);
    let (_, inv) = invites(&out).pop().unwrap();
    let out = h.send(redirect(&inv), h.itsp);
    assert_eq!(finals_to_pbx(&h, &out), vec![480], "reject is the default");
    assert!(h.ports_all_free());
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

// ---- call detail records and emergency calls past the limits ----

/// The records of calls that ended, as the JSON lines the CDR file gets.
fn cdrs(h: &mut Harness) -> Vec<serde_json::Value> {
    h.core
        .drain_cdrs()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

#[test]
fn every_ending_writes_one_record() {
    // Answered, then the caller hangs up.
    let (mut h, inv_b, ok) = answered_call();
    assert!(cdrs(&mut h).is_empty(), "no record while the call is up");
    h.send(ack_from_pbx(&ok), h.pbx);
    let bye = bye_from_pbx(&ok);
    h.send(bye, h.pbx);
    let records = cdrs(&mut h);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["sip_call_id"], "pbx-call-1");
    assert_eq!(
        (r["trunk_in"].as_str(), r["trunk_out"].as_str()),
        (Some("pbx"), Some("itsp"))
    );
    assert_eq!(
        (r["called_in"].as_str(), r["calling_in"].as_str()),
        (Some("+4930123"), Some("100"))
    );
    assert_eq!(
        (
            r["final_code"].as_u64(),
            r["ended_by"].as_str(),
            r["end_reason"].as_str()
        ),
        (Some(200), Some("caller"), Some("bye"))
    );
    assert!(
        r["answer_time"].is_string() && r["duration_s"].is_number(),
        "{r}"
    );
    assert_eq!(
        r["attempts"],
        serde_json::json!([{"trunk": "itsp", "peer": "udp:10.99.2.2:5060", "code": 200}])
    );
    let _ = inv_b;

    // Failover through two peers, both refusing: one record with both attempts.
    let mut h = lab_with(TWO_PEERS, "");
    let out = h.send(parse(INVITE), h.pbx);
    let (_, first) = invites(&out).pop().unwrap();
    let out = h.send(answer(&first, 503, "x", None), h.itsp);
    let (to, second) = invites(&out).pop().unwrap();
    h.send(
        answer(&second, 404, "y", None),
        target(&to.to_string(), "10.99.2.1:5060"),
    );
    let records = cdrs(&mut h);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r["final_code"].as_u64(), r["ended_by"].as_str()),
        (Some(404), Some("callee"))
    );
    assert!(r["answer_time"].is_null() && r["duration_s"].is_null());
    let codes: Vec<_> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].clone())
        .collect();
    assert_eq!(codes, vec![serde_json::json!(503), serde_json::json!(404)]);

    // A silent peer: the attempt is a timeout and mediagate ends the call.
    let mut h = lab_with("peers = [\"udp:10.99.2.2:5060\"]\ninvite_timeout_s = 1", "");
    h.send(parse(INVITE), h.pbx);
    h.advance(Duration::from_secs(1));
    let records = cdrs(&mut h);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["attempts"][0]["code"], "timeout");
    assert_eq!(
        (
            records[0]["final_code"].as_u64(),
            records[0]["ended_by"].as_str()
        ),
        (Some(408), Some("mediagate"))
    );
}

#[test]
fn emergency_calls_pass_a_full_or_draining_trunk() {
    let text = include_str!("data/routing.toml")
        .replace("name = \"itsp\"", "name = \"itsp\"\nmax_calls = 1")
        .replace("to = [\"itsp\", \"pbx\"]", "to = [\"itsp\"]");
    let mut h = Harness::new();
    h.core = B2bua::new(Arc::new(config::parse("routing.toml", &text).unwrap()));
    let out = h.send(invite_n(1), h.pbx);
    assert_eq!(invites(&out).len(), 1, "first call takes the only slot");
    let out = h.send(invite_n(2), h.pbx);
    assert_eq!(finals_to_pbx(&h, &out), vec![503]);
    let mut emergency = invite_n(3);
    emergency.start = mediagate::sip::message::StartLine::Request {
        method: Method::Invite,
        uri: "sip:112@10.99.1.1:5060".into(),
    };
    let out = h.send(emergency.clone(), h.pbx);
    assert_eq!(
        invites(&out).len(),
        1,
        "an emergency call passes the full trunk: {out:#?}"
    );
    h.core.set_draining("itsp", true).unwrap();
    let mut again = emergency;
    again.set_header("Via", "SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-e2".into());
    again.set_header("Call-ID", "pbx-call-e2".into());
    let out = h.send(again, h.pbx);
    assert_eq!(invites(&out).len(), 1, "and a draining one");
}

#[test]
fn server_header_toward_callers_follows_the_trunk_policy() {
    // The Server headers of a relayed 180 and of mediagate's own 404 to the PBX.
    let pbx_headers = |policy: &str| {
        let text = CONFIG.replace(
            "local = \"udp:10.99.1.1:5060\"",
            &format!("local = \"udp:10.99.1.1:5060\"\nheaders = {{ {policy} }}"),
        );
        let mut h = Harness::new();
        h.core = B2bua::new(Arc::new(config::parse("lab.toml", &text).unwrap()));
        let out = h.send(parse(INVITE), h.pbx);
        let inv_b = only_to(&out, &h.itsp);
        let mut ringing = answer(&inv_b, 180, "b1", None);
        ringing.set_header("Server", "itsp-switch/2.1".into());
        let out = h.send(ringing, h.itsp);
        let ringing = only_to(&out, &h.pbx);
        let mut no_route = invite_n(7);
        no_route.start = mediagate::sip::message::StartLine::Request {
            method: Method::Invite,
            uri: "sip:alice@10.99.1.1".into(),
        };
        let out = h.send(no_route, h.pbx);
        let refused = only_to(&out, &h.pbx);
        assert_eq!(code_of(&refused), 404);
        (
            ringing.header("Server").map(str::to_string),
            refused.header("Server").map(str::to_string),
        )
    };
    let ours = Some(mediagate::sip::dialog::PRODUCT.to_string());
    assert_eq!(
        pbx_headers("pass = []"),
        (ours.clone(), ours.clone()),
        "default"
    );
    assert_eq!(pbx_headers("strip = [\"Server\"]"), (None, None));
    let acme = Some("acme-sbc".to_string());
    assert_eq!(
        pbx_headers("set = { \"Server\" = \"acme-sbc\" }"),
        (acme.clone(), acme)
    );
    assert_eq!(
        pbx_headers("pass = [\"Server\"]"),
        (Some("itsp-switch/2.1".to_string()), ours),
        "pass relays the callee's; mediagate's own answers keep its token"
    );
}

#[test]
fn an_offer_without_a_codec_the_trunk_allows_gets_488_and_never_reaches_it() {
    let text = include_str!("data/routing.toml").replace(
        "codecs = [\"PCMA\", \"telephone-event\"]",
        "codecs = [\"G729\"]",
    );
    let mut h = Harness::with_config(&text);
    let out = h.send(invite_from("+4930123", "100", 6), h.pbx);
    assert_eq!(finals_to_pbx(&h, &out), vec![488]);
    assert!(invites(&out).is_empty(), "{out:#?}");
    assert!(h.ports_all_free());
}

/// A trunk whose peer is a DNS name runs on the targets its resolver found; a configuration
/// reload (whose file has only the name) keeps them, so calls still reach the trunk.
#[test]
fn a_reload_keeps_the_resolved_targets_of_a_named_peer() {
    let text = CONFIG.replace(
        "peers = [\"udp:10.99.2.2:5060\"]",
        "peers = [\"udp:itsp.example\"]",
    );
    assert_ne!(text, CONFIG, "tests/data/lab.toml changed shape");
    let mut h = Harness::with_config(&text);
    let resolved = config::Endpoint {
        transport: config::Transport::Udp,
        addr: "10.99.2.2:5060".parse().unwrap(),
    };
    h.core.set_peers(1, vec![resolved], h.now);
    h.core.reconfigure(
        Arc::new(config::parse("lab.toml", &text).unwrap()),
        &[],
        &[],
        h.now,
    );
    let out = h.send(parse(INVITE), h.pbx);
    assert_eq!(only_to(&out, &h.itsp).method(), Some(&Method::Invite));
}
