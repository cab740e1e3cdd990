//! Abuse defences against a running mediagate in the lab: requests from addresses that are no
//! trunk peer (`sip.unknown`), per-source rate limits for SIP and NG, the `control.allow` list
//! of the NG socket and the HTTP endpoint, and slow TCP connections. Every refusal must show in
//! `mediagate_refused_total` with its reason, and the counts must add up with what the sender
//! saw answered.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const STRANGER: &str = GW_STRANGER_IP;

fn refused(mg: &Mediagate, protocol: &str, reason: &str) -> f64 {
    mg.metric(&format!(
        "mediagate_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
    ))
}

/// The lab config with `sip` keys added to `[sip]` and `control` keys to `[control]`.
fn config_plus(sip: &str, control: &str) -> String {
    config(30)
        .replacen("[sip]\n", &format!("[sip]\n{sip}\n"), 1)
        .replacen("[control]\n", &format!("[control]\n{control}\n"), 1)
}

fn sip_to_gw_side() -> SocketAddrV4 {
    SocketAddrV4::new(MG_GW_IP.parse().unwrap(), 5060)
}

/// An INVITE (without SDP) from `sock`, with its own Call-ID and branch.
fn invite(sock: &UdpSocket, n: usize) -> Vec<u8> {
    let from = sock.local_addr().unwrap();
    format!(
        "INVITE sip:+4930123@{MG_GW_IP} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-inv{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:100@{ip}>;tag=s{n}\r\n\
         To: <sip:+4930123@{MG_GW_IP}>\r\n\
         Call-ID: abuse-inv-{n}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:100@{from}>\r\n\
         Content-Length: 0\r\n\r\n",
        ip = from.ip()
    )
    .into_bytes()
}

#[test]
fn strangers_get_403_and_nothing_beyond_their_rate() {
    let lab = Lab::new("abuse-rate");
    lab.add_gw_addr(&format!("{STRANGER}/24"));
    let mg = Mediagate::start(
        &lab,
        &config_plus("rate_per_source = 2\nburst_per_source = 5", ""),
    );
    let stranger = udp_in(&lab.gw(), STRANGER);
    let peer = udp_in(&lab.gw(), GW_IP);
    let to = sip_to_gw_side();
    const SENT: usize = 40;
    let start = Instant::now();
    stranger.send_to(&invite(&stranger, 0), to).unwrap();
    for n in 1..SENT {
        let probe = options_probe(
            stranger.local_addr().unwrap(),
            &to.to_string(),
            &format!("s{n}"),
        );
        stranger.send_to(&probe, to).unwrap();
    }
    // The peer's own bucket is untouched: its probe is answered, after every stranger message.
    assert!(send_then_probe(&peer, to, b"\r\n", "peer").is_empty());
    let elapsed = start.elapsed().as_secs_f64();
    let codes = drain_codes(&stranger);
    assert!(
        codes.iter().all(|c| *c == 403),
        "a stranger gets 403 and nothing else (its INVITE is not routed): {codes:?}"
    );
    let answered = codes.len();
    assert!(
        answered >= 5 && (answered as f64) <= 5.0 + 2.0 * elapsed + 1.0,
        "{answered} of {SENT} answered in {elapsed:.2} s with burst 5 and 2/s"
    );
    assert_eq!(
        refused(&mg, "sip", "rate_limited") as usize,
        SENT - answered,
        "every message over the rate is counted"
    );
    assert_eq!(
        refused(&mg, "sip", "unknown_source_rejected") as usize,
        answered
    );
    assert_idle_status(&mg.status());
}

