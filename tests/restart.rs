//! Calls survive a restart of mediagate (`media.handover`, socket tier): a sipp call with RTP
//! is up when mediagate is stopped (SIGTERM) or killed (SIGKILL) and started again on the same
//! configuration; the new process adopts the call from the state file, lists it, relays its
//! media again, relays the hang-up from either side and writes the call's CDR. The media gap
//! at the callee across the restart is measured and printed (no timed assertion).

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

/// Which side ends the call after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HangUp {
    Caller,
    Callee,
}

/// The lab configuration with handover on, the state file at `state` and CDRs in the lab's
/// directory.
fn handover_config(lab: &Lab, state: &std::path::Path) -> String {
    let text = with_cdr(&config(30), &lab.path("cdr.jsonl")).replacen(
        "[media]",
        &format!(
            "[media]\nhandover = true\nstate_file = \"{}\"",
            state.display()
        ),
        1,
    );
    assert!(text.contains("handover = true"), "{text}");
    text
}

/// RTP packets mediagate received on leg `leg` of the first call.
fn rtp_received(st: &serde_json::Value, leg: usize) -> u64 {
    st["calls"][0]["legs"][leg]["streams"][0]["rx_packets"]
        .as_u64()
        .unwrap_or(0)
}

fn call_across_restart(test: &str, sig: libc::c_int, hang_up: HangUp) {
    let lab = Lab::new(test);
    let (uas_scenario, uac_scenario) = match hang_up {
        HangUp::Caller => ("uas_echo", "uac_rtp_long"),
        HangUp::Callee => ("uas_hangup_late", "uac_rtp_long_wait_bye"),
    };
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), uas_scenario, IT_IP)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &handover_config(&lab, &lab.path("calls.state")));
    let mut callee_cap = Capture::start(&lab, &lab.it(), &lab.it_if(), "callee");
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), uac_scenario, GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(40),
    );
    // About a second of media each way before the restart.
    let (flowing, before) = mg.wait_status(Duration::from_secs(8), |st| {
        rtp_flowing(st, 1) && (0..2).all(|leg| rtp_received(st, leg) >= 30)
    });
    assert!(flowing, "media did not flow before the restart: {before:#}");
    let call = before["calls"][0].clone();

    let restart_from = time_of_day_us();
    mg.restart(sig);
    let restart_to = time_of_day_us();

    // The new process has the call, confirmed, with the same dialogs and ports.
    let after = mg.status();
    assert_eq!(after["active_calls"], 1, "{after:#}");
    let adopted = &after["calls"][0];
    assert_eq!(adopted["id"], call["id"]);
    assert_eq!(adopted["state"], "confirmed");
    for leg in 0..2 {
        assert_eq!(
            adopted["legs"][leg]["call_id"],
            call["legs"][leg]["call_id"]
        );
        assert_eq!(
            adopted["legs"][leg]["streams"][0]["local"], call["legs"][leg]["streams"][0]["local"],
            "same media port: {after:#}"
        );
    }
    let config = mg.config_path.display().to_string();
    let (rc, calls, err) = mg.cli(&["calls", "--config", &config]);
    assert!(rc.success(), "mediagate calls: {rc}\n{err}");
    let id = call["id"].as_str().unwrap();
    assert!(
        calls.lines().any(|l| l.starts_with(id)),
        "`mediagate calls` lists the adopted call {id}:\n{calls}"
    );
    // Media again, both ways, counted by the new process.
    let (flowing, st) = mg.wait_status(Duration::from_secs(5), |st| rtp_flowing(st, 1));
    assert!(flowing, "media did not come back after the restart: {st:#}");

    // The hang-up goes through the new process.
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    match hang_up {
        HangUp::Caller => assert!(
            uas.received().iter().any(|m| m.is_request("BYE")),
            "the caller's BYE was not relayed to the callee\n{}",
            uas.describe()
        ),
        HangUp::Callee => assert!(
            uac.received().iter().any(|m| m.is_request("BYE")),
            "the callee's BYE was not relayed to the caller\n{}",
            uac.describe()
        ),
    }
    mg.assert_idle(Duration::from_secs(5));
    let cdr = &cdrs(&lab.path("cdr.jsonl"), 1)[0];
    assert_eq!(cdr["call"], call["id"], "{cdr}");
    assert_eq!(cdr["sip_call_id"], call["legs"][0]["call_id"], "{cdr}");
    let by = match hang_up {
        HangUp::Caller => "caller",
        HangUp::Callee => "callee",
    };
    assert_eq!(cdr["ended_by"], by, "{cdr}");
    assert_eq!(cdr["final_code"], 200, "{cdr}");

    // The media gap at the callee across the restart: RTP before and after it.
    let callee_media = SocketAddrV4::new(IT_IP.parse().unwrap(), SIPP_MEDIA_PORT);
    let described = callee_cap.describe();
    let window = (restart_from, restart_to);
    let (gap, before_gap, after_gap) =
        largest_gap_during(callee_cap.packets(), callee_media, window)
            .unwrap_or_else(|| panic!("no RTP at the callee across the restart\n{described}"));
    assert!(
        before_gap >= 10 && after_gap >= 10,
        "RTP must reach the callee before and after the restart \
         ({before_gap} before the largest gap, {after_gap} after, gap {gap:?})\n{described}"
    );
    println!(
        "media gap at the callee across a restart by signal {sig} (socket tier): {} ms, restart {} ms \
         ({before_gap} packets before, {after_gap} after)",
        gap.as_millis(),
        (restart_to - restart_from) / 1000
    );
    // The ended call left the state file.
    let state = std::fs::read(lab.path("calls.state")).unwrap_or_default();
    let (left, _) = mediagate::signalling::journal::replay(&state);
    assert!(left.is_empty(), "calls left in the state file: {left:?}");
}

#[test]
fn sigterm_caller_hangs_up_after_the_restart() {
    call_across_restart("rs_term_caller", libc::SIGTERM, HangUp::Caller);
}

#[test]
fn sigterm_callee_hangs_up_after_the_restart() {
    call_across_restart("rs_term_callee", libc::SIGTERM, HangUp::Callee);
}

#[test]
fn sigkill_caller_hangs_up_after_the_restart() {
    call_across_restart("rs_kill_caller", libc::SIGKILL, HangUp::Caller);
}

#[test]
fn sigkill_callee_hangs_up_after_the_restart() {
    call_across_restart("rs_kill_callee", libc::SIGKILL, HangUp::Callee);
}

#[test]
fn a_state_file_in_a_missing_directory_stops_the_start() {
    let lab = Lab::new("rs_nodir");
    let config_path = lab.path("mediagate.toml");
    let state = lab.path("no-such-dir/calls.state");
    std::fs::write(&config_path, handover_config(&lab, &state)).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["10", "ip", "netns", "exec", &lab.mg()])
        .arg(mediagate_bin())
        .arg("--config")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mediagate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains("call-state file") && stderr.contains("no-such-dir"),
        "the error names the state file:\n{stderr}"
    );
}
