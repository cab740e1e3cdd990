//! The in-kernel XDP tier: loads `bpf/relay.bpf.c`, attaches it to the devices that carry the
//! media addresses, mirrors every stream into its maps (indexed by local port), and copies its
//! per-stream counters back into [`StreamStats`] for `/status` and media timeouts.
//!
//! The socket tier keeps running beside it with every stream's socket bound: packets the program
//! passes (an unresolved next hop, a VLAN-tagged packet of a pair whose legs are of different
//! address families) are relayed there by the same latching rule.

pub mod abi;
pub mod netdev;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;

use crate::media::{Command, KernelTotals, LatchMode, StreamId, StreamStats, Tier};
use abi::{
    family_of, Addr, Config, Settings, State, COUNTERS, FAMILY_V4, FLAG_ASYMMETRIC, FLAG_HANDOVER,
    FLAG_KERNEL, FLAG_XSK, MAX_QUEUES,
};
use netdev::ForwardingGuard;

/// The compiled XDP program, embedded at build time.
#[cfg(mediagate_bpf)]
pub static PROGRAM: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/relay.bpf.o"
)));
/// This build has no XDP program (clang was missing at build time).
#[cfg(not(mediagate_bpf))]
pub static PROGRAM: Option<&[u8]> = None;

/// How often kernel counters are copied into the streams' stats.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Why the kernel tier could not start.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this build has no XDP program (clang was missing when it was built)")]
    NotBuilt,
    #[error("no network device holds the media address {0}")]
    NoDevice(IpAddr),
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("attaching the XDP program to {device}: {reason}")]
    Attach { device: String, reason: String },
    #[error("host set-up: {0}")]
    Host(io::Error),
}

impl From<io::Error> for KernelError {
    fn from(e: io::Error) -> Self {
        KernelError::Host(e)
    }
}

fn load_err(e: impl std::fmt::Display) -> KernelError {
    KernelError::Load(e.to_string())
}

/// What the kernel tier knows of one stream.
struct Entry {
    /// The map index: the local port (unique, since all media ports come from one pool).
    index: u32,
    local: SocketAddr,
    peer: StreamId,
    config: Config,
    /// The forwarding flag this tier's mode gives a stream whose pair shares one family.
    forward_flag: u16,
    stats: Arc<StreamStats>,
}

type States = Arc<Mutex<Array<MapData, State>>>;

/// Who forwards the streams the program sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The program itself (in-kernel tier).
    Kernel,
    /// The AF_XDP workers: the program redirects every stream packet to their sockets.
    Afxdp,
}

/// The loaded, attached program and its maps.
pub struct KernelTier {
    // Field order is drop order: stop the collector, then detach (Ebpf owns the links), then
    // restore forwarding.
    collector: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    configs: Array<MapData, Config>,
    states: States,
    counters: PerCpuArray<MapData, u64>,
    xsks: XskMap<MapData>,
    ifslots: BpfHashMap<MapData, u32, u32>,
    mode: Mode,
    /// The HEP capture copies RTCP in user space: RTCP streams stay with the socket tier.
    capture_rtcp: bool,
    streams: Arc<Mutex<HashMap<StreamId, Entry>>>,
    devices: Vec<(String, &'static str)>,
    _ebpf: Ebpf,
    _forwarding: ForwardingGuard,
}

impl KernelTier {
    /// Loads the program and attaches it to the media devices: the named one of each
    /// `(address, device)`, else the device holding the address; `ports` is the media port range
    /// and `max_payload` the largest UDP payload a kernel-tier stream relays. With
    /// `capture_rtcp` the program leaves RTCP streams to the socket tier, which copies them for
    /// the HEP capture (RTCP is about one packet per five seconds per stream).
    pub fn start(
        media: &[(IpAddr, Option<String>)],
        ports: (u16, u16),
        max_payload: u16,
        mode: Mode,
        capture_rtcp: bool,
    ) -> Result<Self, KernelError> {
        let bytes = PROGRAM.ok_or(KernelError::NotBuilt)?;
        let mut devices: Vec<String> = Vec::new();
        for (ip, named) in media {
            let dev = match named {
                Some(d) => d.clone(),
                None => netdev::device_of(*ip)?.ok_or(KernelError::NoDevice(*ip))?,
            };
            if !devices.contains(&dev) {
                devices.push(dev);
            }
        }
        let forwarding = ForwardingGuard::enable(media.iter().any(|(ip, _)| ip.is_ipv6()))?;
        let mut ebpf = Ebpf::load(bytes).map_err(load_err)?;
        let mut settings: Array<MapData, Settings> = Array::try_from(
            ebpf.take_map("mg_settings")
                .ok_or_else(|| load_err("no mg_settings map"))?,
        )
        .map_err(load_err)?;
        settings
            .set(
                0,
                Settings {
                    port_first: ports.0,
                    port_last: ports.1,
                    max_payload,
                    pad: 0,
                },
                0,
            )
            .map_err(load_err)?;
        let configs = Array::try_from(
            ebpf.take_map("mg_configs")
                .ok_or_else(|| load_err("no mg_configs map"))?,
        )
        .map_err(load_err)?;
        let states: States = Arc::new(Mutex::new(
            Array::try_from(
                ebpf.take_map("mg_states")
                    .ok_or_else(|| load_err("no mg_states map"))?,
            )
            .map_err(load_err)?,
        ));
        let counters = PerCpuArray::try_from(
            ebpf.take_map("mg_counters")
                .ok_or_else(|| load_err("no mg_counters map"))?,
        )
        .map_err(load_err)?;
        let xsks = XskMap::try_from(
            ebpf.take_map("mg_xsks")
                .ok_or_else(|| load_err("no mg_xsks map"))?,
        )
        .map_err(load_err)?;
        let ifslots = BpfHashMap::try_from(
            ebpf.take_map("mg_ifslots")
                .ok_or_else(|| load_err("no mg_ifslots map"))?,
        )
        .map_err(load_err)?;
        let program: &mut Xdp = ebpf
            .program_mut("mg_relay")
            .ok_or_else(|| load_err("no mg_relay program"))?
            .try_into()
            .map_err(load_err)?;
        program.load().map_err(load_err)?;
        let mut attached = Vec::new();
        for dev in devices {
            let mode = match program.attach(&dev, XdpFlags::DRV_MODE) {
                Ok(_) => "native",
                Err(native) => {
                    tracing::warn!(device = %dev, error = %native, "native XDP unavailable; using generic mode");
                    program
                        .attach(&dev, XdpFlags::SKB_MODE)
                        .map_err(|e| KernelError::Attach {
                            device: dev.clone(),
                            reason: e.to_string(),
                        })?;
                    "generic"
                }
            };
            tracing::info!(device = %dev, mode, "XDP program attached");
            attached.push((dev, mode));
        }
        let streams: Arc<Mutex<HashMap<StreamId, Entry>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let (states, streams, stop) = (states.clone(), streams.clone(), stop.clone());
            std::thread::Builder::new()
                .name("xdp-stats".into())
                .spawn(move || collect(&states, &streams, &stop))?
        };
        Ok(KernelTier {
            collector: Some(collector),
            stop,
            configs,
            states,
            counters,
            xsks,
            ifslots,
            mode,
            capture_rtcp,
            streams,
            devices: attached,
            _ebpf: ebpf,
            _forwarding: forwarding,
        })
    }

