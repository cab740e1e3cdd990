//! `GET /metrics` of the real binary in the lab (tests/common/mod.rs): a sipp call with RTP,
//! scraped during and after the call; the counters must move by the right amounts and the
//! exposition must be valid (our strict parser for both formats, and `promtool check metrics`
//! from Debian's `prometheus` package, installed by `scripts/install-deps`).
//!
//! These tests need root; they fail (never skip) without it.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mediagate::metrics::prometheus::parse_exposition;

const DIALLED: &str = "+4930123";

type Samples = BTreeMap<String, f64>;

/// Scrapes both formats, checks each strictly and with promtool, and returns the samples.
fn scrape(mg: &Mediagate) -> Samples {
    let (ct, classic) = mg.http_get("/metrics", &[]).expect("GET /metrics");
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    let c = parse_exposition(&classic).unwrap_or_else(|e| panic!("{e}\n{classic}"));
    promtool_check(&classic);
    let (ct, om) = mg
        .http_get(
            "/metrics",
            &["Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"],
        )
        .expect("GET /metrics (OpenMetrics)");
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "content type {ct}"
    );
    let o = parse_exposition(&om).unwrap_or_else(|e| panic!("{e}\n{om}"));
    // Same series in both (values may have moved between the two scrapes).
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        o.keys().collect::<Vec<_>>(),
        "both formats carry the same series"
    );
    // Every family has HELP and a conventional name (the parser checked HELP per sample's
    // family; here the names).
    for line in om.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(name.starts_with("mediagate_"), "{line}");
        assert!(om.contains(&format!("# HELP {name} ")), "{name}: no HELP");
    }
    o
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool missing: run scripts/install-deps (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or_else(|| {
        panic!(
            "no series {key}; have:\n{}",
            s.keys().cloned().collect::<Vec<_>>().join("\n")
        )
    })
}

