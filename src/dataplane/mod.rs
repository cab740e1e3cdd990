//! Media forwarding tiers behind one facade: the socket tier ([`socket::SocketRelay`]) always
//! runs (it is also the slow path of the kernel tier), the in-kernel XDP tier
//! ([`kernel::KernelTier`]) mirrors IPv4 streams into its maps when selected.

pub mod afxdp;
pub mod kernel;
pub mod netlink;
pub mod socket;
pub mod tap;

use std::io;
use std::net::IpAddr;

use crate::config::{Dataplane as Choice, MediaConfig};
use crate::media::Command;
use kernel::Mode;

/// The running data plane.
pub struct Dataplane {
    // Drop order: stop the AF_XDP workers, then detach XDP, then close the sockets.
    afxdp: Option<afxdp::AfxdpTier>,
    kernel: Option<kernel::KernelTier>,
    socket: socket::SocketRelay,
    /// Copies of relayed RTCP for the HEP capture (`None` when capture is off).
    rtcp: Option<tap::TapReceiver>,
}

impl Dataplane {
    /// Starts the configured tier. `media` lists mediagate's media addresses (the trunks' local
    /// addresses and the media interfaces), each with the device named for it in the config:
    /// XDP attaches to those devices. `auto` takes the best tier that starts and says why the
    /// others did not; a named tier fails instead. With `capture_rtcp` the user-space tiers copy
    /// the RTCP they relay for the HEP capture ([`Self::rtcp_copies`]), and the kernel tier
    /// leaves RTCP to the socket tier so that it is copied too.
    pub fn start(
        config: &MediaConfig,
        media: &[(IpAddr, Option<String>)],
        capacity: usize,
        capture_rtcp: bool,
    ) -> anyhow::Result<Self> {
        let (tap_tx, rtcp) = match capture_rtcp {
            true => {
                let (tx, rx) = tap::tap();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let socket = socket::SocketRelay::start(
            config.threads,
            capacity,
            config.max_packet,
            tap_tx.clone(),
        )?;
        let ports = (config.port_first, config.port_last);
        // Validated to 64..=2048 (`config::MAX_PACKET_RANGE`).
        let max_payload = u16::try_from(config.max_packet).unwrap_or(u16::MAX);
        let handover = kernel::Handover {
            pin_dir: &config.pin_dir,
            enabled: config.handover,
        };
        let start_kernel = || {
            kernel::KernelTier::start(
                media,
                ports,
                max_payload,
                Mode::Kernel,
                capture_rtcp,
                handover,
            )
        };
        let start_afxdp = || -> anyhow::Result<_> {
            if config.handover {
                tracing::warn!(
                    "media.handover covers kernel-tier streams only: AF_XDP sockets die with the \
                     process, so AF_XDP-tier media stops during a restart"
                );
            }
            // Nothing of the AF_XDP tier survives the process: no pins (old ones are removed).
            let no_pins = kernel::Handover {
                enabled: false,
                ..handover
            };
            let mut k = kernel::KernelTier::start(
                media,
                ports,
                max_payload,
                Mode::Afxdp,
                capture_rtcp,
                no_pins,
            )?;
            let a = afxdp::AfxdpTier::start(
                &mut k,
                &config.cores,
                config.busy_poll,
                capacity,
                config.max_packet,
                tap_tx.clone(),
            )?;
            Ok((k, a))
        };
        let (kernel, afxdp) = match config.dataplane {
            Choice::Socket => {
                tracing::info!("data plane: socket (configured)");
                (None, None)
            }
            Choice::Kernel => {
                let k = start_kernel()?;
                tracing::info!("data plane: kernel (configured)");
                (Some(k), None)
            }
            Choice::Afxdp => {
                let (k, a) = start_afxdp()?;
                tracing::info!("data plane: afxdp (configured)");
                (Some(k), Some(a))
            }
            Choice::Auto => match start_kernel() {
                Ok(k) => {
                    tracing::info!("data plane auto: kernel (XDP program loaded and attached)");
                    (Some(k), None)
                }
                Err(kernel_err) => match start_afxdp() {
                    Ok((k, a)) => {
                        tracing::info!(kernel = %kernel_err, "data plane auto: afxdp (kernel tier unavailable)");
                        (Some(k), Some(a))
                    }
                    Err(afxdp_err) => {
                        tracing::info!(kernel = %kernel_err, afxdp = %afxdp_err,
                            "data plane auto: socket (XDP tiers unavailable)");
                        (None, None)
                    }
                },
            },
        };
        Ok(Dataplane {
            afxdp,
            kernel,
            socket,
            rtcp,
        })
    }

    /// The RTCP packets the socket and AF_XDP tiers relayed since the last call, copied for the
    /// HEP capture (none when capture is off).
    pub fn rtcp_copies(&self) -> impl Iterator<Item = tap::RtcpCopy> + '_ {
        self.rtcp.iter().flat_map(|r| r.drain())
    }

    /// Applies a session change to every running tier.
    pub fn apply(&mut self, cmd: Command) -> io::Result<()> {
        if let Some(k) = &mut self.kernel {
            k.apply(&cmd)?;
        }
        if let Some(a) = &mut self.afxdp {
            a.apply(&cmd)?;
        }
        self.socket.apply(cmd)
    }

    /// Ends a handover start, once the calls of the state file are restored: kernel map entries
    /// of the previous run that no restored stream claimed stop forwarding. Returns how many.
    pub fn finish_adoption(&mut self) -> io::Result<usize> {
        match &mut self.kernel {
            Some(k) => k.finish_adoption(),
            None => Ok(0),
        }
    }

    /// A stop that hung up every call: the exit detaches the XDP program and restores the host
    /// settings even with `media.handover` (its pins are removed now).
    pub fn end_handover(&mut self) -> io::Result<()> {
        match &mut self.kernel {
            Some(k) => k.end_handover(),
            None => Ok(()),
        }
    }

    /// Counters of the tiers for `/metrics`, read at scrape time (never on the packet path).
    pub fn snapshot(&self) -> Snapshot {
        let (workers, neighbour_probes, latency) = match &self.afxdp {
            Some(a) => {
                let (w, p, h) = a.snapshot();
                (w, p, Some(h))
            }
            None => (Vec::new(), 0, None),
        };
        Snapshot {
            tier: match (&self.afxdp, &self.kernel) {
                (Some(_), _) => "afxdp",
                (None, Some(_)) => "kernel",
                (None, None) => "socket",
            },
            program_counters: self
                .kernel
                .as_ref()
                .map(|k| k.counters())
                .unwrap_or_default(),
            workers,
            neighbour_probes,
            latency,
            rtcp_copies_skipped: self.rtcp.as_ref().map_or(0, |r| r.skipped()),
        }
    }

    /// The `dataplane` object of `/status`.
    pub fn status(&self) -> serde_json::Value {
        let mut v = match &self.kernel {
            Some(k) => k.status(),
            None => serde_json::json!({}),
        };
        v["tier"] = match (&self.afxdp, &self.kernel) {
            (Some(a), _) => {
                v["afxdp"] = a.status();
                "afxdp"
            }
            (None, Some(_)) => "kernel",
            (None, None) => "socket",
        }
        .into();
        v
    }
}

/// What [`Dataplane::snapshot`] reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The tier in use: `socket`, `kernel` or `afxdp`.
    pub tier: &'static str,
    /// The XDP program's counters by outcome (empty without an XDP tier).
    pub program_counters: Vec<(&'static str, u64)>,
    /// One entry per AF_XDP worker.
    pub workers: Vec<WorkerCounters>,
    /// Empty datagrams sent to make the kernel resolve a next hop (AF_XDP tier).
    pub neighbour_probes: u64,
    /// The AF_XDP workers' merged relay-latency histogram in nanoseconds.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
    /// Relayed RTCP packets not copied for the HEP capture because the hand-off was full.
    pub rtcp_copies_skipped: u64,
}

/// One AF_XDP worker's loop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub core: usize,
    pub iterations: u64,
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
    pub no_neighbour: u64,
}

/// Adds the media port range to `net.ipv4.ip_local_reserved_ports` of the current network
/// namespace, so the kernel never hands one of mediagate's ports to another socket as an
/// ephemeral port. Returns the new value of the setting.
pub fn reserve_ports(first: u16, last: u16) -> std::io::Result<String> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH)?;
    let current = current.trim();
    let range = format!("{first}-{last}");
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    std::fs::write(PATH, &value)?;
    Ok(std::fs::read_to_string(PATH)?.trim().to_string())
}
