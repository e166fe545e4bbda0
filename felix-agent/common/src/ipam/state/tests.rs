//! The allocator's rules, one test each, then a model-based property test
//! that replays random operation sequences against a brute-force model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(id: &str) -> AttachmentKey {
    AttachmentKey::new(id, "eth0")
}

fn alloc(state: &mut IpamState, id: &str, blocks: &[IpNet]) -> Result<Vec<IpNet>, IpamError> {
    state.allocate(&key(id), blocks, OwnerMeta::default())
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

/// Every address a block may hand out, by enumeration (small blocks only).
/// `hosts()` already drops the IPv4 network and broadcast addresses for
/// /0../30; the IPv6 anycast address (/0../126) is dropped here.
fn usable_by_enumeration(block: IpNet) -> Vec<IpAddr> {
    let all = block.hosts();
    match block {
        IpNet::V6(net) if net.prefix_len() <= 126 => all.skip(1).collect(),
        _ => all.collect(),
    }
}

#[test]
fn attachment_key_uses_cni_field_names() {
    let json = serde_json::to_string(&AttachmentKey::new("abc", "eth0")).unwrap();
    assert_eq!(json, r#"{"containerId":"abc","ifname":"eth0"}"#);
}

#[test]
fn dual_stack_gets_one_address_per_family_as_host_prefixes() {
    let mut state = IpamState::new("boot");
    let got = alloc(&mut state, "a", &nets(&["fd00::/122", "10.244.1.0/26"])).unwrap();
    assert_eq!(got, nets(&["10.244.1.1/32", "fd00::1/128"]));
    assert_eq!(
        state.lookup(&key("a")),
        vec![ip("10.244.1.1"), ip("fd00::1")]
    );
}

#[test]
fn single_stack_gets_one_address() {
    let mut state = IpamState::new("boot");
    assert_eq!(
        alloc(&mut state, "a", &nets(&["fd00::/122"])).unwrap(),
        nets(&["fd00::1/128"])
    );
    assert_eq!(
        alloc(&mut state, "b", &nets(&["10.0.0.0/24"])).unwrap(),
        nets(&["10.0.0.1/32"])
    );
}

#[test]
fn no_blocks_is_an_error_of_its_own() {
    let mut state = IpamState::new("boot");
    assert_eq!(alloc(&mut state, "a", &[]), Err(IpamError::NoBlocks));
}

#[test]
fn retried_add_gets_the_same_addresses_even_after_blocks_changed() {
    let mut state = IpamState::new("boot");
    let first = alloc(&mut state, "a", &nets(&["10.0.0.0/24", "fd00::/120"])).unwrap();
    let before = state.clone();
    assert_eq!(
        alloc(&mut state, "a", &nets(&["10.0.0.0/24", "fd00::/120"])).unwrap(),
        first
    );
    assert_eq!(
        alloc(&mut state, "a", &nets(&["192.168.0.0/24"])).unwrap(),
        first
    );
    assert_eq!(alloc(&mut state, "a", &[]).unwrap(), first);
    assert_eq!(state, before);
}

#[test]
fn same_container_other_ifname_is_another_attachment() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.0.0/24"]);
    let eth0 = state.allocate(
        &AttachmentKey::new("c", "eth0"),
        &blocks,
        OwnerMeta::default(),
    );
    let net1 = state.allocate(
        &AttachmentKey::new("c", "net1"),
        &blocks,
        OwnerMeta::default(),
    );
    assert_ne!(eth0.unwrap(), net1.unwrap());
}

#[test]
fn exhausted_family_allocates_nothing_at_all() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.0.0/30", "fd00::/128"]);
    alloc(&mut state, "a", &blocks).unwrap();
    let before = state.clone();
    let err = alloc(&mut state, "b", &blocks).unwrap_err();
    assert_eq!(
        err,
        IpamError::Exhausted {
            family: IpFamily::V6,
            blocks: nets(&["fd00::/128"])
        }
    );
    // 10.0.0.2 was free, but is not kept without an IPv6 address.
    assert_eq!(state, before);
    assert!(state.owner(ip("10.0.0.2")).is_none());
}

#[test]
fn exhaustion_message_names_family_and_blocks() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.0.4/32", "10.0.0.8/32"]);
    alloc(&mut state, "a", &blocks).unwrap();
    alloc(&mut state, "b", &blocks).unwrap();
    let err = alloc(&mut state, "c", &blocks).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free IPv4 address left in 10.0.0.4/32, 10.0.0.8/32"
    );
}