/// Sum of the series of `name` whose labels include every `want` pair.
fn sum(s: &Samples, name: &str, want: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && want.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

fn metrics_call(test: &str, dataplane: Dataplane) {
    let lab = Lab::new(test);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_echo", IT_IP)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config_with(30, dataplane));

    let before = scrape(&mg);
    assert_eq!(
        get(&before, "mediagate_calls_active{frontend=\"sip\"}"),
        0.0
    );
    assert_eq!(
        get(&before, "mediagate_calls_started_total{trunk=\"pbx\"}"),
        0.0
    );
    assert_eq!(
        get(
            &before,
            &format!(
                "mediagate_dataplane_info{{tier=\"{}\"}}",
                dataplane.as_str()
            )
        ),
        1.0
    );
    let total_ports = get(&before, "mediagate_media_port_pairs{state=\"total\"}");
    assert_eq!(total_ports, 500.0, "ports 30000-30999 are 500 pairs");

    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );

    // Mid-call.
    let (flowing, st) =
        mg.wait_status(Duration::from_secs(8), |st| media_flowing(st, 1, dataplane));
    assert!(flowing, "media did not flow: {st:#}");
    let during = scrape(&mg);
    assert_eq!(
        get(&during, "mediagate_calls_active{frontend=\"sip\"}"),
        1.0
    );
    assert_eq!(
        get(&during, "mediagate_trunk_active_calls{trunk=\"pbx\"}"),
        1.0
    );
    assert_eq!(
        get(&during, "mediagate_trunk_active_calls{trunk=\"itsp\"}"),
        1.0
    );
    assert_eq!(
        get(&during, "mediagate_media_streams"),
        4.0,
        "RTP and RTCP of each leg"
    );
    assert_eq!(
        get(&during, "mediagate_media_port_pairs{state=\"free\"}"),
        total_ports - 2.0,
        "a port pair per leg in use"
    );
    assert_eq!(get(&during, "mediagate_sip_dialogs"), 2.0);

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    let after = scrape(&mg);
    // Calls.
    assert_eq!(get(&after, "mediagate_calls_active{frontend=\"sip\"}"), 0.0);
    assert_eq!(
        get(&after, "mediagate_calls_started_total{trunk=\"pbx\"}"),
        1.0
    );
    assert_eq!(
        get(&after, "mediagate_calls_started_total{trunk=\"itsp\"}"),
        0.0
    );
    assert_eq!(
        get(
            &after,
            "mediagate_calls_ended_total{code=\"200\",trunk=\"pbx\"}"
        ),
        1.0
    );
    assert_eq!(sum(&after, "mediagate_calls_ended_total", &[]), 1.0);
    // RTP quality of both legs of this clean call (sipp's pcap one way, echoed back): one
    // observation per leg, nothing lost.
    for trunk in ["pbx", "itsp"] {
        assert_eq!(
            get(
                &after,
                &format!("mediagate_rtp_packets_lost_total{{trunk=\"{trunk}\"}}")
            ),
            0.0
        );
        assert_eq!(
            get(
                &after,
                &format!("mediagate_rtp_mos_count{{trunk=\"{trunk}\"}}")
            ),
            1.0
        );
    }
    assert_eq!(
        get(&after, "mediagate_trunk_active_calls{trunk=\"pbx\"}"),
        0.0
    );

    // SIP: what the caller sent is what mediagate received from it, and the callee the same,
    // method by method (retransmissions count on both sides alike).
    let sent_by = |s: &Sipp, method: &str| {
        s.messages()
            .iter()
            .filter(|m| !m.received && m.is_request(method))
            .count() as f64
    };
    for method in ["INVITE", "ACK", "BYE"] {
        let got = get(
            &after,
            &format!(
                "mediagate_sip_requests_total{{direction=\"received\",method=\"{method}\",transport=\"udp\"}}"
            ),
        );
        assert_eq!(
            got,
            sent_by(&uac, method) + sent_by(&uas, method),
            "{method} received"
        );
        let sent = get(
            &after,
            &format!(
                "mediagate_sip_requests_total{{direction=\"sent\",method=\"{method}\",transport=\"udp\"}}"
            ),
        );
        assert!(sent >= 1.0, "{method} sent: {sent}");
    }
    let ok_invite = |dir: &str| {
        get(
            &after,
            &format!(
                "mediagate_sip_responses_total{{code=\"200\",direction=\"{dir}\",method=\"INVITE\",transport=\"udp\"}}"
            ),
        )
    };
    assert!(ok_invite("received") >= 1.0 && ok_invite("sent") >= 1.0);
    assert!(
        get(
            &after,
            "mediagate_sip_responses_total{code=\"200\",direction=\"sent\",method=\"BYE\",transport=\"udp\"}"
        ) >= 1.0
    );
    assert_eq!(get(&after, "mediagate_sip_dialogs"), 0.0);
    assert!(after
        .contains_key("mediagate_sip_retransmissions_total{direction=\"sent\",kind=\"request\"}"));

    // Media: the pcap (a few hundred packets) relayed both ways, counted in the call's tier.
    let tier = format!("tier=\"{}\"", dataplane.as_str());
    let rx = sum(
        &after,
        "mediagate_media_packets_total",
        &["direction=\"received\"", &tier],
    );
    let tx = sum(
        &after,
        "mediagate_media_packets_total",
        &["direction=\"sent\"", &tier],
    );
    assert!(
        rx >= 200.0 && tx >= 200.0,
        "{tier}: received {rx}, sent {tx}"
    );
    let bytes = sum(
        &after,
        "mediagate_media_bytes_total",
        &["direction=\"received\""],
    );
    let all_rx = sum(
        &after,
        "mediagate_media_packets_total",
        &["direction=\"received\""],
    );
    assert!(bytes >= 12.0 * all_rx, "bytes {bytes} for {all_rx} packets");
    assert_eq!(get(&after, "mediagate_media_streams"), 0.0);
    assert_eq!(
        get(&after, "mediagate_media_port_pairs{state=\"free\"}"),
        total_ports
    );
    // Totals of ended calls stay (counters never go down).
    assert!(
        sum(&after, "mediagate_media_packets_total", &[])
            >= sum(&during, "mediagate_media_packets_total", &[])
    );
    match dataplane {
        Dataplane::Kernel => {
            assert!(get(&after, "mediagate_xdp_packets_total{outcome=\"forwarded\"}") >= 200.0);
        }
        Dataplane::Afxdp => {
            assert!(get(&after, "mediagate_xdp_packets_total{outcome=\"to_afxdp\"}") >= 200.0);
            let worker_rx = sum(&after, "mediagate_afxdp_worker_received_packets_total", &[]);
            assert!(worker_rx >= 200.0, "workers received {worker_rx}");
            assert!(sum(&after, "mediagate_afxdp_worker_iterations_total", &[]) > 0.0);
            let cpu = sum(
                &after,
                "mediagate_dataplane_thread_cpu_seconds_total",
                &["tier=\"afxdp\""],
            );
            assert!(cpu > 0.0, "AF_XDP worker CPU time {cpu}");
            // Latency samples are merged once a second: wait for the last ones.
            std::thread::sleep(Duration::from_millis(1200));
            let l = scrape(&mg);
            let count = get(&l, "mediagate_relay_latency_seconds_count");
            assert!(count >= 100.0, "latency samples {count}");
            assert_eq!(
                get(&l, "mediagate_relay_latency_seconds_bucket{le=\"+Inf\"}"),
                count
            );
            assert!(get(&l, "mediagate_relay_latency_seconds_sum") > 0.0);
        }
        Dataplane::Socket => {
            let cpu = get(
                &after,
                "mediagate_dataplane_thread_cpu_seconds_total{thread=\"media-0\",tier=\"socket\"}",
            );
            assert!(cpu > 0.0, "socket relay thread CPU time {cpu}");
        }
    }

    // Trunk peers: state gauges exist for both trunks' peers.
    assert_eq!(
        sum(&after, "mediagate_trunk_peer_state", &["trunk=\"itsp\""]),
        1.0
    );
    drop(uac);
    let st = {
        let mut mg = mg;
        mg.stop()
    };
    assert!(
        st.is_some_and(|s| s.success()),
        "mediagate did not exit cleanly: {st:?}"
    );
    lab.assert_mg_clean();
}

#[test]
fn metrics_follow_a_call_with_rtp_socket_tier() {
    metrics_call("m_socket", Dataplane::Socket);
}

#[test]
fn metrics_follow_a_call_with_rtp_afxdp_tier() {
    metrics_call("m_afxdp", Dataplane::Afxdp);
}

#[test]
fn metrics_follow_a_call_with_rtp_kernel_tier() {
    metrics_call("m_kernel", Dataplane::Kernel);
}
