//! One pinned AF_XDP relay loop. It owns one UMEM shared by its sockets (one per device for
//! each queue it serves), so a frame received on one device is transmitted on another without
//! a copy. Each iteration drains [`WorkerCmd`]s into its [`Relay`] (the private stream table and
//! per-frame logic), then moves RX batches through the relay onto the TX rings. Nothing in the
//! loop allocates: tables are sized at start-up.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;

use super::relay::{Desc, Egress, Relay, Sink, WorkerCmd};
use super::xsk::{Umem, XskSocket};

/// Descriptors handled per ring per iteration.
const BATCH: u32 = 64;
/// Empty iterations before a wakeup-mode worker sleeps in `poll` (notes: idle wake-ups are
/// expensive in VMs, a short spin keeps throughput stable).
const SPINS_BEFORE_SLEEP: u32 = 2000;
/// Longest sleep in `poll`, which bounds command latency.
const POLL_MS: i32 = 10;

/// A device this worker transmits on and the sockets it receives on.
pub struct Port {
    pub socket: XskSocket,
    /// The device's MAC, the source of frames sent on it.
    pub mac: [u8; 6],
    /// IPv4 addresses of the device: streams whose local address is one of them leave here.
    pub addresses: Vec<Ipv4Addr>,
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
    /// `media.max_packet_bytes`.
    pub max_payload: usize,
    /// Where relayed RTCP is copied for the HEP capture.
    pub tap: Option<crate::dataplane::tap::TapSender>,
    pub umem: Umem,
    pub ports: Vec<Port>,
    pub commands: Receiver<WorkerCmd>,
    pub neighbour_misses: Sender<Ipv4Addr>,
    /// Raw IPv4 socket for the slow path (packets whose next hop is not known yet).
    pub raw: OwnedFd,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
}

/// The worker's side of the rings: where relayed frames go.
struct Io {
    sockets: Vec<XskSocket>,
    /// Frames user space owns, not in any ring.
    free: Vec<u64>,
    /// Whether a socket has TX descriptors the kernel has not consumed.
    tx_pending: Vec<bool>,
    neighbour_misses: Sender<Ipv4Addr>,
    raw: OwnedFd,
}

impl Sink for Io {
    fn transmit(&mut self, port: usize, desc: Desc) -> bool {
        let tx = &mut self.sockets[port].tx;
        if tx.free(1) == 0 {
            return false;
        }
        tx.push(desc);
        self.tx_pending[port] = true;
        true
    }

    fn slow_path(&mut self, ip_packet: &[u8], dest: SocketAddrV4) -> bool {
        // The refresher learns the MAC from the kernel's resolution and tells every worker.
        let _ = self.neighbour_misses.try_send(*dest.ip());
        send_raw(self.raw.as_raw_fd(), ip_packet, dest)
    }

    fn recycle(&mut self, addr: u64) {
        self.free.push(addr);
    }
}

pub struct Worker {
    core: usize,
    busy_poll: bool,
    commands: Receiver<WorkerCmd>,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    umem: Umem,
    relay: Relay,
    io: Io,
    /// Relay-added latency samples since the last publication.
    latency: Histogram<u64>,
    last_publish: Instant,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> Self {
        let frames = setup.umem.frames;
        let (sockets, egress): (Vec<XskSocket>, Vec<Egress>) = setup
            .ports
            .into_iter()
            .map(|p| {
                (
                    p.socket,
                    Egress {
                        mac: p.mac,
                        addresses: p.addresses,
                    },
                )
            })
            .unzip();
        Worker {
            core: setup.core,
            busy_poll: setup.busy_poll,
            commands: setup.commands,
            stats: setup.stats,
            stop: setup.stop,
            umem: setup.umem,
            relay: Relay::new(setup.capacity, egress, setup.max_payload)
                .with_tap(setup.tap.clone()),
            io: Io {
                free: (0..frames)
                    .map(|f| u64::from(f) * u64::from(super::xsk::FRAME_SIZE))
                    .collect(),
                tx_pending: vec![false; sockets.len()],
                sockets,
                neighbour_misses: setup.neighbour_misses,
                raw: setup.raw,
            },
            latency: new_latency_histogram(),
            last_publish: Instant::now(),
        }
    }

