//! The media of one call, whichever front end created it (the B2BUA or the NG protocol): a port
//! pair per media line on each side, the data-plane commands that relay between them, and the
//! SDP rewrite that anchors each side's description on mediagate's ports for the other side.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::{Command, Latch, LatchMode, PortPool, StreamId, StreamSpec, StreamStats};
use crate::sdp::{Anchor, Sdp};

#[path = "session_record.rs"]
mod record;
pub use record::{AdoptError, MediaRecord};

/// The two legs of a call: A is the caller's (inbound) leg, B the callee's (outbound) leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a description could not be anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error("no free media ports")]
    NoPorts,
    #[error("answer has more media lines than the offer")]
    MediaMismatch,
    #[error("the anchored description would exceed the SDP size limit")]
    TooLarge,
}

/// Media resources shared by every front end of one control thread (the B2BUA and the NG
/// server): one port pool, one stream id counter, one queue of data-plane commands.
#[derive(Debug)]
pub struct Resources {
    pub pool: PortPool,
    next_stream: StreamId,
    commands: Vec<Command>,
}

/// [`Resources`] as the front ends hold them (single-threaded control plane).
pub type SharedResources = Rc<RefCell<Resources>>;

impl Resources {
    /// Resources for the media port range `first..=last`.
    pub fn shared(first: u16, last: u16) -> SharedResources {
        Rc::new(RefCell::new(Resources {
            pool: PortPool::new(first, last),
            next_stream: 1,
            commands: Vec::new(),
        }))
    }

    /// The allocation context for changes made at `now`.
    pub fn ctx(&mut self, now: Instant) -> MediaCtx<'_> {
        MediaCtx {
            pool: &mut self.pool,
            next_stream: &mut self.next_stream,
            commands: &mut self.commands,
            now,
        }
    }

    /// Takes the queued data-plane commands, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }
}

/// Shared context for allocating streams: the port pool, the stream id counter, the command
/// queue toward the data plane and the current time.
pub struct MediaCtx<'a> {
    pub pool: &'a mut PortPool,
    pub next_stream: &'a mut StreamId,
    pub commands: &'a mut Vec<Command>,
    pub now: Instant,
}

#[derive(Debug)]
struct Pair {
    port: u16,
    rtp: Arc<StreamStats>,
    rtcp: Arc<StreamStats>,
}

#[derive(Debug)]
struct LegMedia {
    local_ip: IpAddr,
    /// What SDP says for `local_ip` (1:1 NAT); `local_ip` itself when `None`.
    advertised: Option<IpAddr>,
    signalling_ip: IpAddr,
    session_id: u64,
    session_version: u64,
    last_sdp: Option<Vec<u8>>,
    /// Per media line; `None` for a line this leg has no ports for (disabled, or not yet offered).
    pairs: Vec<Option<Pair>>,
}

/// All media state of one call.
#[derive(Debug)]
pub struct CallMedia {
    /// Stream ids per media line: A RTP, A RTCP, B RTP, B RTCP are `base..base+4`.
    line_ids: Vec<StreamId>,
    kinds: Vec<String>,
    legs: [LegMedia; 2],
    /// Enabled state of each line, from the latest offer.
    enabled: Vec<bool>,
    /// How new streams of this call learn their peers.
    latch_mode: LatchMode,
}

impl LegMedia {
    fn new(local_ip: IpAddr, signalling_ip: IpAddr) -> Self {
        LegMedia {
            local_ip,
            advertised: None,
            signalling_ip,
            session_id: fastrand::u64(1..u32::MAX as u64),
            session_version: 1,
            last_sdp: None,
            pairs: Vec::new(),
        }
    }
}

fn stream_ids(base: StreamId, side: Side) -> (StreamId, StreamId) {
    let first = base + 2 * side.index() as u64;
    (first, first + 1)
}

impl CallMedia {
    /// The leg whose peer sends to stream `id`, when the stream is one of this call's.
    pub fn side_of(&self, id: StreamId) -> Option<Side> {
        self.line_ids
            .iter()
            .find(|&&base| (base..base + 4).contains(&id))
            .map(|&base| if id - base < 2 { Side::A } else { Side::B })
    }

