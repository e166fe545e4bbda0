//! Pod wiring: the kernel side of ADD, DEL and CHECK.
//!
//! ADD creates the veth pair from inside the pod's namespace with the host
//! end placed directly in the node's namespace (one netlink request, ~2 ms,
//! against ~20 ms for creating on the host and moving), so a half-made pair
//! never sits on the host. Everything ADD creates hangs off the pair:
//! deleting the pod end deletes both ends, and the host routes go with the
//! host end, which is what makes rollback and DEL a single operation.

use std::net::IpAddr;

use ipnet::IpNet;
use std::time::Duration;
use tabby_common::naming::{
    GATEWAY_V4, GATEWAY_V6, HOST_VETH_MAC, RTPROT_TABBY, format_mac, is_workload_iface,
};
use tabby_sys::netlink::{RTN_UNICAST, SCOPE_LINK, SCOPE_UNIVERSE, TABLE_MAIN, VethSpec};

use tabby_sys::teardown::{self, LinkEvents};
use tabby_sys::{GuardHook, GuardState, LinkSummary, NetNs, Netlink, RouteSpec, sysctl};
use tracing::{debug, info, warn};

use crate::error::{CniError, CniResult, Code};
use crate::timing::mark;

/// `rtm_protocol` "static", for the routes inside the pod.
const RTPROT_STATIC: u8 = 4;

/// One pod interface: what ADD wires and CHECK verifies.
#[derive(Debug)]
pub struct Attachment<'a> {
    /// The pod's namespace.
    pub netns: &'a NetNs,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The host end's name.
    pub host_name: &'a str,
    /// The pod's addresses (host prefixes).
    pub ips: &'a [IpNet],
}

/// Where ADD attaches the source guard: first choice, and the fallback
/// when that fails (`None`: the ADD fails). See
/// [`crate::config::SourceGuard::plan`].
pub type GuardPlan = (GuardHook, Option<GuardHook>);

/// What ADD made.
#[derive(Debug, Clone)]
pub struct Wired {
    /// Host end index.
    pub host_index: u32,
    /// Pod end MAC.
    pub pod_mac: String,
}

fn host_route(ip: &IpNet, host_index: u32) -> RouteSpec {
    RouteSpec {
        dst: IpNet::new(ip.addr(), ip.max_prefix_len()).unwrap_or(*ip),
        gateway: None,
        oif: Some(host_index),
        protocol: RTPROT_TABBY,
        scope: SCOPE_LINK,
        kind: RTN_UNICAST,
        table: TABLE_MAIN,
    }
}

fn pod_routes(pod_index: u32, v4: bool, v6: bool) -> Vec<RouteSpec> {
    let mut routes = Vec::new();
    let route = |dst: IpNet, gateway: Option<IpAddr>, scope: u8| RouteSpec {
        dst,
        gateway,
        oif: Some(pod_index),
        protocol: RTPROT_STATIC,
        scope,
        kind: RTN_UNICAST,
        table: TABLE_MAIN,
    };
    if v4 {
        routes.push(route(IpNet::from(IpAddr::V4(GATEWAY_V4)), None, SCOPE_LINK));
        routes.push(route(
            default_net(false),
            Some(IpAddr::V4(GATEWAY_V4)),
            SCOPE_UNIVERSE,
        ));
    }
    if v6 {
        routes.push(route(
            default_net(true),
            Some(IpAddr::V6(GATEWAY_V6)),
            SCOPE_UNIVERSE,
        ));
    }
    routes
}

fn default_net(v6: bool) -> IpNet {
    if v6 {
        IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).unwrap_or_default()
    } else {
        IpNet::default()
    }
}

fn kernel(msg: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Kernel, msg.to_string(), e.to_string())
}

