//! The tabby node agent as a library: datastore backends, the policy
//! dataplane, route reconciliation and the CNI plugin's socket. The
//! `tabby-agent` binary wires them together.

pub mod admission;
pub mod agent;
pub mod bgp;
pub mod bgp_policy;
pub mod dataplane;
pub mod datastore;
pub mod driver;
pub mod error;
pub mod install;
pub mod metrics;
pub mod nft;
pub mod node_status;
pub mod peer_secrets;
pub mod routes;
pub mod server;
pub mod service_routes;
