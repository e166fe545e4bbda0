//! RIB behaviour, one RFC rule per test.

use super::*;
use crate::packet::{AsPath, AsSegment, Origin};

const LOCAL_AS: u32 = 65001;
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn rib() -> Rib {
    Rib::new(RibConfig {
        local_as: LOCAL_AS,
        router_id: ME,
        cluster_id: ME,
        default_local_pref: 100,
        multipath: true,
    })
}

fn peer(n: u8, asn: u32, rr_client: bool) -> PeerInfo {
    PeerInfo {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        asn,
        router_id: Ipv4Addr::new(10, 0, 0, n),
        rr_client,
        next_hop_self: false,
        export_local_only: false,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        local_v6: Some("2001:db8::1".parse().unwrap()),
        local_link_local: Some("fe80::1".parse().unwrap()),
        families: Family::ALL.to_vec(),
        ctx: Ctx::default(),
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn path(asns: &[u32]) -> PathAttrs {
    PathAttrs {
        as_path: AsPath {
            segments: if asns.is_empty() {
                vec![]
            } else {
                vec![AsSegment::Sequence(asns.to_vec())]
            },
        },
        ..PathAttrs::default()
    }
}

fn announce(rib: &mut Rib, from: PeerIdx, prefix: &str, nh: [u8; 4], attrs: PathAttrs) {
    let IpNet::V4(p) = net(prefix) else {
        panic!("v4 only")
    };
    rib.apply_update(
        from,
        Update {
            attrs: Some(PathAttrs {
                next_hop: Some(Ipv4Addr::from(nh)),
                ..attrs
            }),
            nlri: vec![p],
            ..Update::default()
        },
    );
}

fn withdraw(rib: &mut Rib, from: PeerIdx, prefix: &str) {
    let IpNet::V4(p) = net(prefix) else {
        panic!("v4 only")
    };
    rib.apply_update(
        from,
        Update {
            withdrawn: vec![p],
            ..Update::default()
        },
    );
}

fn nh(rib: &Rib, prefix: &str) -> Vec<IpAddr> {
    rib.snapshot()
        .into_iter()
        .find(|c| c.prefix == net(prefix))
        .map(|c| c.next_hops)
        .unwrap_or_default()
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// Decodes what the RIB would send to `peer`: (announced prefix → attrs) and
/// withdrawn prefixes.
fn sent(msgs: &[Vec<u8>]) -> (Vec<(IpNet, PathAttrs)>, Vec<IpNet>) {
    let mut ann = Vec::new();
    let mut wd = Vec::new();
    for m in msgs {
        let Ok(Message::Update(u)) = Message::decode(m, &Ctx::default()) else {
            panic!("not an UPDATE")
        };
        wd.extend(u.withdrawn.iter().map(|p| IpNet::V4(*p)));
        if let Some(un) = &u.mp_unreach {
            wd.extend(un.withdrawn.iter().copied());
        }
        if let Some(a) = &u.attrs {
            ann.extend(u.nlri.iter().map(|p| (IpNet::V4(*p), a.clone())));
            if let Some(r) = &u.mp_reach {
                ann.extend(r.nlri.iter().map(|p| (*p, a.clone())));
            }
        }
    }
    (ann, wd)
}

fn exports_to(rib: &mut Rib, peer: PeerIdx) -> (Vec<(IpNet, PathAttrs)>, Vec<IpNet>) {
    let all = rib.take_exports();
    let msgs: Vec<Vec<u8>> = all
        .into_iter()
        .filter(|(p, _)| *p == peer)
        .flat_map(|(_, m)| m)
        .collect();
    sent(&msgs)
}

#[test]
fn a_learned_route_reaches_the_kernel_with_its_next_hop() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.2.0.0/26", [192, 0, 2, 2], path(&[65002]));
    assert_eq!(
        rib.take_changes(),
        vec![BestChange {
            prefix: net("10.2.0.0/26"),
            next_hops: vec![ip([192, 0, 2, 2])]
        }]
    );
    withdraw(&mut rib, 1, "10.2.0.0/26");
    assert_eq!(
        rib.take_changes(),
        vec![BestChange {
            prefix: net("10.2.0.0/26"),
            next_hops: vec![]
        }]
    );
    assert!(rib.is_empty());
}

#[test]
fn higher_local_pref_wins() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.peer_up(2, peer(3, LOCAL_AS, false));
    let mut a = path(&[65010]);
    a.local_pref = Some(200);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65010]));
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], a);
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn shorter_as_path_wins() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    announce(
        &mut rib,
        1,
        "10.9.0.0/24",
        [192, 0, 2, 2],
        path(&[65002, 65010]),
    );
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[65003]));
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn an_as_set_counts_as_one_hop() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    let mut set = path(&[65002]);
    set.as_path
        .segments
        .push(AsSegment::Set(vec![1, 2, 3, 4, 5]));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], set);
    announce(
        &mut rib,
        2,
        "10.9.0.0/24",
        [192, 0, 2, 3],
        path(&[65003, 7, 8]),
    );
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 2])]);
}

