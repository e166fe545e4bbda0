//! The verbs: ADD, DEL, CHECK, STATUS, GC, VERSION.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_common::agent::{self, AgentError, AgentRequest, CniSettings};
use tabby_common::endpoint::{EndpointRecord, EndpointStore};
use tabby_common::ipam::AttachmentKey;
use tabby_common::naming::{
    GATEWAY_V4, GATEWAY_V6, HOST_VETH_MAC, HostIface, format_mac, host_veth_name, is_workload_iface,
};
use tabby_sys::{NetNs, Netlink};
use tracing::{debug, info, warn};

use crate::config::{Env, LATEST_VERSION, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, CniResult, Code};
use crate::ipam;
use crate::result::{CniOutput, Interface, IpConfig, Route};
use crate::timing::mark;
use crate::wiring::{self, Attachment};

/// DEL only informs the agent; it never waits long for it.
const AGENT_DEL_TIMEOUT: Duration = Duration::from_secs(2);

fn own_netns() -> CniResult<NetNs> {
    NetNs::current().map_err(|e| {
        CniError::new(
            Code::Kernel,
            "cannot open the node namespace",
            e.to_string(),
        )
    })
}

/// Wiring, unwiring or collecting in the node's own namespace as if it were
/// a pod's would move or delete the node's own interfaces (its uplink):
/// refused for every verb, as the reference plugins do for ADD.
fn refuse_own(ns: &NetNs, own: &NetNs) -> CniResult<()> {
    if ns.same_as(own) {
        return Err(CniError::new(
            Code::InvalidNetNs,
            "CNI_NETNS is the plugin's own network namespace",
            ns.path().display().to_string(),
        ));
    }
    Ok(())
}

fn not_netns(e: impl std::fmt::Display) -> CniError {
    CniError::new(
        Code::InvalidNetNs,
        "CNI_NETNS does not name a network namespace",
        e.to_string(),
    )
}

/// ADD and CHECK: `CNI_NETNS` must be a pod's network namespace.
fn open_pod_netns(env: &Env) -> CniResult<NetNs> {
    let path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_NETNS is required", ""))?;
    let ns = NetNs::open(path).map_err(not_netns)?;
    refuse_own(&ns, &own_netns()?)?;
    Ok(ns)
}

/// What an optional `CNI_NETNS` (DEL, GC, STATUS) names.
enum NsArg {
    /// Not given, or the path is gone: the runtime already deleted it.
    Absent,
    /// A pod's network namespace.
    Pod(NetNs),
    /// A path that exists but is not a network namespace: the error to
    /// answer (code 8) once what can be released is released.
    NotNetNs(CniError),
}

impl NsArg {
    fn pod(&self) -> Option<&NetNs> {
        match self {
            NsArg::Pod(ns) => Some(ns),
            _ => None,
        }
    }

    /// For the verbs that never use it: refuses anything but absence or a
    /// pod's namespace.
    fn into_result(self) -> CniResult<()> {
        match self {
            NsArg::NotNetNs(e) => Err(e),
            _ => Ok(()),
        }
    }
}

/// Opens an optional `CNI_NETNS`; the plugin's own namespace is refused
/// at once, before anything is changed.
fn optional_netns(env: &Env) -> CniResult<NsArg> {
    let Some(path) = env.netns.as_deref() else {
        return Ok(NsArg::Absent);
    };
    match NetNs::open(path) {
        Ok(ns) => {
            refuse_own(&ns, &own_netns()?)?;
            Ok(NsArg::Pod(ns))
        }
        Err(e) if e.is_not_found() => {
            debug!(netns = %path.display(), "netns already gone");
            Ok(NsArg::Absent)
        }
        Err(e) => Ok(NsArg::NotNetNs(not_netns(e))),
    }
}

/// The host end a record may have tabby delete: its `hostIface` only when
/// that is the workload interface tabby names after the record's own
/// attachment (`key`) and pod, and that pod is the one the runtime names
/// (`runtime_pod`, DEL's `CNI_ARGS`) when it names one. A record rewritten
/// to name another interface (the node's uplink, another pod's veth, under
/// its own or that pod's identity) yields nothing to delete.
fn record_host_end<'r>(
    rec: &'r EndpointRecord,
    key: (&str, &str),
    runtime_pod: Option<(&str, &str)>,
) -> Option<(&'r str, u32)> {
    let pod = match (&rec.pod_namespace, &rec.pod_name) {
        (Some(ns), Some(n)) => Some((ns.as_str(), n.as_str())),
        _ => None,
    };
    let own = (rec.container_id.as_str(), rec.ifname.as_str()) == key
        && runtime_pod.is_none_or(|p| pod == Some(p))
        && is_workload_iface(rec.host_iface.as_str())
        && rec.host_iface.as_str() == host_veth_name(pod, &rec.container_id, &rec.ifname);
    if own {
        Some((rec.host_iface.as_str(), rec.host_ifindex))
    } else {
        warn!(
            container_id = %rec.container_id,
            ifname = %rec.ifname,
            host_iface = %rec.host_iface,
            "the endpoint record names an interface that is not its attachment's; leaving it alone"
        );
        None
    }
}

