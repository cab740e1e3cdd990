//! Exactly-once forwarding on every media tier, both directions at once.
//!
//! For each tier (`socket`, `kernel`, `afxdp`) one test builds its own lab (see
//! tests/common/mod.rs and scripts/lab), starts mediagate on that tier and sets up `CALLS` calls
//! with sipp (gw caller, it callee, no sipp RTP; both SDPs point at `SDP_PORT`). Then the
//! project's generator (`mg-rtpgen`) sends `PACKETS_PER_STREAM` packets on every call in BOTH
//! directions at the same time:
//!
//! ```text
//!   gw: mg-rtpgen 10.99.1.2:(20000+i) -> 10.99.1.1:A_i [mediagate] 10.99.2.1:B_i -> 10.99.2.2:(20000+i) mg-rtpsink (it)
//!   it: mg-rtpgen 10.99.2.2:(20000+i) -> 10.99.2.1:B_i [mediagate] 10.99.1.1:A_i -> 10.99.1.2:(20000+i) mg-rtpsink (gw)
//! ```
//!
//! Every stream sends from its own port on the SDP address, so mediagate latches it and sends
//! the other direction back to that port, where the sinks listen (they also listen on
//! `SDP_PORT` for what goes out before the far leg latched). A warm-up round (another run id)
//! latches every stream and resolves every next hop before the counted run, so the assertions
//! are strict:
//!
//! - generator: every packet of the run went out (`sent == attempted == CALLS * PACKETS`);
//! - sinks (payload: stream index + per-stream sequence number): every packet exactly once
//!   (no gap, no duplicate, every stream complete) and `Udp: InCsumErrors` delta 0;
//! - capture (pcap at the far veths, parsed here): every packet of the run exactly once, from
//!   mediagate's address and the anchored port of ITS call, to the port of its stream, with
//!   valid IPv4 and UDP checksums and a byte-exact RTP payload;
//! - `/status`: every stream on the tier under test, latched, with rx/tx deltas of exactly
//!   `PACKETS` and no drops; kernel: `kernel_packets` delta 2 x `PACKETS` per stream,
//!   `counters.forwarded` delta equal to the packets of both directions and nothing passed to
//!   the socket path; afxdp: `to_afxdp` and the workers' `tx`/`rx` delta sums equal to the
//!   packets, no `no_neighbour`/`dropped`, and both workers moved packets (the lab veths have
//!   2 queues and the flows hash over them: 97/103 of the 200 flows with these ports).
//!
//! These tests need root; they fail (never skip) without it. Run one at a time:
//! `cargo test --test forwarding -- --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const DIALLED: &str = "+4930123";
/// Calls, i.e. RTP streams per direction.
const CALLS: usize = 100;
/// Packets per stream and direction in the counted run.
const PACKETS_PER_STREAM: u64 = 150;
/// Per stream: 100 streams x 50 pps x 2 directions = 10 kpps through the relay, for 3 s.
const PPS: u64 = 50;
/// Source port of stream `i` is `SRC_BASE + i` (on the SDP address of its side).
const SRC_BASE: u16 = 20000;
/// The port both sipp peers put in their SDP (a sink listens on it).
const SDP_PORT: u16 = 50000;
const WARMUP_RUN_ID: u32 = 1;
const RUN_ID: u32 = 0x4d47_0042;
/// RTP datagram length written by mg-rtpgen.
const RTP_LEN: usize = 172;

#[test]
fn socket_tier_forwards_every_packet_exactly_once_both_directions() {
    forwarding("fwd_socket", Dataplane::Socket);
}

#[test]
fn kernel_tier_forwards_every_packet_exactly_once_both_directions() {
    forwarding("fwd_kernel", Dataplane::Kernel);
}

