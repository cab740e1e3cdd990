//! Reliable provisional responses (RFC 3262, 100rel/PRACK) through mediagate between real sipp
//! peers (issue 7): a reliable 183 with SDP relayed reliably to a caller that supports 100rel,
//! PRACKed end to end with each leg's own RSeq and RAck, an UPDATE in the early dialog relayed
//! with its SDP re-anchored, early media flowing through mediagate before the answer; and a callee requiring 100rel behind a caller that does not offer it,
//! PRACKed by mediagate.
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it. Logs and sipp traces of a failed
//! test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

/// The messages of a sipp run that start with `start` (a method or `SIP/2.0 183`), received
/// or sent as `received` says.
fn with_start(s: &Sipp, received: bool, start: &str) -> Vec<SipMsg> {
    s.messages()
        .into_iter()
        .filter(|m| m.received == received && m.start_line().starts_with(start))
        .collect()
}

/// The first message of a sipp run that starts with `start`.
fn first(s: &Sipp, received: bool, start: &str) -> SipMsg {
    with_start(s, received, start)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `{start}` (received: {received})\n{}", s.describe()))
}

/// The number in a CSeq header value.
fn cseq_number(m: &SipMsg) -> String {
    let cseq = m.header("CSeq").unwrap_or_default();
    cseq.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether a header value lists the `100rel` option tag.
fn lists_100rel(m: &SipMsg, name: &str) -> bool {
    m.headers(name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("100rel"))
}

/// Places one call from the PBX side with `caller_scenario` toward a callee that requires
/// 100rel (`uas_100rel`: reliable 183 with SDP, an early UPDATE answered if the caller sends
/// one within 4 s, early media, then 200); returns the
/// two finished sipp runs. Checks on the way that the call completed and mediagate is idle.
fn call_to_100rel_callee(lab: &Lab, caller_scenario: &str, early_media: bool) -> (Sipp, Sipp) {
    let (caller, callee) = sides(lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_100rel", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mut mg = Mediagate::start(lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        lab,
        "caller",
        SippOpts::new(caller.ns.clone(), caller_scenario, caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(40),
    );
    if early_media {
        // RTP both ways through mediagate while the call is still unanswered.
        let (early, st) = mg.wait_status(Duration::from_secs(10), |st| {
            st["calls"][0]["state"] == "setup" && rtp_flowing(st, 1)
        });
        assert!(
            early,
            "no early media through mediagate: {st:#}\n{}",
            mg.log_tail(40)
        );
    }
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
    (uac, uas)
}

/// The callee's PRACK carries the RAck of its own 183 (RSeq 1) and its INVITE's CSeq, in its
/// dialog with mediagate, and nothing of the caller's side.
fn assert_callee_prack(uas: &Sipp) {
    let invite = first(uas, true, "INVITE");
    let pracks = with_start(uas, true, "PRACK");
    assert_eq!(
        pracks.len(),
        1,
        "one PRACK on the callee leg\n{}",
        uas.describe()
    );
    let prack = &pracks[0];
    assert_eq!(
        prack.header("RAck"),
        Some(format!("1 {} INVITE", cseq_number(&invite))),
        "{}",
        prack.text
    );
    assert_eq!(prack.header("Call-ID"), invite.header("Call-ID"));
    assert!(
        !prack.text.contains(GW_IP),
        "caller leaked:\n{}",
        prack.text
    );
}

#[test]
fn reliable_183_prack_and_early_update_end_to_end_with_early_media() {
    let lab = Lab::new("prack_e2e");
    let (uac, uas) = call_to_100rel_callee(&lab, "uac_100rel", true);

    // The caller's 100rel offer reached the callee.
    let invite = first(&uas, true, "INVITE");
    assert!(lists_100rel(&invite, "Supported"), "{}", invite.text);

    // The caller got a reliable 183 with mediagate's own RSeq and the anchored SDP.
    let p183 = first(&uac, true, "SIP/2.0 183");
    assert!(lists_100rel(&p183, "Require"), "{}", p183.text);
    let rseq: u32 = p183
        .header("RSeq")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RSeq: {}", p183.text));
    assert!(rseq > 0);
    assert_eq!(
        p183.sdp_conn_addr().as_deref(),
        Some(MG_GW_IP),
        "{}",
        p183.text
    );
    assert!(!p183.text.contains(IT_IP), "callee leaked:\n{}", p183.text);
    // Its PRACK (RAck with that RSeq) was answered 200, which the scenario requires; the
    // callee saw its own numbers.
    let prack = first(&uac, false, "PRACK");
    assert_eq!(prack.header("RAck"), Some(format!("{rseq} 1 INVITE")));
    assert_eq!(
        with_start(&uac, true, "SIP/2.0 200")
            .iter()
            .filter(|m| m.header("CSeq").is_some_and(|c| c.ends_with("PRACK")))
            .count(),
        1,
        "{}",
        uac.describe()
    );
    assert_callee_prack(&uas);

    // The caller's early UPDATE reached the callee re-anchored on the callee leg (same
    // mediagate port as the INVITE, unknown lines kept), and the callee's answer reached the
    // caller on the 183's port; the early media the test saw flowed after it.
    let update = first(&uas, true, "UPDATE");
    assert_eq!(update.header("Call-ID"), invite.header("Call-ID"));
    assert_eq!(
        update.sdp_conn_addr().as_deref(),
        Some(MG_IT_IP),
        "{}",
        update.text
    );
    assert_eq!(update.sdp_audio_port(), invite.sdp_audio_port());
    assert!(update.body().contains("a=ptime:20"), "{}", update.text);
    assert!(
        !update.text.contains(GW_IP),
        "caller leaked:\n{}",
        update.text
    );
    let answer = with_start(&uac, true, "SIP/2.0 200")
        .into_iter()
        .find(|m| m.header("CSeq").is_some_and(|c| c.ends_with("UPDATE")))
        .unwrap_or_else(|| panic!("no 200 to the UPDATE\n{}", uac.describe()));
    assert_eq!(
        answer.sdp_conn_addr().as_deref(),
        Some(MG_GW_IP),
        "{}",
        answer.text
    );
    assert_eq!(answer.sdp_audio_port(), p183.sdp_audio_port());
    assert!(
        !answer.text.contains(IT_IP),
        "callee leaked:\n{}",
        answer.text
    );
}

#[test]
fn callee_requiring_100rel_is_pracked_by_mediagate_for_a_plain_caller() {
    let lab = Lab::new("prack_own");
    let (uac, uas) = call_to_100rel_callee(&lab, "uac_rtp", false);

    // The caller offered nothing, so the callee INVITE does not either.
    let invite = first(&uas, true, "INVITE");
    assert!(!lists_100rel(&invite, "Supported"), "{}", invite.text);
    assert!(!lists_100rel(&invite, "Require"), "{}", invite.text);
    // mediagate PRACKed the callee itself.
    assert_callee_prack(&uas);
    // The caller got the 183 unreliably, with the anchored SDP, and sent no PRACK.
    let p183 = first(&uac, true, "SIP/2.0 183");
    assert!(!lists_100rel(&p183, "Require"), "{}", p183.text);
    assert_eq!(p183.header("RSeq"), None, "{}", p183.text);
    assert_eq!(
        p183.sdp_conn_addr().as_deref(),
        Some(MG_GW_IP),
        "{}",
        p183.text
    );
    assert!(with_start(&uac, false, "PRACK").is_empty());
}
