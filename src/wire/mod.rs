//! Zero-copy views of the packet headers the user-space fast path reads and rewrites
//! (Ethernet with one optional VLAN tag, IPv4, UDP), and RFC 1624 incremental checksums.
//!
//! [`UdpFrame::parse`] checks every length once; after that the accessors cannot panic.

use std::net::{Ipv4Addr, SocketAddrV4};

const ETH_HEADER: usize = 14;
const VLAN_HEADER: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const PROTO_UDP: u8 = 17;

/// An Ethernet frame carrying an unfragmented IPv4/UDP datagram without IP options.
#[derive(Debug)]
pub struct UdpFrame<'a> {
    buf: &'a mut [u8],
    ip: usize,
}

impl<'a> UdpFrame<'a> {
    /// Checks the headers; `None` for anything that is not a plain IPv4/UDP frame.
    pub fn parse(buf: &'a mut [u8]) -> Option<Self> {
        let mut ethertype = u16::from_be_bytes([*buf.get(12)?, *buf.get(13)?]);
        let mut ip = ETH_HEADER;
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            ethertype = u16::from_be_bytes([*buf.get(16)?, *buf.get(17)?]);
            ip += VLAN_HEADER;
        }
        if ethertype != ETHERTYPE_IPV4 || buf.len() < ip + IPV4_HEADER + UDP_HEADER {
            return None;
        }
        let h = &buf[ip..];
        let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
        if h[0] != 0x45 || h[9] != PROTO_UDP || fragment {
            return None;
        }
        Some(UdpFrame { buf, ip })
    }

    fn udp(&self) -> usize {
        self.ip + IPV4_HEADER
    }

    pub fn source(&self) -> SocketAddrV4 {
        let (ip, udp) = (self.ip, self.udp());
        SocketAddrV4::new(
            Ipv4Addr::new(
                self.buf[ip + 12],
                self.buf[ip + 13],
                self.buf[ip + 14],
                self.buf[ip + 15],
            ),
            u16::from_be_bytes([self.buf[udp], self.buf[udp + 1]]),
        )
    }

    pub fn destination(&self) -> SocketAddrV4 {
        let (ip, udp) = (self.ip, self.udp());
        SocketAddrV4::new(
            Ipv4Addr::new(
                self.buf[ip + 16],
                self.buf[ip + 17],
                self.buf[ip + 18],
                self.buf[ip + 19],
            ),
            u16::from_be_bytes([self.buf[udp + 2], self.buf[udp + 3]]),
        )
    }

    pub fn ttl(&self) -> u8 {
        self.buf[self.ip + 8]
    }

    /// The IPv4 packet (header onwards), for handing the frame to the kernel's IP layer.
    pub fn ip_packet(&self) -> &[u8] {
        &self.buf[self.ip..]
    }

    /// Bytes of UDP payload: what every tier counts in stream statistics (what a socket
    /// receives), so a stream's byte counts do not depend on the tier that carried it.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - self.udp() - 8
    }

    /// The UDP payload (an RTP or RTCP packet), read for quality statistics.
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.udp() + UDP_HEADER..]
    }

    /// Readdresses the datagram from `src` to `dst` with TTL − 1 and new MACs, updating both
    /// checksums incrementally. A UDP checksum of 0 ("none") stays 0.
    pub fn rewrite(&mut self, src: SocketAddrV4, dst: SocketAddrV4, smac: [u8; 6], dmac: [u8; 6]) {
        let (ip, udp) = (self.ip, self.udp());
        let b = &mut *self.buf;
        b[0..6].copy_from_slice(&dmac);
        b[6..12].copy_from_slice(&smac);

        let old_addrs: [u8; 8] = b[ip + 12..ip + 20].try_into().expect("length checked");
        let mut new_addrs = [0u8; 8];
        new_addrs[..4].copy_from_slice(&src.ip().octets());
        new_addrs[4..].copy_from_slice(&dst.ip().octets());
        let old_ttl_word = [b[ip + 8], b[ip + 9]];
        let new_ttl_word = [b[ip + 8].saturating_sub(1), b[ip + 9]];
        b[ip + 8] = new_ttl_word[0];
        b[ip + 12..ip + 20].copy_from_slice(&new_addrs);
        let ip_sum = u16::from_be_bytes([b[ip + 10], b[ip + 11]]);
        let ip_sum = update(
            update(ip_sum, &old_addrs, &new_addrs),
            &old_ttl_word,
            &new_ttl_word,
        );
        b[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());

        let old_ports: [u8; 4] = b[udp..udp + 4].try_into().expect("length checked");
        let mut new_ports = [0u8; 4];
        new_ports[..2].copy_from_slice(&src.port().to_be_bytes());
        new_ports[2..].copy_from_slice(&dst.port().to_be_bytes());
        b[udp..udp + 4].copy_from_slice(&new_ports);
        let udp_sum = u16::from_be_bytes([b[udp + 6], b[udp + 7]]);
        if udp_sum != 0 {
            let s = update(
                update(udp_sum, &old_addrs, &new_addrs),
                &old_ports,
                &new_ports,
            );
            let s = if s == 0 { 0xffff } else { s };
            b[udp + 6..udp + 8].copy_from_slice(&s.to_be_bytes());
        }
    }
}

