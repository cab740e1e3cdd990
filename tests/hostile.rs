//! Hostile input while calls are up: sipp places calls with RTP through mediagate, and while
//! their media flows the test sends over UDP and TCP truncated, oversized, lying, duplicated,
//! folded, badly started, non-UTF-8 and header-bomb messages, absurd CSeq and Max-Forwards,
//! SDP with impossible ports and addresses, a slowloris TCP connection, and random bytes to the
//! calls' media ports and to the NG port. Every message gets the RFC 3261 answer (or none where
//! none is due), every refusal is counted by reason, and every call completes with its media.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";
const CALLS: usize = 3;
/// Datagrams of random bytes sent to each media port of each call.
const SPRAY: usize = 20;
/// `media.max_packet_bytes` in this test, and a payload over it that still fits the veth MTU
/// unfragmented (so every tier sees it whole).
const MAX_PACKET: usize = 1000;
const OVERSIZE: usize = 1200;

/// A request from `from` with the given parts; `extra` is inserted before Content-Length.
fn request(method: &str, uri: &str, from: &str, tag: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-{tag}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:100@{from}>;tag={tag}\r\n\
         To: <{uri}>\r\n\
         Call-ID: hostile-{tag}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:100@{from}>\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn sdp(conn: &str, port: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 10.99.1.2\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

/// Bytes from a simple xorshift generator: "random", but the same in every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The sent-by of the hand-made requests (answers go to the datagram's source, not here).
const FROM: &str = "10.99.1.2:5999";

/// The UDP cases: (name, bytes, the final answers RFC 3261 calls for).
fn udp_cases() -> Vec<(&'static str, Vec<u8>, &'static [u16])> {
    let from = FROM;
    let uri = format!("sip:{DIALLED}@{MG_GW_IP}");
    let opt = |tag: &str, extra: &str, body: &str| {
        request("OPTIONS", &uri, from, tag, extra, body).into_bytes()
    };
    let invite = |tag: &str, extra: &str, body: &str| {
        request("INVITE", &uri, from, tag, extra, body).into_bytes()
    };
    let full = opt("trunc", "", "");
    let truncated = full[..full.len() / 2].to_vec();
    let lying = String::from_utf8(opt("lie", "", "v=0\r\n"))
        .unwrap()
        .replace("Content-Length: 5", "Content-Length: 500")
        .into_bytes();
    let no_length = String::from_utf8(opt("nolen", "Subject: x\r\n", ""))
        .unwrap()
        .replace("Content-Length: 0\r\n", "")
        .into_bytes();
    let mut not_utf8 = opt("utf8", "X-Junk: \u{1}\r\n", "");
    let at = not_utf8.iter().position(|b| *b == 1).unwrap();
    not_utf8[at..at + 1].copy_from_slice(&[0xff]);
    let bomb_vias = "Via: SIP/2.0/UDP 10.99.1.2;branch=z9hG4bK-bomb\r\n".repeat(1200);
    let bomb = opt("bomb", &bomb_vias, "");
    let mut bad_start = opt("start", "", "");
    bad_start.splice(0..7, b"HELLO there".iter().copied());
    vec![
        ("truncated", truncated, &[400]),
        ("content-length-lies", lying, &[400]),
        ("content-length-missing", no_length, &[200]),
        (
            "content-length-twice",
            opt("cl2", "Content-Length: 7\r\n", ""),
            &[400],
        ),
        (
            "call-id-twice",
            opt("cid2", "Call-ID: other\r\n", ""),
            &[400],
        ),
        (
            "folded",
            opt("fold", "Subject: a\r\n  folded\r\n\tline\r\n", ""),
            &[200],
        ),
        ("bad-start-line", bad_start, &[400]),
        ("not-utf8", not_utf8, &[400]),
        ("via-bomb", bomb, &[400]),
        (
            "cseq-absurd",
            String::from_utf8(opt("cseq", "", ""))
                .unwrap()
                .replace("CSeq: 1 OPTIONS", "CSeq: 99999999999999999999 OPTIONS")
                .into_bytes(),
            &[400],
        ),
        (
            "max-forwards-0",
            String::from_utf8(invite("mf0", "", ""))
                .unwrap()
                .replace("Max-Forwards: 70", "Max-Forwards: 0")
                .into_bytes(),
            &[483],
        ),
        (
            "max-forwards-text",
            String::from_utf8(opt("mfx", "", ""))
                .unwrap()
                .replace("Max-Forwards: 70", "Max-Forwards: many")
                .into_bytes(),
            &[400],
        ),
        (
            "sdp-port-99999",
            invite(
                "port",
                "Content-Type: application/sdp\r\n",
                &sdp("10.99.1.2", "99999"),
            ),
            &[488],
        ),
        (
            "sdp-address-999",
            invite(
                "addr",
                "Content-Type: application/sdp\r\n",
                &sdp("999.1.2.3", "7000"),
            ),
            &[488],
        ),
    ]
}

/// Sends `bytes` on a fresh TCP connection from the ITSP and returns the status code of the
/// answer and whether mediagate closed the connection afterwards.
fn tcp_case(lab: &Lab, bytes: &[u8]) -> (Option<u16>, bool) {
    let mut s = tcp_in(
        &lab.it(),
        IT_IP,
        SocketAddrV4::new(MG_IT_IP.parse().unwrap(), 5060),
    );
    // A write may fail once mediagate has answered and closed; the answer is still there.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10 {
        match s.read(&mut buf) {
            Ok(0) => return (status_code(&got), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => return (status_code(&got), true),
        }
    }
    (status_code(&got), false)
}

/// A TCP client that sends a request one byte a second; returns how many bytes it sent before
/// mediagate closed the connection (`None`: still open after 30 s).
fn slowloris(lab: &Lab) -> JoinHandle<Option<usize>> {
    let mut s: TcpStream = tcp_in(
        &lab.it(),
        IT_IP,
        SocketAddrV4::new(MG_IT_IP.parse().unwrap(), 5060),
    );
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let message = options_probe("10.99.2.2:5060".parse().unwrap(), MG_IT_IP, "slowloris");
        for (i, b) in message.iter().enumerate().take(30) {
            if s.write_all(&[*b]).is_err() {
                return Some(i);
            }
            match s.read(&mut [0u8; 64]) {
                Ok(0) => return Some(i + 1),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => return Some(i + 1),
            }
        }
        None
    })
}

