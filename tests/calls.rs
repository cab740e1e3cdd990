//! End-to-end calls through mediagate between real sipp peers, each test in
//! its own three-namespace lab (see tests/common/mod.rs and scripts/lab).
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it.
//! Logs, sipp traces and captures of a failed test are kept under
//! target/tmp/calls/<test>-<prefix>/.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

const DIALLED: &str = "+4930123";

/// Which side places the call.
fn tag_of(header: &str) -> Option<String> {
    header
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag=").map(|t| t.to_string()))
}

/// The first received INVITE of a sipp run (panics with context if none).
fn received_invite(s: &Sipp) -> SipMsg {
    s.received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap_or_else(|| panic!("'{}' received no INVITE\n{}", s.name, s.describe()))
}

/// The first received 200 to the INVITE of a caller sipp.
fn received_invite_200(s: &Sipp) -> SipMsg {
    s.received()
        .into_iter()
        .find(|m| {
            m.status_code() == Some(200) && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
        .unwrap_or_else(|| {
            panic!(
                "'{}' received no 200 to its INVITE\n{}",
                s.name,
                s.describe()
            )
        })
}

/// SDP of a message must carry mediagate's address on that side and a port
/// from its media range; returns the port.
fn assert_sdp_is_mediagate(m: &SipMsg, mg_ip: &str, who: &str) -> u16 {
    assert_eq!(
        m.sdp_conn_addr().as_deref(),
        Some(mg_ip),
        "{who} must see c=IN IP4 {mg_ip} (mediagate), got:\n{}",
        m.text
    );
    let port = m
        .sdp_audio_port()
        .unwrap_or_else(|| panic!("{who}: no m=audio in SDP:\n{}", m.text));
    assert!(
        MEDIA_PORTS.contains(&port),
        "{who}: SDP audio port {port} not in mediagate's range {MEDIA_PORTS:?}:\n{}",
        m.text
    );
    port
}

/// The INVITE the callee got is mediagate's own (B2BUA), not the caller's.
fn assert_b2bua_invite(
    caller_invite: &SipMsg,
    callee_invite: &SipMsg,
    caller: &Side,
    callee: &Side,
) {
    let a = caller_invite.header("Call-ID").expect("caller Call-ID");
    let b = callee_invite.header("Call-ID").expect("callee Call-ID");
    assert_ne!(a, b, "mediagate must use a new Call-ID on the outgoing leg");
    let vias = callee_invite.headers("Via");
    assert!(
        vias.first().is_some_and(|v| v.contains(callee.mg_ip))
            && vias.iter().all(|v| !v.contains(caller.peer_ip)),
        "the callee's INVITE must carry only mediagate's Via ({}):\n{}",
        callee.mg_ip,
        callee_invite.text
    );
    let contact = callee_invite.header("Contact").unwrap_or_default();
    assert!(
        contact.contains(callee.mg_ip),
        "the callee's INVITE must carry mediagate's Contact ({}):\n{}",
        callee.mg_ip,
        callee_invite.text
    );
    let ta = caller_invite.header("From").and_then(|f| tag_of(&f));
    let tb = callee_invite.header("From").and_then(|f| tag_of(&f));
    assert!(
        tb.is_some(),
        "outgoing INVITE has no From tag:\n{}",
        callee_invite.text
    );
    assert_ne!(
        ta, tb,
        "mediagate must use its own From tag on the outgoing leg"
    );
}

/// RTP relayed both ways through mediagate, seen at both far ends.
/// `caller_port`/`callee_port`: mediagate's ports from the SDP each side saw.
fn assert_rtp_relayed(
    caller: &Side,
    callee: &Side,
    caller_cap: &mut Capture,
    callee_cap: &mut Capture,
    caller_port: u16,
    callee_port: u16,
    min_packets: u64,
) {
    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let callee_flows = callee_cap.flows().clone();
    let caller_flows = caller_cap.flows().clone();
    let sipp_rtp = |ip: &str| sa(ip, SIPP_MEDIA_PORT);

    // Callee side: mediagate -> callee, from the port it advertised there.
    let to_callee = flows_from(
        &callee_flows,
        callee.mg_ip,
        MEDIA_PORTS,
        sipp_rtp(callee.peer_ip),
    );
    assert_eq!(
        to_callee.len(),
        1,
        "expected RTP toward the callee from exactly one mediagate port on {}\n{desc}",
        callee.mg_ip
    );
    assert_eq!(
        to_callee[0].0,
        sa(callee.mg_ip, callee_port),
        "RTP toward the callee must come from the port mediagate put in the callee's SDP (symmetric RTP)\n{desc}"
    );
    assert!(
        to_callee[0].1 > min_packets,
        "too little RTP reached the callee\n{desc}"
    );
    // callee's echo -> mediagate
    let echo = callee_flows
        .get(&(sipp_rtp(callee.peer_ip), sa(callee.mg_ip, callee_port)))
        .copied()
        .unwrap_or(0);
    assert!(
        echo > min_packets,
        "callee's echo toward mediagate missing\n{desc}"
    );

    // Caller side: caller -> mediagate, and the relayed echo back.
    let from_caller = caller_flows
        .get(&(sipp_rtp(caller.peer_ip), sa(caller.mg_ip, caller_port)))
        .copied()
        .unwrap_or(0);
    assert!(
        from_caller > min_packets,
        "caller's RTP toward mediagate missing\n{desc}"
    );
    let to_caller = flows_from(
        &caller_flows,
        caller.mg_ip,
        MEDIA_PORTS,
        sipp_rtp(caller.peer_ip),
    );
    assert_eq!(
        to_caller.len(),
        1,
        "expected RTP toward the caller from exactly one mediagate port on {}\n{desc}",
        caller.mg_ip
    );
    assert_eq!(
        to_caller[0].0,
        sa(caller.mg_ip, caller_port),
        "RTP toward the caller must come from the port mediagate put in the caller's SDP\n{desc}"
    );
    assert!(
        to_caller[0].1 > min_packets,
        "too little RTP relayed back to the caller\n{desc}"
    );

    // Nothing bypasses mediagate: no packet from the other side's address.
    assert_eq!(
        packets_from_ip(&callee_flows, caller.peer_ip),
        0,
        "caller packets leaked to the callee side\n{desc}"
    );
    assert_eq!(
        packets_from_ip(&caller_flows, callee.peer_ip),
        0,
        "callee packets leaked to the caller side\n{desc}"
    );
    // And every RTP packet reaching a peer came from mediagate.
    for (flows, side) in [(&callee_flows, callee), (&caller_flows, caller)] {
        for ((src, dst), n) in flows.iter() {
            if *dst == sipp_rtp(side.peer_ip) {
                assert_eq!(
                    src.ip().to_string(),
                    side.mg_ip,
                    "{n} packets reached {dst} from {src}, not from mediagate\n{desc}"
                );
            }
        }
    }
}

/// Relayed media toward a side: flows from mediagate's address there, from a
/// port of its media range, to the peer. Returns (packets, flows).
fn relayed_toward(flows: &Flows, side: &Side) -> (u64, usize) {
    let mg: std::net::Ipv4Addr = side.mg_ip.parse().unwrap();
    let peer: std::net::Ipv4Addr = side.peer_ip.parse().unwrap();
    let relayed: Vec<u64> = flows
        .iter()
        .filter(|((s, d), _)| *s.ip() == mg && MEDIA_PORTS.contains(&s.port()) && *d.ip() == peer)
        .map(|(_, n)| *n)
        .collect();
    (relayed.iter().sum(), relayed.len())
}

/// UDP checksums as verified by tcpdump at the receiving far end: no bad
/// checksum on any flow, and every relayed media packet verified `ok`.
/// (The far ends send with full checksums, see `scripts/lab`, so a bad one
/// toward mediagate would be a lab problem and is reported as well.)
fn assert_udp_checksums(cap: &mut Capture, side: &Side) {
    let desc = cap.describe();
    let sums = cap.sums().clone();
    let mg: std::net::Ipv4Addr = side.mg_ip.parse().unwrap();
    let mut relayed_checked = 0;
    for ((src, dst), c) in &sums {
        let relayed = *src.ip() == mg && MEDIA_PORTS.contains(&src.port());
        let what = if relayed {
            "relayed media toward the far end"
        } else {
            "packets sent by the far end"
        };
        assert_eq!(
            c.bad, 0,
            "{} bad UDP checksums on {what} {src} -> {dst}\n{desc}",
            c.bad
        );
        if relayed {
            assert_eq!(
                c.unchecked, 0,
                "{} relayed packets {src} -> {dst} without a verified UDP checksum\n{desc}",
                c.unchecked
            );
            relayed_checked += c.ok;
        }
    }
    assert!(
        relayed_checked > 0,
        "no relayed media packet with a verified UDP checksum on {}\n{desc}",
        side.ns
    );
}

/// Kernel tier, after the calls: the XDP program forwarded (at least) every
/// RTP packet the far ends received through mediagate, apart from the few it
/// passed to the socket path while a neighbour resolved (`pass_no_neighbour`,
/// itself bounded), so a silent fallback to the socket path fails.
fn assert_kernel_forwarded(
    mg: &Mediagate,
    caller_cap: &mut Capture,
    callee_cap: &mut Capture,
    caller: &Side,
    callee: &Side,
) {
    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let (to_caller, caller_flows) = relayed_toward(caller_cap.flows(), caller);
    let (to_callee, callee_flows) = relayed_toward(callee_cap.flows(), callee);
    let received = to_caller + to_callee;
    // A few packets per relayed flow at most (in this lab the neighbours are
    // resolved by the signalling before any RTP).
    let max_passed = 5 * (caller_flows + callee_flows) as u64;
    let counter = |st: &serde_json::Value, name: &str| {
        st["dataplane"]["counters"][name].as_u64().unwrap_or(0)
    };
    // The counters are collected from the kernel periodically: poll a little.
    let (_, st) = mg.wait_status(Duration::from_secs(3), |st| {
        counter(st, "forwarded") + counter(st, "pass_no_neighbour").min(max_passed) >= received
    });
    let counters = &st["dataplane"]["counters"];
    let forwarded = counter(&st, "forwarded");
    let passed = counter(&st, "pass_no_neighbour");
    eprintln!(
        "[kernel tier] far ends received {received} relayed packets ({to_caller} to the caller, \
         {to_callee} to the callee); counters: {counters}"
    );
    assert_eq!(
        st["dataplane"]["tier"].as_str(),
        Some("kernel"),
        "dataplane: {counters:#}"
    );
    assert!(
        passed <= max_passed,
        "{passed} packets passed to the socket path for lack of a neighbour (allowed {max_passed}); \
         counters: {counters:#}\n{desc}"
    );
    assert!(
        forwarded + passed >= received,
        "the kernel tier forwarded {forwarded} packets (+{passed} passed to the socket path) but the \
         far ends received {received} through mediagate: media fell back to the socket path; \
         counters: {counters:#}\n{desc}"
    );
}

/// The AF_XDP workers, not the socket path, carried what the far ends received: the program
/// handed every stream packet to the workers, which transmitted them (the first few through the
/// kernel's slow path while the very first next hop resolves).
fn assert_afxdp_forwarded(
    mg: &Mediagate,
    caller_cap: &mut Capture,
    callee_cap: &mut Capture,
    caller: &Side,
    callee: &Side,
) {
    let (to_caller, _) = relayed_toward(caller_cap.flows(), caller);
    let (to_callee, _) = relayed_toward(callee_cap.flows(), callee);
    let received = to_caller + to_callee;
    let st = mg.status();
    let dp = &st["dataplane"];
    let workers = dp["afxdp"]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |k: &str| {
        workers
            .iter()
            .map(|w| w[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    eprintln!("[afxdp tier] far ends received {received} relayed packets; dataplane: {dp}");
    assert_eq!(dp["tier"].as_str(), Some("afxdp"), "dataplane: {dp:#}");
    assert!(
        dp["counters"]["to_afxdp"].as_u64().unwrap_or(0) >= received,
        "the XDP program handed fewer packets to AF_XDP than arrived: {dp:#}"
    );
    // Packets whose next hop was not known yet take the kernel's slow path (`no_neighbour`);
    // every other packet the far ends received left through an AF_XDP socket.
    assert_eq!(
        sum("tx") + sum("no_neighbour"),
        received,
        "worker transmissions + slow-path packets vs packets received: {dp:#}"
    );
    assert!(
        sum("no_neighbour") <= 10,
        "too many packets took the slow path while a next hop resolved: {dp:#}"
    );
    let samples: u64 = workers
        .iter()
        .map(|w| w["latency"]["samples"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        samples > 0 && workers.iter().all(|w| w["latency"]["p99_us"].is_number()),
        "the workers published no relay-latency samples: {dp:#}"
    );
}

/// Stop mediagate (SIGINT, `Mediagate::stop`): it must exit cleanly and leave nothing of the
/// kernel tier behind in its namespace.
fn stop_and_assert_clean(lab: &Lab, mut mg: Mediagate) {
    let st = mg.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "mediagate did not exit cleanly when stopped: {st:?}\n{}",
        mg.log_tail(40)
    );
    lab.assert_mg_clean();
}

/// A full call with RTP both ways, hung up by the caller after the pcap.
fn rtp_call(test: &str, from: Origin, tcp: bool, dataplane: Dataplane) {
    let lab = Lab::new(test);
    let (caller, callee) = sides(&lab, from);

    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_echo", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config_with(30, dataplane));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");

    let remote = format!("{}:5060", caller.mg_ip);
    let mut extra = vec!["-m", "1"];
    if tcp {
        extra.extend_from_slice(&["-t", "t1"]);
    }
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_rtp", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&extra)
            .timeout(30),
    );

    // Mid-call: one call, two legs, expected tier, latched, packets received.
    let (_, st) = mg.wait_status(Duration::from_secs(8), |st| media_flowing(st, 1, dataplane));
    assert_rtp_call_status(&st, 1, dataplane);
    let legs = st["calls"][0]["legs"].as_array().unwrap();
    let caller_trunk = if from == Origin::Gw { "pbx" } else { "itsp" };
    let caller_leg = legs
        .iter()
        .find(|l| l["trunk"] == caller_trunk)
        .expect("caller leg");
    assert_eq!(
        caller_leg["peer"]
            .as_str()
            .map(|p| p.starts_with(caller.peer_ip)),
        Some(true),
        "caller leg peer: {st:#}"
    );

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // Signalling: each side saw only mediagate.
    let callee_invite = received_invite(&uas);
    let caller_invite = uac
        .messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .expect("caller sent an INVITE");
    assert_b2bua_invite(&caller_invite, &callee_invite, &caller, &callee);
    let callee_port = assert_sdp_is_mediagate(&callee_invite, callee.mg_ip, "callee (INVITE)");
    let caller_port =
        assert_sdp_is_mediagate(&received_invite_200(&uac), caller.mg_ip, "caller (200 OK)");
    assert!(
        uas.received().iter().any(|m| m.is_request("BYE")),
        "caller's BYE was not relayed to the callee\n{}",
        uas.describe()
    );

    // Media: full pcap (236 packets) relayed both ways.
    assert_rtp_relayed(
        &caller,
        &callee,
        &mut caller_cap,
        &mut callee_cap,
        caller_port,
        callee_port,
        100,
    );
    assert_udp_checksums(&mut caller_cap, &caller);
    assert_udp_checksums(&mut callee_cap, &callee);
    match dataplane {
        Dataplane::Kernel => {
            assert_kernel_forwarded(&mg, &mut caller_cap, &mut callee_cap, &caller, &callee)
        }
        Dataplane::Afxdp => {
            assert_afxdp_forwarded(&mg, &mut caller_cap, &mut callee_cap, &caller, &callee)
        }
        Dataplane::Socket => {}
    }
    stop_and_assert_clean(&lab, mg);
}

#[test]
fn afxdp_tier_gw_to_itsp_call_with_rtp() {
    rtp_call("a_gw_to_itsp", Origin::Gw, false, Dataplane::Afxdp);
}

#[test]
fn afxdp_tier_five_concurrent_calls_with_rtp() {
    concurrent_calls("a_concurrent", Dataplane::Afxdp);
}

#[test]
fn gw_to_itsp_call_with_rtp_caller_hangs_up() {
    rtp_call("gw_to_itsp", Origin::Gw, false, Dataplane::Socket);
}

#[test]
fn itsp_to_gw_call_with_rtp() {
    rtp_call("itsp_to_gw", Origin::Itsp, false, Dataplane::Socket);
}

#[test]
fn itsp_to_gw_call_over_tcp() {
    rtp_call("itsp_tcp", Origin::Itsp, true, Dataplane::Socket);
}

#[test]
fn kernel_tier_gw_to_itsp_call_with_rtp() {
    rtp_call("k_gw_to_itsp", Origin::Gw, false, Dataplane::Kernel);
}

#[test]
fn kernel_tier_itsp_to_gw_call_with_rtp() {
    rtp_call("k_itsp_to_gw", Origin::Itsp, false, Dataplane::Kernel);
}

#[test]
fn callee_hangs_up_bye_is_relayed() {
    let lab = Lab::new("callee_hangup");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_hangup", callee.peer_ip).timeout(40),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_wait_bye", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    let bye = uac
        .received()
        .into_iter()
        .find(|m| m.is_request("BYE"))
        .unwrap_or_else(|| panic!("caller got no BYE\n{}", uac.describe()));
    assert!(
        !bye.text.contains(callee.peer_ip),
        "relayed BYE leaks the callee's address:\n{}",
        bye.text
    );
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    assert!(
        uas.received().iter().any(|m| m.status_code() == Some(200)
            && m.header("CSeq").is_some_and(|c| c.ends_with("BYE"))),
        "callee got no 200 to its BYE\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn cancel_before_answer() {
    let lab = Lab::new("cancel");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_ring_cancel", callee.peer_ip).timeout(40),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_cancel", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    let got = uac.received();
    assert!(
        got.iter().any(|m| m.status_code() == Some(487)),
        "caller got no 487\n{}",
        uac.describe()
    );
    assert!(
        got.iter().any(|m| m.status_code() == Some(200)
            && m.header("CSeq").is_some_and(|c| c.ends_with("CANCEL"))),
        "caller got no 200 to its CANCEL\n{}",
        uac.describe()
    );
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    assert!(
        uas.received().iter().any(|m| m.is_request("CANCEL")),
        "callee got no CANCEL\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn busy_486_is_relayed() {
    let lab = Lab::new("busy");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_busy", callee.peer_ip).timeout(40),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_expect_486", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    assert!(
        uas.received().iter().any(|m| m.is_request("ACK")),
        "mediagate did not ACK the callee's 486\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
}

/// A caller that must get `code` without the callee seeing any INVITE.
fn rejected_call(test: &str, code: u16, user: &str, caller_ip: &'static str) {
    let lab = Lab::new(test);
    if caller_ip != GW_IP {
        lab.add_gw_addr(&format!("{caller_ip}/24"));
    }
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_echo", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(40),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{}:5060", caller.mg_ip);
    let scen = format!("uac_expect_{code}");
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), &scen, caller_ip)
            .caller(user, &remote)
            .args(&["-m", "1"]),
    );
    uac.assert_ok(Some(&mg));
    // Let a (wrongly) forwarded INVITE arrive before looking.
    sleep(Duration::from_millis(500));
    let _ = uas.stop();
    assert!(
        !uas.received().iter().any(|m| m.is_request("INVITE")),
        "the callee must not receive an INVITE for a rejected call\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn non_numeric_user_gets_404() {
    rejected_call("no_route", 404, "alice", GW_IP);
}

#[test]
fn unknown_source_gets_403() {
    rejected_call("unknown_peer", 403, DIALLED, GW_STRANGER_IP);
}

#[test]
fn media_timeout_sends_bye_to_both_legs() {
    const TIMEOUT_S: u64 = 3;
    let lab = Lab::new("media_timeout");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_wait_bye", callee.peer_ip).timeout(40),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(TIMEOUT_S as u32));
    let remote = format!("{}:5060", caller.mg_ip);
    let t0 = Instant::now();
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_wait_bye", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"]),
    );

    // Both sides must get a BYE from mediagate; nobody sends RTP.
    let bound = Duration::from_secs(TIMEOUT_S + 7);
    let mut caller_bye = None;
    let mut callee_bye = None;
    while (caller_bye.is_none() || callee_bye.is_none())
        && t0.elapsed() < bound + Duration::from_secs(5)
    {
        if caller_bye.is_none() && uac.received().iter().any(|m| m.is_request("BYE")) {
            caller_bye = Some(t0.elapsed());
        }
        if callee_bye.is_none() && uas.received().iter().any(|m| m.is_request("BYE")) {
            callee_bye = Some(t0.elapsed());
        }
        sleep(Duration::from_millis(100));
    }
    let caller_bye = caller_bye
        .unwrap_or_else(|| panic!("caller got no BYE within {bound:?}\n{}", uac.describe()));
    let callee_bye = callee_bye
        .unwrap_or_else(|| panic!("callee got no BYE within {bound:?}\n{}", uas.describe()));
    for (who, t) in [("caller", caller_bye), ("callee", callee_bye)] {
        assert!(
            t >= Duration::from_millis(TIMEOUT_S * 1000 - 500),
            "{who} got BYE after {t:?}, before the {TIMEOUT_S} s media timeout could elapse"
        );
        assert!(
            t <= bound,
            "{who} got BYE only after {t:?} (bound {bound:?})"
        );
    }
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn five_concurrent_calls_with_rtp() {
    concurrent_calls("concurrent", Dataplane::Socket);
}

#[test]
fn kernel_tier_five_concurrent_calls_with_rtp() {
    concurrent_calls("k_concurrent", Dataplane::Kernel);
}

fn concurrent_calls(test: &str, dataplane: Dataplane) {
    const CALLS: usize = 5;
    let lab = Lab::new(test);
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_echo", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(50),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config_with(30, dataplane));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_rtp", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-l", "5", "-m", "5", "-r", "5"])
            .timeout(35),
    );

    let (_, st) = mg.wait_status(Duration::from_secs(8), |st| {
        media_flowing(st, CALLS, dataplane)
    });
    assert_rtp_call_status(&st, CALLS, dataplane);

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    let invites: Vec<SipMsg> = uas
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect();
    assert_eq!(
        invites.len(),
        CALLS,
        "INVITEs at the callee\n{}",
        uas.describe()
    );
    for inv in &invites {
        assert_sdp_is_mediagate(inv, callee.mg_ip, "callee (INVITE)");
    }

    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let callee_flows = callee_cap.flows().clone();
    let caller_flows = caller_cap.flows().clone();
    let to_callee = flows_from(
        &callee_flows,
        callee.mg_ip,
        MEDIA_PORTS,
        sa(callee.peer_ip, SIPP_MEDIA_PORT),
    );
    let to_caller = flows_from(
        &caller_flows,
        caller.mg_ip,
        MEDIA_PORTS,
        sa(caller.peer_ip, SIPP_MEDIA_PORT),
    );
    assert_eq!(
        to_callee.len(),
        CALLS,
        "one relayed RTP flow per call toward the callee\n{desc}"
    );
    assert_eq!(
        to_caller.len(),
        CALLS,
        "one relayed RTP flow per call toward the caller\n{desc}"
    );
    for (src, n) in to_callee.iter().chain(to_caller.iter()) {
        assert!(*n > 100, "flow from {src} carried only {n} packets\n{desc}");
    }
    assert_eq!(
        packets_from_ip(&callee_flows, caller.peer_ip),
        0,
        "caller packets leaked\n{desc}"
    );
    assert_eq!(
        packets_from_ip(&caller_flows, callee.peer_ip),
        0,
        "callee packets leaked\n{desc}"
    );
    assert_udp_checksums(&mut caller_cap, &caller);
    assert_udp_checksums(&mut callee_cap, &callee);
    match dataplane {
        Dataplane::Kernel => {
            assert_kernel_forwarded(&mg, &mut caller_cap, &mut callee_cap, &caller, &callee)
        }
        Dataplane::Afxdp => {
            assert_afxdp_forwarded(&mg, &mut caller_cap, &mut callee_cap, &caller, &callee)
        }
        Dataplane::Socket => {}
    }
    stop_and_assert_clean(&lab, mg);
}

