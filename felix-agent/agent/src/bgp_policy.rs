//! Which routes each BGP neighbour may send this node and be sent, decided
//! from the cluster's objects alone (pure; the driver in [`crate::bgp`]
//! adds the node's connected subnets, read from the kernel).
//!
//! - Cluster peers (the node mesh, a BGPPeer that is a node, a route
//!   reflector client, an iBGP BGPPeer, taken to be a route reflector):
//!   only blocks of the node that originated the route (its Node's
//!   podCIDRs), or a pod address inside them.
//! - External peers (every other BGPPeer): nothing overlapping the
//!   cluster's pod space or the nodes' addresses (plus, in the driver, the
//!   node's connected subnets; loopback, link-local and multicast always),
//!   no default route unless `acceptDefaultRoute` or a BGPFilter accepts
//!   it, then the peer's BGPFilters in order. What they send stays on this
//!   node (never re-advertised to the mesh), and they are sent only this
//!   node's own prefixes (blocks and Service ranges).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use tabby_bgp::policy::{
    Action, ExportPolicy, External, ImportPolicy, MatchOperator, Members, PeerPolicy, RejectReason,
    Rule,
};
use tabby_crds::{BGPPeerSpec, Filter};

/// A Node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`); unparseable
/// entries are left out.
pub fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty()
        && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
    {
        cidrs.push(c);
    }
    cidrs
        .iter()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// What the policies are computed from.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// This node's AS.
    pub asn: u32,
    /// Every node's address (the one it peers and is identified with).
    pub nodes: &'a BTreeMap<String, Option<IpAddr>>,
    /// Every node's blocks.
    pub node_blocks: &'a BTreeMap<String, Vec<IpNet>>,
    /// Valid BGPFilters by name.
    pub filters: &'a BTreeMap<String, Filter>,
}

/// How a neighbour is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Part of the cluster: the mesh, a route reflector or its client.
    Cluster,
    /// A router outside the cluster.
    External,
}

