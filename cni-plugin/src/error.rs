//! CNI errors: every failure the plugin reports becomes the spec's error
//! object with a code (CNI spec 1.1.0, "Error").
//!
//! Plugin-specific codes (100 and up), documented in the README:
//!
//! | code | meaning |
//! |------|---------|
//! | 100  | IPAM: no free address in the node's blocks |
//! | 101  | the kernel refused a change (netlink/sysctl) |
//! | 102  | CHECK: the attachment is not as ADD left it |
//! | 103  | the node agent refused or did not acknowledge the endpoint in time |
//! | 104  | a delegated IPAM plugin failed (its own code is in `details`) |

use serde::Serialize;

/// Well-known and plugin-specific error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 8: invalid network namespace (missing, not a netns, or the plugin's own).
    InvalidNetNs = 8,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (cannot service ADD).
    NotAvailable = 50,
    /// 51: not available, and existing containers may have limited connectivity.
    NotAvailableLimited = 51,
    /// 100: address pool exhausted.
    PoolExhausted = 100,
    /// 101: a kernel operation failed.
    Kernel = 101,
    /// 102: CHECK found a difference.
    CheckFailed = 102,
    /// 103: the agent did not program the endpoint.
    Agent = 103,
    /// 104: the delegated IPAM plugin failed.
    DelegatedIpam = 104,
}

/// A failure, as the runtime will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The code.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// The longer explanation.
    pub details: String,
}

impl CniError {
    /// An error with a message and details.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON error object for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{}}}",
                self.code as u32
            )
        })
    }
}

/// Shorthand for results in the plugin.
pub type CniResult<T> = Result<T, CniError>;

impl From<tabby_sys::NetlinkError> for CniError {
    fn from(e: tabby_sys::NetlinkError) -> Self {
        CniError::new(
            Code::Kernel,
            "kernel refused a network change",
            e.to_string(),
        )
    }
}

impl From<tabby_sys::sysctl::SysctlError> for CniError {
    fn from(e: tabby_sys::sysctl::SysctlError) -> Self {
        CniError::new(Code::Kernel, "cannot set a sysctl", e.to_string())
    }
}

impl From<tabby_common::endpoint::EndpointError> for CniError {
    fn from(e: tabby_common::endpoint::EndpointError) -> Self {
        CniError::new(Code::Io, "endpoint record", e.to_string())
    }
}
