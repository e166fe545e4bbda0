//! The import and export policies: the hostile announcements one by
//! one, and properties over random prefixes, rules and configurations.

use super::*;
use proptest::prelude::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A node on the lab fabric 10.99.0.0/24 in a cluster of 10.244.0.0/16.
fn lab_external(allow_default_route: bool, rules: Vec<Rule>) -> ImportPolicy {
    ImportPolicy::External(Arc::new(External {
        protected: vec![
            (net("10.244.0.0/24"), RejectReason::PodSpace),
            (net("10.244.1.0/24"), RejectReason::PodSpace),
            (net("10.99.0.0/24"), RejectReason::NodeAddress),
            (net("10.99.0.11/32"), RejectReason::NodeAddress),
            (net("10.99.0.12/32"), RejectReason::NodeAddress),
        ],
        allow_default_route,
        rules,
    }))
}

fn rule(cidr: &str, operator: MatchOperator, len: Option<(u8, u8)>, action: Action) -> Rule {
    Rule {
        cidr: net(cidr),
        operator,
        prefix_length: len,
        action,
    }
}

#[test]
fn every_hostile_announcement_of_an_external_router_is_refused_with_its_reason() {
    let p = lab_external(false, vec![]);
    let router = ip("10.99.0.1");
    for (prefix, why) in [
        ("0.0.0.0/0", RejectReason::DefaultRoute),
        ("::/0", RejectReason::DefaultRoute),
        ("10.99.0.0/24", RejectReason::NodeAddress),
        ("10.99.0.0/25", RejectReason::NodeAddress),
        ("10.99.0.12/32", RejectReason::NodeAddress),
        ("10.244.1.7/32", RejectReason::PodSpace),
        ("10.244.1.0/25", RejectReason::PodSpace),
        ("10.244.0.0/16", RejectReason::PodSpace),
        ("10.0.0.0/8", RejectReason::PodSpace),
        ("127.0.0.0/8", RejectReason::Loopback),
        ("127.0.0.1/32", RejectReason::Loopback),
        ("169.254.1.1/32", RejectReason::LinkLocal),
        ("224.0.0.0/4", RejectReason::Multicast),
        ("fe80::/64", RejectReason::LinkLocal),
        ("::1/128", RejectReason::Loopback),
        ("ff02::/16", RejectReason::Multicast),
    ] {
        assert_eq!(p.check(&net(prefix), router), Err(why), "{prefix}");
    }
}

#[test]
fn an_ordinary_external_prefix_is_accepted() {
    let p = lab_external(false, vec![]);
    assert_eq!(p.check(&net("192.0.2.0/24"), ip("10.99.0.1")), Ok(()));
    assert_eq!(p.check(&net("2001:db8::/32"), ip("10.99.0.1")), Ok(()));
}

#[test]
fn the_default_route_passes_with_the_flag_or_an_accept_rule_only() {
    let d = net("0.0.0.0/0");
    let r = ip("10.99.0.1");
    assert_eq!(lab_external(true, vec![]).check(&d, r), Ok(()));
    let accept = rule("0.0.0.0/0", MatchOperator::Equal, None, Action::Accept);
    assert_eq!(lab_external(false, vec![accept]).check(&d, r), Ok(()));
    let reject = rule("0.0.0.0/0", MatchOperator::In, None, Action::Reject);
    assert_eq!(
        lab_external(true, vec![reject]).check(&d, r),
        Err(RejectReason::Filter)
    );
    // An Accept of everything does not open protected ranges.
    let all = rule("0.0.0.0/0", MatchOperator::In, None, Action::Accept);
    assert_eq!(
        lab_external(false, vec![all]).check(&net("10.244.0.5/32"), r),
        Err(RejectReason::PodSpace)
    );
}

