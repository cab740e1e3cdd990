//! Mid-call re-INVITEs through mediagate between real sipp peers (issue 7): a call held with
//! `a=sendonly` and resumed with `a=sendrecv`, with RTP relayed through mediagate afterwards.
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it. Logs, sipp traces and captures of
//! a failed test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

struct Side {
    ns: String,
    iface: String,
    peer_ip: &'static str,
    mg_ip: &'static str,
}

fn sides(lab: &Lab, from_gw: bool) -> (Side, Side) {
    let gw = Side {
        ns: lab.gw(),
        iface: lab.gw_if(),
        peer_ip: GW_IP,
        mg_ip: MG_GW_IP,
    };
    let it = Side {
        ns: lab.it(),
        iface: lab.it_if(),
        peer_ip: IT_IP,
        mg_ip: MG_IT_IP,
    };
    if from_gw {
        (gw, it)
    } else {
        (it, gw)
    }
}

fn attr(m: &SipMsg, name: &str) -> bool {
    m.body().lines().any(|l| l.trim() == format!("a={name}"))
}

fn cseq_of(m: &SipMsg) -> String {
    m.header("CSeq").unwrap_or_default()
}

/// The received INVITEs of a sipp run (initial and re-INVITEs), in order.
fn invites(s: &Sipp) -> Vec<SipMsg> {
    s.received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect()
}

/// The received 200s to INVITEs of a sipp run, one per CSeq, in order.
fn invite_oks(s: &Sipp) -> Vec<SipMsg> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for m in s.received() {
        let cseq = cseq_of(&m);
        if m.status_code() == Some(200) && cseq.ends_with("INVITE") && !seen.contains(&cseq) {
            seen.push(cseq);
            out.push(m);
        }
    }
    out
}

