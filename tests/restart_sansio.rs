//! Calls surviving a restart (`media.handover`), sans-IO: a confirmed call's journal record
//! (`B2bua::drain_journal`) written as the state file's line, replayed and adopted by a fresh
//! B2BUA, which then relays a hang-up from either side with the right dialog identifiers and
//! a CSeq above the old process's, and writes a normal CDR. NG calls likewise
//! (`NgServer::drain_journal` / `NgServer::adopt`): the new server answers `query`, a
//! re-offer and `delete` for them as the old one would have.

mod sansio;

use mediagate::control::bencode::Value;
use mediagate::media::Command;
use mediagate::signalling::journal::replay;
use mediagate::sip::b2bua::journal::JournalEntry;
use mediagate::sip::header;
use mediagate::sip::message::{Message, Method, StartLine};
use sansio::ng::{answer as ng_answer, bstr, offer as ng_offer, result, sdp_of, Ng, CONFIG};
use sansio::{
    ack_from_pbx, answer, answered_call_on, bye_from_pbx, code_of, in_dialog_from_pbx, only_to,
    parse, Harness, LAB,
};

fn lab_with_handover() -> Harness {
    Harness::with_config(&LAB.replace("[media]", "[media]\nhandover = true"))
}

/// The state file's text for what the B2BUA journalled since the last drain.
fn journal_text(h: &mut Harness) -> String {
    h.core
        .drain_journal()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect()
}

/// A confirmed call on a handover B2BUA, its journal replayed into a second B2BUA: the
/// second harness, the INVITE the ITSP got, the 200 the PBX got.
fn call_adopted_by_a_new_process() -> (Harness, Message, Message) {
    let (mut old, inv_b, ok) = answered_call_on(lab_with_handover());
    assert!(
        journal_text(&mut old).is_empty(),
        "nothing journalled before the ACK"
    );
    old.send(ack_from_pbx(&ok), old.pbx);
    let text = journal_text(&mut old);
    assert_eq!(text.lines().count(), 1, "{text}");
    let (replayed, skipped) = replay(text.as_bytes());
    let records = replayed.calls;
    assert_eq!((records.len(), skipped), (1, 0));

    let mut new = lab_with_handover();
    assert_eq!(new.core.adopt(records, new.now), 1);
    let status = new.status();
    assert_eq!(status["active_calls"], 1);
    assert_eq!(status["calls"][0]["id"], "c-1");
    assert_eq!(status["calls"][0]["state"], "confirmed");
    assert_eq!(
        status["calls"][0]["legs"][1]["call_id"],
        inv_b.header("Call-ID").unwrap()
    );
    assert_eq!(
        status["ports"]["free"].as_u64().unwrap() + 2,
        status["ports"]["total"].as_u64().unwrap(),
        "both legs' ports claimed"
    );
    // Adopted calls are journalled again: the compacted file.
    let again = journal_text(&mut new);
    assert_eq!(replay(again.as_bytes()).0.calls.len(), 1);
    (new, inv_b, ok)
}

fn cseq(m: &Message) -> u32 {
    header::cseq(m).unwrap().0
}

#[test]
fn caller_hang_up_after_a_restart_reaches_the_callee() {
    let (mut h, inv_b, ok) = call_adopted_by_a_new_process();
    let bye = bye_from_pbx(&ok);
    let out = h.send(bye, h.pbx);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    let bye_b = only_to(&out, &h.itsp);
    assert_eq!(bye_b.method(), Some(&Method::Bye));
    assert_eq!(bye_b.uri(), Some("sip:callee@10.99.2.2:5060"));
    assert_eq!(bye_b.header("Call-ID"), inv_b.header("Call-ID"));
    assert_eq!(header::tag(&bye_b, "To"), Some("b1"));
    assert_eq!(header::tag(&bye_b, "From"), header::tag(&inv_b, "From"));
    assert!(cseq(&bye_b) > cseq(&inv_b), "CSeq goes on increasing");
    assert!(h.ports_all_free());
    h.send(answer(&bye_b, 200, "b1", None), h.itsp);
    let cdrs = h.core.drain_cdrs();
    assert_eq!(cdrs.len(), 1);
    let cdr = serde_json::to_value(&cdrs[0]).unwrap();
    assert_eq!(cdr["call"], "c-1");
    assert_eq!(cdr["sip_call_id"], "pbx-call-1");
    assert_eq!(cdr["ended_by"], "caller");
    assert_eq!(cdr["called_in"], "+4930123");
    assert_eq!(cdr["trunk_out"], "itsp");
    assert_eq!(
        h.core.drain_journal(),
        [JournalEntry::End { call: "c-1".into() }]
    );
    // New calls go on numbering after the adopted one.
    let mut invite = parse(sansio::INVITE);
    invite.set_header("Call-ID", "pbx-call-2".into());
    h.send(invite, h.pbx);
    assert_eq!(h.status()["calls"][0]["id"], "c-2");
}