#[test]
fn blocks_of_a_family_are_used_in_the_given_order() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.1.0/31", "fd00::/127", "10.0.0.0/31"]);
    let got: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| alloc(&mut state, id, &blocks).map(|v| v[0]))
        .collect();
    assert_eq!(
        got,
        vec![
            Ok(net("10.0.1.0/32")),
            Ok(net("10.0.1.1/32")),
            Err(IpamError::Exhausted {
                family: IpFamily::V6,
                blocks: nets(&["fd00::/127"])
            }),
            Err(IpamError::Exhausted {
                family: IpFamily::V6,
                blocks: nets(&["fd00::/127"])
            }),
        ]
    );
    let v4_only = nets(&["10.0.1.0/31", "10.0.0.0/31"]);
    assert_eq!(
        alloc(&mut state, "e", &v4_only).unwrap(),
        nets(&["10.0.0.0/32"])
    );
}

#[test]
fn every_small_block_hands_out_exactly_its_usable_addresses() {
    let mut blocks: Vec<IpNet> = (22..=32)
        .map(|p| IpNet::new(ip("10.1.0.0"), p).unwrap())
        .collect();
    blocks.extend((116..=128).map(|p| IpNet::new(ip("fd00:1::"), p).unwrap()));
    for block in blocks {
        let mut state = IpamState::new("boot");
        let mut got = Vec::new();
        let err = loop {
            match alloc(&mut state, &format!("k{}", got.len()), &[block]) {
                Ok(v) => got.push(v[0].addr()),
                Err(e) => break e,
            }
        };
        let family = IpFamily::of_net(&block);
        assert_eq!(
            err,
            IpamError::Exhausted {
                family,
                blocks: vec![block]
            }
        );
        assert_eq!(got, usable_by_enumeration(block), "{block}");
        let usage = state.usage(&[block]);
        assert_eq!(usage[0].used, got.len(), "{block}");
        assert_eq!(usage[0].capacity, got.len() as u128, "{block}");
    }
}

#[test]
fn reserved_addresses_follow_the_prefix_length() {
    let first = |block: &str| alloc(&mut IpamState::new("b"), "a", &[net(block)]).unwrap()[0];
    assert_eq!(first("10.0.0.0/30"), net("10.0.0.1/32"));
    assert_eq!(first("10.0.0.0/31"), net("10.0.0.0/32"));
    assert_eq!(first("10.0.0.7/32"), net("10.0.0.7/32"));
    assert_eq!(first("fd00::/126"), net("fd00::1/128"));
    assert_eq!(first("fd00::/127"), net("fd00::/128"));
    assert_eq!(first("fd00::/128"), net("fd00::/128"));
}

#[test]
fn host_bits_in_a_block_are_ignored() {
    let mut state = IpamState::new("boot");
    assert_eq!(
        alloc(&mut state, "a", &nets(&["10.0.0.77/24"])).unwrap(),
        nets(&["10.0.0.1/32"])
    );
    assert_eq!(state.cursor(net("10.0.0.0/24")), Some(ip("10.0.0.1")));
}

#[test]
fn released_address_is_not_handed_out_again_at_once() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.0.0/29"]); // .1 to .6
    for id in ["a", "b", "c"] {
        alloc(&mut state, id, &blocks).unwrap();
    }
    assert_eq!(state.release(&key("a")), vec![ip("10.0.0.1")]);
    assert_eq!(
        alloc(&mut state, "d", &blocks).unwrap(),
        nets(&["10.0.0.4/32"])
    );
    assert_eq!(
        alloc(&mut state, "e", &blocks).unwrap(),
        nets(&["10.0.0.5/32"])
    );
    assert_eq!(
        alloc(&mut state, "f", &blocks).unwrap(),
        nets(&["10.0.0.6/32"])
    );
    // Wraps past the end, skips the allocated .2 and .3? No: .1 is free first.
    assert_eq!(
        alloc(&mut state, "g", &blocks).unwrap(),
        nets(&["10.0.0.1/32"])
    );
    state.release(&key("c"));
    assert_eq!(
        alloc(&mut state, "h", &blocks).unwrap(),
        nets(&["10.0.0.3/32"])
    );
    assert!(alloc(&mut state, "i", &blocks).is_err());
}

#[test]
fn huge_blocks_cost_only_their_allocations() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["0.0.0.0/0", "::/0"]);
    assert_eq!(
        alloc(&mut state, "a", &blocks).unwrap(),
        nets(&["0.0.0.1/32", "::1/128"])
    );
    assert_eq!(
        alloc(&mut state, "b", &blocks).unwrap(),
        nets(&["0.0.0.2/32", "::2/128"])
    );
    let usage = state.usage(&blocks);
    assert_eq!(usage[0].capacity, (1u128 << 32) - 2);
    assert_eq!(usage[1].capacity, u128::MAX);
    assert_eq!((usage[0].used, usage[1].used), (2, 2));

    let mut state = IpamState::new("boot");
    let block = nets(&["fd00:10::/64"]);
    for i in 0..2000 {
        alloc(&mut state, &format!("k{i}"), &block).unwrap();
    }
    assert_eq!(state.usage(&block)[0].used, 2000);
}

