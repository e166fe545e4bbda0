//! Tests of the index: small builders for the Kubernetes objects, a
//! reference "dataplane" that decides a connection from the index's output
//! only, and truth tables in the style of the upstream e2e suite.

mod bench;
mod e2e;
mod incremental;
mod reset;
mod semantics;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{Peer, PeerMatch, PodKey, PolicyIndex, PortMatch, Protocol, Rule};

/// Labels from pairs.
pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A namespace with labels (the name label is added by the index).
pub(super) fn mk_ns(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(l)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A running pod with labels, addresses and named container ports
/// `(name, number, protocol)`.
pub(super) fn mk_pod(
    ns: &str,
    name: &str,
    l: &[(&str, &str)],
    ips: &[&str],
    ports: &[(&str, i32, &str)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(labels(l)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(|ip| ip.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            ..Default::default()
        }),
    }
}

/// A NetworkPolicy whose spec is written in YAML, as in a manifest.
pub(super) fn mk_policy(ns: &str, name: &str, spec_yaml: &str) -> NetworkPolicy {
    let spec: NetworkPolicySpec = serde_yaml::from_str(spec_yaml).expect("policy spec YAML");
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

/// "x/a" as a key.
pub(super) fn key(s: &str) -> PodKey {
    let (ns, name) = s.split_once('/').expect("ns/name");
    PodKey::new(ns, name)
}

/// The reference dataplane: whether a connection `src` (of pod `from`) to
/// `dst:port/proto` (of pod `to`) passes, from the index's output only:
/// egress of the source and ingress of the destination, each `None`
/// (not isolated) or some rule whose peer and port both match, with peers
/// matched by set membership or CIDR exactly as nftables/eBPF would.
pub(super) fn allows(
    index: &PolicyIndex,
    from: &PodKey,
    src: IpAddr,
    to: &PodKey,
    dst: IpAddr,
    port: u16,
    proto: Protocol,
) -> bool {
    let egress = index.endpoint_policy(from).and_then(|p| p.egress);
    let ingress = index.endpoint_policy(to).and_then(|p| p.ingress);
    direction_allows(index, egress.as_deref(), dst, port, proto)
        && direction_allows(index, ingress.as_deref(), src, port, proto)
}

fn direction_allows(
    index: &PolicyIndex,
    rules: Option<&[Rule]>,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
) -> bool {
    let Some(rules) = rules else {
        return true;
    };
    rules.iter().any(|rule| {
        let peer_ok = match &rule.peers {
            PeerMatch::Any => true,
            PeerMatch::Peers(peers) => peers.iter().any(|p| match p {
                Peer::Pods(set) => index.ip_set(set).is_some_and(|m| m.contains(&peer)),
                Peer::Block { cidr, except } => {
                    cidr.contains(&peer) && !except.iter().any(|e| e.contains(&peer))
                }
                Peer::PodPorts(set) => index
                    .port_set(set)
                    .is_some_and(|m| m.contains(&(peer, proto, port))),
            }),
        };
        let port_ok = match &rule.ports {
            PortMatch::Any => true,
            PortMatch::Ports(ranges) => ranges
                .iter()
                .any(|r| r.protocol == proto && r.first <= port && port <= r.last),
        };
        peer_ok && port_ok
    })
}

/// Whether pod `from` reaches pod `to`, using their first addresses.
pub(super) fn connects(
    index: &PolicyIndex,
    from: &str,
    to: &str,
    port: u16,
    proto: Protocol,
) -> bool {
    let (from, to) = (key(from), key(to));
    let src = index.pod_ips(&from)[0];
    let dst = index.pod_ips(&to)[0];
    allows(index, &from, src, &to, dst, port, proto)
}

/// A selection of pods in a truth table, as the upstream `Peer{}`.
#[derive(Clone, Copy)]
pub(super) enum Sel<'a> {
    /// Every pod.
    Any,
    /// Every pod of a namespace.
    Ns(&'a str),
    /// One pod, "x/a".
    Pod(&'a str),
}

impl Sel<'_> {
    fn matches(&self, pod: &PodKey) -> bool {
        match self {
            Sel::Any => true,
            Sel::Ns(ns) => pod.namespace == *ns,
            Sel::Pod(p) => *pod == key(p),
        }
    }
}

/// An expected truth table: from pod × to pod → connects.
#[derive(Clone)]
pub(super) struct Reachability {
    pods: Vec<PodKey>,
    table: BTreeMap<(PodKey, PodKey), bool>,
}

impl Reachability {
    /// Every pair set to `default`.
    pub(super) fn new(pods: &[PodKey], default: bool) -> Self {
        let mut table = BTreeMap::new();
        for a in pods {
            for b in pods {
                table.insert((a.clone(), b.clone()), default);
            }
        }
        Reachability {
            pods: pods.to_vec(),
            table,
        }
    }

    /// Sets the pairs whose source matches `from` and destination `to`.
    pub(super) fn expect_peer(&mut self, from: Sel, to: Sel, v: bool) {
        for ((a, b), cell) in &mut self.table {
            if from.matches(a) && to.matches(b) {
                *cell = v;
            }
        }
    }

    /// One pair.
    pub(super) fn expect(&mut self, from: &str, to: &str, v: bool) {
        self.expect_peer(Sel::Pod(from), Sel::Pod(to), v);
    }

    /// Everything into `to`.
    pub(super) fn expect_all_ingress(&mut self, to: &str, v: bool) {
        self.expect_peer(Sel::Any, Sel::Pod(to), v);
    }

    /// Everything out of `from`.
    pub(super) fn expect_all_egress(&mut self, from: &str, v: bool) {
        self.expect_peer(Sel::Pod(from), Sel::Any, v);
    }
}

/// The upstream e2e topology: namespaces x, y, z (labelled `ns=<name>`),
/// and the pods a test asks for (labelled `pod=<name>`), each serving the
/// given ports × protocols on container ports named `serve-80-tcp` etc.
pub(super) struct Cluster {
    pub(super) index: PolicyIndex,
    pods: BTreeMap<PodKey, Pod>,
    namespaces: BTreeMap<String, Namespace>,
}

impl Cluster {
    /// The cluster with pods like "x/a".
    pub(super) fn new(pods: &[&str], ports: &[i32], protocols: &[Protocol]) -> Self {
        let namespaces: BTreeMap<String, Namespace> = ["x", "y", "z"]
            .iter()
            .map(|n| (n.to_string(), mk_ns(n, &[("ns", n)])))
            .collect();
        let mut objs = BTreeMap::new();
        for p in pods {
            let k = key(p);
            let ns_i = ["x", "y", "z"]
                .iter()
                .position(|n| *n == k.namespace)
                .expect("x, y or z");
            let pod_i = k.name.as_bytes()[0] - b'a';
            let ip = format!("10.0.{}.{}", ns_i, pod_i + 1);
            let named: Vec<(String, i32, &str)> = ports
                .iter()
                .flat_map(|port| {
                    protocols.iter().map(move |proto| {
                        let text = proto_name(*proto);
                        (format!("serve-{port}-{}", text.to_lowercase()), *port, text)
                    })
                })
                .collect();
            let named_refs: Vec<(&str, i32, &str)> = named
                .iter()
                .map(|(n, p, pr)| (n.as_str(), *p, *pr))
                .collect();
            let pod = mk_pod(
                &k.namespace,
                &k.name,
                &[("pod", &k.name)],
                &[&ip],
                &named_refs,
            );
            objs.insert(k, pod);
        }
        let mut index = PolicyIndex::new();
        index.reset(
            objs.values().cloned().collect(),
            namespaces.values().cloned().collect(),
            Vec::new(),
        );
        index.take_changes();
        Cluster {
            index,
            pods: objs,
            namespaces,
        }
    }

    /// All pods of the test.
    pub(super) fn pods(&self) -> Vec<PodKey> {
        self.pods.keys().cloned().collect()
    }

    /// A truth table over the test's pods, every pair set to `default`.
    pub(super) fn reach(&self, default: bool) -> Reachability {
        Reachability::new(&self.pods(), default)
    }

    /// The first address of a pod.
    pub(super) fn ip(&self, pod: &str) -> IpAddr {
        self.index.pod_ips(&key(pod))[0]
    }

    /// Creates or updates a policy.
    pub(super) fn apply(&mut self, np: NetworkPolicy) {
        self.index.apply_policy(np);
    }

    /// Adds labels to a pod.
    pub(super) fn add_pod_labels(&mut self, pod: &str, l: &[(&str, &str)]) {
        let obj = self.pods.get_mut(&key(pod)).expect("pod");
        obj.metadata
            .labels
            .get_or_insert_default()
            .extend(labels(l));
        self.index.apply_pod(obj.clone());
    }

    /// Adds a label to a namespace.
    pub(super) fn add_namespace_label(&mut self, ns: &str, k: &str, v: &str) {
        let obj = self.namespaces.get_mut(ns).expect("namespace");
        obj.metadata
            .labels
            .get_or_insert_default()
            .insert(k.into(), v.into());
        self.index.apply_namespace(obj.clone());
    }

    /// Compares the connectivity the index gives with `expected`, every
    /// pair except a pod to itself (upstream ignores loopback too), and
    /// fails with both tables when they differ.
    pub(super) fn check(&self, port: u16, proto: Protocol, expected: &Reachability) {
        let mut wrong = Vec::new();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{port}/{proto:?}  (row: from, column: to; X marks a wrong cell)"
        );
        let _ = write!(text, "     ");
        for to in &expected.pods {
            let _ = write!(text, " {to:>4}");
        }
        for from in &expected.pods {
            let _ = write!(text, "\n{from:>4} ");
            for to in &expected.pods {
                let cell = if from == to {
                    "-".to_string()
                } else {
                    let want = expected.table[&(from.clone(), to.clone())];
                    let got =
                        connects(&self.index, &from.to_string(), &to.to_string(), port, proto);
                    if got != want {
                        wrong.push(format!("{from} -> {to}: got {got}, want {want}"));
                        "X".to_string()
                    } else if got {
                        "1".to_string()
                    } else {
                        "0".to_string()
                    }
                };
                let _ = write!(text, " {cell:>4}");
            }
        }
        assert!(wrong.is_empty(), "{text}\n{}", wrong.join("\n"));
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// Every set the endpoint policies of `index` name, by kind.
pub(super) fn named_sets(
    index: &PolicyIndex,
    pods: &[PodKey],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut ip, mut port) = (BTreeSet::new(), BTreeSet::new());
    for pod in pods {
        let Some(p) = index.endpoint_policy(pod) else {
            continue;
        };
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            if let PeerMatch::Peers(peers) = &rule.peers {
                for peer in peers {
                    match peer {
                        Peer::Pods(s) => {
                            ip.insert(s.clone());
                        }
                        Peer::PodPorts(s) => {
                            port.insert(s.clone());
                        }
                        Peer::Block { .. } => {}
                    }
                }
            }
        }
    }
    (ip, port)
}
