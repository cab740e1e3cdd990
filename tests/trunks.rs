//! Trunk health, failover, load balancing, limits, drain and CDRs (issue 5) end to end: the
//! real mediagate binary between real sipp peers in the three-namespace lab
//! (tests/common/mod.rs), with the ITSP trunk given two peers on the `it` side:
//!
//!   gw (10.99.1.2, "pbx") -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (P1 10.99.2.3, P2 10.99.2.2: "itsp")
//!
//! P1 is an address added to it's veth for these tests, so that it can be taken away and given
//! back (OPTIONS keepalive). Calls come from the PBX side and are routed to "itsp"; a second
//! caller on the PBX address uses port 5062. These tests need root; they fail (never skip)
//! without it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const DIALLED: &str = "+4930123";
/// The ITSP trunk's first peer: the address these tests add (and take away) on it's veth.
const P1: &str = IT2_IP;
/// The ITSP trunk's second peer: the lab's own ITSP address.
const P2: &str = IT_IP;
/// SIP and media ports of a second caller on the PBX address while the first is still running.
const SECOND_CALLER: (u16, u16) = (5062, 6100);
/// sipp `-timeout` of the answering peers, which the tests stop long before with SIGUSR1.
const PEER_TIMEOUT_S: u32 = 90;

// ---------------------------------------------------------------------------
// Setup shared by the scenarios
// ---------------------------------------------------------------------------

/// The lab with the second ITSP address in place.
fn lab(name: &str) -> Lab {
    let lab = Lab::new(name);
    lab.add_it_addr(&format!("{P1}/24"));
    lab
}

/// The lab config (tests/data/lab.toml) with the ITSP trunk on peers [P1, P2] plus
/// `itsp_keys`, `sip_keys` added to `[sip]`, and a CDR file when `cdr` is given.
fn trunk_config(itsp_keys: &str, sip_keys: &str, cdr: Option<&Path>) -> String {
    let base = config(30);
    let sip = "max_calls = 100\n";
    let itsp = format!("peers = [\"udp:{IT_IP}:5060\"]\nlocal = \"udp:{MG_IT_IP}:5060\"\n");
    assert!(
        base.matches(sip).count() == 1 && base.contains(&itsp),
        "tests/data/lab.toml changed shape:\n{base}"
    );
    let mut text = base.replace(sip, &format!("{sip}{sip_keys}\n")).replace(
        &itsp,
        &format!(
            "peers = [\"udp:{P1}:5060\", \"udp:{P2}:5060\"]\nlocal = \"udp:{MG_IT_IP}:5060\"\n{itsp_keys}\n"
        ),
    );
    if let Some(path) = cdr {
        text.push_str(&format!("\n[cdr]\npath = \"{}\"\n", path.display()));
    }
    text
}

/// An answering sipp on ITSP address `ip`; stop it with `stop_ok`.
fn peer(lab: &Lab, name: &str, ip: &str, scenario: &str, extra: &[&str]) -> Sipp {
    Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.it(), scenario, ip)
            .args(extra)
            .timeout(PEER_TIMEOUT_S),
    )
}

/// The two ITSP peers running `s1` on P1 and `s2` on P2 (with extra sipp arguments), settled.
fn peers(lab: &Lab, tag: &str, s1: (&str, &[&str]), s2: (&str, &[&str])) -> (Sipp, Sipp) {
    let p1 = peer(lab, &format!("p1{tag}"), P1, s1.0, s1.1);
    let p2 = peer(lab, &format!("p2{tag}"), P2, s2.0, s2.1);
    p2.settle();
    (p1, p2)
}

/// A caller on the PBX side running `scenario` toward `dialled` with `args` (give `-m`), on
/// `ports` (SIP, media).
fn caller_on(
    lab: &Lab,
    name: &str,
    scenario: &str,
    dialled: &str,
    args: &[&str],
    ports: (u16, u16),
) -> Sipp {
    let remote = format!("{MG_GW_IP}:5060");
    Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.gw(), scenario, GW_IP)
            .caller(dialled, &remote)
            .ports(ports.0, ports.1)
            .args(args),
    )
}

fn caller(lab: &Lab, name: &str, scenario: &str, dialled: &str, args: &[&str]) -> Sipp {
    caller_on(lab, name, scenario, dialled, args, (5060, SIPP_MEDIA_PORT))
}

