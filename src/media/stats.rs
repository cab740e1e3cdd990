//! Per-stream counters: written by the one data-plane thread that owns the stream, read by the
//! control thread for `/status` and media timeouts. Single writer, so relaxed atomics suffice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use super::quality::{Quality, QualityCounts};

/// Why a data plane dropped a packet; every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not from the SDP or signalling IP before latching.
    UnknownSource = 0,
    /// From another source than the latched one.
    StrictSource = 1,
    /// The other side's address is not known yet.
    NoDestination = 2,
    /// The kernel refused the send.
    SendFailed = 3,
    /// Larger than `media.max_packet_bytes`.
    Oversize = 4,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::UnknownSource,
        DropReason::StrictSource,
        DropReason::NoDestination,
        DropReason::SendFailed,
        DropReason::Oversize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::StrictSource => "strict_source",
            DropReason::NoDestination => "no_destination",
            DropReason::SendFailed => "send_failed",
            DropReason::Oversize => "oversize",
        }
    }
}

/// Which forwarding tier carries a stream's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tier {
    Socket = 0,
    Kernel = 1,
    Afxdp = 2,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Socket => "socket",
            Tier::Kernel => "kernel",
            Tier::Afxdp => "afxdp",
        }
    }
}

/// Totals the in-kernel tier keeps for a stream, copied in by the kernel tier's collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
}

/// Counters and state of one stream. User-space counters are written by the one relay thread
/// that owns the stream; kernel-tier totals by the kernel tier's collector; both are read by the
/// control thread for `/status` and media timeouts. Single writers, so relaxed atomics suffice.
#[derive(Debug)]
pub struct StreamStats {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    /// Packets sent *out of* this stream's socket (the other leg's traffic toward this peer).
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    kernel: [AtomicU64; 5],
    /// RTP quality (expected, lost, jitter × 16) as measured by the user-space tier that
    /// relays the stream, and as measured by the XDP program.
    quality: [AtomicU64; 3],
    kernel_quality: [AtomicU64; 3],
    /// RTP clock rate of the stream's payload (0 = unknown or not RTP), set by the control
    /// thread from SDP and read by the data planes for jitter.
    clock_rate: AtomicU32,
    /// Milliseconds since [`StreamStats::epoch`] of the last accepted packet, 0 = never.
    last_rx_ms: AtomicU64,
    latched: AtomicBool,
    tier: AtomicU8,
    /// Current destination as seen by the data plane; written only on latch or renegotiation.
    remote: Mutex<Option<SocketAddr>>,
    epoch: Instant,
}

impl StreamStats {
    /// `epoch` is the instant the stream was created; activity is measured from it.
    pub fn new(epoch: Instant, remote: Option<SocketAddr>) -> Self {
        StreamStats {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: Default::default(),
            kernel: Default::default(),
            quality: Default::default(),
            kernel_quality: Default::default(),
            clock_rate: AtomicU32::new(0),
            last_rx_ms: AtomicU64::new(0),
            latched: AtomicBool::new(false),
            tier: AtomicU8::new(Tier::Socket as u8),
            remote: Mutex::new(remote),
            epoch,
        }
    }

