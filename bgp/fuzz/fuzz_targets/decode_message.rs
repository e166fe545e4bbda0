//! Any bytes after a valid header: every message decoder (OPEN, UPDATE with
//! all attributes, NOTIFICATION, ROUTE-REFRESH) must return, never panic;
//! what decodes must re-encode to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_bgp::packet::{Ctx, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&ty, body)) = data.split_first() else {
        return;
    };
    if body.len() > 4096 - 19 {
        return;
    }
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(ty % 6);
    msg.extend_from_slice(body);
    let ctx = Ctx::default();
    // A treat-as-withdraw UPDATE keeps what could be read of its attributes,
    // which need not survive a round trip; it must only not panic.
    if let Ok(m) = Message::decode(&msg, &ctx)
        && !matches!(&m, Message::Update(u) if u.treat_as_withdraw)
    {
        let again = m.encode(&ctx);
        if again.len() <= 4096 {
            let m2 = Message::decode(&again, &ctx).expect("our own encoding decodes");
            assert_eq!(m, m2);
        }
    }
});