/// One call that must succeed (the scenario's own expectations), waited for.
fn place(
    lab: &Lab,
    mg: &Mediagate,
    name: &str,
    scenario: &str,
    dialled: &str,
    args: &[&str],
    ports: (u16, u16),
) -> Sipp {
    let mut all = vec!["-m", "1"];
    all.extend_from_slice(args);
    let mut c = caller_on(lab, name, scenario, dialled, &all, ports);
    c.assert_ok(Some(mg));
    c
}

/// A short call (held `hold_ms`) that must be answered.
fn answered_call(lab: &Lab, mg: &Mediagate, name: &str, hold_ms: u32) -> Sipp {
    let hold = hold_ms.to_string();
    place(
        lab,
        mg,
        name,
        "uac_short",
        DIALLED,
        &["-d", &hold],
        (5060, SIPP_MEDIA_PORT),
    )
}

/// Stops an answering sipp (SIGUSR1) and asserts that every call it took went as its scenario
/// says (e.g. the ACK of a rejection arrived).
fn stop_ok(s: &mut Sipp) {
    let st = s.stop();
    assert!(
        st.success(),
        "sipp '{}' failed: {st}\n{}",
        s.name,
        s.describe()
    );
}

/// Distinct calls (Call-IDs) a sipp received an INVITE for, in order.
fn invite_call_ids(s: &Sipp) -> Vec<String> {
    let mut seen = HashSet::new();
    s.received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .filter_map(|m| m.header("Call-ID"))
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn invites(s: &Sipp) -> usize {
    invite_call_ids(s).len()
}

/// Final responses to INVITE a caller received.
fn invite_finals(s: &Sipp) -> Vec<SipMsg> {
    s.received()
        .into_iter()
        .filter(|m| {
            m.status_code().is_some_and(|c| c >= 200)
                && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
        .collect()
}

/// The caller got answers to its INVITE, and every one is a 200 (a retransmission at most).
fn assert_one_200(s: &Sipp) {
    let finals = invite_finals(s);
    assert!(
        !finals.is_empty() && finals.iter().all(|m| m.status_code() == Some(200)),
        "'{}' must see only 200 as the final answer, got {:?}\n{}",
        s.name,
        finals.iter().map(|m| m.start_line()).collect::<Vec<_>>(),
        s.describe()
    );
}

/// The caller was refused with 503 carrying a numeric `Retry-After`; returns its seconds.
fn assert_503_retry_after(s: &Sipp) -> u64 {
    let finals = invite_finals(s);
    let r = finals
        .iter()
        .find(|m| m.status_code() == Some(503))
        .unwrap_or_else(|| panic!("'{}' got no 503\n{}", s.name, s.describe()));
    let secs = r
        .header("Retry-After")
        .and_then(|v| v.split([' ', ';', '(']).next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("503 without a numeric Retry-After:\n{}", r.text));
    assert!(secs > 0, "Retry-After 0:\n{}", r.text);
    secs
}

/// The Call-ID of a caller's INVITE.
fn caller_call_id(s: &Sipp) -> String {
    s.messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .unwrap_or_else(|| panic!("'{}' sent no INVITE\n{}", s.name, s.describe()))
}

fn trunk<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["trunks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no trunk {name} in /status: {st:#}"))
}

/// `state` of ITSP peer `ip` in a /status snapshot.
fn peer_state<'a>(st: &'a Value, ip: &str) -> &'a str {
    let addr = format!("{ip}:5060");
    trunk(st, "itsp")["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["address"] == addr.as_str()))
        .and_then(|p| p["state"].as_str())
        .unwrap_or_else(|| panic!("no state for peer {addr}: {st:#}"))
}

/// Polls /status until the ITSP peers are in `states` ([P1, P2]); panics after `within`.
fn wait_peers(mg: &Mediagate, states: [&str; 2], within: Duration) {
    let (ok, st) = mg.wait_status(within, |st| {
        peer_state(st, P1) == states[0] && peer_state(st, P2) == states[1]
    });
    assert!(
        ok,
        "ITSP peers not {states:?} within {within:?}: {:#}",
        trunk(&st, "itsp")
    );
}

