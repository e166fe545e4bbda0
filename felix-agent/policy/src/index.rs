//! The NetworkPolicy index: a pure structure fed by `reset`/`apply_*`/
//! `delete_*` (the watchers' events) and queried by the dataplanes.
//!
//! What it keeps, and why that makes updates cheap:
//! - pods and policies grouped by namespace: a policy only selects pods of
//!   its own namespace, so a policy change touches that namespace only;
//! - one set per distinct peer selection (`PodSetKey`), shared by every
//!   policy naming it and reference counted; its members are kept per
//!   contributing pod (`Members`), so a pod change re-evaluates that one
//!   pod against each set, never the other pods;
//! - the endpoint policy is not stored: it is a function of the pod and
//!   the compiled policies of its namespace, rendered on demand. So it can
//!   never be stale, and the only thing to track is which pods to report
//!   in [`Changes`]: a pod whose own relevant fields changed, and the pods
//!   a changed policy selected before or selects now. (A pod's rules name
//!   sets, never other pods, and namespace labels only feed sets.)

mod compile;
mod members;
mod pod;

pub use self::pod::key_of as pod_key;
mod selector;
mod sets;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use self::compile::{
    CompiledPeer, CompiledPolicy, CompiledRule, PodSetKey, PortSetKey, compile, policy_key,
};
use self::pod::{PodState, default_namespace_labels, namespace_labels};
use self::selector::{Labels, Selector};
use self::sets::{Pods, SetTable, labels_of};
use crate::model::{
    Changes, EndpointPolicy, Peer, PeerMatch, PodKey, PortMatch, PortTriple, Rule, SetName,
};

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Pods known (endpoints or not).
    pub pods: usize,
    /// Namespaces known.
    pub namespaces: usize,
    /// NetworkPolicies known.
    pub policies: usize,
    /// Address sets referenced by policies.
    pub ip_sets: usize,
    /// Port sets referenced by policies.
    pub port_sets: usize,
}

/// The NetworkPolicy index (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    /// Pods by namespace, then name.
    pods: Pods,
    /// Effective labels of the namespaces seen.
    namespaces: HashMap<String, Labels>,
    /// Compiled policies by namespace, then name.
    policies: HashMap<String, BTreeMap<String, CompiledPolicy>>,
    /// Address sets named by `Peer::Pods`.
    ip_sets: SetTable<PodSetKey>,
    /// Port sets named by `Peer::PodPorts`.
    port_sets: SetTable<PortSetKey>,
    /// Changes since `take_changes`, apart from those the set tables keep.
    changes: Changes,
}

