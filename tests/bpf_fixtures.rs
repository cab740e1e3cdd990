//! The XDP program run by the kernel on fixture packets (BPF_PROG_TEST_RUN): input packet →
//! expected verdict and exact output bytes, for every path of the program. Loading it at all is
//! the verifier test. Runs inside a lab namespace (scripts/lab) so that `bpf_fib_lookup` sees
//! real devices and neighbours. Needs root and a build with clang.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::Xdp;
use aya::Ebpf;
use mediagate::dataplane::kernel::abi::{
    Config, Key, Settings, State, FLAG_ASYMMETRIC, FLAG_HANDOVER, FLAG_KERNEL,
};
use mediagate::dataplane::kernel::PROGRAM;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

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

/// An Ethernet/IPv4/UDP packet with correct checksums (or UDP checksum 0 when `udp_csum` is
/// false), optionally VLAN-tagged.
fn packet(src: &str, dst: &str, ttl: u8, udp_csum: bool, vlan: bool) -> Vec<u8> {
    let src: SocketAddrV4 = src.parse().unwrap();
    let dst: SocketAddrV4 = dst.parse().unwrap();
    let payload: Vec<u8> = (0..160u8).collect();
    let mut p = Vec::new();
    p.extend_from_slice(&[0xaa; 6]);
    p.extend_from_slice(&GW_MAC);
    if vlan {
        p.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    p.extend_from_slice(&[0x08, 0x00]);
    let l3 = p.len();
    let total = 20 + 8 + payload.len();
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        ttl,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&p[l3..l3 + 20], 0);
    p[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let l4 = p.len();
    let udp_len = 8 + payload.len();
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

/// The UDP checksum of an IPv4 packet (`ip` starts at the IP header), computed from scratch.
fn udp_checksum(ip: &[u8]) -> u16 {
    let udp = &ip[20..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
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

/// What a forwarded packet must look like: `input` rewritten from `src` to `dst` with TTL − 1,
/// the given MACs, and checksums recomputed from scratch.
fn expected(
    input: &[u8],
    src: &str,
    dst: &str,
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: bool,
) -> Vec<u8> {
    let src: SocketAddrV4 = src.parse().unwrap();
    let dst: SocketAddrV4 = dst.parse().unwrap();
    let mut p = input.to_vec();
    p[0..6].copy_from_slice(&dmac);
    p[6..12].copy_from_slice(&smac);
    let l3 = if vlan { 18 } else { 14 };
    p[l3 + 8] -= 1;
    p[l3 + 12..l3 + 16].copy_from_slice(&src.ip().octets());
    p[l3 + 16..l3 + 20].copy_from_slice(&dst.ip().octets());
    p[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let ip_sum = checksum(&p[l3..l3 + 20], 0);
    p[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let l4 = l3 + 20;
    p[l4..l4 + 2].copy_from_slice(&src.port().to_be_bytes());
    p[l4 + 2..l4 + 4].copy_from_slice(&dst.port().to_be_bytes());
    if input[l4 + 6..l4 + 8] != [0, 0] {
        let sum = udp_checksum(&p[l3..]);
        p[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn key(s: &str) -> Key {
    Key::new(s.parse().unwrap())
}

fn be(ip: &str) -> u32 {
    u32::from(ip.parse::<Ipv4Addr>().unwrap()).to_be()
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
                pad: 0,
            },
            0,
        )
        .unwrap();
    let mut configs: BpfHashMap<MapData, Key, Config> =
        BpfHashMap::try_from(ebpf.take_map("mg_configs").unwrap()).unwrap();
    let mut states: BpfHashMap<MapData, Key, State> =
        BpfHashMap::try_from(ebpf.take_map("mg_states").unwrap()).unwrap();
    let prog: &mut Xdp = ebpf.program_mut("mg_relay").unwrap().try_into().unwrap();
    prog.load().expect("the verifier accepts the program");
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();

    // A stream pair: A = 10.99.1.1:30000 facing the gateway, B = 10.99.2.1:30002 facing the ITSP.
    let (a, b) = (key("10.99.1.1:30000"), key("10.99.2.1:30002"));
    let cfg = |peer: Key, sdp: &str, sig: &str, sdp_port: u16| Config {
        peer,
        sdp_ip: be(sdp),
        sdp_port: sdp_port.to_be(),
        flags: FLAG_KERNEL,
        signalling_ip: be(sig),
        generation: 0,
    };
    configs
        .insert(a, cfg(b, "10.99.1.2", "10.99.1.2", 6000), 0)
        .unwrap();
    configs
        .insert(b, cfg(a, "10.99.2.2", "10.99.2.2", 7000), 0)
        .unwrap();
    states.insert(a, State::default(), 0).unwrap();
    states.insert(b, State::default(), 0).unwrap();
    // A user-space stream (not FLAG_KERNEL) and its state.
    let u = key("10.99.1.1:30004");
    configs
        .insert(
            u,
            Config {
                flags: 0,
                ..cfg(b, "10.99.1.2", "10.99.1.2", 6004)
            },
            0,
        )
        .unwrap();
    states.insert(u, State::default(), 0).unwrap();

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

    struct Case {
        name: &'static str,
        packet: Vec<u8>,
        ingress: u32,
        verdict: u32,
        output: Option<Vec<u8>>,
    }
    let unchanged = |p: &Vec<u8>| Some(p.clone());
    let cases = vec![
        Case {
            name: "ARP passes untouched",
            packet: arp.clone(),
            ingress: gw,
            verdict: XDP_PASS,
            output: unchanged(&arp),
        },
        Case {
            name: "SIP passes untouched",
            packet: sip.clone(),
            ingress: gw,
            verdict: XDP_PASS,
            output: unchanged(&sip),
        },
        Case {
            name: "fragment passes untouched",
            packet: fragment.clone(),
            ingress: gw,
            verdict: XDP_PASS,
            output: unchanged(&fragment),
        },
        Case {
            name: "truncated packet passes untouched",
            packet: truncated.clone(),
            ingress: gw,
            verdict: XDP_PASS,
            output: unchanged(&truncated),
        },
        Case {
            name: "media port without a stream is dropped",
            packet: packet("10.99.1.2:6000", "10.99.1.1:30010", 64, true, false),
            ingress: gw,
            verdict: XDP_DROP,
            output: None,
        },
        Case {
            name: "user-space stream passes",
            packet: packet("10.99.1.2:6004", "10.99.1.1:30004", 64, true, false),
            ingress: gw,
            verdict: XDP_PASS,
            output: None,
        },
        Case {
            name: "unknown source before latching is dropped",
            packet: packet("10.99.1.9:6000", "10.99.1.1:30000", 64, true, false),
            ingress: gw,
            verdict: XDP_DROP,
            output: None,
        },
        Case {
            name: "TTL 1 is dropped",
            packet: packet("10.99.1.2:6000", "10.99.1.1:30000", 1, true, false),
            ingress: gw,
            verdict: XDP_DROP,
            output: None,
        },
        Case {
            name: "first packet from the SDP address latches and is redirected to the ITSP side",
            packet: from_gw.clone(),
            ingress: gw,
            verdict: XDP_REDIRECT,
            output: Some(expected(
                &from_gw,
                "10.99.2.1:30002",
                "10.99.2.2:7000",
                it_mac,
                IT_MAC,
                false,
            )),
        },
        Case {
            name: "VLAN-tagged packet is rewritten behind the tag",
            packet: from_gw_vlan.clone(),
            ingress: gw,
            verdict: XDP_REDIRECT,
            output: Some(expected(
                &from_gw_vlan,
                "10.99.2.1:30002",
                "10.99.2.2:7000",
                it_mac,
                IT_MAC,
                true,
            )),
        },
        Case {
            name: "UDP checksum 0 stays 0",
            packet: from_gw_nocsum.clone(),
            ingress: gw,
            verdict: XDP_REDIRECT,
            output: Some(expected(
                &from_gw_nocsum,
                "10.99.2.1:30002",
                "10.99.2.2:7000",
                it_mac,
                IT_MAC,
                false,
            )),
        },
        Case {
            name: "another port from the latched IP is dropped (strict source)",
            packet: packet("10.99.1.2:6002", "10.99.1.1:30000", 64, true, false),
            ingress: gw,
            verdict: XDP_DROP,
            output: None,
        },
        Case {
            name: "reverse direction goes to the latched source of A",
            packet: from_it.clone(),
            ingress: it,
            verdict: XDP_REDIRECT,
            output: Some(expected(
                &from_it,
                "10.99.1.1:30000",
                "10.99.1.2:6000",
                gw_mac,
                GW_MAC,
                false,
            )),
        },
        Case {
            name: "egress on the ingress device uses XDP_TX",
            packet: packet("10.99.2.2:7000", "10.99.2.1:30002", 64, true, false),
            ingress: gw,
            verdict: XDP_TX,
            output: None,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
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
    let sa = states.get(&a, 0).unwrap();
    assert_eq!(sa.latched_source(), Some("10.99.1.2:6000".parse().unwrap()));
    assert_eq!(sa.rx_packets, 3, "three accepted packets on A");
    assert_eq!(sa.drops, 2, "unknown source and strict source");
    let sb = states.get(&b, 0).unwrap();
    assert_eq!(sb.tx_packets, 3, "three packets left through B's endpoint");
    assert_ne!(sa.last_seen_ns, 0);

    // Renegotiation (new generation) re-opens learning: a new source on the new SDP IP latches.
    configs
        .insert(
            a,
            Config {
                generation: 1,
                ..cfg(b, "10.99.1.2", "10.99.1.2", 6010)
            },
            0,
        )
        .unwrap();
    let moved = packet("10.99.1.2:6010", "10.99.1.1:30000", 64, true, false);
    assert_eq!(test_run(fd, &moved, gw).0, XDP_REDIRECT);
    assert_eq!(
        states.get(&a, 0).unwrap().latched_source(),
        Some("10.99.1.2:6010".parse().unwrap())
    );

    // media-handover: a new source of the latched stream is followed, not dropped.
    configs
        .insert(
            a,
            Config {
                flags: FLAG_KERNEL | FLAG_HANDOVER,
                generation: 1,
                ..cfg(b, "10.99.1.2", "10.99.1.2", 6010)
            },
            0,
        )
        .unwrap();
    let roamed = packet("198.51.100.7:4000", "10.99.1.1:30000", 64, true, false);
    assert_eq!(
        test_run(fd, &roamed, gw).0,
        XDP_REDIRECT,
        "handover follows"
    );
    assert_eq!(
        states.get(&a, 0).unwrap().latched_source(),
        Some("198.51.100.7:4000".parse().unwrap())
    );
    // asymmetric: any source is accepted and nothing is learned.
    configs
        .insert(
            a,
            Config {
                flags: FLAG_KERNEL | FLAG_ASYMMETRIC,
                generation: 2,
                ..cfg(b, "10.99.1.2", "10.99.1.2", 6010)
            },
            0,
        )
        .unwrap();
    let stranger = packet("192.0.2.99:5555", "10.99.1.1:30000", 64, true, false);
    assert_eq!(
        test_run(fd, &stranger, gw).0,
        XDP_REDIRECT,
        "asymmetric accepts"
    );
    assert_eq!(
        states.get(&a, 0).unwrap().latched_source(),
        None,
        "and learns nothing"
    );

    // Unresolved next hop: passed to the kernel (the socket path relays it).
    configs
        .insert(b, cfg(a, "10.99.2.77", "10.99.2.2", 7000), 0)
        .unwrap();
    states.insert(b, State::default(), 0).unwrap();
    assert_eq!(
        test_run(fd, &moved, gw).0,
        XDP_PASS,
        "unresolved neighbour passes"
    );
}