#[test]
fn lower_origin_wins() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    let mut inc = path(&[65002]);
    inc.origin = Origin::Incomplete;
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], inc);
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[65003]));
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn lower_med_wins_between_routes_from_the_same_neighbour_as() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65002, false));
    let mut hi = path(&[65002]);
    hi.med = Some(50);
    let mut lo = path(&[65002]);
    lo.med = Some(10);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], hi);
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], lo);
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn med_is_ignored_between_different_neighbour_ases_and_ecmp_results() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    let mut hi = path(&[65002]);
    hi.med = Some(50);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], hi);
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[65003]));
    assert_eq!(
        nh(&rib, "10.9.0.0/24"),
        vec![ip([192, 0, 2, 2]), ip([192, 0, 2, 3])]
    );
}

#[test]
fn ebgp_wins_over_ibgp() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.peer_up(2, peer(3, 65003, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65003]));
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[65003]));
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn lowest_router_id_breaks_the_tie_without_multipath() {
    let mut rib = Rib::new(RibConfig {
        multipath: false,
        ..rib().config().clone()
    });
    rib.peer_up(1, peer(7, 65007, false));
    rib.peer_up(2, peer(3, 65003, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 7], path(&[65007]));
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[65003]));
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn originator_id_replaces_the_router_id_in_the_tie_break() {
    let mut rib = Rib::new(RibConfig {
        multipath: false,
        ..rib().config().clone()
    });
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.peer_up(2, peer(3, LOCAL_AS, false));
    let mut reflected = path(&[]);
    reflected.originator_id = Some(Ipv4Addr::new(10, 0, 0, 200));
    reflected.cluster_list = vec![Ipv4Addr::new(10, 0, 0, 2)];
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], reflected);
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 3], path(&[]));
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 3])]);
}

#[test]
fn shorter_cluster_list_then_lower_peer_address_break_the_last_ties() {
    let mut rib = Rib::new(RibConfig {
        multipath: false,
        ..rib().config().clone()
    });
    rib.peer_up(1, peer(9, LOCAL_AS, false));
    rib.peer_up(2, peer(8, LOCAL_AS, false));
    let mut long = path(&[]);
    long.originator_id = Some(Ipv4Addr::new(10, 0, 0, 50));
    long.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)];
    let mut short = long.clone();
    short.cluster_list.truncate(1);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 9], short.clone());
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 8], long);
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 9])]);
    announce(&mut rib, 2, "10.9.0.0/24", [192, 0, 2, 8], short);
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 8])]);
}

#[test]
fn a_route_with_our_as_in_its_path_is_rejected() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(
        &mut rib,
        1,
        "10.9.0.0/24",
        [192, 0, 2, 2],
        path(&[65002, LOCAL_AS]),
    );
    assert!(rib.is_empty());
    assert_eq!(rib.counts(1).received, 1);
    assert_eq!(rib.counts(1).accepted, 0);
}