    /// Media for a call whose legs face `a_local`/`b_local` (mediagate's addresses on each side)
    /// with peers signalling from `a_peer`/`b_peer`.
    pub fn new(a_local: IpAddr, a_peer: IpAddr, b_local: IpAddr, b_peer: IpAddr) -> Self {
        CallMedia {
            line_ids: Vec::new(),
            kinds: Vec::new(),
            legs: [
                LegMedia::new(a_local, a_peer),
                LegMedia::new(b_local, b_peer),
            ],
            enabled: Vec::new(),
            latch_mode: LatchMode::default(),
        }
    }

    /// How the streams this call creates from now on learn their peers.
    pub fn set_latch_mode(&mut self, mode: LatchMode) {
        self.latch_mode = mode;
    }

    /// Writes `address` instead of the local address into SDP sent toward `side`.
    pub fn advertise(&mut self, side: Side, address: Option<IpAddr>) {
        self.legs[side.index()].advertised = address;
    }

    /// Moves `side` to another local address (NG `address family`: the same interface's IPv6
    /// address instead of its IPv4 one, or back). When the address changes, each of the side's
    /// streams is replaced by one on a new port of the new address that keeps sending where the
    /// old one did, so no re-anchoring is needed; the old ports go back to the pool. Returns
    /// whether it changed.
    pub fn rehome(
        &mut self,
        side: Side,
        local: IpAddr,
        advertised: Option<IpAddr>,
        ctx: &mut MediaCtx,
    ) -> Result<bool, AnchorError> {
        let leg = &self.legs[side.index()];
        if leg.local_ip == local && leg.advertised == advertised {
            return Ok(false);
        }
        let remotes: Vec<Option<([Option<SocketAddr>; 2], u32)>> = leg
            .pairs
            .iter()
            .map(|p| {
                p.as_ref()
                    .map(|p| ([p.rtp.remote(), p.rtcp.remote()], p.rtp.clock_rate()))
            })
            .collect();
        self.release_leg(side, ctx);
        let leg = &mut self.legs[side.index()];
        leg.local_ip = local;
        leg.advertised = advertised;
        for (line, remote) in remotes.into_iter().enumerate() {
            let Some((remote, clock_rate)) = remote else {
                continue;
            };
            self.ensure_pair(side, line, ctx)?;
            let (rtp, rtcp) = stream_ids(self.line_ids[line], side);
            let pair = self.legs[side.index()].pairs[line]
                .as_ref()
                .expect("ensured");
            pair.rtp.set_clock_rate(clock_rate);
            for ((id, stats), addr) in [(rtp, &pair.rtp), (rtcp, &pair.rtcp)]
                .into_iter()
                .zip(remote)
            {
                ctx.commands.push(Command::Renegotiate { id, sdp: addr });
                stats.set_remote(addr, false);
            }
        }
        Ok(true)
    }

    /// Replaces the B leg (failover to another trunk): its streams are removed and its ports
    /// freed; the next [`Self::anchor`] allocates new ones.
    pub fn reset_b(&mut self, b_local: IpAddr, b_peer: IpAddr, ctx: &mut MediaCtx) {
        self.release_leg(Side::B, ctx);
        self.legs[Side::B.index()] = LegMedia::new(b_local, b_peer);
    }

    /// Anchors a description received on `from`: makes sure every media line has ports on both
    /// legs, points `from`'s streams at the addresses in `sdp`, and returns the description to
    /// send on the other leg.
    /// A's descriptions are offers and B's answers here (the initial offer/answer, NG); see
    /// [`Self::anchor_as`] for renegotiation, where either side may offer.
    pub fn anchor(
        &mut self,
        from: Side,
        sdp: &Sdp,
        ctx: &mut MediaCtx,
    ) -> Result<Vec<u8>, AnchorError> {
        self.anchor_as(from, sdp, from == Side::A, ctx)
    }