#[test]
fn cursor_at_the_top_of_a_huge_block_wraps_to_the_bottom() {
    let json = r#"{"bootId":"boot",
      "attachments":[{"containerId":"x","ifname":"eth0","ips":["::1","0.0.0.1"]}],
      "cursors":{"0.0.0.0/0":"255.255.255.254","::/0":"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}}"#;
    let mut state: IpamState = serde_json::from_str(json).unwrap();
    let got = alloc(&mut state, "a", &nets(&["0.0.0.0/0", "::/0"])).unwrap();
    assert_eq!(got, nets(&["0.0.0.2/32", "::2/128"]));
}

#[test]
fn stored_state_sharing_an_address_is_refused() {
    let json = r#"{"bootId":"b","attachments":[
        {"containerId":"x","ifname":"eth0","ips":["10.0.0.1"]},
        {"containerId":"y","ifname":"eth0","ips":["10.0.0.2","10.0.0.1"]}]}"#;
    let err = serde_json::from_str::<IpamState>(json).unwrap_err();
    assert!(
        err.to_string()
            .contains("10.0.0.1 is held by both x/eth0 and y/eth0"),
        "{err}"
    );
    let json = r#"{"bootId":"b","attachments":[
        {"containerId":"x","ifname":"eth0","ips":["10.0.0.1"]},
        {"containerId":"x","ifname":"eth0","ips":["10.0.0.2"]}]}"#;
    let err = serde_json::from_str::<IpamState>(json).unwrap_err();
    assert!(err.to_string().contains("x/eth0 is listed twice"), "{err}");
}

#[test]
fn unknown_fields_are_ignored_for_upgrades() {
    let json = r#"{"bootId":"b","future":1,"attachments":[
        {"containerId":"x","ifname":"eth0","ips":["10.0.0.1"],"labels":{}}]}"#;
    let state: IpamState = serde_json::from_str(json).unwrap();
    assert_eq!(
        state.lookup(&AttachmentKey::new("x", "eth0")),
        vec![ip("10.0.0.1")]
    );
}

#[test]
fn cursor_outside_the_usable_range_restarts_at_the_bottom() {
    // A cursor on the broadcast address (hand-edited file) must not break anything.
    let json = r#"{"bootId":"b","attachments":[],"cursors":{"10.0.0.0/30":"10.0.0.3"}}"#;
    let mut state: IpamState = serde_json::from_str(json).unwrap();
    assert_eq!(
        alloc(&mut state, "a", &nets(&["10.0.0.0/30"])).unwrap(),
        nets(&["10.0.0.1/32"])
    );
}

#[test]
fn allocations_outside_current_blocks_stay_until_released() {
    let mut state = IpamState::new("boot");
    alloc(&mut state, "old", &nets(&["10.0.0.0/30"])).unwrap();
    alloc(&mut state, "new", &nets(&["10.0.1.0/30"])).unwrap();
    assert_eq!(state.lookup(&key("old")), vec![ip("10.0.0.1")]);
    // Back to the old block: its address is still taken.
    assert_eq!(
        alloc(&mut state, "again", &nets(&["10.0.0.0/30"])).unwrap(),
        nets(&["10.0.0.2/32"])
    );
    assert_eq!(state.release(&key("old")), vec![ip("10.0.0.1")]);
}

#[test]
fn cursors_of_dropped_blocks_are_forgotten() {
    let mut state = IpamState::new("boot");
    alloc(&mut state, "a", &nets(&["10.0.0.0/30"])).unwrap();
    alloc(&mut state, "b", &nets(&["10.0.1.0/30"])).unwrap();
    assert_eq!(state.cursor(net("10.0.0.0/30")), None);
    assert_eq!(state.cursor(net("10.0.1.0/30")), Some(ip("10.0.1.1")));
}

#[test]
fn release_is_idempotent() {
    let mut state = IpamState::new("boot");
    alloc(&mut state, "a", &nets(&["10.0.0.0/24", "fd00::/120"])).unwrap();
    assert_eq!(
        state.release(&key("a")),
        vec![ip("10.0.0.1"), ip("fd00::1")]
    );
    assert!(state.release(&key("a")).is_empty());
    assert!(state.release(&key("never")).is_empty());
    assert!(state.is_empty());
}

