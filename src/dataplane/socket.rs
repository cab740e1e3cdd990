//! The socket forwarding tier: plain UDP sockets, one per relayed port, served by relay threads
//! with epoll and batched `recvmmsg`/`sendmmsg`.
//!
//! Each thread owns its streams and their sockets; the control thread hands it
//! [`Command`](crate::media::Command)s over a bounded channel that the loop drains at the top of
//! every iteration. The loop allocates nothing: buffers, message headers and the stream table are
//! sized at start.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::tap::TapSender;
use crate::media::{
    Admission, Command, DropReason, Latch, RtpHeader, RtpQuality, StreamId, StreamSpec, StreamStats,
};

/// Packets handled per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 64;
/// Largest datagram relayed; larger ones are truncated by the kernel and dropped.
const MAX_PACKET: usize = 2048;
/// Batches read from one socket before serving others, so one busy stream cannot starve the rest.
const MAX_BATCHES_PER_WAKE: usize = 4;
/// How long `epoll_wait` sleeps with nothing to do, which bounds command latency.
const IDLE_WAIT_MS: i32 = 20;
/// Commands queued per thread before the control thread sees back-pressure.
const COMMAND_QUEUE: usize = 65_536;

/// Handle to the running relay threads.
pub struct SocketRelay {
    shards: Vec<Sender<Op>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Which shard each live stream lives on, so that later commands follow it.
    placement: HashMap<StreamId, usize>,
}

/// A command after the control thread opened the stream's socket.
enum Op {
    Add(StreamSpec, UdpSocket),
    Renegotiate(StreamId, Option<SocketAddr>),
    Remove(StreamId),
}

impl SocketRelay {
    /// Starts `threads` relay threads, each able to hold `capacity` streams and dropping UDP
    /// payloads over `max_packet` bytes; with `tap`, the RTCP they relay is copied there.
    pub fn start(
        threads: usize,
        capacity: usize,
        max_packet: usize,
        tap: Option<TapSender>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads {
            let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
            let mut relay = Relay::new(rx, capacity, max_packet, stop.clone())?;
            relay.tap = tap.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("media-{i}"))
                    .spawn(move || relay.run())?,
            );
            shards.push(tx);
        }
        Ok(SocketRelay {
            shards,
            threads: handles,
            stop,
            placement: HashMap::new(),
        })
    }

    /// Applies a session change. Sockets are bound here, on the caller's thread, so that a bind
    /// failure is reported to the caller instead of lost in a relay thread.
    pub fn apply(&mut self, cmd: Command) -> io::Result<()> {
        let (shard, op) = match cmd {
            Command::Add(spec) => {
                let socket = UdpSocket::bind(spec.local)?;
                socket.set_nonblocking(true)?;
                // Both streams of a pair must live on one thread: shard by the lower id.
                let shard = (spec.id.min(spec.peer) as usize) % self.shards.len();
                self.placement.insert(spec.id, shard);
                (shard, Op::Add(spec, socket))
            }
            Command::Renegotiate { id, sdp } => {
                let Some(&shard) = self.placement.get(&id) else {
                    return Ok(());
                };
                (shard, Op::Renegotiate(id, sdp))
            }
            Command::Remove(id) => {
                let Some(shard) = self.placement.remove(&id) else {
                    return Ok(());
                };
                (shard, Op::Remove(id))
            }
        };
        match self.shards[shard].try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(io::Error::other("media command queue is full")),
            Err(TrySendError::Disconnected(_)) => Err(io::Error::other("media thread has stopped")),
        }
    }
}

impl Drop for SocketRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Slot {
    id: StreamId,
    peer: StreamId,
    /// Where the stream receives, and whether it carries RTCP (copied to the tap).
    local: SocketAddr,
    rtcp: bool,
    socket: UdpSocket,
    latch: Latch,
    stats: Arc<StreamStats>,
    /// RFC 3550 loss and jitter of the RTP received on this socket.
    quality: RtpQuality,
}

/// Pre-allocated buffers for one batch.
struct Batch {
    bufs: Box<[[u8; MAX_PACKET]]>,
    iovecs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    headers: Box<[libc::mmsghdr]>,
    out_names: Box<[libc::sockaddr_storage]>,
    out_headers: Box<[libc::mmsghdr]>,
    out_iovecs: Box<[libc::iovec]>,
}