    /// [`Self::anchor`] for a description that is an `offer` (it may add media lines and
    /// re-enable disabled ones) or an answer, whichever side sent it: a re-INVITE or UPDATE
    /// from either leg. The side's streams re-open latching toward the new addresses
    /// (`Command::Renegotiate`), and the `o=` version toward the other side is bumped when the
    /// anchored description changed.
    pub fn anchor_as(
        &mut self,
        from: Side,
        sdp: &Sdp,
        offer: bool,
        ctx: &mut MediaCtx,
    ) -> Result<Vec<u8>, AnchorError> {
        let to = from.other();
        for (i, m) in sdp.media().iter().enumerate() {
            if i == self.line_ids.len() {
                if !offer {
                    // An answer cannot add media lines (RFC 3264 §6).
                    return Err(AnchorError::MediaMismatch);
                }
                self.line_ids.push(*ctx.next_stream);
                *ctx.next_stream += 4;
                self.kinds.push(m.kind.clone());
                self.enabled.push(true);
            }
            if offer {
                // A line may change its type in place (audio to T.38 `image` for a fax).
                self.kinds[i].clone_from(&m.kind);
            }
            let enabled = m.rtp.port() != 0;
            if offer || !enabled {
                self.enabled[i] = enabled;
            }
            if !self.enabled[i] {
                // A line disabled by either side frees its ports at once.
                for side in [Side::A, Side::B] {
                    self.release_pair(side, i, ctx);
                }
                continue;
            }
            for side in [from, to] {
                self.ensure_pair(side, i, ctx)?;
            }
            let base = self.line_ids[i];
            let (rtp, rtcp) = stream_ids(base, from);
            let leg = &self.legs[from.index()];
            let pair = leg.pairs[i].as_ref().expect("ensured");
            // Set before the command, so that a tier reading it on `Renegotiate` sees it.
            pair.rtp.set_clock_rate(m.clock_rate.unwrap_or(0));
            for (id, stats, addr) in [(rtp, &pair.rtp, m.rtp), (rtcp, &pair.rtcp, m.rtcp)] {
                ctx.commands.push(Command::Renegotiate {
                    id,
                    sdp: Some(addr),
                });
                stats.set_remote(Some(addr), false);
            }
        }
        self.description_for(to, sdp)
    }

    /// The description mediagate last sent toward `side`, to repeat unchanged (same `o=`
    /// version) in a re-INVITE that only refreshes the session (RFC 4028).
    pub fn last_description(&self, side: Side) -> Option<&[u8]> {
        self.legs[side.index()].last_sdp.as_deref()
    }

    /// Where each media line of `side` currently sends (RTP, RTCP), to put back with
    /// [`Self::restore`] when an offer from that side is rejected.
    pub fn remotes(&self, side: Side) -> Vec<Option<[Option<SocketAddr>; 2]>> {
        self.legs[side.index()]
            .pairs
            .iter()
            .map(|p| p.as_ref().map(|p| [p.rtp.remote(), p.rtcp.remote()]))
            .collect()
    }

    /// Points `side`'s streams back at the addresses of a [`Self::remotes`] snapshot (a
    /// rejected re-offer: the previous session description stays in force, RFC 3264 §8).
    pub fn restore(
        &mut self,
        side: Side,
        snapshot: &[Option<[Option<SocketAddr>; 2]>],
        ctx: &mut MediaCtx,
    ) {
        for (line, remote) in snapshot.iter().enumerate() {
            let (Some(remote), Some(Some(pair))) =
                (remote, self.legs[side.index()].pairs.get(line))
            else {
                continue;
            };
            let (rtp, rtcp) = stream_ids(self.line_ids[line], side);
            for ((id, stats), addr) in [(rtp, &pair.rtp), (rtcp, &pair.rtcp)]
                .into_iter()
                .zip(*remote)
            {
                ctx.commands.push(Command::Renegotiate { id, sdp: addr });
                stats.set_remote(addr, false);
            }
        }
    }

