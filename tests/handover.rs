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
//!   before; a start with handover off removes leftover pins the same way;
//! - restart (SIGTERM or SIGKILL, then start on the same config): the new process adopts the
//!   pins and the call (state file); every packet sent across the restart arrives, the stream's
//!   kernel counters are kept, the caller's BYE is relayed and answered; the largest media gap
//!   at the callee is printed, beside the same restart on the socket tier (a figure, not an
//!   assertion on time);
//!   a stop that hangs up every call (SIGINT) then leaves nothing behind;
//! - a pinned entry no restored call claims stops forwarding (`finish_adoption`);
//! - pins of another program build are detached and replaced, and the call's media flows
//!   through the new program.
//!
//! The tests get their own bpffs mount (`Lab::pin_dir`), unmounted on drop. Needs root; fails
//! (never skips) without it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

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

#[test]
fn kernel_call_keeps_every_packet_across_a_sigterm_restart() {
    let r = across_restart("ho_rs_term", Dataplane::Kernel, libc::SIGTERM);
    r.report("kernel", "SIGTERM");
    assert_eq!(r.received, r.sent, "no loss across a kernel-tier handover");
}

#[test]
fn kernel_call_keeps_every_packet_across_a_sigkill_restart() {
    let r = across_restart("ho_rs_kill", Dataplane::Kernel, libc::SIGKILL);
    r.report("kernel", "SIGKILL");
    assert_eq!(r.received, r.sent, "no loss across a kernel-tier handover");
}

/// The figure to compare: the same restart on the socket tier, whose media stops for as long
/// as no mediagate runs.
#[test]
fn media_gap_across_a_restart_kernel_vs_socket() {
    let kernel = across_restart("ho_gap_kernel", Dataplane::Kernel, libc::SIGKILL);
    let socket = across_restart("ho_gap_socket", Dataplane::Socket, libc::SIGKILL);
    kernel.report("kernel", "SIGKILL");
    socket.report("socket", "SIGKILL");
    assert_eq!(kernel.received, kernel.sent);
    assert!(
        socket.received < socket.sent,
        "the socket tier cannot relay while no mediagate runs"
    );
}

/// A kernel entry no adopted call claims (here: the state file lost the call while no
/// mediagate ran) stops forwarding once the new process has restored its calls.
#[test]
fn adopted_entry_of_a_call_not_restored_stops_forwarding() {
    let (lab, mut mg, _peers) = call_up("ho_stale", true);
    let port = warm_up(&lab, &mg);
    mg.kill();
    std::fs::remove_file(lab.path("calls.state")).expect("remove the state file");
    let again = Mediagate::start_named(
        &lab,
        "mediagate-2",
        &handover_config(&lab, true),
        STATUS_URL,
    );
    again.wait_log(
        Duration::from_secs(5),
        "XDP program, links and maps adopted",
    );
    again.wait_log(
        Duration::from_secs(5),
        "stale kernel streams of the previous run cleared",
    );
    assert!(xdp_attached(&lab), "the adopted program stays attached");
    let (sent, received) = counted_run(&lab, port, 100);
    assert!(sent > 0);
    assert_eq!(received, 0, "a stale entry kept forwarding");
}

/// Pins another program build made (its fingerprint in the pin directory differs) are not
/// adopted: the start detaches them, loads its own program, and the restored call's media flows
/// through it.
#[test]
fn pins_of_another_program_build_are_replaced() {
    let (lab, mut mg, _peers) = call_up("ho_other_build", true);
    let port = warm_up(&lab, &mg);
    mg.kill();
    let dir = lab.pin_dir();
    let record = std::fs::read_dir(&dir)
        .expect("pin dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("program="))
        })
        .expect("program record");
    std::fs::remove_dir(&record).expect("remove the program record");
    let foreign = dir.join("program=0000000000000000");
    std::fs::create_dir(&foreign).expect("record another build");
    let again = Mediagate::start_named(
        &lab,
        "mediagate-2",
        &handover_config(&lab, true),
        STATUS_URL,
    );
    again.wait_log(Duration::from_secs(5), "does not match this start");
    assert!(!foreign.exists(), "the other build's pins were kept");
    assert!(record.exists(), "this build's pins were not made");
    assert_eq!(again.status()["active_calls"], 1);
    let (sent, received) = counted_run(&lab, port, 100);
    assert_eq!(received, sent, "media through the new program");
}

/// What [`across_restart`] measured.
struct Across {
    sent: u64,
    received: u64,
    /// Largest interval between two packets at the callee.
    gap: Duration,
    /// From the signal until the new process answered `/status`.
    restart: Duration,
}

impl Across {
    fn report(&self, tier: &str, sig: &str) {
        println!(
            "{tier} tier, restart by {sig}: {} of {} packets arrived, largest media gap {:.1} ms, \
             restart {} ms",
            self.received,
            self.sent,
            self.gap.as_secs_f64() * 1e3,
            self.restart.as_millis()
        );
    }
}

/// Packets of the counted run (at `PPS`: 6 s, the restart about 1 s in).
const RESTART_PACKETS: u64 = 600;

