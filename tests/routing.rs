//! Routing and translation end to end (issue 5) between real sipp peers in a three-namespace
//! lab (tests/common/mod.rs), on tests/data/routing.toml:
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! What the ITSP side receives carries the translated numbers and only the trunk's codecs; a
//! denied destination gets 403 and never reaches it. These tests need root; they fail (never skip) without it.

mod common;

use std::time::Duration;

use common::*;

const ROUTING: &str = include_str!("data/routing.toml");

/// Starts the ITSP side (answers, waits for the BYE), mediagate, and a PBX caller running
/// `scenario` toward `dialled`; returns them after the caller finished successfully.
fn call(lab: &Lab, scenario: &str, dialled: &str) -> (Mediagate, Sipp) {
    let uas = Sipp::spawn(
        lab,
        "itsp",
        SippOpts::new(lab.it(), "uas_wait_bye", IT_IP).timeout(30),
    );
    uas.settle();
    let mg = Mediagate::start(lab, ROUTING);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        lab,
        "pbx",
        SippOpts::new(lab.gw(), scenario, GW_IP)
            .caller(dialled, &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    (mg, uas)
}

#[test]
fn translated_numbers_reach_the_itsp() {
    let lab = Lab::new("translation");
    let (mg, mut uas) = call(&lab, "uac_identity", "004930123");
    let st = uas.stop();
    assert!(st.success(), "ITSP sipp failed: {st}\n{}", uas.describe());
    let inv = uas
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap_or_else(|| panic!("the ITSP received no INVITE\n{}", uas.describe()));
    // 00 → + inbound from the PBX, +49 → 0 outbound to the ITSP.
    assert_eq!(
        inv.start_line(),
        "INVITE sip:030123@10.99.2.2:5060 SIP/2.0",
        "{}",
        inv.text
    );
    assert_eq!(
        inv.header("To").as_deref(),
        Some("<sip:030123@10.99.2.2:5060>")
    );
    // Extension 100 → the company's full number, in From and in the passed PAI.
    let from = inv.header("From").unwrap_or_default();
    assert!(
        from.starts_with("\"Front Desk\" <sip:+4930555100@10.99.2.1:5060>"),
        "{from}"
    );
    assert_eq!(
        inv.header("P-Asserted-Identity").as_deref(),
        Some("\"Front Desk\" <sip:+4930555100@10.99.2.1:5060>")
    );
    assert_eq!(inv.header("Privacy"), None, "not passed to this trunk");
    assert!(
        inv.header("User-Agent")
            .is_some_and(|u| u.starts_with("mediagate/")),
        "{}",
        inv.text
    );
    assert!(
        !inv.text.contains(GW_IP),
        "PBX address leaked:\n{}",
        inv.text
    );
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn denied_destination_gets_403() {
    let lab = Lab::new("deny");
    let (mg, mut uas) = call(&lab, "uac_expect_403", "00882123");
    let st = uas.stop();
    assert!(st.success(), "ITSP sipp failed: {st}\n{}", uas.describe());
    assert!(
        !uas.received().iter().any(|m| m.is_request("INVITE")),
        "a denied call reached the ITSP\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn the_itsp_is_offered_only_its_codecs_in_its_order() {
    let lab = Lab::new("codecs");
    let (mg, mut uas) = call(&lab, "uac_codecs", "+4930123");
    let st = uas.stop();
    assert!(st.success(), "ITSP sipp failed: {st}\n{}", uas.describe());
    let inv = uas
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap_or_else(|| panic!("the ITSP received no INVITE\n{}", uas.describe()));
    let body = inv.body();
    let sdp: Vec<&str> = body.lines().map(str::trim).collect();
    let port = inv.sdp_audio_port().expect("an audio line");
    // Offered 0 8 9 101; the trunk allows PCMA and telephone-event, in that order.
    assert!(
        sdp.contains(&format!("m=audio {port} RTP/AVP 8 101").as_str()),
        "{}",
        inv.text
    );
    for kept in [
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
    ] {
        assert!(sdp.contains(&kept), "{kept} missing:\n{}", inv.text);
    }
    for gone in ["a=rtpmap:0 PCMU/8000", "a=rtpmap:9 G722/8000"] {
        assert!(!sdp.contains(&gone), "{gone} passed:\n{}", inv.text);
    }
    mg.assert_idle(Duration::from_secs(5));
}
