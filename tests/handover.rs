//! Data-plane handover across restarts (`media.handover`) on the in-kernel XDP tier.
//!
//! One call through mediagate (sipp caller on gw, sipp callee on it, no sipp RTP; the callee's
//! SDP names `SDP_PORT`, where `mg-rtpsink` listens). `mg-rtpgen` sends RTP from gw to the
//! caller leg's anchored port at `PPS`; the program forwards it to the callee's SDP address.
//! A warm-up run (its own run id) resolves the next hop so that the program forwards alone.
//!
//! - crash (SIGKILL) with handover on: a counted run sent while no mediagate runs arrives in
//!   full; with handover off not one packet of it arrives (the program detached with the
//!   process);
//! - `mediagate detach` then leaves no XDP program, no pins and the forwarding settings of
//!   before; a start with handover off removes leftover pins the same way.
//!
//! The tests get their own bpffs mount (`Lab::pin_dir`), unmounted on drop. Needs root; fails
//! (never skips) without it.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// The port the callee's SDP names; the sink listens there.
const SDP_PORT: u16 = 50000;
/// Packets per second of the generator.
const PPS: u64 = 100;
const WARMUP_RUN_ID: u32 = 1;
const RUN_ID: u32 = 0x4d47_0009;

#[test]
fn kernel_media_keeps_flowing_through_a_crash_with_handover() {
    let (lab, mut mg, _peers) = call_up("ho_crash_on", true);
    let port = warm_up(&lab, &mg);
    mg.kill();
    assert!(
        xdp_attached(&lab),
        "handover on: the program must stay attached after SIGKILL"
    );
    let (sent, received) = counted_run(&lab, port, 200);
    eprintln!("handover on, no mediagate running: {received} of {sent} packets arrived");
    assert_eq!(received, sent, "every packet sent while no mediagate ran");

    // `mediagate detach` removes the pins: no program, no pins, forwarding settings restored.
    let config = mg.config_path.display().to_string();
    let (status, out, err) = mg.cli(&["detach", "--config", &config]);
    assert!(status.success(), "mediagate detach: {out}{err}");
    assert!(out.contains("pins removed"), "{out}");
    assert!(!lab.pin_dir().exists(), "pins left after detach");
    lab.assert_mg_clean();
}

#[test]
fn kernel_media_stops_at_a_crash_without_handover() {
    let (lab, mut mg, _peers) = call_up("ho_crash_off", false);
    let port = warm_up(&lab, &mg);
    mg.kill();
    let (sent, received) = counted_run(&lab, port, 100);
    eprintln!("handover off, no mediagate running: {received} of {sent} packets arrived");
    assert!(sent > 0);
    assert_eq!(received, 0, "the program must detach with the process");
    assert!(!xdp_attached(&lab));
}

#[test]
fn start_without_handover_removes_leftover_pins() {
    let (lab, mut mg, peers) = call_up("ho_leftover", true);
    warm_up(&lab, &mg);
    mg.kill();
    drop(peers);
    assert!(lab.pin_dir().exists() && xdp_attached(&lab));
    let text = handover_config(&lab, false);
    let mut again = Mediagate::start_named(&lab, "mediagate-off", &text, STATUS_URL);
    again.wait_log(Duration::from_secs(5), "handover is off");
    assert!(!lab.pin_dir().exists(), "pins left by a handover-off start");
    again.stop();
    lab.assert_mg_clean();
}

/// The lab config on the kernel tier with handover `on` (pins in the test's own bpffs) or off
/// (the same pin directory, where a handover-off start looks for leftovers).
fn handover_config(lab: &Lab, on: bool) -> String {
    let text = config_with(60, Dataplane::Kernel);
    let media = format!(
        "dataplane = \"kernel\"\nhandover = {on}\npin_dir = \"{}\"\nstate_file = \"{}\"\n",
        lab.pin_dir().display(),
        lab.path("calls.state").display()
    );
    let out = text.replace("dataplane = \"kernel\"\n", &media);
    assert_ne!(out, text, "config rewrite failed");
    out
}

