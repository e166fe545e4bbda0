//! The standalone speaker's TOML configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tabby_bgp::config::Config::from_toml(text, std::path::Path::new("fuzz.toml"));
    }
});