/// RFC 1624 eq. 3: the checksum after the 16-bit words `old` were replaced by `new`.
pub fn update(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The one's complement checksum of `data` (RFC 1071), for tests and fixtures.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet/IPv4/UDP frame with correct checksums.
    fn frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (IPV4_HEADER + UDP_HEADER + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, ttl, PROTO_UDP, 0, 0]);
        ip.extend_from_slice(&src.ip().octets());
        ip.extend_from_slice(&dst.ip().octets());
        let s = checksum(&ip);
        ip[10..12].copy_from_slice(&s.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut udp = Vec::new();
        udp.extend_from_slice(&src.port().to_be_bytes());
        udp.extend_from_slice(&dst.port().to_be_bytes());
        udp.extend_from_slice(&((UDP_HEADER + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let s = udp_checksum(&ip, &udp);
        udp[6..8].copy_from_slice(&s.to_be_bytes());
        f.extend_from_slice(&udp);
        f
    }

    fn udp_checksum(ip: &[u8], udp: &[u8]) -> u16 {
        let mut pseudo = ip[12..20].to_vec();
        pseudo.extend_from_slice(&[0, PROTO_UDP]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        let mut u = udp.to_vec();
        u[6] = 0;
        u[7] = 0;
        pseudo.extend_from_slice(&u);
        match checksum(&pseudo) {
            0 => 0xffff,
            s => s,
        }
    }

    proptest! {
        #[test]
        fn rewrite_matches_checksums_computed_from_scratch(
            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
            ports in any::<[u16; 4]>(),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            ttl in 2u8..=255,
        ) {
            let (src, dst) = (SocketAddrV4::new(a.into(), ports[0]), SocketAddrV4::new(b.into(), ports[1]));
            let (nsrc, ndst) = (SocketAddrV4::new(c.into(), ports[2]), SocketAddrV4::new(d.into(), ports[3]));
            let mut f = frame(src, dst, &payload, ttl);
            let mut view = UdpFrame::parse(&mut f).unwrap();
            prop_assert_eq!(view.source(), src);
            view.rewrite(nsrc, ndst, [1; 6], [2; 6]);
            prop_assert_eq!(view.destination(), ndst);
            let want = frame(nsrc, ndst, &payload, ttl - 1);
            prop_assert_eq!(&f[12..], &want[12..]);
            prop_assert_eq!(&f[0..6], &[2u8; 6]);
        }

        #[test]
        fn parse_never_panics(mut data in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = UdpFrame::parse(&mut data);
        }
    }

    #[test]
    fn zero_udp_checksum_stays_zero_and_fragments_are_refused() {
        let src = "10.0.0.1:1000".parse().unwrap();
        let dst = "10.0.0.2:2000".parse().unwrap();
        let mut f = frame(src, dst, b"abc", 64);
        f[14 + 20 + 6] = 0;
        f[14 + 20 + 7] = 0;
        UdpFrame::parse(&mut f)
            .unwrap()
            .rewrite(dst, src, [0; 6], [0; 6]);
        assert_eq!(&f[14 + 26..14 + 28], &[0, 0]);
        f[14 + 6] = 0x20;
        assert!(UdpFrame::parse(&mut f).is_none());
    }
}
