//! Call transfer (REFER) through mediagate between real sipp peers: a blind transfer with a
//! transferee on the ITSP side and the transferor and target on the PBX side.
//!
//!   it (10.99.2.2, transferee) -- 10.99.2.1 [mediagate] 10.99.1.1 -- gw: 10.99.1.2 (transferor,
//!                                                                      "pbx", refer = "pass")
//!                                                                      10.99.1.4 (target, "target")
//!
//! The transferor's REFER names mediagate's PBX-side address; the transferee gets it with
//! mediagate's ITSP-side address instead, so its new INVITE comes back through mediagate and is
//! routed (number 200) to the target with media anchored. These tests need root; they fail
//! (never skip) without it.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";
const TARGET_IP: &str = "10.99.1.4";

/// The lab config with `refer` on the PBX trunk, a "target" trunk (number 200 from the ITSP)
/// and CDRs in the lab directory.
fn transfer_config(lab: &Lab, refer: &str) -> String {
    let pbx_local = format!("local = \"udp:{MG_GW_IP}:5060\"\n");
    let itsp_route = "[[route]]\nfrom = [\"itsp\"]";
    let base = config(30);
    assert_eq!(
        base.matches(&pbx_local).count(),
        1,
        "lab.toml changed shape"
    );
    assert_eq!(
        base.matches(itsp_route).count(),
        1,
        "lab.toml changed shape"
    );
    let text = base
        .replace(&pbx_local, &format!("{pbx_local}refer = \"{refer}\"\n"))
        .replace(
            itsp_route,
            &format!("[[route]]\nfrom = [\"itsp\"]\nmatch = \"^200$\"\nto = [\"target\"]\n\n{itsp_route}"),
        );
    let text = format!(
        "{text}\n[[trunk]]\nname = \"target\"\nkind = \"lan\"\npeers = [\"udp:{TARGET_IP}:5060\"]\nlocal = \"udp:{MG_GW_IP}:5060\"\n"
    );
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

fn assert_hidden(s: &Sipp, other_side: &str) {
    for m in s.received() {
        assert!(
            !m.text.contains(other_side),
            "{other_side} leaked to {}:\n{}",
            s.name,
            m.text
        );
    }
}

#[test]
fn blind_transfer_end_to_end_with_media_anchored() {
    let lab = Lab::new("xfer_pass");
    lab.add_gw_addr(&format!("{TARGET_IP}/24"));
    let mut transferor = Sipp::spawn(
        &lab,
        "transferor",
        SippOpts::new(lab.gw(), "uas_transferor", GW_IP)
            .args(&["-key", "mg", MG_GW_IP])
            .timeout(40),
    );
    let mut target = Sipp::spawn(
        &lab,
        "target",
        SippOpts::new(lab.gw(), "uas_echo", TARGET_IP)
            .args(&["-rtp_echo"])
            .timeout(40),
    );
    transferor.settle();
    let mg = Mediagate::start(&lab, &transfer_config(&lab, "pass"));
    let remote = format!("{MG_IT_IP}:5060");
    let mut transferee = Sipp::spawn(
        &lab,
        "transferee",
        SippOpts::new(lab.it(), "uac_transferee", IT_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(40),
    );
    transferee.assert_ok(Some(&mg));
    for s in [&mut transferor, &mut target] {
        let st = s.stop();
        assert!(st.success(), "{} failed: {st}\n{}", s.name, s.describe());
    }
    mg.assert_idle(Duration::from_secs(5));

    // The REFER the transferee got: mediagate's own, in its dialog, Refer-To and Referred-By
    // on mediagate's ITSP-side address.
    let refer = only_request(&transferee, "REFER");
    let first_invite = transferee
        .messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .expect("the transferee called");
    assert_eq!(refer.header("Call-ID"), first_invite.header("Call-ID"));
    let ours = format!("{MG_IT_IP}:5060");
    assert_eq!(
        refer.header("Refer-To"),
        Some(format!("<sip:200@{ours}>")),
        "{}",
        refer.text
    );
    assert_eq!(
        refer.header("Referred-By"),
        Some(format!("<sip:100@{ours}>")),
        "{}",
        refer.text
    );
    assert_hidden(&transferee, "10.99.1.");

    // The transferor got the 202 and both NOTIFYs with their sipfrag.
    assert!(
        transferor
            .received()
            .iter()
            .any(|m| m.status_code() == Some(202)),
        "{}",
        transferor.describe()
    );
    let notifies: Vec<SipMsg> = transferor
        .received()
        .into_iter()
        .filter(|m| m.is_request("NOTIFY"))
        .collect();
    assert_eq!(notifies.len(), 2, "{}", transferor.describe());
    for (n, frag) in notifies
        .iter()
        .zip(["SIP/2.0 100 Trying", "SIP/2.0 200 OK"])
    {
        assert_eq!(n.header("Event").as_deref(), Some("refer"), "{}", n.text);
        assert!(
            n.header("Content-Type")
                .is_some_and(|t| t.starts_with("message/sipfrag")),
            "{}",
            n.text
        );
        assert_eq!(n.body().trim(), frag, "{}", n.text);
    }
    assert_hidden(&transferor, "10.99.2.");

    // The new call reached the target through mediagate, SDP anchored, ...
    let inv = only_request(&target, "INVITE");
    assert_eq!(
        inv.sdp_conn_addr().as_deref(),
        Some(MG_GW_IP),
        "{}",
        inv.text
    );
    assert_hidden(&target, "10.99.2.");
    // ... and its RTP flowed through mediagate both ways (the target echoes).
    let records = cdrs(&lab.path("cdr.jsonl"), 2);
    let xfer = records
        .iter()
        .find(|r| r["trunk_out"] == "target")
        .unwrap_or_else(|| panic!("no CDR of the transferred call: {records:?}"));
    assert_eq!(xfer["trunk_in"], "itsp", "{xfer}");
    assert_eq!(xfer["called_in"], "200", "{xfer}");
    for leg in ["media_in", "media_out"] {
        let rx = xfer[leg]["rx_packets"].as_u64().unwrap_or(0);
        assert!(rx > 100, "{leg} rx_packets {rx}: {xfer}");
    }
}

#[test]
fn refer_is_rejected_with_403_by_default() {
    let lab = Lab::new("xfer_reject");
    let mut transferor = Sipp::spawn(
        &lab,
        "transferor",
        SippOpts::new(lab.gw(), "uas_transferor", GW_IP)
            .args(&["-key", "mg", MG_GW_IP, "-m", "1"])
            .timeout(20),
    );
    transferor.settle();
    let mg = Mediagate::start(&lab, &transfer_config(&lab, "reject"));
    let remote = format!("{MG_IT_IP}:5060");
    let mut transferee = Sipp::spawn(
        &lab,
        "transferee",
        SippOpts::new(lab.it(), "uac_wait_bye", IT_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(20),
    );
    // The transferor expects 202 and gets 403: its run fails; the transferee saw no REFER.
    let st = transferor.wait();
    assert!(!st.success(), "{}", transferor.describe());
    let codes: Vec<u16> = transferor
        .received()
        .iter()
        .filter(|m| m.header("CSeq").is_some_and(|c| c.ends_with("REFER")))
        .filter_map(SipMsg::status_code)
        .collect();
    // (sipp may retransmit the REFER; each copy gets the same 403)
    assert!(
        !codes.is_empty() && codes.iter().all(|c| *c == 403),
        "{codes:?}\n{}",
        transferor.describe()
    );
    assert!(
        transferee.received().iter().all(|m| !m.is_request("REFER")),
        "{}",
        transferee.describe()
    );
    drop(mg);
    let _ = transferee.stop();
}
