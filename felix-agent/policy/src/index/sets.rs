//! The shared, reference-counted sets (address sets and port sets alike):
//! created and filled when a first policy names them, updated one pod or
//! one namespace at a time, dropped with the last policy naming them.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::compile::{PodSetKey, PortSetKey};
use super::members::Members;
use super::pod::{PodState, default_namespace_labels};
use super::selector::Labels;
use crate::model::{PodKey, PortTriple, SetName};

/// What selects the members of a set, and what a pod contributes to it.
pub(crate) trait SetKey: Clone + std::fmt::Debug {
    /// A member.
    type Member: Ord + Clone + std::fmt::Debug;

    /// The pods the set draws from.
    fn pods(&self) -> &PodSetKey;

    /// What pod `pod` of namespace `ns` (labelled `ns_labels`) contributes;
    /// nothing when it is absent, not an endpoint or not selected.
    fn contribution(
        &self,
        ns: &str,
        ns_labels: &Labels,
        pod: Option<&PodState>,
    ) -> Vec<Self::Member>;
}

impl SetKey for PodSetKey {
    type Member = IpAddr;

    fn pods(&self) -> &PodSetKey {
        self
    }

    /// The pod's addresses.
    fn contribution(&self, ns: &str, ns_labels: &Labels, pod: Option<&PodState>) -> Vec<IpAddr> {
        match pod {
            Some(p) if selected(self, ns, ns_labels, p) => p.ips.clone(),
            _ => Vec::new(),
        }
    }
}

impl SetKey for PortSetKey {
    type Member = PortTriple;

    fn pods(&self) -> &PodSetKey {
        &self.pods
    }

    /// (address, protocol, port) for each of the pod's addresses and each of
    /// its container ports with the set's name and protocol.
    fn contribution(
        &self,
        ns: &str,
        ns_labels: &Labels,
        pod: Option<&PodState>,
    ) -> Vec<PortTriple> {
        let Some(p) = pod.filter(|p| selected(&self.pods, ns, ns_labels, p)) else {
            return Vec::new();
        };
        let mut out: Vec<PortTriple> = p
            .resolve(&self.port, self.protocol)
            .flat_map(|port| p.ips.iter().map(move |ip| (*ip, self.protocol, port)))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn selected(key: &PodSetKey, ns: &str, ns_labels: &Labels, pod: &PodState) -> bool {
    pod.endpoint && key.selects_namespace(ns, ns_labels) && key.pods.matches(&pod.labels)
}

/// One set and the number of policies naming it.
#[derive(Debug, Clone)]
pub(crate) struct SetState<K: SetKey> {
    key: K,
    refs: usize,
    members: Members<K::Member>,
}

/// Pods by namespace, then name.
pub(crate) type Pods = HashMap<String, BTreeMap<String, PodState>>;

/// The labels of namespace `ns`: as seen, or only the name label.
pub(crate) fn labels_of<'a>(namespaces: &'a HashMap<String, Labels>, ns: &str) -> Cow<'a, Labels> {
    match namespaces.get(ns) {
        Some(labels) => Cow::Borrowed(labels),
        None => Cow::Owned(default_namespace_labels(ns)),
    }
}

/// All sets of one kind, by name, with the names whose members changed
/// since the last [`SetTable::take_changed`].
#[derive(Debug, Clone)]
pub(crate) struct SetTable<K: SetKey> {
    sets: BTreeMap<SetName, SetState<K>>,
    changed: BTreeSet<SetName>,
}

impl<K: SetKey> Default for SetTable<K> {
    fn default() -> Self {
        SetTable {
            sets: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }
}

impl<K: SetKey> SetTable<K> {
    /// The members of a set.
    pub(crate) fn get(&self, name: &str) -> Option<&BTreeSet<K::Member>> {
        self.sets.get(name).map(|s| s.members.set())
    }

    /// The names of the sets.
    pub(crate) fn names(&self) -> impl Iterator<Item = &SetName> {
        self.sets.keys()
    }

    /// How many sets.
    pub(crate) fn len(&self) -> usize {
        self.sets.len()
    }

    /// The names of the sets that changed, forgetting them.
    pub(crate) fn take_changed(&mut self) -> BTreeSet<SetName> {
        std::mem::take(&mut self.changed)
    }

    /// Takes a reference on a set, creating and filling it if new: only the
    /// namespaces its scope allows are scanned.
    pub(crate) fn acquire(
        &mut self,
        name: &SetName,
        key: &K,
        pods: &Pods,
        namespaces: &HashMap<String, Labels>,
    ) {
        if let Some(set) = self.sets.get_mut(name) {
            set.refs += 1;
            return;
        }
        let mut members = Members::new();
        for (ns, by_name) in pods.iter().filter(|(ns, _)| key.pods().may_hold(ns)) {
            let ns_labels = labels_of(namespaces, ns);
            if !key.pods().selects_namespace(ns, &ns_labels) {
                continue;
            }
            for (pod, state) in by_name {
                let want = key.contribution(ns, &ns_labels, Some(state));
                if !want.is_empty() {
                    members.update(&PodKey::new(ns.clone(), pod.clone()), want);
                }
            }
        }
        let set = SetState {
            key: key.clone(),
            refs: 1,
            members,
        };
        self.sets.insert(name.clone(), set);
        self.changed.insert(name.clone());
    }

    /// Drops a reference on each named set; unreferenced sets vanish.
    pub(crate) fn release<'a>(&mut self, names: impl Iterator<Item = &'a SetName>) {
        for name in names {
            if let Some(set) = self.sets.get_mut(name) {
                set.refs -= 1;
                if set.refs == 0 {
                    self.sets.remove(name);
                    self.changed.insert(name.clone());
                }
            }
        }
    }

    /// Pod `key` changed to `state` (`None`: deleted): moves it in or out
    /// of each set that may hold pods of its namespace.
    pub(crate) fn pod_changed(
        &mut self,
        key: &PodKey,
        ns_labels: &Labels,
        state: Option<&PodState>,
    ) {
        for (name, set) in &mut self.sets {
            if set.key.pods().may_hold(&key.namespace) {
                let want = set.key.contribution(&key.namespace, ns_labels, state);
                if set.members.update(key, want) {
                    self.changed.insert(name.clone());
                }
            }
        }
    }

    /// Namespace `ns` was relabelled from `old` to `new`: its pods move in
    /// or out of the sets whose namespace selection of it flipped.
    pub(crate) fn namespace_changed(
        &mut self,
        ns: &str,
        old: &Labels,
        new: &Labels,
        pods: &BTreeMap<String, PodState>,
    ) {
        for (name, set) in &mut self.sets {
            let scope = set.key.pods();
            let was = scope.selects_namespace(ns, old);
            if was == scope.selects_namespace(ns, new) {
                continue;
            }
            for (pod, state) in pods {
                let want = set.key.contribution(ns, new, Some(state));
                // Newly selected: pods that contribute nothing were not
                // members before either.
                if !was && want.is_empty() {
                    continue;
                }
                if set.members.update(&PodKey::new(ns, pod.clone()), want) {
                    self.changed.insert(name.clone());
                }
            }
        }
    }
}
