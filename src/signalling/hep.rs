//! SIP capture for Homer: every SIP message mediagate receives or sends is mirrored to a HEP v3
//! collector (`[capture] hep`, or the peer's trunk's own `hep`, or none for a trunk with
//! `hep = false`), one UDP datagram per message, with the addresses and ports it travelled
//! between and its arrival or departure time. Sending never blocks the control loop: a datagram
//! the socket cannot take is dropped and counted.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

#[path = "hep_rtcp.rs"]
pub mod rtcp;

use crate::config::{CaptureConfig, Config, Transport, TrunkCapture};
use crate::dataplane::tap::RtcpCopy;
use crate::metrics::prometheus::Direction;
use crate::sip::message::Message;
use crate::sip::transaction::Target;

/// HEP v3 generic chunk types (vendor 0) that mediagate writes.
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_S: u16 = 0x0009;
    pub const TIME_US: u16 = 0x000a;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION: u16 = 0x0011;
}

/// HEP protocol types: SIP, and RTCP reports as JSON ([`rtcp`]).
const PROTO_SIP: u8 = 1;
const PROTO_RTCP: u8 = 5;

/// One captured message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Where the message came from (the peer for a received one, mediagate for a sent one).
    pub src: SocketAddr,
    /// Where it went.
    pub dst: SocketAddr,
    /// UDP, or TCP (TLS too) for the IP protocol chunk.
    pub transport: Transport,
    /// When it was received or sent.
    pub time: SystemTime,
    /// `capture.agent_id`.
    pub agent_id: u32,
    /// HEP protocol type: 1 (SIP) or 5 (RTCP report as JSON).
    pub proto: u8,
    /// The SIP message as on the wire, or the RTCP report's JSON.
    pub payload: &'a [u8],
    /// The Call-ID, so Homer correlates without parsing.
    pub correlation: Option<&'a str>,
}