#[test]
fn afxdp_tier_forwards_every_packet_exactly_once_both_directions() {
    forwarding("fwd_afxdp", Dataplane::Afxdp);
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// One direction of the relay.
struct Dir {
    name: &'static str,
    /// namespace and address of the generator (= the stream's SDP address on the ingress leg)
    gen_ns: String,
    gen_ip: &'static str,
    /// mediagate address packets are sent to / come from
    mg_in_ip: &'static str,
    mg_out_ip: &'static str,
    /// namespace, veth and address of the receiving side
    sink_ns: String,
    sink_if: String,
    sink_ip: &'static str,
}

/// Anchored ports of one call.
#[derive(Clone, Copy, Debug)]
struct CallPorts {
    /// leg A (pbx, gw side) RTP port on 10.99.1.1
    a: u16,
    /// leg B (itsp, it side) RTP port on 10.99.2.1
    b: u16,
}

fn mediagate_config(dataplane: Dataplane) -> String {
    let mut text = config_with(60, dataplane).replace("max_calls = 100", "max_calls = 200");
    if dataplane == Dataplane::Afxdp {
        // one worker per core; worker w serves rx queues q % 2 == w of both veths
        text = text.replace(
            "dataplane = \"afxdp\"\n",
            "dataplane = \"afxdp\"\ncores = [0, 1]\n",
        );
        assert!(text.contains("cores = [0, 1]"), "config rewrite failed");
    }
    text
}

fn forwarding(test: &str, dataplane: Dataplane) {
    require_root_and_tools();
    let t_start = Instant::now();
    let tier = dataplane.as_str();
    let streams = CALLS as u64;
    let expected_per_dir = streams * PACKETS_PER_STREAM;

    // Drop order: processes first, the lab last.
    let lab = Lab::new(test);
    let uas_scen = sdp_port_scenario(&lab, "uas_wait_bye", SDP_PORT);
    let uac_scen = sdp_port_scenario(&lab, "uac_wait_bye", SDP_PORT);
    let uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), &uas_scen, IT_IP).timeout(120),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &mediagate_config(dataplane));
    let remote = format!("{MG_GW_IP}:5060");
    let calls_s = CALLS.to_string();
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), &uac_scen, GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-l", &calls_s, "-m", &calls_s, "-r", "200"])
            .timeout(120),
    );

    // ---- all calls confirmed; their anchored ports
    let (ok, st_setup) = mg.wait_status(Duration::from_secs(20), |st| confirmed_calls(st) == CALLS);
    if !ok {
        let alive = uac.exited();
        panic!(
            "only {} of {CALLS} calls confirmed within 20 s (caller sipp exited: {alive:?})\n{}\n{}",
            confirmed_calls(&st_setup),
            uac.describe(),
            uas.describe()
        );
    }
    let t_calls = t_start.elapsed();
    let calls = call_ports(&st_setup);
    assert_eq!(calls.len(), CALLS);
    for c in &calls {
        assert!(
            MEDIA_PORTS.contains(&c.a) && MEDIA_PORTS.contains(&c.b),
            "{c:?}"
        );
    }

    let gw_to_it = Dir {
        name: "gw->it",
        gen_ns: lab.gw(),
        gen_ip: GW_IP,
        mg_in_ip: MG_GW_IP,
        mg_out_ip: MG_IT_IP,
        sink_ns: lab.it(),
        sink_if: lab.it_if(),
        sink_ip: IT_IP,
    };
    let it_to_gw = Dir {
        name: "it->gw",
        gen_ns: lab.it(),
        gen_ip: IT_IP,
        mg_in_ip: MG_IT_IP,
        mg_out_ip: MG_GW_IP,
        sink_ns: lab.gw(),
        sink_if: lab.gw_if(),
        sink_ip: GW_IP,
    };
    let dsts = |d: &Dir| -> PathBuf {
        let path = lab.path(&format!("dst-{}.txt", d.gen_ip));
        let text: String = calls
            .iter()
            .map(|c| {
                let port = if d.mg_in_ip == MG_GW_IP { c.a } else { c.b };
                format!("{}:{port}\n", d.mg_in_ip)
            })
            .collect();
        fs::write(&path, text).expect("write destinations");
        path
    };
    let dst_gw = dsts(&gw_to_it);
    let dst_it = dsts(&it_to_gw);

    // ---- sinks on the far sides, for the whole test (warm-up packets count as `stale`)
    let sink_ports = format!("{SDP_PORT},{SRC_BASE}-{}", SRC_BASE + CALLS as u16 - 1);
    let mut sinks: Vec<Proc> = [&gw_to_it, &it_to_gw]
        .iter()
        .map(|d| rtp_sink(&lab, &d.sink_ns, d.sink_ip, &sink_ports, CALLS, RUN_ID))
        .collect();

    // ---- warm-up: one packet per stream and direction (latching, next hops), until every
    // stream is latched to its generator port
    let mut warm_rounds = 0;
    loop {
        warm_rounds += 1;
        for (d, dst) in [(&gw_to_it, &dst_gw), (&it_to_gw, &dst_it)] {
            let mut g = generator(&lab, d, dst, WARMUP_RUN_ID, 1, 500, "warmup");
            let out = g.wait_json(Duration::from_secs(10));
            assert_eq!(
                out["sent"].as_u64(),
                Some(streams),
                "warm-up {}: {out}",
                d.name
            );
        }
        sleep(Duration::from_millis(500));
        let st = mg.status();
        let problems = warm_problems(&st, &calls, dataplane);
        if problems.is_empty() {
            break;
        }
        assert!(
            warm_rounds < 4,
            "streams not latched to their generator ports after {warm_rounds} warm-up rounds:\n{}\n\
             dataplane: {:#}",
            problems.join("\n"),
            st["dataplane"]
        );
    }
    // Let a kernel collector pass and the afxdp neighbour refresher settle, then take the
    // baseline for the deltas.
    sleep(Duration::from_millis(1200));
    let before = mg.status();
    let neigh = lab.exec(&lab.mg(), &["ip", "neigh", "show"]);

    // ---- captures of what mediagate sends to the far sides
    let mut caps: Vec<Pcap> = [&gw_to_it, &it_to_gw]
        .iter()
        .map(|d| Pcap::start(&lab, &d.sink_ns, &d.sink_if, d.name))
        .collect();

    // ---- the counted run: both directions at once
    let t_run = Instant::now();
    let mut gens: Vec<Proc> = [(&gw_to_it, &dst_gw), (&it_to_gw, &dst_it)]
        .iter()
        .map(|(d, dst)| generator(&lab, d, dst, RUN_ID, PACKETS_PER_STREAM, PPS, "run"))
        .collect();
    let gen_out: Vec<Value> = gens
        .iter_mut()
        .map(|g| g.wait_json(Duration::from_secs(PACKETS_PER_STREAM / PPS + 15)))
        .collect();
    let run_s = t_run.elapsed();
    for (d, out) in [&gw_to_it, &it_to_gw].iter().zip(&gen_out) {
        assert_eq!(
            (
                out["sent"].as_u64(),
                out["attempted"].as_u64(),
                out["send_errors"].as_u64()
            ),
            (Some(expected_per_dir), Some(expected_per_dir), Some(0)),
            "generator {} did not send every packet: {out}",
            d.name
        );
    }

    // ---- drain: until mediagate's per-stream counters reach the run (the kernel tier's
    // collector copies them periodically), bounded; then a little longer, so that late extra
    // copies would still be counted
    let _ = mg.wait_status(Duration::from_secs(5), |st| {
        stream_deltas(&before, st)
            .values()
            .all(|d| d.rx >= PACKETS_PER_STREAM && d.tx >= PACKETS_PER_STREAM)
    });
    sleep(Duration::from_millis(300));
    let after = mg.status();

    let sink_out: Vec<Value> = sinks.iter_mut().map(|s| s.term_json()).collect();
    let captured: Vec<CaptureResult> = caps.iter_mut().map(|c| c.stop()).collect();

    // ---- report (also on success, with --nocapture)
    let mut report = String::new();
    let _ = writeln!(
        report,
        "[{test}] tier {tier}: {CALLS} calls set up in {t_calls:?}, warm-up rounds {warm_rounds}, \
         counted run {run_s:?} ({PACKETS_PER_STREAM} pkts/stream at {PPS} pps, \
         {expected_per_dir} per direction, both directions at once)"
    );
    for (i, d) in [&gw_to_it, &it_to_gw].iter().enumerate() {
        let g = &gen_out[i];
        let s = &sink_out[i];
        let c = &captured[i];
        let _ = writeln!(
            report,
            "  {}: gen sent {} in {:.2} s ({:.0} pps); sink unique {} dup {} gaps {} reordered {} \
             stale {} foreign {} silent {} per-stream {}..{} InCsumErrors {} RcvbufErrors {} \
             p50/p99/max {}/{}/{} us; capture {} of run ({} other, tcpdump dropped {})",
            d.name,
            g["sent"],
            g["seconds"].as_f64().unwrap_or(0.0),
            g["achieved_pps"].as_f64().unwrap_or(0.0),
            s["unique"],
            s["duplicates"],
            s["gaps"],
            s["reordered"],
            s["stale"],
            s["foreign"],
            s["streams_silent"],
            s["per_stream_unique_min"],
            s["per_stream_unique_max"],
            s["udp"]["InCsumErrors"],
            s["udp"]["RcvbufErrors"],
            s["latency"]["p50_us"],
            s["latency"]["p99_us"],
            s["latency"]["max_us"],
            c.run_packets,
            c.other,
            c.dropped
        );
    }
    let _ = writeln!(
        report,
        "  warm-up ({warm_rounds} x 1 packet per stream and direction) dataplane delta: {}",
        dataplane_delta(&st_setup, &before)
    );
    let _ = writeln!(
        report,
        "  counted run dataplane delta: {}",
        dataplane_delta(&before, &after)
    );
    let _ = writeln!(
        report,
        "  mg neighbours: {}",
        neigh.trim().replace('\n', "; ")
    );
    eprint!("{report}");

    // ---- assertions: sinks (payload sequence numbers, checksums)
    for (i, d) in [&gw_to_it, &it_to_gw].iter().enumerate() {
        let s = &sink_out[i];
        let ctx = || format!("sink {} ({tier} tier): {s}\n{report}", d.name);
        assert_eq!(
            s["udp"]["InCsumErrors"].as_i64(),
            Some(0),
            "UDP checksum errors at the receiver: {}",
            ctx()
        );
        assert_eq!(s["checksum_errors"].as_i64(), Some(0), "{}", ctx());
        assert_eq!(s["duplicates"].as_u64(), Some(0), "duplicates: {}", ctx());
        assert_eq!(s["gaps"].as_u64(), Some(0), "gaps (loss): {}", ctx());
        assert_eq!(s["foreign"].as_u64(), Some(0), "foreign packets: {}", ctx());
        assert_eq!(
            s["unique"].as_u64(),
            Some(expected_per_dir),
            "packets received once: {}",
            ctx()
        );
        assert_eq!(
            (
                s["streams_seen"].as_u64(),
                s["streams_silent"].as_u64(),
                s["per_stream_unique_min"].as_u64(),
                s["per_stream_unique_max"].as_u64()
            ),
            (
                Some(streams),
                Some(0),
                Some(PACKETS_PER_STREAM),
                Some(PACKETS_PER_STREAM)
            ),
            "every stream complete: {}",
            ctx()
        );
    }

    // ---- assertions: capture (source address and anchored port, destination, checksums,
    // payload, exactly once)
    for (i, d) in [&gw_to_it, &it_to_gw].iter().enumerate() {
        let c = &captured[i];
        let ctx = || format!("capture {} ({tier} tier), {}\n{report}", d.name, c.file);
        assert_eq!(c.dropped, 0, "tcpdump dropped packets: {}", ctx());
        assert!(
            c.bad.is_empty(),
            "{} bad packets, first ones:\n  {}\n{}",
            c.bad.len(),
            c.bad
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            ctx()
        );
        let mut problems = Vec::new();
        for (stream, call) in calls.iter().enumerate() {
            let port = if d.mg_out_ip == MG_GW_IP {
                call.a
            } else {
                call.b
            };
            let want_src = sa(d.mg_out_ip, port);
            let want_dst = sa(d.sink_ip, SRC_BASE + stream as u16);
            for seq in 0..PACKETS_PER_STREAM {
                let seen = c.seen.get(&(stream as u32, seq));
                match seen {
                    Some(v) if v.len() == 1 && v[0] == (want_src, want_dst) => {}
                    Some(v) => problems.push(format!(
                        "stream {stream} seq {seq}: {v:?}, want once {want_src} -> {want_dst}"
                    )),
                    None => problems.push(format!(
                        "stream {stream} seq {seq}: missing ({want_src} -> {want_dst})"
                    )),
                }
            }
        }
        let extra = c
            .seen
            .keys()
            .filter(|(s, q)| *s as usize >= CALLS || *q >= PACKETS_PER_STREAM)
            .count();
        assert!(
            problems.is_empty() && extra == 0 && c.run_packets == expected_per_dir,
            "{} wrong/missing packets, {extra} outside the run's streams/sequences, {} captured \
             (want {expected_per_dir}); first ones:\n  {}\n{}",
            problems.len(),
            c.run_packets,
            problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            ctx()
        );
    }

    // ---- assertions: /status, the tier carried them
    assert_eq!(
        after["dataplane"]["tier"].as_str(),
        Some(tier),
        "dataplane: {:#}",
        after["dataplane"]
    );
    let deltas = stream_deltas(&before, &after);
    assert_eq!(deltas.len(), 2 * CALLS, "RTP streams in /status: {after:#}");
    let mut wrong = Vec::new();
    for (local, dl) in &deltas {
        let want_kernel = if dataplane == Dataplane::Kernel {
            2 * PACKETS_PER_STREAM
        } else {
            0
        };
        if dl.tier != tier
            || !dl.latched
            || dl.rx != PACKETS_PER_STREAM
            || dl.tx != PACKETS_PER_STREAM
            || dl.drops != 0
            || dl.kernel != want_kernel
        {
            wrong.push(format!(
                "{local}: {dl:?} (want kernel_packets delta {want_kernel})"
            ));
        }
    }
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} streams with unexpected /status deltas (want tier {tier}, latched, rx = tx = \
         {PACKETS_PER_STREAM}, drops 0):\n  {}\n{report}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let total = 2 * expected_per_dir;
    match dataplane {
        Dataplane::Socket => {}
        Dataplane::Kernel => {
            let c = |name: &str| counter_delta(&before, &after, name);
            assert_eq!(
                c("forwarded"),
                total,
                "kernel tier forwarded {} of {total} packets: {}\n{report}",
                c("forwarded"),
                dataplane_delta(&before, &after)
            );
            for name in ["pass_no_neighbour", "pass_userspace", "drop_redirect"] {
                assert_eq!(
                    c(name),
                    0,
                    "kernel counter {name} moved during the run: {}\n{report}",
                    dataplane_delta(&before, &after)
                );
            }
        }
        Dataplane::Afxdp => {
            let w = worker_deltas(&before, &after);
            assert_eq!(w.len(), 2, "AF_XDP workers: {:#}", after["dataplane"]);
            assert_eq!(
                counter_delta(&before, &after, "to_afxdp"),
                total,
                "XDP program's to_afxdp delta: {}\n{report}",
                dataplane_delta(&before, &after)
            );
            let tx: u64 = w.iter().map(|x| x.tx).sum();
            let rx: u64 = w.iter().map(|x| x.rx).sum();
            assert_eq!(
                (tx, rx),
                (total, total),
                "AF_XDP workers' tx/rx delta sums: {w:?}\n{report}"
            );
            for x in &w {
                assert_eq!(
                    (x.no_neighbour, x.dropped),
                    (0, 0),
                    "AF_XDP worker lost packets: {w:?}\n{report}"
                );
            }
            // Both queues (so both workers) carried traffic: the flows hash over the veths'
            // two tx queues, and a veth delivers on the peer's rx queue of the same index.
            assert!(
                w.iter().all(|x| x.tx > 0),
                "only one AF_XDP worker moved packets (RSS put every flow on one queue?): {w:?}\n{report}"
            );
            eprintln!("[{test}] AF_XDP workers (delta of the run): {w:?}");
        }
    }
    eprintln!("[{test}] passed in {:?}", t_start.elapsed());
}

