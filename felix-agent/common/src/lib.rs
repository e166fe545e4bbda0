//! The contract shared by the CNI plugin (`tabby`) and the node agent
//! (`tabby-agent`): interface naming, endpoint records, node-local IPAM, the
//! blocks file and the agent socket protocol.

pub mod agent;
pub mod atomic;
pub mod endpoint;
pub mod ipam;
pub mod naming;
