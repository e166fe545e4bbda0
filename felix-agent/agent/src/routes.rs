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
use tabby_common::naming::{HostIface, RTPROT_TABBY, is_workload_iface};
use tabby_sys::netlink::{RTN_BLACKHOLE, RTN_UNICAST, SCOPE_LINK, SCOPE_UNIVERSE, TABLE_MAIN};
use tabby_sys::{Netlink, NetlinkError, RouteSpec};
use tracing::info;

use crate::admission::Links;

/// A local endpoint's route target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRoute {
    /// The pod address.
    pub ip: IpAddr,
    /// Its host interface.
    pub iface: HostIface,
    /// The interface's index, as admitted.
    pub ifindex: u32,
}

/// The routes tabby wants: the core's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRoutes {
    /// Local endpoints.
    pub endpoints: Vec<EndpointRoute>,
    /// This node's blocks (blackholed).
    pub blocks: Vec<IpNet>,
}

/// What to change in the kernel: values, applied by [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to (re)install.
    pub add: Vec<RouteSpec>,
    /// tabby routes to remove.
    pub delete: Vec<RouteSpec>,
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

/// Plans the routes: `kernel` as dumped (main table, both families),
/// `links` the node's links. Pure. Routes of other protocols are never in
/// the plan; an endpoint route goes only through a workload interface that
/// exists with the admitted index.
pub fn plan(kernel: &[RouteSpec], links: &Links, desired: &DesiredRoutes) -> RoutePlan {
    let have: Vec<&RouteSpec> = kernel
        .iter()
        .filter(|r| r.protocol == RTPROT_TABBY)
        .collect();
    let mut want = Vec::new();
    for ep in &desired.endpoints {
        if links.get(ep.iface.as_str()) != Some(&ep.ifindex)
            || !is_workload_iface(ep.iface.as_str())
        {
            continue;
        }
        want.push(RouteSpec {
            dst: IpNet::from(ep.ip),
            gateway: None,
            oif: Some(ep.ifindex),
            protocol: RTPROT_TABBY,
            scope: SCOPE_LINK,
            kind: RTN_UNICAST,
            table: TABLE_MAIN,
        });
    }
    want.extend(desired.blocks.iter().map(blackhole));

    let mut out = RoutePlan::default();
    for w in &want {
        if !have.iter().any(|h| same_route(h, w)) {
            out.add.push(w.clone());
        }
    }
    for h in have {
        let wanted = want.iter().any(|w| same_route(w, h));
        let through_workload = h
            .oif
            .and_then(|i| links.iter().find(|(_, index)| **index == i))
            .is_some_and(|(name, _)| is_workload_iface(name));
        // Endpoint routes through workload interfaces are left alone: the
        // plugin adds them a moment before the record exists, and they go
        // with their interface.
        let stale = !wanted && (h.kind == RTN_BLACKHOLE || !through_workload);
        if stale {
            out.delete.push(h.clone());
        }
    }
    out
}

/// Applies a plan.
pub fn apply(nl: &mut Netlink, plan: &RoutePlan) -> Result<RouteReport, NetlinkError> {
    let mut report = RouteReport::default();
    for r in &plan.add {
        nl.replace_route(r)?;
        report.added.push(describe(r));
    }
    for r in &plan.delete {
        nl.delete_route(r)?;
        report.removed.push(describe(r));
    }
    if !report.added.is_empty() || !report.removed.is_empty() {
        info!(added = ?report.added, removed = ?report.removed, "routes reconciled");
    }
    Ok(report)
}

/// Performs the core's route outputs.
pub trait RouteExecutor {
    /// Brings tabby's routes to `desired`.
    fn reconcile(&mut self, desired: &DesiredRoutes) -> Result<RouteReport, NetlinkError>;
}

/// The executor on the node: dumps links and routes, plans, applies.
#[derive(Debug, Default)]
pub struct NetlinkRoutes {
    nl: Option<Netlink>,
}