    /// Counts `packets` accepted packets totalling `bytes`, received at `now`.
    pub fn record_rx(&self, packets: u64, bytes: u64, now: Instant) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
        self.record_activity(now);
    }

    /// Notes that a packet was accepted at `now` (keeps the latest of all writers).
    pub fn record_activity(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_rx_ms.fetch_max(ms.max(1), Relaxed);
    }

    pub fn record_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn record_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    /// Stores the kernel tier's latest totals for this stream.
    pub fn store_kernel(&self, t: KernelTotals) {
        for (slot, v) in
            self.kernel
                .iter()
                .zip([t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes, t.drops])
        {
            slot.store(v, Relaxed);
        }
    }

    /// Sets the RTP clock rate of the stream's payload (from the `a=rtpmap` of the SDP that
    /// describes what the stream receives; 0 for RTCP or an unknown rate).
    pub fn set_clock_rate(&self, rate: u32) {
        self.clock_rate.store(rate, Relaxed);
    }

    /// The RTP clock rate jitter is measured in (0 = unknown: no jitter).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate.load(Relaxed)
    }

    /// Nanoseconds from the stream's creation to `now`: the arrival clock of the user-space
    /// tiers' jitter measurement (only differences matter).
    pub fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Publishes the quality counts of the user-space tier that relays the stream.
    pub fn store_quality(&self, c: QualityCounts) {
        store3(&self.quality, c);
    }

    /// Publishes the quality counts the XDP program keeps for the stream.
    pub fn store_kernel_quality(&self, c: QualityCounts) {
        store3(&self.kernel_quality, c);
    }

    /// The stream's RTP quality, `None` before any RTP packet was expected (RTCP streams,
    /// silent ones). Where both the kernel and a user-space tier saw the stream (the kernel tier
    /// passes the first packets of a new destination to the socket tier), the measurement
    /// that expected more packets, i.e. saw more of the stream, is the one shown.
    pub fn quality(&self) -> Option<Quality> {
        let (user, kernel) = (load3(&self.quality), load3(&self.kernel_quality));
        let best = if kernel.expected > user.expected {
            kernel
        } else {
            user
        };
        Quality::new(best, self.clock_rate())
    }

    fn total(&self, user: &AtomicU64, kernel: usize) -> u64 {
        user.load(Relaxed) + self.kernel[kernel].load(Relaxed)
    }

    pub fn rx_packets(&self) -> u64 {
        self.total(&self.rx_packets, 0)
    }
    pub fn rx_bytes(&self) -> u64 {
        self.total(&self.rx_bytes, 1)
    }
    pub fn tx_packets(&self) -> u64 {
        self.total(&self.tx_packets, 2)
    }
    pub fn tx_bytes(&self) -> u64 {
        self.total(&self.tx_bytes, 3)
    }

    /// The user-space tiers' counters alone (`drops` summed over reasons).
    pub fn user_totals(&self) -> KernelTotals {
        KernelTotals {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: self.drops.iter().map(|d| d.load(Relaxed)).sum(),
        }
    }

    /// The kernel tier's latest totals alone.
    pub fn kernel_totals(&self) -> KernelTotals {
        let k = |i: usize| self.kernel[i].load(Relaxed);
        KernelTotals {
            rx_packets: k(0),
            rx_bytes: k(1),
            tx_packets: k(2),
            tx_bytes: k(3),
            drops: k(4),
        }
    }

    /// User-space drops for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    /// Packets handled by the kernel tier (received and sent), to show which tier carried a
    /// stream.
    pub fn kernel_packets(&self) -> u64 {
        self.kernel[0].load(Relaxed) + self.kernel[2].load(Relaxed)
    }

    /// Called off the per-packet path: on latching or renegotiation only.
    pub fn set_remote(&self, remote: Option<SocketAddr>, latched: bool) {
        *self.remote.lock().unwrap_or_else(|e| e.into_inner()) = remote;
        self.latched.store(latched, Relaxed);
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        *self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn latched(&self) -> bool {
        self.latched.load(Relaxed)
    }

    pub fn set_tier(&self, tier: Tier) {
        self.tier.store(tier as u8, Relaxed);
    }

    pub fn tier(&self) -> Tier {
        match self.tier.load(Relaxed) {
            1 => Tier::Kernel,
            2 => Tier::Afxdp,
            _ => Tier::Socket,
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum::<u64>() + self.kernel[4].load(Relaxed)
    }

    /// When the last packet was accepted, or the creation instant if none was.
    pub fn last_activity(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_rx_ms.load(Relaxed))
    }
}

fn store3(slots: &[AtomicU64; 3], c: QualityCounts) {
    slots[0].store(c.expected, Relaxed);
    slots[1].store(c.lost, Relaxed);
    slots[2].store(u64::from(c.jitter), Relaxed);
}

fn load3(slots: &[AtomicU64; 3]) -> QualityCounts {
    QualityCounts {
        expected: slots[0].load(Relaxed),
        lost: slots[1].load(Relaxed),
        jitter: slots[2].load(Relaxed) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_is_the_measurement_that_saw_more_of_the_stream() {
        let s = StreamStats::new(Instant::now(), None);
        assert_eq!(s.quality(), None, "nothing expected yet");
        s.set_clock_rate(8000);
        // The socket tier relayed the first packets (next hop unresolved), the kernel the rest.
        s.store_quality(QualityCounts {
            expected: 2,
            lost: 1,
            jitter: 0,
        });
        s.store_kernel_quality(QualityCounts {
            expected: 200,
            lost: 2,
            jitter: 16 * 8,
        });
        let q = s.quality().unwrap();
        assert_eq!((q.packets_expected, q.packets_lost), (200, 2));
        assert_eq!(q.jitter_ms, Some(1.0));
        s.store_quality(QualityCounts {
            expected: 300,
            lost: 0,
            jitter: 0,
        });
        assert_eq!(s.quality().unwrap().packets_lost, 0, "user space saw more");
    }
}