/// Removes a leftover host end with our name: the runtime lost a DEL for an
/// earlier sandbox of the same pod, whose namespace is still alive.
pub fn remove_stale_host_end(host: &mut Netlink, host_name: &str) -> CniResult<()> {
    if let Some(stale) = host.link_by_name(host_name)? {
        warn!(
            iface = host_name,
            index = stale.index,
            "removing a stale host interface left by an earlier sandbox of this pod"
        );
        host.delete_link(stale.index)?;
    }
    Ok(())
}

/// Deletes a host end that only a released allocation still names (an ADD
/// killed before it wrote its endpoint record). Deleting it deletes the
/// pod end too.
pub fn remove_orphan_host_end(host: &mut Netlink, name: &str) -> CniResult<()> {
    if !is_workload_iface(name) {
        return Ok(());
    }
    if let Some(l) = host.link_by_name(name)? {
        info!(iface = name, "GC removed an orphaned host interface");
        host.delete_link(l.index)?;
    }
    Ok(())
}

/// Wires the pod. On failure, everything made so far is removed again.
pub fn add(
    host: &mut Netlink,
    host_ns: &NetNs,
    req: &Attachment<'_>,
    mtu: u32,
    guard_plan: GuardPlan,
) -> CniResult<Wired> {
    let v4 = req.ips.iter().any(|i| i.addr().is_ipv4());
    let v6 = req.ips.iter().any(|i| i.addr().is_ipv6());
    if v6 && mtu < 1280 {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("mtu {} is below the IPv6 minimum of 1280", mtu),
            "",
        ));
    }

    // Pod side, from a socket that lives in the pod's namespace. The
    // socket stays usable after the thread leaves, which rollback needs.
    let guard = req.netns.enter().map_err(|e| {
        CniError::new(
            Code::Kernel,
            "cannot enter the pod network namespace",
            e.to_string(),
        )
    })?;
    let mut pod = Netlink::open()?;
    mark("pod socket");
    let pod_side = (|| -> CniResult<(u32, String, Option<u32>)> {
        if let Some(old) = pod.link_by_name(req.ifname)? {
            if old.kind.as_deref() != Some("veth") {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!(
                        "interface {} already exists in the pod namespace",
                        req.ifname
                    ),
                    format!(
                        "it is a {} device, not tabby's",
                        old.kind.as_deref().unwrap_or("plain")
                    ),
                ));
            }
            // A veth under our name is what an interrupted ADD leaves.
            warn!(
                iface = req.ifname,
                "replacing a veth left by an interrupted ADD"
            );
            pod.delete_link(old.index)?;
        }
        mark("pod link check");
        let created = pod.create_veth(&VethSpec {
            name: req.ifname,
            peer_name: req.host_name,
            peer_netns_fd: host_ns.raw_fd(),
            peer_mac: Some(HOST_VETH_MAC),
            mtu,
        })?;
        mark("create veth");
        // The kernel's echo of the new link has both indexes and the MAC;
        // a kernel that does not echo (before 6.1) costs a lookup.
        let (index, mac, host_index) = match created {
            Some(c) => (c.index, c.mac, c.peer_index),
            None => {
                let l = pod
                    .link_by_name(req.ifname)?
                    .ok_or_else(|| kernel("veth vanished after creation", req.ifname))?;
                (l.index, l.mac, None)
            }
        };
        let mac = mac.map(|m| format_mac(&m)).unwrap_or_default();
        mark("pod link lookup");
        if v6 {
            // The pod end's own link-local address would otherwise run DAD;
            // the global /128 is added with NODAD below.
            let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_dad", req.ifname), "0");
        }
        mark("pod sysctl");
        for ip in req.ips {
            pod.add_address(index, ip.addr(), ip.max_prefix_len(), false, true)?;
        }
        mark("pod addresses");
        pod.set_up(index)?;
        mark("pod up");
        for r in pod_routes(index, v4, v6) {
            pod.replace_route(&r)?;
        }
        mark("pod routes");
        // Static entries for the gateway: the first packet never waits for
        // ARP/ND, and the gateway works even when the node has no route
        // that proxy ARP could use.
        if v4 {
            pod.replace_neighbour(index, IpAddr::V4(GATEWAY_V4), HOST_VETH_MAC)?;
        }
        if v6 {
            pod.replace_neighbour(index, IpAddr::V6(GATEWAY_V6), HOST_VETH_MAC)?;
        }
        mark("pod neighbours");
        Ok((index, mac, host_index))
    })();
    drop(guard);
    let (pod_index, pod_mac, host_index) = match pod_side {
        Ok(x) => x,
        Err(e) => {
            if let Ok(Some(l)) = pod.link_by_name(req.ifname) {
                let _ = pod.delete_link(l.index);
            }
            return Err(e);
        }
    };

    match host_side(host, req, host_index, v4, v6, guard_plan) {
        Ok(host_index) => Ok(Wired {
            host_index,
            pod_mac,
        }),
        Err(e) => {
            if let Err(undo) = pod.delete_link(pod_index) {
                warn!(error = %undo, "rollback: cannot delete the veth pair");
            }
            Err(e)
        }
    }
}