    fn ensure_pair(
        &mut self,
        side: Side,
        line: usize,
        ctx: &mut MediaCtx,
    ) -> Result<(), AnchorError> {
        let leg = &mut self.legs[side.index()];
        if leg.pairs.len() <= line {
            leg.pairs.resize_with(line + 1, || None);
        }
        if leg.pairs[line].is_some() {
            return Ok(());
        }
        let port = ctx.pool.allocate().ok_or(AnchorError::NoPorts)?;
        self.install_pair(side, line, port, ctx);
        Ok(())
    }

    /// Starts the RTP and RTCP streams of `line` on `side` on the pair `port`/`port + 1`, taken
    /// from the pool by the caller.
    fn install_pair(&mut self, side: Side, line: usize, port: u16, ctx: &mut MediaCtx) {
        let leg = &mut self.legs[side.index()];
        if leg.pairs.len() <= line {
            leg.pairs.resize_with(line + 1, || None);
        }
        let base = self.line_ids[line];
        let (rtp, rtcp) = stream_ids(base, side);
        let (peer_rtp, peer_rtcp) = stream_ids(base, side.other());
        let mk = |id, peer, port: u16| {
            let stats = Arc::new(StreamStats::new(ctx.now, None));
            let spec = StreamSpec {
                id,
                peer,
                rtcp: port % 2 == 1,
                local: SocketAddr::new(leg.local_ip, port),
                latch: Latch {
                    mode: self.latch_mode,
                    ..Latch::new(None, leg.signalling_ip)
                },
                stats: stats.clone(),
            };
            (spec, stats)
        };
        let (rtp_spec, rtp_stats) = mk(rtp, peer_rtp, port);
        let (rtcp_spec, rtcp_stats) = mk(rtcp, peer_rtcp, port + 1);
        ctx.commands.push(Command::Add(rtp_spec));
        ctx.commands.push(Command::Add(rtcp_spec));
        leg.pairs[line] = Some(Pair {
            port,
            rtp: rtp_stats,
            rtcp: rtcp_stats,
        });
    }

    /// The anchored description for `side`, with its `o=` version bumped when it changed.
    fn description_for(&mut self, side: Side, sdp: &Sdp) -> Result<Vec<u8>, AnchorError> {
        let leg = &mut self.legs[side.index()];
        let ports: Vec<u16> = (0..sdp.media().len())
            .map(|i| {
                leg.pairs
                    .get(i)
                    .and_then(Option::as_ref)
                    .map_or(0, |p| p.port)
            })
            .collect();
        let mut anchor = Anchor {
            address: leg.advertised.unwrap_or(leg.local_ip),
            rtp_ports: &ports,
            session_id: leg.session_id,
            session_version: leg.session_version,
        };
        let mut body = sdp.anchored(&anchor).map_err(|_| AnchorError::TooLarge)?;
        if leg.last_sdp.as_ref().is_some_and(|last| *last != body) {
            leg.session_version += 1;
            anchor.session_version = leg.session_version;
            body = sdp.anchored(&anchor).map_err(|_| AnchorError::TooLarge)?;
        }
        leg.last_sdp = Some(body.clone());
        Ok(body)
    }

    /// Stops the streams of one media line on one side and frees their ports.
    fn release_pair(&mut self, side: Side, line: usize, ctx: &mut MediaCtx) {
        let Some(p) = self.legs[side.index()]
            .pairs
            .get_mut(line)
            .and_then(Option::take)
        else {
            return;
        };
        let (rtp, rtcp) = stream_ids(self.line_ids[line], side);
        ctx.commands.push(Command::Remove(rtp));
        ctx.commands.push(Command::Remove(rtcp));
        ctx.pool.release(p.port);
    }

    fn release_leg(&mut self, side: Side, ctx: &mut MediaCtx) {
        for line in 0..self.legs[side.index()].pairs.len() {
            self.release_pair(side, line, ctx);
        }
    }

    /// Frees every port and stops every stream of the call.
    pub fn release(&mut self, ctx: &mut MediaCtx) {
        self.release_leg(Side::A, ctx);
        self.release_leg(Side::B, ctx);
    }

