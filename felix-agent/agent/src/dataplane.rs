//! The seam between the agent's decisions and a policy dataplane.
//!
//! The agent's core sends a [`DataplaneChange`]: values, not a script. It
//! names endpoints by host interface with their compiled policy
//! ([`EndpointPolicy`], from the index) and the index's named sets with
//! their members. A dataplane turns that into its own objects: nftables
//! chains, sets and verdict-map elements today ([`crate::nft::NftDataplane`]),
//! eBPF maps later. A change is either `full` (replace everything the
//! dataplane owns with exactly this) or incremental (only what is named
//! changes). The dataplane applies it atomically or not at all, and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tabby_common::naming::HostIface;
use tabby_policy::{EndpointPolicy, Peer, PeerMatch, PodKey, PortTriple, SetName};

/// The members of one named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetMembers {
    /// Addresses of the pods a peer selects (`Peer::Pods`).
    Addrs(BTreeSet<IpAddr>),
    /// (address, protocol, port) of named ports (`Peer::PodPorts`).
    Ports(BTreeSet<PortTriple>),
}

impl SetMembers {
    /// The number of members.
    pub fn len(&self) -> usize {
        match self {
            SetMembers::Addrs(s) => s.len(),
            SetMembers::Ports(s) => s.len(),
        }
    }

    /// True without members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A change of one named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    /// A set endpoints now refer to.
    Create {
        /// The index's set name.
        name: SetName,
        /// Its members.
        members: SetMembers,
    },
    /// Members came and went.
    Update {
        /// The index's set name.
        name: SetName,
        /// New members.
        added: SetMembers,
        /// Members gone.
        removed: SetMembers,
    },
    /// No endpoint refers to the set any more.
    Delete {
        /// The index's set name.
        name: SetName,
    },
}

/// A change of one local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointChange {
    /// A new endpoint: its chains, then its dispatch.
    Add {
        /// Its host interface.
        iface: HostIface,
        /// Its pod.
        pod: PodKey,
        /// Its compiled policy.
        policy: EndpointPolicy,
    },
    /// An endpoint whose policy changed.
    Update {
        /// Its host interface.
        iface: HostIface,
        /// Its pod.
        pod: PodKey,
        /// Its compiled policy.
        policy: EndpointPolicy,
    },
    /// An endpoint that is gone: its dispatch, then its chains.
    Remove {
        /// Its host interface.
        iface: HostIface,
    },
}

impl EndpointChange {
    /// The endpoint's host interface.
    pub fn iface(&self) -> &HostIface {
        match self {
            EndpointChange::Add { iface, .. }
            | EndpointChange::Update { iface, .. }
            | EndpointChange::Remove { iface } => iface,
        }
    }
}

/// One transaction for the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataplaneChange {
    /// Identifies the change in the result the driver reports back.
    pub generation: u64,
    /// Replace everything the dataplane owns with exactly this change's
    /// `Create`s and `Add`s (first programming, or after a failure or
    /// tampering left the kernel's state unknown).
    pub full: bool,
    /// Set changes.
    pub sets: Vec<SetChange>,
    /// Endpoint changes.
    pub endpoints: Vec<EndpointChange>,
}

impl DataplaneChange {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        !self.full && self.sets.is_empty() && self.endpoints.is_empty()
    }
}

/// What applying a change cost, for the benchmark and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Size of the transaction sent to the kernel, in bytes.
    pub bytes: usize,
    /// Commands (nft statements, map updates) in it.
    pub commands: usize,
}

/// Errors of a dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The dataplane's tool or syscall could not be run.
    #[error("cannot reach the dataplane: {0}")]
    Unavailable(String),
    /// The kernel refused the transaction; nothing was changed.
    #[error("the kernel refused the transaction: {0}")]
    Refused(String),
}

/// A policy dataplane: applies changes atomically, and tells whether what
/// it programmed is still intact.
pub trait Dataplane {
    /// Applies one change atomically: all of it or nothing.
    fn apply(&mut self, change: &DataplaneChange) -> Result<Applied, DataplaneError>;
    /// False when what this dataplane programmed was changed behind its
    /// back (table flushed or deleted): the agent then replaces it whole.
    fn intact(&mut self) -> bool;
}

/// The named sets a policy refers to, by kind.
pub fn set_refs(policy: &EndpointPolicy) -> BTreeSet<SetRef> {
    let mut out = BTreeSet::new();
    for rule in policy.ingress.iter().chain(policy.egress.iter()).flatten() {
        if let PeerMatch::Peers(peers) = &rule.peers {
            for p in peers {
                match p {
                    Peer::Pods(name) => {
                        out.insert(SetRef::Addrs(name.clone()));
                    }
                    Peer::PodPorts(name) => {
                        out.insert(SetRef::Ports(name.clone()));
                    }
                    Peer::Block { .. } => {}
                }
            }
        }
    }
    out
}