/// A call from `from_gw`'s side, held and resumed by the caller (re-INVITEs on mediagate's
/// caller leg, relayed on the callee leg), with the pcap played after the resume and echoed.
fn hold_and_resume(test: &str, from_gw: bool) {
    let lab = Lab::new(test);
    let (caller, callee) = sides(&lab, from_gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_hold_resume", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &config(30));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_hold_resume", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    // RTP flows after the resume: both legs latched.
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(
        flowing,
        "no RTP after the resume: {st:#}\n{}",
        mg.log_tail(40)
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // The callee saw three INVITEs in mediagate's dialog: initial, hold, resume.
    let inv = invites(&uas);
    assert_eq!(inv.len(), 3, "{}", uas.describe());
    let call_id = inv[0].header("Call-ID").unwrap();
    for (i, m) in inv.iter().enumerate() {
        assert_eq!(m.header("Call-ID").as_deref(), Some(call_id.as_str()));
        assert_eq!(cseq_of(m), format!("{} INVITE", i + 1));
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(callee.mg_ip),
            "{}",
            m.text
        );
        assert!(
            !m.text.contains(caller.peer_ip),
            "caller address leaked:\n{}",
            m.text
        );
        assert_eq!(
            m.sdp_audio_port(),
            inv[0].sdp_audio_port(),
            "same anchor port"
        );
    }
    assert_ne!(
        call_id,
        invites_sent_call_id(&uac),
        "the callee leg has its own Call-ID"
    );
    assert!(attr(&inv[1], "sendonly"), "hold offer: {}", inv[1].text);
    assert!(attr(&inv[2], "sendrecv"), "resume offer: {}", inv[2].text);
    assert_eq!(
        uas.received()
            .iter()
            .filter(|m| m.is_request("ACK"))
            .count(),
        3,
        "every ACK relayed end to end\n{}",
        uas.describe()
    );

    // The caller saw the answers anchored on mediagate's port, hold then resume.
    let oks = invite_oks(&uac);
    assert_eq!(oks.len(), 3, "{}", uac.describe());
    for m in &oks {
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(caller.mg_ip),
            "{}",
            m.text
        );
        assert!(
            !m.text.contains(callee.peer_ip),
            "callee address leaked:\n{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), oks[0].sdp_audio_port());
    }
    assert!(attr(&oks[1], "recvonly"), "hold answer: {}", oks[1].text);
    assert!(attr(&oks[2], "sendrecv"), "resume answer: {}", oks[2].text);

    // Media after the resume: the pcap relayed to the callee, its echo back to the caller,
    // each from the port mediagate advertised on that side.
    let caller_port = oks[0].sdp_audio_port().unwrap();
    let callee_port = inv[0].sdp_audio_port().unwrap();
    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let to_callee = callee_cap
        .flows()
        .get(&(
            sa(callee.mg_ip, callee_port),
            sa(callee.peer_ip, SIPP_MEDIA_PORT),
        ))
        .copied()
        .unwrap_or(0);
    let to_caller = caller_cap
        .flows()
        .get(&(
            sa(caller.mg_ip, caller_port),
            sa(caller.peer_ip, SIPP_MEDIA_PORT),
        ))
        .copied()
        .unwrap_or(0);
    assert!(
        to_callee > 100,
        "RTP toward the callee after resume: {to_callee}\n{desc}"
    );
    assert!(
        to_caller > 100,
        "echo toward the caller after resume: {to_caller}\n{desc}"
    );
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
}

fn invites_sent_call_id(s: &Sipp) -> String {
    s.messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .expect("caller sent an INVITE")
}

#[test]
fn caller_on_pbx_holds_and_resumes_with_rtp_after() {
    hold_and_resume("hold_gw", true);
}

#[test]
fn caller_on_itsp_holds_and_resumes_with_rtp_after() {
    hold_and_resume("hold_it", false);
}

/// The requests of `method` a sipp run received, in order.
fn requests(s: &Sipp, method: &str) -> Vec<SipMsg> {
    s.received()
        .into_iter()
        .filter(|m| m.is_request(method))
        .collect()
}

/// The callee holds and resumes (re-INVITEs on mediagate's callee leg, relayed on the caller
/// leg in mediagate's dialog with the caller), RTP flows after the resume, and the caller's
/// INFO (DTMF) reaches the callee.
#[test]
fn callee_holds_and_resumes_and_info_is_relayed() {
    let lab = Lab::new("held_by_callee");
    let (caller, callee) = sides(&lab, true);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_holds", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &config(30));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_held", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(
        flowing,
        "no RTP after the resume: {st:#}\n{}",
        mg.log_tail(40)
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // The caller got the callee's re-INVITEs in its own dialog with mediagate.
    let own_call_id = invites_sent_call_id(&uac);
    let reinv = requests(&uac, "INVITE");
    assert_eq!(reinv.len(), 2, "{}", uac.describe());
    let caller_port = invite_oks(&uac)[0].sdp_audio_port().unwrap();
    for (i, m) in reinv.iter().enumerate() {
        assert_eq!(m.header("Call-ID").as_deref(), Some(own_call_id.as_str()));
        assert_eq!(cseq_of(m), format!("{} INVITE", i + 1));
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(caller.mg_ip),
            "{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), Some(caller_port));
        assert!(
            !m.text.contains(callee.peer_ip),
            "callee address leaked:\n{}",
            m.text
        );
    }
    assert!(attr(&reinv[0], "sendonly") && attr(&reinv[1], "sendrecv"));
    assert_eq!(requests(&uac, "ACK").len(), 2, "ACKs relayed end to end");
    // The callee got the caller's answers, anchored.
    let oks = invite_oks(&uas);
    assert_eq!(oks.len(), 2, "{}", uas.describe());
    let callee_port = requests(&uas, "INVITE")[0].sdp_audio_port().unwrap();
    for m in &oks {
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(callee.mg_ip),
            "{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), Some(callee_port));
        assert!(
            !m.text.contains(caller.peer_ip),
            "caller address leaked:\n{}",
            m.text
        );
    }
    assert!(attr(&oks[0], "recvonly") && attr(&oks[1], "sendrecv"));
    // INFO relayed with its body, the 200 back.
    let info = requests(&uas, "INFO");
    assert_eq!(info.len(), 1, "{}", uas.describe());
    assert!(info[0].body().contains("Signal=5"), "{}", info[0].text);
    assert_eq!(
        info[0].header("Content-Type").as_deref(),
        Some("application/dtmf-relay")
    );
    assert!(!info[0].text.contains(caller.peer_ip));

    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let to_callee = callee_cap
        .flows()
        .get(&(
            sa(callee.mg_ip, callee_port),
            sa(callee.peer_ip, SIPP_MEDIA_PORT),
        ))
        .copied()
        .unwrap_or(0);
    let to_caller = caller_cap
        .flows()
        .get(&(
            sa(caller.mg_ip, caller_port),
            sa(caller.peer_ip, SIPP_MEDIA_PORT),
        ))
        .copied()
        .unwrap_or(0);
    assert!(
        to_callee > 100,
        "RTP toward the callee after resume: {to_callee}\n{desc}"
    );
    assert!(
        to_caller > 100,
        "echo toward the caller after resume: {to_caller}\n{desc}"
    );
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
}
