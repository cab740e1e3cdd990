//! The AF_XDP tier: per-core pinned relay loops fed by the XDP program over AF_XDP sockets.
//!
//! Worker *w* owns rx queue *q* of every media device for each `q % workers == w`, with one UMEM
//! shared by its sockets. Streams are broadcast to every worker (any queue may carry any
//! stream); a stream's latched source is one atomic shared by all of them. Next-hop MACs come
//! from the kernel's neighbour table through a refresher thread, which also makes the kernel
//! resolve missing ones.

pub mod relay;
pub mod worker;
pub mod xsk;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;

use super::kernel::KernelTier;
use super::netlink::Netlink;
use crate::media::{Command, StreamId};
use relay::{SharedLatch, WorkerCmd};
use worker::{Port, Worker, WorkerSetup, WorkerStats};
use xsk::{Umem, XskSocket};

/// Descriptors per ring.
const RING_SIZE: u32 = 2048;
/// How often the refresher re-reads the neighbour table.
const NEIGHBOUR_REFRESH: Duration = Duration::from_millis(100);
/// How long a destination's next hop (from the routing table) is trusted before asking again.
const ROUTE_REFRESH: Duration = Duration::from_secs(10);
/// The discard service: where a resolution probe goes (RFC 863), so that no peer sees data.
const DISCARD_PORT: u16 = 9;

/// A media device as the workers need it.
struct Device {
    name: String,
    ifindex: u32,
    mac: [u8; 6],
    addresses: Vec<Ipv4Addr>,
    queues: u32,
}

