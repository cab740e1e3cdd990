//! Edge cases of mid-call requests through mediagate between real sipp peers (issue 7): a
//! re-INVITE whose provisional response is relayed and which its sender cancels (the CANCEL
//! relayed, 487 back, the call up with its previous media).
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
