//! Rust mirrors of `bpf/include/mg_abi.h`. Sizes and offsets are asserted at compile time so a
//! change on one side that is not made on the other fails the build.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};

/// `struct mg_key`: a mediagate media endpoint (network byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct mg_config`, written by user space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub peer: Key,
    pub sdp_ip: u32,
    pub sdp_port: u16,
    pub flags: u16,
    pub signalling_ip: u32,
    pub generation: u32,
}

/// `struct mg_state`, written by the program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub latched: u64,
    pub generation: u32,
    pub pad: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    pub last_seen_ns: u64,
}

/// `struct mg_settings`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub port_first: u16,
    pub port_last: u16,
    pub pad: u32,
}

/// `MG_F_KERNEL`: forward this stream in the kernel.
pub const FLAG_KERNEL: u16 = 1;
/// `MG_F_XSK`: hand this stream's packets to the AF_XDP socket of their device and queue.
pub const FLAG_XSK: u16 = 2;
/// `MG_F_ASYMMETRIC`: never learn; accept any source, send to the SDP address.
pub const FLAG_ASYMMETRIC: u16 = 4;
/// `MG_F_HANDOVER`: after the first latch, follow any new source.
pub const FLAG_HANDOVER: u16 = 8;
/// `MG_MAX_QUEUES`: queues per device slot in XSKMAP keys.
pub const MAX_QUEUES: u32 = 64;
/// `MG_MAX_DEVICES`.
pub const MAX_DEVICES: u32 = 16;
/// `MG_LATCHED`.
pub const LATCHED: u64 = 1 << 48;

/// Names of `enum mg_counter`, in index order.
pub const COUNTERS: [&str; 11] = [
    "forwarded",
    "pass_not_media",
    "pass_userspace",
    "pass_no_neighbour",
    "drop_miss",
    "drop_unknown_source",
    "drop_strict_source",
    "drop_no_destination",
    "drop_ttl",
    "drop_redirect",
    "to_afxdp",
];

const _: () = {
    assert!(size_of::<Key>() == 8);
    assert!(size_of::<Config>() == 24);
    assert!(offset_of!(Config, sdp_ip) == 8);
    assert!(offset_of!(Config, flags) == 14);
    assert!(offset_of!(Config, generation) == 20);
    assert!(size_of::<State>() == 64);
    assert!(offset_of!(State, rx_packets) == 16);
    assert!(offset_of!(State, last_seen_ns) == 56);
    assert!(size_of::<Settings>() == 8);
};

// SAFETY: plain-old-data C structs with no padding the kernel could leak or misread (explicit
// pad fields), valid for any bit pattern.
unsafe impl aya::Pod for Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for State {}
// SAFETY: as above.
unsafe impl aya::Pod for Settings {}

impl Key {
    pub fn new(addr: SocketAddrV4) -> Self {
        Key {
            ip: u32::from(*addr.ip()).to_be(),
            port: addr.port().to_be(),
            pad: 0,
        }
    }
}

impl State {
    /// The source this stream latched to, if any.
    pub fn latched_source(&self) -> Option<SocketAddrV4> {
        if self.latched & LATCHED == 0 {
            return None;
        }
        let ip = u32::from_be((self.latched >> 16) as u32);
        let port = u16::from_be(self.latched as u16);
        Some(SocketAddrV4::new(Ipv4Addr::from(ip), port))
    }
}
