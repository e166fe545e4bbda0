//! What the index produces: per-endpoint rule sets that refer to named sets
//! of addresses. The dataplanes (nftables, eBPF) render exactly this; they
//! never look at Kubernetes objects.
//!
//! Semantics a dataplane must implement for an endpoint:
//! - direction `None`: the pod is not isolated in that direction, all
//!   traffic passes;
//! - direction `Some(rules)`: a packet passes when at least one rule matches
//!   (an empty list denies everything);
//! - a rule matches when its peer matches AND its port matches;
//! - replies of allowed connections always pass (conntrack), and so does
//!   traffic from the pod's own node (kubelet probes): those are the
//!   dataplane's job, not the index's.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A pod's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocols NetworkPolicy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (the default when a port omits the protocol).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// A range of ports of one protocol (a single port has `first == last`; a
/// policy port with a protocol and no port is `1..=65535`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// Protocol.
    pub protocol: Protocol,
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

/// Name of a set of addresses (or of address-protocol-port triples) that the
/// dataplane keeps as one kernel object; derived from what selects its
/// members, so that equal selectors share one set.
pub type SetName = String;

/// Who a rule allows, on the other side of the connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Peer {
    /// The addresses of the pods in set [`SetName`] (see [`crate::PolicyIndex::ip_set`]).
    Pods(SetName),
    /// An `ipBlock`: the CIDR minus the exceptions.
    Block {
        /// The block.
        cidr: IpNet,
        /// Holes in it.
        except: Vec<IpNet>,
    },
    /// Egress to named ports: the (address, protocol, port) triples of the
    /// selected pods that have a container port of that name (see
    /// [`crate::PolicyIndex::port_set`]). Rules with this peer carry
    /// [`PortMatch::Any`]: the port is part of the set.
    PodPorts(SetName),
}

/// Which peers a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PeerMatch {
    /// No `from`/`to`: every peer.
    Any,
    /// Any of these (never empty).
    Peers(Vec<Peer>),
}

/// Which ports a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortMatch {
    /// No `ports`: every protocol and port (ICMP included).
    Any,
    /// Any of these (never empty).
    Ports(Vec<PortRange>),
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    /// Peer condition.
    pub peers: PeerMatch,
    /// Port condition.
    pub ports: PortMatch,
}

/// The policy of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// `None`: not isolated for ingress. `Some(rules)`: only what a rule allows.
    pub ingress: Option<Vec<Rule>>,
    /// `None`: not isolated for egress. `Some(rules)`: only what a rule allows.
    pub egress: Option<Vec<Rule>>,
}

/// An (address, protocol, port) triple of a [`Peer::PodPorts`] set.
pub type PortTriple = (IpAddr, Protocol, u16);

/// What changed since the last [`crate::PolicyIndex::take_changes`]: the
/// dataplane reprograms exactly these.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Pods whose [`EndpointPolicy`] (or address, or existence) may have changed.
    pub endpoints: BTreeSet<PodKey>,
    /// Address sets whose members changed (or that appeared or vanished).
    pub ip_sets: BTreeSet<SetName>,
    /// Port sets whose members changed (or that appeared or vanished).
    pub port_sets: BTreeSet<SetName>,
}
