//! Rust mirrors of `bpf/include/mg_abi.h`. Sizes and offsets are asserted at compile time so a
//! change on one side that is not made on the other fails the build.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::media::RtpQuality;

/// `MG_MAX_STREAMS`: the stream maps are indexed by local UDP port.
pub const MAX_STREAMS: u32 = 65536;
/// `MG_FAMILY_NONE`: no stream on this port.
pub const FAMILY_NONE: u8 = 0;
/// `MG_FAMILY_V4`.
pub const FAMILY_V4: u8 = 4;
/// `MG_FAMILY_V6`.
pub const FAMILY_V6: u8 = 6;

/// `struct mg_addr`: an IPv4 address in the last word, or an IPv6 address, in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    pub w: [u32; 4],
}

/// `struct mg_config`, written by user space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub local: Addr,
    pub sdp: Addr,
    pub signalling: Addr,
    /// Network byte order.
    pub sdp_port: u16,
    pub flags: u16,
    /// Host byte order: the paired stream's index.
    pub peer_port: u16,
    pub family: u8,
    pub pad: u8,
    pub generation: u32,
    /// RTP clock rate of the stream's payload; 0 = unknown (no jitter).
    pub clock_rate: u32,
}

/// `struct mg_state`, written by the program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// `struct bpf_spin_lock`: owned by the kernel, never read here.
    pub lock: u32,
    pub generation: u32,
    pub latched: u64,
    pub latched6: Addr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: u64,
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds of the last forwarded packet.
    pub last_seen_ns: u64,
    /// `struct mg_quality`: the program's RFC 3550 loss and jitter state for the stream.
    pub quality: RtpQuality,
}

/// `struct mg_settings`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub port_first: u16,
    pub port_last: u16,
    /// Largest UDP payload a kernel-tier stream relays (`media.max_packet_bytes`).
    pub max_payload: u16,
    pub pad: u16,
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
pub const COUNTERS: [&str; 12] = [
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
    "drop_oversize",
];

const _: () = {
    assert!(size_of::<Addr>() == 16);
    assert!(size_of::<Config>() == 64);
    assert!(offset_of!(Config, sdp) == 16);
    assert!(offset_of!(Config, signalling) == 32);
    assert!(offset_of!(Config, sdp_port) == 48);
    assert!(offset_of!(Config, peer_port) == 52);
    assert!(offset_of!(Config, family) == 54);
    assert!(offset_of!(Config, generation) == 56);
    assert!(offset_of!(Config, clock_rate) == 60);
    assert!(size_of::<RtpQuality>() == 56);
    assert!(offset_of!(RtpQuality, ssrc) == 8);
    assert!(offset_of!(RtpQuality, max_seq) == 16);
    assert!(offset_of!(RtpQuality, cycles) == 20);
    assert!(offset_of!(RtpQuality, jitter) == 36);
    assert!(offset_of!(RtpQuality, flags) == 52);
    assert!(size_of::<State>() == 120);
    assert!(offset_of!(State, quality) == 64);
    assert!(offset_of!(State, last_seen_ns) == 56);
    assert!(offset_of!(State, latched) == 8);
    assert!(offset_of!(State, latched6) == 16);
    assert!(offset_of!(State, rx_packets) == 32);
    assert!(offset_of!(State, drops) == 48);
    assert!(size_of::<Settings>() == 8);
};

// SAFETY: plain-old-data C structs with no padding the kernel could leak or misread (explicit
// pad fields), valid for any bit pattern.
unsafe impl aya::Pod for Addr {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for State {}
// SAFETY: as above.
unsafe impl aya::Pod for Settings {}

impl Addr {
    /// The program's form of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Addr {
                w: [0, 0, 0, u32::from_ne_bytes(v4.octets())],
            },
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Addr {
                    w: [word(0), word(4), word(8), word(12)],
                }
            }
        }
    }

    fn v6(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        for (chunk, word) in o.chunks_mut(4).zip(self.w) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ipv6Addr::from(o)
    }
}

/// The map family of an address.
pub fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

impl Config {
    /// Sets the SDP destination (`None`: not known yet).
    pub fn set_sdp(&mut self, sdp: Option<SocketAddr>) {
        let (addr, port) = match sdp {
            Some(a) => (Addr::new(a.ip()), a.port().to_be()),
            None => (Addr::default(), 0),
        };
        self.sdp = addr;
        self.sdp_port = port;
    }

    /// Whether `other` (a stream being added, on the same port) is the stream this entry of a
    /// previous run described: same local address, signalling address and family. Its state
    /// (latched source, counters) then still applies; its SDP comes next and is compared then.
    pub fn same_stream(&self, other: &Config) -> bool {
        (self.local, self.signalling, self.family) == (other.local, other.signalling, other.family)
    }
}

impl State {
    /// The source this stream latched to, if any, for a stream of `family`.
    pub fn latched_source(&self, family: u8) -> Option<SocketAddr> {
        if self.latched & LATCHED == 0 {
            return None;
        }
        let port = u16::from_be(self.latched as u16);
        let ip = if family == FAMILY_V6 {
            IpAddr::V6(self.latched6.v6())
        } else {
            IpAddr::V4(Ipv4Addr::from(((self.latched >> 16) as u32).to_ne_bytes()))
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_in_header_byte_order() {
        let v4 = Addr::new("10.99.1.2".parse().unwrap());
        assert_eq!(v4.w[3].to_ne_bytes(), [10, 99, 1, 2]);
        let ip6: Ipv6Addr = "fd99:1::2".parse().unwrap();
        assert_eq!(Addr::new(IpAddr::V6(ip6)).v6(), ip6);
        let st = State {
            latched: LATCHED | (u64::from(v4.w[3]) << 16) | u64::from(6000u16.to_be()),
            ..State::default()
        };
        assert_eq!(
            st.latched_source(FAMILY_V4),
            Some("10.99.1.2:6000".parse().unwrap())
        );
    }
}
