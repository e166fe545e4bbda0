//! Property tests: random sequences of watcher events over a small world
//! (namespaces x, y, z; pods a..d; policies p0..p2) must leave the index
//! exactly as a fresh `reset` with the final objects would build it, must
//! report in `take_changes` every endpoint and set whose output changed,
//! and must give the same connectivity as a naive oracle that reads the
//! Kubernetes objects directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::super::selector::{Labels, Selector};
use super::{allows, mk_ns, mk_pod};
use crate::{EndpointPolicy, PodKey, PolicyIndex, PortTriple, Protocol};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 4] = ["a", "b", "c", "d"];
const CONTAINER_PORTS: [(&str, i32, &str); 4] = [
    ("http", 80, "TCP"),
    ("http", 8080, "TCP"),
    ("dns", 53, "UDP"),
    ("web", 81, "TCP"),
];

/// A watcher event.
#[derive(Debug, Clone)]
enum Op {
    ApplyPod(Box<Pod>),
    DeletePod(PodKey),
    ApplyNamespace(Namespace),
    DeleteNamespace(String),
    ApplyPolicy(NetworkPolicy),
    DeletePolicy(String, String),
    /// A relist: `reset` with the objects the watcher holds.
    Resync,
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    (
        0..3usize,
        0..4usize,
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        any::<bool>(),
        0..6usize,
        prop::sample::subsequence(CONTAINER_PORTS.to_vec(), 0..=3),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(ns, name, app, front, ips, ports, host, done)| {
            let mut labels = Vec::new();
            if let Some(app) = app {
                labels.push(("app", app));
            }
            if front {
                labels.push(("tier", "front"));
            }
            let v4 = format!("10.0.{ns}.{}", name + 1);
            let v6 = format!("fd00::{ns}:{}", name + 1);
            let ips: Vec<&str> = match ips {
                0 => vec![],
                1 => vec![&v4],
                2 => vec![&v6],
                // Two pods may share this one (a stale pod and the new owner).
                3 => vec!["10.9.9.9"],
                _ => vec![&v4, &v6],
            };
            let mut pod = mk_pod(NAMESPACES[ns], PODS[name], &labels, &ips, &ports);
            if host {
                pod.spec.get_or_insert_default().host_network = Some(true);
            }
            if done {
                pod.status.get_or_insert_default().phase = Some("Succeeded".into());
            }
            pod
        })
}

fn arb_namespace() -> impl Strategy<Value = Namespace> {
    (
        0..3usize,
        prop::option::of(prop::sample::select(vec!["a", "b"])),
        any::<bool>(),
    )
        .prop_map(|(ns, team, prod)| {
            let mut labels = Vec::new();
            if let Some(team) = team {
                labels.push(("team", team));
            }
            if prod {
                labels.push(("env", "prod"));
            }
            mk_ns(NAMESPACES[ns], &labels)
        })
}

fn selector(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
    LabelSelector {
        match_labels: (!labels.is_empty()).then(|| super::labels(labels)),
        match_expressions: (!exprs.is_empty()).then(|| {
            exprs
                .iter()
                .map(|(key, op, values)| LabelSelectorRequirement {
                    key: key.to_string(),
                    operator: op.to_string(),
                    values: (!values.is_empty())
                        .then(|| values.iter().map(|v| v.to_string()).collect()),
                })
                .collect()
        }),
    }
}

fn pod_selector(i: usize) -> LabelSelector {
    match i {
        0 => selector(&[], &[]),
        1 => selector(&[("app", "web")], &[]),
        2 => selector(&[], &[("app", "In", &["web", "db"])]),
        3 => selector(&[], &[("tier", "DoesNotExist", &[])]),
        4 => selector(&[("app", "db")], &[("tier", "Exists", &[])]),
        _ => selector(&[], &[("app", "NotIn", &["db"])]),
    }
}

fn namespace_selector(i: usize) -> LabelSelector {
    match i {
        0 => selector(&[], &[]),
        1 => selector(&[("team", "a")], &[]),
        2 => selector(&[], &[("env", "Exists", &[])]),
        _ => selector(&[("kubernetes.io/metadata.name", "y")], &[]),
    }
}

