//! The agent's decisions, without root: the core (`Agent::step`) driven
//! through `Effects::settle` with the fake dataplane, routes and host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use tabby_agent::admission::{self, Links, RefusalReason};
use tabby_agent::agent::{CniRequest, Input};
use tabby_agent::dataplane::{DataplaneState, EndpointChange, SetChange};
use tabby_agent::datastore::{Event, Kind, ObjectRef};
use tabby_agent::metrics::Metrics;
use tabby_common::endpoint::RecordFile;

mod corekit;

use corekit::*;

#[test]
fn before_the_first_full_sync_nothing_is_programmed() {
    let mut n = node();
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    n.put(vec![file(&web, 1)], &[(&web.host_iface, 11)]);
    n.scan();
    // Every kind but NetworkPolicy listed: a partial index.
    n.settle(Input::Datastore(
        Kind::ALL
            .iter()
            .filter(|k| **k != Kind::NetworkPolicy)
            .map(|k| Event::Reset(*k, Vec::new()))
            .collect(),
    ));
    n.tick();
    assert!(n.changes().is_empty(), "{:?}", n.changes());
    assert!(!n.agent.ready());
    let refused = n.request(CniRequest::Status);
    assert!(!refused.ok);
    n.settle(Input::Datastore(vec![Event::Reset(
        Kind::NetworkPolicy,
        Vec::new(),
    )]));
    assert_eq!(n.changes().len(), 1);
    assert!(
        n.last_change().full,
        "the first programming replaces the whole table"
    );
    assert!(n.agent.ready());
}

#[test]
fn a_restarted_agent_programs_only_once_it_has_read_the_records() {
    let mut n = node();
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    n.put(vec![file(&web, 1)], &[(&web.host_iface, 11)]);
    n.sync(NS);
    assert!(
        n.changes().is_empty(),
        "a table without the endpoints of the previous run would cut them off"
    );
    n.scan();
    assert_eq!(ifaces(n.last_change()), vec![web.host_iface.to_string()]);
}

#[test]
fn a_pod_start_touches_only_its_own_chains() {
    let (mut n, web, client) = two_pods();
    let before = n.changes().len();
    let new = record("x", "client2", "c-client2", "10.0.0.3", 13);
    n.apply(&pod_yaml("x", "client2", "app: client", "10.0.0.3", NODE));
    let answer = n.cni_add(&new);
    assert!(answer.ok, "{answer:?}");
    let changes = &n.changes()[before..];
    assert!(
        changes.iter().all(|c| !c.full),
        "no full replace: {changes:?}"
    );
    for c in changes {
        for e in &c.endpoints {
            assert_eq!(
                e.iface(),
                &new.host_iface,
                "only the new pod's chains: {c:?}"
            );
            assert!(matches!(e, EndpointChange::Add { .. }));
        }
        for s in &c.sets {
            assert!(matches!(s, SetChange::Update { .. }), "{s:?}");
        }
    }
    // Its address joined the set web's ingress rule names.
    let state = &n.fx.dataplane.state;
    let web_policy = &state.endpoints[&web.host_iface].1;
    assert!(web_policy.ingress.is_some());
    assert!(state.endpoints.contains_key(&client.host_iface));
    assert!(
        state
            .sets
            .values()
            .any(|m| format!("{m:?}").contains("10.0.0.3")),
        "{state:?}"
    );
}

#[test]
fn a_remote_pod_changes_set_elements_not_chains() {
    let (mut n, _, _) = two_pods();
    let before = n.changes().len();
    n.apply(&pod_yaml("x", "far", "app: client", "10.9.0.1", "n2"));
    let changes = &n.changes()[before..];
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].endpoints.is_empty(), "{changes:?}");
    assert_eq!(changes[0].sets.len(), 1);
}

#[test]
fn a_refused_dataplane_change_is_retried_on_the_next_tick() {
    let (mut n, _, _) = two_pods();
    // The incremental change and the full replace that follows it.
    n.fx.dataplane.refuse_next = 2;
    let new = record("x", "client2", "c-client2", "10.0.0.3", 13);
    let answer = n.cni_add(&new);
    assert!(!answer.ok, "a pod whose policy is not live is refused");
    assert_eq!(n.fx.dataplane.refusals, 2);
    assert_eq!(n.fx.metrics.dataplane_errors.get(), 2);
    assert!(!n.agent.ready());
    n.tick();
    assert!(n.last_change().full);
    assert!(n.agent.ready());
    assert!(n.fx.dataplane.state.endpoints.contains_key(&new.host_iface));
}

