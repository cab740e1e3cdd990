//! One pinned AF_XDP relay loop. It owns one UMEM shared by its sockets (one per device for
//! each queue it serves), so a frame received on one device is transmitted on another without
//! a copy, and a private stream table updated only by [`WorkerCmd`]s drained at the top of each
//! iteration. Nothing in the loop allocates: tables are sized at start-up.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use std::sync::Mutex;

use super::xsk::{Umem, XskSocket};
use crate::media::{Admission, DropReason, Latch, StreamId, StreamStats};
use crate::wire::UdpFrame;

/// Descriptors handled per ring per iteration.
const BATCH: u32 = 64;
/// Empty iterations before a wakeup-mode worker sleeps in `poll` (notes: idle wake-ups are
/// expensive in VMs, a short spin keeps throughput stable).
const SPINS_BEFORE_SLEEP: u32 = 2000;
/// Longest sleep in `poll`, which bounds command latency.
const POLL_MS: i32 = 10;

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

/// A device this worker transmits on and the sockets it receives on.
pub struct Port {
    pub socket: XskSocket,
    /// The device's MAC, the source of frames sent on it.
    pub mac: [u8; 6],
    /// IPv4 addresses of the device: streams whose local address is one of them leave here.
    pub addresses: Vec<Ipv4Addr>,
}

struct Stream {
    peer: StreamId,
    local: SocketAddrV4,
    latch: Latch,
    shared: SharedLatch,
    stats: Arc<StreamStats>,
    /// Index into the worker's ports of the device holding `local`.
    egress: usize,
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
    /// Rewritten in place; transmit it on this port.
    Transmit(usize),
    /// Handed to the kernel (next hop unknown); the frame is free again.
    SlowPath,
    /// Dropped and counted.
    Drop,
}

/// Sends a complete IPv4 packet through a raw socket (`IPPROTO_RAW`, header included): the
/// kernel routes it and resolves the next hop. Only for packets whose next hop the worker does
/// not know yet, so a syscall here is off the fast path.
fn send_raw(fd: RawFd, packet: &[u8], dest: SocketAddrV4) -> bool {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dest.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `addr` are valid for the duration of the call.
    let n = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    n == packet.len() as isize
}

/// How often a worker merges its latency samples into [`WorkerStats::latency`].
const LATENCY_PUBLISH: std::time::Duration = std::time::Duration::from_secs(1);

/// A histogram of nanoseconds from 1 ns to 1 s at 2 significant digits, sized once (recording
/// never allocates).
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1_000_000_000, 2).expect("valid histogram bounds")
}

/// Per-worker counters read by the status endpoint.
pub struct WorkerStats {
    pub rx: AtomicU64,
    pub tx: AtomicU64,
    pub dropped: AtomicU64,
    /// Packets sent through the kernel's slow path because their next hop was not known yet.
    pub no_neighbour: AtomicU64,
    pub iterations: AtomicU64,
    /// Relay-added latency (ns), merged from the worker once a second.
    pub latency: Mutex<Histogram<u64>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            no_neighbour: AtomicU64::new(0),
            iterations: AtomicU64::new(0),
            latency: Mutex::new(new_latency_histogram()),
        }
    }
}

/// Settings of one worker.
pub struct WorkerSetup {
    pub core: usize,
    pub busy_poll: bool,
    pub capacity: usize,
    pub umem: Umem,
    pub ports: Vec<Port>,
    pub commands: Receiver<WorkerCmd>,
    pub neighbour_misses: Sender<Ipv4Addr>,
    /// Raw IPv4 socket for the slow path (packets whose next hop is not known yet).
    pub raw: OwnedFd,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
}

pub struct Worker {
    setup: WorkerSetup,
    free: Vec<u64>,
    streams: HashMap<SocketAddrV4, Stream>,
    local_of: HashMap<StreamId, SocketAddrV4>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// Whether a port has TX descriptors the kernel has not consumed.
    tx_pending: Vec<bool>,
    /// Relay-added latency samples since the last publication.
    latency: Histogram<u64>,
    last_publish: Instant,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> Self {
        let frames = setup.umem.frames;
        let capacity = setup.capacity;
        let ports = setup.ports.len();
        Worker {
            free: (0..frames)
                .map(|f| u64::from(f) * u64::from(super::xsk::FRAME_SIZE))
                .collect(),
            streams: HashMap::with_capacity(capacity),
            local_of: HashMap::with_capacity(capacity),
            neighbours: HashMap::with_capacity(4096),
            tx_pending: vec![false; ports],
            latency: new_latency_histogram(),
            last_publish: Instant::now(),
            setup,
        }
    }

