//! RTP quality statistics measured on real traffic of known quality, on every media tier.
//!
//! One call through mediagate (sipp caller on gw, sipp callee on it, no sipp RTP). Once it is
//! confirmed, the project's generator (`mg-rtpgen`) sends `PACKETS` sequence numbers in each
//! direction at 50 packets/s:
//!
//! - gw → mediagate (the caller's leg) with `--skip-every 10` (sequence numbers 9, 19, …, 199
//!   never sent: exactly `LOST` of the `EXPECTED` packets RFC 3550 A.1 expects) and
//!   `--ts-jitter-ms 20` (every odd packet stamped 20 ms late in RTP time: whatever the real
//!   arrival times, the A.8 jitter is near what `media::quality` computes for the ideal
//!   schedule, one packet every 20 ms, about 17 ms);
//! - it → mediagate (the callee's leg) clean.
//!
//! The assertions: `/status` quality of both legs' RTP streams (lost and expected exactly,
//! loss ratio exactly 0.1 and 0, jitter in range, MOS ordered), then, once the media timeout has
//! ended the call, the CDR's per-leg `packets_lost`, `loss`, `jitter_ms` and `mos`, and the
//! per-trunk metrics observed at call end. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use mediagate::media::{Quality, RtpHeader, RtpQuality};
use mediagate::metrics::prometheus::parse_exposition;
use serde_json::Value;

use common::*;

/// Sequence numbers sent per direction: 0..=200.
const PACKETS: u64 = 201;
const SKIP_EVERY: u64 = 10;
/// A.1 counts from the packet that ends the probation (seq 1) to the highest (200).
const EXPECTED: u64 = 200;
/// 9, 19, …, 199.
const LOST: u64 = 20;
const TS_JITTER_MS: f64 = 20.0;
/// No media for this long after the generators stop ends the call (media-timeout).
const MEDIA_TIMEOUT_S: u32 = 5;

#[test]
fn socket_tier_measures_loss_and_jitter() {
    quality("q_socket", Dataplane::Socket);
}

#[test]
fn kernel_tier_measures_loss_and_jitter() {
    quality("q_kernel", Dataplane::Kernel);
}

#[test]
fn afxdp_tier_measures_loss_and_jitter() {
    quality("q_afxdp", Dataplane::Afxdp);
}

/// mg-rtpgen in `ns` from `src`:20000 to `dst`, one stream, `PACKETS` sequence numbers.
fn generator(lab: &Lab, ns: &str, src: &str, dst: &str, impair: &[&str]) -> Proc {
    let mut args = vec![
        "--src",
        src,
        "--dst",
        dst,
        "--pps",
        "50",
        "--seconds",
        "15",
        "--cpu",
        "-1",
    ];
    let packets = PACKETS.to_string();
    args.extend(["--packets", &packets]);
    args.extend_from_slice(impair);
    Proc::spawn(
        lab,
        ns,
        &format!("gen-{src}"),
        env!("CARGO_BIN_EXE_mg-rtpgen"),
        &args,
    )
}