#[test]
fn retain_releases_what_is_not_valid_and_reports_it() {
    let mut state = IpamState::new("boot");
    let blocks = nets(&["10.0.0.0/24", "fd00::/120"]);
    for id in ["a", "b", "c"] {
        alloc(&mut state, id, &blocks).unwrap();
    }
    let valid = HashSet::from([key("b")]);
    let mut released = state.retain(&valid);
    released.sort();
    assert_eq!(
        released,
        vec![
            (key("a"), ip("10.0.0.1")),
            (key("a"), ip("fd00::1")),
            (key("c"), ip("10.0.0.3")),
            (key("c"), ip("fd00::3")),
        ]
    );
    assert_eq!(state.len(), 2);
    assert!(state.retain(&valid).is_empty());
}

#[test]
fn owner_meta_is_stored_for_operators() {
    let mut state = IpamState::new("boot");
    let meta = OwnerMeta {
        host_iface: Some("tab0123456789ab".into()),
        namespace: Some("default".into()),
        name: Some("web-0".into()),
    };
    state
        .allocate(&key("a"), &nets(&["10.0.0.0/24"]), meta.clone())
        .unwrap();
    let owners: Vec<_> = state.allocations().collect();
    assert_eq!(owners, vec![(ip("10.0.0.1"), &key("a"))]);
    let (owner, attachment) = state.owner(ip("10.0.0.1")).unwrap();
    assert_eq!(owner, &key("a"));
    assert_eq!(attachment.meta, meta);
    assert_eq!(state.owner(ip("10.0.0.2")), None);
}

#[test]
fn state_document_round_trips_with_documented_field_names() {
    let mut state = IpamState::new("b00t");
    let meta = OwnerMeta {
        host_iface: Some("tab1".into()),
        ..OwnerMeta::default()
    };
    state
        .allocate(&key("a"), &nets(&["10.0.0.0/30"]), meta)
        .unwrap();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(
        json,
        r#"{"bootId":"b00t","cursors":{"10.0.0.0/30":"10.0.0.1"},"attachments":[{"containerId":"a","ifname":"eth0","ips":["10.0.0.1"],"hostIface":"tab1"}]}"#
    );
    assert_eq!(serde_json::from_str::<IpamState>(&json).unwrap(), state);
}

// ---- model-based property test ----

/// What the allocator should do, computed by listing every address.
#[derive(Default)]
struct Model {
    owners: BTreeMap<IpAddr, AttachmentKey>,
    cursors: HashMap<IpNet, IpAddr>,
}

impl Model {
    fn allocate(&mut self, key: &AttachmentKey, blocks: &[IpNet]) -> Result<Vec<IpNet>, IpamError> {
        let held: Vec<IpNet> = self
            .owners
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(ip, _)| IpNet::from(*ip))
            .collect();
        if !held.is_empty() {
            return Ok(held);
        }
        if blocks.is_empty() {
            return Err(IpamError::NoBlocks);
        }
        let mut picks = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let fam: Vec<IpNet> = blocks
                .iter()
                .filter(|b| IpFamily::of_net(b) == family)
                .map(IpNet::trunc)
                .collect();
            if fam.is_empty() {
                continue;
            }
            let pick = fam.iter().find_map(|b| {
                let usable = usable_by_enumeration(*b);
                let start = self
                    .cursors
                    .get(b)
                    .and_then(|c| usable.iter().position(|a| a == c))
                    .map_or(0, |i| i + 1);
                let order = usable[start..].iter().chain(&usable[..start]);
                order
                    .copied()
                    .find(|a| !self.owners.contains_key(a))
                    .map(|a| (*b, a))
            });
            match pick {
                Some(p) => picks.push(p),
                None => {
                    return Err(IpamError::Exhausted {
                        family,
                        blocks: fam,
                    });
                }
            }
        }
        self.cursors
            .retain(|b, _| blocks.iter().any(|x| x.trunc() == *b));
        for (b, a) in &picks {
            self.owners.insert(*a, key.clone());
            self.cursors.insert(*b, *a);
        }
        Ok(picks.into_iter().map(|(_, a)| IpNet::from(a)).collect())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate { key: u8, set: bool },
    Release { key: u8 },
    Retain { valid: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, any::<bool>()).prop_map(|(key, set)| Op::Allocate { key, set }),
        2 => (0u8..12).prop_map(|key| Op::Release { key }),
        1 => any::<u16>().prop_map(|valid| Op::Retain { valid }),
    ]
}