// ---------------------------------------------------------------------------
// /status helpers
// ---------------------------------------------------------------------------

fn confirmed_calls(st: &Value) -> usize {
    st["calls"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|c| c["state"].as_str() == Some("confirmed"))
            .count()
    })
}

fn leg<'a>(call: &'a Value, trunk: &str) -> &'a Value {
    call["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["trunk"].as_str() == Some(trunk)))
        .unwrap_or_else(|| panic!("no {trunk} leg: {call:#}"))
}

/// The anchored RTP ports of every call, in /status order; checks the SDP remotes.
fn call_ports(st: &Value) -> Vec<CallPorts> {
    st["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|call| {
            let a = &leg(call, "pbx")["streams"][0];
            let b = &leg(call, "itsp")["streams"][0];
            assert_eq!(
                a["remote"].as_str(),
                Some(sa(GW_IP, SDP_PORT).to_string().as_str()),
                "leg A remote (caller SDP): {call:#}"
            );
            assert_eq!(
                b["remote"].as_str(),
                Some(sa(IT_IP, SDP_PORT).to_string().as_str()),
                "leg B remote (callee SDP): {call:#}"
            );
            assert!(
                a["local"].as_str().unwrap_or("").starts_with(MG_GW_IP)
                    && b["local"].as_str().unwrap_or("").starts_with(MG_IT_IP),
                "anchored addresses: {call:#}"
            );
            CallPorts {
                a: local_port(a),
                b: local_port(b),
            }
        })
        .collect()
}

