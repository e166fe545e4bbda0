//! Names, addresses and numbers that the CNI plugin and the agent must agree on.

use std::net::{Ipv4Addr, Ipv6Addr};

use sha1::{Digest, Sha1};

/// Prefix of every host-side workload interface tabby creates.
pub const VETH_PREFIX: &str = "tab";

/// `rtm_protocol` of routes tabby owns on a node: local pod routes and
/// blackholes for the node's own blocks. Only routes carrying it are ever
/// changed or removed by tabby.
pub const RTPROT_TABBY: u8 = 150;

/// `rtm_protocol` of routes learned over BGP, kept apart from
/// [`RTPROT_TABBY`] so that the BGP route installer and the endpoint
/// reconciler never remove each other's routes.
pub const RTPROT_TABBY_BGP: u8 = 151;

/// The pod's IPv4 default gateway: link-local, never on the wire, answered
/// by the host end of the veth (proxy ARP and a static neighbour entry).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The fixed MAC address of every host-side veth.
pub const HOST_VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// The pod's IPv6 default gateway: the EUI-64 link-local address of
/// [`HOST_VETH_MAC`], which tabby also assigns explicitly so it does not
/// depend on the host's `addr_gen_mode`.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// Maximum interface name length in Linux (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Host-side interface name of an endpoint: `tab` + 12 hex digits of the
/// SHA-1 of `<namespace>.<pod>`, or of the container ID when the runtime
/// gives no pod identity. A second interface of the same pod (ifname other
/// than `eth0`) hashes `<namespace>.<pod>.<ifname>` so the names differ.
pub fn host_veth_name(pod: Option<(&str, &str)>, container_id: &str, ifname: &str) -> String {
    let key = match pod {
        Some((ns, name)) if ifname == "eth0" => format!("{ns}.{name}"),
        Some((ns, name)) => format!("{ns}.{name}.{ifname}"),
        None if ifname == "eth0" => container_id.to_string(),
        None => format!("{container_id}.{ifname}"),
    };
    let digest = Sha1::digest(key.as_bytes());
    let mut name = String::with_capacity(IFNAME_MAX);
    name.push_str(VETH_PREFIX);
    for byte in digest.iter().take((IFNAME_MAX - VETH_PREFIX.len()) / 2) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// True for interface names that tabby owns on the host.
pub fn is_workload_iface(name: &str) -> bool {
    name.len() == IFNAME_MAX
        && name.starts_with(VETH_PREFIX)
        && name[VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// A host-side workload interface name, parsed: tabby's prefix followed by
/// hex digits, exactly [`IFNAME_MAX`] bytes (what [`host_veth_name`] makes).
/// Anything else (`lo`, `tabx; flush ruleset`, `tab{}`, 16+ bytes) does not
/// parse, so a name that reaches nftables or a route is always one tabby made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct HostIface(String);

/// Why a name is not a workload interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a tabby workload interface name (\"{VETH_PREFIX}\" and {hex} hex digits, {IFNAME_MAX} bytes)", hex = IFNAME_MAX - VETH_PREFIX.len())]
pub struct HostIfaceError {
    /// The refused name (truncated to 64 bytes for logs).
    pub name: String,
}

impl HostIface {
    /// Parses a name; see the type's documentation.
    pub fn parse(name: &str) -> Result<Self, HostIfaceError> {
        if is_workload_iface(name) {
            Ok(HostIface(name.to_string()))
        } else {
            let mut shown: String = name.chars().take(64).collect();
            if shown.len() < name.len() {
                shown.push('…');
            }
            Err(HostIfaceError { name: shown })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostIface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostIface {
    type Err = HostIfaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostIface::parse(s)
    }
}

impl AsRef<str> for HostIface {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for HostIface {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl From<HostIface> for String {
    fn from(h: HostIface) -> String {
        h.0
    }
}

impl<'de> serde::Deserialize<'de> for HostIface {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostIface::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_prefix_plus_sha1_of_namespace_dot_pod() {
        // sha1("default.web-0") = 3b2c1e...; checked with `printf default.web-0 | sha1sum`.
        let name = host_veth_name(Some(("default", "web-0")), "abc", "eth0");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("tab"));
        assert!(is_workload_iface(&name));
        let expected = {
            let d = Sha1::digest(b"default.web-0");
            format!("tab{}", &format_mac(&d[..6]).replace(':', ""))
        };
        assert_eq!(name, expected);
    }

    #[test]
    fn host_name_without_pod_uses_container_id() {
        let a = host_veth_name(None, "c1", "eth0");
        let b = host_veth_name(None, "c2", "eth0");
        assert_ne!(a, b);
        assert!(is_workload_iface(&a));
    }

    #[test]
    fn second_interface_of_a_pod_gets_another_name() {
        let a = host_veth_name(Some(("ns", "p")), "c", "eth0");
        let b = host_veth_name(Some(("ns", "p")), "c", "net1");
        assert_ne!(a, b);
    }

    #[test]
    fn gateway_v6_is_eui64_of_host_mac() {
        // EUI-64: flip the universal/local bit of the first octet, insert ff:fe.
        let mut iid = [0u8; 8];
        iid[..3].copy_from_slice(&HOST_VETH_MAC[..3]);
        iid[0] ^= 0x02;
        iid[3] = 0xff;
        iid[4] = 0xfe;
        iid[5..].copy_from_slice(&HOST_VETH_MAC[3..]);
        let mut octets = [0u8; 16];
        octets[0] = 0xfe;
        octets[1] = 0x80;
        octets[8..].copy_from_slice(&iid);
        assert_eq!(GATEWAY_V6, Ipv6Addr::from(octets));
    }

    #[test]
    fn a_host_iface_parses_only_names_tabby_makes() {
        let made = host_veth_name(Some(("default", "web-0")), "abc", "eth0");
        assert_eq!(HostIface::parse(&made).unwrap().as_str(), made);
        for bad in [
            "lo",
            "tabx; flush ruleset",
            "tab{}",
            "tab0123456789abc",
            "tab0123456789a",
            "tab0123456789a\"",
            "",
        ] {
            assert!(HostIface::parse(bad).is_err(), "{bad:?}");
        }
        let json: Result<HostIface, _> = serde_json::from_str("\"tabx; flush ruleset\"");
        assert!(json.is_err());
        assert!(serde_json::from_str::<HostIface>(&format!("\"{made}\"")).is_ok());
    }

    #[test]
    fn foreign_names_are_not_workload_interfaces() {
        for n in [
            "eth0",
            "tab",
            "tabzzzzzzzzzzzz",
            "cali1234567890a",
            "tab0123456789abc",
        ] {
            assert!(!is_workload_iface(n), "{n}");
        }
    }
}