fn quality(test: &str, dataplane: Dataplane) {
    require_root_and_tools();
    let lab = Lab::new(test);
    let cdr_path = lab.path("cdr.jsonl");
    let config = format!(
        "{}\n[cdr]\npath = \"{}\"\n",
        config_with(MEDIA_TIMEOUT_S, dataplane),
        cdr_path.display()
    );
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_wait_bye", IT_IP).timeout(60),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_wait_bye", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .timeout(60),
    );
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |st| {
        st["calls"][0]["state"].as_str() == Some("confirmed")
    });
    assert!(ok, "the call was not confirmed: {st:#}");
    let (a, b) = (
        local_port(rtp_stream(&st, "pbx")),
        local_port(rtp_stream(&st, "itsp")),
    );

    let skip = SKIP_EVERY.to_string();
    let jitter = TS_JITTER_MS.to_string();
    let mut gens = [
        generator(
            &lab,
            &lab.gw(),
            GW_IP,
            &format!("{MG_GW_IP}:{a}"),
            &["--skip-every", &skip, "--ts-jitter-ms", &jitter],
        ),
        generator(&lab, &lab.it(), IT_IP, &format!("{MG_IT_IP}:{b}"), &[]),
    ];
    let sent: Vec<Value> = gens
        .iter_mut()
        .map(|g| g.wait_json(Duration::from_secs(20)))
        .collect();
    assert_eq!(sent[0]["sent"].as_u64(), Some(PACKETS - LOST));
    assert_eq!(sent[0]["skipped"].as_u64(), Some(LOST));
    assert_eq!(sent[1]["sent"].as_u64(), Some(PACKETS));

    // /status, once every tier's counts have arrived (the kernel tier's are copied each second).
    let (ok, st) = mg.wait_status(Duration::from_secs(3), |st| {
        ["pbx", "itsp"]
            .iter()
            .all(|t| rtp_stream(st, t)["quality"]["packets_expected"].as_u64() == Some(EXPECTED))
    });
    assert!(ok, "quality counts not complete: {st:#}");
    let (lossy, clean) = (
        &rtp_stream(&st, "pbx")["quality"],
        &rtp_stream(&st, "itsp")["quality"],
    );
    assert_eq!(
        rtp_stream(&st, "pbx")["tier"].as_str(),
        Some(dataplane.as_str())
    );
    assert_eq!(lossy["packets_lost"].as_u64(), Some(LOST), "{lossy}");
    assert_eq!(lossy["loss_ratio"].as_f64(), Some(0.1), "{lossy}");
    assert_eq!(clean["packets_lost"].as_u64(), Some(0), "{clean}");
    assert_eq!(clean["loss_ratio"].as_f64(), Some(0.0), "{clean}");
    let (lossy_j, clean_j) = (
        lossy["jitter_ms"].as_f64().expect("jitter"),
        clean["jitter_ms"].as_f64().expect("jitter"),
    );
    eprintln!(
        "{}: caller leg {lossy}, callee leg {clean}, ideal jitter {} ms",
        dataplane.as_str(),
        ideal_jitter_ms()
    );
    assert_jitter(lossy_j, clean_j);
    let (lossy_mos, clean_mos) = (
        lossy["mos"].as_f64().expect("mos"),
        clean["mos"].as_f64().expect("mos"),
    );
    assert!(
        clean_mos > 4.0 && lossy_mos < clean_mos - 0.5 && lossy_mos > 1.0,
        "MOS clean {clean_mos}, lossy {lossy_mos}"
    );
    let rtcp = &rtp_stream(&st, "pbx")["rtcp"]["quality"];
    assert!(rtcp.is_null(), "RTCP streams have no RTP quality: {rtcp}");

    // The media timeout ends the call: its CDR.
    let deadline = Instant::now() + Duration::from_secs(u64::from(MEDIA_TIMEOUT_S) + 10);
    let record = loop {
        let text = fs::read_to_string(&cdr_path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<Value>(line).expect("CDR JSON");
        }
        assert!(Instant::now() < deadline, "no CDR written");
        sleep(Duration::from_millis(100));
    };
    assert_eq!(record["end_reason"], "media-timeout", "{record}");
    let (m_in, m_out) = (&record["media_in"], &record["media_out"]);
    assert_eq!(m_in["packets_lost"].as_u64(), Some(LOST), "{m_in}");
    assert_eq!(m_in["loss"].as_f64(), Some(0.1), "{m_in}");
    assert_eq!(m_out["packets_lost"].as_u64(), Some(0), "{m_out}");
    assert_eq!(m_out["loss"].as_f64(), Some(0.0), "{m_out}");
    assert_jitter(
        m_in["jitter_ms"].as_f64().expect("jitter"),
        m_out["jitter_ms"].as_f64().expect("jitter"),
    );
    assert!(
        m_in["mos"].as_f64() < m_out["mos"].as_f64(),
        "MOS in CDR: {record}"
    );

    // Metrics: observed once per leg at call end, by the leg's trunk.
    let (_, body) = mg.http_get("/metrics", &[]).expect("GET /metrics");
    let samples = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let get = |k: &str| {
        samples
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k}:\n{body}"))
    };
    assert_eq!(
        get(r#"mediagate_rtp_packets_lost_total{trunk="pbx"}"#),
        LOST as f64
    );
    assert_eq!(
        get(r#"mediagate_rtp_packets_lost_total{trunk="itsp"}"#),
        0.0
    );
    for t in ["pbx", "itsp"] {
        assert_eq!(
            get(&format!(
                r#"mediagate_rtp_jitter_seconds_count{{trunk="{t}"}}"#
            )),
            1.0
        );
        assert_eq!(
            get(&format!(r#"mediagate_rtp_mos_count{{trunk="{t}"}}"#)),
            1.0
        );
    }
    let pbx_jitter_s = get(r#"mediagate_rtp_jitter_seconds_sum{trunk="pbx"}"#);
    assert!(
        (pbx_jitter_s * 1000.0 - m_in["jitter_ms"].as_f64().unwrap()).abs() < 1e-6,
        "the histogram observed the CDR's jitter"
    );

    uac.assert_ok(Some(&mg));
    uas.stop();
}

/// Real arrival times on a busy two-core test box differ from the generator's schedule by a
/// few milliseconds at most.
const JITTER_TOLERANCE_MS: f64 = 5.0;

/// The jitter of the impaired direction had every packet arrived on time (one every 20 ms):
/// the generator's sequence numbers and timestamps through `media::quality`.
fn ideal_jitter_ms() -> f64 {
    let mut q = RtpQuality::default();
    let late = (TS_JITTER_MS * 8.0) as u32;
    for seq in (0..PACKETS).filter(|s| s % SKIP_EVERY != SKIP_EVERY - 1) {
        let ts = seq as u32 * 160 + if seq % 2 == 1 { late } else { 0 };
        let header = RtpHeader {
            seq: seq as u16,
            timestamp: ts,
            ssrc: 0,
        };
        q.record(header, seq * 20_000_000, 8000);
    }
    Quality::new(q.counts(), 8000)
        .and_then(|q| q.jitter_ms)
        .expect("jitter")
}

/// The impaired direction measures the injected jitter, the clean one next to none.
fn assert_jitter(jittered_ms: f64, clean_ms: f64) {
    let ideal = ideal_jitter_ms();
    assert!(
        ideal > TS_JITTER_MS / 2.0 && (jittered_ms - ideal).abs() < JITTER_TOLERANCE_MS,
        "jitter of the jittered direction: {jittered_ms} ms, {ideal} ms if on time"
    );
    assert!(
        clean_ms < JITTER_TOLERANCE_MS,
        "jitter of the clean direction: {clean_ms} ms"
    );
}
