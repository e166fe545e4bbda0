//! tabby's custom resources, group `tabby.dev`, version `v1alpha1`, all
//! cluster-scoped. The CRD manifests in `manifests/crds.yaml` are generated
//! from these types (`TABBY_UPDATE_CRDS=1 cargo test -p tabby-crds`), and a
//! test fails when they drift apart.
//!
//! Specs ignore fields they do not know (no `deny_unknown_fields`): in an
//! upgrade the CRDs are updated before the agents, and an agent that refused
//! a field added by a newer tabby would fail its whole LIST, never sync, and
//! refuse every pod on its node. Values are checked by [`validate`] instead.

pub mod password;
pub mod validate;

pub use password::{BgpPassword, Password, SecretKeyRef};

mod bgp;

pub use bgp::{
    Advertisements, BGPFilter, BGPFilterAction, BGPFilterMatchOperator, BGPFilterPrefixLength,
    BGPFilterRule, BGPFilterSpec, Filter, Invalid, NamedCommunity, PrefixAdvertisement,
    ServiceCidr, parse_cidr,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The AS every node uses unless a BGPConfiguration says otherwise.
pub const DEFAULT_AS_NUMBER: u32 = 64512;

fn default_as_number() -> u32 {
    DEFAULT_AS_NUMBER
}

fn yes() -> bool {
    true
}

/// An IPv4 or IPv6 address (the API server checks the shape, the agent the value).
const IP_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)$";
/// An IPv4 or IPv6 CIDR.
pub(crate) const CIDR_PATTERN: &str =
    r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*/[0-9]{1,3})$";

/// Cluster-wide BGP settings; the one named `default` applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "tabby.dev",
    version = "v1alpha1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// The AS of every node (4-octet AS numbers are fine).
    #[serde(default = "default_as_number")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub as_number: u32,
    /// Whether nodes peer with each other in a full mesh.
    #[serde(default = "yes")]
    pub node_to_node_mesh: bool,
    /// Communities attached to announced prefixes, by CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Named communities for `prefixAdvertisements`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<NamedCommunity>,
    /// Service cluster IP ranges every node announces.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Service external IP ranges every node announces.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Service load balancer IP ranges every node announces.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// BFD on every session of the node-to-node mesh (absent: none; `{}`:
    /// the defaults). Every node runs it, so both ends agree.
    #[serde(
        rename = "nodeToNodeMeshBFD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_to_node_mesh_bfd: Option<BFDSpec>,
}

/// BFD (RFC 5880/5881, single hop) on a BGP session: BGP comes up only
/// while BFD is Up, and BFD Down takes the session down and withdraws its
/// routes at once. An object so that the schema stays structural; `{}`
/// means 300 ms / 300 ms / 3.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BFDSpec {
    /// Desired minimum transmit interval once Up, in milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub min_tx_ms: Option<u32>,
    /// Required minimum receive interval, in milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub min_rx_ms: Option<u32>,
    /// Detection multiplier: packets missed before BFD is Down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub multiplier: Option<u8>,
}

/// A BGP peer outside the node mesh: a top-of-rack router or a route reflector.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "tabby.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The peer's address.
    #[serde(rename = "peerIP")]
    #[schemars(regex(pattern = IP_PATTERN))]
    pub peer_ip: String,
    /// The peer's AS.
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub as_number: u32,
    /// Only this node peers (default: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// TCP MD5 password (RFC 2385): `{secretKeyRef: {name, key}}`, a key of
    /// a Secret in the agent's namespace (an inline string is still read,
    /// but deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "password::schema")]
    pub password: Option<BgpPassword>,
    /// The peer is a route reflector client of the nodes.
    #[serde(default)]
    pub route_reflector_client: bool,
    /// BFD on this session (absent: none; `{}`: the defaults). The peer
    /// must run BFD too, or the session never comes up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BFDSpec>,
    /// Accept a default route (`0.0.0.0/0`, `::/0`) from this peer; it is
    /// installed beside the node's own default route, which keeps priority.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_default_route: bool,
    /// Names of BGPFilters applied to this peer, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
}

/// A pool of pod addresses, cut into per-node blocks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "tabby.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: String,
    /// Prefix length of the blocks handed to nodes (default: 26 for IPv4, 122 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub block_size: Option<u8>,
    /// No new blocks are cut from a disabled pool.
    #[serde(default)]
    pub disabled: bool,
}

/// Every CRD, in the order of `manifests/crds.yaml`.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        IPPool::crd(),
        BGPFilter::crd(),
    ]
}

/// `manifests/crds.yaml` as it must read.
pub fn render() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated from felix-agent/crds (TABBY_UPDATE_CRDS=1 cargo test -p tabby-crds); do not edit.\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