fn arb_peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    (0..4usize, 0..6usize, 0..4usize, 0..3usize).prop_map(|(kind, pods, nss, block)| {
        let mut peer = NetworkPolicyPeer::default();
        match kind {
            0 => peer.pod_selector = Some(pod_selector(pods)),
            1 => peer.namespace_selector = Some(namespace_selector(nss)),
            2 => {
                peer.pod_selector = Some(pod_selector(pods));
                peer.namespace_selector = Some(namespace_selector(nss));
            }
            _ => {
                let (cidr, except): (&str, &[&str]) = match block {
                    0 => ("198.51.100.0/24", &[]),
                    1 => ("10.0.0.0/8", &["10.0.1.0/24"]),
                    _ => ("::/0", &["fd00::2:0/112"]),
                };
                peer.ip_block = Some(IPBlock {
                    cidr: cidr.into(),
                    except: Some(except.iter().map(|e| e.to_string()).collect()),
                });
            }
        }
        peer
    })
}

fn arb_port() -> impl Strategy<Value = NetworkPolicyPort> {
    (0..6usize).prop_map(|i| {
        let (port, end_port, protocol) = match i {
            0 => (Some(IntOrString::Int(80)), None, None),
            1 => (Some(IntOrString::String("http".into())), None, None),
            2 => (Some(IntOrString::String("dns".into())), None, Some("UDP")),
            3 => (None, None, Some("UDP")),
            4 => (Some(IntOrString::Int(80)), Some(85), Some("TCP")),
            _ => (Some(IntOrString::String("web".into())), None, None),
        };
        NetworkPolicyPort {
            port,
            end_port,
            protocol: protocol.map(str::to_string),
        }
    })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn arb_rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(arb_peer(), 0..3)),
        prop::option::of(prop::collection::vec(arb_port(), 0..3)),
    )
}

fn arb_policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        0..3usize,
        0..3usize,
        prop::option::of(0..6usize),
        0..5usize,
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
    )
        .prop_map(|(ns, name, selector, types, ingress, egress)| {
            let types: Option<Vec<&str>> = match types {
                0 => None,
                1 => Some(vec![]),
                2 => Some(vec!["Ingress"]),
                3 => Some(vec!["Egress"]),
                _ => Some(vec!["Ingress", "Egress"]),
            };
            NetworkPolicy {
                metadata: ObjectMeta {
                    namespace: Some(NAMESPACES[ns].into()),
                    name: Some(format!("p{name}")),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: selector.map(pod_selector),
                    policy_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
                    ingress: ingress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                }),
            }
        })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => arb_pod().prop_map(|p| Op::ApplyPod(Box::new(p))),
        1 => (0..3usize, 0..4usize)
            .prop_map(|(ns, name)| Op::DeletePod(PodKey::new(NAMESPACES[ns], PODS[name]))),
        2 => arb_namespace().prop_map(Op::ApplyNamespace),
        1 => (0..3usize).prop_map(|ns| Op::DeleteNamespace(NAMESPACES[ns].to_string())),
        3 => arb_policy().prop_map(Op::ApplyPolicy),
        1 => (0..3usize, 0..3usize)
            .prop_map(|(ns, name)| Op::DeletePolicy(NAMESPACES[ns].to_string(), format!("p{name}"))),
        1 => Just(Op::Resync),
    ]
}

/// The objects as a watcher would hold them.
#[derive(Debug, Clone, Default)]
struct World {
    pods: BTreeMap<PodKey, Pod>,
    namespaces: BTreeMap<String, Namespace>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
}

impl World {
    fn apply(&mut self, op: &Op, index: &mut PolicyIndex) {
        let meta_key = |m: &ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        match op.clone() {
            Op::ApplyPod(pod) => {
                let (ns, name) = meta_key(&pod.metadata);
                self.pods.insert(PodKey::new(ns, name), (*pod).clone());
                index.apply_pod(*pod);
            }
            Op::DeletePod(key) => {
                self.pods.remove(&key);
                index.delete_pod(&key);
            }
            Op::ApplyNamespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, ns.clone());
                index.apply_namespace(ns);
            }
            Op::DeleteNamespace(name) => {
                self.namespaces.remove(&name);
                index.delete_namespace(&name);
            }
            Op::ApplyPolicy(np) => {
                self.policies.insert(meta_key(&np.metadata), np.clone());
                index.apply_policy(np);
            }
            Op::DeletePolicy(ns, name) => {
                self.policies.remove(&(ns.clone(), name.clone()));
                index.delete_policy(&ns, &name);
            }
            Op::Resync => index.reset(
                self.pods.values().cloned().collect(),
                self.namespaces.values().cloned().collect(),
                self.policies.values().cloned().collect(),
            ),
        }
    }

    fn fresh(&self) -> PolicyIndex {
        let mut index = PolicyIndex::new();
        self.clone().apply(&Op::Resync, &mut index);
        index
    }
}