#[test]
fn tcpdump_parser_counts_udp_checksums() {
    // `tcpdump -nn -vv` output as the captures write it (two lines a packet),
    // plus the one-line form without -v.
    let text = "\
14:52:17.242349 IP (tos 0x0, ttl 64, id 50370, offset 0, flags [DF], proto UDP (17), length 280)
    10.99.1.2.6000 > 10.99.1.1.30000: [udp sum ok] UDP, length 252
14:52:45.632832 IP (tos 0x0, ttl 64, id 2030, offset 0, flags [DF], proto UDP (17), length 280)
    10.99.1.1.30000 > 10.99.1.2.6000: [bad udp cksum 0x17de -> 0xe7e8!] UDP, length 252
14:52:17.242393 IP (tos 0x0, ttl 63, id 64664, offset 0, flags [DF], proto UDP (17), length 280)
    10.99.1.1.30000 > 10.99.1.2.6000: [udp sum ok] UDP, length 252
12:00:00.000000 IP 10.99.2.1.30000 > 10.99.2.2.6000: UDP, length 172
";
    let packets = parse_tcpdump_packets(text);
    assert_eq!(packets.len(), 4, "{packets:?}");
    assert_eq!(
        packets.iter().map(|p| p.len).collect::<Vec<_>>(),
        [Some(252), Some(252), Some(252), Some(172)]
    );
    let sums = count_sums(&packets);
    let relayed = sums[&(sa(MG_GW_IP, 30000), sa(GW_IP, SIPP_MEDIA_PORT))];
    assert_eq!(
        relayed,
        SumCount {
            ok: 1,
            bad: 1,
            unchecked: 0
        }
    );
    assert_eq!(
        sums[&(sa(GW_IP, SIPP_MEDIA_PORT), sa(MG_GW_IP, 30000))].ok,
        1
    );
    assert_eq!(
        sums[&(sa(MG_IT_IP, 30000), sa(IT_IP, SIPP_MEDIA_PORT))].unchecked,
        1
    );
    let flows = parse_tcpdump(text);
    assert_eq!(flows[&(sa(MG_GW_IP, 30000), sa(GW_IP, SIPP_MEDIA_PORT))], 2);
}