/// What is not yet right after a warm-up round: every RTP stream of call `i` latched to
/// `PEER:SRC_BASE + i`, on the tier under test.
fn warm_problems(st: &Value, calls: &[CallPorts], dataplane: Dataplane) -> Vec<String> {
    let mut by_port: HashMap<u16, &Value> = HashMap::new();
    for call in st["calls"].as_array().into_iter().flatten() {
        for l in call["legs"].as_array().into_iter().flatten() {
            if let Some(s) = l["streams"].as_array().and_then(|s| s.first()) {
                by_port.insert(local_port(s), s);
            }
        }
    }
    let mut problems = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        for (port, peer) in [(c.a, GW_IP), (c.b, IT_IP)] {
            let want = sa(peer, SRC_BASE + i as u16).to_string();
            match by_port.get(&port) {
                Some(s)
                    if s["latched"].as_bool() == Some(true)
                        && s["remote"].as_str() == Some(want.as_str())
                        && s["tier"].as_str() == Some(dataplane.as_str()) => {}
                Some(s) => problems.push(format!("stream {port}: {s}, want latched to {want}")),
                None => problems.push(format!("stream {port}: not in /status")),
            }
        }
    }
    problems
}

#[derive(Debug, Default)]
struct StreamDelta {
    tier: String,
    latched: bool,
    rx: u64,
    tx: u64,
    drops: u64,
    kernel: u64,
}