    pub fn run(mut self) {
        pin_to_core(self.core);
        let mut idle = 0u32;
        while !self.stop.load(Relaxed) {
            for _ in 0..BATCH {
                match self.commands.try_recv() {
                    Ok(cmd) => self.relay.apply(cmd),
                    Err(_) => break,
                }
            }
            let mut work = 0;
            let batch_start = Instant::now();
            let tx_before = self.stats.tx.load(Relaxed);
            for p in 0..self.io.sockets.len() {
                self.reclaim_and_fill(p);
                work += self.receive(p);
            }
            self.flush_tx();
            let sent = self.stats.tx.load(Relaxed) - tx_before;
            if sent > 0 {
                // One sample per batch, weighted by its packets: the time from taking the batch
                // off the RX rings to handing it to the kernel for transmission.
                let ns = batch_start.elapsed().as_nanos() as u64;
                self.latency.saturating_record_n(ns, sent);
            }
            self.publish_latency();
            self.stats.iterations.fetch_add(1, Relaxed);
            if work > 0 {
                idle = 0;
            } else if !self.busy_poll {
                idle += 1;
                if idle > SPINS_BEFORE_SLEEP {
                    self.sleep();
                }
            }
        }
    }

    /// Returns completed TX frames to the free list and tops the fill ring up.
    fn reclaim_and_fill(&mut self, p: usize) {
        let io = &mut self.io;
        let sock = &mut io.sockets[p];
        let done = sock.completion.available(BATCH * 4);
        for i in 0..done {
            io.free.push(sock.completion.peek(i));
        }
        sock.completion.release(done);
        let room = sock.fill.free(BATCH).min(io.free.len() as u32);
        for _ in 0..room {
            let addr = io.free.pop().expect("counted");
            sock.fill.push(addr);
        }
        if room > 0 {
            sock.fill.submit();
        }
        if sock.fill.needs_wakeup() {
            sock.kick_rx();
        }
    }

    /// Relays one batch of received frames from socket `p`; returns how many arrived.
    fn receive(&mut self, p: usize) -> u32 {
        let rx = &mut self.io.sockets[p].rx;
        let n = rx.available(BATCH);
        if n == 0 {
            return 0;
        }
        let mut descs = [Desc {
            addr: 0,
            len: 0,
            options: 0,
        }; BATCH as usize];
        for (i, d) in descs.iter_mut().enumerate().take(n as usize) {
            *d = rx.peek(i as u32);
        }
        // The frames stay ours until they go back on a fill ring: the RX slots can go now.
        rx.release(n);
        let counts = self.relay.relay_batch(
            self.umem.area_mut(),
            &descs[..n as usize],
            &mut self.io,
            Instant::now(),
        );
        self.stats.rx.fetch_add(u64::from(n), Relaxed);
        self.stats.tx.fetch_add(counts.tx, Relaxed);
        self.stats.dropped.fetch_add(counts.dropped, Relaxed);
        self.stats
            .no_neighbour
            .fetch_add(counts.no_neighbour, Relaxed);
        n
    }

    /// Merges this worker's samples into the shared histogram once a second (the only lock the
    /// worker takes, and never per packet).
    fn publish_latency(&mut self) {
        if self.latency.is_empty() || self.last_publish.elapsed() < LATENCY_PUBLISH {
            return;
        }
        self.last_publish = Instant::now();
        if let Ok(mut shared) = self.stats.latency.lock() {
            let _ = shared.add(&self.latency);
        }
        self.latency.reset();
    }

    /// Publishes queued TX descriptors and kicks the kernel while any are outstanding
    /// (copy mode moves at most a few dozen frames per kick).
    fn flush_tx(&mut self) {
        for (sock, pending) in self.io.sockets.iter_mut().zip(&mut self.io.tx_pending) {
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
        for sock in self.io.sockets.iter().take(set.len()) {
            set[n] = libc::pollfd {
                fd: sock.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        // SAFETY: `set` holds `n` valid pollfd entries.
        unsafe { libc::poll(set.as_mut_ptr(), n as libc::nfds_t, POLL_MS) };
    }
}

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
