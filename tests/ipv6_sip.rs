//! SIP over IPv6 and calls whose two legs are of different families, between real sipp peers
//! in the three-namespace lab with IPv6 added beside its IPv4 (`add_lab_ipv6`, no DAD):
//!
//!   gw 10.99.1.2 / fd99:1::2 ── 10.99.1.1 / fd99:1::1 [mediagate] fd99:2::1 ── fd99:2::2 it
//!
//! mediagate listens on `udp:[fd99:2::1]:5060` and `tcp:[fd99:2::1]:5060` toward the ITSP and
//! on IPv4 or IPv6 toward the PBX. Each side must see mediagate's address of its own family in
//! Via, Contact and SDP, and RTP must flow both ways, relayed across families when the legs
//! differ: by the XDP program on the kernel tier (which translates the IP header), by the
//! socket tier on the others. Needs root, sipp, and for the
//! kernel tier a build with clang; fails (never skips) without them. Logs of a failed run stay
//! under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// The PBX leg's family.
#[derive(Clone, Copy, PartialEq)]
enum PbxLeg {
    V4,
    V6,
}

/// The lab config with the ITSP trunk on IPv6 (`transport` `udp` or `tcp`) and the PBX trunk
/// on `pbx`'s family, on the data plane `dataplane` (`socket`, `kernel`, `auto`).
fn v6_config(pbx: PbxLeg, transport: &str, dataplane: &str) -> String {
    let lab = config(30);
    let mut text = lab
        .replace(
            "listen = [\"udp:10.99.1.1:5060\", \"udp:10.99.2.1:5060\", \"tcp:10.99.2.1:5060\"]",
            &format!(
                "listen = [\"udp:10.99.1.1:5060\", \"udp:[{MG_GW6}]:5060\", \"udp:[{MG_IT6}]:5060\", \"tcp:[{MG_IT6}]:5060\"]"
            ),
        )
        .replace(
            "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
            &format!("peers = [\"{transport}:[{IT6}]:5060\"]\nlocal = \"{transport}:[{MG_IT6}]:5060\""),
        )
        .replace("dataplane = \"socket\"", &format!("dataplane = \"{dataplane}\""));
    if pbx == PbxLeg::V6 {
        text = text.replace(
            "peers = [\"udp:10.99.1.2:5060\"]\nlocal = \"udp:10.99.1.1:5060\"",
            &format!("peers = [\"udp:[{GW6}]:5060\"]\nlocal = \"udp:[{MG_GW6}]:5060\""),
        );
    }
    assert!(
        text.contains(&format!("local = \"{transport}:[{MG_IT6}]:5060\""))
            && text.contains(&format!("dataplane = \"{dataplane}\"")),
        "lab.toml changed: {text}"
    );
    text
}

/// The SDP line of `m` starting with `prefix` (`c=`, `o=`), trimmed.
fn sdp_line(m: &SipMsg, prefix: &str) -> String {
    m.body()
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in:\n{}", m.text))
        .to_string()
}

/// What a peer must see of mediagate on its leg: the top Via (of a request) and the Contact
/// naming `host` (`IP` or `[IPv6]`) with `transport`, and the SDP's `o=`/`c=` naming `ip` in
/// family `fam`.
fn assert_names_mediagate(m: &SipMsg, transport: &str, host: &str, fam: &str, ip: &str) {
    let via = m.headers("Via").first().cloned().unwrap_or_default();
    assert!(
        m.start_line().starts_with("SIP/2.0 ")
            || via.starts_with(&format!("SIP/2.0/{transport} {host}:5060;")),
        "Via must be mediagate's {host}:\n{}",
        m.text
    );
    let contact = m.header("Contact").unwrap_or_default();
    assert!(
        contact.starts_with(&format!("<sip:mediagate@{host}:5060")),
        "Contact must be mediagate's {host}:\n{}",
        m.text
    );
    assert_eq!(sdp_line(m, "c="), format!("c=IN {fam} {ip}"), "{}", m.text);
    assert!(
        sdp_line(m, "o=").ends_with(&format!(" IN {fam} {ip}")),
        "o= must name {ip}:\n{}",
        m.text
    );
}

