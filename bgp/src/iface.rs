//! Our own addresses on the interface a session runs over, so that IPv6
//! routes sent over an IPv4 session get a usable IPv6 next hop without
//! configuration, and direct eBGP peers get our link-local one too.

use std::net::{IpAddr, Ipv6Addr};

/// IPv6 addresses of the interface that holds `local`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V6NextHops {
    /// A global (or unique local) address.
    pub global: Option<Ipv6Addr>,
    /// The link-local address.
    pub link_local: Option<Ipv6Addr>,
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Looks the addresses up with getifaddrs(3) in the calling thread's netns;
/// nothing found (or an error) yields empty answers.
pub fn v6_next_hops(local: IpAddr) -> V6NextHops {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return V6NextHops::default();
    };
    let addrs: Vec<(String, IpAddr)> = addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect();
    let local = local.to_canonical();
    let Some(ifname) = addrs
        .iter()
        .find(|(_, a)| *a == local)
        .map(|(n, _)| n.clone())
    else {
        return V6NextHops::default();
    };
    let mut out = V6NextHops::default();
    for (_, a) in addrs.iter().filter(|(n, _)| *n == ifname) {
        if let IpAddr::V6(v6) = a {
            if is_link_local(v6) {
                out.link_local = out.link_local.or(Some(*v6));
            } else if !v6.is_loopback() {
                out.global = out.global.or(Some(*v6));
            }
        }
    }
    if let IpAddr::V6(v6) = local
        && !is_link_local(&v6)
    {
        out.global = Some(v6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_ipv6_next_hop_to_offer() {
        let hops = v6_next_hops("127.0.0.1".parse().unwrap());
        assert_eq!(hops.link_local, None);
    }

    #[test]
    fn link_local_is_recognised() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }
}
