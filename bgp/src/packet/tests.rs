//! Bytes ↔ value tests for every message, both directions, plus RFC 7606
//! behaviour and property round trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;

use super::attribute::{Aggregator, LargeCommunity, RawAttr};
use super::*;

/// Parses a hex string, ignoring whitespace.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn both_ways(bytes: &[u8], msg: &Message) {
    let ctx = Ctx::default();
    assert_eq!(&Message::decode(bytes, &ctx).unwrap(), msg, "decode");
    assert_eq!(msg.encode(&ctx), bytes, "encode");
}

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn keepalive_is_a_bare_header() {
    both_ways(&hex(&format!("{MARKER} 0013 04")), &Message::Keepalive);
}

#[test]
fn keepalive_with_a_body_is_a_bad_length() {
    let err = Message::decode(&hex(&format!("{MARKER} 0014 04 00")), &Ctx::default());
    assert_eq!(err, Err(DecodeError::BadLength { len: 20 }));
    let n = err.unwrap_err().to_notification();
    assert_eq!((n.code, n.subcode, n.data), (1, 2, vec![0, 20]));
}

#[test]
fn open_with_the_capabilities_we_send() {
    let bytes = hex(&format!(
        "{MARKER} 0041 01 04 fde9 005a 0a000001 24
         02 22
           01 04 0001 00 01
           01 04 0002 00 01
           02 00
           46 00
           40 0a 8078 0001 01 80 0002 01 80
           41 04 0000fde9"
    ));
    let open = Open::new(
        65001,
        90,
        Ipv4Addr::new(10, 0, 0, 1),
        vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::Multiprotocol { afi: 2, safi: 1 },
            Capability::RouteRefresh,
            Capability::EnhancedRouteRefresh,
            Capability::GracefulRestart {
                restart_state: true,
                notification: false,
                restart_time: 120,
                families: vec![
                    GrFamily {
                        afi: 1,
                        safi: 1,
                        forwarding: true,
                    },
                    GrFamily {
                        afi: 2,
                        safi: 1,
                        forwarding: true,
                    },
                ],
            },
            Capability::FourOctetAs { asn: 65001 },
        ],
    );
    both_ways(&bytes, &Message::Open(open.clone()));
    assert_eq!(open.asn(), 65001);
    assert_eq!(
        open.families(),
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    );
}

#[test]
fn open_from_a_large_as_uses_as_trans() {
    let open = Open::new(
        4_200_000_000,
        90,
        Ipv4Addr::new(1, 1, 1, 1),
        vec![Capability::FourOctetAs { asn: 4_200_000_000 }],
    );
    assert_eq!(open.my_as, AS_TRANS);
    assert_eq!(open.asn(), 4_200_000_000);
}

#[test]
fn open_without_multiprotocol_means_ipv4_unicast() {
    let open = Open::new(1, 90, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    assert_eq!(open.families(), vec![Family::Ipv4Unicast]);
    both_ways(
        &hex(&format!("{MARKER} 001d 01 04 0001 005a 01010101 00")),
        &Message::Open(open),
    );
}

#[test]
fn open_with_version_3_is_refused_with_version_4_in_the_data() {
    let err = Message::decode(
        &hex(&format!("{MARKER} 001d 01 03 0001 005a 01010101 00")),
        &Ctx::default(),
    )
    .unwrap_err();
    let n = Notification::from(err);
    assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));
}

#[test]
fn open_with_an_unknown_capability_keeps_it() {
    let bytes = hex(&format!(
        "{MARKER} 0023 01 04 0001 005a 01010101 06 02 04 49 02 6869"
    ));
    let msg = Message::decode(&bytes, &Ctx::default()).unwrap();
    let Message::Open(open) = &msg else {
        panic!("not an OPEN")
    };
    assert_eq!(
        open.capabilities,
        vec![Capability::Unknown {
            code: 73,
            value: b"hi".to_vec()
        }]
    );
}

#[test]
fn notification_cease_admin_shutdown() {
    both_ways(
        &hex(&format!("{MARKER} 0015 03 06 02")),
        &Message::Notification(Notification::new(6, 2)),
    );
}

#[test]
fn route_refresh_for_ipv6() {
    both_ways(
        &hex(&format!("{MARKER} 0017 05 0002 00 01")),
        &Message::RouteRefresh(RouteRefresh {
            afi: 2,
            subtype: 0,
            safi: 1,
        }),
    );
}

