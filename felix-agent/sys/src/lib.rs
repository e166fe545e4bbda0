//! Kernel access for tabby: network namespaces, netlink, sysctls and socket
//! options. Every syscall the project makes goes through this crate, so the
//! rest of the workspace stays safe code over plain values.

pub mod bpf;
pub mod netlink;
pub mod netns;
pub mod source_guard;
pub mod sysctl;
pub mod tcp_md5;
pub mod teardown;

pub use netlink::{GuardHook, GuardState, LinkSummary, Netlink, NetlinkError, RouteSpec};
pub use netns::{NetNs, NetNsError, NetNsGuard};