/// The message of `s` carrying mediagate's SDP: the INVITE a callee received, or the 200 to
/// the INVITE of a caller.
fn with_sdp(s: &Sipp, callee: bool) -> SipMsg {
    s.received()
        .into_iter()
        .find(|m| {
            if callee {
                m.is_request("INVITE")
            } else {
                m.status_code() == Some(200)
                    && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
            }
        })
        .unwrap_or_else(|| panic!("'{}' got no SDP from mediagate\n{}", s.name, s.describe()))
}

/// Every stream of the one call up: on `tier`, bound to an address of its leg's family, and
/// (RTP) latched with packets received and sent.
fn assert_streams(st: &Value, pbx: PbxLeg, tier: &str) {
    let calls = st["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{st:#}");
    for leg in calls[0]["legs"].as_array().expect("legs") {
        let v6 = leg["trunk"] == "itsp" || pbx == PbxLeg::V6;
        let streams = leg["streams"].as_array().expect("streams");
        for s in streams {
            assert_eq!(s["tier"].as_str(), Some(tier), "stream tier: {leg:#}");
            let local: SocketAddr = s["local"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("stream local: {leg:#}"));
            assert_eq!(local.is_ipv6(), v6, "stream family: {leg:#}");
            assert!(MEDIA_PORTS.contains(&local.port()), "{leg:#}");
        }
        let rtp = &streams[0];
        assert!(
            rtp["latched"].as_bool() == Some(true)
                && rtp["rx_packets"].as_u64().unwrap_or(0) > 50
                && rtp["tx_packets"].as_u64().unwrap_or(0) > 50,
            "RTP of this leg not flowing both ways: {leg:#}"
        );
    }
}

/// A call placed `from` one side between the PBX (IPv4 or IPv6 leg) and the ITSP over IPv6
/// (`udp` or `tcp`), RTP echoed back by the callee, on data plane `dataplane`.
fn call(test: &str, from: Origin, pbx: PbxLeg, transport: &str, dataplane: &str) {
    let lab = Lab::new(test);
    add_lab_ipv6(&lab);
    let (pbx_ip, mg_pbx) = match pbx {
        PbxLeg::V4 => (GW_IP, MG_GW_IP.to_string()),
        PbxLeg::V6 => (GW6, format!("[{MG_GW6}]")),
    };
    let itsp_transport: &[&str] = if transport == "tcp" {
        &["-t", "t1"]
    } else {
        &[]
    };
    let pbx_sipp = |role| SippOpts::new(lab.gw(), role, pbx_ip);
    let itsp_sipp = |role| SippOpts::new(lab.it(), role, IT6).args(itsp_transport);
    let (callee_opts, caller_opts, remote) = match from {
        Origin::Gw => (
            itsp_sipp("uas_echo"),
            pbx_sipp("uac_rtp"),
            format!("{mg_pbx}:5060"),
        ),
        Origin::Itsp => (
            pbx_sipp("uas_echo"),
            itsp_sipp("uac_rtp"),
            format!("[{MG_IT6}]:5060"),
        ),
    };
    let mut uas = Sipp::spawn(&lab, "callee", callee_opts.args(&["-rtp_echo"]).timeout(45));
    uas.settle();
    let mg = Mediagate::start(&lab, &v6_config(pbx, transport, dataplane));
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        caller_opts
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(8), |st| {
        st["calls"][0]["legs"].as_array().is_some_and(|legs| {
            legs.len() == 2
                && legs
                    .iter()
                    .all(|l| l["streams"][0]["tx_packets"].as_u64().unwrap_or(0) > 50)
        })
    });
    assert!(flowing, "RTP not relayed both ways: {st:#}");
    // `auto` picks the kernel tier here; the AF_XDP workers leave IPv6 to the socket tier.
    let tier = match dataplane {
        "kernel" | "auto" => "kernel",
        _ => "socket",
    };
    assert_streams(&st, pbx, tier);
    if tier == "kernel" {
        // Relayed by the program itself (translated), not passed up to the socket tier.
        let counters = &st["dataplane"]["counters"];
        assert!(
            counters["forwarded"].as_u64().unwrap_or(0) > 100,
            "the XDP program forwarded nothing: {counters:#}"
        );
    }
    if dataplane != "auto" {
        assert_eq!(st["dataplane"]["tier"].as_str(), Some(dataplane), "{st:#}");
    }
    uac.assert_ok(Some(&mg));
    let stopped = uas.stop();
    assert!(
        stopped.success(),
        "callee sipp failed: {stopped}\n{}",
        uas.describe()
    );
    mg.assert_idle(Duration::from_secs(5));
    assert!(
        uas.received().iter().any(|m| m.is_request("BYE")),
        "the caller's BYE did not reach the callee\n{}",
        uas.describe()
    );

    let (itsp, pbx_side) = match from {
        Origin::Gw => ((&uas, true), (&uac, false)),
        Origin::Itsp => ((&uac, false), (&uas, true)),
    };
    assert_names_mediagate(
        &with_sdp(itsp.0, itsp.1),
        &transport.to_uppercase(),
        &format!("[{MG_IT6}]"),
        "IP6",
        MG_IT6,
    );
    let pbx_msg = with_sdp(pbx_side.0, pbx_side.1);
    match pbx {
        PbxLeg::V4 => assert_names_mediagate(&pbx_msg, "UDP", MG_GW_IP, "IP4", MG_GW_IP),
        PbxLeg::V6 => {
            assert_names_mediagate(&pbx_msg, "UDP", &format!("[{MG_GW6}]"), "IP6", MG_GW6)
        }
    }
}