#[test]
fn rules_match_by_operator_and_prefix_length_and_the_first_match_wins() {
    let rules = vec![
        rule(
            "192.0.2.0/24",
            MatchOperator::In,
            Some((25, 32)),
            Action::Reject,
        ),
        rule("192.0.2.0/24", MatchOperator::Equal, None, Action::Accept),
        rule(
            "198.51.100.0/24",
            MatchOperator::NotIn,
            None,
            Action::Reject,
        ),
    ];
    let p = lab_external(false, rules);
    let r = ip("10.99.0.1");
    assert_eq!(p.check(&net("192.0.2.0/24"), r), Ok(()));
    assert_eq!(
        p.check(&net("192.0.2.128/25"), r),
        Err(RejectReason::Filter)
    );
    assert_eq!(p.check(&net("198.51.100.0/25"), r), Ok(()));
    assert_eq!(
        p.check(&net("203.0.113.0/24"), r),
        Err(RejectReason::Filter)
    );
    // A rule of the other family never matches.
    assert_eq!(p.check(&net("2001:db8::/32"), r), Ok(()));
}

fn members() -> ImportPolicy {
    let mut blocks = HashMap::new();
    blocks.insert(
        ip("10.99.0.11"),
        vec![net("10.244.0.0/24"), net("fd00:244::/64")],
    );
    blocks.insert(ip("10.99.0.12"), vec![net("10.244.1.0/24")]);
    ImportPolicy::Members(Arc::new(Members { blocks }))
}

#[test]
fn a_cluster_member_may_send_its_own_blocks_and_pods_only() {
    let p = members();
    let a = ip("10.99.0.11");
    assert_eq!(p.check(&net("10.244.0.0/24"), a), Ok(()));
    assert_eq!(p.check(&net("10.244.0.9/32"), a), Ok(()));
    assert_eq!(p.check(&net("fd00:244::9/128"), a), Ok(()));
    for hostile in [
        "10.244.1.0/24",
        "10.244.1.9/32",
        "10.244.0.0/25",
        "10.244.0.0/16",
        "0.0.0.0/0",
        "10.99.0.0/24",
        "192.0.2.0/24",
    ] {
        assert_eq!(
            p.check(&net(hostile), a),
            Err(RejectReason::NotOriginatorsBlock),
            "{hostile}"
        );
    }
    // An unknown speaker holds nothing.
    assert_eq!(
        p.check(&net("10.244.0.0/24"), ip("10.99.0.99")),
        Err(RejectReason::NotOriginatorsBlock)
    );
}

#[test]
fn export_rules_reject_only_what_they_match() {
    let e = ExportPolicy {
        rules: vec![rule(
            "10.244.0.0/16",
            MatchOperator::In,
            Some((32, 32)),
            Action::Reject,
        )],
    };
    assert!(e.allows(&net("10.244.0.0/24")));
    assert!(!e.allows(&net("10.244.0.7/32")));
}

#[test]
fn communities_parse_print_and_refuse_what_does_not_fit() {
    let c: Community = "65000:100".parse().unwrap();
    assert_eq!(c, Community::Standard(0xfde8_0064));
    assert_eq!(c.to_string(), "65000:100");
    let l: Community = "65000:1:2".parse().unwrap();
    assert_eq!(
        l,
        Community::Large(LargeCommunity {
            global: 65000,
            local1: 1,
            local2: 2
        })
    );
    assert_eq!(l.to_string(), "65000:1:2");
    for bad in ["65536:1", "1", "a:b", "1:2:3:4", "4294967296:1:1", ""] {
        assert!(bad.parse::<Community>().is_err(), "{bad}");
    }
}

#[test]
fn a_prefix_gets_the_communities_of_every_cidr_it_is_inside() {
    let table = vec![
        PrefixCommunities {
            cidr: net("10.244.0.0/16"),
            communities: vec!["65000:100".parse().unwrap(), "65000:1:2".parse().unwrap()],
        },
        PrefixCommunities {
            cidr: net("10.244.1.0/24"),
            communities: vec!["65000:200".parse().unwrap(), "65000:100".parse().unwrap()],
        },
    ];
    let (s, l) = communities_for(&table, &net("10.244.1.0/24"));
    assert_eq!(s, vec![0xfde8_0064, 0xfde8_00c8]);
    assert_eq!(l.len(), 1);
    let (s, l) = communities_for(&table, &net("10.96.0.0/12"));
    assert!(s.is_empty() && l.is_empty());
}