/// Everything the index outputs, for comparison.
#[derive(Debug, PartialEq)]
struct Snapshot {
    endpoints: BTreeMap<PodKey, (Option<EndpointPolicy>, Vec<IpAddr>)>,
    ip_sets: BTreeMap<String, BTreeSet<IpAddr>>,
    port_sets: BTreeMap<String, BTreeSet<PortTriple>>,
}

fn all_pod_keys() -> Vec<PodKey> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| PodKey::new(*ns, *p)))
        .collect()
}

fn snapshot(index: &PolicyIndex) -> Snapshot {
    Snapshot {
        endpoints: all_pod_keys()
            .into_iter()
            .map(|k| {
                let out = (index.endpoint_policy(&k), index.pod_ips(&k));
                (k, out)
            })
            .collect(),
        ip_sets: index
            .ip_set_names()
            .map(|n| (n.clone(), index.ip_set(n).cloned().unwrap_or_default()))
            .collect(),
        port_sets: index
            .port_set_names()
            .map(|n| (n.clone(), index.port_set(n).cloned().unwrap_or_default()))
            .collect(),
    }
}

/// Every name whose value differs between two maps (present in one only
/// counts).
fn differing<K: Ord + Clone, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_reset_and_changes_are_complete(ops in prop::collection::vec(arb_op(), 1..40)) {
        let mut index = PolicyIndex::new();
        let mut world = World::default();
        let mut before = snapshot(&index);
        for op in &ops {
            world.apply(op, &mut index);
            let after = snapshot(&index);
            let changes = index.take_changes();
            let missed: Vec<_> = differing(&before.endpoints, &after.endpoints)
                .into_iter()
                .filter(|k| !changes.endpoints.contains(k))
                .collect();
            prop_assert!(missed.is_empty(), "after {op:?}: endpoints {missed:?} changed unreported");
            let missed: Vec<_> = differing(&before.ip_sets, &after.ip_sets)
                .into_iter()
                .filter(|k| !changes.ip_sets.contains(k))
                .collect();
            prop_assert!(missed.is_empty(), "after {op:?}: ip sets {missed:?} changed unreported");
            let missed: Vec<_> = differing(&before.port_sets, &after.port_sets)
                .into_iter()
                .filter(|k| !changes.port_sets.contains(k))
                .collect();
            prop_assert!(missed.is_empty(), "after {op:?}: port sets {missed:?} changed unreported");
            before = after;
        }
        let fresh = world.fresh();
        prop_assert_eq!(snapshot(&index), snapshot(&fresh));
        prop_assert_eq!(index.stats(), fresh.stats());
    }

    #[test]
    fn connectivity_matches_a_naive_oracle(
        pods in prop::collection::vec(arb_pod(), 1..10),
        namespaces in prop::collection::vec(arb_namespace(), 0..3),
        policies in prop::collection::vec(arb_policy(), 1..5),
    ) {
        let mut world = World::default();
        let mut index = PolicyIndex::new();
        for op in pods.into_iter().map(|p| Op::ApplyPod(Box::new(p)))
            .chain(namespaces.into_iter().map(Op::ApplyNamespace))
            .chain(policies.into_iter().map(Op::ApplyPolicy))
        {
            world.apply(&op, &mut index);
        }
        check_against_oracle(&world, &index)?;
    }
}

/// Where a connection starts or ends: an endpoint pod or an address
/// outside the pod network.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Pod(PodKey),
    External,
}

/// A pod as the oracle sees it when it is an endpoint: labels, addresses,
/// container ports.
struct OraclePod<'a> {
    pod: &'a Pod,
    labels: Labels,
    ips: Vec<IpAddr>,
}