impl PolicyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Full resync: replaces everything atomically (a watcher's initial list
    /// or relist). Every endpoint and set known before or after is reported
    /// as changed, so the dataplane reconciles all of it.
    pub fn reset(
        &mut self,
        pods: Vec<Pod>,
        namespaces: Vec<Namespace>,
        policies: Vec<NetworkPolicy>,
    ) {
        let mut fresh = PolicyIndex::new();
        // Pods before policies: each new set then scans only the pods in
        // its scope once, instead of every pod scanning every set.
        for ns in namespaces {
            fresh.apply_namespace(ns);
        }
        for pod in pods {
            fresh.apply_pod(pod);
        }
        for np in policies {
            fresh.apply_policy(np);
        }
        let mut changes = self.take_changes();
        for index in [&*self, &fresh] {
            changes.endpoints.extend(index.pod_keys());
            changes.ip_sets.extend(index.ip_sets.names().cloned());
            changes.port_sets.extend(index.port_sets.names().cloned());
        }
        fresh.take_changes();
        *self = fresh;
        self.changes = changes;
    }

    /// Replaces every pod with `pods` (a watcher's list of the kind):
    /// pods not in it are deleted, the others applied. Only what really
    /// changed is reported in [`Changes`].
    pub fn reset_pods(&mut self, pods: Vec<Pod>) {
        let keep: BTreeSet<PodKey> = pods.iter().filter_map(pod::key_of).collect();
        self.retain_pods(|k| keep.contains(k));
        for pod in pods {
            self.apply_pod(pod);
        }
    }

    /// Deletes every pod for which `keep` is false (the end of a list
    /// delivered piecewise, whose pods came as `apply_pod`).
    pub fn retain_pods(&mut self, mut keep: impl FnMut(&PodKey) -> bool) {
        let gone: Vec<PodKey> = self.pod_keys().filter(|k| !keep(k)).collect();
        for key in gone {
            self.delete_pod(&key);
        }
    }

    /// Replaces every namespace with `namespaces`.
    pub fn reset_namespaces(&mut self, namespaces: Vec<Namespace>) {
        let keep: BTreeSet<String> = namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        self.retain_namespaces(|n| keep.contains(n));
        for ns in namespaces {
            self.apply_namespace(ns);
        }
    }

    /// Deletes every namespace for which `keep` is false.
    pub fn retain_namespaces(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !keep(n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_namespace(&name);
        }
    }

    /// Replaces every NetworkPolicy with `policies`.
    pub fn reset_policies(&mut self, policies: Vec<NetworkPolicy>) {
        let keep: BTreeSet<(String, String)> = policies.iter().filter_map(policy_key).collect();
        self.retain_policies(|ns, name| keep.contains(&(ns.to_string(), name.to_string())));
        for np in policies {
            self.apply_policy(np);
        }
    }

    /// Deletes every NetworkPolicy for which `keep(namespace, name)` is false.
    pub fn retain_policies(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let gone: Vec<(String, String)> = self
            .policies
            .iter()
            .flat_map(|(ns, m)| m.keys().map(move |n| (ns.clone(), n.clone())))
            .filter(|(ns, n)| !keep(ns, n))
            .collect();
        for (ns, name) in gone {
            self.delete_policy(&ns, &name);
        }
    }

    /// Adds or updates a pod.
    pub fn apply_pod(&mut self, pod: Pod) {
        let Some((key, state)) = PodState::from_pod(&pod) else {
            return;
        };
        let by_name = self.pods.entry(key.namespace.clone()).or_default();
        if by_name.get(&key.name) == Some(&state) {
            return;
        }
        by_name.insert(key.name.clone(), state);
        self.pod_changed(&key);
    }

    /// Removes a pod.
    pub fn delete_pod(&mut self, key: &PodKey) {
        let Some(by_name) = self.pods.get_mut(&key.namespace) else {
            return;
        };
        if by_name.remove(&key.name).is_none() {
            return;
        }
        if by_name.is_empty() {
            self.pods.remove(&key.namespace);
        }
        self.pod_changed(key);
    }

    /// Adds or updates a namespace (its labels feed namespaceSelectors).
    pub fn apply_namespace(&mut self, ns: Namespace) {
        let Some((name, labels)) = namespace_labels(&ns) else {
            return;
        };
        if self.namespaces.get(&name) == Some(&labels) {
            return;
        }
        let old = labels_of(&self.namespaces, &name).into_owned();
        self.namespaces.insert(name.clone(), labels.clone());
        self.namespace_changed(&name, &old, &labels);
    }

    /// Removes a namespace. Its pods (deleted with it, by their own events)
    /// then only have the name label to be selected by.
    pub fn delete_namespace(&mut self, name: &str) {
        let Some(old) = self.namespaces.remove(name) else {
            return;
        };
        let new = default_namespace_labels(name);
        self.namespace_changed(name, &old, &new);
    }

    /// Adds or updates a NetworkPolicy.
    pub fn apply_policy(&mut self, np: NetworkPolicy) {
        let Some((ns, name)) = policy_key(&np) else {
            return;
        };
        let compiled = compile(&ns, &np);
        if self.policies.get(&ns).and_then(|m| m.get(&name)) == Some(&compiled) {
            return;
        }
        // Take the new references before dropping the old ones, so that a
        // set both versions name is kept, not emptied and refilled.
        for (set, key) in &compiled.ip_refs {
            self.ip_sets.acquire(set, key, &self.pods, &self.namespaces);
        }
        for (set, key) in &compiled.port_refs {
            self.port_sets
                .acquire(set, key, &self.pods, &self.namespaces);
        }
        let selector = compiled.selector.clone();
        let old = self
            .policies
            .entry(ns.clone())
            .or_default()
            .insert(name, compiled);
        self.mark_selected(&ns, [Some(&selector), old.as_ref().map(|o| &o.selector)]);
        if let Some(old) = old {
            self.ip_sets.release(old.ip_refs.keys());
            self.port_sets.release(old.port_refs.keys());
        }
    }

    /// Removes a NetworkPolicy.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        let Some(by_name) = self.policies.get_mut(namespace) else {
            return;
        };
        let Some(old) = by_name.remove(name) else {
            return;
        };
        if by_name.is_empty() {
            self.policies.remove(namespace);
        }
        self.mark_selected(namespace, [Some(&old.selector), None]);
        self.ip_sets.release(old.ip_refs.keys());
        self.port_sets.release(old.port_refs.keys());
    }

    /// The policy of one pod; `None` when the pod is unknown, hostNetwork,
    /// finished or has no address (it is not an endpoint).
    pub fn endpoint_policy(&self, pod: &PodKey) -> Option<EndpointPolicy> {
        let state = self.pod(pod)?;
        if !state.endpoint {
            return None;
        }
        let mut ingress: Option<Vec<Rule>> = None;
        let mut egress: Option<Vec<Rule>> = None;
        for policy in self
            .policies
            .get(&pod.namespace)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if !policy.selector.matches(&state.labels) {
                continue;
            }
            if let Some(rules) = &policy.ingress {
                let out = ingress.get_or_insert_with(Vec::new);
                for rule in rules {
                    render_ingress(rule, state, out);
                }
            }
            if let Some(rules) = &policy.egress {
                let out = egress.get_or_insert_with(Vec::new);
                for rule in rules {
                    render_egress(rule, out);
                }
            }
        }
        Some(EndpointPolicy {
            ingress: ingress.map(normalize),
            egress: egress.map(normalize),
        })
    }

    /// The pod's addresses (from status.podIPs, else status.podIP); empty for
    /// unknown and hostNetwork pods.
    pub fn pod_ips(&self, pod: &PodKey) -> Vec<IpAddr> {
        self.pod(pod).map(|s| s.ips.clone()).unwrap_or_default()
    }

    /// Members of a set named in a [`Peer::Pods`] (`None`: no such set any more).
    pub fn ip_set(&self, name: &str) -> Option<&BTreeSet<IpAddr>> {
        self.ip_sets.get(name)
    }

    /// Members of a set named in a [`Peer::PodPorts`] (`None`: no such set any more).
    pub fn port_set(&self, name: &str) -> Option<&BTreeSet<PortTriple>> {
        self.port_sets.get(name)
    }

    /// Every address set currently referenced by some policy (for a full sync).
    pub fn ip_set_names(&self) -> impl Iterator<Item = &SetName> {
        self.ip_sets.names()
    }

    /// Every port set currently referenced by some policy (for a full sync).
    pub fn port_set_names(&self) -> impl Iterator<Item = &SetName> {
        self.port_sets.names()
    }

    /// What changed since the last call: endpoints whose policy, addresses
    /// or existence may have changed, sets whose members changed (or that
    /// appeared or vanished).
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = std::mem::take(&mut self.changes);
        changes.ip_sets.extend(self.ip_sets.take_changed());
        changes.port_sets.extend(self.port_sets.take_changed());
        changes
    }

    /// Counts for metrics.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            pods: self.pods.values().map(BTreeMap::len).sum(),
            namespaces: self.namespaces.len(),
            policies: self.policies.values().map(BTreeMap::len).sum(),
            ip_sets: self.ip_sets.len(),
            port_sets: self.port_sets.len(),
        }
    }

    fn pod(&self, key: &PodKey) -> Option<&PodState> {
        self.pods.get(&key.namespace)?.get(&key.name)
    }

    fn pod_keys(&self) -> impl Iterator<Item = PodKey> + '_ {
        self.pods
            .iter()
            .flat_map(|(ns, m)| m.keys().map(move |n| PodKey::new(ns.clone(), n.clone())))
    }

    /// A pod was added, changed or removed: report it and move it in and
    /// out of the sets.
    fn pod_changed(&mut self, key: &PodKey) {
        self.changes.endpoints.insert(key.clone());
        let state = self.pods.get(&key.namespace).and_then(|m| m.get(&key.name));
        let ns_labels = labels_of(&self.namespaces, &key.namespace);
        self.ip_sets.pod_changed(key, &ns_labels, state);
        self.port_sets.pod_changed(key, &ns_labels, state);
    }

    /// A namespace's labels went from `old` to `new`.
    fn namespace_changed(&mut self, ns: &str, old: &Labels, new: &Labels) {
        if let Some(pods) = self.pods.get(ns) {
            self.ip_sets.namespace_changed(ns, old, new, pods);
            self.port_sets.namespace_changed(ns, old, new, pods);
        }
    }

    /// Reports the pods of `ns` that the new or the old version of a policy
    /// selects: their rules may have changed.
    fn mark_selected(&mut self, ns: &str, selectors: [Option<&Selector>; 2]) {
        let Some(pods) = self.pods.get(ns) else {
            return;
        };
        for (name, state) in pods {
            if selectors.iter().flatten().any(|s| s.matches(&state.labels)) {
                self.changes.endpoints.insert(PodKey::new(ns, name.clone()));
            }
        }
    }
}

