//! The XDP program run by the kernel on fixture packets (BPF_PROG_TEST_RUN): input packet →
//! expected verdict and exact output bytes, for every path of the program. Loading it at all is
//! the verifier test. Runs inside a lab namespace (scripts/lab) so that `bpf_fib_lookup` sees
//! real devices and neighbours. Needs root and a build with clang.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use aya::maps::{Array, MapData};
use aya::programs::Xdp;
use aya::Ebpf;
use mediagate::dataplane::kernel::abi::{
    family_of, Addr, Config, Settings, State, FAMILY_V4, FAMILY_V6, FLAG_ASYMMETRIC, FLAG_HANDOVER,
    FLAG_KERNEL,
};
use mediagate::dataplane::kernel::PROGRAM;
use mediagate::media::{RtpHeader, RtpQuality};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// `media.max_packet_bytes` as the fixtures set it: the largest UDP payload relayed.
const MAX_PAYLOAD: u16 = 1000;
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const IT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

/// The lab topology for the duration of a test; removed on drop, even on panic.
struct Lab(String);

impl Lab {
    fn new() -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the BPF fixture tests need root (run sudo scripts/test)"
        );
        let prefix = format!("f{:04x}", std::process::id() & 0xffff);
        let lab = Lab(prefix);
        run(&["scripts/lab", "up", &lab.0]);
        lab
    }
    fn mg(&self) -> String {
        format!("{}mg", self.0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("scripts/lab").args(["down", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// Moves the calling thread into a named network namespace.
fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "no device {name}");
    i
}

/// The MAC address of device `name` in namespace `ns`.
fn mac_of(ns: &str, name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {name}: {text}"));
    let mut mac = [0u8; 6];
    for (i, part) in hex.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// `union bpf_attr` as used by BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// `struct xdp_md` as a test-run context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs the program once on `packet` arriving on `ingress`; returns verdict and output bytes.
fn test_run(prog_fd: i32, packet: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex: ingress,
        ..Default::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        ..Default::default()
    };
    const BPF_PROG_TEST_RUN: i64 = 10;
    // SAFETY: attr points at buffers that outlive the call; sizes match the buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out)
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IP/UDP packet with 160 bytes of payload, IPv4 or IPv6 by its addresses, with
/// correct checksums (or a UDP checksum of 0 when `udp_csum` is false), optionally VLAN-tagged.
fn packet(src: &str, dst: &str, ttl: u8, udp_csum: bool, vlan: bool) -> Vec<u8> {
    sized_packet(src, dst, ttl, udp_csum, vlan, 160)
}

/// [`packet`] with `len` bytes of payload.
fn sized_packet(src: &str, dst: &str, ttl: u8, udp_csum: bool, vlan: bool, len: usize) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let udp_len = 8 + payload.len();
    let mut p = Vec::new();
    p.extend_from_slice(&[0xaa; 6]);
    p.extend_from_slice(&GW_MAC);
    if vlan {
        p.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    let l3 = p.len() + 2;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + udp_len;
            p.extend_from_slice(&[0x08, 0x00, 0x45, 0, (total >> 8) as u8, total as u8]);
            p.extend_from_slice(&[0, 1, 0x40, 0, ttl, 17, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let ip_sum = checksum(&p[l3..l3 + 20], 0);
            p[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x86, 0xdd, 0x60, 0x01, 0x23, 0x45]);
            p.extend_from_slice(&(udp_len as u16).to_be_bytes());
            p.extend_from_slice(&[17, ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("one family per packet"),
    }
    let l4 = p.len();
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&payload);
    if udp_csum {
        let sum = udp_checksum(&p[l3..]);
        p[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn ip_header_len(ip: &[u8]) -> usize {
    if ip[0] >> 4 == 6 {
        40
    } else {
        20
    }
}

/// The UDP checksum of an IP packet (`ip` starts at the IP header), computed from scratch.
fn udp_checksum(ip: &[u8]) -> u16 {
    let hl = ip_header_len(ip);
    let udp = &ip[hl..];
    let mut pseudo = Vec::new();
    if hl == 40 {
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
    } else {
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    }
    let mut zeroed = udp.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    pseudo.extend_from_slice(&zeroed);
    let s = checksum(&pseudo, 0);
    if s == 0 {
        0xffff
    } else {
        s
    }
}

/// What a forwarded packet must look like: `input` rewritten from `src` to `dst` with TTL (hop
/// limit) − 1, the given MACs, and checksums recomputed from scratch.
fn expected(
    input: &[u8],
    src: &str,
    dst: &str,
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: bool,
) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let mut p = input.to_vec();
    p[0..6].copy_from_slice(&dmac);
    p[6..12].copy_from_slice(&smac);
    let l3 = if vlan { 18 } else { 14 };
    let hl = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p[l3 + 8] -= 1;
            p[l3 + 12..l3 + 16].copy_from_slice(&s.octets());
            p[l3 + 16..l3 + 20].copy_from_slice(&d.octets());
            p[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let ip_sum = checksum(&p[l3..l3 + 20], 0);
            p[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p[l3 + 7] -= 1;
            p[l3 + 8..l3 + 24].copy_from_slice(&s.octets());
            p[l3 + 24..l3 + 40].copy_from_slice(&d.octets());
            40
        }
        _ => panic!("one family per packet"),
    };
    let l4 = l3 + hl;
    p[l4..l4 + 2].copy_from_slice(&src.port().to_be_bytes());
    p[l4 + 2..l4 + 4].copy_from_slice(&dst.port().to_be_bytes());
    if input[l4 + 6..l4 + 8] != [0, 0] {
        let sum = udp_checksum(&p[l3..]);
        p[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// What a packet relayed across families must look like: the same 160-byte payload from `src`
/// to `dst` in the other family with TTL (hop limit) `ttl`, the given MACs, IPv4
/// identification 0 without DF (RFC 7915 for a short packet), IPv6 traffic class and flow label
/// 0, and checksums computed from scratch.
fn translated(src: &str, dst: &str, ttl: u8, smac: [u8; 6], dmac: [u8; 6]) -> Vec<u8> {
    let mut p = packet(src, dst, ttl, true, false);
    p[0..6].copy_from_slice(&dmac);
    p[6..12].copy_from_slice(&smac);
    if p[14] >> 4 == 6 {
        p[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
    } else {
        p[18..22].copy_from_slice(&[0, 0, 0, 0]);
        p[24..26].copy_from_slice(&[0, 0]);
        let ip_sum = checksum(&p[14..34], 0);
        p[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    }
    p
}

/// A kernel-tier stream at `local`, paired with the stream on `peer_port`, whose remote is
/// `sdp` by SDP and `sig` by signalling: its map index and config.
fn stream(local: &str, peer_port: u16, sdp: &str, sig: &str) -> (u32, Config) {
    let local: SocketAddr = local.parse().unwrap();
    let sig: IpAddr = sig.parse().unwrap();
    let mut config = Config {
        local: Addr::new(local.ip()),
        signalling: Addr::new(sig),
        flags: FLAG_KERNEL,
        peer_port,
        family: family_of(local.ip()),
        ..Config::default()
    };
    config.set_sdp(Some(sdp.parse().unwrap()));
    (u32::from(local.port()), config)
}

#[test]
fn xdp_program_fixture_table() {
    assert!(
        PROGRAM.is_some(),
        "this build has no XDP program: is clang installed?"
    );
    let lab = Lab::new();
    let mg = lab.mg();
    let (gw_if, it_if) = (format!("{}g1", lab.0), format!("{}i1", lab.0));
    run(&[
        "ip",
        "netns",
        "exec",
        &mg,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    for (ip, mac, dev) in [("10.99.1.2", GW_MAC, &gw_if), ("10.99.2.2", IT_MAC, &it_if)] {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        run(&[
            "ip",
            "-n",
            &mg,
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    // IPv6 beside IPv4 on both links (inside the lab's namespaces only).
    run(&[
        "ip",
        "netns",
        "exec",
        &mg,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    for (local, remote, mac, dev) in [
        ("fd99:1::1/64", "fd99:1::2", GW_MAC, &gw_if),
        ("fd99:2::1/64", "fd99:2::2", IT_MAC, &it_if),
    ] {
        run(&["ip", "-n", &mg, "addr", "add", local, "dev", dev, "nodad"]);
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        run(&[
            "ip",
            "-n",
            &mg,
            "neigh",
            "replace",
            remote,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    let macs = (mac_of(&mg, &gw_if), mac_of(&mg, &it_if));
    let handle = std::thread::spawn(move || {
        enter_netns(&mg);
        fixtures(&gw_if, &it_if, macs)
    });
    let result = handle.join();
    drop(lab);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn fixtures(gw_if: &str, it_if: &str, (gw_mac, it_mac): ([u8; 6], [u8; 6])) {
    let mut ebpf = Ebpf::load(PROGRAM.unwrap()).expect("load object");
    let mut settings: Array<MapData, Settings> =
        Array::try_from(ebpf.take_map("mg_settings").unwrap()).unwrap();
    settings
        .set(
            0,
            Settings {
                port_first: 30000,
                port_last: 30999,
                max_payload: MAX_PAYLOAD,
                pad: 0,
            },
            0,
        )
        .unwrap();
    let mut configs: Array<MapData, Config> =
        Array::try_from(ebpf.take_map("mg_configs").unwrap()).unwrap();
    let mut states: Array<MapData, State> =
        Array::try_from(ebpf.take_map("mg_states").unwrap()).unwrap();
    let prog: &mut Xdp = ebpf.program_mut("mg_relay").unwrap().try_into().unwrap();
    prog.load().expect("the verifier accepts the program");
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();

    // An IPv4 stream pair: A = 10.99.1.1:30000 facing the gateway, B = 10.99.2.1:30002 facing
    // the ITSP; an IPv6 pair: A6 = [fd99:1::1]:30100, B6 = [fd99:2::1]:30102.
    let a_at = |sdp: &str| stream("10.99.1.1:30000", 30002, sdp, "10.99.1.2");
    let (ia, cfg_a) = a_at("10.99.1.2:6000");
    let (ib, cfg_b) = stream("10.99.2.1:30002", 30000, "10.99.2.2:7000", "10.99.2.2");
    let (ia6, cfg_a6) = stream("[fd99:1::1]:30100", 30102, "[fd99:1::2]:6000", "fd99:1::2");
    let (ib6, cfg_b6) = stream("[fd99:2::1]:30102", 30100, "[fd99:2::2]:7000", "fd99:2::2");
    // A pair across families: X4 = 10.99.1.1:30200 facing the gateway over IPv4, X6 =
    // [fd99:2::1]:30202 facing the ITSP over IPv6.
    let (ix4, cfg_x4) = stream("10.99.1.1:30200", 30202, "10.99.1.2:6200", "10.99.1.2");
    let (ix6, cfg_x6) = stream("[fd99:2::1]:30202", 30200, "[fd99:2::2]:7200", "fd99:2::2");
    // A user-space stream (neither forwarding flag).
    let (iu, cfg_u) = stream("10.99.1.1:30004", 30002, "10.99.1.2:6004", "10.99.1.2");
    let cfg_u = Config { flags: 0, ..cfg_u };
    for (i, c) in [
        (ia, cfg_a),
        (ib, cfg_b),
        (ia6, cfg_a6),
        (ib6, cfg_b6),
        (ix4, cfg_x4),
        (ix6, cfg_x6),
        (iu, cfg_u),
    ] {
        configs.set(i, c, 0).unwrap();
        states.set(i, State::default(), 0).unwrap();
    }

    let (gw, it) = (ifindex(gw_if), ifindex(it_if));
    let arp: Vec<u8> = [&[0xff; 6][..], &GW_MAC, &[0x08, 0x06], &[0u8; 28]].concat();
    let sip = packet("10.99.1.2:5060", "10.99.1.1:5060", 64, true, false);
    let mut fragment = packet("10.99.1.2:6000", "10.99.1.1:30000", 64, true, false);
    fragment[14 + 6] = 0x20; // More Fragments
    let truncated = packet("10.99.1.2:6000", "10.99.1.1:30000", 64, true, false)[..30].to_vec();
    let from_gw = packet("10.99.1.2:6000", "10.99.1.1:30000", 64, true, false);
    let from_gw_vlan = packet("10.99.1.2:6000", "10.99.1.1:30000", 64, true, true);
    let from_gw_nocsum = packet("10.99.1.2:6000", "10.99.1.1:30000", 64, false, false);
    let from_it = packet("10.99.2.2:7000", "10.99.2.1:30002", 64, true, false);
    let from_gw6 = packet("[fd99:1::2]:6000", "[fd99:1::1]:30100", 64, true, false);
    let from_it6 = packet("[fd99:2::2]:7000", "[fd99:2::1]:30102", 64, true, false);
    let from_gw6_nocsum = packet("[fd99:1::2]:6000", "[fd99:1::1]:30100", 64, false, false);
    let mut ext6 = from_gw6.clone();
    ext6[14 + 6] = 44; // a Fragment extension header follows, not UDP
    let sip6 = packet("[fd99:1::2]:5060", "[fd99:1::1]:5060", 64, true, false);
    let max = usize::from(MAX_PAYLOAD);
    let largest = sized_packet("10.99.1.2:6000", "10.99.1.1:30000", 64, true, false, max);
    let oversize = sized_packet(
        "10.99.1.2:6000",
        "10.99.1.1:30000",
        64,
        true,
        false,
        max + 1,
    );
    let oversize6 = sized_packet(
        "[fd99:1::2]:6000",
        "[fd99:1::1]:30100",
        64,
        true,
        false,
        max + 1,
    );

    struct Case {
        name: &'static str,
        packet: Vec<u8>,
        ingress: u32,
        verdict: u32,
        output: Option<Vec<u8>>,
    }
    let case = |name, packet: &Vec<u8>, ingress, verdict, output| Case {
        name,
        packet: packet.clone(),
        ingress,
        verdict,
        output,
    };
    let unchanged = |p: &Vec<u8>| Some(p.clone());
    let dropped = |name, src: &str, dst: &str, ttl| Case {
        name,
        packet: packet(src, dst, ttl, true, false),
        ingress: gw,
        verdict: XDP_DROP,
        output: None,
    };
    let to_it =
        |p: &Vec<u8>, vlan| expected(p, "10.99.2.1:30002", "10.99.2.2:7000", it_mac, IT_MAC, vlan);
    let cases = vec![
        case("ARP passes untouched", &arp, gw, XDP_PASS, unchanged(&arp)),
        case("SIP passes untouched", &sip, gw, XDP_PASS, unchanged(&sip)),
        case(
            "fragment passes untouched",
            &fragment,
            gw,
            XDP_PASS,
            unchanged(&fragment),
        ),
        case(
            "truncated packet passes untouched",
            &truncated,
            gw,
            XDP_PASS,
            unchanged(&truncated),
        ),
        dropped(
            "media port without a stream is dropped",
            "10.99.1.2:6000",
            "10.99.1.1:30010",
            64,
        ),
        dropped(
            "a stream's port on another local address is dropped",
            "10.99.1.2:6000",
            "10.99.2.1:30000",
            64,
        ),
        case(
            "user-space stream passes",
            &packet("10.99.1.2:6004", "10.99.1.1:30004", 64, true, false),
            gw,
            XDP_PASS,
            None,
        ),
        dropped(
            "unknown source before latching is dropped",
            "10.99.1.9:6000",
            "10.99.1.1:30000",
            64,
        ),
        dropped("TTL 1 is dropped", "10.99.1.2:6000", "10.99.1.1:30000", 1),
        case(
            "first packet from the SDP address latches and is redirected to the ITSP side",
            &from_gw,
            gw,
            XDP_REDIRECT,
            Some(to_it(&from_gw, false)),
        ),
        case(
            "VLAN-tagged packet is rewritten behind the tag",
            &from_gw_vlan,
            gw,
            XDP_REDIRECT,
            Some(to_it(&from_gw_vlan, true)),
        ),
        case(
            "UDP checksum 0 stays 0",
            &from_gw_nocsum,
            gw,
            XDP_REDIRECT,
            Some(to_it(&from_gw_nocsum, false)),
        ),
        case(
            "a payload of max_payload bytes is relayed",
            &largest,
            gw,
            XDP_REDIRECT,
            Some(to_it(&largest, false)),
        ),
        case(
            "a payload over max_payload from the latched source is dropped",
            &oversize,
            gw,
            XDP_DROP,
            None,
        ),
        dropped(
            "another port from the latched IP is dropped (strict source)",
            "10.99.1.2:6002",
            "10.99.1.1:30000",
            64,
        ),
        case(
            "reverse direction goes to the latched source of A",
            &from_it,
            it,
            XDP_REDIRECT,
            Some(expected(
                &from_it,
                "10.99.1.1:30000",
                "10.99.1.2:6000",
                gw_mac,
                GW_MAC,
                false,
            )),
        ),
        case(
            "egress on the ingress device uses XDP_TX",
            &packet("10.99.2.2:7000", "10.99.2.1:30002", 64, true, false),
            gw,
            XDP_TX,
            None,
        ),
        // IPv6.
        case(
            "IPv6 SIP passes untouched",
            &sip6,
            gw,
            XDP_PASS,
            unchanged(&sip6),
        ),
        case(
            "IPv6 extension header passes untouched",
            &ext6,
            gw,
            XDP_PASS,
            unchanged(&ext6),
        ),
        dropped(
            "IPv4 packet to an IPv6 stream's port is dropped",
            "10.99.1.2:6000",
            "10.99.1.1:30100",
            64,
        ),
        dropped(
            "IPv6 unknown source before latching is dropped",
            "[fd99:1::9]:6000",
            "[fd99:1::1]:30100",
            64,
        ),
        dropped(
            "IPv6 hop limit 1 is dropped",
            "[fd99:1::2]:6000",
            "[fd99:1::1]:30100",
            1,
        ),
        case(
            "IPv6 UDP checksum 0 (invalid) is left to the kernel",
            &from_gw6_nocsum,
            gw,
            XDP_PASS,
            unchanged(&from_gw6_nocsum),
        ),
        case(
            "IPv6 payload over max_payload is dropped before latching",
            &oversize6,
            gw,
            XDP_DROP,
            None,
        ),
        case(
            "IPv6 first packet latches and is redirected with hop limit and checksum updated",
            &from_gw6,
            gw,
            XDP_REDIRECT,
            Some(expected(
                &from_gw6,
                "[fd99:2::1]:30102",
                "[fd99:2::2]:7000",
                it_mac,
                IT_MAC,
                false,
            )),
        ),
        dropped(
            "IPv6 another port of the latched address is dropped (strict source)",
            "[fd99:1::2]:6002",
            "[fd99:1::1]:30100",
            64,
        ),
        case(
            "IPv6 reverse direction goes to the latched source of A6",
            &from_it6,
            it,
            XDP_REDIRECT,
            Some(expected(
                &from_it6,
                "[fd99:1::1]:30100",
                "[fd99:1::2]:6000",
                gw_mac,
                GW_MAC,
                false,
            )),
        ),
    ];
    let from_gw_x = packet("10.99.1.2:6200", "10.99.1.1:30200", 64, true, false);
    let from_it_x = packet("[fd99:2::2]:7200", "[fd99:2::1]:30202", 64, true, false);
    let across = vec![
        case(
            "IPv4 without a UDP checksum to an IPv6 peer goes to the socket tier",
            &packet("10.99.1.2:6200", "10.99.1.1:30200", 64, false, false),
            gw,
            XDP_PASS,
            None,
        ),
        case(
            "VLAN-tagged IPv4 to an IPv6 peer goes to the socket tier",
            &packet("10.99.1.2:6200", "10.99.1.1:30200", 64, true, true),
            gw,
            XDP_PASS,
            None,
        ),
        case(
            "IPv4 to an IPv6 peer is translated to IPv6 and redirected",
            &from_gw_x,
            gw,
            XDP_REDIRECT,
            Some(translated(
                "[fd99:2::1]:30202",
                "[fd99:2::2]:7200",
                63,
                it_mac,
                IT_MAC,
            )),
        ),
        case(
            "IPv6 to an IPv4 peer is translated to IPv4 and sent to the latched source",
            &from_it_x,
            it,
            XDP_REDIRECT,
            Some(translated(
                "10.99.1.1:30200",
                "10.99.1.2:6200",
                63,
                gw_mac,
                GW_MAC,
            )),
        ),
    ];
    let mut failures = Vec::new();
    for c in cases.iter().chain(&across) {
        let (verdict, out) = test_run(fd, &c.packet, c.ingress);
        if verdict != c.verdict {
            failures.push(format!(
                "{}: verdict {verdict}, expected {}",
                c.name, c.verdict
            ));
            continue;
        }
        if let Some(want) = &c.output {
            if &out != want {
                failures.push(format!(
                    "{}: output differs\n got  {:02x?}\n want {:02x?}",
                    c.name, out, want
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );

    // Latching and counters as the control plane reads them.
    let sa = states.get(&ia, 0).unwrap();
    assert_eq!(
        sa.latched_source(FAMILY_V4),
        Some("10.99.1.2:6000".parse().unwrap())
    );
    assert_eq!(
        sa.rx_packets, 4,
        "four packets accepted on A (and sent out of B)"
    );
    assert_eq!(
        sa.rx_bytes,
        3 * 160 + u64::from(MAX_PAYLOAD),
        "UDP payload, as the socket tier counts it"
    );
    assert_eq!(sa.drops, 3, "unknown source, oversize and strict source");
    let now = mediagate::clock::monotonic_coarse_ns();
    assert!(
        sa.last_seen_ns > 0 && sa.last_seen_ns <= now,
        "last seen {} is a CLOCK_MONOTONIC_COARSE time before {now}",
        sa.last_seen_ns
    );
    let sa6 = states.get(&ia6, 0).unwrap();
    assert_eq!(
        sa6.latched_source(FAMILY_V6),
        Some("[fd99:1::2]:6000".parse().unwrap())
    );
    assert_eq!(
        (sa6.rx_packets, sa6.drops),
        (1, 3),
        "unknown source, oversize and strict source"
    );
    assert_eq!(
        states.get(&ib6, 0).unwrap().latched_source(FAMILY_V6),
        Some("[fd99:2::2]:7000".parse().unwrap())
    );

    // The pair across families: one packet translated each way, both sides latched.
    let (sx4, sx6) = (states.get(&ix4, 0).unwrap(), states.get(&ix6, 0).unwrap());
    assert_eq!(
        (sx4.rx_packets, sx6.rx_packets),
        (1, 1),
        "one packet translated each way (the passed ones are the socket tier's)"
    );
    assert_eq!(
        sx6.latched_source(FAMILY_V6),
        Some("[fd99:2::2]:7200".parse().unwrap())
    );

    // Renegotiation (new generation) re-opens learning: a new source on the new SDP IP latches.
    let (_, renegotiated) = a_at("10.99.1.2:6010");
    let renegotiated = Config {
        generation: 1,
        ..renegotiated
    };
    configs.set(ia, renegotiated, 0).unwrap();
    let moved = packet("10.99.1.2:6010", "10.99.1.1:30000", 64, true, false);
    assert_eq!(test_run(fd, &moved, gw).0, XDP_REDIRECT);
    assert_eq!(
        states.get(&ia, 0).unwrap().latched_source(FAMILY_V4),
        Some("10.99.1.2:6010".parse().unwrap())
    );

    // media-handover: a new source of the latched stream is followed, not dropped; the same
    // for IPv6.
    let handover = |c: Config| Config {
        flags: FLAG_KERNEL | FLAG_HANDOVER,
        ..c
    };
    configs.set(ia, handover(renegotiated), 0).unwrap();
    configs.set(ia6, handover(cfg_a6), 0).unwrap();
    let roamed = packet("198.51.100.7:4000", "10.99.1.1:30000", 64, true, false);
    assert_eq!(
        test_run(fd, &roamed, gw).0,
        XDP_REDIRECT,
        "handover follows"
    );
    assert_eq!(
        states.get(&ia, 0).unwrap().latched_source(FAMILY_V4),
        Some("198.51.100.7:4000".parse().unwrap())
    );
    let roamed6 = packet("[2001:db8::7]:4000", "[fd99:1::1]:30100", 64, true, false);
    assert_eq!(
        test_run(fd, &roamed6, gw).0,
        XDP_REDIRECT,
        "IPv6 handover follows"
    );
    assert_eq!(
        states.get(&ia6, 0).unwrap().latched_source(FAMILY_V6),
        Some("[2001:db8::7]:4000".parse().unwrap())
    );
    // asymmetric: any source is accepted and nothing is learned.
    let asymmetric = Config {
        flags: FLAG_KERNEL | FLAG_ASYMMETRIC,
        generation: 2,
        ..renegotiated
    };
    configs.set(ia, asymmetric, 0).unwrap();
    let stranger = packet("192.0.2.99:5555", "10.99.1.1:30000", 64, true, false);
    assert_eq!(
        test_run(fd, &stranger, gw).0,
        XDP_REDIRECT,
        "asymmetric accepts"
    );
    assert_eq!(
        states.get(&ia, 0).unwrap().latched_source(FAMILY_V4),
        None,
        "and learns nothing"
    );

    // A removed stream (zeroed config) is a miss.
    configs.set(iu, Config::default(), 0).unwrap();
    let to_removed = packet("10.99.1.2:6004", "10.99.1.1:30004", 64, true, false);
    assert_eq!(test_run(fd, &to_removed, gw).0, XDP_DROP, "removed stream");

    rtp_quality(fd, gw, &mut configs, &mut states);

    // Unresolved next hop: passed to the kernel (the socket path relays it).
    let (_, unresolved) = stream("10.99.2.1:30002", 30000, "10.99.2.77:7000", "10.99.2.2");
    configs.set(ib, unresolved, 0).unwrap();
    states.set(ib, State::default(), 0).unwrap();
    assert_eq!(
        test_run(fd, &moved, gw).0,
        XDP_PASS,
        "unresolved neighbour passes"
    );
}

/// RTP quality in the program: a fresh pair whose A side has a clock rate of 1 Hz, so that the
/// arrival gaps of these back-to-back test runs (far below a second) are 0 in RTP units and
/// the jitter is exactly that of the timestamps. After a wrap, a reordered packet, duplicates,
/// a gap and an RTCP packet, the program's state must equal `media::quality` fed the same
/// packets, and A.1's counts must be the ones worked out by hand.
fn rtp_quality(
    fd: i32,
    gw: u32,
    configs: &mut Array<MapData, Config>,
    states: &mut Array<MapData, State>,
) {
    let (iq, cfg_q) = stream("10.99.1.1:30200", 30202, "10.99.1.2:6200", "10.99.1.2");
    let (iqb, cfg_qb) = stream("10.99.2.1:30202", 30200, "10.99.2.2:7200", "10.99.2.2");
    for (i, c) in [
        (
            iq,
            Config {
                clock_rate: 1,
                ..cfg_q
            },
        ),
        (iqb, cfg_qb),
    ] {
        configs.set(i, c, 0).unwrap();
        states.set(i, State::default(), 0).unwrap();
    }
    const SSRC: u32 = 0x0bad_cafe;
    let rtp = |second: u8, seq: u16, ts: u32| {
        let mut p = packet("10.99.1.2:6200", "10.99.1.1:30200", 64, false, false);
        let h = &mut p[42..54];
        h[0] = 0x80;
        h[1] = second;
        h[2..4].copy_from_slice(&seq.to_be_bytes());
        h[4..8].copy_from_slice(&ts.to_be_bytes());
        h[8..12].copy_from_slice(&SSRC.to_be_bytes());
        p
    };
    // (sequence number, timestamp): a wrap after 65535, 0 late, 0 twice, 3 and 4 lost.
    let sent: [(u16, u32); 8] = [
        (65533, 0),
        (65534, 160),
        (65535, 320),
        (1, 640),
        (0, 480),
        (0, 480),
        (2, 900),
        (5, 1440),
    ];
    let mut model = RtpQuality::default();
    for (i, &(seq, ts)) in sent.iter().enumerate() {
        assert_eq!(
            test_run(fd, &rtp(8, seq, ts), gw).0,
            XDP_REDIRECT,
            "RTP {i}"
        );
        model.record(
            RtpHeader {
                seq,
                timestamp: ts,
                ssrc: SSRC,
            },
            0,
            1,
        );
        if i == 3 {
            // An RTCP sender report on the port (200 = type 72 with the marker bit).
            assert_eq!(test_run(fd, &rtp(200, 7, 7), gw).0, XDP_REDIRECT, "RTCP");
        }
    }
    let mut q = states.get(&iq, 0).unwrap().quality;
    assert!(q.last_arrival_ns > 0, "arrival from bpf_ktime_get_ns");
    q.last_arrival_ns = 0;
    assert_eq!(
        q, model,
        "the program's A.1/A.8 state equals media::quality's"
    );
    // By hand: base 65534 (probation ends there), extended max 65536 + 5: 8 expected; 7
    // received (65534, 65535, 1, 0, 0, 2, 5), so 3 and 4 lost but one masked by the duplicate.
    let c = q.counts();
    assert_eq!((c.expected, c.lost, q.cycles), (8, 1, 65536));
    // Jitter (×16) from the timestamp steps alone: D = 160, 160, 320, 160, 0, 420, 540, and
    // J += D − ((J + 8) >> 4): 160, 310, 611, 733, 687, 1064, 1537.
    assert_eq!(q.jitter, 1537);
    assert_eq!(
        states.get(&iqb, 0).unwrap().quality,
        RtpQuality::default(),
        "the peer's state is untouched"
    );
}