fn ebgp_attrs() -> PathAttrs {
    PathAttrs {
        origin: Origin::Igp,
        as_path: AsPath {
            segments: vec![AsSegment::Sequence(vec![65002, 65003])],
        },
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 2)),
        med: Some(10),
        communities: vec![0xfde9_0001],
        ..PathAttrs::default()
    }
}

const EBGP_ATTRS_HEX: &str = "
    40 01 01 00
    40 02 0a 02 02 0000fdea 0000fdeb
    40 03 04 c0000202
    80 04 04 0000000a
    c0 08 04 fde90001";

#[test]
fn update_announcing_two_ipv4_prefixes() {
    let bytes = hex(&format!(
        "{MARKER} 0046 02 0000 0026 {EBGP_ATTRS_HEX} 1a 0a000040 18 0a0101"
    ));
    let update = Update {
        attrs: Some(ebgp_attrs()),
        nlri: vec![v4("10.0.0.64/26"), v4("10.1.1.0/24")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update));
}

#[test]
fn update_with_standard_and_large_communities() {
    // 65000:100 and 65000:1 (RFC 1997), then 65000:1:2 (RFC 8092).
    let bytes = hex(&format!(
        "{MARKER} 0049 02 0000 002e
         40 01 01 00
         40 02 06 02 01 0000fdea
         40 03 04 c0000202
         c0 08 08 fde80064 fde80001
         c0 20 0c 0000fde8 00000001 00000002
         18 0a0101"
    ));
    let update = Update {
        attrs: Some(PathAttrs {
            as_path: AsPath {
                segments: vec![AsSegment::Sequence(vec![65002])],
            },
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 2)),
            communities: vec![0xfde8_0064, 0xfde8_0001],
            large_communities: vec![LargeCommunity {
                global: 65000,
                local1: 1,
                local2: 2,
            }],
            ..PathAttrs::default()
        }),
        nlri: vec![v4("10.1.1.0/24")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update));
}

#[test]
fn a_large_community_not_a_multiple_of_12_octets_is_treat_as_withdraw() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} c0 20 0b 0000fde8 00000001 000000"),
        "18 0a0101",
    )
    .unwrap();
    assert!(u.treat_as_withdraw);
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} c0 20 00"),
        "18 0a0101",
    )
    .unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn update_withdrawing_ipv4_prefixes() {
    let bytes = hex(&format!("{MARKER} 001d 02 0006 1a0a000040 00 0000"));
    let update = Update {
        withdrawn: vec![v4("10.0.0.64/26"), v4("0.0.0.0/0")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update));
}

#[test]
fn ipv4_end_of_rib_is_an_empty_update() {
    let bytes = hex(&format!("{MARKER} 0017 02 0000 0000"));
    let msg = Message::decode(&bytes, &Ctx::default()).unwrap();
    let Message::Update(u) = &msg else {
        panic!("not an UPDATE")
    };
    assert_eq!(u.as_end_of_rib(), Some(Family::Ipv4Unicast));
    both_ways(
        &bytes,
        &Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
    );
}

#[test]
fn ipv6_end_of_rib_is_an_empty_mp_unreach() {
    let bytes = hex(&format!("{MARKER} 001d 02 0000 0006 800f 03 000201"));
    let u = Update::end_of_rib(Family::Ipv6Unicast);
    assert_eq!(u.as_end_of_rib(), Some(Family::Ipv6Unicast));
    both_ways(&bytes, &Message::Update(u));
}

#[test]
fn update_announcing_ipv6_with_a_link_local_next_hop() {
    let bytes = hex(&format!(
        "{MARKER} 0055 02 0000 003e
         40 01 01 00
         40 02 06 02 01 0000fdea
         80 0e 2e 0002 01 20
            20010db8000000000000000000000002
            fe800000000000000000000000000002
            00
            40 20010db800010000
            "
    ));
    let update = Update {
        attrs: Some(PathAttrs {
            as_path: AsPath {
                segments: vec![AsSegment::Sequence(vec![65002])],
            },
            ..PathAttrs::default()
        }),
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hop: IpAddr::V6("2001:db8::2".parse().unwrap()),
            link_local: Some("fe80::2".parse::<Ipv6Addr>().unwrap()),
            nlri: vec!["2001:db8:1::/64".parse().unwrap()],
        }),
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update));
}

