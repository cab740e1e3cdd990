//! An IPv6 call over rtpengine's NG protocol whose RTP the in-kernel XDP tier relays, both
//! directions, with real packets, in the three-namespace lab (tests/common/mod.rs, scripts/lab)
//! with IPv6 added beside its IPv4:
//!
//!   gw fd99:1::2 ──veth── fd99:1::1 [mediagate, mg ns] fd99:2::1 ──veth── fd99:2::2 it
//!
//! mediagate is a pure NG relay with dual-stack interfaces `gw` and `it` and
//! `media.dataplane = "kernel"`. The mg namespace has permanent neighbour entries for both
//! peers, so `bpf_fib_lookup` resolves every next hop and the program carries every packet
//! (without them, the first packets toward a not yet resolved peer are passed to the socket
//! tier and counted as `pass_no_neighbour`). Needs root and a build with clang; fails (never
//! skips) without them. Logs of a failed run stay under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread::sleep;
use std::time::{Duration, Instant};

use mediagate::control::bencode::{dict, Value as Bencode};
use serde_json::Value;

use common::*;

const GW_PORT: u16 = 6000;
const IT_PORT: u16 = 7000;
/// Packets sent in each direction.
const PACKETS: u16 = 200;
/// RTP-sized datagrams: a 12-byte RTP header and 160 bytes of PCMA.
const PACKET_LEN: usize = 172;

fn config() -> String {
    format!(
        r#"[sip]
listen = ["udp:127.0.0.1:5070"]
max_calls = 10

[media]
ports = "{first}-{last}"
dataplane = "kernel"
timeout_s = 30

[[media.interface]]
name = "gw"
address = "10.99.1.1"

[[media.interface]]
name = "gw"
address = "{MG_GW6}"

[[media.interface]]
name = "it"
address = "10.99.2.1"

[[media.interface]]
name = "it"
address = "{MG_IT6}"

[control]
ng = "{NG_ADDR}"
http = "127.0.0.1:9100"
delete_delay_s = 0
"#,
        first = MEDIA_PORTS.start(),
        last = MEDIA_PORTS.end(),
    )
}

// ---------------------------------------------------------------------------
// Namespaces and IPv6 set-up
// ---------------------------------------------------------------------------

/// `Udp6*` counters of a namespace's /proc/net/snmp6.
fn udp6_counters(lab: &Lab, ns: &str) -> HashMap<String, u64> {
    lab.exec(ns, &["cat", "/proc/net/snmp6"])
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .filter(|(k, _)| k.starts_with("Udp6"))
        .collect()
}

fn sysctl(lab: &Lab, ns: &str, key: &str) -> String {
    lab.exec(ns, &["sysctl", "-n", key]).trim().to_string()
}

// ---------------------------------------------------------------------------
// NG
// ---------------------------------------------------------------------------

/// Asserts that every connection line of `sdp` is `IN IP6 ip` and returns the audio port.
fn anchored_port(sdp: &str, ip: &str, what: &str) -> u16 {
    let conns: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("c="))
        .collect();
    assert!(!conns.is_empty(), "{what} SDP has no c= line:\n{sdp}");
    for c in &conns {
        assert_eq!(*c, format!("IN IP6 {ip}"), "{what} SDP c= line:\n{sdp}");
    }
    let port: u16 = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what} SDP has no m=audio port:\n{sdp}"));
    assert!(
        MEDIA_PORTS.contains(&port),
        "{what} SDP port {port} outside the media range:\n{sdp}"
    );
    port
}

fn sdp(ip: &str, port: u16, session: u32) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP6 {ip}\r\ns=-\r\nc=IN IP6 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

// ---------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------

/// An RTP-like datagram: version 2, PCMA, sequence number `seq`, an SSRC naming the direction,
/// and a payload that depends on both.
fn packet(dir: u8, seq: u16) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 0x80;
    p[1] = 8;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&[0x6d, 0x67, 0x36, dir]);
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = (i as u8) ^ (seq as u8).wrapping_mul(31) ^ dir.wrapping_mul(0x5a) ^ (seq >> 8) as u8;
    }
    p
}