/// A call with handover on `dataplane` whose caller hangs up 15 s after the answer; RTP from
/// the caller during a restart by `sig`. Checks that the new process adopted the call (on the
/// kernel tier with the stream's kernel counters kept), that the caller's BYE is relayed and
/// answered on both legs, and that mediagate is idle after it.
fn across_restart(test: &str, dataplane: Dataplane, sig: libc::c_int) -> Across {
    let (lab, mut mg, mut peers) =
        call_with(test, dataplane, true, ("uac_short", &["-d", "15000"]));
    let port = warm_up_on(&lab, &mg, dataplane);
    let mut sink = rtp_sink(&lab, &lab.it(), IT_IP, &SDP_PORT.to_string(), 1, RUN_ID);
    let mut gen = generator(&lab, port, RUN_ID, RESTART_PACKETS, "gen-restart");
    // Pacing only (no assertion on time): some media before the restart.
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    mg.restart(sig);
    let restart = t0.elapsed();
    let sent = gen.wait_json(Duration::from_secs(RESTART_PACKETS / PPS + 20))["sent"]
        .as_u64()
        .expect("sent");
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.term_json();
    assert_eq!(got["checksum_errors"].as_u64(), Some(0), "{got}");
    let st = mg.status();
    assert_eq!(st["active_calls"], 1, "the call was not adopted: {st:#}");
    if dataplane == Dataplane::Kernel {
        // The adopted entry kept its counters: they cover the whole run, restart included.
        let (ok, st) = mg.wait_status(Duration::from_secs(3), |st| {
            rtp_stream(st, "pbx")["rx_packets"]
                .as_u64()
                .is_some_and(|n| n >= sent)
        });
        assert!(
            ok,
            "the kernel stream's state was reset at adoption: {st:#}"
        );
    }
    peers.caller.assert_ok(Some(&mg));
    let callee = peers.callee.stop();
    assert!(callee.success(), "callee: {}", peers.callee.describe());
    assert!(
        peers.callee.received().iter().any(|m| m.is_request("BYE")),
        "the caller's BYE was not relayed to the callee\n{}",
        peers.callee.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
    // A stop that hangs up every call (SIGINT) hands nothing over: pins gone, program detached,
    // forwarding settings as before the first handover run.
    mg.stop();
    assert!(
        !lab.pin_dir().exists(),
        "pins left by a stop without calls up"
    );
    lab.assert_mg_clean();
    Across {
        sent,
        received: got["unique"].as_u64().expect("unique"),
        gap: Duration::from_nanos(got["max_gap_ns"].as_u64().expect("max_gap_ns")),
        restart,
    }
}

/// The lab config on the kernel tier with handover `on` (pins in the test's own bpffs) or off
/// (the same pin directory, where a handover-off start looks for leftovers).
fn handover_config(lab: &Lab, on: bool) -> String {
    config_on(lab, Dataplane::Kernel, on)
}

/// The lab config on `dataplane` with handover `on`, the state file and CDRs in the lab.
fn config_on(lab: &Lab, dataplane: Dataplane, on: bool) -> String {
    let text = with_cdr(&config_with(60, dataplane), &lab.path("cdr.jsonl"));
    let line = format!("dataplane = \"{}\"\n", dataplane.as_str());
    let media = format!(
        "{line}handover = {on}\npin_dir = \"{}\"\nstate_file = \"{}\"\n",
        lab.pin_dir().display(),
        lab.path("calls.state").display()
    );
    let out = text.replace(&line, &media);
    assert_ne!(out, text, "config rewrite failed");
    out
}

/// The sipp peers of the call (stopped on drop).
struct Peers {
    caller: Sipp,
    callee: Sipp,
}

/// A lab with mediagate on the kernel tier (handover `on` or off) and one confirmed call that
/// nobody hangs up.
fn call_up(test: &str, on: bool) -> (Lab, Mediagate, Peers) {
    call_with(test, Dataplane::Kernel, on, ("uac_wait_bye", &[]))
}

/// A lab with mediagate on `dataplane` (handover `on` or off) and one confirmed call, the
/// caller running sipp scenario `caller.0` with extra arguments `caller.1`.
fn call_with(
    test: &str,
    dataplane: Dataplane,
    on: bool,
    caller: (&str, &[&str]),
) -> (Lab, Mediagate, Peers) {
    require_root_and_tools();
    let lab = Lab::new(test);
    let uas_scen = sdp_port_scenario(&lab, "uas_wait_bye", SDP_PORT);
    let uac_scen = sdp_port_scenario(&lab, caller.0, SDP_PORT);
    let callee = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), &uas_scen, IT_IP).timeout(120),
    );
    callee.settle();
    let mg = Mediagate::start(&lab, &config_on(&lab, dataplane, on));
    let remote = format!("{MG_GW_IP}:5060");
    let caller = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), &uac_scen, GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .args(caller.1)
            .timeout(120),
    );
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |st| {
        st["calls"][0]["state"].as_str() == Some("confirmed")
    });
    assert!(ok, "the call was not confirmed: {st:#}");
    (lab, mg, Peers { caller, callee })
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
    warm_up_on(lab, mg, Dataplane::Kernel)
}

/// [`warm_up`] on `dataplane`: until the caller's stream is latched on that tier.
fn warm_up_on(lab: &Lab, mg: &Mediagate, dataplane: Dataplane) -> u16 {
    let port = caller_port(&mg.status());
    let mut warm = generator(lab, port, WARMUP_RUN_ID, 50, "gen-warmup");
    warm.wait_json(Duration::from_secs(15));
    let (ok, st) = mg.wait_status(Duration::from_secs(5), |st| {
        let s = rtp_stream(st, "pbx");
        s["tier"].as_str() == Some(dataplane.as_str())
            && s["latched"].as_bool() == Some(true)
            && (dataplane != Dataplane::Kernel
                || st["dataplane"]["counters"]["forwarded"]
                    .as_u64()
                    .is_some_and(|n| n > 0))
    });
    assert!(
        ok,
        "the {} tier does not relay the call: {st:#}",
        dataplane.as_str()
    );
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