fn oracle_endpoint(pod: &Pod) -> Option<OraclePod<'_>> {
    let status = pod.status.as_ref()?;
    let host = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    (!host && !finished && !ips.is_empty()).then(|| OraclePod {
        pod,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
    })
}

fn check_against_oracle(world: &World, index: &PolicyIndex) -> Result<(), TestCaseError> {
    let endpoints: BTreeMap<&PodKey, OraclePod> = world
        .pods
        .iter()
        .filter_map(|(k, p)| oracle_endpoint(p).map(|o| (k, o)))
        .collect();
    // Addresses shared by two endpoints cannot be told apart by any
    // address-based dataplane: the oracle would be stricter than reality.
    let mut seen = BTreeSet::new();
    if endpoints
        .values()
        .flat_map(|o| o.ips.iter())
        .any(|ip| !seen.insert(*ip))
    {
        return Ok(());
    }
    let mut ends: Vec<(End, Vec<IpAddr>)> = endpoints
        .iter()
        .map(|(k, o)| (End::Pod((*k).clone()), o.ips.clone()))
        .collect();
    let external: Vec<IpAddr> = ["198.51.100.7", "10.0.1.200", "2001:db8::7"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    ends.push((End::External, external));
    let unknown = PodKey::new("-", "-");
    let key_of = |end: &End| match end {
        End::Pod(k) => k.clone(),
        End::External => unknown.clone(),
    };
    for (src, src_ips) in &ends {
        for (dst, dst_ips) in ends.iter().filter(|(d, _)| d != src) {
            let pairs = src_ips.iter().flat_map(|s| {
                dst_ips
                    .iter()
                    .filter(move |d| d.is_ipv4() == s.is_ipv4())
                    .map(move |d| (*s, *d))
            });
            for (src_ip, dst_ip) in pairs {
                for (proto, port) in [Protocol::Tcp, Protocol::Udp]
                    .into_iter()
                    .flat_map(|p| [53, 80, 81, 85, 8080].map(|n| (p, n)))
                {
                    let conn = Conn {
                        src,
                        src_ip,
                        dst,
                        dst_ip,
                        port,
                        proto,
                    };
                    let want = oracle(world, &endpoints, &conn);
                    let got = allows(
                        index,
                        &key_of(src),
                        src_ip,
                        &key_of(dst),
                        dst_ip,
                        port,
                        proto,
                    );
                    prop_assert_eq!(
                        got,
                        want,
                        "{:?} {} -> {:?} {} {}/{:?}",
                        src,
                        src_ip,
                        dst,
                        dst_ip,
                        port,
                        proto
                    );
                }
            }
        }
    }
    Ok(())
}

/// One connection attempt.
struct Conn<'a> {
    src: &'a End,
    src_ip: IpAddr,
    dst: &'a End,
    dst_ip: IpAddr,
    port: u16,
    proto: Protocol,
}

/// The naive reading of the objects: egress of the source and ingress of
/// the destination, each allowed when no policy isolates that direction
/// or one rule of one isolating policy allows the connection.
fn oracle(world: &World, endpoints: &BTreeMap<&PodKey, OraclePod>, c: &Conn) -> bool {
    let egress_ok = match c.src {
        End::External => true,
        End::Pod(k) => direction(world, endpoints, k, true, c),
    };
    let ingress_ok = match c.dst {
        End::External => true,
        End::Pod(k) => direction(world, endpoints, k, false, c),
    };
    egress_ok && ingress_ok
}

