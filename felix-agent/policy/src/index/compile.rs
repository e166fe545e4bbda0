//! A NetworkPolicy compiled once, when it is applied: defaults filled in,
//! selectors normalized, peers turned into set keys with their names, so
//! that rendering an endpoint's rules is a walk over plain data.
//!
//! Objects the API server would reject (a peer with no selector and no
//! ipBlock, an unparsable CIDR, an unknown protocol, `endPort` below `port`
//! or with a named port) cannot come from a cluster; from a manifest
//! directory they are read the safe way: the invalid part matches nothing,
//! and a rule left with no valid peer or no valid port matches nothing
//! (it is dropped, while the policy still isolates the pods it selects).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha1::{Digest, Sha1};

use super::pod::parse_protocol;
use super::selector::{Labels, Selector, encode_str};
use crate::model::{PortRange, Protocol, SetName};

/// Which namespaces a pod set draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// One namespace: a peer with a `podSelector` only, which selects in
    /// the policy's own namespace.
    Namespace(String),
    /// The namespaces a `namespaceSelector` selects.
    Namespaces(Selector),
}

/// What selects the members of an address set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PodSetKey {
    /// Namespaces.
    pub(crate) scope: Scope,
    /// Pods in them.
    pub(crate) pods: Selector,
}

impl PodSetKey {
    /// Every pod of the cluster (egress to a named port with no `to`).
    pub(crate) fn everything() -> Self {
        PodSetKey {
            scope: Scope::Namespaces(Selector::everything()),
            pods: Selector::everything(),
        }
    }

    /// Whether the set can hold pods of namespace `ns` at all (a cheap
    /// test that skips most sets when one pod changes).
    pub(crate) fn may_hold(&self, ns: &str) -> bool {
        match &self.scope {
            Scope::Namespace(n) => n == ns,
            Scope::Namespaces(_) => true,
        }
    }

    /// Whether the namespace part selects namespace `ns` with `ns_labels`.
    pub(crate) fn selects_namespace(&self, ns: &str, ns_labels: &Labels) -> bool {
        match &self.scope {
            Scope::Namespace(n) => n == ns,
            Scope::Namespaces(sel) => sel.matches(ns_labels),
        }
    }

    fn encode(&self, out: &mut String) {
        match &self.scope {
            Scope::Namespace(n) => {
                out.push_str("ns");
                encode_str(out, n);
            }
            Scope::Namespaces(sel) => {
                out.push_str("nsel");
                sel.encode(out);
            }
        }
        out.push_str("pods");
        self.pods.encode(out);
    }

    /// The set's name: `p-` and 16 hex digits of a hash of the canonical
    /// text of what selects it (so 18 characters, valid in nftables).
    pub(crate) fn name(&self) -> SetName {
        let mut text = String::new();
        self.encode(&mut text);
        hashed_name("p-", &text)
    }
}

/// What selects the members of a port set: the pods of a pod set that
/// have a container port of that name and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PortSetKey {
    /// The pods.
    pub(crate) pods: PodSetKey,
    /// The port name.
    pub(crate) port: String,
    /// The protocol.
    pub(crate) protocol: Protocol,
}

impl PortSetKey {
    /// The set's name: `n-` and 16 hex digits, like [`PodSetKey::name`].
    pub(crate) fn name(&self) -> SetName {
        let mut text = String::new();
        self.pods.encode(&mut text);
        text.push_str("port");
        encode_str(&mut text, &self.port);
        let _ = write!(text, "{:?}", self.protocol);
        hashed_name("n-", &text)
    }
}

