//! IPAM for the plugin: `tabby-ipam` in-process against the node-local
//! store, or any other IPAM plugin executed from `CNI_PATH` per the spec.

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;
use tabby_common::ipam::{
    AttachmentKey, BlocksError, Discarded, IpamError, IpamStore, OwnerMeta, StoreError,
    StoreOutcome, blocks_path, read_blocks,
};
use tracing::{info, warn};

use crate::config::{Env, IpamConf, NetConf, Verb};
use crate::error::{CniError, CniResult, Code};
use crate::result::CniOutput;

/// Addresses handed out for one attachment.
#[derive(Debug, Clone, Default)]
pub struct Allocated {
    /// Host prefixes (/32, /128).
    pub ips: Vec<IpNet>,
    /// A delegated plugin's result (its routes and DNS are passed on).
    pub delegated: Option<CniOutput>,
}

fn store_err(e: StoreError) -> CniError {
    match e {
        StoreError::LockTimeout { .. } => {
            CniError::new(Code::TryAgainLater, "IPAM store is busy", e.to_string())
        }
        StoreError::Ipam(IpamError::Exhausted { .. }) => CniError::new(
            Code::PoolExhausted,
            "no free pod address on this node",
            e.to_string(),
        ),
        StoreError::Ipam(IpamError::NoBlocks) => CniError::new(
            Code::TryAgainLater,
            "this node has no pod address blocks yet",
            e.to_string(),
        ),
        StoreError::InvalidNetwork { .. } => {
            CniError::new(Code::InvalidConfig, "invalid network name", e.to_string())
        }
        other => CniError::new(Code::Io, "IPAM store", other.to_string()),
    }
}

fn log_discarded<T>(outcome: &StoreOutcome<T>) {
    match &outcome.discarded {
        Some(Discarded::StaleBoot {
            previous_boot_id,
            allocations,
        }) => info!(
            previous_boot_id,
            allocations, "IPAM: dropped allocations of an earlier boot"
        ),
        Some(Discarded::UnreadableFromEarlierBoot { previous_boot_id }) => {
            warn!(
                previous_boot_id,
                "IPAM: state of an earlier boot was unreadable and was reset"
            )
        }
        None => {}
    }
}

/// The node's blocks: `ipam.subnets`, else the agent's blocks file.
pub fn node_blocks(conf: &NetConf, subnets: &[IpNet]) -> CniResult<Vec<IpNet>> {
    if !subnets.is_empty() {
        return Ok(subnets.to_vec());
    }
    let path = blocks_path(&conf.data_dir);
    match read_blocks(&path) {
        Ok(b) if !b.is_empty() => Ok(b),
        Ok(_) | Err(BlocksError::Missing { .. }) => Err(CniError::new(
            Code::TryAgainLater,
            "this node has no pod address blocks yet",
            format!(
                "ipam.subnets is empty and {} lists no blocks (the node agent writes it)",
                path.display()
            ),
        )),
        Err(e) => Err(CniError::new(
            Code::Io,
            "cannot read the node's blocks file",
            e.to_string(),
        )),
    }
}

fn key(env: &Env) -> AttachmentKey {
    AttachmentKey::new(env.container_id.clone(), env.ifname.clone())
}

fn open(conf: &NetConf) -> CniResult<IpamStore> {
    IpamStore::open(&conf.data_dir, &conf.name).map_err(store_err)
}

/// Allocates the attachment's addresses.
pub fn allocate(conf: &NetConf, env: &Env, host_iface: &str) -> CniResult<Allocated> {
    match &conf.ipam {
        IpamConf::Tabby { subnets } => {
            let blocks = node_blocks(conf, subnets)?;
            let meta = OwnerMeta {
                host_iface: Some(host_iface.to_string()),
                namespace: env.pod_namespace.clone(),
                name: env.pod_name.clone(),
            };
            let k = key(env);
            let outcome = open(conf)?
                .transact(|s| s.allocate(&k, &blocks, meta))
                .map_err(store_err)?;
            log_discarded(&outcome);
            Ok(Allocated {
                ips: outcome.value,
                delegated: None,
            })
        }
        IpamConf::Delegate { plugin } => {
            let out = exec_delegate(conf, env, plugin, Verb::Add)?.ok_or_else(|| {
                CniError::new(
                    Code::DelegatedIpam,
                    format!("IPAM plugin {plugin} returned no result"),
                    "",
                )
            })?;
            let result = CniOutput::from_json(&out)?;
            let ips: Vec<IpNet> = result
                .ips
                .iter()
                .map(|i| IpNet::from(i.address.addr()))
                .collect();
            if ips.is_empty() {
                return Err(CniError::new(
                    Code::DelegatedIpam,
                    format!("IPAM plugin {plugin} returned no address"),
                    out.to_string(),
                ));
            }
            Ok(Allocated {
                ips,
                delegated: Some(result),
            })
        }
    }
}

/// Releases the attachment's addresses; idempotent.
pub fn release(conf: &NetConf, env: &Env) -> CniResult<()> {
    match &conf.ipam {
        IpamConf::Tabby { .. } => {
            let k = key(env);
            let outcome = open(conf)?
                .transact(|s| Ok(s.release(&k)))
                .map_err(store_err)?;
            if !outcome.value.is_empty() {
                info!(ips = ?outcome.value, "released");
            }
            Ok(())
        }
        IpamConf::Delegate { plugin } => exec_delegate(conf, env, plugin, Verb::Del).map(|_| ()),
    }
}

