//! SIP parsing never panics, and whatever parses prints and parses back to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mediagate::sip::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse_datagram(data) {
        let mut again = Message::parse_datagram(&m.to_bytes()).expect("printed message parses");
        let mut m = m;
        m.remove_headers("Content-Length");
        again.remove_headers("Content-Length");
        assert_eq!(m, again);
    }
    let _ = Message::parse_stream(data);
});