/// The sipp peers of the call (stopped on drop).
struct Peers {
    _caller: Sipp,
    _callee: Sipp,
}

/// A lab with mediagate on the kernel tier (handover `on` or off) and one confirmed call.
fn call_up(test: &str, on: bool) -> (Lab, Mediagate, Peers) {
    require_root_and_tools();
    let lab = Lab::new(test);
    let uas_scen = sdp_port_scenario(&lab, "uas_wait_bye", SDP_PORT);
    let uac_scen = sdp_port_scenario(&lab, "uac_wait_bye", SDP_PORT);
    let callee = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), &uas_scen, IT_IP).timeout(120),
    );
    callee.settle();
    let mg = Mediagate::start(&lab, &handover_config(&lab, on));
    let remote = format!("{MG_GW_IP}:5060");
    let caller = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), &uac_scen, GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .timeout(120),
    );
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |st| {
        st["calls"][0]["state"].as_str() == Some("confirmed")
    });
    assert!(ok, "the call was not confirmed: {st:#}");
    (
        lab,
        mg,
        Peers {
            _caller: caller,
            _callee: callee,
        },
    )
}

/// The caller leg's anchored RTP port (where the generator sends), from the last /status.
fn caller_port(st: &Value) -> u16 {
    local_port(rtp_stream(st, "pbx"))
}

/// `mg-rtpgen` on gw: `packets` RTP packets of run `run_id` at `PPS` to mediagate port `port`.
fn generator(lab: &Lab, port: u16, run_id: u32, packets: u64, name: &str) -> Proc {
    let dst = format!("{MG_GW_IP}:{port}");
    let seconds = (packets / PPS + 10).to_string();
    Proc::spawn(
        lab,
        &lab.gw(),
        name,
        env!("CARGO_BIN_EXE_mg-rtpgen"),
        &[
            "--src",
            GW_IP,
            "--dst",
            &dst,
            "--pps",
            &PPS.to_string(),
            "--packets",
            &packets.to_string(),
            "--seconds",
            &seconds,
            "--run-id",
            &run_id.to_string(),
            "--cpu",
            "-1",
        ],
    )
}

/// Sends warm-up packets until the program forwards the caller's stream by itself (latched,
/// next hop resolved); returns the caller port for the counted runs.
fn warm_up(lab: &Lab, mg: &Mediagate) -> u16 {
    let port = caller_port(&mg.status());
    let mut warm = generator(lab, port, WARMUP_RUN_ID, 50, "gen-warmup");
    warm.wait_json(Duration::from_secs(15));
    let (ok, st) = mg.wait_status(Duration::from_secs(5), |st| {
        st["dataplane"]["counters"]["forwarded"]
            .as_u64()
            .is_some_and(|n| n > 0)
            && rtp_stream(st, "pbx")["tier"].as_str() == Some("kernel")
    });
    assert!(ok, "the program does not forward the call: {st:#}");
    port
}

/// A counted generator run of `packets` to caller port `port`; returns (sent, received at the
/// callee's SDP address).
fn counted_run(lab: &Lab, port: u16, packets: u64) -> (u64, u64) {
    let mut sink = rtp_sink(lab, &lab.it(), IT_IP, &SDP_PORT.to_string(), 1, RUN_ID);
    let mut gen = generator(lab, port, RUN_ID, packets, "gen-counted");
    let sent = gen.wait_json(Duration::from_secs(packets / PPS + 20))["sent"]
        .as_u64()
        .expect("sent");
    // Let the last packets arrive before the sink reports.
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.term_json();
    assert_eq!(got["checksum_errors"].as_u64(), Some(0), "{got}");
    (sent, got["unique"].as_u64().expect("unique"))
}

/// Whether an XDP program is attached to a device of the mg namespace.
fn xdp_attached(lab: &Lab) -> bool {
    let links = run(Command::new("ip").args(["-n", &lab.mg(), "-d", "link", "show"]));
    links.contains("xdp")
}