/// Things ADD made, undone in reverse order when a later step fails.
enum Undo<'a> {
    Ipam,
    Link { host: &'a mut Netlink },
    Record,
}

fn unwind(conf: &NetConf, env: &Env, pod_ns: &NetNs, undo: Vec<Undo<'_>>) {
    for step in undo.into_iter().rev() {
        let res = match step {
            Undo::Ipam => ipam::release(conf, env),
            Undo::Link { host } => wiring::del(host, Some(pod_ns), &env.ifname, None, false),
            Undo::Record => EndpointStore::new(&conf.run_dir)
                .remove(&env.container_id, &env.ifname)
                .map_err(CniError::from),
        };
        if let Err(e) = res {
            warn!(error = %e, "rollback step failed");
        }
    }
}

/// ADD: allocate, wire, record, have the agent program policy, answer.
pub fn add(env: &Env, conf: &NetConf) -> CniResult<Value> {
    let pod_ns = open_pod_netns(env)?;
    let host_ns = own_netns()?;
    let mut host = Netlink::open()?;
    mark("netns+socket");
    let host_name = host_veth_name(env.pod(), &env.container_id, &env.ifname);
    let mtu = match conf.mtu {
        Some(m) => m,
        None => wiring::uplink_mtu(&mut host)?,
    };
    mark("mtu");

    let alloc = ipam::allocate(conf, env, &host_name)?;
    mark("ipam");
    let mut undo = vec![Undo::Ipam];

    let wired = match wiring::remove_stale_host_end(&mut host, &host_name).and_then(|()| {
        wiring::add(
            &mut host,
            &host_ns,
            &Attachment {
                netns: &pod_ns,
                ifname: &env.ifname,
                host_name: &host_name,
                ips: &alloc.ips,
            },
            mtu,
            conf.source_guard.plan(conf.egress_shaping),
        )
    }) {
        Ok(w) => w,
        Err(e) => {
            unwind(conf, env, &pod_ns, undo);
            return Err(e);
        }
    };
    undo.push(Undo::Link { host: &mut host });

    let netns_path = env
        .netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let record = EndpointRecord {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
        netns: netns_path.clone(),
        // host_veth_name always makes a valid name; the check is the
        // record's own contract.
        host_iface: HostIface::parse(&host_name)
            .map_err(|e| CniError::new(Code::Kernel, "bad host interface name", e.to_string()))?,
        host_ifindex: wired.host_index,
        mac: wired.pod_mac.clone(),
        ips: alloc.ips.clone(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok()),
    };
    if let Err(e) = EndpointStore::new(&conf.run_dir).write(&record) {
        unwind(conf, env, &pod_ns, undo);
        return Err(e.into());
    }
    mark("record");
    undo.push(Undo::Record);

    if let Some(sock) = &conf.agent_socket {
        let settings = CniSettings::read(&conf.run_dir);
        let req = AgentRequest::Add { endpoint: record };
        match agent::call(sock, &req, settings.timeout()) {
            Ok(()) => {}
            // The agent refused: it is up and said no, whatever fail-open says.
            Err(e @ AgentError::Refused(_)) => {
                unwind(conf, env, &pod_ns, undo);
                return Err(CniError::new(
                    Code::Agent,
                    "the node agent did not program the pod",
                    e.to_string(),
                ));
            }
            Err(e) if settings.fail_open => {
                warn!(error = %e, "the node agent did not answer; starting the pod anyway (failOpen)");
            }
            Err(e) => {
                unwind(conf, env, &pod_ns, undo);
                return Err(match e {
                    AgentError::Unreachable { .. } => CniError::new(
                        Code::TryAgainLater,
                        "the node agent is not running",
                        e.to_string(),
                    ),
                    other => CniError::new(
                        Code::Agent,
                        "the node agent did not program the pod",
                        other.to_string(),
                    ),
                });
            }
        }
    }

    info!(ips = ?alloc.ips, host_iface = %host_name, mtu, "pod wired");
    let mut out = CniOutput {
        interfaces: vec![
            Interface {
                name: host_name,
                mac: format_mac(&HOST_VETH_MAC),
                mtu: Some(mtu),
                sandbox: None,
                extra: Default::default(),
            },
            Interface {
                name: env.ifname.clone(),
                mac: wired.pod_mac,
                mtu: Some(mtu),
                sandbox: Some(netns_path),
                extra: Default::default(),
            },
        ],
        ips: alloc
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: *ip,
                gateway: Some(gateway_of(ip)),
                interface: Some(1),
            })
            .collect(),
        routes: default_routes(&alloc.ips),
        dns: conf.dns.clone(),
    };
    if let Some(d) = alloc.delegated
        && out.dns.is_none()
    {
        out.dns = d.dns;
    }
    let out = match &conf.prev_result {
        Some(prev) => CniOutput::from_json(prev)?.merge(out),
        None => out,
    };
    Ok(out.to_json(&conf.cni_version))
}

