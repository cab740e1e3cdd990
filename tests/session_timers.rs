//! Session timers (RFC 4028) between real sipp peers, in their own test binary because each
//! call lasts a real session interval (90 s, the smallest Min-SE allows):
//!
//!   gw (10.99.1.2, "pbx", no timer) -- [mediagate] -- it (10.99.2.2, "itsp", session_timer_s = 90)
//!
//! - The ITSP leaves the refresh to mediagate: mediagate sends an UPDATE without SDP on the
//!   ITSP leg at half the interval, and nothing of it reaches the PBX.
//! - The ITSP takes the refresher role and never refreshes: mediagate hangs up both legs
//!   before the interval ends, and the call's record says `session-timer`.
//!
//! These tests need root; they fail (never skip) without it. Logs and sipp traces of a failed
//! test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";
const INTERVAL_S: f64 = 90.0;

/// The lab config with `session_timer_s = 90` on the ITSP trunk, a media timeout longer than
/// the calls (no RTP flows) and CDRs in the lab directory.
fn session_timer_config(lab: &Lab) -> String {
    let itsp_local = format!("local = \"udp:{MG_IT_IP}:5060\"\n");
    let base = config(300);
    assert_eq!(
        base.matches(&itsp_local).count(),
        1,
        "lab.toml changed shape"
    );
    let text = base.replace(&itsp_local, &format!("{itsp_local}session_timer_s = 90\n"));
    with_cdr(&text, &lab.path("cdr.jsonl"))
}

/// The one request of `method` a sipp run received.
fn only_request(s: &Sipp, method: &str) -> SipMsg {
    let found: Vec<SipMsg> = s
        .received()
        .into_iter()
        .filter(|m| m.is_request(method))
        .collect();
    assert_eq!(found.len(), 1, "{method}s received:\n{}", s.describe());
    found.into_iter().next().expect("one")
}

/// When the callee sent its 200 to the INVITE (the session's start on the ITSP leg).
fn answered_at(s: &Sipp) -> f64 {
    s.messages()
        .into_iter()
        .find(|m| !m.received && m.status_code() == Some(200))
        .and_then(|m| m.at)
        .expect("the callee answered")
}

/// A call from the PBX to the ITSP with the callee playing `callee_scenario`; returns the lab,
/// both sipp runs (ended) and the CDR of the call.
fn call(test: &str, callee_scenario: &str) -> (Lab, Sipp, Sipp, serde_json::Value) {
    let lab = Lab::new(test);
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), callee_scenario, callee.peer_ip).timeout(100),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &session_timer_config(&lab));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_wait_bye", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(100),
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
    let record = cdrs(&lab.path("cdr.jsonl"), 1).remove(0);
    mg.stop();
    (lab, uac, uas, record)
}

/// The INVITE toward the ITSP asks for the trunk's interval; the caller's leg (a trunk without
/// a timer, a caller that asked for none) has none.
fn assert_negotiated_per_leg(uac: &Sipp, uas: &Sipp) {
    let inv = only_request(uas, "INVITE");
    assert_eq!(
        inv.header("Session-Expires").as_deref(),
        Some("90"),
        "{}",
        inv.text
    );
    assert_eq!(inv.header("Min-SE").as_deref(), Some("90"), "{}", inv.text);
    assert!(
        inv.headers("Supported").iter().any(|v| v.contains("timer")),
        "{}",
        inv.text
    );
    let ok = uac
        .received()
        .into_iter()
        .find(|m| m.status_code() == Some(200))
        .expect("the caller was answered");
    assert_eq!(ok.header("Session-Expires"), None, "{}", ok.text);
}

#[test]
fn mediagate_refreshes_the_itsp_leg_at_half_the_interval() {
    let (_lab, uac, uas, record) = call("st_refresh", "uas_session_refresh");
    assert_negotiated_per_leg(&uac, &uas);
    // The refresh: an UPDATE without SDP in the ITSP dialog, mediagate the refresher.
    let inv = only_request(&uas, "INVITE");
    let update = only_request(&uas, "UPDATE");
    assert_eq!(update.header("Call-ID"), inv.header("Call-ID"));
    assert_eq!(update.header("CSeq").as_deref(), Some("2 UPDATE"));
    assert_eq!(
        update.header("Session-Expires").as_deref(),
        Some("90;refresher=uac"),
        "{}",
        update.text
    );
    assert!(update.body().trim().is_empty(), "{}", update.text);
    let after = update.at.expect("trace time") - answered_at(&uas);
    assert!(
        (INTERVAL_S / 2.0 - 1.0..INTERVAL_S).contains(&after),
        "UPDATE {after:.1} s after the answer, expected half of {INTERVAL_S} s"
    );
    // A refresh concerns its leg: nothing reached the caller but the callee's BYE.
    let to_caller: Vec<String> = uac
        .received()
        .iter()
        .filter(|m| m.status_code().is_none())
        .map(|m| m.start_line().to_string())
        .collect();
    assert_eq!(to_caller.len(), 1, "{to_caller:?}");
    assert!(to_caller[0].starts_with("BYE "), "{to_caller:?}");
    assert_eq!(
        (&record["ended_by"], &record["end_reason"]),
        (&serde_json::json!("callee"), &serde_json::json!("bye")),
        "{record}"
    );
}

#[test]
fn a_refresher_that_never_refreshes_gets_both_legs_hung_up() {
    let (_lab, uac, uas, record) = call("st_expiry", "uas_session_expiry");
    assert_negotiated_per_leg(&uac, &uas);
    // The peer is the refresher: mediagate sends no refresh of its own, and BYE at the
    // interval minus min(32 s, interval / 3).
    only_request(&uas, "INVITE");
    assert!(
        uas.received().iter().all(|m| !m.is_request("UPDATE")),
        "{}",
        uas.describe()
    );
    let bye = only_request(&uas, "BYE");
    let after = bye.at.expect("trace time") - answered_at(&uas);
    let expiry = INTERVAL_S - (INTERVAL_S / 3.0).min(32.0);
    assert!(
        (expiry - 1.0..INTERVAL_S).contains(&after),
        "BYE {after:.1} s after the answer, expected at {expiry} s"
    );
    only_request(&uac, "BYE");
    assert_eq!(
        (&record["ended_by"], &record["end_reason"]),
        (
            &serde_json::json!("mediagate"),
            &serde_json::json!("session-timer")
        ),
        "{record}"
    );
}