#[test]
fn callee_hang_up_after_a_restart_reaches_the_caller() {
    let (mut h, inv_b, ok) = call_adopted_by_a_new_process();
    let mut bye = Message {
        start: StartLine::Request {
            method: Method::Bye,
            uri: "sip:mediagate@10.99.2.1:5060".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    bye.push_header(
        "Via",
        "SIP/2.0/UDP 10.99.2.2:5060;branch=z9hG4bK-cbye".into(),
    );
    bye.push_header("From", "<sip:callee@10.99.2.2>;tag=b1".into());
    bye.push_header("To", inv_b.header("From").unwrap().to_string());
    bye.push_header("Call-ID", inv_b.header("Call-ID").unwrap().to_string());
    bye.push_header("CSeq", "1 BYE".into());
    bye.push_header("Max-Forwards", "70".into());
    bye.push_header("Content-Length", "0".into());
    let out = h.send(bye, h.itsp);
    assert_eq!(code_of(&only_to(&out, &h.itsp)), 200);
    let bye_a = only_to(&out, &h.pbx);
    assert_eq!(bye_a.method(), Some(&Method::Bye));
    assert_eq!(bye_a.uri(), Some("sip:100@10.99.1.2:5060"));
    assert_eq!(bye_a.header("Call-ID"), Some("pbx-call-1"));
    assert_eq!(header::tag(&bye_a, "To"), Some("pbx-tag"));
    assert_eq!(header::tag(&bye_a, "From"), header::tag(&ok, "To"));
    let cdrs = h.core.drain_cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(
        serde_json::to_value(&cdrs[0]).unwrap()["ended_by"],
        "callee"
    );
}

#[test]
fn without_handover_nothing_is_journalled() {
    let (mut h, _, ok) = answered_call_on(Harness::new());
    h.send(ack_from_pbx(&ok), h.pbx);
    assert!(h.core.drain_journal().is_empty());
}

#[test]
fn an_adopted_call_whose_media_never_returns_ends_by_media_timeout() {
    let (mut h, inv_b, _) = call_adopted_by_a_new_process();
    let out = h.advance(std::time::Duration::from_secs(31));
    let byes: Vec<&Message> = out
        .iter()
        .map(|t| &t.message)
        .filter(|m| m.method() == Some(&Method::Bye))
        .collect();
    assert_eq!(byes.len(), 2, "BYE on both legs: {out:#?}");
    assert!(byes
        .iter()
        .any(|m| m.header("Call-ID") == inv_b.header("Call-ID")));
    assert!(byes
        .iter()
        .any(|m| m.header("Call-ID") == Some("pbx-call-1")));
    let cdrs = h.core.drain_cdrs();
    assert_eq!(
        serde_json::to_value(&cdrs[0]).unwrap()["end_reason"],
        "media-timeout"
    );
    assert!(h.ports_all_free());
}

#[test]
fn a_reinvite_moving_the_media_is_journalled_and_adopted_with_the_new_addresses() {
    let (mut h, _, ok) = answered_call_on(lab_with_handover());
    h.send(ack_from_pbx(&ok), h.pbx);
    journal_text(&mut h);
    // The PBX moves its media to port 6002 (new o= version); the ITSP answers from 7002.
    let mut reinv = in_dialog_from_pbx(&ok, Method::Invite, 2, "z9hG4bK-re2");
    reinv.push_header("Content-Type", "application/sdp".into());
    reinv.body = String::from_utf8(parse(sansio::INVITE).body)
        .unwrap()
        .replace("m=audio 6000", "m=audio 6002")
        .replace("2353687637", "2353687638")
        .into_bytes();
    let out = h.send(reinv, h.pbx);
    let reinv_b = only_to(&out, &h.itsp);
    let moved = sansio::ANSWER_SDP
        .replace("m=audio 7000", "m=audio 7002")
        .replace(" 1 1 IN", " 1 2 IN");
    let out = h.send(answer(&reinv_b, 200, "b1", Some(&moved)), h.itsp);
    assert_eq!(code_of(&only_to(&out, &h.pbx)), 200);
    h.send(
        in_dialog_from_pbx(&ok, Method::Ack, 2, "z9hG4bK-ack2"),
        h.pbx,
    );
    let text = journal_text(&mut h);
    let records = replay(text.as_bytes()).0.calls;
    assert_eq!(records.len(), 1, "{text}");

    let mut new = lab_with_handover();
    assert_eq!(new.core.adopt(records, new.now), 1);
    let destinations: Vec<String> = new
        .core
        .drain_media_commands()
        .into_iter()
        .filter_map(|c| match c {
            mediagate::media::Command::Renegotiate { sdp: Some(a), .. } => Some(a.to_string()),
            _ => None,
        })
        .collect();
    for to in ["10.99.1.2:6002", "10.99.2.2:7002"] {
        assert!(
            destinations.iter().any(|d| d == to),
            "adopted streams send to {to}: {destinations:?}"
        );
    }
}

/// An NG server with handover on (`config` a variant of the NG lab configuration).
fn ng_with_handover(config: &str) -> Ng {
    Ng::with_config(&config.replace("[media]", "[media]\nhandover = true"))
}

/// The state file's text for what the NG server journalled since the last drain.
fn ng_journal_text(ng: &mut Ng) -> String {
    ng.server
        .drain_journal(ng.now)
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect()
}

fn ng_query(ng: &mut Ng, call: &str) -> Value {
    ng.send(format!("d7:call-id{}7:command5:querye", bstr(call)).as_bytes())
}

/// An answered NG call's journal (offer and answer, each a line, then a line torn by a kill),
/// and its `query` reply in the old server.
fn ng_call_journalled() -> (String, Value) {
    let mut old = ng_with_handover(CONFIG);
    let r = old.send(&ng_offer("ng-1", "9:directionl8:internal8:externale"));
    assert_eq!(result(&r), "ok", "{r:?}");
    let mut text = ng_journal_text(&mut old);
    assert_eq!(text.lines().count(), 1, "the offer is journalled: {text}");
    let r = old.send(&ng_answer("ng-1"));
    assert_eq!(result(&r), "ok", "{r:?}");
    let answered = ng_journal_text(&mut old);
    assert_eq!(
        answered.lines().count(),
        1,
        "the answer is journalled: {answered}"
    );
    text.push_str(&answered);
    text.push_str(&answered[..answered.len() / 2]);
    (text, ng_query(&mut old, "ng-1"))
}

#[test]
fn an_ng_call_is_adopted_and_answers_query_reoffer_and_delete() {
    let (text, before) = ng_call_journalled();
    let (replayed, skipped) = replay(text.as_bytes());
    assert_eq!(skipped, 1, "the torn line is skipped");
    assert!(replayed.calls.is_empty());
    assert_eq!(replayed.ng_calls.len(), 1);

    let mut new = ng_with_handover(CONFIG);
    let total = new.ports_free();
    assert_eq!(
        new.server
            .adopt(replayed.ng_calls, new.now, std::time::SystemTime::now()),
        1
    );
    assert_eq!(new.ports_free() + 2, total, "both sides' ports claimed");
    let added = new
        .media
        .borrow_mut()
        .take_commands()
        .iter()
        .filter(|c| matches!(c, Command::Add(_)))
        .count();
    assert_eq!(added, 4, "RTP and RTCP of both sides go to the data plane");
    assert_eq!(new.server.active_calls(), 1);
    assert_eq!(new.server.totals().calls_created, 1);
    assert_eq!(
        ng_query(&mut new, "ng-1"),
        before,
        "query answers as before the restart"
    );
    let again = ng_journal_text(&mut new);
    assert_eq!(
        replay(again.as_bytes()).0.ng_calls.len(),
        1,
        "compacted file: {again}"
    );

    // A re-offer (re-INVITE) keeps the ports the callee was given.
    let port = |v: &Value| sdp_of(v).media()[0].rtp.port();
    let r = new.send(&ng_offer("ng-1", "6:to-tag2:tt"));
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_callee = port(&r);
    let r = new.send(&ng_answer("ng-1"));
    assert_eq!(result(&r), "ok", "{r:?}");
    assert_eq!(new.ports_free() + 2, total, "no new ports for the re-offer");
    let rec = &replay(ng_journal_text(&mut new).as_bytes()).0.ng_calls[0];
    let b_port = rec.branches[0].media.legs[1].pairs[0]
        .as_ref()
        .unwrap()
        .port;
    assert_eq!(
        to_callee, b_port,
        "the re-offer's SDP carries the adopted port"
    );

    let r =
        new.send(format!("d7:call-id{}7:command6:delete8:from-tag2:fte", bstr("ng-1")).as_bytes());
    assert_eq!(result(&r), "ok", "{r:?}");
    assert_eq!(new.ports_free(), total, "ports free after the delete");
    assert_eq!(
        new.server.drain_journal(new.now),
        [JournalEntry::NgEnd {
            call_id: "ng-1".into()
        }]
    );
    let r = ng_query(&mut new, "ng-1");
    assert_eq!(result(&r), "error", "{r:?}");
}

#[test]
fn an_ng_call_whose_interface_is_gone_is_not_adopted() {
    let (text, _) = ng_call_journalled();
    let renamed = CONFIG.replace("name = \"external\"", "name = \"outside\"");
    let mut new = ng_with_handover(&renamed);
    let total = new.ports_free();
    let records = replay(text.as_bytes()).0.ng_calls;
    assert_eq!(
        new.server
            .adopt(records, new.now, std::time::SystemTime::now()),
        0
    );
    assert_eq!(new.ports_free(), total, "no port kept");
    assert_eq!(new.server.active_calls(), 0);
    let r = ng_query(&mut new, "ng-1");
    assert_eq!(result(&r), "error", "{r:?}");
}

#[test]
fn without_handover_no_ng_call_is_journalled() {
    let mut ng = Ng::new();
    let r = ng.send(&ng_offer("ng-1", ""));
    assert_eq!(result(&r), "ok", "{r:?}");
    assert!(ng.server.drain_journal(ng.now).is_empty());
}

#[test]
fn a_delayed_delete_goes_on_after_a_restart() {
    let (text, _) = ng_call_journalled();
    let mut old = ng_with_handover(CONFIG);
    let records = replay(text.as_bytes()).0.ng_calls;
    assert_eq!(
        old.server
            .adopt(records, old.now, std::time::SystemTime::now()),
        1
    );
    ng_journal_text(&mut old);
    let r = old.send(
        format!(
            "d7:call-id{}7:command6:delete12:delete-delayi10e8:from-tag2:fte",
            bstr("ng-1")
        )
        .as_bytes(),
    );
    assert_eq!(result(&r), "ok", "{r:?}");
    let text = ng_journal_text(&mut old);
    let records = replay(text.as_bytes()).0.ng_calls;
    assert_eq!(records[0].delete_in_s, Some(10), "{text}");

    let mut new = ng_with_handover(CONFIG);
    let total = new.ports_free();
    assert_eq!(
        new.server
            .adopt(records, new.now, std::time::SystemTime::now()),
        1
    );
    assert_eq!(new.server.active_calls(), 0, "a deleted call is not active");
    new.server
        .handle_timeout(new.now + std::time::Duration::from_secs(9));
    assert_eq!(new.ports_free() + 2, total, "kept until the delay is over");
    new.server
        .handle_timeout(new.now + std::time::Duration::from_secs(11));
    assert_eq!(new.ports_free(), total, "released when the delay is over");
    let text = ng_journal_text(&mut new);
    assert!(replay(text.as_bytes()).0.is_empty(), "{text}");
}
