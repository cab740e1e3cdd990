//! Per-stream counters: written by the one data-plane thread that owns the stream, read by the
//! control thread for `/status` and media timeouts. Single writer, so relaxed atomics suffice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

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
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::UnknownSource,
        DropReason::StrictSource,
        DropReason::NoDestination,
        DropReason::SendFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::StrictSource => "strict_source",
            DropReason::NoDestination => "no_destination",
            DropReason::SendFailed => "send_failed",
        }
    }
}

/// Counters and state of one stream.
#[derive(Debug)]
pub struct StreamStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets sent *out of* this stream's socket (the other leg's traffic toward this peer).
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drops: [AtomicU64; DropReason::ALL.len()],
    /// Milliseconds since [`StreamStats::epoch`] of the last accepted packet, 0 = never.
    last_rx_ms: AtomicU64,
    latched: AtomicBool,
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
            last_rx_ms: AtomicU64::new(0),
            latched: AtomicBool::new(false),
            remote: Mutex::new(remote),
            epoch,
        }
    }

    /// Counts `packets` accepted packets totalling `bytes`, received at `now`.
    pub fn record_rx(&self, packets: u64, bytes: u64, now: Instant) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_rx_ms.store(ms.max(1), Relaxed);
    }

    pub fn record_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn record_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
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

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum()
    }

    /// When the last packet was accepted, or the creation instant if none was.
    pub fn last_activity(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_rx_ms.load(Relaxed))
    }
}