    pub fn run(mut self) {
        pin_to_core(self.setup.core);
        let mut idle = 0u32;
        while !self.setup.stop.load(Relaxed) {
            for _ in 0..BATCH {
                match self.setup.commands.try_recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(_) => break,
                }
            }
            let mut work = 0;
            let batch_start = Instant::now();
            let tx_before = self.setup.stats.tx.load(Relaxed);
            for p in 0..self.setup.ports.len() {
                self.reclaim_and_fill(p);
                work += self.receive(p);
            }
            self.flush_tx();
            let sent = self.setup.stats.tx.load(Relaxed) - tx_before;
            if sent > 0 {
                // One sample per batch, weighted by its packets: the time from taking the batch
                // off the RX rings to handing it to the kernel for transmission.
                let ns = batch_start.elapsed().as_nanos() as u64;
                self.latency.saturating_record_n(ns, sent);
            }
            self.publish_latency();
            self.setup.stats.iterations.fetch_add(1, Relaxed);
            if work > 0 {
                idle = 0;
            } else if !self.setup.busy_poll {
                idle += 1;
                if idle > SPINS_BEFORE_SLEEP {
                    self.sleep();
                }
            }
        }
    }

    fn apply(&mut self, cmd: WorkerCmd) {
        match cmd {
            WorkerCmd::Add {
                id,
                peer,
                local,
                latch,
                shared,
                stats,
            } => {
                if self.streams.len() >= self.setup.capacity {
                    return;
                }
                let egress = self
                    .setup
                    .ports
                    .iter()
                    .position(|p| p.addresses.contains(local.ip()))
                    .unwrap_or(0);
                self.local_of.insert(id, local);
                self.streams.insert(
                    local,
                    Stream {
                        peer,
                        local,
                        latch,
                        shared,
                        stats,
                        egress,
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

    /// Returns completed TX frames to the free list and tops the fill ring up.
    fn reclaim_and_fill(&mut self, p: usize) {
        let sock = &mut self.setup.ports[p].socket;
        let done = sock.completion.available(BATCH * 4);
        for i in 0..done {
            self.free.push(sock.completion.peek(i));
        }
        sock.completion.release(done);
        let room = sock.fill.free(BATCH).min(self.free.len() as u32);
        for _ in 0..room {
            let addr = self.free.pop().expect("counted");
            sock.fill.push(addr);
        }
        if room > 0 {
            sock.fill.submit();
        }
        if sock.fill.needs_wakeup() {
            sock.kick_rx();
        }
    }

    /// Handles one batch of received frames on port `p`; returns how many arrived.
    fn receive(&mut self, p: usize) -> u32 {
        let n = self.setup.ports[p].socket.rx.available(BATCH);
        if n == 0 {
            return 0;
        }
        let now = Instant::now();
        for i in 0..n {
            let desc = self.setup.ports[p].socket.rx.peek(i);
            match self.forward(desc.addr, desc.len, now) {
                Outcome::Transmit(egress) => {
                    let tx = &mut self.setup.ports[egress].socket.tx;
                    if tx.free(1) > 0 {
                        tx.push(desc);
                        self.tx_pending[egress] = true;
                        self.setup.stats.tx.fetch_add(1, Relaxed);
                    } else {
                        self.free.push(desc.addr);
                        self.setup.stats.dropped.fetch_add(1, Relaxed);
                    }
                }
                Outcome::SlowPath => self.free.push(desc.addr),
                Outcome::Drop => {
                    self.free.push(desc.addr);
                    self.setup.stats.dropped.fetch_add(1, Relaxed);
                }
            }
        }
        self.setup.ports[p].socket.rx.release(n);
        self.setup.stats.rx.fetch_add(u64::from(n), Relaxed);
        n
    }

    /// Latches, rewrites and picks the egress port for one frame.
    fn forward(&mut self, addr: u64, len: u32, now: Instant) -> Outcome {
        let frame = self.setup.umem.frame_mut(addr, len);
        let Some(mut view) = UdpFrame::parse(frame) else {
            return Outcome::Drop;
        };
        let (src, dst) = (view.source(), view.destination());
        let Some(stream) = self.streams.get(&dst) else {
            return Outcome::Drop;
        };
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
        let udp_len = view.udp_len() as u64;
        stream.stats.record_rx(1, udp_len, now);
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
        let egress = peer.egress;
        let Some(dmac) = self.neighbours.get(dest.ip()).copied() else {
            // Slow path: the kernel routes the rewritten IP packet and resolves the next hop;
            // the refresher learns the MAC from it and tells every worker.
            let _ = self.setup.neighbour_misses.try_send(*dest.ip());
            self.setup.stats.no_neighbour.fetch_add(1, Relaxed);
            view.rewrite(peer.local, dest, [0; 6], [0; 6]);
            if send_raw(self.setup.raw.as_raw_fd(), view.ip_packet(), dest) {
                peer.stats.record_tx(1, udp_len);
            } else {
                peer.stats.record_drop(DropReason::SendFailed);
            }
            return Outcome::SlowPath;
        };
        view.rewrite(peer.local, dest, self.setup.ports[egress].mac, dmac);
        peer.stats.record_tx(1, udp_len);
        Outcome::Transmit(egress)
    }

    /// Merges this worker's samples into the shared histogram once a second (the only lock the
    /// worker takes, and never per packet).
    fn publish_latency(&mut self) {
        if self.latency.is_empty() || self.last_publish.elapsed() < LATENCY_PUBLISH {
            return;
        }
        self.last_publish = Instant::now();
        if let Ok(mut shared) = self.setup.stats.latency.lock() {
            let _ = shared.add(&self.latency);
        }
        self.latency.reset();
    }

    /// Publishes queued TX descriptors and kicks the kernel while any are outstanding
    /// (copy mode moves at most a few dozen frames per kick).
    fn flush_tx(&mut self) {
        for (p, pending) in self.tx_pending.iter_mut().enumerate() {
            let sock = &mut self.setup.ports[p].socket;
            if *pending {
                sock.tx.submit();
            }
            if *pending || sock.tx.outstanding() > 0 {
                sock.kick_tx();
                *pending = sock.tx.outstanding() > 0;
            }
        }
    }

    fn sleep(&self) {
        let mut set = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 32];
        let mut n = 0;
        for p in self.setup.ports.iter().take(set.len()) {
            set[n] = libc::pollfd {
                fd: p.socket.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        // SAFETY: `set` holds `n` valid pollfd entries.
        unsafe { libc::poll(set.as_mut_ptr(), n as libc::nfds_t, POLL_MS) };
    }
}

/// Pins the calling thread to one CPU.
fn pin_to_core(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(core, error = %std::io::Error::last_os_error(), "cannot pin AF_XDP worker");
        }
    }
}
