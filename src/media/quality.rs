//! RTP quality of one received stream: RFC 3550 Appendix A.1 sequence tracking (loss) and A.8
//! interarrival jitter, and an E-model MOS estimate from the two.
//!
//! [`RtpQuality`] is the per-stream state. It has the layout of `struct mg_quality` in
//! `bpf/include/mg_abi.h`, and the XDP program runs the same integer steps in the kernel, so the
//! three forwarding tiers measure a stream identically and the BPF fixture tests can compare
//! the program's state with [`RtpQuality::record`] fed the same packets.

/// A.1 `MAX_DROPOUT`: a forward jump of fewer sequence numbers is in-order progress (a loss).
const MAX_DROPOUT: u16 = 3000;
/// A.1 `MAX_MISORDER`: a backward step of at most this many is a late or duplicate packet.
const MAX_MISORDER: u16 = 100;
/// A.1 `MIN_SEQUENTIAL`: in-order packets a new source must send before it is counted.
const MIN_SEQUENTIAL: u16 = 2;
/// A.1 `RTP_SEQ_MOD`.
const SEQ_MOD: u32 = 1 << 16;
/// Arrival gaps are clamped to this (a minute), so `gap × clock rate` cannot overflow for any
/// clock rate SDP gives ([`crate::sdp::MAX_CLOCK_RATE`]).
const MAX_GAP_NS: u64 = 60_000_000_000;
/// Transit differences are clamped to this many timestamp units, so the scaled jitter cannot
/// overflow 32 bits whatever a sender's timestamps do.
const MAX_TRANSIT_STEP: u32 = 1 << 24;
/// [`RtpQuality::flags`]: `last_arrival_ns`/`last_ts` hold the previous packet of the source.
pub const HAVE_PREVIOUS: u32 = 1;

/// The fields of an RTP header that quality tracking reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// The header of a UDP payload if it is RTP: version 2, at least the 12 fixed bytes, and a
    /// payload type outside 72–76, which are RTCP packet types 200–204 with the marker bit
    /// set (RFC 5761 §4): RTCP and other traffic on the port are not counted.
    pub fn parse(payload: &[u8]) -> Option<RtpHeader> {
        let h: &[u8; 12] = payload.get(..12)?.try_into().ok()?;
        if h[0] >> 6 != 2 || (72..=76).contains(&(h[1] & 0x7f)) {
            return None;
        }
        Some(RtpHeader {
            seq: u16::from_be_bytes([h[2], h[3]]),
            timestamp: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ssrc: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        })
    }
}

/// RFC 3550 A.1/A.8 state of one received stream, in the layout of `struct mg_quality`
/// (asserted in `dataplane::kernel::abi`). Counts are cumulative over every source (SSRC) the
/// stream has carried: when the source changes or its sequence restarts, the totals so far
/// move into `prior_expected`/`prior_lost` and A.1 starts again for the new one.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpQuality {
    /// Arrival time of the previous packet (any clock in nanoseconds; only differences count).
    pub last_arrival_ns: u64,
    pub ssrc: u32,
    /// RTP packets seen from any source, probation included; 0 = none yet.
    pub packets: u32,
    /// A.1 `max_seq`, `probation`, `cycles` (wraps × 65536), `base_seq`, `bad_seq`, `received`.
    pub max_seq: u16,
    pub probation: u16,
    pub cycles: u32,
    pub base_seq: u32,
    pub bad_seq: u32,
    pub received: u32,
    /// A.8 jitter in timestamp units, scaled by 16 (the integer form of A.8).
    pub jitter: u32,
    /// RTP timestamp of the previous packet.
    pub last_ts: u32,
    /// Expected and lost packets of earlier sources (or sequence restarts) of this stream.
    pub prior_expected: u32,
    pub prior_lost: u32,
    /// [`HAVE_PREVIOUS`].
    pub flags: u32,
}

/// What a stream's quality state says, ready to publish: cumulative expected and lost packets
/// and the scaled jitter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityCounts {
    pub expected: u64,
    pub lost: u64,
    /// Timestamp units × 16.
    pub jitter: u32,
}