#[test]
fn a_failed_incremental_change_falls_back_to_a_full_replace_at_once() {
    let (mut n, _, _) = two_pods();
    n.fx.dataplane.refuse_next = 1;
    let new = record("x", "client2", "c-client2", "10.0.0.3", 13);
    assert!(n.cni_add(&new).ok);
    assert!(n.last_change().full);
    assert_eq!(n.fx.dataplane.state.endpoints.len(), 3);
}

#[test]
fn a_tampered_dataplane_is_replaced_whole() {
    let (mut n, _, _) = two_pods();
    n.fx.dataplane.tampered = true;
    for _ in 0..4 {
        n.tick();
    }
    assert!(n.last_change().full);
    assert_eq!(n.fx.dataplane.state.endpoints.len(), 2);
    assert_eq!(n.fx.metrics.resyncs.get(), 1);
}

#[test]
fn incremental_programming_ends_where_a_full_recompute_starts() {
    let (mut n, web, client) = two_pods();
    let third = record("x", "client2", "c-client2", "10.0.0.3", 13);
    n.apply(&pod_yaml("x", "client2", "app: client", "10.0.0.3", NODE));
    n.cni_add(&third);
    // Policies come and go, pods move between selections, a namespace is relabelled.
    n.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: egress, namespace: x}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {team: a}}}]\n",
    );
    n.apply(&pod_yaml("x", "client", "app: web", "10.0.0.2", NODE));
    n.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: b}}\n");
    n.settle(Input::Datastore(vec![Event::Delete(ObjectRef {
        kind: Kind::NetworkPolicy,
        namespace: Some("x".into()),
        name: "web".into(),
    })]));
    n.request(CniRequest::Del {
        container_id: "c-client2".into(),
        ifname: "eth0".into(),
    });
    assert!(n.changes().iter().skip(1).all(|c| !c.full));

    // A fresh agent given the same final state in one go.
    let mut fresh = node();
    fresh.put(
        vec![file(&web, 1), file(&client, 2)],
        &[(&web.host_iface, 11), (&client.host_iface, 12)],
    );
    fresh.scan();
    fresh.sync(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{team: b}}}}\n---\n{}{}{}\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: egress, namespace: x}}\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{team: a}}}}}}]\n",
        pod_yaml("x", "web", "app: web", "10.0.0.1", NODE),
        pod_yaml("x", "client", "app: web", "10.0.0.2", NODE),
        pod_yaml("x", "client2", "app: client", "10.0.0.3", NODE),
    ));
    assert_eq!(n.fx.dataplane.state, fresh.fx.dataplane.state);
}

#[test]
fn a_deleted_endpoint_is_unhooked_and_sets_nobody_uses_are_dropped() {
    let (mut n, web, client) = two_pods();
    let answer = n.request(CniRequest::Del {
        container_id: "c-web".into(),
        ifname: "eth0".into(),
    });
    assert!(answer.ok);
    let c = n.last_change();
    assert_eq!(
        c.endpoints,
        vec![EndpointChange::Remove {
            iface: web.host_iface.clone()
        }]
    );
    assert!(c.sets.iter().any(|s| matches!(s, SetChange::Delete { .. })));
    assert_eq!(
        n.fx.dataplane.state.endpoints.keys().collect::<Vec<_>>(),
        vec![&client.host_iface]
    );
    assert!(n.fx.dataplane.state.sets.is_empty());
}

#[test]
fn a_forged_record_cannot_stop_programming_for_the_other_pods() {
    let mut n = node();
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    let mut forged = serde_json::to_value(record("x", "evil", "c-evil", "10.0.0.66", 11)).unwrap();
    let mut files = vec![file(&web, 1)];
    for (i, name) in ["tabx; flush ruleset", "tab{}", "tab0123456789abcdef", "lo"]
        .iter()
        .enumerate()
    {
        forged["hostIface"] = (*name).into();
        files.push(raw_file(
            &format!("c-evil{i}_eth0.json"),
            &forged.to_string(),
        ));
    }
    files.push(raw_file("c-corrupt_eth0.json", "{not json"));
    n.put(files, &[(&web.host_iface, 11)]);
    let s = n.scan();
    n.sync(&format!(
        "{NS}{}{WEB_POLICY}",
        pod_yaml("x", "web", "app: web", "10.0.0.1", NODE)
    ));
    assert!(n.agent.ready(), "the node programs its real pods");
    assert_eq!(
        n.fx.dataplane.state.endpoints.keys().collect::<Vec<_>>(),
        vec![&web.host_iface]
    );
    assert_eq!(n.agent.refused().len(), 5);
    assert!(
        n.agent
            .refused()
            .values()
            .all(|r| r.reason == RefusalReason::Unparseable)
    );
    assert_eq!(
        n.fx.metrics.endpoints_refused(RefusalReason::Unparseable),
        5
    );
    assert!(s.status.is_some());
    // Read again: still refused, but reported once.
    n.scan();
    assert_eq!(
        n.fx.metrics.endpoints_refused(RefusalReason::Unparseable),
        5
    );
    let text = n.fx.metrics.render(&[]);
    assert!(text.contains("tabby_endpoints_refused_total{reason=\"unparseable\"} 5\n"));
}

