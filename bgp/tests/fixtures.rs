//! Messages captured from real BIRD, FRR and GoBGP sessions (and our own),
//! see `fixtures/capture.sh`. Each `.hex` is decoded and compared with its
//! `.txt` golden value; each value is encoded again and must give the same
//! bytes, or (where the sender chose another legal encoding, e.g. another
//! attribute order or one capability per parameter) bytes that decode to
//! the same value. `UPDATE_FIXTURES=1` rewrites the golden files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use tabby_bgp::packet::{Ctx, Message};

fn hex(text: &str) -> Vec<u8> {
    let s: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn captured_messages_decode_to_their_golden_values_and_encode_back() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let ctx = Ctx::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .collect();
    files.sort();
    assert!(files.len() > 20, "fixtures missing in {}", dir.display());
    let mut exact = 0;
    for f in &files {
        let bytes = hex(&std::fs::read_to_string(f).unwrap());
        let msg = Message::decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let golden_path = f.with_extension("txt");
        let rendered = format!("{msg:#?}\n");
        if update {
            std::fs::write(&golden_path, &rendered).unwrap();
        } else {
            let golden = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
                panic!(
                    "{} missing: run with UPDATE_FIXTURES=1",
                    golden_path.display()
                )
            });
            assert_eq!(rendered, golden, "{} decodes differently", f.display());
        }
        let again = msg.encode(&ctx);
        if again == bytes {
            exact += 1;
        } else {
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(
                !name.starts_with("tabby-bgp"),
                "{name}: our own encoding must be reproduced byte for byte"
            );
            assert_eq!(
                Message::decode(&again, &ctx).unwrap(),
                msg,
                "{name}: re-encoding changes the meaning"
            );
        }
    }
    eprintln!(
        "{exact} of {} fixtures re-encode byte for byte",
        files.len()
    );
    assert!(
        exact * 2 > files.len(),
        "too few exact round trips: {exact}"
    );
}