#[test]
fn with_unknown_drop_strangers_learn_nothing_and_peers_are_still_answered() {
    let lab = Lab::new("abuse-drop");
    lab.add_gw_addr(&format!("{STRANGER}/24"));
    let mg = Mediagate::start(&lab, &config_plus("unknown = \"drop\"", ""));
    let stranger = udp_in(&lab.gw(), STRANGER);
    let peer = udp_in(&lab.gw(), GW_IP);
    let to = sip_to_gw_side();
    let bad_version = |s: &UdpSocket| {
        let mut m = options_probe(s.local_addr().unwrap(), &to.to_string(), "v7");
        let at = m.windows(7).position(|w| w == b"SIP/2.0").unwrap();
        m[at..at + 7].copy_from_slice(b"SIP/7.0");
        m
    };
    stranger.send_to(&invite(&stranger, 1), to).unwrap();
    let probe = options_probe(stranger.local_addr().unwrap(), &to.to_string(), "s-opt");
    stranger.send_to(&probe, to).unwrap();
    stranger.send_to(&bad_version(&stranger), to).unwrap();
    // A peer's unparseable request is still answered (505), and its probe after it.
    assert_eq!(
        send_then_probe(&peer, to, &bad_version(&peer), "peer-v7"),
        vec![505]
    );
    assert_eq!(
        drain_codes(&stranger),
        Vec::<u16>::new(),
        "no answer at all"
    );
    assert_eq!(refused(&mg, "sip", "unknown_source_dropped"), 2.0);
    assert_eq!(refused(&mg, "sip", "malformed_dropped"), 1.0);
    assert_eq!(refused(&mg, "sip", "malformed_answered"), 1.0);
    assert_idle_status(&mg.status());
}

/// An NG `ping` with cookie `n`; the answer is `n d6:result4:ponge`.
fn ng_ping(sock: &UdpSocket, to: SocketAddrV4, n: usize) {
    sock.send_to(format!("c{n} d7:command4:pinge").as_bytes(), to)
        .unwrap();
}

fn ng_pongs(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 512];
    let mut pongs = 0;
    sock.set_nonblocking(true).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        pongs += usize::from(String::from_utf8_lossy(&buf[..n]).contains("pong"));
    }
    sock.set_nonblocking(false).unwrap();
    pongs
}

#[test]
fn ng_and_http_beyond_loopback_serve_only_the_allow_list_and_ng_is_rate_limited() {
    let lab = Lab::new("abuse-ng");
    let control = "allow = [\"10.99.2.0/24\", \"127.0.0.0/8\"]\nng = \"0.0.0.0:2223\"\n\
                   rate_per_source = 1\nburst_per_source = 3";
    let mg = Mediagate::start(
        &lab,
        &config_plus("", control).replace("127.0.0.1:9100", "0.0.0.0:9100"),
    );
    let outsider = udp_in(&lab.gw(), GW_IP);
    let insider = udp_in(&lab.it(), IT_IP);
    let (ng_gw, ng_it) = (
        SocketAddrV4::new(MG_GW_IP.parse().unwrap(), 2223),
        SocketAddrV4::new(MG_IT_IP.parse().unwrap(), 2223),
    );
    ng_ping(&outsider, ng_gw, 0);
    ng_ping(&insider, ng_it, 1);
    let mut buf = [0u8; 512];
    let n = insider
        .recv(&mut buf)
        .expect("an allowed NG client is answered");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("pong"));
    assert_eq!(
        ng_pongs(&outsider),
        0,
        "NG outside control.allow is not answered"
    );
    assert_eq!(refused(&mg, "ng", "not_allowed"), 1.0);

    // Two tokens are left of the burst; then one per second.
    const SENT: usize = 12;
    let start = Instant::now();
    for n in 0..SENT {
        ng_ping(&insider, ng_it, 100 + n);
    }
    // A ping from loopback (its own bucket), answered only after every earlier one was handled.
    let local = udp_in(&lab.mg(), "127.0.0.1");
    ng_ping(
        &local,
        SocketAddrV4::new("127.0.0.1".parse().unwrap(), 2223),
        999,
    );
    let n = local.recv(&mut buf).expect("loopback NG client answered");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("pong"));
    let elapsed = start.elapsed().as_secs_f64();
    let limited = refused(&mg, "ng", "rate_limited") as usize;
    let answered = ng_pongs(&insider);
    assert_eq!(answered + limited, SENT, "every ping answered or counted");
    assert!(
        answered >= 2 && (answered as f64) <= 2.0 + elapsed + 1.0,
        "{answered} of {SENT} answered in {elapsed:.2} s with 2 tokens left and 1/s"
    );

    // HTTP from outside the allow-list: the connection is closed unanswered.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.gw(), "curl", "-s", "-m", "2"])
        .arg(format!("http://{MG_GW_IP}:9100/status"))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "curl from outside control.allow got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(refused(&mg, "http", "not_allowed"), 1.0);
}

