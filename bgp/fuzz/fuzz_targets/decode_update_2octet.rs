//! UPDATE bodies from a 2-octet AS peer (AS4_PATH / AS4_AGGREGATOR merging).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_bgp::packet::{Ctx, Message};

fuzz_target!(|body: &[u8]| {
    if body.len() > 4096 - 19 {
        return;
    }
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(body);
    let _ = Message::decode(
        &msg,
        &Ctx {
            four_octet_as: false,
        },
    );
});
