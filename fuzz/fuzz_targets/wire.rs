//! Header views never panic on any frame, and a rewrite keeps the frame parseable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mediagate::wire::UdpFrame;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    if let Some(mut view) = UdpFrame::parse(&mut frame) {
        let (src, dst) = (view.source(), view.destination());
        view.rewrite(dst, src, [1; 6], [2; 6]);
        let view = UdpFrame::parse(&mut frame).expect("rewritten frame parses");
        assert_eq!((view.source(), view.destination()), (dst, src));
    }
});