fn describe(name: &str) -> io::Result<Device> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    let mac = parse_mac(mac_text.trim())
        .ok_or_else(|| io::Error::other(format!("{name}: bad MAC {mac_text}")))?;
    let queues = std::fs::read_dir(format!("/sys/class/net/{name}/queues"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count()
        .max(1) as u32;
    let addresses = super::kernel::netdev::ipv4_addresses_of(name)?;
    Ok(Device {
        name: name.to_string(),
        ifindex,
        mac,
        addresses,
        queues,
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The running AF_XDP workers.
pub struct AfxdpTier {
    workers: Vec<Sender<WorkerCmd>>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<(usize, Arc<WorkerStats>)>,
    latches: HashMap<StreamId, SharedLatch>,
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
    /// Next hops to resolve ahead of the media, from the SDP addresses of new streams.
    resolve: Sender<Ipv4Addr>,
}

impl AfxdpTier {
    /// Starts one worker per core in `cores` on the devices the kernel tier attached to, and
    /// registers their sockets in the program's XSKMAP.
    pub fn start(
        kernel: &mut KernelTier,
        cores: &[usize],
        busy_poll: bool,
        capacity: usize,
        max_payload: usize,
        tap: Option<super::tap::TapSender>,
    ) -> io::Result<Self> {
        let devices: Vec<Device> = kernel.devices().map(describe).collect::<io::Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (miss_tx, miss_rx) = crossbeam_channel::bounded(4096);
        let mut senders = Vec::new();
        let mut setups = Vec::new();
        let workers = cores.len().max(1);
        for (w, &core) in cores.iter().enumerate() {
            let owned: Vec<(usize, u32)> = devices
                .iter()
                .enumerate()
                .flat_map(|(d, dev)| (0..dev.queues).map(move |q| (d, q)))
                .filter(|(_, q)| *q as usize % workers == w)
                .collect();
            let frames = (owned.len() as u32 * RING_SIZE * 2).max(RING_SIZE * 2);
            let umem = Umem::new(frames)?;
            let mut ports = Vec::new();
            let mut first_fd = None;
            for (d, q) in owned {
                let dev = &devices[d];
                let socket =
                    XskSocket::bind(&umem, dev.ifindex, q, RING_SIZE, first_fd).map_err(|e| {
                        io::Error::new(e.kind(), format!("{} queue {q}: {e}", dev.name))
                    })?;
                first_fd.get_or_insert(socket.fd());
                kernel.register_xsk(dev.ifindex, d as u32, q, socket.fd())?;
                tracing::info!(device = %dev.name, queue = q, core, "AF_XDP socket bound");
                ports.push(Port {
                    socket,
                    mac: dev.mac,
                    addresses: dev.addresses.clone(),
                });
            }
            let (tx, rx) = crossbeam_channel::bounded(65_536);
            senders.push(tx);
            setups.push(WorkerSetup {
                core,
                busy_poll,
                capacity,
                max_payload,
                tap: tap.clone(),
                umem,
                ports,
                commands: rx,
                neighbour_misses: miss_tx.clone(),
                raw: raw_socket()?,
                stats: Arc::new(WorkerStats::default()),
                stop: stop.clone(),
            });
        }
        let stats = setups.iter().map(|s| (s.core, s.stats.clone())).collect();
        let mut threads = Vec::new();
        for (w, setup) in setups.into_iter().enumerate() {
            let worker = Worker::new(setup);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("afxdp-{w}"))
                    .spawn(move || worker.run())?,
            );
        }
        let probes = Arc::new(AtomicU64::new(0));
        {
            let (senders, stop, probes) = (senders.clone(), stop.clone(), probes.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("neighbours".into())
                    .spawn(move || refresh_neighbours(&senders, &miss_rx, &stop, &probes))?,
            );
        }
        Ok(AfxdpTier {
            workers: senders,
            threads,
            stats,
            latches: HashMap::new(),
            stop,
            probes,
            resolve: miss_tx,
        })
    }

    /// Broadcasts a session change to every worker (IPv4 streams only; the rest stay on the
    /// socket tier).
    pub fn apply(&mut self, cmd: &Command) -> io::Result<()> {
        let sdp = match cmd {
            Command::Add(spec) => spec.latch.sdp,
            Command::Renegotiate { sdp, .. } => *sdp,
            Command::Remove(_) => None,
        };
        if let Some(SocketAddr::V4(a)) = sdp {
            let _ = self.resolve.try_send(*a.ip());
        }
        let broadcast = |make: &dyn Fn() -> WorkerCmd| -> io::Result<()> {
            for w in &self.workers {
                w.try_send(make())
                    .map_err(|_| io::Error::other("AF_XDP worker command queue is full"))?;
            }
            Ok(())
        };
        match cmd {
            Command::Add(spec) => {
                let SocketAddr::V4(local) = spec.local else {
                    return Ok(());
                };
                let shared: SharedLatch = Arc::new(AtomicU64::new(0));
                self.latches.insert(spec.id, shared.clone());
                broadcast(&|| WorkerCmd::Add {
                    id: spec.id,
                    peer: spec.peer,
                    local,
                    latch: spec.latch,
                    shared: shared.clone(),
                    stats: spec.stats.clone(),
                    rtcp: spec.rtcp,
                })
            }
            Command::Renegotiate { id, sdp } => {
                if let Some(l) = self.latches.get(id) {
                    l.store(0, Relaxed);
                }
                broadcast(&|| WorkerCmd::Renegotiate { id: *id, sdp: *sdp })
            }
            Command::Remove(id) => {
                self.latches.remove(id);
                broadcast(&|| WorkerCmd::Remove(*id))
            }
        }
    }

    /// Per-worker counters and the workers' merged latency histogram (ns), for `/metrics`:
    /// atomics read and one histogram copy per worker, taken at scrape time.
    pub fn snapshot(&self) -> (Vec<super::WorkerCounters>, u64, Histogram<u64>) {
        let mut merged = worker::new_latency_histogram();
        let workers = self
            .stats
            .iter()
            .map(|(core, s)| {
                if let Ok(h) = s.latency.lock() {
                    let _ = merged.add(&*h);
                }
                super::WorkerCounters {
                    core: *core,
                    iterations: s.iterations.load(Relaxed),
                    rx: s.rx.load(Relaxed),
                    tx: s.tx.load(Relaxed),
                    dropped: s.dropped.load(Relaxed),
                    no_neighbour: s.no_neighbour.load(Relaxed),
                }
            })
            .collect();
        (workers, self.probes.load(Relaxed), merged)
    }

    /// Per-worker counters for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let workers: Vec<_> = self
            .stats
            .iter()
            .map(|(core, s)| {
                let latency = s.latency.lock().map(|h| {
                    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                    serde_json::json!({
                        "samples": h.len(),
                        "p50_us": us(0.5),
                        "p99_us": us(0.99),
                        "p999_us": us(0.999),
                        "max_us": h.max() as f64 / 1000.0,
                    })
                });
                serde_json::json!({
                    "latency": latency.unwrap_or_default(),
                    "core": core,
                    "rx": s.rx.load(Relaxed),
                    "tx": s.tx.load(Relaxed),
                    "dropped": s.dropped.load(Relaxed),
                    "no_neighbour": s.no_neighbour.load(Relaxed),
                    "iterations": s.iterations.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({ "workers": workers, "neighbour_probes": self.probes.load(Relaxed) })
    }
}

impl Drop for AfxdpTier {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A raw IPv4 socket that sends packets with their own IP header (the workers' slow path).
fn raw_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the descriptor is owned by the returned value.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Tells workers the MAC of the next hop toward each destination they asked for (the kernel's
/// route and neighbour tables, over rtnetlink), and makes the kernel resolve unknown ones by
/// sending an empty datagram to the destination's discard port (the kernel resolves the next
/// hop to send it).
fn refresh_neighbours(
    workers: &[Sender<WorkerCmd>],
    misses: &Receiver<Ipv4Addr>,
    stop: &AtomicBool,
    probes: &AtomicU64,
) {
    let mut netlink = match Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "no rtnetlink socket: AF_XDP next hops stay on the slow path");
            return;
        }
    };
    let probe = UdpSocket::bind("0.0.0.0:0").ok();
    let mut wanted: HashSet<Ipv4Addr> = HashSet::new();
    let mut known: HashMap<Ipv4Addr, [u8; 6]> = HashMap::new();
    let mut last_probe: HashMap<Ipv4Addr, Instant> = HashMap::new();
    // Routes change rarely: each destination's next hop is asked again after ROUTE_REFRESH.
    let mut hops: HashMap<Ipv4Addr, (Option<Ipv4Addr>, Instant)> = HashMap::new();
    while !stop.load(Relaxed) {
        std::thread::sleep(NEIGHBOUR_REFRESH);
        wanted.extend(misses.try_iter());
        if wanted.is_empty() {
            continue;
        }
        let table = match netlink.neighbours() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading the neighbour table");
                continue;
            }
        };
        let mut hop_of = |ip: Ipv4Addr| match hops.get(&ip) {
            Some((hop, at)) if at.elapsed() < ROUTE_REFRESH => *hop,
            _ => {
                let hop = netlink.next_hop(ip).unwrap_or(None);
                hops.insert(ip, (hop, Instant::now()));
                hop
            }
        };
        let mut unresolved = Vec::new();
        for ip in &wanted {
            match hop_of(*ip).and_then(|hop| table.get(&hop)) {
                Some(mac) if known.get(ip) != Some(mac) => {
                    known.insert(*ip, *mac);
                    for w in workers {
                        let _ = w.try_send(WorkerCmd::Neighbour { ip: *ip, mac: *mac });
                    }
                }
                Some(_) => {}
                None => unresolved.push(*ip),
            }
        }
        for ip in &unresolved {
            let due = last_probe
                .get(ip)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
            if let (true, Some(s)) = (due, &probe) {
                let _ = s.send_to(&[], (IpAddr::V4(*ip), DISCARD_PORT));
                probes.fetch_add(1, Relaxed);
                last_probe.insert(*ip, Instant::now());
            }
        }
        // Keep watching resolved addresses so MAC changes reach the workers too.
        wanted.retain(|ip| !known.contains_key(ip) || !unresolved.contains(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