/// The calls' media sockets on the PBX side (RTP and RTCP), each with whether it is latched.
fn gw_side_media(st: &serde_json::Value) -> Vec<(SocketAddrV4, bool)> {
    let mut out = Vec::new();
    for call in st["calls"].as_array().into_iter().flatten() {
        for leg in call["legs"].as_array().into_iter().flatten() {
            for s in leg["streams"].as_array().into_iter().flatten() {
                for s in [s, &s["rtcp"]] {
                    let local = s["local"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddrV4>().ok());
                    if let Some(a) = local.filter(|a| a.ip().to_string() == MG_GW_IP) {
                        out.push((a, s["latched"].as_bool() == Some(true)));
                    }
                }
            }
        }
    }
    out
}

fn metric_sum(mg: &Mediagate, family: &str, labels: &[&str]) -> f64 {
    let (_, text) = mg.http_get("/metrics", &[]).expect("GET /metrics");
    let samples = mediagate::metrics::prometheus::parse_exposition(&text).unwrap();
    samples
        .iter()
        .filter(|(k, _)| {
            k.split('{').next() == Some(family) && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn hostile_input_during_calls_is_answered_or_dropped_and_counted_and_the_calls_survive() {
    hostile("hostile", Dataplane::Socket);
}

#[test]
fn afxdp_tier_hostile_input_during_calls() {
    hostile("hostile-afxdp", Dataplane::Afxdp);
}

#[test]
fn kernel_tier_hostile_input_during_calls() {
    hostile("hostile-kernel", Dataplane::Kernel);
}

fn hostile(test: &str, dataplane: Dataplane) {
    let lab = Lab::new(test);
    lab.add_gw_addr(&format!("{GW_STRANGER_IP}/24"));
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_echo", IT_IP)
            .args(&["-rtp_echo"])
            .timeout(60),
    );
    uas.settle();
    let config = config_with(30, dataplane)
        .replacen("[control]\n", "[control]\nng = \"127.0.0.1:2223\"\n", 1)
        .replacen(
            "[media]\n",
            &format!("[media]\nmax_packet_bytes = {MAX_PACKET}\n"),
            1,
        );
    let mg = Mediagate::start(&lab, &config);
    let remote = format!("{MG_GW_IP}:5060");
    let calls = CALLS.to_string();
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-l", &calls, "-m", &calls, "-r", &calls])
            .timeout(45),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| {
        media_flowing(st, CALLS, dataplane)
    });
    assert!(flowing, "calls with media before the attack: {st:#}");
    assert_rtp_call_status(&st, CALLS, dataplane);
    let media = gw_side_media(&st);
    assert_eq!(
        media.len(),
        CALLS * 2,
        "RTP and RTCP of each call's PBX leg: {st:#}"
    );

    let slow = slowloris(&lab);

    // SIP over UDP from the PBX peer (a trusted address sending garbage), a socket per case so
    // that retransmitted answers to one never count for the next.
    let to = SocketAddrV4::new(MG_GW_IP.parse().unwrap(), 5060);
    let mut failures = Vec::new();
    for (name, bytes, expect) in udp_cases() {
        let peer = udp_in(&lab.gw(), GW_IP);
        let finals: Vec<u16> = send_then_probe(&peer, to, &bytes, name)
            .into_iter()
            .filter(|c| *c >= 200)
            .collect();
        if finals.len() != 1 || !expect.contains(&finals[0]) {
            failures.push(format!("udp {name}: expected {expect:?}, got {finals:?}"));
        }
    }
    // A stranger's INVITE during the calls.
    let stranger = udp_in(&lab.gw(), GW_STRANGER_IP);
    let s_invite = request(
        "INVITE",
        &format!("sip:{DIALLED}@{MG_GW_IP}"),
        FROM,
        "str",
        "",
        "",
    );
    stranger.send_to(s_invite.as_bytes(), to).unwrap();
    let after = udp_in(&lab.gw(), GW_IP);
    assert!(send_then_probe(&after, to, b"\r\n", "after-stranger").is_empty());
    let answers = drain_codes(&stranger);
    if answers != [403] {
        failures.push(format!(
            "udp stranger INVITE: expected [403], got {answers:?}"
        ));
    }

    // SIP over TCP from the ITSP peer: framing errors are answered, then the connection closed.
    let tcp_uri = format!("sip:{DIALLED}@{MG_IT_IP}");
    let tcp_opt = |tag: &str, extra: &str, body: &str| {
        request("OPTIONS", &tcp_uri, "10.99.2.2:5060", tag, extra, body)
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
    };
    // Only the head of an oversized message: mediagate refuses it from its Content-Length, and
    // closing with unread data would reset the connection before the answer is read.
    let oversized = tcp_opt("big", "", "").replace("Content-Length: 0", "Content-Length: 70000");
    let tcp_cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        (
            "tcp well-formed",
            tcp_opt("ok", "", "").into_bytes(),
            200,
            false,
        ),
        (
            "tcp content-length-missing",
            tcp_opt("nolen", "", "")
                .replace("Content-Length: 0\r\n", "")
                .into_bytes(),
            400,
            true,
        ),
        ("tcp oversized", oversized.into_bytes(), 513, true),
        (
            "tcp via-bomb",
            tcp_opt(
                "bomb",
                &"Via: SIP/2.0/TCP 10.99.2.2;branch=z9hG4bK-b\r\n".repeat(1200),
                "",
            )
            .into_bytes(),
            400,
            true,
        ),
        (
            "tcp bad-start-line",
            tcp_opt("start", "", "")
                .replacen("OPTIONS sip:", "OPTIONS  sip:", 1)
                .into_bytes(),
            400,
            true,
        ),
    ];
    for (name, bytes, code, closes) in &tcp_cases {
        let (got, closed) = tcp_case(&lab, bytes);
        if got != Some(*code) || closed != *closes {
            failures.push(format!(
                "{name}: expected {code} and closed={closes}, got {got:?} and closed={closed}"
            ));
        }
    }

    // Random bytes to every PBX-side media port of the calls from a stranger, and to the
    // latched ones from the PBX's own address on another port (an address in the SDP may latch
    // a stream that has not latched yet: that is how a NATed phone is found), and one oversize
    // datagram.
    let stranger_spray = udp_in(&lab.gw(), GW_STRANGER_IP);
    let peer_spray = udp_in(&lab.gw(), GW_IP);
    let mut sprayed = 0u64;
    for (i, (dst, latched)) in media.iter().enumerate() {
        let senders = if *latched {
            vec![&stranger_spray, &peer_spray]
        } else {
            vec![&stranger_spray]
        };
        for (j, s) in senders.into_iter().enumerate() {
            for k in 0..SPRAY {
                let len = 12 + (k * 37) % 300;
                s.send_to(&noise((i * 1000 + j * 100 + k) as u64, len), dst)
                    .unwrap();
                sprayed += 1;
            }
        }
    }
    stranger_spray
        .send_to(&noise(7, OVERSIZE), media[0].0)
        .unwrap();
    let ng_local = udp_in(&lab.mg(), "127.0.0.1");
    let ng = SocketAddrV4::new("127.0.0.1".parse().unwrap(), 2223);
    for k in 0..50 {
        ng_local
            .send_to(&noise(900 + k, 1 + (k as usize * 53) % 900), ng)
            .unwrap();
    }
    ng_local.send_to(b"cookie1 d7:command4:pinge", ng).unwrap();
    let mut buf = [0u8; 4096];
    let mut pong = false;
    for _ in 0..60 {
        match ng_local.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).starts_with("cookie1 ") => {
                pong = String::from_utf8_lossy(&buf[..n]).contains("pong");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("NG ping after random bytes not answered: {e}"),
        }
    }
    assert!(pong, "NG answers a ping after random bytes");

    // Every call completes (sipp checks its scenario) and carried its media.
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let closed_after = slow.join().expect("slowloris thread");
    assert!(
        closed_after.is_some(),
        "the slowloris connection was still open after 30 s"
    );
    mg.assert_idle(Duration::from_secs(5));
    assert!(
        failures.is_empty(),
        "hostile input not handled:\n{}",
        failures.join("\n")
    );

    let relayed = metric_sum(
        &mg,
        "mediagate_media_packets_total",
        &["direction=\"sent\""],
    );
    assert!(
        relayed >= (CALLS * 2 * 100) as f64,
        "media relayed for {CALLS} calls: {relayed} packets"
    );
    let dropped = metric_sum(&mg, "mediagate_media_dropped_packets_total", &[]);
    assert!(
        dropped >= (sprayed + 1) as f64,
        "every sprayed datagram dropped: {dropped} of {}",
        sprayed + 1
    );
    assert_eq!(
        metric_sum(
            &mg,
            "mediagate_media_dropped_packets_total",
            &[
                "reason=\"oversize\"",
                &format!("tier=\"{}\"", dataplane.as_str())
            ]
        ),
        1.0
    );
    let refused = |reason: &str| {
        metric_sum(
            &mg,
            "mediagate_refused_total",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    // UDP: truncated, lying, two Content-Lengths, bad start, not UTF-8, bomb; TCP: missing
    // length, oversized, bomb, bad start.
    assert_eq!(refused("malformed_answered"), 10.0);
    // Two Call-IDs, absurd CSeq, Max-Forwards text.
    assert_eq!(refused("invalid_answered"), 3.0);
    assert_eq!(refused("unknown_source_rejected"), 1.0);
    assert_eq!(refused("idle_closed"), 1.0);
}