fn gateway_of(ip: &IpNet) -> IpAddr {
    if ip.addr().is_ipv4() {
        IpAddr::V4(GATEWAY_V4)
    } else {
        IpAddr::V6(GATEWAY_V6)
    }
}

fn default_routes(ips: &[IpNet]) -> Vec<Route> {
    let mut routes = Vec::new();
    if let Some(v4) = ips.iter().find(|i| i.addr().is_ipv4()) {
        routes.push(Route {
            dst: IpNet::default(),
            gw: Some(gateway_of(v4)),
            extra: Default::default(),
        });
    }
    if let Some(v6) = ips.iter().find(|i| i.addr().is_ipv6())
        && let Ok(dst) = IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
    {
        routes.push(Route {
            dst,
            gw: Some(gateway_of(v6)),
            extra: Default::default(),
        });
    }
    routes
}

/// DEL: remove the interface, release the addresses, drop the record.
/// Everything already gone is success.
///
/// `CNI_NETNS`:
/// - absent, or a path that no longer exists: the recorded host end is
///   deleted (which takes the pod end with it), the rest released; success.
/// - the plugin's own namespace: refused with code 8 before anything is
///   touched (no interface, no address, no record): no runtime sends that
///   for a pod, and obeying it would delete the node's own `CNI_IFNAME`.
/// - a path that exists but is not a network namespace (a regular file, a
///   directory): nothing is looked up behind it; the recorded host end is
///   deleted, the addresses and the record are released, the agent told,
///   and then DEL answers code 8 so that the runtime learns its path was
///   wrong. Repeating it answers 8 again and changes nothing more.
pub fn del(env: &Env, conf: &NetConf) -> CniResult<()> {
    let ns = optional_netns(env)?;
    let store = EndpointStore::new(&conf.run_dir);
    let record = match store.read(&env.container_id, &env.ifname) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable endpoint record");
            None
        }
    };
    let mut host = Netlink::open()?;
    mark("record read+socket");
    wiring::del(
        &mut host,
        ns.pod(),
        &env.ifname,
        record
            .as_ref()
            .and_then(|r| record_host_end(r, (&env.container_id, &env.ifname), env.pod())),
        false,
    )?;
    mark("unwired");
    ipam::release(conf, env)?;
    mark("ipam");
    store.remove(&env.container_id, &env.ifname)?;
    mark("record removed");
    if let Some(sock) = &conf.agent_socket {
        let req = AgentRequest::Del {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        };
        if let Err(e) = agent::call(sock, &req, AGENT_DEL_TIMEOUT) {
            // The agent reconciles from the records; telling it is a courtesy.
            warn!(error = %e, "could not tell the node agent about DEL");
        }
    }
    info!("pod unwired");
    ns.into_result()
}

/// CHECK: everything ADD made is still there.
pub fn check(env: &Env, conf: &NetConf) -> CniResult<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult", ""))?;
    let prev = CniOutput::from_json(prev)?;
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::new(
                Code::CheckFailed,
                format!("prevResult has no interface {} in a sandbox", env.ifname),
                "",
            )
        })?;
    let ips: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|i| i.interface == Some(idx))
        .map(|i| IpNet::from(i.address.addr()))
        .collect();
    let pod_ns = open_pod_netns(env)?;
    let mut host = Netlink::open()?;
    let host_name = host_veth_name(env.pod(), &env.container_id, &env.ifname);
    wiring::check(
        &mut host,
        &Attachment {
            netns: &pod_ns,
            ifname: &env.ifname,
            host_name: &host_name,
            ips: &ips,
        },
    )?;
    if let Some(held) = ipam::held(conf, env)? {
        let mut want: Vec<IpAddr> = ips.iter().map(|i| i.addr()).collect();
        let mut held = held;
        want.sort();
        held.sort();
        if want != held {
            return Err(CniError::new(
                Code::CheckFailed,
                "IPAM does not hold the attachment's addresses",
                format!("prevResult has {want:?}, IPAM holds {held:?}"),
            ));
        }
    }
    if EndpointStore::new(&conf.run_dir)
        .read(&env.container_id, &env.ifname)?
        .is_none()
    {
        return Err(CniError::new(
            Code::CheckFailed,
            "the endpoint record is missing",
            "",
        ));
    }
    Ok(())
}

