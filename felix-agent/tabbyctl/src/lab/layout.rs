//! Names and addresses of a lab: pure functions of the lab's name and a
//! node's index, so that `down` can find everything `up` made even when the
//! state file is gone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;

/// Where every lab keeps its files (tmpfs: gone after a reboot, like the
/// namespaces they describe).
pub const LAB_ROOT: &str = "/run/tabby-lab";

/// The fabric's IPv4 subnet (each lab has its own fabric namespace, so
/// labs may reuse it).
pub const FABRIC_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 0);
/// The fabric's IPv6 subnet (/64).
pub const FABRIC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0);
/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";
/// The BGP port of the node mesh.
pub const BGP_PORT: u16 = 179;
/// The address of an agent's metrics/health endpoint, inside its node.
pub const METRICS_ADDR: &str = "127.0.0.1:9099";

/// A lab's names and paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    name: String,
    root: PathBuf,
}

/// A lab name that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("lab name {0:?} must be 1-20 lower-case letters, digits and '-', starting with a letter")]
pub struct BadLabName(pub String);

impl Layout {
    /// The layout of lab `name` under [`LAB_ROOT`].
    pub fn new(name: &str) -> Result<Self, BadLabName> {
        Self::with_root(name, PathBuf::from(LAB_ROOT))
    }

    /// The layout of lab `name` under `root`.
    pub fn with_root(name: &str, root: PathBuf) -> Result<Self, BadLabName> {
        let ok = !name.is_empty()
            && name.len() <= 20
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(BadLabName(name.to_string()));
        }
        Ok(Layout {
            name: name.to_string(),
            root,
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prefix of every network namespace of this lab. The dots cannot occur
    /// in lab names, so lab `a` never matches lab `a-b`'s namespaces.
    pub fn prefix(&self) -> String {
        format!("tl.{}.", self.name)
    }

    /// The fabric namespace (the bridge all nodes plug into).
    pub fn fabric_netns(&self) -> String {
        format!("{}fabric", self.prefix())
    }

    /// A node's namespace.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix())
    }

    /// A pod's namespace.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}pod.{namespace}.{pod}", self.prefix())
    }

    /// The lab's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// The lab's description (`lab.json`).
    pub fn state_file(&self) -> PathBuf {
        self.dir().join("lab.json")
    }

    /// The lock that serialises commands on this lab.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(format!(".{}.lock", self.name))
    }

    /// The agents' `dir:` datastore.
    pub fn manifests(&self) -> PathBuf {
        self.dir().join("manifests")
    }

    /// A node's directory (run dir, data dir, agent log).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    /// Where pod records live.
    pub fn pods_dir(&self) -> PathBuf {
        self.dir().join("pods")
    }
}

/// Name of node `i` (1-based).
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Node `i`'s fabric addresses (IPv4, IPv6); `i` is 1-based, at most 200.
pub fn node_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + i as u8;
    let [a, b, c, _] = FABRIC_V4.octets();
    let mut v6 = FABRIC_V6.segments();
    v6[7] = u16::from(host);
    (Ipv4Addr::new(a, b, c, host), Ipv6Addr::from(v6))
}

/// The fabric's own addresses on the bridge (the nodes' default gateway).
pub fn fabric_gateway() -> (Ipv4Addr, Ipv6Addr) {
    let [a, b, c, _] = FABRIC_V4.octets();
    let mut v6 = FABRIC_V6.segments();
    v6[7] = 1;
    (Ipv4Addr::new(a, b, c, 1), Ipv6Addr::from(v6))
}

/// The fabric subnet as text, for status.
pub fn fabric_subnet() -> String {
    format!("{FABRIC_V4}/24")
}

/// Node `i`'s pod blocks: `10.244.<i>.0/24` and `fd00:244:0:<i>::/64`.
pub fn node_pod_cidrs(i: usize) -> Vec<IpNet> {
    let v4 = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 244, i as u8, 0)), 24);
    let v6 = IpNet::new(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, i as u16, 0, 0, 0, 0)),
        64,
    );
    [v4, v6].into_iter().flatten().collect()
}

/// Largest number of nodes a lab may have.
pub const MAX_NODES: usize = 200;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn names_of_one_lab_never_match_another_labs_prefix() {
        let a = Layout::new("a").unwrap();
        let ab = Layout::new("a-b").unwrap();
        assert!(!ab.fabric_netns().starts_with(&a.prefix()));
        assert!(a.pod_netns("x", "p").starts_with(&a.prefix()));
        assert_eq!(a.node_netns("node-1"), "tl.a.node-1");
    }

    #[test]
    fn lab_names_are_checked() {
        for bad in ["", "A", "a.b", "-a", "a-", "1a", "a_b", &"a".repeat(21)] {
            assert!(Layout::new(bad).is_err(), "{bad}");
        }
        assert!(Layout::new("tabby").is_ok());
    }

    #[test]
    fn addresses_and_blocks_differ_per_node() {
        assert_eq!(node_addrs(1).0.to_string(), "10.99.0.11");
        assert_eq!(node_addrs(3).1.to_string(), "fd00:99::d");
        let cidrs: Vec<String> = node_pod_cidrs(2).iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.2.0/24", "fd00:244:0:2::/64"]);
        assert_eq!(fabric_gateway().0.to_string(), "10.99.0.1");
    }
}