/// The addresses the store holds for the attachment (tabby-ipam only).
pub fn held(conf: &NetConf, env: &Env) -> CniResult<Option<Vec<IpAddr>>> {
    match &conf.ipam {
        IpamConf::Tabby { .. } => Ok(Some(
            open(conf)?.read().map_err(store_err)?.lookup(&key(env)),
        )),
        IpamConf::Delegate { plugin } => {
            exec_delegate(conf, env, plugin, Verb::Check).map(|_| None)
        }
    }
}

/// What GC released: addresses, and the host interfaces they were wired to.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Released (attachment, address) pairs.
    pub released: Vec<(AttachmentKey, IpAddr)>,
    /// Host interface names recorded with the released allocations: an ADD
    /// killed before it wrote its endpoint record is only known from here.
    pub host_ifaces: Vec<String>,
}

/// Releases every allocation not in `valid`.
pub fn gc(conf: &NetConf, env: &Env, valid: &HashSet<AttachmentKey>) -> CniResult<GcReport> {
    match &conf.ipam {
        IpamConf::Tabby { .. } => {
            let outcome = open(conf)?
                .transact(|s| {
                    let mut host_ifaces: Vec<String> = s
                        .attachments()
                        .filter(|(k, _)| !valid.contains(*k))
                        .filter_map(|(_, a)| a.meta.host_iface.clone())
                        .collect();
                    host_ifaces.sort();
                    host_ifaces.dedup();
                    Ok(GcReport {
                        released: s.retain(valid),
                        host_ifaces,
                    })
                })
                .map_err(store_err)?;
            log_discarded(&outcome);
            Ok(outcome.value)
        }
        IpamConf::Delegate { plugin } => {
            exec_delegate(conf, env, plugin, Verb::Gc).map(|_| GcReport::default())
        }
    }
}

/// Can an ADD get an address?
pub fn status(conf: &NetConf, env: &Env) -> CniResult<()> {
    match &conf.ipam {
        IpamConf::Tabby { subnets } => {
            let not_available = |e: CniError| CniError::new(Code::NotAvailable, e.msg, e.details);
            let blocks = node_blocks(conf, subnets).map_err(not_available)?;
            let state = open(conf)?
                .read()
                .map_err(|e| not_available(store_err(e)))?;
            let usage = state.usage(&blocks);
            for v6 in [false, true] {
                let fam: Vec<_> = usage
                    .iter()
                    .filter(|u| u.block.addr().is_ipv6() == v6)
                    .collect();
                if !fam.is_empty() && fam.iter().all(|u| u.used as u128 >= u.capacity) {
                    return Err(CniError::new(
                        Code::NotAvailable,
                        "no free pod address on this node",
                        format!("every IPv{} block is full", if v6 { 6 } else { 4 }),
                    ));
                }
            }
            Ok(())
        }
        IpamConf::Delegate { plugin } => exec_delegate(conf, env, plugin, Verb::Status)
            .map(|_| ())
            .map_err(|e| CniError::new(Code::NotAvailable, e.msg, e.details)),
    }
}

fn find_plugin(env: &Env, plugin: &str) -> CniResult<PathBuf> {
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH"),
                env.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        })
}

/// Runs a delegated IPAM plugin with the same environment and configuration
/// (CNI spec: "Delegated plugins"). Returns its stdout as JSON, if any.
fn exec_delegate(conf: &NetConf, env: &Env, plugin: &str, verb: Verb) -> CniResult<Option<Value>> {
    let path = match find_plugin(env, plugin) {
        Ok(p) => p,
        // DEL must succeed even when the plugin was uninstalled meanwhile.
        Err(e) if verb == Verb::Del => {
            warn!(plugin, error = %e, "IPAM plugin missing on DEL; nothing to release");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let stdin = serde_json::to_vec(&conf.raw)
        .map_err(|e| CniError::new(Code::Decode, "cannot encode configuration", e.to_string()))?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", verb.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                Code::DelegatedIpam,
                format!("cannot run IPAM plugin {}", path.display()),
                e.to_string(),
            )
        })?;
    if let Some(mut sin) = child.stdin.take() {
        // A plugin that exits without reading its stdin is not an error here;
        // its exit status says what happened.
        let _ = sin.write_all(&stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            Code::DelegatedIpam,
            format!("IPAM plugin {plugin} failed"),
            e.to_string(),
        )
    })?;
    let body: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(
                Code::DelegatedIpam,
                format!("IPAM plugin {plugin} printed invalid JSON"),
                e.to_string(),
            )
        })?)
    };
    if !out.status.success() {
        let (code, msg) = body
            .as_ref()
            .map(|b| {
                (
                    b["code"].as_u64().unwrap_or(0),
                    b["msg"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or((0, String::new()));
        return Err(CniError::new(
            Code::DelegatedIpam,
            format!("IPAM plugin {plugin} {} failed", verb.as_str()),
            format!("code {code}: {msg}"),
        ));
    }
    Ok(body)
}