/// Per RTP stream (by local address): counter deltas between two /status snapshots.
fn stream_deltas(before: &Value, after: &Value) -> HashMap<String, StreamDelta> {
    fn streams(st: &Value) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        for call in st["calls"].as_array().into_iter().flatten() {
            for l in call["legs"].as_array().into_iter().flatten() {
                for s in l["streams"].as_array().into_iter().flatten() {
                    if let Some(local) = s["local"].as_str() {
                        m.insert(local.to_string(), s.clone());
                    }
                }
            }
        }
        m
    }
    let b = streams(before);
    streams(after)
        .into_iter()
        .map(|(k, a)| {
            let z = Value::Null;
            let p = b.get(&k).unwrap_or(&z);
            let d = |f: &str| {
                a[f].as_u64()
                    .unwrap_or(0)
                    .saturating_sub(p[f].as_u64().unwrap_or(0))
            };
            let delta = StreamDelta {
                tier: a["tier"].as_str().unwrap_or("?").to_string(),
                latched: a["latched"].as_bool() == Some(true),
                rx: d("rx_packets"),
                tx: d("tx_packets"),
                drops: d("drops"),
                kernel: d("kernel_packets"),
            };
            (k, delta)
        })
        .collect()
}

fn counter_delta(before: &Value, after: &Value, name: &str) -> u64 {
    let get = |st: &Value| st["dataplane"]["counters"][name].as_u64().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

struct WorkerDelta {
    core: u64,
    rx: u64,
    tx: u64,
    dropped: u64,
    no_neighbour: u64,
}

impl std::fmt::Debug for WorkerDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "core {}: rx {} tx {} dropped {} no_neighbour {}",
            self.core, self.rx, self.tx, self.dropped, self.no_neighbour
        )
    }
}

