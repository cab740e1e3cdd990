//! Forked early dialogs through mediagate with a real forking proxy (issue 7,
//! `max_early_dialogs`): Kamailio at the ITSP edge forks mediagate's INVITE in parallel to two
//! sipp phones; one rings ("180 Ringing Answerer") and answers 1.5 s later, the other rings
//! until Kamailio cancels it. The caller behind the PBX trunk must see each ringing fork as an
//! early dialog of its own (distinct To tags), the 200 in the answering fork's early dialog,
//! and RTP both ways after the answer; with `max_early_dialogs = 1` only one early dialog.
//!
//!   gw (10.99.1.2, "pbx") -- [mediagate] -- Kamailio (10.99.2.2:5060, "itsp")
//!                                              ├─ answerer sipp 10.99.2.2:5070
//!                                              └─ ringer sipp   10.99.2.2:5080
//!
//! These tests need root; they fail (never skip) without it. Logs and sipp traces of a failed
//! test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::kamailio::Kamailio;
use common::*;

const DIALLED: &str = "+4930123";
/// The reason phrase of the answering fork's 180 (`uas_fork_answer.xml`).
const ANSWERER: &str = "SIP/2.0 180 Ringing Answerer";

/// The To tag of a message.
fn to_tag(m: &SipMsg) -> String {
    let to = m.header("To").unwrap_or_default();
    to.split(";tag=")
        .nth(1)
        .unwrap_or_else(|| panic!("no To tag:\n{}", m.text))
        .to_string()
}

/// What the caller saw of one forked call.
struct Seen {
    /// The 18x the caller received, in order.
    ringing: Vec<SipMsg>,
    /// The 200 to its INVITE.
    ok: SipMsg,
    /// Provisionals mediagate did not relay, from `/metrics`.
    unrelayed: f64,
}

/// Places one call from the PBX side through mediagate (with the ITSP trunk's extra keys
/// `itsp_keys`) to the forking Kamailio; checks RTP flowed both ways after the answer, the call
/// completed and mediagate ended idle.
fn forked_call(lab: &Lab, itsp_keys: &str) -> Seen {
    let (caller, callee) = sides(lab, Origin::Gw);
    let mut answerer = Sipp::spawn(
        lab,
        "answerer",
        SippOpts::new(callee.ns.clone(), "uas_fork_answer", IT_IP)
            .ports(5070, 6000)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    let mut ringer = Sipp::spawn(
        lab,
        "ringer",
        SippOpts::new(callee.ns.clone(), "uas_ring_cancel", IT_IP)
            .ports(5080, 6100)
            .timeout(45),
    );
    answerer.settle();
    let cfg = repo_root().join("tests/data/kamailio/fork.cfg");
    let kamailio = Kamailio::start(lab, &lab.it(), "fork", &cfg, &format!("{IT_IP}:5060"));
    let local = "local = \"udp:10.99.2.1:5060\"\n";
    let base = config(30);
    assert!(base.contains(local), "lab.toml changed");
    let mut mg = Mediagate::start(lab, &base.replace(local, &format!("{local}{itsp_keys}")));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_forked", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(40),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(15), |st| {
        st["calls"][0]["state"] == "confirmed" && rtp_flowing(st, 1)
    });
    assert!(
        flowing,
        "no RTP both ways after the answer: {st:#}\n{}\n{}",
        mg.log_tail(40),
        kamailio.log_text()
    );
    let unrelayed = mg.metric("mediagate_sip_forks_unrelayed_total");
    uac.assert_ok(Some(&mg));
    let st = ringer.stop();
    assert!(
        st.success(),
        "ringer sipp failed: {st}\n{}",
        ringer.describe()
    );
    let st = answerer.stop();
    assert!(
        st.success(),
        "answerer sipp failed: {st}\n{}",
        answerer.describe()
    );
    assert!(
        ringer.received().iter().any(|m| m.is_request("CANCEL")),
        "the ringing branch was cancelled\n{}",
        ringer.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
    let received = uac.received();
    let ringing: Vec<SipMsg> = received
        .iter()
        .filter(|m| {
            m.status_code()
                .is_some_and(|c| (181..=189).contains(&c) || c == 180)
        })
        .cloned()
        .collect();
    let ok = received
        .iter()
        .find(|m| {
            m.status_code() == Some(200) && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no 200 to the INVITE\n{}", uac.describe()));
    Seen {
        ringing,
        ok,
        unrelayed,
    }
}

#[test]
fn each_fork_is_an_early_dialog_and_the_answering_one_is_the_call() {
    let lab = Lab::new("forks_two");
    let seen = forked_call(&lab, "");
    let tags: Vec<String> = seen.ringing.iter().map(to_tag).collect();
    assert_eq!(tags.len(), 2, "two 180s, one per fork: {tags:?}");
    assert_ne!(tags[0], tags[1], "each fork has its own early dialog");
    let answerer = seen
        .ringing
        .iter()
        .find(|m| m.start_line() == ANSWERER)
        .unwrap_or_else(|| panic!("no 180 of the answering fork: {tags:?}"));
    assert_eq!(
        to_tag(&seen.ok),
        to_tag(answerer),
        "the 200 confirms the answering fork's early dialog"
    );
    assert_eq!(seen.unrelayed, 0.0);
}

#[test]
fn max_early_dialogs_1_relays_one_fork() {
    let lab = Lab::new("forks_one");
    let seen = forked_call(&lab, "max_early_dialogs = 1\n");
    let mut tags: Vec<String> = seen.ringing.iter().map(to_tag).collect();
    tags.dedup();
    assert_eq!(
        tags.len(),
        1,
        "one early dialog toward the caller: {tags:?}"
    );
    assert!(seen.unrelayed >= 1.0, "the other fork's 180 counted");
    // The answer is in that early dialog when the relayed fork is the one that answered, and
    // is a dialog of its own otherwise.
    let relayed_answerer = seen.ringing[0].start_line() == ANSWERER;
    assert_eq!(to_tag(&seen.ok) == tags[0], relayed_answerer);
}