fn hashed_name(prefix: &str, text: &str) -> SetName {
    let digest = Sha1::digest(text.as_bytes());
    let mut name = String::with_capacity(prefix.len() + 16);
    name.push_str(prefix);
    for b in digest.iter().take(8) {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// A peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CompiledPeer {
    /// Pods, by set.
    Pods {
        /// What selects them.
        key: PodSetKey,
        /// The set's name.
        name: SetName,
    },
    /// An ipBlock.
    Block {
        /// The block.
        cidr: IpNet,
        /// Holes in it.
        except: Vec<IpNet>,
    },
}

/// The ports of a rule that has a non-empty `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CompiledPorts {
    /// Numeric ports and ranges.
    pub(crate) ranges: Vec<PortRange>,
    /// Named ports, with their protocol.
    pub(crate) named: Vec<(String, Protocol)>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    /// `None`: every peer (`from`/`to` absent or empty).
    pub(crate) peers: Option<Vec<CompiledPeer>>,
    /// `None`: every port (`ports` absent or empty).
    pub(crate) ports: Option<CompiledPorts>,
    /// Egress only: the port set of each (named port, pod peer) pair, in
    /// the order the rendered rule lists them.
    pub(crate) port_sets: Vec<(PortSetKey, SetName)>,
}

/// A compiled NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledPolicy {
    /// `spec.podSelector` (absent: every pod of the namespace).
    pub(crate) selector: Selector,
    /// `Some` when the policy isolates for ingress.
    pub(crate) ingress: Option<Vec<CompiledRule>>,
    /// `Some` when the policy isolates for egress.
    pub(crate) egress: Option<Vec<CompiledRule>>,
    /// Address sets the rendered rules can name.
    pub(crate) ip_refs: BTreeMap<SetName, PodSetKey>,
    /// Port sets the rendered rules can name.
    pub(crate) port_refs: BTreeMap<SetName, PortSetKey>,
}

/// Which directions a policy isolates.
///
/// `spec.policyTypes` absent or empty is defaulted exactly as the API
/// server does (`SetDefaults_NetworkPolicy` in
/// pkg/apis/networking/v1/defaults.go): Ingress always, plus Egress when
/// `spec.egress` has at least one rule. So `egress: []` without
/// policyTypes does NOT isolate for egress (an empty list is not "the
/// existence of egress rules"), and `egress: [{}]` does (and allows all).
/// A cluster's objects arrive already defaulted; this matters for
/// manifests read from a directory. An explicit list is taken as is
/// (unknown entries ignored), so `policyTypes: [Ingress]` with egress
/// rules ignores those rules.
pub(crate) fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The namespace and name of a policy (namespace `default` when absent,
/// as the API server would have set it); `None` without a name.
pub(crate) fn policy_key(np: &NetworkPolicy) -> Option<(String, String)> {
    let name = np.metadata.name.clone()?;
    let ns = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    Some((ns, name))
}

/// Compiles a policy of namespace `ns`.
pub(crate) fn compile(ns: &str, np: &NetworkPolicy) -> CompiledPolicy {
    let empty = NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&empty);
    let (isolates_ingress, isolates_egress) = policy_types(spec);
    let selector = spec
        .pod_selector
        .as_ref()
        .map_or_else(Selector::everything, Selector::from_k8s);
    let ingress = isolates_ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .filter_map(|r| compile_rule(ns, r.from.as_deref(), r.ports.as_deref(), false))
            .collect::<Vec<_>>()
    });
    let egress = isolates_egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .filter_map(|r| compile_rule(ns, r.to.as_deref(), r.ports.as_deref(), true))
            .collect::<Vec<_>>()
    });
    let mut ip_refs = BTreeMap::new();
    let mut port_refs = BTreeMap::new();
    for (rules, is_egress) in [(&ingress, false), (&egress, true)] {
        for rule in rules.iter().flatten() {
            // An egress rule with only named ports renders port sets only.
            let renders_ip_sets =
                !is_egress || rule.ports.as_ref().is_none_or(|p| !p.ranges.is_empty());
            if renders_ip_sets {
                for peer in rule.peers.iter().flatten() {
                    if let CompiledPeer::Pods { key, name } = peer {
                        ip_refs.insert(name.clone(), key.clone());
                    }
                }
            }
            for (key, name) in &rule.port_sets {
                port_refs.insert(name.clone(), key.clone());
            }
        }
    }
    CompiledPolicy {
        selector,
        ingress,
        egress,
        ip_refs,
        port_refs,
    }
}