fn worker_deltas(before: &Value, after: &Value) -> Vec<WorkerDelta> {
    let workers = |st: &Value| {
        st["dataplane"]["afxdp"]["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let b = workers(before);
    workers(after)
        .iter()
        .map(|w| {
            let core = w["core"].as_u64().unwrap_or(u64::MAX);
            let z = Value::Null;
            let p = b
                .iter()
                .find(|x| x["core"].as_u64() == Some(core))
                .unwrap_or(&z);
            let d = |f: &str| {
                w[f].as_u64()
                    .unwrap_or(0)
                    .saturating_sub(p[f].as_u64().unwrap_or(0))
            };
            WorkerDelta {
                core,
                rx: d("rx"),
                tx: d("tx"),
                dropped: d("dropped"),
                no_neighbour: d("no_neighbour"),
            }
        })
        .collect()
}

/// Non-zero deltas of the XDP program's counters and the AF_XDP workers, for reports.
fn dataplane_delta(before: &Value, after: &Value) -> String {
    let mut s = String::new();
    if let Some(c) = after["dataplane"]["counters"].as_object() {
        let mut parts: Vec<String> = c
            .keys()
            .map(|k| (k, counter_delta(before, after, k)))
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        parts.sort();
        let _ = write!(s, "xdp counters {{{}}}", parts.join(", "));
    }
    if after["dataplane"]["afxdp"].is_object() {
        let _ = write!(
            s,
            " afxdp workers {:?}, neighbour_probes {}",
            worker_deltas(before, after),
            after["dataplane"]["afxdp"]["neighbour_probes"]
        );
    }
    if s.is_empty() {
        s.push_str("(socket tier: no data plane counters)");
    }
    s
}

// ---------------------------------------------------------------------------
// Generator and sink processes
// ---------------------------------------------------------------------------

fn generator(
    lab: &Lab,
    d: &Dir,
    dst_file: &std::path::Path,
    run_id: u32,
    per_stream: u64,
    pps: u64,
    what: &str,
) -> Proc {
    let packets = (CALLS as u64 * per_stream).to_string();
    let seconds = (per_stream as f64 / pps as f64 + 10.0).to_string();
    Proc::spawn(
        lab,
        &d.gen_ns,
        &format!("gen-{what}-{}", d.gen_ip),
        env!("CARGO_BIN_EXE_mg-rtpgen"),
        &[
            "--src",
            d.gen_ip,
            "--src-port-base",
            &SRC_BASE.to_string(),
            "--dst-file",
            &dst_file.display().to_string(),
            "--streams",
            &CALLS.to_string(),
            "--pps",
            &pps.to_string(),
            "--packets",
            &packets,
            "--seconds",
            &seconds,
            "--run-id",
            &run_id.to_string(),
            "--cpu",
            "-1",
        ],
    )
}

// ---------------------------------------------------------------------------
// pcap capture and verification
// ---------------------------------------------------------------------------

/// tcpdump writing a pcap of the UDP packets mediagate sends into one far namespace.
struct Pcap {
    child: Option<Child>,
    file: PathBuf,
    err: PathBuf,
}

struct CaptureResult {
    file: String,
    /// (stream, seq) of the counted run -> (source, destination) of every copy seen
    seen: HashMap<(u32, u64), Vec<(SocketAddrV4, SocketAddrV4)>>,
    run_packets: u64,
    /// packets of other runs or not from mg-rtpgen (warm-up stragglers, neighbour probes)
    other: u64,
    /// packets of the run that failed a check (checksums, payload, length)
    bad: Vec<String>,
    /// "N packets dropped by kernel" of tcpdump
    dropped: u64,
}

impl Pcap {
    fn start(lab: &Lab, ns: &str, iface: &str, name: &str) -> Pcap {
        let tag = name.replace("->", "-to-");
        let file = lab.path(&format!("capture-{tag}.pcap"));
        let err = lab.path(&format!("capture-{tag}.err"));
        // Every inbound UDP packet but SIP: a relayed packet with a wrong source shows up too.
        let filter = "udp and not port 5060";
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-Q",
                "in",
            ])
            .args(["-B", "16384", "-s", "512", "-i", iface, "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).expect("create capture err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn tcpdump: {e}"));
        let mut p = Pcap {
            child: Some(child),
            file,
            err,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&p.err).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                p.child = None;
                panic!("tcpdump exited ({st}): {text}");
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start listening within 10 s: {text}"
            );
            sleep(Duration::from_millis(20));
        }
        p
    }

    fn stop(&mut self) -> CaptureResult {
        if let Some(mut child) = self.child.take() {
            sleep(Duration::from_millis(300));
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let err = fs::read_to_string(&self.err).unwrap_or_default();
        let dropped = err
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no drop count in tcpdump's stderr: {err}"));
        let data = fs::read(&self.file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.file.display()));
        let mut r = CaptureResult {
            file: self.file.display().to_string(),
            seen: HashMap::new(),
            run_packets: 0,
            other: 0,
            bad: Vec::new(),
            dropped,
        };
        for frame in pcap_frames(&data) {
            match check_frame(frame) {
                Frame::Run {
                    src,
                    dst,
                    stream,
                    seq,
                } => {
                    r.run_packets += 1;
                    r.seen.entry((stream, seq)).or_default().push((src, dst));
                }
                Frame::Other => r.other += 1,
                Frame::Bad(why) => r.bad.push(why),
            }
        }
        r
    }
}