/// Configures the host end, `index` when the kernel told us, else looked
/// up by name.
fn host_side(
    host: &mut Netlink,
    req: &Attachment<'_>,
    index: Option<u32>,
    v4: bool,
    v6: bool,
    guard_plan: GuardPlan,
) -> CniResult<u32> {
    let index = match index {
        Some(i) => i,
        None => {
            host.link_by_name(req.host_name)?
                .ok_or_else(|| kernel("host end of the veth is missing", req.host_name))?
                .index
        }
    };
    let h = req.host_name;
    mark("host link lookup");
    if v4 {
        // Answer ARP for 169.254.1.1 (pods that flushed their neighbour
        // table), at once; strict reverse-path filtering drops packets whose
        // source is not routed back through this veth: the pod can only
        // send from its own addresses.
        sysctl::write(&format!("net/ipv4/conf/{h}/proxy_arp"), "1")?;
        sysctl::write(&format!("net/ipv4/neigh/{h}/proxy_delay"), "0")?;
        sysctl::write(&format!("net/ipv4/conf/{h}/rp_filter"), "1")?;
        sysctl::ensure("net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        sysctl::write(&format!("net/ipv6/conf/{h}/accept_dad"), "0")?;
        sysctl::write(&format!("net/ipv6/conf/{h}/proxy_ndp"), "1")?;
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
        host.add_address(index, IpAddr::V6(GATEWAY_V6), 64, true, true)?;
    }
    mark("host sysctls+addr");
    // Before the host end comes up, so no packet ever passes unguarded.
    let own: Vec<IpAddr> = req.ips.iter().map(IpNet::addr).collect();
    let hook = attach_guard(host, index, &own, guard_plan)?;
    mark("host guard");
    debug!(iface = h, hook = hook.as_str(), "source guard attached");
    host.set_up(index)?;
    mark("host up");
    for ip in req.ips {
        host.replace_route(&host_route(ip, index))?;
    }
    mark("host routes");
    debug!(iface = h, index = index, "host end ready");
    Ok(index)
}

/// Attaches the guard per `plan`; returns where it went.
fn attach_guard(
    host: &mut Netlink,
    index: u32,
    own: &[IpAddr],
    (first, fallback): GuardPlan,
) -> CniResult<GuardHook> {
    let err = match host.install_source_guard(index, own, first) {
        Ok(()) => return Ok(first),
        Err(e) => e,
    };
    let Some(second) = fallback else {
        return Err(err.into());
    };
    if first == GuardHook::Clsact {
        // A qdisc without our filter would still block bandwidth's.
        if let Err(e) = host.remove_clsact(index) {
            warn!(index, error = %e, "cannot remove a half-made clsact qdisc");
        }
    }
    warn!(
        index,
        error = %err,
        "the source guard could not be attached with {}: falling back to {}{}",
        first.as_str(),
        second.as_str(),
        if second == GuardHook::Clsact {
            " (the bandwidth plugin's egress shaping cannot share its qdisc)"
        } else {
            ""
        }
    );
    host.install_source_guard(index, own, second)?;
    Ok(second)
}

/// How long DEL waits for the kernel to unlist the pair.
const DEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes the pod's interface. Idempotent: a missing link or record is
/// success. `pod_ns` is the pod's namespace when it still exists (never the
/// plugin's own: the caller refuses that); `host_end` is (name, ifindex)
/// from the endpoint record, already checked to be the record's own
/// workload interface, used when the namespace is gone.
///
/// `peer_must_match`: delete the pod end only when its veth peer is the
/// recorded host end. DEL names the pod end itself (`CNI_NETNS` and
/// `CNI_IFNAME` come from the runtime), so it deletes a veth of that name
/// whatever its peer; GC only has what a record file says, which must not
/// be enough to delete an interface of some other pod.
///
/// When the pod end's peer is the recorded host end, DEL returns as soon as
/// the kernel has unlisted the pair, before its memory reclamation (~15 ms
/// of `rcu_barrier()`), which a helper process waits out:
/// [`tabby_sys::teardown`] explains why nothing is left to observe by then.
pub fn del(
    host: &mut Netlink,
    pod_ns: Option<&NetNs>,
    ifname: &str,
    host_end: Option<(&str, u32)>,
    peer_must_match: bool,
) -> CniResult<()> {
    // Subscribed before anything is deleted, so that the host end's
    // RTM_DELLINK cannot be missed.
    let mut events = host_end.and_then(|_| LinkEvents::open().ok());
    if let Some(ns) = pod_ns {
        let guard = ns
            .enter()
            .map_err(|e| kernel("cannot enter the pod network namespace", e))?;
        let found = (|| -> CniResult<Option<(Netlink, LinkSummary)>> {
            let mut pod = Netlink::open()?;
            mark("del: enter+socket");
            Ok(pod
                .link_by_name(ifname)?
                .filter(|l| l.kind.as_deref() == Some("veth"))
                .map(|l| (pod, l)))
        })();
        drop(guard);
        if let Some((mut pod, l)) = found? {
            mark("del: lookup");
            let peer_is_recorded = host_end
                .is_some_and(|(name, index)| l.link == Some(index) && is_workload_iface(name));
            match (events.as_mut(), host_end) {
                (Some(events), Some((_, index))) if peer_is_recorded => {
                    teardown::delete_veth_detached(pod, l.index, events, index, DEL_TIMEOUT)?;
                    mark("del: pair unlisted");
                    return Ok(());
                }
                _ if peer_is_recorded || !peer_must_match => pod.delete_link(l.index)?,
                _ => warn!(
                    iface = ifname,
                    netns = %ns.path().display(),
                    "leaving a pod interface whose peer is not the recorded host end"
                ),
            }
            mark("del: delete link");
        }
    }
    // The namespace may be gone while the host end survives (it cannot,
    // for a veth, unless the pod end was moved): delete it only if it is
    // still the very link the record describes.
    if let Some((name, index)) = host_end
        && is_workload_iface(name)
        && let Some(l) = host.link_by_name(name)?
        && l.index == index
    {
        host.delete_link(l.index)?;
    }
    Ok(())
}

fn check_failed(msg: String) -> CniError {
    CniError::new(Code::CheckFailed, msg, "")
}

/// Verifies that the pod is wired as ADD left it.
pub fn check(host: &mut Netlink, exp: &Attachment<'_>) -> CniResult<()> {
    let v4 = exp.ips.iter().any(|i| i.addr().is_ipv4());
    let v6 = exp.ips.iter().any(|i| i.addr().is_ipv6());
    let guard = exp
        .netns
        .enter()
        .map_err(|e| kernel("cannot enter the pod network namespace", e))?;
    let pod_res = (|| -> CniResult<()> {
        let mut pod = Netlink::open()?;
        let link = pod.link_by_name(exp.ifname)?.ok_or_else(|| {
            check_failed(format!("interface {} is missing in the pod", exp.ifname))
        })?;
        if link.kind.as_deref() != Some("veth") {
            return Err(check_failed(format!("{} is not a veth", exp.ifname)));
        }
        if !link.up {
            return Err(check_failed(format!("{} is down", exp.ifname)));
        }
        let addrs = pod.addresses(Some(link.index))?;
        for ip in exp.ips {
            if !addrs.iter().any(|(_, a, _)| *a == ip.addr()) {
                return Err(check_failed(format!(
                    "address {ip} is missing on {}",
                    exp.ifname
                )));
            }
        }
        let want = pod_routes(link.index, v4, v6);
        for fam6 in [false, true] {
            let have = pod.routes(fam6, TABLE_MAIN)?;
            for r in want.iter().filter(|r| r.dst.addr().is_ipv6() == fam6) {
                if !have
                    .iter()
                    .any(|h| h.dst == r.dst && h.gateway == r.gateway && h.oif == r.oif)
                {
                    return Err(check_failed(format!(
                        "route {} is missing in the pod",
                        r.dst
                    )));
                }
            }
        }
        Ok(())
    })();
    drop(guard);
    pod_res?;

    let link = host
        .link_by_name(exp.host_name)?
        .ok_or_else(|| check_failed(format!("host interface {} is missing", exp.host_name)))?;
    if !link.up {
        return Err(check_failed(format!(
            "host interface {} is down",
            exp.host_name
        )));
    }
    let own: Vec<IpAddr> = exp.ips.iter().map(IpNet::addr).collect();
    match host.source_guard(link.index, &own)? {
        GuardState::Tcx | GuardState::Clsact => {}
        GuardState::Stale => {
            return Err(check_failed(format!(
                "the source guard on {} is not for the pod's addresses",
                exp.host_name
            )));
        }
        GuardState::Missing => {
            return Err(check_failed(format!(
                "the source guard is missing on {}",
                exp.host_name
            )));
        }
    }
    for fam6 in [false, true] {
        let have = host.routes(fam6, TABLE_MAIN)?;
        for ip in exp.ips.iter().filter(|i| i.addr().is_ipv6() == fam6) {
            let want = host_route(ip, link.index);
            if !have
                .iter()
                .any(|h| h.dst == want.dst && h.oif == want.oif && h.protocol == RTPROT_TABBY)
            {
                return Err(check_failed(format!(
                    "host route to {} via {} is missing",
                    want.dst, exp.host_name
                )));
            }
        }
    }
    Ok(())
}

/// Addresses from the documentation ranges (RFC 5737, RFC 3849): no node
/// routes them more specifically than by its default route, so the route
/// the kernel picks for them is the default route.
const PROBE_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
const PROBE_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// The MTU to give pods: that of the interface of the node's default route
/// (IPv4, else IPv6), else the smallest MTU among the node's other up
/// interfaces, else 1500. The common case costs one route lookup and one
/// link lookup, whatever the number of routes (one per pod) or links; a
/// lookup that does not land on a single-path default route of the main
/// table falls back to reading the table.
pub fn uplink_mtu(host: &mut Netlink) -> CniResult<u32> {
    for (v6, probe) in [(false, PROBE_V4), (true, PROBE_V6)] {
        let default_oif = match host.route_to(probe)? {
            Some(r) if r.dst.prefix_len() == 0 && r.table == TABLE_MAIN && r.oif.is_some() => r.oif,
            _ => host
                .routes(v6, TABLE_MAIN)?
                .into_iter()
                .find(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
                .and_then(|r| r.oif),
        };
        if let Some(index) = default_oif
            && let Some(l) = host.link_by_index(index)?
        {
            return Ok(l.mtu);
        }
    }
    Ok(host
        .links()?
        .iter()
        .filter(|l| l.up && !l.loopback && !is_workload_iface(&l.name) && l.mtu >= 68)
        .map(|l| l.mtu)
        .min()
        .unwrap_or(1500))
}
