//! A raw TCP byte stream cut into messages the way the reader task does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_bgp::packet::{Ctx, Message, frame_len};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    let ctx = Ctx::default();
    while let Ok(Some(len)) = frame_len(buf) {
        let _ = Message::decode(&buf[..len], &ctx);
        buf = &buf[len..];
    }
});