#[test]
fn lo_never_gets_a_route() {
    let mut n = node();
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    let mut forged = serde_json::to_value(record("x", "evil", "c-evil", "10.0.0.1", 1)).unwrap();
    forged["hostIface"] = "lo".into();
    n.fx.routes.links = Links::from([("lo".to_string(), 1), (web.host_iface.to_string(), 11)]);
    n.put(
        vec![
            raw_file("c-evil_eth0.json", &forged.to_string()),
            file(&web, 5),
        ],
        &[(&web.host_iface, 11)],
    );
    n.fx.host.snapshot.links.insert("lo".into(), 1);
    n.scan();
    n.sync(NS);
    n.tick();
    assert!(!n.fx.routes.calls.is_empty());
    let routes: Vec<(String, Option<u32>)> =
        n.fx.routes
            .kernel
            .iter()
            .map(|r| (r.dst.to_string(), r.oif))
            .collect();
    assert_eq!(routes, vec![("10.0.0.1/32".to_string(), Some(11))]);
}

#[test]
fn a_second_record_for_a_pods_veth_is_refused_whatever_the_directory_order() {
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    // Another identity claiming web's veth (and index), written later.
    let mut thief = record("x", "thief", "c-thief", "10.0.0.9", 11);
    thief.host_iface = web.host_iface.clone();
    // Another record claiming web's address on its own veth.
    let squatter = record("x", "squat", "c-squat", "10.0.0.1", 12);
    let links = Links::from([
        (web.host_iface.to_string(), 11),
        (squatter.host_iface.to_string(), 12),
    ]);
    let files = [file(&web, 10), file(&thief, 20), file(&squatter, 30)];
    let orders = [
        [0, 1, 2],
        [2, 1, 0],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
    ];
    let outcomes: Vec<_> = orders
        .iter()
        .map(|o| admission::admit(o.iter().map(|i| &files[*i]), &links))
        .collect();
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    let a = &outcomes[0];
    assert_eq!(a.endpoints.len(), 1);
    assert_eq!(a.endpoints[&web.host_iface].container_id, "c-web");
    assert_eq!(
        a.refused["c-thief_eth0.json"].reason,
        RefusalReason::InterfaceConflict
    );
    assert_eq!(
        a.refused["c-squat_eth0.json"].reason,
        RefusalReason::AddressConflict
    );
}

#[test]
fn the_older_record_wins_by_creation_time_then_container_id() {
    let mut a = record("x", "a", "c-b", "10.0.0.1", 11);
    let mut b = record("x", "a", "c-a", "10.0.0.1", 11);
    let links = Links::from([(a.host_iface.to_string(), 11)]);
    // Equal times: the smaller container ID.
    let won = admission::admit([&file(&a, 5), &file(&b, 5)], &links);
    assert_eq!(won.endpoints[&a.host_iface].container_id, "c-a");
    // The record's own creation time beats the file's mtime.
    a.created_ms = Some(1);
    b.created_ms = Some(2);
    let won = admission::admit([&file(&b, 0), &file(&a, 9)], &links);
    assert_eq!(won.endpoints[&a.host_iface].container_id, "c-b");
}