#[test]
fn treat_as_withdraw_removes_the_previous_route() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.apply_update(
        1,
        Update {
            attrs: Some(path(&[65002])),
            nlri: vec!["10.9.0.0/24".parse().unwrap()],
            treat_as_withdraw: true,
            ..Update::default()
        },
    );
    assert!(rib.is_empty());
}

#[test]
fn ebgp_export_prepends_our_as_and_sets_next_hop_self() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    rib.take_exports();
    let mut a = path(&[65002]);
    a.med = Some(5);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], a);
    let (ann, _) = exports_to(&mut rib, 2);
    assert_eq!(ann.len(), 1);
    let attrs = &ann[0].1;
    assert_eq!(attrs.as_path, path(&[LOCAL_AS, 65002]).as_path);
    assert_eq!(attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(attrs.med, None, "MED does not leave the AS it was set for");
    assert_eq!(attrs.local_pref, None);
}

#[test]
fn a_route_is_never_sent_back_to_the_peer_it_came_from() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    assert!(rib.take_exports().is_empty());
}

#[test]
fn ibgp_routes_are_not_sent_to_other_ibgp_peers_without_reflection() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.peer_up(2, peer(3, LOCAL_AS, false));
    rib.take_exports();
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[]));
    assert_eq!(exports_to(&mut rib, 2), (vec![], vec![]));
}

#[test]
fn a_route_reflector_reflects_client_routes_to_non_clients_with_originator_and_cluster() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, true));
    rib.peer_up(2, peer(3, LOCAL_AS, false));
    rib.take_exports();
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[]));
    let (ann, _) = exports_to(&mut rib, 2);
    assert_eq!(ann.len(), 1);
    let attrs = &ann[0].1;
    assert_eq!(attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(attrs.cluster_list, vec![ME]);
    assert_eq!(
        attrs.next_hop,
        Some(Ipv4Addr::new(192, 0, 2, 2)),
        "reflection keeps the next hop"
    );
    assert_eq!(attrs.local_pref, Some(100));
}

#[test]
fn a_route_reflector_reflects_non_client_routes_to_clients_only() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.peer_up(2, peer(3, LOCAL_AS, true));
    rib.peer_up(3, peer(4, LOCAL_AS, false));
    rib.take_exports();
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[]));
    let exports = rib.take_exports();
    let to: Vec<PeerIdx> = exports.iter().map(|(p, _)| *p).collect();
    assert_eq!(to, vec![2]);
}

#[test]
fn a_route_carrying_our_cluster_id_is_dropped_as_a_loop() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, true));
    let mut looped = path(&[]);
    looped.cluster_list = vec![ME];
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], looped);
    let mut mine = path(&[]);
    mine.originator_id = Some(ME);
    announce(&mut rib, 1, "10.8.0.0/24", [192, 0, 2, 2], mine);
    assert!(rib.is_empty());
}

#[test]
fn local_routes_are_announced_to_everyone_with_next_hop_self_and_not_installed() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, LOCAL_AS, false));
    rib.take_exports();
    rib.announce_local(net("10.1.0.0/26"));
    assert!(rib.take_changes().is_empty(), "the kernel already has it");
    let (ann, _) = exports_to(&mut rib, 1);
    assert_eq!(ann[0].0, net("10.1.0.0/26"));
    assert_eq!(ann[0].1.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
    rib.withdraw_local(net("10.1.0.0/26"));
    let (_, wd) = exports_to(&mut rib, 1);
    assert_eq!(wd, vec![net("10.1.0.0/26")]);
}

