//! Node routes that tabby owns (protocol 150): a `/32` (`/128`) per local
//! endpoint, and a blackhole per block of this node, so that addresses of the
//! node's blocks that no pod holds are dropped here instead of bouncing
//! along the default route.
//!
//! Only routes carrying [`RTPROT_TABBY`] are ever touched. Endpoint routes
//! are repaired when missing but never deleted here: the CNI plugin creates
//! them a moment before it writes the endpoint record, and they vanish with
//! their interface anyway. Blackholes of blocks the node no longer holds,
//! and tabby routes through interfaces that are not workload interfaces, are
//! removed.

use std::net::IpAddr;

use ipnet::IpNet;
use tabby_common::naming::{RTPROT_TABBY, is_workload_iface};
use tabby_sys::netlink::{RTN_BLACKHOLE, RTN_UNICAST, SCOPE_LINK, SCOPE_UNIVERSE, TABLE_MAIN};
use tabby_sys::{Netlink, NetlinkError, RouteSpec};
use tracing::info;

/// A local endpoint's route target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRoute {
    /// The pod address.
    pub ip: IpAddr,
    /// Its host interface.
    pub iface: String,
}

/// What a reconciliation changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Routes (re)installed.
    pub added: Vec<String>,
    /// Routes removed.
    pub removed: Vec<String>,
}

fn blackhole(block: &IpNet) -> RouteSpec {
    RouteSpec {
        dst: block.trunc(),
        gateway: None,
        oif: None,
        protocol: RTPROT_TABBY,
        scope: SCOPE_UNIVERSE,
        kind: RTN_BLACKHOLE,
        table: TABLE_MAIN,
    }
}

/// Brings tabby's routes to the desired state.
pub fn reconcile(
    nl: &mut Netlink,
    endpoints: &[EndpointRoute],
    blocks: &[IpNet],
) -> Result<RouteReport, NetlinkError> {
    let mut report = RouteReport::default();
    let links = nl.links()?;
    let mut have = nl.routes(false, TABLE_MAIN)?;
    have.extend(nl.routes(true, TABLE_MAIN)?);
    let have: Vec<RouteSpec> = have
        .into_iter()
        .filter(|r| r.protocol == RTPROT_TABBY)
        .collect();

    let mut want = Vec::new();
    for ep in endpoints {
        let Some(link) = links.iter().find(|l| l.name == ep.iface) else {
            continue;
        };
        want.push(RouteSpec {
            dst: IpNet::from(ep.ip),
            gateway: None,
            oif: Some(link.index),
            protocol: RTPROT_TABBY,
            scope: SCOPE_LINK,
            kind: RTN_UNICAST,
            table: TABLE_MAIN,
        });
    }
    want.extend(blocks.iter().map(blackhole));

    for w in &want {
        let present = have.iter().any(|h| same_route(h, w));
        if !present {
            nl.replace_route(w)?;
            report.added.push(describe(w));
        }
    }
    for h in &have {
        let wanted = want.iter().any(|w| same_route(h, w));
        let through_workload = h
            .oif
            .and_then(|i| links.iter().find(|l| l.index == i))
            .is_some_and(|l| is_workload_iface(&l.name));
        let stale = !wanted && (h.kind == RTN_BLACKHOLE || !through_workload);
        if stale {
            nl.delete_route(h)?;
            report.removed.push(describe(h));
        }
    }
    if !report.added.is_empty() || !report.removed.is_empty() {
        info!(added = ?report.added, removed = ?report.removed, "routes reconciled");
    }
    Ok(report)
}

/// Whether a route in the kernel is the one wanted. IPv6 blackholes are
/// reported with the loopback as their device, so theirs is ignored.
fn same_route(have: &RouteSpec, want: &RouteSpec) -> bool {
    have.dst == want.dst
        && have.kind == want.kind
        && (have.kind == RTN_BLACKHOLE || have.oif == want.oif)
}

fn describe(r: &RouteSpec) -> String {
    if r.kind == RTN_BLACKHOLE {
        format!("blackhole {}", r.dst)
    } else {
        format!("{} dev #{}", r.dst, r.oif.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn an_ipv6_blackhole_on_the_loopback_is_the_wanted_one() {
        let want = blackhole(&"fd00:244:0:1::/64".parse().unwrap());
        let have = RouteSpec {
            oif: Some(1),
            ..want.clone()
        };
        assert!(same_route(&have, &want));
        let unicast = RouteSpec {
            kind: RTN_UNICAST,
            ..have.clone()
        };
        assert!(!same_route(&unicast, &want));
    }
}