#[test]
fn sigterm_refuses_new_calls_lets_calls_run_then_hangs_up() {
    const GRACE_S: u64 = 3;
    let lab = Lab::new("sigterm");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_wait_bye", callee.peer_ip).timeout(40),
    );
    uas.settle();
    let text = config(60).replace(
        "[control]",
        &format!("[control]\nshutdown_grace_s = {GRACE_S}"),
    );
    let mut mg = Mediagate::start(&lab, &text);
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_wait_bye", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"]),
    );
    let (up, st) = mg.wait_status(Duration::from_secs(10), |st| {
        st["calls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["state"] == "confirmed"))
    });
    assert!(up, "the call never got up: {st}\n{}", uac.describe());

    let t0 = Instant::now();
    mg.terminate();
    // During the grace period a new call is refused with 503 and the call up goes on.
    let mut late = Sipp::spawn(
        &lab,
        "late-caller",
        SippOpts::new(caller.ns.clone(), "uac_expect_503", caller.peer_ip)
            .caller(DIALLED, &remote)
            .ports(5070, 6100)
            .args(&["-m", "1"]),
    );
    late.assert_ok(None);
    assert!(
        t0.elapsed() < Duration::from_secs(GRACE_S),
        "the refusal came after the grace period"
    );
    // Then both legs get a BYE and mediagate exits 0 by itself.
    uac.assert_ok(None);
    let hung_up = t0.elapsed();
    assert!(
        hung_up >= Duration::from_millis(GRACE_S * 1000 - 300)
            && hung_up <= Duration::from_secs(GRACE_S + 5),
        "BYE after {hung_up:?}, grace {GRACE_S} s"
    );
    let st = uas.stop();
    assert!(
        uas.received().iter().any(|m| m.is_request("BYE")),
        "the callee got no BYE: {st}\n{}",
        uas.describe()
    );
    let exit = mg.wait_exit(Duration::from_secs(5));
    assert!(
        exit.is_some_and(|s| s.success()),
        "mediagate did not exit 0 after the grace period: {exit:?}\n{}",
        mg.log_tail(30)
    );
    lab.assert_mg_clean();
}
