//! The in-kernel XDP tier: loads `bpf/relay.bpf.c`, attaches it to the devices that carry the
//! media addresses, mirrors every stream into its maps (indexed by local port), and copies its
//! per-stream counters back into [`StreamStats`] for `/status` and media timeouts.
//!
//! The socket tier keeps running beside it with every stream's socket bound: packets the program
//! passes (an unresolved next hop, a VLAN-tagged packet of a pair whose legs are of different
//! address families) are relayed there by the same latching rule.

pub mod abi;
pub mod netdev;
pub mod pin;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapType, PerCpuArray, XskMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;

use crate::media::{Command, KernelTotals, LatchMode, StreamId, StreamStats, Tier};
use abi::{
    family_of, Addr, Config, Settings, State, COUNTERS, FAMILY_V4, FLAG_ASYMMETRIC, FLAG_HANDOVER,
    FLAG_KERNEL, FLAG_XSK, MAX_QUEUES,
};
use netdev::ForwardingGuard;
use pin::PinDir;

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
    /// The peer port of this stream's adopted entry, until the pair is checked.
    adopted_peer: Option<u16>,
    /// The SDP destination came from the adopted entry and no SDP was applied since.
    adopted_sdp: bool,
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

/// The maps of the program, by name in `bpf/relay.bpf.c`.
const MAPS: [&str; 6] = [
    "mg_settings",
    "mg_configs",
    "mg_states",
    "mg_counters",
    "mg_xsks",
    "mg_ifslots",
];

/// The loaded, attached program and its maps.
pub struct KernelTier {
    // Field order is drop order: stop the collector, then detach (Ebpf owns the links unless
    // they are pinned for handover), then restore forwarding (unless handing over).
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
    /// Map entries of a previous run (by index) that no restored stream has claimed yet.
    adopted: HashMap<u32, Config>,
    /// The handover directory the pins live in (`None`: handover off, or ended).
    pins: Option<PinDir>,
    /// Forwarding settings to put back on drop once the handover pins are gone (the guard's
    /// own values may be those a previous handover run left).
    restore_on_drop: Vec<(String, String)>,
    _links: Vec<PinnedLink>,
    _ebpf: Option<Ebpf>,
    forwarding: ForwardingGuard,
}

/// Where the kernel tier keeps its pins and whether it hands over (`media.pin_dir`,
/// `media.handover`).
#[derive(Debug, Clone, Copy)]
pub struct Handover<'a> {
    pub pin_dir: &'a Path,
    pub enabled: bool,
}

