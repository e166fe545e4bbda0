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
    GATEWAY_V4, GATEWAY_V6, HOST_VETH_MAC, HostIface, format_mac, host_veth_name,
};
use tabby_sys::{NetNs, Netlink};
use tracing::{info, warn};

use crate::config::{Env, LATEST_VERSION, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, CniResult, Code};
use crate::ipam;
use crate::result::{CniOutput, Interface, IpConfig, Route};
use crate::timing::mark;
use crate::wiring::{self, Attachment};

/// DEL only informs the agent; it never waits long for it.
const AGENT_DEL_TIMEOUT: Duration = Duration::from_secs(2);

fn open_pod_netns(env: &Env) -> CniResult<NetNs> {
    let path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_NETNS is required", ""))?;
    let ns = NetNs::open(path).map_err(|e| {
        CniError::new(
            Code::InvalidNetNs,
            "CNI_NETNS does not name a network namespace",
            e.to_string(),
        )
    })?;
    // Wiring the node's own namespace as a pod would move the node's
    // routes and addresses around: refuse, as the reference plugins do.
    let own = NetNs::current().map_err(|e| {
        CniError::new(
            Code::Kernel,
            "cannot open the node namespace",
            e.to_string(),
        )
    })?;
    if ns.same_as(&own) {
        return Err(CniError::new(
            Code::InvalidNetNs,
            "CNI_NETNS is the plugin's own network namespace",
            path.display().to_string(),
        ));
    }
    Ok(ns)
}

/// Things ADD made, undone in reverse order when a later step fails.
enum Undo<'a> {
    Ipam,
    Link { host: &'a mut Netlink },
    Record,
}

fn unwind(conf: &NetConf, env: &Env, undo: Vec<Undo<'_>>) {
    for step in undo.into_iter().rev() {
        let res = match step {
            Undo::Ipam => ipam::release(conf, env),
            Undo::Link { host } => wiring::del(host, env.netns.as_deref(), &env.ifname, None),
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
    let host_ns = NetNs::current().map_err(|e| {
        CniError::new(
            Code::Kernel,
            "cannot open the node namespace",
            e.to_string(),
        )
    })?;
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
        )
    }) {
        Ok(w) => w,
        Err(e) => {
            unwind(conf, env, undo);
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
        unwind(conf, env, undo);
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
                unwind(conf, env, undo);
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
                unwind(conf, env, undo);
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
pub fn del(env: &Env, conf: &NetConf) -> CniResult<()> {
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
        env.netns.as_deref(),
        &env.ifname,
        record
            .as_ref()
            .map(|r| (r.host_iface.as_str(), r.host_ifindex)),
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
    Ok(())
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
    let mut host = Netlink::open()?;
    let mut errors = Vec::new();
    let mut in_use = HashSet::new();
    for rec in store.list()?.into_iter().flatten() {
        if rec.network != conf.name {
            continue;
        }
        if valid.contains(&AttachmentKey::new(
            rec.container_id.clone(),
            rec.ifname.clone(),
        )) {
            in_use.insert(String::from(rec.host_iface.clone()));
            continue;
        }
        let netns = std::path::PathBuf::from(&rec.netns);
        let res = wiring::del(
            &mut host,
            Some(&netns),
            &rec.ifname,
            Some((rec.host_iface.as_str(), rec.host_ifindex)),
        )
        .and_then(|()| {
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

/// VERSION: the versions this plugin speaks.
pub fn version(stdin: &[u8]) -> Value {
    let asked = crate::config::sniff_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}
