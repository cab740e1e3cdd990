//! The RTCP capture hand-off: the socket tier copies each RTCP packet it relays into a bounded
//! lock-free queue that the control loop drains to export it as HEP (`signalling::hep`). RTCP
//! is about one packet per five seconds per stream, so the copy costs nothing measurable; the
//! relay thread never blocks or allocates for it: when the queue is full the copy is skipped
//! (counted) and the packet is relayed all the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::media::StreamId;

/// Copies waiting for the control loop at most.
const QUEUE: usize = 1024;
/// Longest RTCP compound packet copied whole (a SR with a few report blocks and SDES is far
/// below); longer ones are cut, which still leaves the first report to read.
pub const COPY_MAX: usize = 512;

/// One relayed RTCP packet, copied.
#[derive(Clone)]
pub struct RtcpCopy {
    /// The stream it was received on.
    pub stream: StreamId,
    /// Its sender and mediagate's address it arrived at.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub time: SystemTime,
    len: u16,
    data: [u8; COPY_MAX],
}

impl RtcpCopy {
    /// The copied bytes.
    pub fn packet(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// The relay threads' end (one clone each).
#[derive(Clone)]
pub struct TapSender {
    tx: Sender<RtcpCopy>,
    skipped: Arc<AtomicU64>,
}

impl TapSender {
    /// Hands a copy of `packet` to the control loop, or skips it when the queue is full.
    pub fn copy(&self, stream: StreamId, src: SocketAddr, dst: SocketAddr, packet: &[u8]) {
        let len = packet.len().min(COPY_MAX);
        let mut data = [0u8; COPY_MAX];
        data[..len].copy_from_slice(&packet[..len]);
        let copy = RtcpCopy {
            stream,
            src,
            dst,
            time: SystemTime::now(),
            len: len as u16,
            data,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(copy) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The control loop's end.
pub struct TapReceiver {
    rx: Receiver<RtcpCopy>,
    skipped: Arc<AtomicU64>,
}

impl TapReceiver {
    /// The copies waiting now (bounded by the queue's size).
    pub fn drain(&self) -> impl Iterator<Item = RtcpCopy> + '_ {
        self.rx.try_iter().take(QUEUE)
    }

    /// Copies skipped because the queue was full.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// A new hand-off queue.
pub fn tap() -> (TapSender, TapReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let skipped = Arc::new(AtomicU64::new(0));
    (
        TapSender {
            tx,
            skipped: skipped.clone(),
        },
        TapReceiver { rx, skipped },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_bounded_and_a_full_queue_skips() {
        let (tx, rx) = tap();
        let a: SocketAddr = "10.0.0.1:7001".parse().unwrap();
        let long = vec![0x81u8; COPY_MAX + 100];
        for _ in 0..QUEUE + 5 {
            tx.copy(3, a, a, &long);
        }
        assert_eq!(rx.skipped(), 5);
        let got: Vec<_> = rx.drain().collect();
        assert_eq!(got.len(), QUEUE);
        assert_eq!(got[0].packet().len(), COPY_MAX);
        assert_eq!(got[0].stream, 3);
        assert_eq!(rx.drain().count(), 0);
    }
}