impl KernelTier {
    /// Loads the program and attaches it to the media devices: the named one of each
    /// `(address, device)`, else the device holding the address; `ports` is the media port range
    /// and `max_payload` the largest UDP payload a kernel-tier stream relays. With
    /// `capture_rtcp` the program leaves RTCP streams to the socket tier, which copies them for
    /// the HEP capture (RTCP is about one packet per five seconds per stream).
    ///
    /// With `handover.enabled` the maps and links are pinned in `handover.pin_dir`, and pins a
    /// previous run left there are adopted when the same program build made them for the same
    /// devices (else detached and replaced). Without it, pins found there are removed.
    pub fn start(
        media: &[(IpAddr, Option<String>)],
        ports: (u16, u16),
        max_payload: u16,
        mode: Mode,
        capture_rtcp: bool,
        handover: Handover<'_>,
    ) -> Result<Self, KernelError> {
        let bytes = PROGRAM.ok_or(KernelError::NotBuilt)?;
        let mut devices: Vec<(String, u32)> = Vec::new();
        for (ip, named) in media {
            let dev = match named {
                Some(d) => d.clone(),
                None => netdev::device_of(*ip)?.ok_or(KernelError::NoDevice(*ip))?,
            };
            if !devices.iter().any(|(d, _)| *d == dev) {
                let index = netdev::ifindex(&dev)?;
                devices.push((dev, index));
            }
        }
        devices.sort();
        let fingerprint = pin::fingerprint(bytes);
        let (pins, adopted) = open_pins(handover, &devices, &fingerprint)?;
        let mut forwarding = ForwardingGuard::enable(media.iter().any(|(ip, _)| ip.is_ipv6()))?;
        if let Some(p) = &pins {
            p.record_restores(forwarding.previous())?;
            // From here on a failed start leaves the settings for the pins' owner to restore.
            forwarding.disarm();
        }
        let (mut maps, links, ebpf, attached) = match adopted {
            Some(a) => {
                let attached = devices
                    .iter()
                    .map(|(d, _)| (d.clone(), "adopted"))
                    .collect();
                (a.maps, a.links, None, attached)
            }
            None => {
                let f = load_fresh(bytes, &devices, pins.as_ref())?;
                if let Some(p) = &pins {
                    // Written last: pins without it are incomplete and never adopted.
                    p.set_program(&fingerprint)?;
                }
                (f.maps, f.links, Some(f.ebpf), f.attached)
            }
        };
        let mut take = |name: &str| {
            maps.remove(name)
                .ok_or_else(|| load_err(format!("no {name} map")))
        };
        let mut settings: Array<MapData, Settings> =
            Array::try_from(take("mg_settings")?).map_err(load_err)?;
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
        let configs: Array<MapData, Config> =
            Array::try_from(take("mg_configs")?).map_err(load_err)?;
        let states: States = Arc::new(Mutex::new(
            Array::try_from(take("mg_states")?).map_err(load_err)?,
        ));
        let counters = PerCpuArray::try_from(take("mg_counters")?).map_err(load_err)?;
        let xsks = XskMap::try_from(take("mg_xsks")?).map_err(load_err)?;
        let ifslots = BpfHashMap::try_from(take("mg_ifslots")?).map_err(load_err)?;
        let adopted: HashMap<u32, Config> = match ebpf {
            Some(_) => HashMap::new(),
            None => configs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i as u32, c.ok()?)))
                .filter(|(_, c)| c.family != abi::FAMILY_NONE)
                .collect(),
        };
        if ebpf.is_none() {
            tracing::info!(
                pin_dir = %handover.pin_dir.display(),
                streams = adopted.len(),
                "XDP program, links and maps adopted from the previous run (never detached)"
            );
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
            adopted,
            pins,
            restore_on_drop: Vec::new(),
            _links: links,
            _ebpf: ebpf,
            forwarding,
        })
    }

    /// Ends an adoption: map entries of the previous run that no restored stream claimed (a
    /// call that ended or was not restored) stop forwarding. Returns how many were cleared.
    pub fn finish_adoption(&mut self) -> io::Result<usize> {
        let stale: Vec<u32> = self.adopted.drain().map(|(i, _)| i).collect();
        let mut states = self.states.lock().expect("states");
        for &i in &stale {
            self.configs
                .set(i, Config::default(), 0)
                .map_err(io::Error::other)?;
            states
                .set(i, State::default(), 0)
                .map_err(io::Error::other)?;
        }
        Ok(stale.len())
    }

    /// Mirrors a session change into the maps. A stream forwards in the program once its pair
    /// is known (and it is not RTCP being captured), across address families too; the AF_XDP
    /// workers take IPv4 pairs only. Other streams are passed to the socket tier.
    pub fn apply(&mut self, cmd: &Command) -> io::Result<()> {
        let mut streams = self.streams.lock().expect("streams");
        match cmd {
            Command::Add(spec) => {
                let index = u32::from(spec.local.port());
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
                // A restored stream that finds its own entry of the previous run (same
                // addresses) keeps its state: latched source, counters, RTP quality.
                let kept = self.adopted.remove(&index).filter(|a| {
                    let same = a.same_stream(&config);
                    if !same {
                        tracing::info!(local = %spec.local, before = ?a, now = ?config,
                            "adopted kernel entry describes another stream: its state is reset");
                    }
                    same
                });
                match kept {
                    // Until the restored SDP arrives, the entry forwards as it did.
                    Some(a) => {
                        config.generation = a.generation;
                        config.sdp = a.sdp;
                        config.sdp_port = a.sdp_port;
                    }
                    None => self
                        .states
                        .lock()
                        .expect("states")
                        .set(index, State::default(), 0)
                        .map_err(io::Error::other)?,
                }
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
                        adopted_peer: kept.map(|a| a.peer_port),
                        adopted_sdp: kept.is_some(),
                    },
                );
                if streams.contains_key(&spec.peer) {
                    self.check_adopted_pair(&mut streams, spec.id, spec.peer)?;
                }
                // A stream forwards once its peer is known; both are written when the second
                // of the pair arrives.
                for id in [spec.id, spec.peer] {
                    write_config(&mut self.configs, &mut streams, id, self.mode)?;
                }
            }
            Command::Renegotiate { id, sdp } => {
                if let Some(e) = streams.get_mut(id) {
                    let before = (e.config.sdp, e.config.sdp_port);
                    e.config.set_sdp(*sdp);
                    // New SDP may name a new payload: the control thread set its clock first.
                    e.config.clock_rate = e.stats.clock_rate();
                    // The first SDP of a restored stream is not new when its adopted entry had
                    // it already: learning stays closed, the latched source stays.
                    let restored = std::mem::take(&mut e.adopted_sdp)
                        && before == (e.config.sdp, e.config.sdp_port);
                    if !restored {
                        e.config.generation = e.config.generation.wrapping_add(1);
                    }
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

    /// Removes the handover pins, so that dropping this tier detaches the program (the links
    /// are held until then) and puts back the forwarding settings recorded with the pins.
    pub fn end_handover(&mut self) -> io::Result<()> {
        if let Some(p) = self.pins.take() {
            self.restore_on_drop = p.clear()?;
            tracing::info!("handover pins removed: the XDP program detaches at exit");
        }
        Ok(())
    }

    /// A kept state belongs to the stream only if the pair is the same as before: otherwise it
    /// is another call's, and is reset.
    fn check_adopted_pair(
        &self,
        streams: &mut HashMap<StreamId, Entry>,
        a: StreamId,
        b: StreamId,
    ) -> io::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let other = streams[&y].index;
            let e = streams.get_mut(&x).expect("present");
            if let Some(before) = e.adopted_peer.take() {
                if u32::from(before) != other {
                    tracing::info!(local = %e.local, before, now = other,
                        "adopted kernel entry was paired with another port: its state is reset");
                    self.states
                        .lock()
                        .expect("states")
                        .set(e.index, State::default(), 0)
                        .map_err(io::Error::other)?;
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
            match &self.pins {
                Some(p) => {
                    tracing::info!(device = %dev, pin_dir = %p.path().display(),
                        "XDP program left attached for handover")
                }
                None => tracing::info!(device = %dev, "XDP program detached"),
            }
        }
        if self.pins.is_some() {
            self.forwarding.disarm();
        } else if !self.restore_on_drop.is_empty() {
            self.forwarding.disarm();
            netdev::restore(&self.restore_on_drop);
        }
    }
}

/// Pinned objects a previous run left, checked against this build and these devices.
struct Adopted {
    maps: HashMap<String, Map>,
    links: Vec<PinnedLink>,
}

/// A freshly loaded and attached program.
struct Fresh {
    maps: HashMap<String, Map>,
    /// The links, when pinned for handover (else the program in `ebpf` owns them).
    links: Vec<PinnedLink>,
    ebpf: Ebpf,
    attached: Vec<(String, &'static str)>,
}

/// With handover: the pin directory, and what it holds if it matches this start (a mismatch is
/// detached and replaced, logged). Without: removes pins a previous run left.
fn open_pins(
    handover: Handover<'_>,
    devices: &[(String, u32)],
    fingerprint: &str,
) -> Result<(Option<PinDir>, Option<Adopted>), KernelError> {
    if !handover.enabled {
        if let Some(found) = PinDir::existing(handover.pin_dir).filter(PinDir::has_pins) {
            tracing::info!(pin_dir = %handover.pin_dir.display(),
                "handover is off: detaching the XDP program a previous run left pinned");
            remove_pins(found)?;
        }
        return Ok((None, None));
    }
    let dir = PinDir::create(handover.pin_dir)?;
    if !dir.has_pins() {
        return Ok((Some(dir), None));
    }
    match adopt(&dir, devices, fingerprint) {
        Ok(a) => Ok((Some(dir), Some(a))),
        Err(why) => {
            tracing::warn!(pin_dir = %handover.pin_dir.display(), reason = %why,
                "the pinned XDP program does not match this start: detaching it and starting fresh");
            remove_pins(dir)?;
            Ok((Some(PinDir::create(handover.pin_dir)?), None))
        }
    }
}

/// Opens the pins of `dir` if the same program build made them for the same `devices`.
fn adopt(dir: &PinDir, devices: &[(String, u32)], fingerprint: &str) -> Result<Adopted, String> {
    match dir.program() {
        Some(f) if f == fingerprint => {}
        Some(f) => {
            return Err(format!(
                "made by another program build ({f}, this is {fingerprint})"
            ))
        }
        None => return Err("incomplete (no program record)".into()),
    }
    if !dir.links_match(devices).map_err(|e| e.to_string())? {
        return Err(format!(
            "attached to other devices than this start's {devices:?}"
        ));
    }
    let links = devices
        .iter()
        .map(|(d, i)| {
            PinnedLink::from_pin(dir.link(d, *i)).map_err(|e| format!("link on {d}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut maps = HashMap::new();
    for name in MAPS {
        let data = MapData::from_pin(dir.map(name)).map_err(|e| format!("map {name}: {e}"))?;
        let kind = data
            .info()
            .and_then(|i| i.map_type())
            .map_err(|e| format!("map {name}: {e}"))?;
        // The typed maps built from these check key and value sizes.
        let map = match kind {
            MapType::Array => Map::Array(data),
            MapType::PerCpuArray => Map::PerCpuArray(data),
            MapType::XskMap => Map::XskMap(data),
            MapType::Hash => Map::HashMap(data),
            other => return Err(format!("map {name} is a {other:?}")),
        };
        maps.insert(name.to_string(), map);
    }
    Ok(Adopted { maps, links })
}

/// Loads the program and attaches it to `devices`; with `pins`, pins its maps and links there.
fn load_fresh(
    bytes: &[u8],
    devices: &[(String, u32)],
    pins: Option<&PinDir>,
) -> Result<Fresh, KernelError> {
    let mut ebpf = Ebpf::load(bytes).map_err(load_err)?;
    let mut maps = HashMap::new();
    for name in MAPS {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| load_err(format!("no {name} map")))?;
        if let Some(p) = pins {
            map.pin(p.map(name)).map_err(load_err)?;
        }
        maps.insert(name.to_string(), map);
    }
    let program: &mut Xdp = ebpf
        .program_mut("mg_relay")
        .ok_or_else(|| load_err("no mg_relay program"))?
        .try_into()
        .map_err(load_err)?;
    program.load().map_err(load_err)?;
    let mut attached = Vec::new();
    let mut links = Vec::new();
    for (dev, ifindex) in devices {
        let (id, mode) = match program.attach(dev, XdpFlags::DRV_MODE) {
            Ok(id) => (id, "native"),
            Err(native) => {
                tracing::warn!(device = %dev, error = %native, "native XDP unavailable; using generic mode");
                let id =
                    program
                        .attach(dev, XdpFlags::SKB_MODE)
                        .map_err(|e| KernelError::Attach {
                            device: dev.clone(),
                            reason: e.to_string(),
                        })?;
                (id, "generic")
            }
        };
        if let Some(p) = pins {
            let pin_err = |e: String| KernelError::Attach {
                device: dev.clone(),
                reason: format!("pinning the link for handover: {e}"),
            };
            let link = program.take_link(id).map_err(|e| pin_err(e.to_string()))?;
            let link = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
            links.push(
                link.pin(p.link(dev, *ifindex))
                    .map_err(|e| pin_err(e.to_string()))?,
            );
        }
        tracing::info!(device = %dev, mode, "XDP program attached");
        attached.push((dev.clone(), mode));
    }
    Ok(Fresh {
        maps,
        links,
        ebpf,
        attached,
    })
}

/// Removes the pins of `dir` (detaching the program when no process holds its links) and puts
/// back the host settings recorded there.
fn remove_pins(dir: PinDir) -> io::Result<()> {
    let restores = dir.clear()?;
    netdev::restore(&restores);
    Ok(())
}

/// `mediagate detach`: removes the handover pins in `pin_dir`, which detaches the XDP program
/// of a stopped mediagate and restores the forwarding settings it left. Returns whether there
/// was anything to remove.
pub fn detach(pin_dir: &Path) -> io::Result<bool> {
    match PinDir::existing(pin_dir) {
        Some(dir) => {
            remove_pins(dir)?;
            Ok(true)
        }
        None => Ok(false),
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