/// The rendered peer list of a rule (`Any` when it has no `from`/`to`).
fn render_peers(rule: &CompiledRule) -> PeerMatch {
    match &rule.peers {
        None => PeerMatch::Any,
        Some(peers) => PeerMatch::Peers(
            peers
                .iter()
                .map(|p| match p {
                    CompiledPeer::Pods { name, .. } => Peer::Pods(name.clone()),
                    CompiledPeer::Block { cidr, except } => Peer::Block {
                        cidr: *cidr,
                        except: except.clone(),
                    },
                })
                .collect(),
        ),
    }
}

/// Renders an ingress rule for `target`: named ports resolve against the
/// target pod's own container ports; a rule whose ports all fail to
/// resolve allows nothing and is left out.
fn render_ingress(rule: &CompiledRule, target: &PodState, out: &mut Vec<Rule>) {
    let ports = match &rule.ports {
        None => PortMatch::Any,
        Some(ports) => {
            let mut ranges = ports.ranges.clone();
            for (name, protocol) in &ports.named {
                ranges.extend(target.resolve(name, *protocol).map(|port| {
                    crate::model::PortRange {
                        protocol: *protocol,
                        first: port,
                        last: port,
                    }
                }));
            }
            if ranges.is_empty() {
                return;
            }
            PortMatch::Ports(ranges)
        }
    };
    out.push(Rule {
        peers: render_peers(rule),
        ports,
    });
}