/// STATUS: can ADD succeed now?
pub fn status(env: &Env, conf: &NetConf) -> CniResult<()> {
    optional_netns(env)?.into_result()?;
    ipam::status(conf, env)?;
    if let Some(sock) = &conf.agent_socket {
        agent::call(sock, &AgentRequest::Status, AGENT_DEL_TIMEOUT).map_err(|e| {
            CniError::new(
                Code::NotAvailable,
                "the node agent is not ready",
                e.to_string(),
            )
        })?;
    }
    Ok(())
}

/// GC: release addresses and records of attachments the runtime no longer
/// has, and remove their interfaces.
pub fn gc(env: &Env, conf: &NetConf) -> CniResult<()> {
    optional_netns(env)?.into_result()?;
    // Without the list, "everything not listed" would be every pod on the
    // node: refuse rather than guess.
    let Some(listed) = &conf.valid_attachments else {
        return Err(CniError::new(
            Code::InvalidConfig,
            "GC needs cni.dev/valid-attachments",
            "the runtime must list the attachments that are still valid",
        ));
    };
    let valid: HashSet<AttachmentKey> = listed
        .iter()
        .map(|a| AttachmentKey::new(a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = EndpointStore::new(&conf.run_dir);
    let own = own_netns()?;
    let mut host = Netlink::open()?;
    let mut errors = Vec::new();
    let mut in_use = HashSet::new();
    let records: Vec<EndpointRecord> = store
        .list()?
        .into_iter()
        .flatten()
        .filter(|r| r.network == conf.name)
        .collect();
    let is_valid = |r: &EndpointRecord| {
        valid.contains(&AttachmentKey::new(
            r.container_id.clone(),
            r.ifname.clone(),
        ))
    };
    // First the interfaces of valid attachments: a stale record naming one
    // (a forged one, under that pod's identity) must not reach it.
    for rec in records.iter().filter(|r| is_valid(r)) {
        in_use.insert(String::from(rec.host_iface.clone()));
    }
    for rec in records.iter().filter(|r| !is_valid(r)) {
        let host_end = record_host_end(rec, (&rec.container_id, &rec.ifname), None)
            .filter(|(name, _)| {
                let free = !in_use.contains(*name);
                if !free {
                    warn!(container_id = %rec.container_id, host_iface = name, "a stale endpoint record names a valid attachment's interface; leaving it alone");
                }
                free
            });
        // Only a record that names its own host end may lead GC into a
        // namespace, and never into the plugin's own.
        let pod_ns = host_end.and_then(|_| gc_pod_netns(&rec.netns, &own));
        let res =
            wiring::del(&mut host, pod_ns.as_ref(), &rec.ifname, host_end, true).and_then(|()| {
                store
                    .remove(&rec.container_id, &rec.ifname)
                    .map_err(CniError::from)
            });
        match res {
            Ok(()) => {
                info!(container_id = %rec.container_id, ifname = %rec.ifname, "GC removed a stale endpoint")
            }
            // Keep going: one stuck attachment must not block the others.
            Err(e) => errors.push(format!("{}/{}: {e}", rec.container_id, rec.ifname)),
        }
    }
    let report = ipam::gc(conf, env, &valid)?;
    for (k, ip) in &report.released {
        info!(container_id = %k.container_id, ifname = %k.ifname, %ip, "GC released an address");
        // An ADD killed while writing its record leaves only a temporary file.
        if let Err(e) = store.remove(&k.container_id, &k.ifname) {
            errors.push(format!("{}/{}: {e}", k.container_id, k.ifname));
        }
    }
    for name in report.host_ifaces.iter().filter(|n| !in_use.contains(*n)) {
        if let Err(e) = wiring::remove_orphan_host_end(&mut host, name) {
            errors.push(format!("{name}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Kernel,
            "GC could not remove every stale endpoint",
            errors.join("; "),
        ))
    }
}

/// The namespace a stale record names, when GC may enter it: one that
/// still exists, is a network namespace, and is not the plugin's own.
fn gc_pod_netns(path: &str, own: &NetNs) -> Option<NetNs> {
    if path.is_empty() {
        return None;
    }
    match NetNs::open(path) {
        Ok(ns) if ns.same_as(own) => {
            warn!(
                netns = path,
                "a stale endpoint record names the node's own namespace; not entering it"
            );
            None
        }
        Ok(ns) => Some(ns),
        Err(e) => {
            debug!(netns = path, error = %e, "stale endpoint's namespace is gone");
            None
        }
    }
}

/// VERSION: the versions this plugin speaks.
pub fn version(stdin: &[u8]) -> Value {
    let asked = crate::config::sniff_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}