/// A reference to a named set of the index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetRef {
    /// An address set.
    Addrs(SetName),
    /// A named-port set.
    Ports(SetName),
}

impl SetRef {
    /// The set's name.
    pub fn name(&self) -> &SetName {
        match self {
            SetRef::Addrs(n) | SetRef::Ports(n) => n,
        }
    }
}

/// What a dataplane holds, as values: the model both the fake and the tests
/// compare against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataplaneState {
    /// Endpoints by host interface.
    pub endpoints: BTreeMap<HostIface, (PodKey, EndpointPolicy)>,
    /// Sets by name.
    pub sets: BTreeMap<SetName, SetMembers>,
}

impl DataplaneState {
    /// Applies a change to the model; an inconsistent change (a set updated
    /// that does not exist, members of the wrong kind) is an error, as the
    /// kernel would refuse it.
    pub fn apply(&mut self, change: &DataplaneChange) -> Result<(), DataplaneError> {
        let mut next = if change.full {
            DataplaneState::default()
        } else {
            self.clone()
        };
        let bad = |what: String| Err(DataplaneError::Refused(what));
        for s in &change.sets {
            match s {
                SetChange::Create { name, members } => {
                    if next.sets.insert(name.clone(), members.clone()).is_some() {
                        return bad(format!("set {name} exists"));
                    }
                }
                SetChange::Update {
                    name,
                    added,
                    removed,
                } => match (next.sets.get_mut(name), added, removed) {
                    (Some(SetMembers::Addrs(m)), SetMembers::Addrs(a), SetMembers::Addrs(r)) => {
                        m.extend(a.iter().copied());
                        m.retain(|x| !r.contains(x));
                    }
                    (Some(SetMembers::Ports(m)), SetMembers::Ports(a), SetMembers::Ports(r)) => {
                        m.extend(a.iter().copied());
                        m.retain(|x| !r.contains(x));
                    }
                    _ => return bad(format!("set {name} cannot be updated")),
                },
                SetChange::Delete { name } => {
                    if next.sets.remove(name).is_none() {
                        return bad(format!("set {name} does not exist"));
                    }
                }
            }
        }
        for e in &change.endpoints {
            match e {
                EndpointChange::Add { iface, pod, policy } => {
                    if next
                        .endpoints
                        .insert(iface.clone(), (pod.clone(), policy.clone()))
                        .is_some()
                    {
                        return bad(format!("endpoint {iface} exists"));
                    }
                }
                EndpointChange::Update { iface, pod, policy } => {
                    match next.endpoints.get_mut(iface) {
                        Some(v) => *v = (pod.clone(), policy.clone()),
                        None => return bad(format!("endpoint {iface} does not exist")),
                    }
                }
                EndpointChange::Remove { iface } => {
                    if next.endpoints.remove(iface).is_none() {
                        return bad(format!("endpoint {iface} does not exist"));
                    }
                }
            }
        }
        // Every set an endpoint refers to must exist, as in the kernel.
        for (_, policy) in next.endpoints.values() {
            for r in set_refs(policy) {
                if !next.sets.contains_key(r.name()) {
                    return bad(format!("set {} is referred to but missing", r.name()));
                }
            }
        }
        *self = next;
        Ok(())
    }
}

/// A dataplane in memory, for tests: keeps the model of what it holds,
/// records every change, and can be told to refuse or to have been
/// tampered with.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    /// What is programmed.
    pub state: DataplaneState,
    /// Every change applied successfully, in order.
    pub applied: Vec<DataplaneChange>,
    /// Changes refused so far.
    pub refusals: usize,
    /// Refuse this many of the next changes.
    pub refuse_next: usize,
    /// Someone flushed the table: `intact` answers false once.
    pub tampered: bool,
}

impl Dataplane for FakeDataplane {
    fn apply(&mut self, change: &DataplaneChange) -> Result<Applied, DataplaneError> {
        if self.refuse_next > 0 {
            self.refuse_next -= 1;
            self.refusals += 1;
            return Err(DataplaneError::Refused("refused by the test".into()));
        }
        self.state
            .apply(change)
            .inspect_err(|_| self.refusals += 1)?;
        self.applied.push(change.clone());
        Ok(Applied {
            bytes: 0,
            commands: change.sets.len() + change.endpoints.len(),
        })
    }

    fn intact(&mut self) -> bool {
        if self.tampered {
            self.tampered = false;
            self.state = DataplaneState::default();
            return false;
        }
        true
    }
}