#[test]
fn ibgp_reflected_route_attributes_round_trip() {
    let attrs = PathAttrs {
        origin: Origin::Incomplete,
        as_path: AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65010]),
                AsSegment::Set(vec![65011, 65012]),
            ],
        },
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 9)),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 65010,
            address: Ipv4Addr::new(10, 0, 0, 9),
        }),
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 9)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 1)],
        unknown: vec![RawAttr {
            flags: 0xc0,
            code: 99,
            value: vec![1, 2, 3],
        }],
        ..PathAttrs::default()
    };
    let msg = Message::Update(Update {
        attrs: Some(attrs),
        nlri: vec![v4("10.9.0.0/16")],
        ..Update::default()
    });
    let ctx = Ctx::default();
    assert_eq!(Message::decode(&msg.encode(&ctx), &ctx).unwrap(), msg);
}

fn decode_update(attrs_hex: &str, nlri_hex: &str) -> Result<Update, DecodeError> {
    let attrs = hex(attrs_hex);
    let nlri = hex(nlri_hex);
    let mut b = hex(MARKER);
    let len = 19 + 4 + attrs.len() + nlri.len();
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    b.extend_from_slice(&nlri);
    match Message::decode(&b, &Ctx::default())? {
        Message::Update(u) => Ok(u),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

const ORIGIN_IGP: &str = "40 01 01 00";
const EMPTY_PATH: &str = "40 02 00";
const NH: &str = "40 03 04 c0000202";

#[test]
fn an_invalid_origin_value_is_treat_as_withdraw() {
    let u = decode_update(&format!("40 01 01 07 {EMPTY_PATH} {NH}"), "18 0a0101").unwrap();
    assert!(u.treat_as_withdraw);
    assert_eq!(u.nlri, vec![v4("10.1.1.0/24")]);
}

#[test]
fn a_missing_next_hop_is_treat_as_withdraw() {
    let u = decode_update(&format!("{ORIGIN_IGP} {EMPTY_PATH}"), "18 0a0101").unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn a_missing_origin_is_treat_as_withdraw() {
    let u = decode_update(&format!("{EMPTY_PATH} {NH}"), "18 0a0101").unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn wrong_flags_on_a_well_known_attribute_are_treat_as_withdraw() {
    let u = decode_update(&format!("c0 01 01 00 {EMPTY_PATH} {NH}"), "18 0a0101").unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn a_zero_length_as_path_segment_is_treat_as_withdraw() {
    let u = decode_update(&format!("{ORIGIN_IGP} 40 02 02 0200 {NH}"), "18 0a0101").unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn a_bad_med_length_is_treat_as_withdraw() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} 80 04 02 0001"),
        "18 0a0101",
    )
    .unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn an_attribute_overrunning_the_section_is_treat_as_withdraw() {
    let u = decode_update(&format!("{ORIGIN_IGP} {EMPTY_PATH} 40 03 09 c0000202"), "").unwrap();
    assert!(u.treat_as_withdraw);
}

#[test]
fn a_malformed_aggregator_is_discarded_and_the_route_kept() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} c0 07 03 000102"),
        "18 0a0101",
    )
    .unwrap();
    assert!(!u.treat_as_withdraw);
    assert_eq!(u.attrs.unwrap().aggregator, None);
}

#[test]
fn a_non_empty_atomic_aggregate_is_discarded() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} 40 06 01 00"),
        "18 0a0101",
    )
    .unwrap();
    assert!(!u.treat_as_withdraw);
    assert!(!u.attrs.unwrap().atomic_aggregate);
}

#[test]
fn a_duplicate_attribute_keeps_the_first() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} 40 01 01 02 {EMPTY_PATH} {NH}"),
        "18 0a0101",
    )
    .unwrap();
    assert_eq!(u.attrs.unwrap().origin, Origin::Igp);
}

#[test]
fn a_duplicate_mp_reach_resets_the_session() {
    let mp = "80 0e 09 0002 01 10 20010db8000000000000000000000002 00";
    let mp = mp.replace("09", "15");
    let err = decode_update(&format!("{ORIGIN_IGP} {EMPTY_PATH} {mp} {mp}"), "").unwrap_err();
    assert!(matches!(err, DecodeError::MalformedAttributeList { .. }));
}