fn arb_v4() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
}

fn arb_v6() -> impl Strategy<Value = IpNet> {
    // Mostly near the interesting ranges, some anywhere.
    let hi = prop_oneof![
        Just(0u128),
        Just(0xfe80u128 << 112),
        Just(0xff00u128 << 112),
        Just(0xfd00u128 << 112),
        any::<u128>()
    ];
    (hi, any::<u64>(), 0u8..=128).prop_map(|(hi, lo, l)| {
        let a = hi | u128::from(lo);
        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())
    })
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![3 => arb_v4(), 1 => arb_v6()]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        arb_net(),
        prop_oneof![
            Just(MatchOperator::Equal),
            Just(MatchOperator::In),
            Just(MatchOperator::NotIn)
        ],
        proptest::option::of((0u8..=128, 0u8..=128)),
        prop_oneof![Just(Action::Accept), Just(Action::Reject)],
    )
        .prop_map(|(cidr, operator, prefix_length, action)| Rule {
            cidr,
            operator,
            prefix_length,
            action,
        })
}

fn arb_external() -> impl Strategy<Value = External> {
    (
        proptest::collection::vec(arb_net(), 0..6),
        any::<bool>(),
        proptest::collection::vec(arb_rule(), 0..6),
    )
        .prop_map(|(protected, allow_default_route, rules)| External {
            protected: protected
                .into_iter()
                .map(|p| (p, RejectReason::PodSpace))
                .collect(),
            allow_default_route,
            rules,
        })
}

proptest! {
    #[test]
    fn no_prefix_overlapping_a_protected_range_ever_passes(
        e in arb_external(),
        prefix in arb_net(),
        near in proptest::sample::select(vec![0usize, 1, 2, 3]),
    ) {
        // Half the time, aim the prefix at a protected range.
        let prefix = match (near, e.protected.first()) {
            (0 | 1, Some((p, _))) => {
                let len = prefix.prefix_len().min(p.max_prefix_len());
                IpNet::new(p.addr(), len.max(1)).unwrap().trunc()
            }
            _ => prefix,
        };
        let passed = ImportPolicy::External(Arc::new(e.clone()))
            .check(&prefix, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)))
            .is_ok();
        let protected = e
            .protected
            .iter()
            .chain(ALWAYS_PROTECTED.iter())
            .any(|(r, _)| overlaps(r, &prefix));
        if prefix.prefix_len() == 0 {
            let accepted_by_rule = evaluate(&e.rules, &prefix) == Some(Action::Accept);
            let rejected_by_rule = evaluate(&e.rules, &prefix) == Some(Action::Reject);
            prop_assert_eq!(passed, accepted_by_rule || (e.allow_default_route && !rejected_by_rule));
        } else if protected {
            prop_assert!(!passed, "{} overlaps a protected range but passed", prefix);
        }
    }

    #[test]
    fn a_member_never_gets_anything_outside_its_own_blocks_through(
        blocks in proptest::collection::vec(arb_net(), 0..4),
        prefix in arb_net(),
        inside in any::<bool>(),
    ) {
        let origin = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 11));
        let mut map = HashMap::new();
        map.insert(origin, blocks.clone());
        let p = ImportPolicy::Members(Arc::new(Members { blocks: map }));
        // Sometimes a host route inside the first block.
        let prefix = match (inside, blocks.first()) {
            (true, Some(b)) => IpNet::new(b.addr(), b.max_prefix_len()).unwrap(),
            _ => prefix,
        };
        if p.check(&prefix, origin).is_ok() {
            prop_assert!(blocks.iter().any(|b| b.contains(&prefix)));
            prop_assert!(
                blocks.contains(&prefix)
                    || prefix.prefix_len() == prefix.max_prefix_len()
            );
        }
        prop_assert!(p.check(&prefix, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 12))).is_err());
    }
}