#[test]
fn a_record_must_match_its_file_name_and_a_live_interface() {
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    let misnamed = RecordFile {
        file_name: "c-other_eth0.json".into(),
        ..file(&web, 1)
    };
    let links = Links::from([(web.host_iface.to_string(), 11)]);
    let r = admission::admit([&misnamed], &links);
    assert_eq!(
        r.refused["c-other_eth0.json"].reason,
        RefusalReason::FileName
    );
    let r = admission::admit([&file(&web, 1)], &Links::new());
    assert_eq!(
        r.refused["c-web_eth0.json"].reason,
        RefusalReason::NoInterface
    );
    let renumbered = Links::from([(web.host_iface.to_string(), 99)]);
    let r = admission::admit([&file(&web, 1)], &renumbered);
    assert_eq!(
        r.refused["c-web_eth0.json"].reason,
        RefusalReason::IfindexMismatch
    );
    assert!(r.endpoints.is_empty());
}

#[test]
fn a_cni_add_for_a_veth_that_is_not_there_is_refused() {
    let (mut n, _, _) = two_pods();
    let ghost = record("x", "ghost", "c-ghost", "10.0.0.7", 77);
    n.next_id += 1;
    let s = n.settle(Input::Cni {
        id: n.next_id,
        request: CniRequest::Add {
            endpoint: Box::new(ghost.clone()),
            links: Links::new(),
        },
    });
    let (_, answer) = &s.replies[0];
    assert!(!answer.ok);
    assert!(
        answer.error.as_deref().unwrap().contains("no_interface"),
        "{answer:?}"
    );
    assert!(
        !n.fx
            .dataplane
            .state
            .endpoints
            .contains_key(&ghost.host_iface)
    );
}

#[test]
fn a_barrier_is_reported_once_it_is_programmed() {
    let (mut n, _, _) = two_pods();
    let s = n.apply(&pod_yaml("x", "far", "app: client", "10.9.0.1", "n2"));
    assert!(s.applied.len() == 1);
    let s = n.settle(Input::Datastore(vec![Event::Barrier(7)]));
    assert_eq!(s.status.unwrap().barrier, Some(7));
}

#[test]
fn the_nodes_blocks_are_written_and_blackholed() {
    let (mut n, _, _) = two_pods();
    n.apply("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.0.0.0/26]}\n");
    assert_eq!(
        n.fx.host.blocks,
        vec![vec!["10.0.0.0/26".parse::<ipnet::IpNet>().unwrap()]]
    );
    n.tick();
    let desired = n.fx.routes.calls.last().unwrap();
    assert_eq!(desired.blocks.len(), 1);
    assert_eq!(desired.endpoints.len(), 2);
}

#[test]
fn a_list_delivered_piecewise_forgets_what_it_does_not_name() {
    let (mut n, web, _) = two_pods();
    // The pods list again, in pieces: only web is left.
    n.apply(&pod_yaml("x", "web", "app: web", "10.0.0.1", NODE));
    n.settle(Input::Datastore(vec![Event::Prune(
        Kind::Pod,
        vec![ObjectRef {
            kind: Kind::Pod,
            namespace: Some("x".into()),
            name: "web".into(),
        }],
    )]));
    // client's endpoint stays (its record does), but as an unknown pod it
    // is isolated, and web's ingress set lost client's address.
    let state: &DataplaneState = &n.fx.dataplane.state;
    let ips: Vec<IpAddr> = state
        .sets
        .values()
        .flat_map(|m| match m {
            tabby_agent::dataplane::SetMembers::Addrs(a) => a.iter().copied().collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(ips.is_empty(), "{state:?}");
    assert!(state.endpoints.contains_key(&web.host_iface));
}

#[test]
fn metrics_come_from_the_status_output() {
    let (n, _, _) = two_pods();
    assert!(n.fx.metrics.is_ready());
    let text = n.fx.metrics.render(&[]);
    assert!(text.contains("tabby_endpoints 2\n"), "{text}");
    let _: &Metrics = &n.fx.metrics;
}

#[test]
fn watch_progress_is_reported_only_once_what_came_before_is_programmed() {
    use tabby_agent::datastore::Progress;
    let mut n = node();
    n.scan();
    let pods = Progress {
        kind: Kind::Pod,
        resource_version: 42,
        objects: 0,
    };
    n.settle(Input::Datastore(vec![Event::Progress(pods)]));
    assert!(
        n.agent.status().datastore.is_empty(),
        "not ready: no position is reported"
    );
    n.sync("");
    assert!(n.agent.ready());
    let status = n.agent.status();
    assert_eq!(status.datastore.get(&Kind::Pod), Some(&pods));
    let json = status.to_json(None);
    assert_eq!(json["datastore"]["Pod"]["resourceVersion"], 42);
    assert_eq!(json["datastore"]["Pod"]["objects"], 0);
}
