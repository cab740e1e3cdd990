//! The media port allocator: RTP on an even port, RTCP on the next odd one.

use std::collections::VecDeque;

/// A pool of RTP/RTCP port pairs. Freed pairs go to the back of the queue, so a port is not
/// reused at once and late packets of an ended call do not reach the next one.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    total: usize,
}

impl PortPool {
    /// All pairs `(p, p+1)` with even `p` in `first..=last`.
    pub fn new(first: u16, last: u16) -> Self {
        let even = first.saturating_add(first % 2);
        let free: VecDeque<u16> = (even..last).step_by(2).collect();
        PortPool {
            total: free.len(),
            free,
        }
    }

    /// Takes a pair; returns its RTP port.
    pub fn allocate(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Returns a pair taken by [`Self::allocate`].
    pub fn release(&mut self, rtp_port: u16) {
        debug_assert!(
            !self.free.contains(&rtp_port),
            "port {rtp_port} freed twice"
        );
        self.free.push_back(rtp_port);
    }

    /// Takes the specific pair starting at `rtp_port` (a call adopted from the call-state
    /// journal after a restart keeps its ports, so its peers need no new SDP). False when the
    /// port is odd, outside the range or already taken.
    pub fn claim(&mut self, rtp_port: u16) -> bool {
        match self.free.iter().position(|&p| p == rtp_port) {
            Some(i) => {
                self.free.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_and_recycled_last() {
        let mut p = PortPool::new(30000, 30005);
        assert_eq!(p.total(), 3);
        let a = p.allocate().unwrap();
        assert_eq!(a, 30000);
        p.release(a);
        assert_eq!(p.allocate(), Some(30002));
        assert_eq!(p.allocate(), Some(30004));
        assert_eq!(p.allocate(), Some(30000));
        assert_eq!(p.allocate(), None);
        let odd = PortPool::new(30001, 30004);
        assert_eq!(odd.total(), 1, "only 30002/30003 fits");
    }

    #[test]
    fn claim_takes_exactly_one_free_pair() {
        let mut p = PortPool::new(30000, 30007);
        assert!(p.claim(30002));
        assert!(!p.claim(30002), "already taken");
        assert!(!p.claim(30003), "odd");
        assert!(!p.claim(29998), "outside the range");
        assert!(!p.claim(30008), "outside the range");
        assert_eq!(p.free(), 3);
        let mut got: Vec<u16> = std::iter::from_fn(|| p.allocate()).collect();
        got.sort_unstable();
        assert_eq!(got, [30000, 30004, 30006]);
        p.release(30002);
        assert_eq!(p.allocate(), Some(30002));
    }
}