#[test]
fn an_unknown_optional_transitive_attribute_is_kept() {
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} e0 63 02 abcd"),
        "18 0a0101",
    )
    .unwrap();
    let attrs = u.attrs.unwrap();
    assert_eq!(
        attrs.unknown,
        vec![RawAttr {
            flags: 0xe0,
            code: 0x63,
            value: vec![0xab, 0xcd]
        }]
    );
}

#[test]
fn unknown_attributes_are_kept_in_type_code_order() {
    // Found by fuzzing: wire order 255, 225 used to re-encode as 225, 255.
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} e0 ff 00 e0 e1 00"),
        "18 0a0101",
    )
    .unwrap();
    let codes: Vec<u8> = u.attrs.unwrap().unknown.iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![0xe1, 0xff]);
}

#[test]
fn the_unused_low_flag_bits_are_ignored() {
    // Found by fuzzing: 0x82 must read as optional non-transitive.
    let u = decode_update(
        &format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} 82 63 00"),
        "18 0a0101",
    )
    .unwrap();
    assert_eq!(u.attrs.unwrap().unknown[0].flags, 0x80);
}

#[test]
fn an_unknown_well_known_attribute_resets_the_session() {
    let err = decode_update(&format!("{ORIGIN_IGP} {EMPTY_PATH} {NH} 40 63 00"), "").unwrap_err();
    let n = err.to_notification();
    assert_eq!((n.code, n.subcode, n.data), (3, 2, vec![0x63]));
}

#[test]
fn a_prefix_longer_than_32_resets_the_session() {
    let err =
        decode_update(&format!("{ORIGIN_IGP} {EMPTY_PATH} {NH}"), "21 0a010101ff").unwrap_err();
    assert_eq!(err.to_notification().subcode, 10);
}

#[test]
fn a_withdrawn_length_past_the_end_resets_the_session() {
    let err = Message::decode(
        &hex(&format!("{MARKER} 0017 02 00ff 0000")),
        &Ctx::default(),
    )
    .unwrap_err();
    assert_eq!(
        (err.to_notification().code, err.to_notification().subcode),
        (3, 1)
    );
}

#[test]
fn a_bad_marker_is_connection_not_synchronized() {
    let err = frame_len(&hex("00ffffffffffffffffffffffffffffff 0013 04")).unwrap_err();
    assert_eq!(err, DecodeError::BadMarker);
}

#[test]
fn frame_len_waits_for_the_whole_message() {
    let b = hex(&format!("{MARKER} 0017 02 0000 00"));
    assert_eq!(frame_len(&b), Ok(None));
    let b = hex(&format!("{MARKER} 0017 02 0000 0000 ffff"));
    assert_eq!(frame_len(&b), Ok(Some(23)));
}

#[test]
fn a_two_octet_peer_gets_as4_path_merged() {
    let ctx = Ctx {
        four_octet_as: false,
    };
    // AS_PATH: 65002 23456 ; AS4_PATH: 4200000000
    let attrs = hex(&format!(
        "{ORIGIN_IGP} 40 02 06 02 02 fdea 5ba0 {NH} c0 11 06 02 01 fa56ea00"
    ));
    let mut b = hex(MARKER);
    let len = 19 + 4 + attrs.len();
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    let Message::Update(u) = Message::decode(&b, &ctx).unwrap() else {
        panic!("not an UPDATE")
    };
    assert_eq!(
        u.attrs.clone().unwrap().as_path.segments,
        vec![
            AsSegment::Sequence(vec![65002]),
            AsSegment::Sequence(vec![4_200_000_000])
        ]
    );
    // Re-encoding for a 2-octet peer produces AS_TRANS plus AS4_PATH again.
    let again = Message::decode(&Message::Update(u.clone()).encode(&ctx), &ctx).unwrap();
    let Message::Update(again) = again else {
        panic!("not an UPDATE")
    };
    assert_eq!(again.attrs.unwrap().as_path.len(), 2);
}