/// Sends `PACKETS` datagrams from `tx` to `to` (paced, 1 ms apart, so no veth ring overflows)
/// and receives them on `rx`; asserts each arrived exactly once, byte-exact, from `from`, and
/// that nothing else arrived.
fn relay(dir: u8, tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, from: SocketAddr, what: &str) {
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut seen = vec![0u32; usize::from(PACKETS)];
    let mut strangers: Vec<String> = Vec::new();
    let mut buf = [0u8; 2048];
    let mut receive = |seen: &mut Vec<u32>, strangers: &mut Vec<String>| {
        while let Ok((n, src)) = rx.recv_from(&mut buf) {
            let got = &buf[..n];
            let seq = if n >= 4 {
                u16::from_be_bytes([got[2], got[3]])
            } else {
                u16::MAX
            };
            if src != from || seq >= PACKETS || got != packet(dir, seq) {
                strangers.push(format!("{n} bytes from {src}: {:02x?}", &got[..n.min(16)]));
                continue;
            }
            seen[usize::from(seq)] += 1;
        }
    };
    rx.set_nonblocking(true).unwrap();
    for seq in 0..PACKETS {
        tx.send_to(&packet(dir, seq), to)
            .unwrap_or_else(|e| panic!("{what}: send #{seq} to {to}: {e}"));
        sleep(Duration::from_millis(1));
        receive(&mut seen, &mut strangers);
    }
    rx.set_nonblocking(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.contains(&0) && Instant::now() < deadline {
        receive(&mut seen, &mut strangers);
    }
    // late duplicates
    let quiet = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet {
        receive(&mut seen, &mut strangers);
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    let dups: Vec<(usize, u32)> = (0..seen.len())
        .filter(|&i| seen[i] > 1)
        .map(|i| (i, seen[i]))
        .collect();
    assert!(
        missing.is_empty() && dups.is_empty() && strangers.is_empty(),
        "{what}: {} of {PACKETS} sent to {to} arrived from {from}; missing seqs {missing:?}; \
         duplicated (seq, times) {dups:?}; unexpected datagrams {strangers:#?}",
        seen.iter().filter(|&&n| n > 0).count()
    );
}

/// The UDP checksum over the IPv6 pseudo header and `udp` (header with a zero checksum field).
fn udp6_checksum(src: &std::net::Ipv6Addr, dst: &std::net::Ipv6Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Sends one datagram of the gw -> it stream (next sequence number) from [GW6]:GW_PORT to
/// `to` through a raw socket in gw, with its UDP checksum deliberately wrong (non-zero).
fn send_bad_checksum(lab: &Lab, to: SocketAddr) {
    let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) = match to.ip() {
        IpAddr::V6(d) => (GW6.parse().unwrap(), d),
        IpAddr::V4(_) => unreachable!("IPv6 test"),
    };
    let mut udp = Vec::with_capacity(8 + PACKET_LEN);
    udp.extend_from_slice(&GW_PORT.to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&((8 + PACKET_LEN) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&packet(1, PACKETS));
    let good = udp6_checksum(&src, &dst, &udp);
    let bad = if good == 0x1234 { 0x4321u16 } else { 0x1234 };
    udp[6..8].copy_from_slice(&bad.to_be_bytes());
    let ns = lab.gw();
    std::thread::spawn(move || {
        enter_netns(&ns);
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let addr = |ip: std::net::Ipv6Addr, port: u16| libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            sin6_scope_id: 0,
        };
        let local = addr(src, 0);
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: a valid sockaddr_in6 of the given length.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&local as *const libc::sockaddr_in6).cast(),
                len,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind raw socket: {}",
            std::io::Error::last_os_error()
        );
        // The port of a raw IPv6 socket's destination must be 0 (or the protocol).
        let remote = addr(dst, 0);
        // SAFETY: `udp` and `remote` outlive the call; lengths match.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                udp.as_ptr().cast(),
                udp.len(),
                0,
                (&remote as *const libc::sockaddr_in6).cast(),
                len,
            )
        };
        assert_eq!(
            n,
            udp.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    })
    .join()
    .expect("raw sender thread");
}