/// Renders an egress rule, split in two equivalent rules when it mixes
/// numeric and named ports: numeric ports × every peer, and named ports as
/// (address, protocol, port) sets of the pod peers (see `compile_rule`).
fn render_egress(rule: &CompiledRule, out: &mut Vec<Rule>) {
    let Some(ports) = &rule.ports else {
        out.push(Rule {
            peers: render_peers(rule),
            ports: PortMatch::Any,
        });
        return;
    };
    if !ports.ranges.is_empty() {
        out.push(Rule {
            peers: render_peers(rule),
            ports: PortMatch::Ports(ports.ranges.clone()),
        });
    }
    if !rule.port_sets.is_empty() {
        out.push(Rule {
            peers: PeerMatch::Peers(
                rule.port_sets
                    .iter()
                    .map(|(_, name)| Peer::PodPorts(name.clone()))
                    .collect(),
            ),
            ports: PortMatch::Any,
        });
    }
}

/// Sorts and deduplicates rules and their lists, so that the output does
/// not depend on the order policies arrived in.
fn normalize(mut rules: Vec<Rule>) -> Vec<Rule> {
    for rule in &mut rules {
        if let PeerMatch::Peers(peers) = &mut rule.peers {
            peers.sort();
            peers.dedup();
        }
        if let PortMatch::Ports(ports) = &mut rule.ports {
            ports.sort();
            ports.dedup();
        }
    }
    rules.sort();
    rules.dedup();
    rules
}