#[test]
fn a_new_peer_gets_the_whole_table_and_end_of_rib() {
    let mut rib = rib();
    rib.announce_local(net("10.1.0.0/26"));
    rib.announce_local(net("fd00:1::/64"));
    let msgs = rib.peer_up(1, peer(2, 65002, false));
    let (ann, _) = sent(&msgs);
    assert_eq!(ann.len(), 2);
    let eors: Vec<Family> = msgs
        .iter()
        .filter_map(|m| match Message::decode(m, &Ctx::default()) {
            Ok(Message::Update(u)) => u.as_end_of_rib(),
            _ => None,
        })
        .collect();
    assert_eq!(eors, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
}

#[test]
fn ipv6_routes_go_out_in_mp_reach_with_our_ipv6_next_hop() {
    let mut rib = rib();
    rib.announce_local(net("fd00:1::/64"));
    let msgs = rib.peer_up(1, peer(2, 65002, false));
    let upd = msgs
        .iter()
        .find_map(|m| match Message::decode(m, &Ctx::default()) {
            Ok(Message::Update(u)) if u.mp_reach.is_some() => u.mp_reach,
            _ => None,
        })
        .unwrap();
    assert_eq!(upd.next_hop, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!(upd.nlri, vec![net("fd00:1::/64")]);
}

#[test]
fn graceful_restart_keeps_stale_routes_until_end_of_rib_sweeps_them() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    announce(&mut rib, 1, "10.8.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.take_changes();
    rib.peer_down(1, true);
    assert!(rib.take_changes().is_empty(), "the kernel keeps forwarding");
    assert!(rib.has_stale(1));
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.sweep_stale(1, Some(Family::Ipv4Unicast));
    assert_eq!(
        rib.take_changes(),
        vec![BestChange {
            prefix: net("10.8.0.0/24"),
            next_hops: vec![]
        }]
    );
    assert_eq!(nh(&rib, "10.9.0.0/24"), vec![ip([192, 0, 2, 2])]);
    assert!(!rib.has_stale(1));
}

#[test]
fn a_non_graceful_session_loss_withdraws_everything_at_once() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.peer_down(1, false);
    assert!(rib.is_empty());
}

#[test]
fn restart_timer_expiry_sweeps_all_stale_routes() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.peer_down(1, true);
    rib.sweep_stale(1, None);
    assert!(rib.is_empty());
}

#[test]
fn a_withdraw_propagates_to_the_peers_that_had_the_route() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.take_exports();
    withdraw(&mut rib, 1, "10.9.0.0/24");
    assert_eq!(exports_to(&mut rib, 2), (vec![], vec![net("10.9.0.0/24")]));
    assert_eq!(rib.counts(2).advertised, 0);
}

#[test]
fn identical_attributes_are_shared_between_prefixes() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    for i in 0..100u8 {
        announce(
            &mut rib,
            1,
            &format!("10.{i}.0.0/24"),
            [192, 0, 2, 2],
            path(&[65002]),
        );
    }
    rib.gc();
    assert_eq!(rib.intern.len(), 1);
}

#[test]
fn a_prefix_costs_24_bytes_in_the_table() {
    assert_eq!(std::mem::size_of::<(Ipv4Net, Paths)>(), 24);
}

#[test]
fn paths_shrink_back_to_inline_and_empty() {
    let a = Arc::new(RouteAttrs {
        next_hop: ip([1, 1, 1, 1]),
        attrs: PathAttrs::default(),
    });
    let mk = |peer| Path {
        attrs: a.clone(),
        peer,
        stale: false,
    };
    let mut ps = Paths::default();
    ps.push(mk(1));
    ps.push(mk(2));
    assert_eq!(ps.len(), 2);
    ps.retain(|p| p.peer == 2);
    assert!(matches!(ps, Paths::One(ref p) if p.peer == 2));
    ps.retain(|_| false);
    assert!(ps.is_empty());
}

