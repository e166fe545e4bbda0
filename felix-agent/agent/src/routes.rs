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
        let wanted = want.iter().any(|w| same_route(w, h));
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

/// True when `a` and `b` are the same route for tabby's purposes. A
/// blackhole has no device, but the kernel reports IPv6 ones on `lo`:
/// comparing devices there made every reconciliation replace and then
/// delete the IPv6 blackhole.
fn same_route(a: &RouteSpec, b: &RouteSpec) -> bool {
    a.dst == b.dst && a.kind == b.kind && (a.kind == RTN_BLACKHOLE || a.oif == b.oif)
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
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_blackhole_is_the_same_whatever_device_the_kernel_reports() {
        let want = blackhole(&"fd00:10:244:1::/64".parse().unwrap());
        // As dumped: IPv6 blackholes come back on `lo` (ifindex 1).
        let have = RouteSpec {
            oif: Some(1),
            ..want.clone()
        };
        assert!(same_route(&have, &want));
        let other = blackhole(&"fd00:10:244:2::/64".parse().unwrap());
        assert!(!same_route(&other, &want));
    }

    #[test]
    fn an_endpoint_route_on_another_device_is_not_the_same() {
        let route = |oif| RouteSpec {
            dst: "10.244.1.5/32".parse().unwrap(),
            gateway: None,
            oif: Some(oif),
            protocol: RTPROT_TABBY,
            scope: SCOPE_LINK,
            kind: RTN_UNICAST,
            table: TABLE_MAIN,
        };
        assert!(same_route(&route(7), &route(7)));
        assert!(!same_route(&route(7), &route(8)));
    }
}
