//! The per-frame work of an AF_XDP worker, apart from its rings: a private stream table fed by
//! [`WorkerCmd`]s, latching through the shared [`Latch`] rules, the in-place rewrite and the
//! choice of egress. The worker feeds it batches taken off its RX rings; the benchmarks feed it
//! batches from memory, so what they measure is exactly the worker's code.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::dataplane::tap::TapSender;
use crate::media::{Admission, DropReason, Latch, RtpHeader, RtpQuality, StreamId, StreamStats};
use crate::wire::UdpFrame;

/// A frame descriptor as the rings carry it: offset in the frame memory and length.
pub type Desc = libc::xdp_desc;

/// A latched source shared by every worker (a stream's packets may arrive on any queue):
/// `LATCHED | ip << 16 | port`, 0 while learning.
pub type SharedLatch = Arc<AtomicU64>;
const LATCHED: u64 = 1 << 48;

fn pack(a: SocketAddrV4) -> u64 {
    LATCHED | (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> Option<SocketAddrV4> {
    (v & LATCHED != 0).then(|| SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16))
}

/// Session and neighbour changes for a worker.
pub enum WorkerCmd {
    Add {
        id: StreamId,
        peer: StreamId,
        local: SocketAddrV4,
        latch: Latch,
        shared: SharedLatch,
        stats: Arc<StreamStats>,
        /// An RTCP stream: what is relayed is copied to the capture tap, when there is one.
        rtcp: bool,
    },
    Renegotiate {
        id: StreamId,
        sdp: Option<SocketAddr>,
    },
    Remove(StreamId),
    /// The link-layer address of a next hop, from the kernel's neighbour table.
    Neighbour {
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
}

/// A device frames leave on, as the relay needs it.
pub struct Egress {
    /// The device's MAC, the source of frames sent on it.
    pub mac: [u8; 6],
    /// IPv4 addresses of the device: streams whose local address is one of them leave here.
    pub addresses: Vec<Ipv4Addr>,
}

/// Where a batch's frames go: the worker's TX rings, free list and raw socket, or a
/// benchmark's vectors.
pub trait Sink {
    /// Queues a rewritten frame for transmission on egress `port`; false when the ring is full.
    fn transmit(&mut self, port: usize, desc: Desc) -> bool;
    /// Hands a rewritten IP packet whose next hop is not known yet to the kernel; true if sent.
    fn slow_path(&mut self, ip_packet: &[u8], dest: SocketAddrV4) -> bool;
    /// Takes back a frame that is not transmitted.
    fn recycle(&mut self, addr: u64);
}

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub tx: u64,
    pub dropped: u64,
    /// Sent through the slow path because the next hop was not known yet.
    pub no_neighbour: u64,
}

struct Stream {
    id: StreamId,
    peer: StreamId,
    rtcp: bool,
    local: SocketAddrV4,
    latch: Latch,
    shared: SharedLatch,
    stats: Arc<StreamStats>,
    /// Index of the egress device holding `local`.
    egress: usize,
    /// RFC 3550 loss and jitter of the RTP this worker received for the stream (a `Cell`: the
    /// table is borrowed shared while the peer is looked up, and only this worker touches it).
    quality: Cell<RtpQuality>,
}

impl Stream {
    /// Where this stream's remote is: the shared latched source, else the SDP address.
    fn destination(&self) -> Option<SocketAddrV4> {
        if let Some(l) = unpack(self.shared.load(Relaxed)) {
            return Some(l);
        }
        match self.latch.sdp {
            Some(SocketAddr::V4(a)) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
            _ => None,
        }
    }
}

/// What became of one received frame.
enum Outcome {
    /// Rewritten in place; transmit it on this egress.
    Transmit(usize),
    /// Rewritten, next hop unknown: hand the IP packet to the kernel, and count it on the
    /// stream it leaves from (`payload` bytes) once sent.
    SlowPath {
        dest: SocketAddrV4,
        leaving: Arc<StreamStats>,
        payload: u64,
    },
    /// Dropped and counted.
    Drop,
}

/// A worker's stream table and per-frame relay logic. Sized at start-up: nothing allocates
/// after that.
pub struct Relay {
    capacity: usize,
    egress: Vec<Egress>,
    streams: HashMap<SocketAddrV4, Stream>,
    local_of: HashMap<StreamId, SocketAddrV4>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// Largest UDP payload relayed; larger ones are dropped (`media.max_packet_bytes`).
    max_payload: usize,
    /// The RTCP capture hand-off, when HEP capture is on.
    tap: Option<TapSender>,
}

impl Relay {
    /// A relay for at most `capacity` streams leaving on `egress` devices, relaying UDP payloads
    /// of up to `max_payload` bytes.
    pub fn new(capacity: usize, egress: Vec<Egress>, max_payload: usize) -> Self {
        Relay {
            max_payload,
            capacity,
            egress,
            streams: HashMap::with_capacity(capacity),
            local_of: HashMap::with_capacity(capacity),
            neighbours: HashMap::with_capacity(4096),
            tap: None,
        }
    }

    /// Copies the RTCP this relay forwards to `tap` (HEP capture).
    pub fn with_tap(mut self, tap: Option<TapSender>) -> Self {
        self.tap = tap;
        self
    }

    /// Applies a session or neighbour change (streams beyond the capacity are ignored: the
    /// socket tier still has them).
    pub fn apply(&mut self, cmd: WorkerCmd) {
        match cmd {
            WorkerCmd::Add {
                id,
                peer,
                local,
                latch,
                shared,
                stats,
                rtcp,
            } => {
                if self.streams.len() >= self.capacity {
                    return;
                }
                let egress = self
                    .egress
                    .iter()
                    .position(|p| p.addresses.contains(local.ip()))
                    .unwrap_or(0);
                self.local_of.insert(id, local);
                self.streams.insert(
                    local,
                    Stream {
                        id,
                        peer,
                        rtcp,
                        local,
                        latch,
                        shared,
                        stats,
                        egress,
                        quality: Cell::new(RtpQuality::default()),
                    },
                );
            }
            WorkerCmd::Renegotiate { id, sdp } => {
                if let Some(s) = self.local_of.get(&id).and_then(|l| self.streams.get_mut(l)) {
                    s.latch.renegotiate(sdp);
                }
            }
            WorkerCmd::Remove(id) => {
                if let Some(local) = self.local_of.remove(&id) {
                    self.streams.remove(&local);
                }
            }
            WorkerCmd::Neighbour { ip, mac } => {
                if self.neighbours.len() < self.neighbours.capacity()
                    || self.neighbours.contains_key(&ip)
                {
                    self.neighbours.insert(ip, mac);
                }
            }
        }
    }

    /// Relays one batch of received frames (`descs` into `frames`, the frame memory): each is
    /// latched, rewritten in place and handed to `sink`.
    pub fn relay_batch(
        &mut self,
        frames: &mut [u8],
        descs: &[Desc],
        sink: &mut impl Sink,
        now: Instant,
    ) -> BatchCounts {
        let mut counts = BatchCounts::default();
        for desc in descs {
            let start = (desc.addr as usize).min(frames.len());
            let end = (start + desc.len as usize).min(frames.len());
            let frame = &mut frames[start..end];
            match self.forward(frame, now) {
                Outcome::Transmit(egress) => {
                    if sink.transmit(egress, *desc) {
                        counts.tx += 1;
                    } else {
                        sink.recycle(desc.addr);
                        counts.dropped += 1;
                    }
                }
                Outcome::SlowPath {
                    dest,
                    leaving,
                    payload,
                } => {
                    counts.no_neighbour += 1;
                    let sent = UdpFrame::parse(frame)
                        .is_some_and(|view| sink.slow_path(view.ip_packet(), dest));
                    if sent {
                        leaving.record_tx(1, payload);
                    } else {
                        leaving.record_drop(DropReason::SendFailed);
                        counts.dropped += 1;
                    }
                    sink.recycle(desc.addr);
                }
                Outcome::Drop => {
                    sink.recycle(desc.addr);
                    counts.dropped += 1;
                }
            }
        }
        counts
    }

    /// Latches, rewrites and picks the egress for one frame.
    fn forward(&mut self, frame: &mut [u8], now: Instant) -> Outcome {
        let Some(mut view) = UdpFrame::parse(frame) else {
            return Outcome::Drop;
        };
        let (src, dst) = (view.source(), view.destination());
        let Some(stream) = self.streams.get(&dst) else {
            return Outcome::Drop;
        };
        // Before latching, as in the socket tier: an oversize packet never teaches a source.
        if view.payload_len() > self.max_payload {
            stream.stats.record_drop(DropReason::Oversize);
            return Outcome::Drop;
        }
        let current = unpack(stream.shared.load(Relaxed));
        let admission = match stream
            .latch
            .judge(current.map(SocketAddr::V4), SocketAddr::V4(src))
        {
            Admission::Latch => {
                // Several workers may race to latch (or, with handover, re-latch) the same
                // stream: the first one wins.
                match stream.shared.compare_exchange(
                    current.map_or(0, pack),
                    pack(src),
                    Relaxed,
                    Relaxed,
                ) {
                    Ok(_) => {
                        stream.stats.set_remote(Some(SocketAddr::V4(src)), true);
                        Admission::Accept
                    }
                    Err(winner) => stream
                        .latch
                        .judge(unpack(winner).map(SocketAddr::V4), SocketAddr::V4(src)),
                }
            }
            other => other,
        };
        if let Admission::Drop(reason) = admission {
            stream.stats.record_drop(reason);
            return Outcome::Drop;
        }
        let payload = view.payload_len() as u64;
        stream.stats.record_rx(1, payload, now);
        if let Some(h) = RtpHeader::parse(view.payload()) {
            let mut q = stream.quality.get();
            q.record(
                h,
                stream.stats.nanos_since_epoch(now),
                stream.stats.clock_rate(),
            );
            stream.quality.set(q);
            stream.stats.store_quality(q.counts());
        }
        let Some(peer) = self
            .local_of
            .get(&stream.peer)
            .and_then(|l| self.streams.get(l))
        else {
            stream.stats.record_drop(DropReason::NoDestination);
            return Outcome::Drop;
        };
        let Some(dest) = peer.destination() else {
            stream.stats.record_drop(DropReason::NoDestination);
            return Outcome::Drop;
        };
        if view.ttl() <= 1 {
            stream.stats.record_drop(DropReason::SendFailed);
            return Outcome::Drop;
        }
        if let (true, Some(tap)) = (stream.rtcp, &self.tap) {
            let (from, to) = (SocketAddr::V4(src), SocketAddr::V4(stream.local));
            tap.copy(stream.id, from, to, view.payload());
        }
        let egress = peer.egress;
        let Some(dmac) = self.neighbours.get(dest.ip()).copied() else {
            // Slow path: the kernel routes the rewritten IP packet and resolves the next hop.
            view.rewrite(peer.local, dest, [0; 6], [0; 6]);
            return Outcome::SlowPath {
                dest,
                leaving: peer.stats.clone(),
                payload,
            };
        };
        view.rewrite(peer.local, dest, self.egress[egress].mac, dmac);
        peer.stats.record_tx(1, payload);
        Outcome::Transmit(egress)
    }
}
