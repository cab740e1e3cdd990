//! Header views never panic on any frame, a rewrite keeps the frame parseable, and RTP quality
//! tracking takes any payload (twice, with any arrival times and clock rate) without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mediagate::media::{RtpHeader, RtpQuality};
use mediagate::wire::UdpFrame;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    if let Some(mut view) = UdpFrame::parse(&mut frame) {
        let (src, dst) = (view.source(), view.destination());
        view.rewrite(dst, src, [1; 6], [2; 6]);
        let view = UdpFrame::parse(&mut frame).expect("rewritten frame parses");
        assert_eq!((view.source(), view.destination()), (dst, src));
        if let Some(h) = RtpHeader::parse(view.payload()) {
            let word = |i: usize| {
                data.get(i..i + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            };
            let mut q = RtpQuality::default();
            q.record(h, word(0), word(8) as u32);
            q.record(h, word(16), word(8) as u32);
            let _ = q.counts();
        }
    }
});
