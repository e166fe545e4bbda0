//! The line format against hand-made bytes, and encode/replay round trips.

use super::*;
use crate::ipam::state::OwnerMeta;

fn key(id: &str) -> AttachmentKey {
    AttachmentKey::new(id, "eth0")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn blocks() -> Vec<IpNet> {
    vec![
        "10.1.0.0/24".parse().unwrap(),
        "fd00:1::/120".parse().unwrap(),
    ]
}

/// Runs `f` on a copy of `before` while recording, and returns the line and
/// the state it produced.
fn record(before: &IpamState, f: impl FnOnce(&mut IpamState)) -> (Vec<u8>, IpamState) {
    let mut after = before.clone();
    after.record_changes();
    f(&mut after);
    let touched = after.take_changes().unwrap();
    let cursors_changed = after.cursor_map() != before.cursor_map();
    (
        encode_line(&after, &touched, cursors_changed).unwrap(),
        after,
    )
}

fn replayed(before: &IpamState, lines: &[u8]) -> (IpamState, Replayed) {
    let mut state = before.clone();
    let replayed = replay(lines, &mut state).unwrap();
    (state, replayed)
}

#[test]
fn crc32c_matches_the_standard_check_values() {
    // RFC 3720, B.4, and the usual "123456789" check value.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    let ascending: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&ascending), 0x46DD_794E);
}

#[test]
fn line_is_checksum_space_json_newline() {
    let (line, _) = record(&IpamState::new("b"), |s| {
        let meta = OwnerMeta {
            host_iface: Some("tab0".into()),
            namespace: None,
            name: Some("web\n0".into()),
        };
        s.allocate(&key("a"), &blocks(), meta).unwrap();
    });
    let text = std::str::from_utf8(&line).unwrap();
    let json = r#"{"put":[{"containerId":"a","ifname":"eth0","ips":["10.1.0.1","fd00:1::1"],"hostIface":"tab0","name":"web\n0"}],"cursors":{"10.1.0.0/24":"10.1.0.1","fd00:1::/120":"fd00:1::1"}}"#;
    assert_eq!(text, format!("{:08x} {json}\n", crc32c(json.as_bytes())));
    assert_eq!(text.matches('\n').count(), 1, "one newline, at the end");
}

#[test]
fn replaying_the_lines_gives_the_recorded_states() {
    let start = IpamState::new("b");
    let (l1, s1) = record(&start, |s| {
        for id in ["a", "b", "c"] {
            s.allocate(&key(id), &blocks(), OwnerMeta::default())
                .unwrap();
        }
    });
    let (l2, s2) = record(&s1, |s| {
        s.release(&key("b"));
    });
    // No cursor change: no `cursors` member.
    assert!(!std::str::from_utf8(&l2).unwrap().contains("cursors"));
    let (l3, s3) = record(&s2, |s| {
        s.retain(&[key("c")].into_iter().collect());
        s.allocate(&key("d"), &blocks()[..1], OwnerMeta::default())
            .unwrap();
    });
    let lines = [l1, l2, l3].concat();
    let (state, replayed) = replayed(&start, &lines);
    assert_eq!(state, s3);
    assert_eq!(state.cursor_map(), s3.cursor_map());
    assert_eq!(
        replayed,
        Replayed {
            records: 3,
            valid_len: lines.len()
        }
    );
}

#[test]
fn addresses_swapped_between_attachments_replay() {
    let (_, before) = record(&IpamState::new("b"), |s| {
        s.allocate(&key("x"), &blocks()[..1], OwnerMeta::default())
            .unwrap();
        s.allocate(&key("y"), &blocks()[..1], OwnerMeta::default())
            .unwrap();
    });
    let attachment = |addr: &str| Attachment {
        ips: vec![ip(addr)],
        meta: OwnerMeta::default(),
    };
    // Applied in key order, "x" takes "y"'s address before "y" lets go of
    // it: only removing every touched key first makes this replay.
    let (line, after) = record(&before, |s| {
        s.release(&key("x"));
        s.release(&key("y"));
        s.insert_attachment(key("x"), attachment("10.1.0.2"))
            .unwrap();
        s.insert_attachment(key("y"), attachment("10.1.0.1"))
            .unwrap();
    });
    assert_eq!(replayed(&before, &line).0, after);
}

#[test]
fn torn_or_unchecked_last_line_is_left_out() {
    let (l1, s1) = record(&IpamState::new("b"), |s| {
        s.allocate(&key("a"), &blocks(), OwnerMeta::default())
            .unwrap();
    });
    let (l2, _) = record(&s1, |s| {
        s.allocate(&key("b"), &blocks(), OwnerMeta::default())
            .unwrap();
    });
    let start = IpamState::new("b");
    for cut in 1..l2.len() {
        let lines = [&l1[..], &l2[..cut]].concat();
        let (state, replayed) = replayed(&start, &lines);
        assert_eq!(state, s1, "cut at {cut}");
        assert_eq!(
            replayed,
            Replayed {
                records: 1,
                valid_len: l1.len()
            }
        );
    }
    let mut bad = l2.clone();
    bad[20] ^= 0x20;
    let (state, replayed) = replayed(&start, &[&l1[..], &bad[..]].concat());
    assert_eq!((state, replayed.records), (s1, 1));
}

#[test]
fn damage_before_the_last_line_is_an_error_naming_the_line() {
    let (l1, s1) = record(&IpamState::new("b"), |s| {
        s.allocate(&key("a"), &blocks(), OwnerMeta::default())
            .unwrap();
    });
    let (l2, _) = record(&s1, |s| {
        s.release(&key("a"));
    });
    let mut bad = l1.clone();
    bad[3] = b'x';
    for lines in [
        [&bad[..], &l2[..]].concat(),
        [&l1[..], b"\n", &l2[..]].concat(),
        [&l1[..], &l1[..10], b"\n", &l2[..]].concat(),
    ] {
        let err = replay(&lines, &mut IpamState::new("b")).unwrap_err();
        assert!(err.to_string().starts_with("journal line"), "{err}");
    }
    let err = replay(&[&bad[..], &l2[..]].concat(), &mut IpamState::new("b")).unwrap_err();
    assert_eq!(err.line, 1);
}