#[test]
fn ipv4_pbx_to_ipv6_itsp_kernel_tier_relays_across_families() {
    call("v4_to_v6_kernel", Origin::Gw, PbxLeg::V4, "udp", "kernel");
}

#[test]
fn ipv4_pbx_to_ipv6_itsp_auto_tier_relays_across_families() {
    call("v4_to_v6_auto", Origin::Gw, PbxLeg::V4, "udp", "auto");
}

#[test]
fn ipv4_pbx_to_ipv6_itsp_afxdp_tier_relays_across_families() {
    call("v4_to_v6_afxdp", Origin::Gw, PbxLeg::V4, "udp", "afxdp");
}

#[test]
fn ipv6_itsp_to_ipv4_pbx_kernel_tier_relays_across_families() {
    call("v6_to_v4_kernel", Origin::Itsp, PbxLeg::V4, "udp", "kernel");
}

#[test]
fn ipv6_itsp_over_tcp_to_ipv6_pbx() {
    call("v6_tcp_to_v6", Origin::Itsp, PbxLeg::V6, "tcp", "socket");
}

#[test]
fn ipv6_only_call_with_the_itsp_over_tcp() {
    call("v6_only_tcp", Origin::Gw, PbxLeg::V6, "tcp", "socket");
}

/// A request over IPv6 whose Via names another host and asks for `rport` is answered with
/// `received=` (the IPv6 source, unbracketed) and `rport=` (its port) in that Via.
#[test]
fn ipv6_request_gets_received_and_rport() {
    let lab = Lab::new("v6_received");
    add_lab_ipv6(&lab);
    let mg = Mediagate::start(&lab, &v6_config(PbxLeg::V4, "udp", "socket"));
    let sock = udp_in(&lab.it(), &format!("[{IT6}]"));
    let port = sock.local_addr().expect("local address").port();
    let claimed: SocketAddr = "[fd99:2::99]:5062".parse().unwrap();
    let probe = String::from_utf8(options_probe(claimed, &format!("[{MG_IT6}]"), "v6-1"))
        .unwrap()
        .replacen("\r\nMax-Forwards", ";rport\r\nMax-Forwards", 1);
    let to: SocketAddr = format!("[{MG_IT6}]:5060").parse().unwrap();
    let mut buf = [0u8; 4096];
    let mut answer = None;
    for _ in 0..5 {
        sock.send_to(probe.as_bytes(), to).expect("send OPTIONS");
        if let Ok(n) = sock.recv(&mut buf) {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    let answer = answer.unwrap_or_else(|| panic!("no answer to OPTIONS\n{}", mg.log_tail(20)));
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    let via = answer
        .lines()
        .find(|l| l.starts_with("Via:"))
        .unwrap_or_default();
    assert_eq!(
        via,
        format!(
            "Via: SIP/2.0/UDP [fd99:2::99]:5062;branch=z9hG4bK-v6-1;received={IT6};rport={port}"
        ),
        "{answer}"
    );
}
