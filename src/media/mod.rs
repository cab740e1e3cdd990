//! The media session layer shared by every front end and every forwarding tier: port allocation,
//! the stream model, the latching rule, per-stream counters and RTP quality statistics.
//!
//! Signalling decides *what* to relay and hands [`Command`]s to a data plane; the data plane
//! decides per packet with [`Latch::admit`] and counts into [`StreamStats`].

pub mod ports;
pub mod quality;
pub mod session;
pub mod stats;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use ports::PortPool;
pub use quality::{Quality, QualityCounts, RtpHeader, RtpQuality};
pub use stats::{DropReason, KernelTotals, StreamStats, Tier};

/// Identifies one relayed socket (one RTP or RTCP port of one call leg).
pub type StreamId = u64;

/// The latching rule of DESIGN.md, one definition for every tier.
///
/// A stream starts by sending to the address from SDP. The first packet whose source IP is the SDP
/// IP or the leg's signalling source IP latches the stream to that exact source (so a NATed phone
/// works); after that only the latched source is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latch {
    /// Address from the peer's SDP, once known.
    pub sdp: Option<SocketAddr>,
    /// Source IP of the leg's SIP messages.
    pub signalling_ip: IpAddr,
    /// The source learned from the first acceptable packet.
    pub latched: Option<SocketAddr>,
    pub mode: LatchMode,
}

/// How a stream learns its peer's address (rtpengine's NG flags name the variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatchMode {
    /// Latch once on the SDP or signalling IP, then accept only that source (the default).
    #[default]
    Symmetric,
    /// Never learn: send to the SDP address, accept any source (`asymmetric`).
    Asymmetric,
    /// Latch as symmetric, then follow any new source (`media-handover`: a phone moving between
    /// networks).
    Handover,
}

/// What to do with a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted from the latched source.
    Accept,
    /// Accepted and the stream is now latched to this source.
    Latch,
    /// Dropped for this reason.
    Drop(DropReason),
}

impl Latch {
    pub fn new(sdp: Option<SocketAddr>, signalling_ip: IpAddr) -> Self {
        Latch {
            sdp,
            signalling_ip,
            latched: None,
            mode: LatchMode::Symmetric,
        }
    }

    /// Decides on a packet from `source`, latching when the rule allows.
    pub fn admit(&mut self, source: SocketAddr) -> Admission {
        let decision = self.judge(self.latched, source);
        if decision == Admission::Latch {
            self.latched = Some(source);
        }
        decision
    }

    /// The rule itself, for a latched state kept elsewhere (an atomic shared by several
    /// relay threads): the caller records the latch when the answer is [`Admission::Latch`].
    pub fn judge(&self, latched: Option<SocketAddr>, source: SocketAddr) -> Admission {
        if self.mode == LatchMode::Asymmetric {
            return Admission::Accept;
        }
        match latched {
            Some(l) if l == source => Admission::Accept,
            Some(_) if self.mode == LatchMode::Handover => Admission::Latch,
            Some(_) => Admission::Drop(DropReason::StrictSource),
            None => {
                let ip = source.ip();
                if Some(ip) == self.sdp.map(|s| s.ip()) || ip == self.signalling_ip {
                    Admission::Latch
                } else {
                    Admission::Drop(DropReason::UnknownSource)
                }
            }
        }
    }

    /// Where packets for this stream's peer go: the latched source, else the SDP address.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched
            .or(self.sdp)
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
    }

    /// New SDP for the leg re-opens learning (RFC 3264 re-offer, NG offer/answer).
    pub fn renegotiate(&mut self, sdp: Option<SocketAddr>) {
        self.sdp = sdp;
        self.latched = None;
    }
}

/// One relayed socket: packets received on `local` are checked by `latch` and sent out of the
/// paired stream's socket to the paired stream's destination.
#[derive(Debug)]
pub struct StreamSpec {
    pub id: StreamId,
    /// The other leg's stream of the same media line and component (RTP↔RTP, RTCP↔RTCP).
    pub peer: StreamId,
    pub local: SocketAddr,
    pub latch: Latch,
    pub stats: Arc<StreamStats>,
    /// An RTCP stream (the odd port of a pair): the socket tier copies what it relays for the
    /// HEP capture.
    pub rtcp: bool,
}

/// Session changes the control thread hands to a data plane.
#[derive(Debug)]
pub enum Command {
    /// Start relaying on a new stream (both streams of a pair are added before either is used).
    Add(StreamSpec),
    /// New SDP for a stream's leg: new destination, learning re-opened.
    Renegotiate {
        id: StreamId,
        sdp: Option<SocketAddr>,
    },
    /// Stop relaying and close the stream's socket.
    Remove(StreamId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn latches_on_sdp_ip_then_is_strict() {
        let mut l = Latch::new(Some(sa("10.0.0.2:6000")), "10.0.0.9".parse().unwrap());
        assert_eq!(l.destination(), Some(sa("10.0.0.2:6000")));
        assert_eq!(
            l.admit(sa("10.0.0.7:6000")),
            Admission::Drop(DropReason::UnknownSource)
        );
        assert_eq!(l.admit(sa("10.0.0.2:7000")), Admission::Latch);
        assert_eq!(l.destination(), Some(sa("10.0.0.2:7000")));
        assert_eq!(l.admit(sa("10.0.0.2:7000")), Admission::Accept);
        assert_eq!(
            l.admit(sa("10.0.0.2:6000")),
            Admission::Drop(DropReason::StrictSource)
        );
        l.renegotiate(Some(sa("10.0.0.3:6000")));
        assert_eq!(l.admit(sa("10.0.0.3:6002")), Admission::Latch);
    }

    #[test]
    fn latches_on_signalling_ip_behind_nat() {
        let mut l = Latch::new(Some(sa("192.168.1.5:6000")), "203.0.113.7".parse().unwrap());
        assert_eq!(l.admit(sa("203.0.113.7:40000")), Admission::Latch);
        assert_eq!(l.destination(), Some(sa("203.0.113.7:40000")));
    }

    #[test]
    fn asymmetric_never_learns_and_handover_follows_the_source() {
        let sig = "10.0.0.9".parse().unwrap();
        let mut asym = Latch::new(Some(sa("10.0.0.2:6000")), sig);
        asym.mode = LatchMode::Asymmetric;
        assert_eq!(asym.admit(sa("192.0.2.1:1234")), Admission::Accept);
        assert_eq!(asym.destination(), Some(sa("10.0.0.2:6000")));

        let mut handover = Latch::new(Some(sa("10.0.0.2:6000")), sig);
        handover.mode = LatchMode::Handover;
        assert_eq!(
            handover.admit(sa("192.0.2.1:1234")),
            Admission::Drop(DropReason::UnknownSource),
            "the first latch follows the symmetric rule"
        );
        assert_eq!(handover.admit(sa("10.0.0.2:6000")), Admission::Latch);
        assert_eq!(handover.admit(sa("198.51.100.7:4000")), Admission::Latch);
        assert_eq!(handover.destination(), Some(sa("198.51.100.7:4000")));
    }

    #[test]
    fn no_destination_without_usable_sdp() {
        assert_eq!(
            Latch::new(None, "1.1.1.1".parse().unwrap()).destination(),
            None
        );
        assert_eq!(
            Latch::new(Some(sa("0.0.0.0:6000")), "1.1.1.1".parse().unwrap()).destination(),
            None
        );
    }
}