impl RtpQuality {
    /// Takes one received RTP packet into account. `arrival_ns` is its arrival time, `clock_rate`
    /// the RTP clock of the stream's payload (0 = unknown: loss is tracked, jitter is not).
    pub fn record(&mut self, h: RtpHeader, arrival_ns: u64, clock_rate: u32) {
        if self.packets == 0 || h.ssrc != self.ssrc {
            self.fold_prior();
            // A.1, a new source: on probation until MIN_SEQUENTIAL packets in sequence.
            self.init_seq(h.seq);
            self.max_seq = h.seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
            self.ssrc = h.ssrc;
            self.flags &= !HAVE_PREVIOUS;
        }
        self.packets = self.packets.wrapping_add(1);
        self.update_seq(h.seq);
        if clock_rate != 0 {
            self.update_jitter(h.timestamp, arrival_ns, clock_rate);
        }
    }

    /// A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// A.1 `update_seq`, counting into `received` what A.1 counts as valid.
    fn update_seq(&mut self, seq: u16) {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return;
        }
        if udelta < MAX_DROPOUT {
            // In order, with permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: twice in sequence means the sender restarted its numbering.
            if u32::from(seq) != self.bad_seq {
                self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return;
            }
            self.fold_prior();
            self.init_seq(seq);
        }
        // Otherwise a duplicate or reordered packet, counted as A.1 does.
        self.received = self.received.wrapping_add(1);
    }

    /// A.8 in its integer form, with the transit difference taken from consecutive packets
    /// (`(Rj − Ri) − (Sj − Si)`, the same as the difference of their transits).
    fn update_jitter(&mut self, ts: u32, arrival_ns: u64, clock_rate: u32) {
        if self.flags & HAVE_PREVIOUS != 0 {
            let gap_ns = arrival_ns
                .saturating_sub(self.last_arrival_ns)
                .min(MAX_GAP_NS);
            // Saturating: exact for SDP's rates (at most 1 MHz), no overflow for any other.
            let arrival_units =
                (gap_ns.saturating_mul(u64::from(clock_rate)) / 1_000_000_000) as u32;
            let d = (arrival_units.wrapping_sub(ts.wrapping_sub(self.last_ts)) as i32)
                .unsigned_abs()
                .min(MAX_TRANSIT_STEP);
            self.jitter = self
                .jitter
                .wrapping_add(d)
                .wrapping_sub(self.jitter.wrapping_add(8) >> 4);
        }
        self.last_arrival_ns = arrival_ns;
        self.last_ts = ts;
        self.flags |= HAVE_PREVIOUS;
    }

    /// Expected packets of the current source (A.1: extended highest − base + 1), 0 before its
    /// probation ends.
    fn current_expected(&self) -> u32 {
        if self.received == 0 {
            return 0;
        }
        self.cycles
            .wrapping_add(u32::from(self.max_seq))
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// Moves the current source's totals into the prior ones.
    fn fold_prior(&mut self) {
        let expected = self.current_expected();
        self.prior_expected = self.prior_expected.wrapping_add(expected);
        self.prior_lost = self
            .prior_lost
            .wrapping_add(expected.saturating_sub(self.received));
    }

    /// Cumulative expected and lost packets (lost clamped at 0 per source, as duplicates can
    /// make A.1's count negative) and the jitter.
    pub fn counts(&self) -> QualityCounts {
        let expected = self.current_expected();
        QualityCounts {
            expected: u64::from(self.prior_expected) + u64::from(expected),
            lost: u64::from(self.prior_lost) + u64::from(expected.saturating_sub(self.received)),
            jitter: self.jitter,
        }
    }
}

/// The quality of a stream as `/status`, the CDRs and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub packets_expected: u64,
    pub packets_lost: u64,
    /// `packets_lost / packets_expected`.
    pub loss_ratio: f64,
    /// A.8 jitter in milliseconds; `None` when the stream's clock rate is unknown.
    pub jitter_ms: Option<f64>,
    /// [`mos`] of the loss and jitter; `None` without jitter.
    pub mos: Option<f64>,
}

impl Quality {
    /// The quality of `counts` for a stream with RTP clock `clock_rate` (0 = unknown); `None`
    /// when no packet was expected yet.
    pub fn new(counts: QualityCounts, clock_rate: u32) -> Option<Quality> {
        if counts.expected == 0 {
            return None;
        }
        let loss_ratio = counts.lost as f64 / counts.expected as f64;
        let jitter_ms = (clock_rate != 0)
            .then(|| f64::from(counts.jitter) / 16.0 * 1000.0 / f64::from(clock_rate));
        Some(Quality {
            packets_expected: counts.expected,
            packets_lost: counts.lost,
            loss_ratio,
            jitter_ms,
            mos: jitter_ms.map(|j| mos(loss_ratio, j)),
        })
    }
}