#[test]
fn many_prefixes_are_split_into_messages_under_4096_bytes() {
    let prefixes: Vec<IpNet> = (0..2000u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 6)), 26).unwrap()))
        .collect();
    let ctx = Ctx::default();
    let msgs = update::encode_announce(
        &ebgp_attrs(),
        Family::Ipv4Unicast,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        None,
        &prefixes,
        &ctx,
    );
    assert!(msgs.len() > 1);
    let mut seen = Vec::new();
    for m in &msgs {
        assert!(m.len() <= MAX_MESSAGE_LEN);
        let Message::Update(u) = Message::decode(m, &ctx).unwrap() else {
            panic!("not an UPDATE")
        };
        seen.extend(u.nlri.into_iter().map(IpNet::V4));
    }
    assert_eq!(seen, prefixes);
    let v6: Vec<IpNet> = (0..500u128)
        .map(|i| {
            IpNet::V6(
                ipnet::Ipv6Net::new(Ipv6Addr::from((0x2001_0db8u128 << 96) + (i << 64)), 64)
                    .unwrap(),
            )
        })
        .collect();
    for m in update::encode_withdraw(Family::Ipv6Unicast, &v6, &ctx) {
        assert!(m.len() <= MAX_MESSAGE_LEN);
    }
}

fn arb_v4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
}

fn arb_v6net() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()))
}

fn arb_attrs() -> impl Strategy<Value = PathAttrs> {
    (
        prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ],
        proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u32>(), 1..5).prop_map(AsSegment::Sequence),
                proptest::collection::vec(any::<u32>(), 1..3).prop_map(AsSegment::Set),
            ],
            0..3,
        ),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(any::<u32>(), 0..4),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(any::<u32>(), 0..3),
        proptest::collection::vec(any::<(u32, u32, u32)>(), 0..3),
    )
        .prop_map(
            |(origin, segs, nh, med, lp, atomic, comms, orig, clusters, large)| PathAttrs {
                origin,
                as_path: AsPath { segments: segs },
                next_hop: nh.map(Ipv4Addr::from),
                med,
                local_pref: lp,
                atomic_aggregate: atomic,
                aggregator: None,
                communities: comms,
                large_communities: large
                    .into_iter()
                    .map(|(global, local1, local2)| LargeCommunity {
                        global,
                        local1,
                        local2,
                    })
                    .collect(),
                originator_id: orig.map(Ipv4Addr::from),
                cluster_list: clusters.into_iter().map(Ipv4Addr::from).collect(),
                unknown: vec![],
            },
        )
}

proptest! {
    #[test]
    fn any_update_round_trips(
        withdrawn in proptest::collection::vec(arb_v4net(), 0..20),
        attrs in arb_attrs(),
        nlri in proptest::collection::vec(arb_v4net(), 0..20),
        v6 in proptest::collection::vec(arb_v6net(), 0..10),
    ) {
        let has_nlri = !nlri.is_empty();
        let attrs = PathAttrs { next_hop: attrs.next_hop.or(has_nlri.then_some(Ipv4Addr::new(1, 2, 3, 4))), ..attrs };
        let update = Update {
            withdrawn,
            attrs: Some(attrs),
            mp_reach: (!v6.is_empty()).then_some(MpReach {
                family: Family::Ipv6Unicast,
                next_hop: IpAddr::V6(Ipv6Addr::LOCALHOST),
                link_local: None,
                nlri: v6,
            }),
            mp_unreach: None,
            nlri,
            treat_as_withdraw: false,
        };
        let msg = Message::Update(update);
        let ctx = Ctx::default();
        let bytes = msg.encode(&ctx);
        prop_assume!(bytes.len() <= MAX_MESSAGE_LEN);
        prop_assert_eq!(Message::decode(&bytes, &ctx).unwrap(), msg);
    }

    #[test]
    fn any_open_round_trips(asn in any::<u32>(), hold in prop_oneof![Just(0u16), 3u16..], id in any::<u32>(), rt in 0u16..4096) {
        let open = Open::new(asn, hold, Ipv4Addr::from(id), vec![
            Capability::FourOctetAs { asn },
            Capability::GracefulRestart { restart_state: false, notification: true, restart_time: rt, families: vec![] },
        ]);
        let msg = Message::Open(open);
        let ctx = Ctx::default();
        prop_assert_eq!(Message::decode(&msg.encode(&ctx), &ctx).unwrap(), msg);
    }

    #[test]
    fn decoding_random_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), ty in 1u8..6) {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        b.push(ty);
        b.extend_from_slice(&body);
        let _ = Message::decode(&b, &Ctx::default());
        let _ = Message::decode(&b, &Ctx { four_octet_as: false });
    }
}
