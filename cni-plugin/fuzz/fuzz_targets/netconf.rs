//! Fuzzes everything the plugin decodes from the runtime: the network
//! configuration on stdin (with its prevResult) and the VERSION probe.
//! Run: `cd cni-plugin/fuzz && cargo +nightly fuzz run netconf corpus/netconf seeds`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_cni::{cmd, config, result::CniOutput};

fuzz_target!(|data: &[u8]| {
    let _ = config::sniff_version(data);
    let _ = cmd::version(data);
    if let Ok(conf) = config::parse_conf(data) {
        if let Some(prev) = &conf.prev_result {
            if let Ok(out) = CniOutput::from_json(prev) {
                // Whatever decodes must encode in every supported version.
                for v in config::SUPPORTED_VERSIONS {
                    let _ = out.to_json(v);
                }
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = CniOutput::from_json(&v);
    }
});
