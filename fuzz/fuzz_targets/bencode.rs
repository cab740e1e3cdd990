//! Bencode decoding never panics, and decode(encode(x)) == x.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mediagate::control::bencode::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Value::decode(data) {
        assert_eq!(Value::decode(&v.encode()).expect("re-encoded value decodes"), v);
    }
});