/// Compiles one rule; `None` when it can match nothing.
fn compile_rule(
    ns: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    egress: bool,
) -> Option<CompiledRule> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let compiled: Vec<CompiledPeer> =
                list.iter().filter_map(|p| compile_peer(ns, p)).collect();
            if compiled.is_empty() {
                return None;
            }
            Some(compiled)
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => {
            let mut compiled = CompiledPorts::default();
            for p in list {
                compile_port(p, &mut compiled);
            }
            if compiled.ranges.is_empty() && compiled.named.is_empty() {
                return None;
            }
            Some(compiled)
        }
    };
    let mut port_sets = Vec::new();
    if egress && let Some(ports) = &ports {
        // Named egress ports resolve against each destination pod, so each
        // (port name, pod peer) pair becomes a set of (address, protocol,
        // port) triples. ipBlock peers never match a named port: an
        // address outside the pod network has no container ports to name,
        // and an ipBlock covering pods is not a pod selection either.
        // With no `to`, the pods are all pods of the cluster.
        let pod_keys: Vec<&PodSetKey> = match &peers {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .filter_map(|p| match p {
                    CompiledPeer::Pods { key, .. } => Some(key),
                    CompiledPeer::Block { .. } => None,
                })
                .collect(),
        };
        let everything = PodSetKey::everything();
        let pod_keys = if peers.is_none() {
            vec![&everything]
        } else {
            pod_keys
        };
        for (port, protocol) in &ports.named {
            for key in &pod_keys {
                let set = PortSetKey {
                    pods: (*key).clone(),
                    port: port.clone(),
                    protocol: *protocol,
                };
                let name = set.name();
                if !port_sets.iter().any(|(_, n)| *n == name) {
                    port_sets.push((set, name));
                }
            }
        }
    }
    Some(CompiledRule {
        peers,
        ports,
        port_sets,
    })
}

fn compile_peer(ns: &str, peer: &NetworkPolicyPeer) -> Option<CompiledPeer> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return None;
        }
        let cidr = block.cidr.parse::<IpNet>().ok()?.trunc();
        let except = block
            .except
            .iter()
            .flatten()
            .map(|e| e.parse::<IpNet>().map(|n| n.trunc()))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        return Some(CompiledPeer::Block { cidr, except });
    }
    let pods = peer.pod_selector.as_ref().map(Selector::from_k8s);
    let key = match (&peer.namespace_selector, pods) {
        (None, None) => return None,
        (Some(nsel), pods) => PodSetKey {
            scope: Scope::Namespaces(Selector::from_k8s(nsel)),
            pods: pods.unwrap_or_else(Selector::everything),
        },
        (None, Some(pods)) => PodSetKey {
            scope: Scope::Namespace(ns.to_string()),
            pods,
        },
    };
    let name = key.name();
    Some(CompiledPeer::Pods { key, name })
}

/// Adds one `ports[]` entry; invalid entries add nothing.
fn compile_port(port: &NetworkPolicyPort, out: &mut CompiledPorts) {
    let Some(protocol) = parse_protocol(port.protocol.as_deref()) else {
        return;
    };
    match &port.port {
        // A protocol with no port: every port of it. (`endPort` requires
        // `port`; alone it is invalid and ignored like the API would not.)
        None if port.end_port.is_none() => out.ranges.push(PortRange {
            protocol,
            first: 1,
            last: u16::MAX,
        }),
        None => {}
        Some(IntOrString::Int(first)) => {
            let Some(first) = u16::try_from(*first).ok().filter(|p| *p != 0) else {
                return;
            };
            let last = match port.end_port {
                None => first,
                Some(end) => match u16::try_from(end) {
                    Ok(end) if end >= first => end,
                    _ => return,
                },
            };
            out.ranges.push(PortRange {
                protocol,
                first,
                last,
            });
        }
        Some(IntOrString::String(name)) if port.end_port.is_none() => {
            out.named.push((name.clone(), protocol));
        }
        Some(IntOrString::String(_)) => {}
    }
}
