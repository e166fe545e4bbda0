//! The agent's error type: what went wrong performing an output, with the
//! context needed to act on it.

use std::path::PathBuf;

use tabby_common::endpoint::EndpointError;
use tabby_sys::NetlinkError;

use crate::dataplane::DataplaneError;

/// Errors of the agent's driver (the core itself cannot fail: it decides).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The policy dataplane refused a change or could not be reached.
    #[error("dataplane: {0}")]
    Dataplane(#[from] DataplaneError),
    /// Netlink (links, routes) failed.
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    /// The endpoint records could not be listed.
    #[error("endpoint records: {0}")]
    Records(#[from] EndpointError),
    /// The blocks file could not be written.
    #[error("blocks file: {0}")]
    Blocks(#[from] tabby_common::ipam::BlocksError),
    /// A file the agent keeps could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
