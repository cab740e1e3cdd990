//! SDP parsing never panics, and an anchored description parses again with the anchor's ports
//! (or is refused for outgrowing the size limit).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mediagate::sdp::{Anchor, Sdp};

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        let ports: Vec<u16> = (0..sdp.media().len()).map(|i| 30000 + 2 * i as u16).collect();
        let Ok(out) = sdp.anchored(&Anchor {
            address: "10.99.2.1".parse().unwrap(),
            rtp_ports: &ports,
            session_id: 1,
            session_version: 1,
        }) else {
            return;
        };
        let again = Sdp::parse(&out).expect("anchored SDP parses");
        assert_eq!(again.media().len(), sdp.media().len());
    }
});