impl Drop for Pcap {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            sleep(Duration::from_millis(200));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The frames of a classic pcap file (Ethernet link type), either byte order and µs/ns stamps.
fn pcap_frames(data: &[u8]) -> Vec<&[u8]> {
    assert!(
        data.len() >= 24,
        "pcap file too short ({} bytes)",
        data.len()
    );
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = data[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "pcap link type is not Ethernet");
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + incl > data.len() {
            break; // truncated last record (tcpdump killed mid-write)
        }
        frames.push(&data[start..start + incl]);
        off = start + incl;
    }
    frames
}

enum Frame {
    Run {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        stream: u32,
        seq: u64,
    },
    Other,
    Bad(String),
}

fn sum16(bytes: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        s += (*last as u32) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks one captured frame against what mg-rtpgen sent for (stream, seq) of `RUN_ID`:
/// IPv4 header checksum, UDP checksum recomputed from scratch (and present), length, and
/// every RTP byte except the send time stamp.
fn check_frame(f: &[u8]) -> Frame {
    if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] {
        return Frame::Other;
    }
    let ip = &f[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 {
        return Frame::Other;
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[ihl..];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let src = SocketAddrV4::new(src_ip, sport);
    let dst = SocketAddrV4::new(dst_ip, dport);
    let rtp = &udp[8..];
    if rtp.len() < 40 || &rtp[12..16] != b"MGLT" {
        return Frame::Other;
    }
    let run = u32::from_le_bytes(rtp[36..40].try_into().unwrap());
    if run != RUN_ID {
        return Frame::Other;
    }
    let stream = u32::from_le_bytes(rtp[16..20].try_into().unwrap());
    let seq = u64::from_le_bytes(rtp[20..28].try_into().unwrap());
    let bad = |why: String| Frame::Bad(format!("{src} -> {dst} stream {stream} seq {seq}: {why}"));
    let ip_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if ip_len != ihl + 8 + RTP_LEN || udp_len != 8 + RTP_LEN || rtp.len() < RTP_LEN {
        return bad(format!(
            "lengths ip {ip_len} udp {udp_len} captured rtp {}",
            rtp.len()
        ));
    }
    if fold(sum16(&ip[..ihl])) != 0xffff {
        return bad("bad IPv4 header checksum".into());
    }
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    if csum == 0 {
        return bad("UDP checksum absent (0)".into());
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src_ip.octets());
    pseudo[4..8].copy_from_slice(&dst_ip.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    if fold(sum16(&pseudo) + sum16(&udp[..udp_len])) != 0xffff {
        return bad(format!("bad UDP checksum {csum:#06x}"));
    }
    // RTP and mg-rtpgen's payload (see src/bin/mg-rtpgen.rs)
    let mut want = [0u8; RTP_LEN];
    want[0] = 0x80;
    want[1] = 8;
    want[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    want[4..8].copy_from_slice(&((seq as u32).wrapping_mul(160)).to_be_bytes());
    want[8..12].copy_from_slice(&0x4d47_0000u32.wrapping_add(stream).to_be_bytes());
    want[12..16].copy_from_slice(b"MGLT");
    want[16..20].copy_from_slice(&stream.to_le_bytes());
    want[20..28].copy_from_slice(&seq.to_le_bytes());
    want[28..36].copy_from_slice(&rtp[28..36]); // send time: not predictable
    want[36..40].copy_from_slice(&RUN_ID.to_le_bytes());
    for (k, b) in want[40..].iter_mut().enumerate() {
        *b = 0xd5 ^ (k as u8);
    }
    if rtp[..RTP_LEN] != want {
        let first = (0..RTP_LEN).find(|&i| rtp[i] != want[i]).unwrap_or(0);
        return bad(format!(
            "payload differs from byte {first} ({:#04x}, want {:#04x})",
            rtp[first], want[first]
        ));
    }
    Frame::Run {
        src,
        dst,
        stream,
        seq,
    }
}