impl Batch {
    fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero is a
        // valid value; pointers inside are filled in before every syscall.
        let zero_name = || unsafe { zeroed::<libc::sockaddr_storage>() };
        let zero_hdr = || unsafe { zeroed::<libc::mmsghdr>() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Batch {
            bufs: vec![[0u8; MAX_PACKET]; BATCH].into_boxed_slice(),
            iovecs: vec![zero_iov; BATCH].into_boxed_slice(),
            names: (0..BATCH).map(|_| zero_name()).collect(),
            headers: (0..BATCH).map(|_| zero_hdr()).collect(),
            out_names: (0..BATCH).map(|_| zero_name()).collect(),
            out_headers: (0..BATCH).map(|_| zero_hdr()).collect(),
            out_iovecs: vec![zero_iov; BATCH].into_boxed_slice(),
        }
    }
}

// SAFETY: the raw pointers in a batch point only into the batch's own boxed buffers (which do
// not move when the batch moves) and are used only by the relay thread that owns the batch.
unsafe impl Send for Batch {}

struct Relay {
    commands: Receiver<Op>,
    epoll: RawFd,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    index: HashMap<StreamId, usize>,
    batch: Batch,
    /// Largest UDP payload relayed (`media.max_packet_bytes`, at most `MAX_PACKET`).
    max_packet: usize,
    stop: Arc<AtomicBool>,
    /// The RTCP capture hand-off, when HEP capture is on.
    tap: Option<TapSender>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SAFETY: `epoll` is a descriptor this relay created and nothing else closes.
        unsafe { libc::close(self.epoll) };
    }
}