/// Polls /status until `n` calls are confirmed (answered and ACKed) on the ITSP trunk.
fn wait_confirmed(mg: &Mediagate, n: usize) {
    let within = Duration::from_secs(5);
    let (ok, st) = mg.wait_status(within, |st| {
        trunk(st, "itsp")["active_calls"].as_u64() == Some(n as u64)
            && st["calls"]
                .as_array()
                .is_some_and(|cs| cs.len() == n && cs.iter().all(|c| c["state"] == "confirmed"))
    });
    assert!(ok, "{n} confirmed calls not up within {within:?}: {st:#}");
}

/// `mediagate trunk ACTION itsp --config FILE` run inside the mg namespace; its JSON reply.
fn trunk_cli(lab: &Lab, mg: &Mediagate, action: &str) -> Value {
    let out = run(Command::new("ip")
        .args(["netns", "exec", &lab.mg()])
        .arg(mediagate_bin())
        .args(["trunk", action, "itsp", "--config"])
        .arg(&mg.config_path));
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("`mediagate trunk {action}` printed no JSON ({e}): {out}"))
}

/// The CDR lines written so far, once there are `n` (bounded wait).
/// An `attempts` entry of a CDR.
fn attempt(ip: &str, code: Value) -> Value {
    json!({"trunk": "itsp", "peer": format!("udp:{ip}:5060"), "code": code})
}

// ---------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------

