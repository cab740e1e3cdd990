//! Edge cases of mid-call requests through mediagate between real sipp peers (issue 7): a
//! re-INVITE whose provisional response is relayed and which its sender cancels (the CANCEL
//! relayed, 487 back, the call up with its previous media); a 481 to a re-INVITE ending the
//! call (RFC 5057).
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it. Logs and sipp traces of a failed
//! test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

/// The messages of a sipp run, received or sent as `received` says, whose start line begins
/// with `start`.
fn with_start(s: &Sipp, received: bool, start: &str) -> Vec<SipMsg> {
    s.messages()
        .into_iter()
        .filter(|m| m.received == received && m.start_line().starts_with(start))
        .collect()
}

#[test]
fn cancelled_reinvite_keeps_the_call_and_its_media() {
    let lab = Lab::new("reinvite_cancel");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_reinvite_cancel", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_reinvite_cancel", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    // RTP both ways after the cancelled re-INVITE: the call stayed up with its media.
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| {
        st["calls"][0]["state"] == "confirmed" && rtp_flowing(st, 1)
    });
    assert!(
        flowing,
        "no RTP after the cancelled re-INVITE: {st:#}\n{}",
        mg.log_tail(40)
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // The callee's 180 reached the caller as a response to its re-INVITE, then 487.
    let ringing: Vec<SipMsg> = with_start(&uac, true, "SIP/2.0 180")
        .into_iter()
        .filter(|m| m.header("CSeq").as_deref() == Some("2 INVITE"))
        .collect();
    assert_eq!(ringing.len(), 1, "{}", uac.describe());
    let refused = with_start(&uac, true, "SIP/2.0 487");
    assert!(
        refused
            .iter()
            .all(|m| m.header("CSeq").as_deref() == Some("2 INVITE")),
        "{}",
        uac.describe()
    );
    assert!(!refused.is_empty(), "{}", uac.describe());
    // The callee got mediagate's CANCEL of mediagate's re-INVITE (same Via branch).
    let invites = with_start(&uas, true, "INVITE");
    assert_eq!(invites.len(), 2, "{}", uas.describe());
    let cancel = with_start(&uas, true, "CANCEL");
    assert_eq!(cancel.len(), 1, "{}", uas.describe());
    assert_eq!(cancel[0].header("Via"), invites[1].header("Via"));
    assert_eq!(cancel[0].header("Call-ID"), invites[0].header("Call-ID"));
    assert!(!cancel[0].text.contains(GW_IP), "{}", cancel[0].text);
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
}

/// The callee answers the caller's re-INVITE 481 (its dialog is gone): the caller gets the 481
/// and mediagate's BYE, the callee no BYE, and the record says the callee's dialog went.
#[test]
fn a_481_to_a_reinvite_ends_the_call() {
    let lab = Lab::new("reinvite_481");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_reinvite_481", callee.peer_ip).timeout(30),
    );
    uas.settle();
    let cdr = lab.path("cdr.jsonl");
    let mut mg = Mediagate::start(&lab, &with_cdr(&config(30), &cdr));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_reinvite_gone", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(20),
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    let bye = with_start(&uac, true, "BYE");
    assert_eq!(bye.len(), 1, "{}", uac.describe());
    let own_call_id = with_start(&uac, false, "INVITE")[0].header("Call-ID");
    assert_eq!(bye[0].header("Call-ID"), own_call_id);
    assert!(
        with_start(&uas, true, "BYE").is_empty(),
        "no BYE into a dialog that is gone\n{}",
        uas.describe()
    );
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&cdr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["ended_by"], "callee", "{:#}", records[0]);
    assert_eq!(records[0]["end_reason"], "dialog-gone", "{:#}", records[0]);
    lab.assert_mg_clean();
}
