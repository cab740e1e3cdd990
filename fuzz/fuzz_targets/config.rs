//! Config parsing never panics; every error names a line within the text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = mediagate::config::parse("fuzz.toml", text) {
            assert!(e.line <= text.lines().count() + 1, "{e}");
        }
    }
});