fn push_chunk(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((6 + data.len()) as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// The HEP v3 datagram of `p`: `HEP3`, total length, then the chunks. `None` when it would not
/// fit HEP's 16-bit length (a SIP message over ~64 KiB).
pub fn encode(p: &Packet<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.payload.len() + 128);
    out.extend_from_slice(b"HEP3\0\0");
    match (p.src.ip(), p.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            push_chunk(&mut out, chunk::IP_FAMILY, &[2]);
            push_chunk(&mut out, chunk::IPV4_SRC, &s.octets());
            push_chunk(&mut out, chunk::IPV4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            push_chunk(&mut out, chunk::IP_FAMILY, &[10]);
            push_chunk(&mut out, chunk::IPV6_SRC, &v6(s).octets());
            push_chunk(&mut out, chunk::IPV6_DST, &v6(d).octets());
        }
    }
    let proto = match p.transport {
        Transport::Udp => 17,
        _ => 6,
    };
    push_chunk(&mut out, chunk::IP_PROTO, &[proto]);
    push_chunk(&mut out, chunk::SRC_PORT, &p.src.port().to_be_bytes());
    push_chunk(&mut out, chunk::DST_PORT, &p.dst.port().to_be_bytes());
    let since = p.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    push_chunk(
        &mut out,
        chunk::TIME_S,
        &(since.as_secs() as u32).to_be_bytes(),
    );
    push_chunk(
        &mut out,
        chunk::TIME_US,
        &since.subsec_micros().to_be_bytes(),
    );
    push_chunk(&mut out, chunk::PROTO_TYPE, &[p.proto]);
    push_chunk(&mut out, chunk::AGENT_ID, &p.agent_id.to_be_bytes());
    if let Some(c) = p.correlation {
        push_chunk(&mut out, chunk::CORRELATION, c.as_bytes());
    }
    push_chunk(&mut out, chunk::PAYLOAD, p.payload);
    let total = u16::try_from(out.len()).ok()?;
    out[4..6].copy_from_slice(&total.to_be_bytes());
    Some(out)
}

/// The capture sockets (one per IP family, bound on first use so that a trunk's collector of
/// another family than `[capture] hep` works too).
pub struct Hep {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    agent_id: u32,
    /// Messages not captured (socket full, collector unreachable, too big).
    dropped: u64,
}

impl Hep {
    /// Capture as `config` says; nothing is sent until a message has a collector.
    pub fn new(config: &CaptureConfig) -> Hep {
        if let Some(collector) = config.hep {
            tracing::info!(%collector, "SIP capture: HEP v3 to the collector");
        }
        Hep {
            v4: None,
            v6: None,
            agent_id: config.agent_id,
            dropped: 0,
        }
    }

    /// Where a message exchanged with `peer` goes: its trunk's `hep`, else `[capture] hep`.
    fn collector(config: &Config, peer: IpAddr) -> Option<SocketAddr> {
        let trunk = config.trunk_of_peer(peer).map(|t| config.trunks[t].hep);
        match trunk.unwrap_or_default() {
            TrunkCapture::Off => None,
            TrunkCapture::To(c) => Some(c),
            TrunkCapture::Default => config.capture.hep,
        }
    }

    /// Mirrors one SIP message that went `dir` over `target`, as `config` (the running one,
    /// whose trunks tell the peer's `hep`) says.
    pub fn sip(&mut self, config: &Config, dir: Direction, target: &Target, msg: &Message) {
        let Some(collector) = Self::collector(config, target.remote.ip()) else {
            return;
        };
        let (src, dst) = match dir {
            Direction::Received => (target.remote, target.local),
            Direction::Sent => (target.local, target.remote),
        };
        let payload = msg.to_bytes();
        let packet = Packet {
            src,
            dst,
            transport: target.transport,
            time: SystemTime::now(),
            agent_id: self.agent_id,
            proto: PROTO_SIP,
            payload: &payload,
            correlation: msg.header("Call-ID"),
        };
        self.send(collector, &packet);
    }

    /// Exports one relayed RTCP packet's report (HEP type 5, Homer's JSON) with `call_id` (the
    /// leg's Call-ID) as correlation, to the collector of the sender's trunk. Packets without
    /// a sender or receiver report are not exported.
    pub fn rtcp(&mut self, config: &Config, copy: &RtcpCopy, call_id: &str) {
        let Some(collector) = Self::collector(config, copy.src.ip()) else {
            return;
        };
        let Some(report) = rtcp::report_json(copy.packet()) else {
            return;
        };
        let packet = Packet {
            src: copy.src,
            dst: copy.dst,
            transport: Transport::Udp,
            time: copy.time,
            agent_id: self.agent_id,
            proto: PROTO_RTCP,
            payload: report.as_bytes(),
            correlation: Some(call_id),
        };
        self.send(collector, &packet);
    }

    /// Sends one datagram; a failure is counted and logged (the first, then every 1000th).
    fn send(&mut self, collector: SocketAddr, packet: &Packet<'_>) {
        let sent = match encode(packet) {
            Some(d) => self
                .socket(collector)
                .and_then(|s| s.send_to(&d, collector)),
            None => Err(std::io::Error::other("larger than HEP's 64 KiB")),
        };
        if let Err(error) = sent {
            self.dropped += 1;
            // The first and then every 1000th, so a dead collector cannot flood the log.
            if self.dropped % 1000 == 1 {
                tracing::warn!(%collector, dropped = self.dropped, %error,
                    "HEP capture: datagram not sent to the collector");
            }
        }
    }

    /// The non-blocking socket for `collector`'s family, bound on first use.
    fn socket(&mut self, collector: SocketAddr) -> std::io::Result<&UdpSocket> {
        let (slot, any) = if collector.is_ipv4() {
            (&mut self.v4, "0.0.0.0:0")
        } else {
            (&mut self.v6, "[::]:0")
        };
        if slot.is_none() {
            let socket = UdpSocket::bind(any)?;
            socket.set_nonblocking(true)?;
            *slot = Some(socket);
        }
        Ok(slot.as_ref().expect("bound above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_and_chunks() {
        let p = Packet {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5070".parse().unwrap(),
            transport: Transport::Udp,
            time: UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456),
            agent_id: 9,
            proto: PROTO_SIP,
            payload: b"OPTIONS sip:x SIP/2.0\r\n\r\n",
            correlation: Some("abc"),
        };
        let d = encode(&p).unwrap();
        assert_eq!(&d[..4], b"HEP3");
        assert_eq!(usize::from(u16::from_be_bytes([d[4], d[5]])), d.len());
        // Walk the chunks: every length adds up to the datagram's end.
        let mut at = 6;
        let mut kinds = Vec::new();
        while at < d.len() {
            let kind = u16::from_be_bytes([d[at + 2], d[at + 3]]);
            let len = usize::from(u16::from_be_bytes([d[at + 4], d[at + 5]]));
            if kind == chunk::TIME_US {
                assert_eq!(d[at + 6..at + len], 123_456u32.to_be_bytes());
            }
            kinds.push(kind);
            at += len;
        }
        assert_eq!(at, d.len());
        assert_eq!(kinds.first(), Some(&chunk::IP_FAMILY));
        assert_eq!(kinds.last(), Some(&chunk::PAYLOAD));
        let big = vec![b'x'; 70_000];
        assert!(encode(&Packet { payload: &big, ..p }).is_none());
    }
}
