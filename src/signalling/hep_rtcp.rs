//! RTCP reports as Homer stores them: HEP protocol type 5 carries one JSON object per report in
//! the layout of Homer's capture agents (`type`, `ssrc`, `report_count`, `report_blocks` with
//! `source_ssrc`, `highest_seq_no`, `fraction_lost`, `ia_jitter`, `packets_lost`, `lsr`,
//! `dlsr`, and for a sender report `sender_information` with the NTP and RTP timestamps and the
//! packet and octet counts), decoded from the first SR or RR of a compound packet (RFC 3550
//! §6.4). Pure and bounds-checked: any bytes give a report or `None`, never a panic.

use serde_json::{json, Value};

/// RTCP packet types of RFC 3550 §12.1 that carry reports.
const SR: u8 = 200;
const RR: u8 = 201;
/// Bytes of one report block.
const BLOCK: usize = 24;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The Homer JSON of the first sender or receiver report in the compound RTCP `packet`;
/// `None` when it has none (or is not RTCP version 2).
pub fn report_json(packet: &[u8]) -> Option<String> {
    let mut at = 0;
    // A compound packet holds a handful of parts; bound the walk anyway.
    for _ in 0..16 {
        let head = packet.get(at..at + 4)?;
        if head[0] >> 6 != 2 {
            return None;
        }
        let count = usize::from(head[0] & 0x1f);
        let kind = head[1];
        let len = (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4;
        let part = packet.get(at..at + len)?;
        if kind == SR || kind == RR {
            return report(part, kind, count).map(|v| v.to_string());
        }
        at += len;
    }
    None
}

/// One SR or RR (`part`, header included) with `count` report blocks.
fn report(part: &[u8], kind: u8, count: usize) -> Option<Value> {
    let ssrc = u32_at(part, 4)?;
    let blocks_at = if kind == SR { 28 } else { 8 };
    let blocks = (0..count)
        .map(|i| {
            let b = part.get(blocks_at + i * BLOCK..blocks_at + (i + 1) * BLOCK)?;
            // Cumulative loss is a signed 24-bit number.
            let lost = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
            Some(json!({
                "source_ssrc": u32_at(b, 0)?,
                "fraction_lost": b[4],
                "packets_lost": lost,
                "highest_seq_no": u32_at(b, 8)?,
                "ia_jitter": u32_at(b, 12)?,
                "lsr": u32_at(b, 16)?,
                "dlsr": u32_at(b, 20)?,
            }))
        })
        .collect::<Option<Vec<_>>>()?;
    let mut v = json!({
        "type": kind,
        "ssrc": ssrc,
        "report_count": count,
        "report_blocks": blocks,
    });
    if kind == SR {
        v["sender_information"] = json!({
            "ntp_timestamp_sec": u32_at(part, 8)?,
            "ntp_timestamp_usec": u32_at(part, 12)?,
            "rtp_timestamp": u32_at(part, 16)?,
            "packets": u32_at(part, 20)?,
            "octets": u32_at(part, 24)?,
        });
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SR from SSRC 0x11223344 with one report block about 0x55667788, then an SDES.
    fn sender_report() -> Vec<u8> {
        let mut p = vec![0x81, SR, 0, 12];
        p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        for w in [3_900_000_000u32, 0x8000_0000, 160_000, 1000, 160_000] {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p.extend_from_slice(&0x5566_7788u32.to_be_bytes());
        p.extend_from_slice(&[25, 0xff, 0xff, 0xfe]); // 10 % lost, cumulative -2
        for w in [70_000u32, 42, 0x1234_5678, 65_536] {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p.extend_from_slice(&[0x81, 202, 0, 2, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn a_sender_report_in_homer_layout() {
        let v: Value = serde_json::from_str(&report_json(&sender_report()).unwrap()).unwrap();
        assert_eq!(v["type"], 200);
        assert_eq!(v["ssrc"], 0x1122_3344u32);
        assert_eq!(v["report_count"], 1);
        let b = &v["report_blocks"][0];
        assert_eq!(b["source_ssrc"], 0x5566_7788u32);
        assert_eq!(
            (b["fraction_lost"].clone(), b["packets_lost"].clone()),
            (json!(25), json!(-2))
        );
        assert_eq!(
            (b["highest_seq_no"].clone(), b["ia_jitter"].clone()),
            (json!(70_000), json!(42))
        );
        assert_eq!(
            (b["lsr"].clone(), b["dlsr"].clone()),
            (json!(0x1234_5678), json!(65_536))
        );
        let s = &v["sender_information"];
        assert_eq!(s["ntp_timestamp_sec"], 3_900_000_000u32);
        assert_eq!(
            (s["packets"].clone(), s["octets"].clone()),
            (json!(1000), json!(160_000))
        );
    }

    #[test]
    fn a_receiver_report_after_other_parts_and_garbage() {
        let mut rr = vec![0x80, 202, 0, 1, 0, 0, 0, 9]; // an SDES first
        rr.extend_from_slice(&[0x80, RR, 0, 1, 0, 0, 0, 7]);
        let v: Value = serde_json::from_str(&report_json(&rr).unwrap()).unwrap();
        assert_eq!(
            (v["type"].clone(), v["ssrc"].clone()),
            (json!(201), json!(7))
        );
        assert!(v.get("sender_information").is_none());
        // Truncated, wrong version, blocks promised but missing, empty: no report.
        let sr = sender_report();
        for bad in [
            &sr[..30],
            &[0x41, SR, 0, 12][..],
            &[0x81, RR, 0, 1, 0, 0, 0, 7][..],
            &[][..],
        ] {
            assert!(report_json(bad).is_none(), "{bad:?}");
        }
    }
}