/// E-model R-factor of an unimpaired connection (ITU-T G.107 default parameters).
const R0: f64 = 93.2;
/// G.113 Appendix I packet-loss robustness of G.711 with packet loss concealment.
const BPL: f64 = 25.1;

/// Estimated MOS (1.0–4.5) of a call leg from its loss fraction and jitter, by the ITU-T G.107
/// E-model simplified for a relay that sees no RTCP (after Cole & Rosenbluth, "Voice over IP
/// performance monitoring", ACM SIGCOMM CCR 31(2), 2001):
///
/// - effective one-way latency `d = 2·jitter + 10 ms` (jitter-buffer delay plus codec delay;
///   network latency is unknown without RTCP and taken as 0);
/// - delay impairment `Id = d/40` for `d < 160 ms`, else `(d − 120)/10`;
/// - equipment impairment of G.107 §7.4 for G.711 (`Ie = 0`) with random loss
///   (`BurstR = 1`): `Ie_eff = 95 · Ppl / (Ppl + Bpl)`, `Ppl` in percent, `Bpl = 25.1`;
/// - `R = 93.2 − Id − Ie_eff`, and MOS from G.107 Annex B:
///   `1 + 0.035R + R(R − 60)(100 − R)·7·10⁻⁶` for `0 < R < 100` (1 below, 4.5 above).
pub fn mos(loss_ratio: f64, jitter_ms: f64) -> f64 {
    let d = 2.0 * jitter_ms.max(0.0) + 10.0;
    let id = if d < 160.0 {
        d / 40.0
    } else {
        (d - 120.0) / 10.0
    };
    let ppl = (loss_ratio.clamp(0.0, 1.0)) * 100.0;
    let ie_eff = 95.0 * ppl / (ppl + BPL);
    let r = R0 - id - ie_eff;
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    fn h(seq: u16, timestamp: u32) -> RtpHeader {
        RtpHeader {
            seq,
            timestamp,
            ssrc: SSRC,
        }
    }

    /// Feeds sequence numbers 20 ms apart with matching timestamps (no jitter).
    fn feed(q: &mut RtpQuality, seqs: &[u16]) {
        for &s in seqs {
            let t = u64::from(s) * 20_000_000;
            q.record(h(s, u32::from(s) * 160), t, 8000);
        }
    }

    #[test]
    fn parses_rtp_and_rejects_rtcp_and_other_versions() {
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 8;
        p[2..4].copy_from_slice(&7u16.to_be_bytes());
        p[4..8].copy_from_slice(&1120u32.to_be_bytes());
        p[8..12].copy_from_slice(&SSRC.to_be_bytes());
        assert_eq!(RtpHeader::parse(&p), Some(h(7, 1120)));
        assert_eq!(RtpHeader::parse(&p[..11]), None, "short");
        p[1] = 200; // RTCP SR: version 2, "payload type" 72 with the marker bit
        assert_eq!(RtpHeader::parse(&p), None);
        p[1] = 0x80 | 76;
        assert_eq!(RtpHeader::parse(&p), None);
        p[1] = 8;
        p[0] = 0x40;
        assert_eq!(RtpHeader::parse(&p), None, "version 1");
    }

    #[test]
    fn a_clean_stream_loses_nothing_and_the_first_packet_is_probation() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[100]);
        assert_eq!(q.counts().expected, 0, "on probation");
        feed(&mut q, &(101..150).collect::<Vec<_>>());
        // Counting starts at the packet that ends probation (101): 101..=149.
        assert_eq!(
            q.counts(),
            QualityCounts {
                expected: 49,
                lost: 0,
                jitter: 0
            }
        );
    }

    #[test]
    fn gaps_are_lost_packets() {
        let mut q = RtpQuality::default();
        // 10..=40 without 15, 20, 25: expected 11..=40 = 30, received 27.
        let seqs: Vec<u16> = (10..=40).filter(|s| ![15, 20, 25].contains(s)).collect();
        feed(&mut q, &seqs);
        let c = q.counts();
        assert_eq!((c.expected, c.lost), (30, 3));
        let quality = Quality::new(c, 8000).unwrap();
        assert_eq!(quality.loss_ratio, 0.1);
    }

    #[test]
    fn the_sequence_wraps_at_65535() {
        let mut q = RtpQuality::default();
        let seqs: Vec<u16> = (65530..=65535).chain(0..5).filter(|&s| s != 1).collect();
        feed(&mut q, &seqs);
        // Base 65531, extended max 65536 + 4: expected 10, one lost (seq 1), one wrap.
        assert_eq!(q.cycles, 65536);
        assert_eq!((q.counts().expected, q.counts().lost), (10, 1));
    }

    #[test]
    fn reordered_packets_are_not_lost() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 3, 5, 4, 6]);
        assert_eq!((q.counts().expected, q.counts().lost), (5, 0));
        assert_eq!(q.max_seq, 6);
    }

    #[test]
    fn duplicates_count_as_received_and_loss_is_clamped_at_zero() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 3, 3, 3, 4]);
        // A.1 counts 2, 3, 3, 3, 4 as received against 3 expected: −2 lost, shown as 0.
        assert_eq!(q.received, 5);
        assert_eq!((q.counts().expected, q.counts().lost), (3, 0));
        feed(&mut q, &[7]);
        assert_eq!(
            (q.counts().expected, q.counts().lost),
            (6, 0),
            "dups mask 5, 6"
        );
    }

    #[test]
    fn a_new_source_keeps_the_earlier_totals() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 4]); // expected 3 (2..=4), lost 1
        q.record(
            RtpHeader {
                seq: 900,
                timestamp: 0,
                ssrc: 7,
            },
            0,
            8000,
        );
        assert_eq!((q.counts().expected, q.counts().lost), (3, 1));
        for s in 901..=905 {
            q.record(
                RtpHeader {
                    seq: s,
                    timestamp: 0,
                    ssrc: 7,
                },
                0,
                8000,
            );
        }
        assert_eq!((q.counts().expected, q.counts().lost), (8, 1));
    }

    #[test]
    fn a_large_jump_twice_in_sequence_restarts_the_numbering() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 3]);
        feed(&mut q, &[20_000]);
        assert_eq!(q.counts().expected, 2, "one stray packet is ignored");
        feed(&mut q, &[20_001, 20_002]);
        // 2 expected before, then 20_001..=20_002 after the restart.
        assert_eq!((q.counts().expected, q.counts().lost), (4, 0));
    }

    #[test]
    fn jitter_worked_by_hand() {
        // 8 kHz, one packet every 160 units (20 ms). Arrivals (ms): 0, 20, 45, 60, 80, 110.
        // Transit differences D (units): −, 0, |200 − 160| = 40, |120 − 160| = 40, 0, 80.
        // J16 += D − ((J16 + 8) >> 4): 0, 0, 40, 40 + 40 − 3 = 77, 77 − 5 = 72, 72 + 80 − 5 = 147.
        let mut q = RtpQuality::default();
        let arrivals_ms = [0u64, 20, 45, 60, 80, 110];
        let mut j = Vec::new();
        for (i, a) in arrivals_ms.iter().enumerate() {
            q.record(h(i as u16, i as u32 * 160), a * 1_000_000, 8000);
            j.push(q.jitter);
        }
        assert_eq!(j, vec![0, 0, 40, 77, 72, 147]);
        let quality = Quality::new(q.counts(), 8000).unwrap();
        // 147 / 16 = 9.1875 units = 1.1484375 ms at 8 kHz.
        assert_eq!(quality.jitter_ms, Some(1.1484375));
    }

    #[test]
    fn unknown_clock_rate_tracks_loss_but_not_jitter() {
        let mut q = RtpQuality::default();
        for s in 0..5u16 {
            q.record(h(s, 0), u64::from(s) * 33_000_000, 0);
        }
        let quality = Quality::new(q.counts(), 0).unwrap();
        assert_eq!((quality.jitter_ms, quality.mos), (None, None));
        assert_eq!(quality.packets_expected, 4);
    }

    #[test]
    fn mos_at_zero_and_five_percent_loss() {
        // 0 %, no jitter: d = 10, Id = 0.25, R = 92.95,
        // MOS = 1 + 3.25325 + 92.95 · 32.95 · 7.05 · 7e-6 = 4.40440.
        assert!((mos(0.0, 0.0) - 4.4044).abs() < 1e-4, "{}", mos(0.0, 0.0));
        // 5 %: Ie_eff = 95 · 5 / 30.1 = 15.7807, R = 77.1693,
        // MOS = 1 + 2.70093 + 77.1693 · 17.1693 · 22.8307 · 7e-6 = 3.91268.
        assert!((mos(0.05, 0.0) - 3.9127).abs() < 1e-4, "{}", mos(0.05, 0.0));
        // Jitter lowers it: 100 ms → d = 210, Id = 9.
        assert!(mos(0.0, 100.0) < mos(0.0, 0.0));
        assert_eq!(mos(1.0, 1000.0), 1.0);
    }
}