impl Relay {
    fn new(
        commands: Receiver<Op>,
        capacity: usize,
        max_packet: usize,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        // SAFETY: plain syscall without pointers.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Relay {
            max_packet: max_packet.min(MAX_PACKET),
            commands,
            epoll,
            slots: (0..capacity).map(|_| None).collect(),
            free_slots: (0..capacity).rev().collect(),
            index: HashMap::with_capacity(capacity),
            batch: Batch::new(),
            stop,
            tap: None,
        })
    }

    fn run(&mut self) {
        // SAFETY: epoll_event is a plain C struct; all-zero is valid.
        let mut events = [unsafe { zeroed::<libc::epoll_event>() }; BATCH];
        while !self.stop.load(Ordering::Relaxed) {
            for _ in 0..BATCH {
                match self.commands.try_recv() {
                    Ok(op) => self.apply(op),
                    Err(_) => break,
                }
            }
            // SAFETY: `events` is a valid buffer of BATCH entries.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), BATCH as i32, IDLE_WAIT_MS)
            };
            for ev in events.iter().take(n.max(0) as usize) {
                self.relay(ev.u64 as usize);
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Add(spec, socket) => {
                let Some(slot) = self.free_slots.pop() else {
                    // Capacity is sized to the port pool, so this cannot happen; count it anyway.
                    spec.stats.record_drop(DropReason::NoDestination);
                    return;
                };
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: slot as u64,
                };
                // SAFETY: valid epoll fd, valid socket fd, `ev` outlives the call.
                let rc = unsafe {
                    libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut ev)
                };
                if rc < 0 {
                    self.free_slots.push(slot);
                    return;
                }
                // The control thread publishes the SDP remote when it decides it; writing it
                // here, later, could overwrite a latch another tier already learned.
                self.index.insert(spec.id, slot);
                self.slots[slot] = Some(Slot {
                    id: spec.id,
                    peer: spec.peer,
                    local: spec.local,
                    rtcp: spec.rtcp,
                    socket,
                    latch: spec.latch,
                    stats: spec.stats,
                    quality: RtpQuality::default(),
                });
            }
            Op::Renegotiate(id, sdp) => {
                if let Some(s) = self.index.get(&id).and_then(|&i| self.slots[i].as_mut()) {
                    s.latch.renegotiate(sdp);
                }
            }
            Op::Remove(id) => {
                if let Some(slot) = self.index.remove(&id) {
                    if let Some(s) = self.slots[slot].take() {
                        // SAFETY: valid fds; a null event is allowed for EPOLL_CTL_DEL.
                        unsafe {
                            libc::epoll_ctl(
                                self.epoll,
                                libc::EPOLL_CTL_DEL,
                                s.socket.as_raw_fd(),
                                std::ptr::null_mut(),
                            )
                        };
                        debug_assert_eq!(s.id, id);
                    }
                    self.free_slots.push(slot);
                }
            }
        }
    }

    /// Reads batches from one socket and forwards them out of its peer's socket.
    fn relay(&mut self, slot: usize) {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let Some(stream) = self.slots[slot].as_ref() else {
                return;
            };
            let fd = stream.socket.as_raw_fd();
            let received = recv_batch(fd, &mut self.batch);
            if received == 0 {
                return;
            }
            let now = Instant::now();
            let peer_slot = self.index.get(&stream.peer).copied();
            let (dest, peer_fd) = match peer_slot.and_then(|p| self.slots[p].as_ref()) {
                Some(p) => (p.latch.destination(), Some(p.socket.as_raw_fd())),
                None => (None, None),
            };
            let stream = self.slots[slot].as_mut().expect("checked above");
            let (arrival_ns, clock_rate) = (
                stream.stats.nanos_since_epoch(now),
                stream.stats.clock_rate(),
            );
            let mut rtp = false;
            let mut out = 0;
            let (mut accepted, mut rx_bytes) = (0u64, 0u64);
            for i in 0..received {
                let len = self.batch.headers[i].msg_len as usize;
                let truncated = self.batch.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                if truncated || len > self.max_packet {
                    stream.stats.record_drop(DropReason::Oversize);
                    continue;
                }
                let Some(src) = sockaddr_to_std(&self.batch.names[i]) else {
                    continue;
                };
                match stream.latch.admit(src) {
                    Admission::Drop(reason) => {
                        stream.stats.record_drop(reason);
                        continue;
                    }
                    Admission::Latch => stream.stats.set_remote(Some(src), true),
                    Admission::Accept => {}
                }
                accepted += 1;
                rx_bytes += len as u64;
                if let Some(h) = RtpHeader::parse(&self.batch.bufs[i][..len.min(MAX_PACKET)]) {
                    stream.quality.record(h, arrival_ns, clock_rate);
                    rtp = true;
                }
                let Some(dest) = dest else {
                    stream.stats.record_drop(DropReason::NoDestination);
                    continue;
                };
                if let (true, Some(tap)) = (stream.rtcp, &self.tap) {
                    tap.copy(stream.id, src, stream.local, &self.batch.bufs[i][..len]);
                }
                let b = &mut self.batch;
                b.out_iovecs[out] = libc::iovec {
                    iov_base: b.bufs[i].as_mut_ptr().cast(),
                    iov_len: len,
                };
                let name_len = std_to_sockaddr(dest, &mut b.out_names[out]);
                let h = &mut b.out_headers[out].msg_hdr;
                h.msg_name = (&mut b.out_names[out] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = name_len;
                h.msg_iov = &mut b.out_iovecs[out];
                h.msg_iovlen = 1;
                out += 1;
            }
            if accepted > 0 {
                stream.stats.record_rx(accepted, rx_bytes, now);
            }
            if rtp {
                stream.stats.store_quality(stream.quality.counts());
            }
            if out > 0 {
                let sent = send_batch(
                    peer_fd.expect("destination implies peer"),
                    &mut self.batch,
                    out,
                );
                let peer = peer_slot
                    .and_then(|p| self.slots[p].as_ref())
                    .expect("peer checked above");
                let bytes: u64 = self.batch.out_iovecs[..sent]
                    .iter()
                    .map(|v| v.iov_len as u64)
                    .sum();
                peer.stats.record_tx(sent as u64, bytes);
                for _ in sent..out {
                    peer.stats.record_drop(DropReason::SendFailed);
                }
            }
            if received < BATCH {
                return;
            }
        }
    }
}

/// Receives up to [`BATCH`] datagrams; returns how many arrived (0 on would-block or error).
fn recv_batch(fd: RawFd, b: &mut Batch) -> usize {
    for i in 0..BATCH {
        b.iovecs[i] = libc::iovec {
            iov_base: b.bufs[i].as_mut_ptr().cast(),
            iov_len: MAX_PACKET,
        };
        let h = &mut b.headers[i].msg_hdr;
        h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        h.msg_iov = &mut b.iovecs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }
    // SAFETY: every header points at buffers owned by `b` that outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            b.headers.as_mut_ptr(),
            BATCH as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    n.max(0) as usize
}

/// Sends the first `count` prepared output messages; returns how many the kernel took.
fn send_batch(fd: RawFd, b: &mut Batch, count: usize) -> usize {
    let mut sent = 0;
    while sent < count {
        // SAFETY: headers point at buffers in `b`, which outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                b.out_headers[sent..].as_mut_ptr(),
                (count - sent) as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        sent += n as usize;
    }
    sent
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}