impl RouteExecutor for NetlinkRoutes {
    fn reconcile(&mut self, desired: &DesiredRoutes) -> Result<RouteReport, NetlinkError> {
        let nl = match self.nl.as_mut() {
            Some(nl) => nl,
            None => self.nl.insert(Netlink::open()?),
        };
        let result = (|| {
            let links: Links = nl.links()?.into_iter().map(|l| (l.name, l.index)).collect();
            let mut kernel = nl.routes(false, TABLE_MAIN)?;
            kernel.extend(nl.routes(true, TABLE_MAIN)?);
            apply(nl, &plan(&kernel, &links, desired))
        })();
        if result.is_err() {
            // A fresh socket next time: the old one may be out of sync.
            self.nl = None;
        }
        result
    }
}

/// Routes in memory, for tests: a kernel table the plans are applied to.
#[derive(Debug, Default)]
pub struct FakeRoutes {
    /// The table (every protocol).
    pub kernel: Vec<RouteSpec>,
    /// The node's links.
    pub links: Links,
    /// Every desired state asked for.
    pub calls: Vec<DesiredRoutes>,
}

impl RouteExecutor for FakeRoutes {
    fn reconcile(&mut self, desired: &DesiredRoutes) -> Result<RouteReport, NetlinkError> {
        self.calls.push(desired.clone());
        let p = plan(&self.kernel, &self.links, desired);
        self.kernel.retain(|r| !p.delete.contains(r));
        for a in &p.add {
            // NLM_F_REPLACE: same prefix, table and metric, whatever owns it.
            self.kernel.retain(|r| r.dst != a.dst);
            self.kernel.push(a.clone());
        }
        Ok(RouteReport {
            added: p.add.iter().map(describe).collect(),
            removed: p.delete.iter().map(describe).collect(),
        })
    }
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

    fn ep(ip: &str, iface: &str, ifindex: u32) -> EndpointRoute {
        EndpointRoute {
            ip: ip.parse().unwrap(),
            iface: HostIface::parse(iface).unwrap(),
            ifindex,
        }
    }

    fn route(dst: &str, oif: u32, protocol: u8) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            gateway: None,
            oif: Some(oif),
            protocol,
            scope: SCOPE_LINK,
            kind: RTN_UNICAST,
            table: TABLE_MAIN,
        }
    }

    const W1: &str = "tab0123456789ab";
    const W2: &str = "tabba9876543210";

    fn links() -> Links {
        Links::from([
            ("lo".to_string(), 1),
            ("eth0".to_string(), 2),
            (W1.to_string(), 7),
            (W2.to_string(), 8),
        ])
    }

    #[test]
    fn missing_endpoint_routes_and_blackholes_are_planned() {
        let desired = DesiredRoutes {
            endpoints: vec![ep("10.244.1.5", W1, 7)],
            blocks: vec!["10.244.1.0/26".parse().unwrap()],
        };
        let p = plan(&[], &links(), &desired);
        assert_eq!(
            p.add,
            vec![
                route("10.244.1.5/32", 7, RTPROT_TABBY),
                blackhole(&"10.244.1.0/26".parse().unwrap())
            ]
        );
        assert!(p.delete.is_empty());
        // Once in, nothing more to do.
        assert_eq!(plan(&p.add, &links(), &desired), RoutePlan::default());
    }

    #[test]
    fn an_endpoint_whose_interface_changed_index_gets_no_route() {
        let desired = DesiredRoutes {
            endpoints: vec![ep("10.244.1.5", W1, 99)],
            blocks: vec![],
        };
        assert_eq!(plan(&[], &links(), &desired), RoutePlan::default());
    }

    #[test]
    fn only_tabby_routes_are_ever_removed() {
        let kernel = vec![
            // Someone else's routes, whatever device.
            route("10.0.0.0/8", 2, 4),
            route("10.244.1.9/32", 1, 3),
            // tabby's, through lo (never a workload) and a stale blackhole.
            route("10.244.1.6/32", 1, RTPROT_TABBY),
            blackhole(&"10.244.2.0/26".parse().unwrap()),
            // tabby's through a workload the agent does not know yet: kept,
            // the plugin adds it before the record exists.
            route("10.244.1.7/32", 8, RTPROT_TABBY),
        ];
        let p = plan(&kernel, &links(), &DesiredRoutes::default());
        assert!(p.add.is_empty());
        assert_eq!(
            p.delete,
            vec![
                route("10.244.1.6/32", 1, RTPROT_TABBY),
                blackhole(&"10.244.2.0/26".parse().unwrap())
            ]
        );
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