fn direction(
    world: &World,
    endpoints: &BTreeMap<&PodKey, OraclePod>,
    subject: &PodKey,
    egress: bool,
    c: &Conn,
) -> bool {
    let (peer, peer_ip) = if egress {
        (c.dst, c.dst_ip)
    } else {
        (c.src, c.src_ip)
    };
    let (port, proto) = (c.port, c.proto);
    let Some(me) = endpoints.get(subject) else {
        return true;
    };
    let mut isolated = false;
    for ((ns, _), np) in &world.policies {
        if *ns != subject.namespace {
            continue;
        }
        let spec = np.spec.clone().unwrap_or_default();
        let selects = spec
            .pod_selector
            .as_ref()
            .is_none_or(|s| Selector::from_k8s(s).matches(&me.labels));
        let types = spec
            .policy_types
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| {
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    vec!["Ingress".into(), "Egress".into()]
                } else {
                    vec!["Ingress".into()]
                }
            });
        let wanted = if egress { "Egress" } else { "Ingress" };
        if !selects || !types.iter().any(|t| t == wanted) {
            continue;
        }
        isolated = true;
        let rules: Vec<RuleParts> = if egress {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect()
        } else {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect()
        };
        // Named ports resolve on the destination: the subject for ingress,
        // the peer for egress.
        let named_on = if egress {
            match peer {
                End::Pod(k) => endpoints.get(k),
                End::External => None,
            }
        } else {
            Some(me)
        };
        for (peers, ports) in rules {
            let peers = peers.filter(|p| !p.is_empty());
            let ports = ports.filter(|p| !p.is_empty());
            let pod_peer_ok =
                |p: &NetworkPolicyPeer| pod_peer_selects(world, endpoints, ns, p, peer);
            let any_peer_ok = peers.as_ref().is_none_or(|ps| {
                ps.iter()
                    .any(|p| pod_peer_ok(p) || block_matches(p, peer_ip))
            });
            let allowed = match &ports {
                None => any_peer_ok,
                Some(ports) => {
                    let numeric = ports.iter().any(|p| numeric_port_matches(p, port, proto));
                    let named = ports
                        .iter()
                        .any(|p| named_port_matches(p, named_on, port, proto));
                    if egress {
                        // Named egress ports: only pod peers (or no `to`
                        // and a pod destination) can match them.
                        let named_peer_ok = matches!(peer, End::Pod(_))
                            && peers.as_ref().is_none_or(|ps| ps.iter().any(pod_peer_ok));
                        (numeric && any_peer_ok) || (named && named_peer_ok)
                    } else {
                        (numeric || named) && any_peer_ok
                    }
                }
            };
            if allowed {
                return true;
            }
        }
    }
    !isolated
}

fn pod_peer_selects(
    world: &World,
    endpoints: &BTreeMap<&PodKey, OraclePod>,
    policy_ns: &str,
    p: &NetworkPolicyPeer,
    peer: &End,
) -> bool {
    let End::Pod(k) = peer else {
        return false;
    };
    let Some(o) = endpoints.get(k) else {
        return false;
    };
    if p.ip_block.is_some() || (p.pod_selector.is_none() && p.namespace_selector.is_none()) {
        return false;
    }
    let ns_ok = match &p.namespace_selector {
        None => k.namespace == policy_ns,
        Some(sel) => {
            let mut labels: Labels = world
                .namespaces
                .get(&k.namespace)
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            labels
                .entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| k.namespace.clone());
            Selector::from_k8s(sel).matches(&labels)
        }
    };
    ns_ok
        && p.pod_selector
            .as_ref()
            .is_none_or(|s| Selector::from_k8s(s).matches(&o.labels))
}

fn block_matches(p: &NetworkPolicyPeer, ip: IpAddr) -> bool {
    let Some(block) = &p.ip_block else {
        return false;
    };
    if p.pod_selector.is_some() || p.namespace_selector.is_some() {
        return false;
    }
    let inside = |cidr: &str| cidr.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip));
    inside(&block.cidr) && !block.except.iter().flatten().any(|e| inside(e))
}

fn protocol_of(p: &NetworkPolicyPort) -> Protocol {
    match p.protocol.as_deref() {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn numeric_port_matches(p: &NetworkPolicyPort, port: u16, proto: Protocol) -> bool {
    if protocol_of(p) != proto {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = p.end_port.unwrap_or(*n);
            *n <= i32::from(port) && i32::from(port) <= end
        }
        Some(IntOrString::String(_)) => false,
    }
}

fn named_port_matches(
    p: &NetworkPolicyPort,
    pod: Option<&OraclePod>,
    port: u16,
    proto: Protocol,
) -> bool {
    let (Some(IntOrString::String(name)), Some(pod)) = (&p.port, pod) else {
        return false;
    };
    if protocol_of(p) != proto {
        return false;
    }
    pod.pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|cp| {
            cp.name.as_deref() == Some(name.as_str())
                && cp.protocol.as_deref().unwrap_or("TCP") == p.protocol.as_deref().unwrap_or("TCP")
                && cp.container_port == i32::from(port)
        })
}