    /// Mirrors a session change into the maps. A stream forwards in the program once its pair
    /// is known (and it is not RTCP being captured), across address families too; the AF_XDP
    /// workers take IPv4 pairs only. Other streams are passed to the socket tier.
    pub fn apply(&mut self, cmd: &Command) -> io::Result<()> {
        let mut streams = self.streams.lock().expect("streams");
        match cmd {
            Command::Add(spec) => {
                let index = u32::from(spec.local.port());
                self.states
                    .lock()
                    .expect("states")
                    .set(index, State::default(), 0)
                    .map_err(io::Error::other)?;
                let family = family_of(spec.local.ip());
                let forward_flag = match self.mode {
                    Mode::Kernel if spec.rtcp && self.capture_rtcp => 0,
                    Mode::Kernel => FLAG_KERNEL,
                    Mode::Afxdp if family == FAMILY_V4 => FLAG_XSK,
                    Mode::Afxdp => 0,
                };
                let learning = match spec.latch.mode {
                    LatchMode::Symmetric => 0,
                    LatchMode::Asymmetric => FLAG_ASYMMETRIC,
                    LatchMode::Handover => FLAG_HANDOVER,
                };
                let mut config = Config {
                    local: Addr::new(spec.local.ip()),
                    signalling: Addr::new(spec.latch.signalling_ip),
                    flags: learning,
                    family,
                    clock_rate: spec.stats.clock_rate(),
                    ..Config::default()
                };
                config.set_sdp(spec.latch.sdp);
                spec.stats.set_tier(Tier::Socket);
                streams.insert(
                    spec.id,
                    Entry {
                        index,
                        local: spec.local,
                        peer: spec.peer,
                        config,
                        forward_flag,
                        stats: spec.stats.clone(),
                    },
                );
                // A stream forwards once its peer is known; both are written when the second
                // of the pair arrives.
                for id in [spec.id, spec.peer] {
                    write_config(&mut self.configs, &mut streams, id, self.mode)?;
                }
            }
            Command::Renegotiate { id, sdp } => {
                if let Some(e) = streams.get_mut(id) {
                    e.config.set_sdp(*sdp);
                    // New SDP may name a new payload: the control thread set its clock first.
                    e.config.clock_rate = e.stats.clock_rate();
                    e.config.generation = e.config.generation.wrapping_add(1);
                    write_config(&mut self.configs, &mut streams, *id, self.mode)?;
                }
            }
            Command::Remove(id) => {
                if let Some(e) = streams.remove(id) {
                    self.configs
                        .set(e.index, Config::default(), 0)
                        .map_err(io::Error::other)?;
                    // The peer must not keep forwarding through this port: another call may
                    // get it next. It goes back to the socket tier until it is paired again.
                    if let Some(p) = streams.get_mut(&e.peer) {
                        p.config.flags &= !(FLAG_KERNEL | FLAG_XSK);
                        p.stats.set_tier(Tier::Socket);
                        self.configs
                            .set(p.index, p.config, 0)
                            .map_err(io::Error::other)?;
                    }
                    tracing::trace!(local = %e.local, "kernel stream removed");
                }
            }
        }
        Ok(())
    }