#[test]
fn control_endpoints_beyond_loopback_need_an_allow_list() {
    let dir = std::env::temp_dir().join(format!("mg-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to, key) in [
        ("127.0.0.1:9100", "10.99.1.1:9100", "control.http"),
        (
            "http = \"127.0.0.1:9100\"",
            "http = \"127.0.0.1:9100\"\nng = \"0.0.0.0:2223\"",
            "control.ng",
        ),
    ] {
        let path = dir.join("c.toml");
        std::fs::write(&path, config(30).replace(from, to)).unwrap();
        let out = Command::new(mediagate_bin())
            .arg("--check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("c.toml:")
                && err.contains(&format!("{key}: "))
                && err.contains("control.allow"),
            "error names file, line and key: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_tcp_client_is_cut_off_and_others_are_served_meanwhile() {
    let lab = Lab::new("abuse-slow");
    let mg = Mediagate::start(&lab, &config(30));
    let mut slow = tcp_in(
        &lab.it(),
        IT_IP,
        SocketAddrV4::new(MG_IT_IP.parse().unwrap(), 5060),
    );
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let message = options_probe("10.99.2.2:5060".parse().unwrap(), MG_IT_IP, "slow");
    let peer = udp_in(&lab.gw(), GW_IP);
    let mut closed_after = None;
    // One byte a second; the message is far longer than the 10 s mediagate gives it.
    for (i, byte) in message.iter().enumerate().take(60) {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(i);
            break;
        }
        let mut b = [0u8; 64];
        match slow.read(&mut b) {
            Ok(0) => {
                closed_after = Some(i);
                break;
            }
            Ok(_) => panic!("a partial request got an answer"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(i);
                break;
            }
        }
        if i % 5 == 0 {
            let answers = send_then_probe(&peer, sip_to_gw_side(), b"\r\n", &format!("during-{i}"));
            assert!(answers.is_empty());
        }
    }
    let closed_after = closed_after.expect("the slow connection was never closed");
    assert!(
        closed_after < message.len(),
        "closed before the message could complete"
    );
    assert_eq!(refused(&mg, "sip", "idle_closed"), 1.0);
}

#[test]
fn one_source_cannot_hold_more_than_64_tcp_connections() {
    let lab = Lab::new("abuse-tcp");
    lab.add_it_addr(&format!("{IT2_IP}/24"));
    let mg = Mediagate::start(&lab, &config(30));
    let sip_tcp = SocketAddrV4::new(MG_IT_IP.parse().unwrap(), 5060);
    const OPENED: usize = 70;
    let mut conns: Vec<_> = (0..OPENED)
        .map(|_| tcp_in(&lab.it(), IT2_IP, sip_tcp))
        .collect();
    // The ones over the limit are closed at once without a word.
    for (i, c) in conns.iter_mut().enumerate().skip(64) {
        let mut b = [0u8; 64];
        assert!(
            matches!(c.read(&mut b), Ok(0)),
            "connection {i} over the per-source limit is closed"
        );
    }
    // The first ones are served (a stranger's request gets 403 on its connection).
    let opt = options_probe("10.99.2.3:5060".parse().unwrap(), MG_IT_IP, "tcp-first");
    let opt = String::from_utf8(opt)
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    conns[0].write_all(opt.as_bytes()).unwrap();
    let mut b = [0u8; 2048];
    let n = conns[0]
        .read(&mut b)
        .expect("an admitted connection is answered");
    assert_eq!(status_code(&b[..n]), Some(403));
    // Another source is not affected.
    let mut peer = tcp_in(&lab.it(), IT_IP, sip_tcp);
    let opt = opt
        .replace("10.99.2.3", "10.99.2.2")
        .replace("tcp-first", "tcp-peer");
    peer.write_all(opt.as_bytes()).unwrap();
    let n = peer.read(&mut b).expect("the peer is answered");
    assert_eq!(status_code(&b[..n]), Some(200));
    assert_eq!(refused(&mg, "sip", "tcp_refused") as usize, OPENED - 64);
}