    /// The latest packet on any stream of the call, or `None` when it has no streams.
    pub fn last_activity(&self) -> Option<Instant> {
        self.legs
            .iter()
            .flat_map(|l| l.pairs.iter().flatten())
            .flat_map(|p| [p.rtp.last_activity(), p.rtcp.last_activity()])
            .max()
    }

    /// Every stream of one leg (RTP and RTCP of each media line), for the leg's totals in the
    /// call's CDR ([`crate::cdr::MediaCounters::from_streams`]).
    pub fn streams(&self, side: Side) -> impl Iterator<Item = &StreamStats> + '_ {
        self.legs[side.index()]
            .pairs
            .iter()
            .flatten()
            .flat_map(|p| [&*p.rtp, &*p.rtcp])
    }

    /// `/status` entries for the streams of one leg.
    pub fn status(&self, side: Side) -> Vec<Value> {
        let leg = &self.legs[side.index()];
        let stream = |local: SocketAddr, s: &StreamStats| {
            json!({
                "local": local.to_string(),
                "remote": s.remote().map(|r| r.to_string()),
                "tier": s.tier().name(),
                "latched": s.latched(),
                "rx_packets": s.rx_packets(),
                "rx_bytes": s.rx_bytes(),
                "tx_packets": s.tx_packets(),
                "tx_bytes": s.tx_bytes(),
                "drops": s.total_drops(),
                "kernel_packets": s.kernel_packets(),
                "quality": s.quality().map(|q| json!({
                    "packets_expected": q.packets_expected,
                    "packets_lost": q.packets_lost,
                    "loss_ratio": q.loss_ratio,
                    "jitter_ms": q.jitter_ms,
                    "mos": q.mos,
                })),
            })
        };
        leg.pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .map(|(i, p)| {
                let mut v = stream(SocketAddr::new(leg.local_ip, p.port), &p.rtp);
                v["kind"] = json!(self.kinds[i]);
                v["rtcp"] = stream(SocketAddr::new(leg.local_ip, p.port + 1), &p.rtcp);
                v
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &[u8] = b"v=0\r\no=a 1 1 IN IP4 10.99.1.2\r\ns=-\r\nc=IN IP4 10.99.1.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
    const ANSWER: &[u8] = b"v=0\r\no=b 9 9 IN IP4 10.99.2.2\r\ns=-\r\nc=IN IP4 10.99.2.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n";

    #[test]
    fn offer_and_answer_are_anchored_and_released() {
        let resources = Resources::shared(30000, 30009);
        let mut resources = resources.borrow_mut();
        let mut ctx = resources.ctx(Instant::now());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut m = CallMedia::new(
            ip("10.99.1.1"),
            ip("10.99.1.2"),
            ip("10.99.2.1"),
            ip("10.99.2.2"),
        );
        let to_b = m
            .anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx)
            .unwrap();
        let to_b = Sdp::parse(&to_b).unwrap();
        assert_eq!(to_b.media()[0].rtp, "10.99.2.1:30002".parse().unwrap());
        let to_a = m
            .anchor(Side::B, &Sdp::parse(ANSWER).unwrap(), &mut ctx)
            .unwrap();
        let to_a = Sdp::parse(&to_a).unwrap();
        assert_eq!(to_a.media()[0].rtp, "10.99.1.1:30000".parse().unwrap());
        assert_eq!(ctx.pool.free(), 3);
        m.release(&mut ctx);
        assert_eq!(ctx.pool.free(), 5);
        let adds = ctx
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Add(_)))
            .count();
        let removes = ctx
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Remove(_)))
            .count();
        assert_eq!((adds, removes), (4, 4));
    }

    #[test]
    fn a_line_rejected_by_the_answer_frees_its_ports() {
        let resources = Resources::shared(30000, 30009);
        let mut resources = resources.borrow_mut();
        let mut ctx = resources.ctx(Instant::now());
        let ip = "10.0.0.1".parse().unwrap();
        let mut m = CallMedia::new(ip, ip, ip, ip);
        m.anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx)
            .unwrap();
        assert_eq!(ctx.pool.free(), 3);
        let rejected = std::str::from_utf8(ANSWER)
            .unwrap()
            .replace("m=audio 7000", "m=audio 0");
        let to_a = m
            .anchor(Side::B, &Sdp::parse(rejected.as_bytes()).unwrap(), &mut ctx)
            .unwrap();
        assert_eq!(Sdp::parse(&to_a).unwrap().media()[0].rtp.port(), 0);
        assert_eq!(ctx.pool.free(), 5);
    }

    #[test]
    fn rehoming_a_side_moves_its_ports_to_the_new_address() {
        let resources = Resources::shared(30000, 30009);
        let mut resources = resources.borrow_mut();
        let mut ctx = resources.ctx(Instant::now());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = ip("10.0.0.1");
        let mut m = CallMedia::new(v4, v4, v4, v4);
        m.anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx)
            .unwrap();
        assert_eq!(
            m.rehome(Side::A, v4, None, &mut ctx),
            Ok(false),
            "same address"
        );
        m.anchor(Side::B, &Sdp::parse(ANSWER).unwrap(), &mut ctx)
            .unwrap();
        ctx.commands.clear();
        assert_eq!(m.rehome(Side::B, ip("fd00::1"), None, &mut ctx), Ok(true));
        assert_eq!(ctx.pool.free(), 3, "B's old port freed, a new one taken");
        let renegotiated: Vec<Option<SocketAddr>> = ctx
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Renegotiate { sdp, .. } => Some(*sdp),
                _ => None,
            })
            .collect();
        assert_eq!(
            renegotiated,
            vec![
                Some("10.99.2.2:7000".parse().unwrap()),
                Some("10.99.2.2:7001".parse().unwrap())
            ],
            "the new streams keep B's destination"
        );
        let to_b = m
            .anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx)
            .unwrap();
        let text = String::from_utf8(to_b).unwrap();
        assert!(text.contains("c=IN IP6 fd00::1\r\n"), "{text}");
        assert_eq!(ctx.pool.free(), 3);
        m.release(&mut ctx);
        assert_eq!(ctx.pool.free(), 5);
    }

    #[test]
    fn re_offer_from_b_may_add_a_line_and_a_rejected_offer_is_restored() {
        let resources = Resources::shared(30000, 30009);
        let mut resources = resources.borrow_mut();
        let mut ctx = resources.ctx(Instant::now());
        let ip = "10.0.0.1".parse().unwrap();
        let mut m = CallMedia::new(ip, ip, ip, ip);
        m.anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx)
            .unwrap();
        m.anchor(Side::B, &Sdp::parse(ANSWER).unwrap(), &mut ctx)
            .unwrap();
        let before = m.remotes(Side::B);
        let video = [ANSWER, b"m=video 7002 RTP/AVP 96\r\n"].concat();
        let to_a = m
            .anchor_as(Side::B, &Sdp::parse(&video).unwrap(), true, &mut ctx)
            .unwrap();
        assert_eq!(Sdp::parse(&to_a).unwrap().media().len(), 2);
        assert_eq!(ctx.pool.free(), 1, "the new line has ports on both sides");
        m.restore(Side::B, &before, &mut ctx);
        assert_eq!(m.remotes(Side::B)[0], before[0]);
    }

    #[test]
    fn answer_with_extra_media_is_refused_and_exhaustion_reported() {
        let resources = Resources::shared(30000, 30001);
        let mut resources = resources.borrow_mut();
        let mut ctx = resources.ctx(Instant::now());
        let ip = "10.0.0.1".parse().unwrap();
        let mut m = CallMedia::new(ip, ip, ip, ip);
        assert_eq!(
            m.anchor(Side::A, &Sdp::parse(OFFER).unwrap(), &mut ctx),
            Err(AnchorError::NoPorts)
        );
        let mut m = CallMedia::new(ip, ip, ip, ip);
        assert_eq!(
            m.anchor(Side::B, &Sdp::parse(ANSWER).unwrap(), &mut ctx),
            Err(AnchorError::MediaMismatch)
        );
    }
}