    /// The devices the program is attached to.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|(d, _)| d.as_str())
    }

    /// Routes packets of device `slot`'s rx `queue` to an AF_XDP socket.
    pub fn register_xsk(
        &mut self,
        ifindex: u32,
        slot: u32,
        queue: u32,
        fd: std::os::fd::RawFd,
    ) -> io::Result<()> {
        self.ifslots
            .insert(ifindex, slot, 0)
            .map_err(io::Error::other)?;
        // SAFETY: `fd` is a live AF_XDP socket owned by a worker that outlives the map entry
        // (workers stop before the program is detached).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        self.xsks
            .set(slot * MAX_QUEUES + queue, fd, 0)
            .map_err(io::Error::other)
    }

    /// Program-wide counters by outcome (names from `abi::COUNTERS`), summed over CPUs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total: u64 = self
                    .counters
                    .get(&(i as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }

    /// Program-wide counters summed over CPUs, and the attached devices, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let mut counters = serde_json::Map::new();
        for (i, name) in COUNTERS.iter().enumerate() {
            let total: u64 = self
                .counters
                .get(&(i as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            counters.insert((*name).to_string(), total.into());
        }
        serde_json::json!({
            "devices": self.devices.iter().map(|(d, m)| serde_json::json!({"device": d, "mode": m})).collect::<Vec<_>>(),
            "counters": counters,
        })
    }
}

impl Drop for KernelTier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
        for (dev, _) in &self.devices {
            tracing::info!(device = %dev, "XDP program detached");
        }
    }
}

/// Writes a stream's config once its peer is known (the peer's endpoint is the source of what
/// this stream forwards), with the forwarding flag. A pair whose legs are of different address
/// families is forwarded by the program, which translates between IPv4 and IPv6, but not by
/// the AF_XDP workers (IPv4 only): in that mode it stays with the socket tier.
fn write_config(
    configs: &mut Array<MapData, Config>,
    streams: &mut HashMap<StreamId, Entry>,
    id: StreamId,
    mode: Mode,
) -> io::Result<()> {
    let Some((peer_port, peer_family)) = streams
        .get(&id)
        .and_then(|e| streams.get(&e.peer))
        .map(|p| (p.index as u16, p.config.family))
    else {
        return Ok(());
    };
    let e = streams.get_mut(&id).expect("checked");
    e.config.peer_port = peer_port;
    let forwardable = peer_family == e.config.family || mode == Mode::Kernel;
    let flag = if forwardable { e.forward_flag } else { 0 };
    e.config.flags = (e.config.flags & !(FLAG_KERNEL | FLAG_XSK)) | flag;
    if flag != 0 {
        e.stats.set_tier(match mode {
            Mode::Kernel => Tier::Kernel,
            Mode::Afxdp => Tier::Afxdp,
        });
    }
    configs.set(e.index, e.config, 0).map_err(io::Error::other)
}

/// Copies kernel counters, RTP quality, latching and activity into the streams' stats until
/// `stop`. The
/// program counts what each stream accepted (and forwarded out of its peer); a stream's tx is
/// therefore its peer's rx.
fn collect(states: &States, streams: &Mutex<HashMap<StreamId, Entry>>, stop: &AtomicBool) {
    let mut read: HashMap<StreamId, State> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(COLLECT_EVERY);
        let streams = streams.lock().expect("streams");
        read.clear();
        {
            let states = states.lock().expect("states");
            for (id, e) in streams.iter() {
                if let Ok(s) = states.get(&e.index, 0) {
                    read.insert(*id, s);
                }
            }
        }
        let (now, now_ns) = (Instant::now(), crate::clock::monotonic_coarse_ns());
        for (id, e) in streams.iter() {
            let Some(s) = read.get(id) else {
                continue;
            };
            let out = read.get(&e.peer).copied().unwrap_or_default();
            e.stats.store_kernel(KernelTotals {
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: out.rx_packets,
                tx_bytes: out.rx_bytes,
                drops: s.drops,
            });
            e.stats.store_kernel_quality(s.quality.counts());
            if s.last_seen_ns != 0 {
                let age = Duration::from_nanos(now_ns.saturating_sub(s.last_seen_ns));
                e.stats.record_activity(now - age);
            }
            if s.generation == e.config.generation && !e.stats.latched() {
                if let Some(src) = s.latched_source(e.config.family) {
                    e.stats.set_remote(Some(src), true);
                }
            }
        }
    }
}