#[test]
fn first_peer_503_fails_over_to_the_second() {
    let lab = lab("t_fo503");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_503", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config("", "", None));
    let call = answered_call(&lab, &mg, "pbx", 300);
    assert_one_200(&call);
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    assert_eq!(
        invites(&p1),
        1,
        "P1 got the INVITE first\n{}",
        p1.describe()
    );
    assert_eq!(invites(&p2), 1, "P2 took the call\n{}", p2.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn silent_first_peer_fails_over_after_invite_timeout() {
    let lab = lab("t_fosilent");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_silent", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config("invite_timeout_s = 2", "", None));
    let t0 = Instant::now();
    let call = answered_call(&lab, &mg, "pbx", 200);
    let took = t0.elapsed();
    assert_one_200(&call);
    // The 2 s invite timeout was waited for, not Timer B's 32 s.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "the call took {took:?} (invite_timeout_s = 2)"
    );
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    assert_eq!(
        invites(&p1),
        1,
        "P1 got the INVITE first\n{}",
        p1.describe()
    );
    assert_eq!(invites(&p2), 1, "P2 took the call\n{}", p2.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn peer_down_by_options_is_skipped_until_it_answers_again() {
    let lab = lab("t_options");
    let cdr = lab.path("cdr.jsonl");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let probing = "options_interval_s = 2\noptions_timeout_s = 1\ndown_after = 1\nup_after = 1";
    let mg = Mediagate::start(&lab, &trunk_config(probing, "", Some(&cdr)));
    wait_peers(&mg, ["up", "up"], Duration::from_secs(10));

    // Both up: priority sends the call to P1.
    answered_call(&lab, &mg, "pbx1", 200);
    stop_ok(&mut p1);
    assert_eq!(invites(&p1), 1, "{}", p1.describe());
    assert_eq!(
        cdrs(&cdr, 1)[0]["attempts"],
        json!([attempt(P1, 200.into())])
    );

    // P1 vanishes: its probe goes unanswered, it is down, calls go straight to P2.
    lab.del_it_addr(&format!("{P1}/24"));
    wait_peers(&mg, ["down", "up"], Duration::from_secs(10));
    answered_call(&lab, &mg, "pbx2", 200);
    assert_eq!(
        cdrs(&cdr, 2)[1]["attempts"],
        json!([attempt(P2, 200.into())]),
        "a down peer is not tried"
    );

    // P1 is back and answers OPTIONS: up again, and the first choice again.
    lab.add_it_addr(&format!("{P1}/24"));
    let mut p1b = peer(&lab, "p1b", P1, "uas_wait_bye", &[]);
    wait_peers(&mg, ["up", "up"], Duration::from_secs(10));
    answered_call(&lab, &mg, "pbx3", 200);
    assert_eq!(
        cdrs(&cdr, 3)[2]["attempts"],
        json!([attempt(P1, 200.into())])
    );
    stop_ok(&mut p1b);
    stop_ok(&mut p2);
    assert_eq!(invites(&p1b), 1, "{}", p1b.describe());
    assert_eq!(invites(&p2), 1, "{}", p2.describe());
    mg.assert_idle(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------

/// 100 short calls through the ITSP trunk with `strategy_keys`; the calls each peer took.
fn spread(name: &str, strategy_keys: &str) -> (usize, usize) {
    let lab = lab(name);
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config(strategy_keys, "", None));
    let mut calls = caller(
        &lab,
        "pbx",
        "uac_short",
        DIALLED,
        &["-m", "100", "-r", "20", "-l", "20"],
    );
    calls.assert_ok(Some(&mg));
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    mg.assert_idle(Duration::from_secs(5));
    let shares = (invites(&p1), invites(&p2));
    assert_eq!(shares.0 + shares.1, 100, "every call reached one peer once");
    shares
}

#[test]
fn round_robin_spreads_100_calls_evenly() {
    assert_eq!(spread("t_rr", "strategy = \"round-robin\""), (50, 50));
}

#[test]
fn weighted_spreads_100_calls_3_to_1() {
    assert_eq!(
        spread("t_wrr", "strategy = \"weighted\"\nweights = [3, 1]"),
        (75, 25)
    );
}

// ---------------------------------------------------------------------------
// Limits, drain, emergency, maximum duration
// ---------------------------------------------------------------------------

/// Long calls from the PBX (each held `hold_ms`), waited for until confirmed.
fn long_calls(lab: &Lab, mg: &Mediagate, n: usize, hold_ms: u32) -> Sipp {
    let (m, hold) = (n.to_string(), hold_ms.to_string());
    let calls = caller(
        lab,
        "long",
        "uac_short",
        DIALLED,
        &["-m", &m, "-l", &m, "-r", "10", "-d", &hold],
    );
    wait_confirmed(mg, n);
    calls
}

#[test]
fn max_calls_refuses_with_503_then_frees_the_slots() {
    let lab = lab("t_maxcalls");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config("max_calls = 2", "", None));
    let mut long = long_calls(&lab, &mg, 2, 5000);

    let third = place(
        &lab,
        &mg,
        "third",
        "uac_expect_503",
        DIALLED,
        &[],
        SECOND_CALLER,
    );
    assert_503_retry_after(&third);
    assert!(
        long.exited().is_none(),
        "the two long calls must still be up while the third is refused"
    );
    long.assert_ok(Some(&mg));

    let (ok, st) = mg.wait_status(Duration::from_secs(5), |st| {
        trunk(st, "itsp")["active_calls"] == 0
    });
    assert!(ok, "slots not released: {st:#}");
    answered_call(&lab, &mg, "after", 200);
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    assert_eq!(invites(&p1), 3, "{}", p1.describe());
    assert_eq!(invites(&p2), 0, "{}", p2.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn drain_with_the_cli_refuses_new_calls_and_keeps_calls_up() {
    let lab = lab("t_drain");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config("", "", None));
    let mut long = long_calls(&lab, &mg, 1, 5000);

    assert_eq!(
        trunk_cli(&lab, &mg, "drain"),
        json!({"trunk": "itsp", "draining": true})
    );
    let st = mg.status();
    assert_eq!(trunk(&st, "itsp")["draining"], true, "{st:#}");
    let refused = place(
        &lab,
        &mg,
        "refused",
        "uac_expect_503",
        DIALLED,
        &[],
        SECOND_CALLER,
    );
    assert_503_retry_after(&refused);
    // The call that was up continues to its own BYE (answered 200 by mediagate and P1).
    assert!(long.exited().is_none(), "the long call ended early");
    long.assert_ok(Some(&mg));

    assert_eq!(
        trunk_cli(&lab, &mg, "resume"),
        json!({"trunk": "itsp", "draining": false})
    );
    assert_eq!(trunk(&mg.status(), "itsp")["draining"], false);
    answered_call(&lab, &mg, "after", 200);
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    assert_eq!(invites(&p1), 2, "{}", p1.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn emergency_call_passes_a_full_trunk() {
    let lab = lab("t_emerg");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let config = trunk_config("max_calls = 1", "emergency = [\"^112$\"]", None);
    let mg = Mediagate::start(&lab, &config);
    let mut long = long_calls(&lab, &mg, 1, 5000);

    // The trunk is full for an ordinary call...
    let refused = place(
        &lab,
        &mg,
        "refused",
        "uac_expect_503",
        DIALLED,
        &[],
        SECOND_CALLER,
    );
    assert_503_retry_after(&refused);
    // ...and not for 112.
    let sos = place(
        &lab,
        &mg,
        "sos",
        "uac_short",
        "112",
        &["-d", "200"],
        SECOND_CALLER,
    );
    assert_one_200(&sos);
    assert!(long.exited().is_none(), "the long call ended early");
    long.assert_ok(Some(&mg));
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let to_112 = p1
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE") && m.start_line().starts_with("INVITE sip:112@"))
        .count();
    assert!(to_112 >= 1, "P1 got no INVITE for 112\n{}", p1.describe());
    assert_eq!(invites(&p1), 2, "{}", p1.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn max_duration_ends_the_call_with_bye_to_both_legs() {
    let lab = lab("t_maxdur");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &trunk_config("max_duration_s = 3", "", None));
    let t0 = Instant::now();
    // Neither side hangs up: both wait for mediagate's BYE.
    place(
        &lab,
        &mg,
        "pbx",
        "uac_wait_bye",
        DIALLED,
        &[],
        (5060, SIPP_MEDIA_PORT),
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "the call lasted {took:?} with max_duration_s = 3"
    );
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let byes = p1.received().iter().filter(|m| m.is_request("BYE")).count();
    assert!(byes >= 1, "P1 got no BYE\n{}", p1.describe());
    mg.assert_idle(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Call detail records
// ---------------------------------------------------------------------------

#[test]
fn cdrs_record_each_ending() {
    let lab = lab("t_cdr");
    let path = lab.path("cdr.jsonl");
    let config = trunk_config("max_calls = 1\nmax_duration_s = 3", "", Some(&path));
    let mg = Mediagate::start(&lab, &config);

    // Answered, hung up by the caller after 1 s.
    let (mut p1, mut p2) = peers(&lab, "a", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let call = answered_call(&lab, &mg, "answered", 1000);
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let r = &cdrs(&path, 1)[0];
    assert_eq!(r["sip_call_id"], caller_call_id(&call).as_str(), "{r}");
    assert_eq!(
        (
            &r["trunk_in"],
            &r["trunk_out"],
            &r["called_in"],
            &r["called_out"]
        ),
        (
            &json!("pbx"),
            &json!("itsp"),
            &json!(DIALLED),
            &json!(DIALLED)
        ),
        "{r}"
    );
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(200), &json!("caller"), &json!("bye")),
        "{r}"
    );
    assert!(r["answer_time"].is_string(), "{r}");
    let d = r["duration_s"].as_f64().unwrap_or(-1.0);
    assert!(d > 0.5 && d < 5.0, "duration_s of a 1 s call: {r}");
    assert_eq!(r["attempts"], json!([attempt(P1, 200.into())]), "{r}");

    // Failover: P1 503, P2 answers.
    let (mut p1, mut p2) = peers(&lab, "b", ("uas_503", &[]), ("uas_wait_bye", &[]));
    answered_call(&lab, &mg, "failover", 300);
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let r = &cdrs(&path, 2)[1];
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(200), &json!("caller"), &json!("bye")),
        "{r}"
    );
    assert_eq!(
        r["attempts"],
        json!([attempt(P1, 503.into()), attempt(P2, 200.into())]),
        "{r}"
    );

    // Rejected by both: P1 503 (fails over), P2 486 (does not): the caller gets 486.
    let (mut p1, mut p2) = peers(&lab, "c", ("uas_503", &[]), ("uas_busy", &[]));
    let rejected = place(
        &lab,
        &mg,
        "rejected",
        "uac_expect_486",
        DIALLED,
        &[],
        (5060, SIPP_MEDIA_PORT),
    );
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let r = &cdrs(&path, 3)[2];
    assert_eq!(r["sip_call_id"], caller_call_id(&rejected).as_str(), "{r}");
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(486), &json!("callee"), &json!("rejected")),
        "{r}"
    );
    assert!(
        r["answer_time"].is_null() && r["duration_s"].is_null(),
        "{r}"
    );
    assert_eq!(
        r["attempts"],
        json!([attempt(P1, 503.into()), attempt(P2, 486.into())]),
        "{r}"
    );

    // Maximum duration; while it is up, a second call is over max_calls = 1 and gets 503.
    let (mut p1, mut p2) = peers(&lab, "d", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mut long = caller(&lab, "maxdur", "uac_wait_bye", DIALLED, &["-m", "1"]);
    wait_confirmed(&mg, 1);
    let refused = place(
        &lab,
        &mg,
        "refused",
        "uac_expect_503",
        DIALLED,
        &[],
        SECOND_CALLER,
    );
    assert_503_retry_after(&refused);
    long.assert_ok(Some(&mg));
    stop_ok(&mut p1);
    stop_ok(&mut p2);
    let all = cdrs(&path, 5);
    // The call refused over max_calls = 1 ended first: it is recorded as one mediagate could
    // not connect, sent to no trunk (README "Call detail records").
    let r = &all[3];
    assert_eq!(r["sip_call_id"], caller_call_id(&refused).as_str(), "{r}");
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(503), &json!("mediagate"), &json!("failed")),
        "{r}"
    );
    assert_eq!(
        (
            &r["trunk_in"],
            &r["trunk_out"],
            &r["called_out"],
            &r["attempts"]
        ),
        (&json!("pbx"), &Value::Null, &Value::Null, &json!([])),
        "{r}"
    );
    assert!(
        r["answer_time"].is_null() && r["duration_s"].is_null(),
        "{r}"
    );
    let r = &all[4];
    assert_eq!(r["sip_call_id"], caller_call_id(&long).as_str(), "{r}");
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(200), &json!("mediagate"), &json!("max-duration")),
        "{r}"
    );
    assert_eq!(r["attempts"], json!([attempt(P1, 200.into())]), "{r}");
    let d = r["duration_s"].as_f64().unwrap_or(-1.0);
    assert!(
        (2.5..6.0).contains(&d),
        "duration_s with max_duration_s = 3: {r}"
    );
    mg.assert_idle(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// A peer that dies mid-call (its address taken away: nothing sent to it arrives, nothing comes
/// back) stalls nothing: its call, with no media flowing, ends by the media timeout with a BYE
/// to the caller and a clean record although the BYE toward the dead peer is never answered,
/// and a new call placed meanwhile fails over to the other peer after `invite_timeout_s`.
#[test]
fn a_peer_dying_mid_call_ends_its_call_by_media_timeout_while_new_calls_fail_over() {
    let lab = lab("t_dies");
    let path = lab.path("cdr.jsonl");
    let config = trunk_config("invite_timeout_s = 2", "", Some(&path));
    let media_timeout = "\ntimeout_s = 30\n";
    assert_eq!(config.matches(media_timeout).count(), 1, "{config}");
    let config = config.replace(media_timeout, "\ntimeout_s = 4\n");
    let (mut p1, mut p2) = peers(&lab, "", ("uas_wait_bye", &[]), ("uas_wait_bye", &[]));
    let mg = Mediagate::start(&lab, &config);
    let mut doomed = caller(&lab, "doomed", "uac_wait_bye", DIALLED, &["-m", "1"]);
    wait_confirmed(&mg, 1);
    lab.del_it_addr(&format!("{P1}/24"));

    let rescued = place(
        &lab,
        &mg,
        "rescued",
        "uac_short",
        DIALLED,
        &["-d", "300"],
        SECOND_CALLER,
    );
    assert_one_200(&rescued);
    doomed.assert_ok(Some(&mg));
    mg.assert_idle(Duration::from_secs(10));
    stop_ok(&mut p2);
    p1.stop();

    let records = cdrs(&path, 2);
    let record_of = |s: &Sipp| {
        let id = caller_call_id(s);
        records
            .iter()
            .find(|r| r["sip_call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no CDR for {id}: {records:#?}"))
            .clone()
    };
    let r = record_of(&doomed);
    assert_eq!(
        (&r["final_code"], &r["ended_by"], &r["end_reason"]),
        (&json!(200), &json!("mediagate"), &json!("media-timeout")),
        "{r}"
    );
    assert_eq!(r["attempts"], json!([attempt(P1, 200.into())]), "{r}");
    let r = record_of(&rescued);
    assert_eq!(
        (&r["final_code"], &r["end_reason"]),
        (&json!(200), &json!("bye")),
        "{r}"
    );
    assert_eq!(
        r["attempts"],
        json!([attempt(P1, "timeout".into()), attempt(P2, 200.into())]),
        "{r}"
    );
}