fn counter(st: &Value, name: &str) -> u64 {
    st["dataplane"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no dataplane.counters.{name} in /status: {st:#}"))
}

/// The RTP stream of the NG call's leg `tag`.
fn stream<'a>(st: &'a Value, tag: &str) -> &'a Value {
    let calls = st["calls"].as_array().expect("calls array");
    assert_eq!(calls.len(), 1, "calls in /status: {st:#}");
    let leg = calls[0]["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["tag"].as_str() == Some(tag)))
        .unwrap_or_else(|| panic!("no leg {tag} in /status: {st:#}"));
    let streams = leg["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "streams of leg {tag}: {leg:#}");
    &streams[0]
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Offer/answer with `address family: IP6` anchors the call on mediagate's IPv6 addresses; 200
/// packets each way are relayed byte-exact by the XDP program (every one counted as
/// `forwarded`, none passed to the socket tier), with valid UDP checksums; `delete` ends the
/// call and stopping mediagate leaves no program behind.
#[test]
fn ipv6_call_relayed_by_kernel_tier() {
    assert!(
        mediagate::dataplane::kernel::PROGRAM.is_some(),
        "this build has no XDP program: is clang installed?"
    );
    let lab = Lab::new("ipv6_media");
    add_lab_ipv6(&lab);
    let ip6_forward_before = sysctl(&lab, &lab.mg(), "net.ipv6.conf.all.forwarding");
    let mut mg = Mediagate::start(&lab, &config());
    let mut ng = NgClient::new(&lab);

    let st0 = mg.status();
    assert_eq!(st0["dataplane"]["tier"].as_str(), Some("kernel"), "{st0:#}");
    let devices: Vec<&str> = st0["dataplane"]["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["device"].as_str()).collect())
        .unwrap_or_default();
    let mut want = vec![lab.mg_gw_if(), lab.mg_it_if()];
    want.sort();
    let mut got: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "XDP devices: {:#}", st0["dataplane"]);

    // offer from gw (side A) toward it, answer from it
    let call_id = format!("ipv6-{}", lab.prefix);
    let offer = ng.call(&dict([
        ("command", s("offer")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller6")),
        ("sdp", s(&sdp(GW6, GW_PORT, 4001))),
        ("direction", list(&["gw", "it"])),
        ("address family", s("IP6")),
    ]));
    let it_port = anchored_port(&ok_sdp(&offer, "offer"), MG_IT6, "offer");
    let answer = ng.call(&dict([
        ("command", s("answer")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller6")),
        ("to-tag", s("callee6")),
        ("sdp", s(&sdp(IT6, IT_PORT, 4002))),
        ("direction", list(&["it", "gw"])),
        ("address family", s("IP6")),
    ]));
    let gw_port = anchored_port(&ok_sdp(&answer, "answer"), MG_GW6, "answer");
    let mg_gw = SocketAddr::new(MG_GW6.parse::<IpAddr>().unwrap(), gw_port);
    let mg_it = SocketAddr::new(MG_IT6.parse::<IpAddr>().unwrap(), it_port);

    let gw_sock = bind_in(&lab.gw(), &format!("[{GW6}]:{GW_PORT}"));
    let it_sock = bind_in(&lab.it(), &format!("[{IT6}]:{IT_PORT}"));
    let st1 = mg.status();
    let (fwd1, nonb1) = (
        counter(&st1, "forwarded"),
        counter(&st1, "pass_no_neighbour"),
    );
    let (snmp_gw1, snmp_it1) = (
        udp6_counters(&lab, &lab.gw()),
        udp6_counters(&lab, &lab.it()),
    );

    relay(1, &gw_sock, mg_gw, &it_sock, mg_it, "gw -> it");
    relay(2, &it_sock, mg_it, &gw_sock, mg_gw, "it -> gw");

    // The receiving kernels verify UDP checksums of what XDP built (no offload flags on a
    // redirected frame): none failed, nothing else was dropped.
    for (ns, before) in [(lab.gw(), &snmp_gw1), (lab.it(), &snmp_it1)] {
        let after = udp6_counters(&lab, &ns);
        for key in ["Udp6InCsumErrors", "Udp6InErrors", "Udp6RcvbufErrors"] {
            assert_eq!(
                after.get(key).copied().unwrap_or(0),
                before.get(key).copied().unwrap_or(0),
                "{key} grew in {ns}: before {before:?}, after {after:?}"
            );
        }
        assert_eq!(
            after.get("Udp6InDatagrams").copied().unwrap_or(0)
                - before.get("Udp6InDatagrams").copied().unwrap_or(0),
            u64::from(PACKETS),
            "Udp6InDatagrams delta in {ns}: before {before:?}, after {after:?}"
        );
    }

    // The kernel tier carried all of it: the program's counters now, the streams' once the
    // collector (1 s) has copied them.
    let total = 2 * u64::from(PACKETS);
    let st2 = mg.status();
    assert_eq!(
        counter(&st2, "forwarded") - fwd1,
        total,
        "packets the XDP program forwarded: {:#}",
        st2["dataplane"]
    );
    assert_eq!(
        counter(&st2, "pass_no_neighbour") - nonb1,
        0,
        "packets passed to the socket tier for an unresolved neighbour: {:#}",
        st2["dataplane"]
    );
    eprintln!(
        "[ipv6_media] {total} packets relayed; XDP counters {}",
        st2["dataplane"]["counters"]
    );
    let per_stream = u64::from(PACKETS);
    let (done, st3) = mg.wait_status(Duration::from_secs(4), |st| {
        ["caller6", "callee6"].iter().all(|tag| {
            let s = stream(st, tag);
            s["kernel_packets"].as_u64() == Some(2 * per_stream)
                && s["latched"].as_bool() == Some(true)
        })
    });
    assert!(
        done,
        "streams did not report {} kernel packets each and latched: {st3:#}",
        2 * per_stream
    );
    for (tag, local, remote) in [
        ("caller6", mg_gw, format!("[{GW6}]:{GW_PORT}")),
        ("callee6", mg_it, format!("[{IT6}]:{IT_PORT}")),
    ] {
        let s = stream(&st3, tag);
        assert_eq!(s["tier"].as_str(), Some("kernel"), "tier of {tag}: {s:#}");
        assert_eq!(
            s["rtcp"]["tier"].as_str(),
            Some("kernel"),
            "RTCP tier of {tag}: {s:#}"
        );
        assert_eq!(
            s["local"].as_str(),
            Some(local.to_string().as_str()),
            "{s:#}"
        );
        assert_eq!(s["remote"].as_str(), Some(remote.as_str()), "{s:#}");
        assert_eq!(s["rx_packets"].as_u64(), Some(per_stream), "{tag}: {s:#}");
        assert_eq!(s["tx_packets"].as_u64(), Some(per_stream), "{tag}: {s:#}");
        assert_eq!(s["drops"].as_u64(), Some(0), "{tag}: {s:#}");
    }

    // Positive control for the checksum check: a datagram with a wrong UDP checksum, sent
    // from the latched source, is relayed by the program (which updates checksums
    // incrementally, so it stays wrong) and the receiving kernel must count and drop it.
    let csum_it = udp6_counters(&lab, &lab.it());
    let fwd = counter(&mg.status(), "forwarded");
    send_bad_checksum(&lab, mg_gw);
    it_sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, src)) = it_sock.recv_from(&mut buf) {
        panic!("a datagram with a bad UDP checksum was delivered in it: {n} bytes from {src}");
    }
    let after = udp6_counters(&lab, &lab.it());
    assert_eq!(
        after.get("Udp6InCsumErrors").copied().unwrap_or(0)
            - csum_it.get("Udp6InCsumErrors").copied().unwrap_or(0),
        1,
        "the bad-checksum datagram was not counted by it's kernel (so the checksum check above \
         would prove nothing): before {csum_it:?}, after {after:?}"
    );
    assert_eq!(
        counter(&mg.status(), "forwarded") - fwd,
        1,
        "the bad-checksum datagram did not take the kernel tier"
    );

    // delete ends the call at once
    let del = ng.call(&dict([
        ("command", s("delete")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller6")),
    ]));
    assert_eq!(
        del.get("result").and_then(Bencode::as_str),
        Some("ok"),
        "delete reply: {del:?}"
    );
    mg.assert_idle(Duration::from_secs(3));

    let st = mg.stop().expect("mediagate was running");
    assert!(st.success(), "mediagate exit status when stopped: {st}");
    lab.assert_mg_clean();
    assert_eq!(
        sysctl(&lab, &lab.mg(), "net.ipv6.conf.all.forwarding"),
        ip6_forward_before,
        "IPv6 forwarding in mg not restored after mediagate stopped"
    );
}
