//! Known-good checks of the sipp scenarios in tests/data/sipp, peer to peer
//! without mediagate: both sipps in the lab's gw namespace (10.99.1.3 calls
//! 10.99.1.2 over the local route). If one of these fails, fix the scenario
//! before suspecting mediagate in tests/calls.rs. Needs root.

mod common;

use std::time::Duration;

use common::*;

const CALLER_IP: &str = GW_STRANGER_IP;
const CALLEE_IP: &str = GW_IP;

fn run_pair(
    test: &str,
    uas: &str,
    uas_args: &[&str],
    uac: &str,
    uac_args: &[&str],
    user: &str,
) -> (Lab, Sipp, Sipp) {
    let lab = Lab::new(test);
    lab.add_gw_addr(&format!("{CALLER_IP}/24"));
    let mut callee = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.gw(), uas, CALLEE_IP)
            .args(uas_args)
            .timeout(30),
    );
    callee.settle();
    let remote = format!("{CALLEE_IP}:5060");
    let mut caller = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), uac, CALLER_IP)
            .caller(user, &remote)
            .args(&["-m", "1"])
            .args(uac_args),
    );
    caller.assert_ok(None);
    std::thread::sleep(Duration::from_millis(300));
    let st = callee.stop();
    assert!(st.success(), "callee failed: {st}\n{}", callee.describe());
    (lab, caller, callee)
}

fn codes(s: &Sipp) -> Vec<String> {
    s.received()
        .iter()
        .map(|m| m.start_line().to_string())
        .collect()
}

#[test]
fn scenario_uac_rtp_uas_echo() {
    let lab = Lab::new("sc_rtp");
    lab.add_gw_addr(&format!("{CALLER_IP}/24"));
    let mut cap = Capture::start(&lab, &lab.gw(), "lo", "lo");
    let mut callee = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.gw(), "uas_echo", CALLEE_IP)
            .args(&["-rtp_echo"])
            .timeout(30),
    );
    callee.settle();
    let remote = format!("{CALLEE_IP}:5060");
    let mut caller = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_rtp", CALLER_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"]),
    );
    caller.assert_ok(None);
    assert!(callee.stop().success(), "{}", callee.describe());
    let inv = callee
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .expect("INVITE");
    assert_eq!(inv.sdp_conn_addr().as_deref(), Some(CALLER_IP));
    assert_eq!(inv.sdp_audio_port(), Some(SIPP_MEDIA_PORT));
    assert!(
        inv.start_line().starts_with("INVITE sip:+4930123@"),
        "{}",
        inv.start_line()
    );
    let desc = cap.describe();
    let flows = cap.flows();
    let fwd = flows
        .get(&(sa(CALLER_IP, 6000), sa(CALLEE_IP, 6000)))
        .copied()
        .unwrap_or(0);
    let back = flows
        .get(&(sa(CALLEE_IP, 6000), sa(CALLER_IP, 6000)))
        .copied()
        .unwrap_or(0);
    assert!(fwd >= 230 && back >= 230, "pcap played and echoed: {desc}");
}

#[test]
fn scenario_uac_rtp_over_tcp() {
    let (_lab, caller, _callee) = run_pair(
        "sc_tcp",
        "uas_echo",
        &["-t", "t1"],
        "uac_rtp",
        &["-t", "t1"],
        "123",
    );
    assert!(codes(&caller).iter().any(|c| c.starts_with("SIP/2.0 200")));
}

#[test]
fn scenario_uas_wait_bye() {
    run_pair("sc_waitbye", "uas_wait_bye", &[], "uac_rtp", &[], "123");
}

#[test]
fn scenario_callee_hangup() {
    let (_lab, caller, _callee) =
        run_pair("sc_hangup", "uas_hangup", &[], "uac_wait_bye", &[], "123");
    assert!(caller.received().iter().any(|m| m.is_request("BYE")));
}

#[test]
fn scenario_busy() {
    let (_lab, caller, callee) = run_pair("sc_busy", "uas_busy", &[], "uac_expect_486", &[], "123");
    assert!(caller
        .received()
        .iter()
        .any(|m| m.status_code() == Some(486)));
    assert!(callee.received().iter().any(|m| m.is_request("ACK")));
}

#[test]
fn scenario_cancel() {
    let (_lab, caller, callee) = run_pair(
        "sc_cancel",
        "uas_ring_cancel",
        &[],
        "uac_cancel",
        &[],
        "123",
    );
    assert!(
        caller
            .received()
            .iter()
            .any(|m| m.status_code() == Some(487)),
        "{:?}",
        codes(&caller)
    );
    assert!(callee.received().iter().any(|m| m.is_request("CANCEL")));
    assert!(callee.received().iter().any(|m| m.is_request("ACK")));
}
