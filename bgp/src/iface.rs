//! Our own addresses on the interface a session runs over, so that IPv6
//! routes sent over an IPv4 session get a usable IPv6 next hop without
//! configuration, and direct eBGP peers get our link-local one too.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

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

/// This host's addresses (as host routes) and the subnets they sit in, from
/// getifaddrs(3) in the calling thread's netns: what no peer may announce
/// into. Loopback and link-local ranges are left out (always refused).
pub fn connected() -> Vec<IpNet> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpNet> = Vec::new();
    for a in addrs {
        let (Some(addr), mask) = (a.address, a.netmask) else {
            continue;
        };
        let (ip, len) = if let Some(v4) = addr.as_sockaddr_in() {
            let len = mask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones());
            (IpAddr::V4(v4.ip()), len)
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let len = mask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| u128::from(m.ip()).count_ones());
            (IpAddr::V6(v6.ip()), len)
        } else {
            continue;
        };
        let skip = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || is_link_local(&v6),
        };
        if skip {
            continue;
        }
        let len = u8::try_from(len).unwrap_or(0);
        for net in [
            IpNet::new(ip, len),
            IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }),
        ]
        .into_iter()
        .flatten()
        {
            let net = net.trunc();
            if net.prefix_len() > 0 && !out.contains(&net) {
                out.push(net);
            }
        }
    }
    out.sort();
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
    fn connected_ranges_hold_no_loopback() {
        assert!(connected().iter().all(|n| !n.addr().is_loopback()));
    }

    #[test]
    fn link_local_is_recognised() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }
}