/// Up to two small, possibly overlapping blocks per family, in random order.
fn block_set() -> impl Strategy<Value = Vec<IpNet>> {
    let v4 = (0u8..64, 28u8..=32)
        .prop_map(|(off, p)| IpNet::new(ip(&format!("10.0.0.{off}")), p).unwrap().trunc());
    let v6 = (0u8..64, 124u8..=128).prop_map(|(off, p)| {
        IpNet::new(ip(&format!("fd00::{off:x}")), p)
            .unwrap()
            .trunc()
    });
    (
        prop::collection::vec(v4, 0..=2),
        prop::collection::vec(v6, 0..=2),
    )
        .prop_flat_map(|(a, b)| Just([a, b].concat()).prop_shuffle())
}

fn key_of(n: u8) -> AttachmentKey {
    AttachmentKey::new(
        format!("c{n}"),
        if n.is_multiple_of(3) { "net1" } else { "eth0" },
    )
}

/// True when `addr` may be handed out by some block of `blocks`.
fn usable_somewhere(addr: IpAddr, blocks: &[IpNet]) -> bool {
    blocks
        .iter()
        .any(|b| usable_by_enumeration(*b).contains(&addr))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_never_allocate_twice(
        sets in (block_set(), block_set()),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut state = IpamState::new("boot");
        let mut model = Model::default();
        for op in ops {
            let before = state.clone();
            match op {
                Op::Allocate { key, set } => {
                    let blocks = if set { &sets.1 } else { &sets.0 };
                    let k = key_of(key);
                    let held = state.lookup(&k);
                    let got = state.allocate(&k, blocks, OwnerMeta::default());
                    prop_assert_eq!(&got, &model.allocate(&k, blocks));
                    if !held.is_empty() {
                        // Idempotent: same addresses, nothing changed.
                        let held: Vec<IpNet> = held.into_iter().map(IpNet::from).collect();
                        prop_assert_eq!(got.as_ref().ok(), Some(&held));
                        prop_assert_eq!(&state, &before);
                    } else if let Ok(addrs) = &got {
                        // One per family present, host prefixes, new, usable.
                        let mut families: Vec<IpFamily> = blocks.iter().map(IpFamily::of_net).collect();
                        families.sort();
                        families.dedup();
                        prop_assert_eq!(addrs.iter().map(|a| IpFamily::of_addr(&a.addr())).collect::<Vec<_>>(), families);
                        for a in addrs {
                            prop_assert_eq!(a.prefix_len(), a.max_prefix_len());
                            prop_assert!(before.owner(a.addr()).is_none());
                            prop_assert!(usable_somewhere(a.addr(), blocks));
                        }
                        prop_assert_eq!(state.len(), before.len() + addrs.len());
                    } else {
                        // All or nothing, and exhausted only when really full.
                        prop_assert_eq!(&state, &before);
                        if let Err(IpamError::Exhausted { blocks: fam, .. }) = &got {
                            for b in fam {
                                for a in usable_by_enumeration(*b) {
                                    prop_assert!(state.owner(a).is_some(), "{} free in {}", a, b);
                                }
                            }
                        }
                    }
                }
                Op::Release { key } => {
                    let k = key_of(key);
                    let expected: Vec<IpAddr> = model.owners.iter().filter(|(_, o)| **o == k).map(|(a, _)| *a).collect();
                    model.owners.retain(|_, o| *o != k);
                    prop_assert_eq!(state.release(&k), expected);
                }
                Op::Retain { valid } => {
                    let valid: HashSet<AttachmentKey> = (0..12).filter(|i| valid & (1 << i) != 0).map(key_of).collect();
                    let mut expected: Vec<(AttachmentKey, IpAddr)> = model
                        .owners
                        .iter()
                        .filter(|(_, o)| !valid.contains(*o))
                        .map(|(a, o)| (o.clone(), *a))
                        .collect();
                    model.owners.retain(|_, o| valid.contains(o));
                    let mut got = state.retain(&valid);
                    got.sort();
                    expected.sort();
                    prop_assert_eq!(got, expected);
                }
            }
            // The state agrees with the model, and each attachment holds at
            // most one address per family.
            let owners: BTreeMap<IpAddr, AttachmentKey> = state.allocations().map(|(a, k)| (a, k.clone())).collect();
            prop_assert_eq!(&owners, &model.owners);
            let mut per_family = HashSet::new();
            for (a, k) in &owners {
                prop_assert!(per_family.insert((k.clone(), IpFamily::of_addr(a))), "{} holds two addresses", k);
            }
        }
        let json = serde_json::to_vec(&state).unwrap();
        prop_assert_eq!(serde_json::from_slice::<IpamState>(&json).unwrap(), state);
    }
}