impl Cluster<'_> {
    /// Whether a BGPPeer is part of the cluster.
    pub fn kind_of(&self, peer: &BGPPeerSpec, address: IpAddr) -> PeerKind {
        let is_node = self.nodes.values().any(|a| *a == Some(address));
        if is_node || peer.route_reflector_client || peer.as_number == self.asn {
            PeerKind::Cluster
        } else {
            PeerKind::External
        }
    }

    /// Blocks by node address.
    pub fn members(&self) -> Members {
        let mut blocks: HashMap<IpAddr, Vec<IpNet>> = HashMap::new();
        for (name, addr) in self.nodes {
            if let (Some(addr), Some(b)) = (addr, self.node_blocks.get(name)) {
                blocks.entry(*addr).or_default().extend(b.iter().copied());
            }
        }
        Members { blocks }
    }

    /// The policy of a cluster peer (`members` shared by all of them):
    /// the Service ranges every node announces (and the host routes of
    /// `Local` Services inside them) are for routers outside,
    /// never sent into the cluster (each node has them itself, and the
    /// others would refuse them).
    pub fn cluster_policy(members: &Arc<Members>, service_cidrs: &[IpNet]) -> PeerPolicy {
        let rules = service_cidrs
            .iter()
            .map(|cidr| Rule {
                cidr: *cidr,
                operator: MatchOperator::In,
                prefix_length: None,
                action: Action::Reject,
            })
            .collect();
        PeerPolicy {
            import: ImportPolicy::Members(members.clone()),
            export: Arc::new(ExportPolicy { rules }),
            ..PeerPolicy::default()
        }
    }

    /// The policy of an external BGPPeer, and the names of the filters it
    /// refers to that do not exist (it then accepts nothing: a missing
    /// filter must not widen what comes in).
    pub fn external_policy(&self, peer: &BGPPeerSpec) -> (PeerPolicy, Vec<String>) {
        let mut protected: Vec<(IpNet, RejectReason)> = self
            .node_blocks
            .values()
            .flatten()
            .map(|b| (*b, RejectReason::PodSpace))
            .collect();
        protected.extend(
            self.nodes
                .values()
                .flatten()
                .map(|a| (IpNet::from(*a), RejectReason::NodeAddress)),
        );
        let mut import = Vec::new();
        let mut export = Vec::new();
        let mut missing = Vec::new();
        for name in &peer.filters {
            match self.filters.get(name) {
                Some(f) => {
                    import.extend(f.import.iter().cloned());
                    export.extend(f.export.iter().cloned());
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            import = reject_everything();
        }
        let policy = PeerPolicy {
            import: ImportPolicy::External(Arc::new(External {
                protected,
                allow_default_route: peer.accept_default_route,
                rules: import,
            })),
            export: Arc::new(ExportPolicy { rules: export }),
            readvertise: false,
        };
        (policy, missing)
    }
}

fn reject_everything() -> Vec<Rule> {
    [IpNet::V4(Default::default()), IpNet::V6(Default::default())]
        .into_iter()
        .map(|cidr| Rule {
            cidr,
            operator: MatchOperator::In,
            prefix_length: None,
            action: Action::Reject,
        })
        .collect()
}

/// Adds the node's own connected subnets and addresses to an external
/// policy's protected ranges (other policies are returned unchanged).
pub fn with_connected(policy: &PeerPolicy, connected: &[IpNet]) -> PeerPolicy {
    let ImportPolicy::External(e) = &policy.import else {
        return policy.clone();
    };
    let mut e = External::clone(e);
    e.protected
        .extend(connected.iter().map(|n| (*n, RejectReason::NodeAddress)));
    PeerPolicy {
        import: ImportPolicy::External(Arc::new(e)),
        ..policy.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    struct Fixture {
        nodes: BTreeMap<String, Option<IpAddr>>,
        blocks: BTreeMap<String, Vec<IpNet>>,
        filters: BTreeMap<String, Filter>,
    }

    fn fixture() -> Fixture {
        let mut nodes = BTreeMap::new();
        let mut blocks = BTreeMap::new();
        for i in 1..=3 {
            nodes.insert(format!("node-{i}"), Some(ip(&format!("10.99.0.1{i}"))));
            blocks.insert(format!("node-{i}"), vec![net(&format!("10.244.{i}.0/24"))]);
        }
        Fixture {
            nodes,
            blocks,
            filters: BTreeMap::new(),
        }
    }

    fn cluster(f: &Fixture) -> Cluster<'_> {
        Cluster {
            asn: 64512,
            nodes: &f.nodes,
            node_blocks: &f.blocks,
            filters: &f.filters,
        }
    }

    fn peer(yaml: &str) -> BGPPeerSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_tor_router_is_external_and_a_node_or_ibgp_peer_is_part_of_the_cluster() {
        let f = fixture();
        let c = cluster(&f);
        let tor = peer("{peerIP: 10.99.0.250, asNumber: 65000}");
        assert_eq!(c.kind_of(&tor, ip("10.99.0.250")), PeerKind::External);
        let rr = peer("{peerIP: 10.99.0.200, asNumber: 64512}");
        assert_eq!(c.kind_of(&rr, ip("10.99.0.200")), PeerKind::Cluster);
        let node = peer("{peerIP: 10.99.0.12, asNumber: 65001}");
        assert_eq!(c.kind_of(&node, ip("10.99.0.12")), PeerKind::Cluster);
    }

    #[test]
    fn mesh_peers_may_send_their_own_blocks_and_pods_only() {
        let f = fixture();
        let m = Arc::new(cluster(&f).members());
        let policy = Cluster::cluster_policy(&m, &[net("10.96.0.0/12")]);
        assert!(!policy.export.allows(&net("10.96.0.0/12")));
        assert!(!policy.export.allows(&net("10.96.0.10/32")));
        assert!(policy.export.allows(&net("10.244.1.0/24")));
        let p = policy.import;
        assert!(p.check(&net("10.244.2.0/24"), ip("10.99.0.12")).is_ok());
        assert!(p.check(&net("10.244.2.9/32"), ip("10.99.0.12")).is_ok());
        assert!(p.check(&net("10.244.3.9/32"), ip("10.99.0.12")).is_err());
        assert!(p.check(&net("10.244.2.0/25"), ip("10.99.0.12")).is_err());
        assert!(p.check(&net("0.0.0.0/0"), ip("10.99.0.12")).is_err());
    }

    #[test]
    fn an_external_peer_is_kept_out_of_the_cluster_and_its_routes_stay_here() {
        let f = fixture();
        let (p, missing) =
            cluster(&f).external_policy(&peer("{peerIP: 10.99.0.250, asNumber: 65000}"));
        assert!(missing.is_empty());
        assert!(!p.readvertise);
        let p = with_connected(&p, &[net("10.99.0.0/24"), net("10.99.0.11/32")]);
        let r = ip("10.99.0.250");
        for (prefix, why) in [
            ("0.0.0.0/0", RejectReason::DefaultRoute),
            ("10.99.0.0/24", RejectReason::NodeAddress),
            ("10.99.0.13/32", RejectReason::NodeAddress),
            ("10.244.2.7/32", RejectReason::PodSpace),
            ("10.244.3.0/25", RejectReason::PodSpace),
            ("127.0.0.0/8", RejectReason::Loopback),
            ("169.254.1.1/32", RejectReason::LinkLocal),
        ] {
            assert_eq!(p.import.check(&net(prefix), r), Err(why), "{prefix}");
        }
        assert!(p.import.check(&net("192.0.2.0/24"), r).is_ok());
    }

    #[test]
    fn a_filter_can_accept_the_default_route_and_a_missing_one_accepts_nothing() {
        let mut f = fixture();
        let spec: tabby_crds::BGPFilterSpec = serde_yaml::from_str(
            "importV4: [{cidr: 0.0.0.0/0, matchOperator: Equal, action: Accept}]",
        )
        .unwrap();
        f.filters.insert("default".into(), spec.parse().unwrap());
        let c = cluster(&f);
        let (p, _) = c.external_policy(&peer(
            "{peerIP: 10.99.0.250, asNumber: 65000, filters: [default]}",
        ));
        assert!(p.import.check(&net("0.0.0.0/0"), ip("10.99.0.250")).is_ok());
        let (p, missing) = c.external_policy(&peer(
            "{peerIP: 10.99.0.250, asNumber: 65000, filters: [nope]}",
        ));
        assert_eq!(missing, vec!["nope".to_string()]);
        assert!(
            p.import
                .check(&net("192.0.2.0/24"), ip("10.99.0.250"))
                .is_err()
        );
        let (p, _) = c.external_policy(&peer(
            "{peerIP: 10.99.0.250, asNumber: 65000, acceptDefaultRoute: true}",
        ));
        assert!(p.import.check(&net("0.0.0.0/0"), ip("10.99.0.250")).is_ok());
    }
}
