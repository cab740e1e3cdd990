//! Digest authentication and registration against real peers in the three-namespace lab
//! (tests/common/mod.rs):
//!
//!   gw (10.99.1.2, "pbx") -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! The ITSP side is sipp challenging with MD5 (INVITE with qop=auth; REGISTER without qop,
//! refresh and un-REGISTER on SIGTERM) or Kamailio 5.6 challenging INVITEs with SHA-256. These
//! tests need root, sipp and Kamailio; they fail (never skip) without them.

mod common;

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use common::*;

const ITSP_LOCAL: &str = "local = \"udp:10.99.2.1:5060\"\n";

/// The lab config with `extra` keys on the ITSP trunk.
fn config_itsp(extra: &str) -> String {
    let base = config(30);
    assert!(base.contains(ITSP_LOCAL));
    base.replace(ITSP_LOCAL, &format!("{ITSP_LOCAL}{extra}\n"))
}

#[test]
fn sipp_itsp_md5_challenge_on_invite_is_answered_and_the_caller_never_sees_it() {
    let lab = Lab::new("digest-invite");
    let mut uas = Sipp::spawn(
        &lab,
        "itsp",
        SippOpts::new(lab.it(), "uas_auth_invite", IT_IP).timeout(30),
    );
    uas.settle();
    let cfg = config_itsp(r#"auth = { user = "acme", password = "pw-1", realm = "itsp.example" }"#);
    let mg = Mediagate::start(&lab, &cfg);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "pbx",
        SippOpts::new(lab.gw(), "uac_short", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1", "-d", "500"]),
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "ITSP sipp failed: {st}\n{}", uas.describe());
    let invites: Vec<_> = uas
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect();
    assert_eq!(invites.len(), 2, "{}", uas.describe());
    assert!(invites[0].header("Authorization").is_none());
    let auth = invites[1].header("Authorization").expect("credentials");
    assert!(
        auth.contains("username=\"acme\"") && auth.contains("qop=auth"),
        "{auth}"
    );
    assert!(!auth.contains("pw-1"));
    assert_eq!(invites[0].header("Call-ID"), invites[1].header("Call-ID"));
    assert_eq!(invites[1].header("CSeq").as_deref(), Some("2 INVITE"));
    let gw_saw: Vec<u16> = uac
        .received()
        .iter()
        .filter_map(|m| m.status_code())
        .collect();
    assert!(
        !gw_saw.contains(&401),
        "the caller saw the challenge: {gw_saw:?}"
    );
    mg.assert_idle(Duration::from_secs(5));
    assert!(!fs::read_to_string(lab.path("mediagate.log"))
        .unwrap_or_default()
        .contains("pw-1"));
}

#[test]
fn sipp_registrar_md5_register_refresh_and_unregister_on_sigterm() {
    let lab = Lab::new("digest-register");
    let mut uas = Sipp::spawn(
        &lab,
        "registrar",
        SippOpts::new(lab.it(), "uas_auth_register", IT_IP)
            .timeout(30)
            .args(&["-m", "1"]),
    );
    uas.settle();
    let cfg = config_itsp(
        r#"register = { user = "4930123", password = "reg-pw", domain = "itsp.example", expires = 60 }"#,
    );
    let mut mg = Mediagate::start(&lab, &cfg);
    let (ok, st) = mg.wait_status(Duration::from_secs(5), |s| {
        s["trunks"][1]["registration"]["state"] == "registered"
    });
    assert!(ok, "not registered: {st:#}\n{}", uas.describe());
    assert!(st["trunks"][1]["registration"]["expires_at"].is_string());
    assert!(!st.to_string().contains("reg-pw"));
    // Granted 10 s: the refresh (challenged again) comes after ~5 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let registers = |uas: &Sipp| {
        uas.received()
            .iter()
            .filter(|m| m.is_request("REGISTER"))
            .count()
    };
    while registers(&uas) < 4 && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
    }
    assert_eq!(registers(&uas), 4, "no refresh\n{}", uas.describe());
    let (ok, st) = mg.wait_status(Duration::from_secs(2), |s| {
        s["trunks"][1]["registration"]["state"] == "registered"
    });
    assert!(ok, "refresh failed: {st:#}");
    // SIGTERM: un-REGISTER (challenged too), then the registrar's scenario ends.
    mg.stop();
    let st = uas.wait();
    assert!(
        st.success(),
        "registrar sipp failed: {st}\n{}",
        uas.describe()
    );
    let regs: Vec<_> = uas
        .received()
        .into_iter()
        .filter(|m| m.is_request("REGISTER"))
        .collect();
    assert_eq!(regs.len(), 6, "{}", uas.describe());
    assert_eq!(regs[5].header("Expires").as_deref(), Some("0"));
    assert!(regs[5].header("Authorization").is_some());
    assert_eq!(
        regs[0].header("Contact").as_deref(),
        Some("<sip:4930123@10.99.2.1:5060>")
    );
}

#[test]
fn kamailio_itsp_sha256_challenge_on_invite_is_answered() {
    let lab = Lab::new("digest-kamailio");
    let kam = Kamailio::start(
        &lab,
        &lab.it(),
        "itsp",
        &repo_root().join("tests/data/kamailio/itsp_auth.cfg"),
        "10.99.2.2:5060",
    );
    let cfg = config_itsp(r#"auth = { user = "acme", password = "pw-kam" }"#);
    let mg = Mediagate::start(&lab, &cfg);
    let remote = format!("{MG_GW_IP}:5060");
    // Kamailio answers an authenticated INVITE with 486; a failed authentication would reach
    // the caller as 503.
    let mut uac = Sipp::spawn(
        &lab,
        "pbx",
        SippOpts::new(lab.gw(), "uac_expect_486", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    let log = kam.log_text();
    assert!(log.contains("AUTH-CHALLENGE"), "{log}");
    let ok = log
        .lines()
        .find(|l| l.contains("AUTH-OK"))
        .unwrap_or_else(|| panic!("kamailio never accepted the credentials:\n{log}"));
    assert!(ok.contains("user=acme") && ok.contains("cseq=2"), "{ok}");
    assert!(
        ok.contains("algorithm=SHA-256") && ok.contains("qop=auth"),
        "{ok}"
    );
    mg.assert_idle(Duration::from_secs(5));
}