#[test]
fn med_eliminates_within_each_neighbour_as_even_when_that_is_no_total_order() {
    // A (65002, MED 50) loses to C (65002, MED 10); B (65003) is not
    // compared by MED with either, so B and C share the traffic.
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(2, peer(3, 65003, false));
    rib.peer_up(3, peer(4, 65002, false));
    let with_med = |asn, med| {
        let mut a = path(&[asn]);
        a.med = Some(med);
        a
    };
    announce(
        &mut rib,
        1,
        "10.9.0.0/24",
        [192, 0, 2, 2],
        with_med(65002, 50),
    );
    announce(
        &mut rib,
        2,
        "10.9.0.0/24",
        [192, 0, 2, 3],
        with_med(65003, 0),
    );
    announce(
        &mut rib,
        3,
        "10.9.0.0/24",
        [192, 0, 2, 4],
        with_med(65002, 10),
    );
    assert_eq!(
        nh(&rib, "10.9.0.0/24"),
        vec![ip([192, 0, 2, 3]), ip([192, 0, 2, 4])]
    );
    withdraw(&mut rib, 3, "10.9.0.0/24");
    assert_eq!(
        nh(&rib, "10.9.0.0/24"),
        vec![ip([192, 0, 2, 2]), ip([192, 0, 2, 3])]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// (local pref, path length, MED, origin, neighbour AS) selectors.
    type Knobs = (u8, u8, u8, u8, u8);
    /// (peer, prefix) → knobs of its last announcement.
    type Route = ((u16, u8), Knobs);

    fn attrs_for(v: Knobs) -> (PathAttrs, u32) {
        let (lp, len, med, origin, nas) = v;
        let first = 65100 + u32::from(nas % 3);
        let mut path_asns = vec![first];
        path_asns.extend((0..len % 3).map(|i| 65200 + u32::from(i)));
        let mut a = path(&path_asns);
        a.local_pref = Some(100 + u32::from(lp % 2) * 50);
        a.med = (med % 3 != 0).then_some(u32::from(med % 3));
        a.origin = if origin % 2 == 0 {
            Origin::Igp
        } else {
            Origin::Incomplete
        };
        (a, first)
    }

    proptest! {
        /// The best path and the ECMP set depend on which paths exist, never
        /// on the order they arrived in.
        #[test]
        fn the_loc_rib_does_not_depend_on_arrival_order(
            routes in proptest::collection::vec(
                (1u16..5, 0u8..4, (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())),
                1..30,
            ),
            seed in any::<u64>(),
        ) {
            // Last announcement per (peer, prefix) wins; keep only those.
            let mut last: HashMap<(u16, u8), Knobs> = HashMap::new();
            for (p, pfx, v) in &routes {
                last.insert((*p, *pfx), *v);
            }
            let mut items: Vec<Route> = last.into_iter().collect();
            items.sort_by_key(|(k, _)| *k);
            let build = |items: &[Route]| {
                let mut rib = rib();
                for p in 1u16..5 {
                    let n = u8::try_from(p).unwrap() + 1;
                    rib.peer_up(p, peer(n, if p % 2 == 0 { LOCAL_AS } else { 65100 + u32::from(p) }, false));
                }
                for ((p, pfx), v) in items {
                    let (a, _) = attrs_for(*v);
                    let n = u8::try_from(*p).unwrap() + 1;
                    announce(&mut rib, *p, &format!("10.{pfx}.0.0/24"), [192, 0, 2, n], a);
                }
                let mut s = rib.snapshot();
                s.sort_by_key(|c| c.prefix);
                s
            };
            let forward = build(&items);
            let mut shuffled = items.clone();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(forward, build(&shuffled));
        }
    }
}

#[test]
fn an_enhanced_route_refresh_sweeps_what_the_peer_did_not_send_again() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    announce(&mut rib, 1, "10.8.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.take_changes();
    // BoRR, one route again, EoRR.
    rib.mark_stale(1, Family::Ipv4Unicast);
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    assert!(rib.take_changes().is_empty(), "no flap while refreshing");
    rib.sweep_stale(1, Some(Family::Ipv4Unicast));
    assert_eq!(
        rib.take_changes(),
        vec![BestChange {
            prefix: net("10.8.0.0/24"),
            next_hops: vec![]
        }]
    );
}

#[test]
fn a_local_only_peer_gets_our_prefixes_but_nothing_learned() {
    let mut rib = rib();
    rib.peer_up(1, peer(2, 65002, false));
    rib.peer_up(
        2,
        PeerInfo {
            export_local_only: true,
            ..peer(3, 65003, false)
        },
    );
    rib.take_exports();
    announce(&mut rib, 1, "10.9.0.0/24", [192, 0, 2, 2], path(&[65002]));
    rib.announce_local(net("10.1.0.0/26"));
    let (ann, _) = exports_to(&mut rib, 2);
    let prefixes: Vec<IpNet> = ann.iter().map(|a| a.0).collect();
    assert_eq!(prefixes, vec![net("10.1.0.0/26")]);
}

mod policy {
    use super::*;
    use crate::policy::{
        Action, ExportPolicy, External, ImportPolicy, MatchOperator, Members, PeerPolicy,
        PrefixCommunities, RejectReason, Rule,
    };

    fn external(allow_default_route: bool) -> PeerPolicy {
        PeerPolicy {
            import: ImportPolicy::External(Arc::new(External {
                protected: vec![(net("10.244.0.0/16"), RejectReason::PodSpace)],
                allow_default_route,
                rules: vec![],
            })),
            ..PeerPolicy::default()
        }
    }

    #[test]
    fn a_refused_prefix_never_reaches_the_loc_rib_and_is_reported_once() {
        let mut rib = rib();
        rib.set_policy(1, external(false));
        rib.peer_up(1, peer(2, 65002, false));
        for _ in 0..2 {
            announce(&mut rib, 1, "0.0.0.0/0", [192, 0, 2, 2], path(&[65002]));
            announce(&mut rib, 1, "10.244.3.0/24", [192, 0, 2, 2], path(&[65002]));
        }
        announce(
            &mut rib,
            1,
            "192.0.2.128/25",
            [192, 0, 2, 2],
            path(&[65002]),
        );
        assert_eq!(
            rib.take_changes()
                .into_iter()
                .map(|c| c.prefix)
                .collect::<Vec<_>>(),
            vec![net("192.0.2.128/25")]
        );
        let refusals: Vec<(IpNet, RejectReason)> = rib
            .take_refusals()
            .into_iter()
            .map(|r| (r.prefix, r.reason))
            .collect();
        assert_eq!(
            refusals,
            vec![
                (net("0.0.0.0/0"), RejectReason::DefaultRoute),
                (net("10.244.3.0/24"), RejectReason::PodSpace)
            ]
        );
        let c = rib.counts(1);
        assert_eq!((c.received, c.accepted, c.filtered), (3, 1, 2));
        withdraw(&mut rib, 1, "0.0.0.0/0");
        assert_eq!(rib.counts(1).filtered, 1);
    }

    #[test]
    fn a_policy_change_lets_kept_routes_in_and_takes_refused_ones_out() {
        let mut rib = rib();
        rib.set_policy(1, external(false));
        rib.peer_up(1, peer(2, 65002, false));
        announce(&mut rib, 1, "0.0.0.0/0", [192, 0, 2, 2], path(&[65002]));
        assert!(rib.take_changes().is_empty());
        rib.set_policy(1, external(true));
        assert_eq!(nh(&rib, "0.0.0.0/0"), vec![ip([192, 0, 2, 2])]);
        assert_eq!(rib.take_changes().len(), 1);
        rib.set_policy(1, external(false));
        assert!(nh(&rib, "0.0.0.0/0").is_empty());
        assert_eq!(
            rib.take_changes(),
            vec![BestChange {
                prefix: net("0.0.0.0/0"),
                next_hops: vec![]
            }]
        );
    }

    #[test]
    fn a_member_is_judged_by_the_originator_of_a_reflected_route() {
        let mut rib = rib();
        let mut blocks = HashMap::new();
        blocks.insert(ip([10, 0, 0, 5]), vec![net("10.244.5.0/24")]);
        blocks.insert(ip([192, 0, 2, 2]), vec![net("10.244.2.0/24")]);
        rib.set_policy(
            1,
            PeerPolicy {
                import: ImportPolicy::Members(Arc::new(Members { blocks })),
                ..PeerPolicy::default()
            },
        );
        rib.peer_up(1, peer(2, LOCAL_AS, false));
        announce(&mut rib, 1, "10.244.2.0/24", [192, 0, 2, 2], path(&[]));
        let mut reflected = path(&[]);
        reflected.originator_id = Some(Ipv4Addr::new(10, 0, 0, 5));
        announce(
            &mut rib,
            1,
            "10.244.5.0/24",
            [10, 0, 0, 5],
            reflected.clone(),
        );
        announce(
            &mut rib,
            1,
            "10.244.5.7/32",
            [10, 0, 0, 5],
            reflected.clone(),
        );
        // The RR itself does not hold the originator's block, and the
        // originator does not hold the RR's.
        announce(&mut rib, 1, "10.244.2.0/24", [10, 0, 0, 5], reflected);
        assert_eq!(rib.counts(1).accepted, 2);
        assert_eq!(rib.counts(1).filtered, 1);
        announce(&mut rib, 1, "10.244.5.0/25", [192, 0, 2, 2], path(&[]));
        assert_eq!(rib.counts(1).filtered, 2);
    }

    #[test]
    fn routes_of_a_peer_that_must_not_be_readvertised_stay_here() {
        let mut rib = rib();
        rib.set_policy(
            1,
            PeerPolicy {
                readvertise: false,
                ..PeerPolicy::default()
            },
        );
        rib.peer_up(1, peer(2, 65002, false));
        rib.peer_up(2, peer(3, LOCAL_AS, false));
        rib.take_exports();
        announce(
            &mut rib,
            1,
            "192.0.2.128/25",
            [192, 0, 2, 2],
            path(&[65002]),
        );
        rib.announce_local(net("10.244.1.0/24"));
        assert_eq!(nh(&rib, "192.0.2.128/25"), vec![ip([192, 0, 2, 2])]);
        let (ann, _) = exports_to(&mut rib, 2);
        assert_eq!(
            ann.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![net("10.244.1.0/24")]
        );
    }

    #[test]
    fn export_rules_and_communities_shape_what_a_peer_is_sent() {
        let mut rib = rib();
        rib.set_local_communities(vec![PrefixCommunities {
            cidr: net("10.244.0.0/16"),
            communities: vec!["65000:100".parse().unwrap(), "65000:1:2".parse().unwrap()],
        }]);
        rib.set_policy(
            1,
            PeerPolicy {
                export: Arc::new(ExportPolicy {
                    rules: vec![Rule {
                        cidr: net("10.96.0.0/12"),
                        operator: MatchOperator::In,
                        prefix_length: None,
                        action: Action::Reject,
                    }],
                }),
                ..PeerPolicy::default()
            },
        );
        rib.peer_up(1, peer(2, 65002, false));
        rib.take_exports();
        rib.announce_local(net("10.244.1.0/24"));
        rib.announce_local(net("10.96.0.0/12"));
        let (ann, _) = exports_to(&mut rib, 1);
        assert_eq!(ann.len(), 1);
        let (p, a) = &ann[0];
        assert_eq!(*p, net("10.244.1.0/24"));
        assert_eq!(a.communities, vec![0xfde8_0064]);
        assert_eq!(a.large_communities.len(), 1);
        // New communities go out again with the same prefix.
        rib.set_local_communities(vec![]);
        let (ann, _) = exports_to(&mut rib, 1);
        assert_eq!(ann.len(), 1);
        assert!(ann[0].1.communities.is_empty());
    }
}
