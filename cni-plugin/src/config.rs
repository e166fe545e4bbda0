//! The invocation: `CNI_*` environment variables and the network
//! configuration on stdin, parsed and validated into one value.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use tabby_sys::GuardHook;

use crate::error::{CniError, CniResult, Code};

/// The versions whose configuration and result formats this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version used when the input names none we can trust.
pub const LATEST_VERSION: &str = "1.1.0";

/// The IPAM type implemented inside this binary.
pub const TABBY_IPAM: &str = "tabby-ipam";

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Can ADD succeed?
    Status,
    /// Release everything not in the valid list.
    Gc,
    /// Report supported versions.
    Version,
}

impl Verb {
    fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "STATUS" => Verb::Status,
            "GC" => Verb::Gc,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }

    /// The name as written in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
            Verb::Version => "VERSION",
        }
    }
}

/// The `CNI_*` environment, validated for the verb.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (empty for DEL when the runtime has no netns any more).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: Option<String>,
    /// `CNI_ARGS`, unparsed, for a delegated IPAM plugin.
    pub raw_args: Option<String>,
    /// `CNI_PATH`.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// The pod's (namespace, name) when the runtime gave both.
    pub fn pod(&self) -> Option<(&str, &str)> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(n)) => Some((ns.as_str(), n.as_str())),
            _ => None,
        }
    }
}

/// IPAM configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum IpamConf {
    /// `tabby-ipam`, handled in this binary.
    Tabby {
        /// Explicit blocks; empty means "read the agent's blocks file".
        subnets: Vec<IpNet>,
    },
    /// Any other type: run that plugin from `CNI_PATH`.
    Delegate {
        /// The plugin's name.
        plugin: String,
    },
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct ValidAttachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// `sourceGuard`: where the anti-spoofing guard is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceGuard {
    /// clsact (fast), unless the pod asks for egress shaping, which needs
    /// the `ingress` qdisc clsact would block: then TCX. Each falls back to
    /// the other.
    #[default]
    Auto,
    /// Always TCX, no fallback.
    Tcx,
    /// Always clsact, no fallback.
    Clsact,
}

impl SourceGuard {
    /// Where to attach the guard first, and where to go when that fails
    /// (`None`: fail the ADD). `egress_shaping`: the runtime passed a
    /// non-zero `egressRate` or `egressBurst`.
    pub fn plan(self, egress_shaping: bool) -> (GuardHook, Option<GuardHook>) {
        match self {
            SourceGuard::Tcx => (GuardHook::Tcx, None),
            SourceGuard::Clsact => (GuardHook::Clsact, None),
            SourceGuard::Auto if egress_shaping => (GuardHook::Tcx, Some(GuardHook::Clsact)),
            SourceGuard::Auto => (GuardHook::Clsact, Some(GuardHook::Tcx)),
        }
    }
}

/// The plugin's network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`: the network name.
    pub name: String,
    /// `mtu`: when absent, the uplink's.
    pub mtu: Option<u32>,
    /// `dataDir`: persistent state (IPAM).
    pub data_dir: PathBuf,
    /// `runDir`: endpoint records and the agent socket.
    pub run_dir: PathBuf,
    /// `agentSocket`: ask the agent to program policy before returning.
    pub agent_socket: Option<PathBuf>,
    /// `ipam`.
    pub ipam: IpamConf,
    /// `sourceGuard`.
    pub source_guard: SourceGuard,
    /// `runtimeConfig.bandwidth` asks for egress shaping (a non-zero
    /// `egressRate` or `egressBurst`).
    pub egress_shaping: bool,
    /// `dns`, passed into the result.
    pub dns: Option<Value>,
    /// `prevResult`.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// The whole configuration as received, for a delegated IPAM plugin.
    pub raw: Value,
}

/// Keys the CNI spec itself defines for a plugin's configuration.
const SPEC_KEYS: [&str; 8] = [
    "cniVersion",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "dns",
];
/// Keys tabby defines.
const TABBY_KEYS: [&str; 6] = [
    "mtu",
    "dataDir",
    "runDir",
    "agentSocket",
    "ipam",
    "sourceGuard",
];

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg, details)
}

/// The `cniVersion` of raw stdin, if it can be found: used to answer in the
/// caller's version even when the rest of the configuration is bad.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let v: V = serde_json::from_slice(stdin).ok()?;
    v.cni_version
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
}

/// Compares dotted versions numerically.
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// Parses and validates the network configuration.
pub fn parse_conf(stdin: &[u8]) -> CniResult<NetConf> {
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            "cannot decode network configuration",
            e.to_string(),
        )
    })?;
    let Value::Object(map) = &raw else {
        return Err(CniError::new(
            Code::Decode,
            "cannot decode network configuration",
            "expected a JSON object",
        ));
    };

    let cni_version = match map.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "cniVersion must be a string",
                "",
            ));
        }
        None => {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "configuration has no cniVersion",
                format!("supported versions: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
    };
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("incompatible CNI version {cni_version}"),
            format!("supported versions: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }

    for key in map.keys() {
        if !SPEC_KEYS.contains(&key.as_str())
            && !TABBY_KEYS.contains(&key.as_str())
            && !key.starts_with("cni.dev/")
        {
            return Err(invalid(
                format!("unknown configuration key {key:?}"),
                format!(
                    "tabby accepts {} and the keys of the CNI spec",
                    TABBY_KEYS.join(", ")
                ),
            ));
        }
    }

    let name = match map.get("name") {
        Some(Value::String(n)) => n.clone(),
        Some(_) => return Err(CniError::new(Code::Decode, "name must be a string", "")),
        None => return Err(invalid("missing network name", "")),
    };
    validate_network_name(&name)?;
    match map.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(CniError::new(Code::Decode, "type must be a string", "")),
        None => return Err(invalid("missing plugin type", "")),
    }

    let mtu = match map.get("mtu") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m @ 68..=65535) => Some(m as u32),
            _ => {
                return Err(invalid(
                    format!("mtu {n} is out of range"),
                    "mtu must be 68..=65535",
                ));
            }
        },
        Some(_) => return Err(CniError::new(Code::Decode, "mtu must be a number", "")),
    };
    let data_dir = abs_path(map, "dataDir", "/var/lib/tabby")?;
    let run_dir = abs_path(map, "runDir", "/run/tabby")?;
    let agent_socket = match map.get("agentSocket") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if Path::new(s).is_absolute() => Some(PathBuf::from(s)),
        Some(Value::String(s)) => {
            return Err(invalid(
                format!("agentSocket {s:?} must be an absolute path"),
                "",
            ));
        }
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "agentSocket must be a string",
                "",
            ));
        }
    };
    let ipam = parse_ipam(map.get("ipam"))?;
    let source_guard = match map.get("sourceGuard") {
        None | Some(Value::Null) => SourceGuard::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => SourceGuard::Auto,
            "tcx" => SourceGuard::Tcx,
            "clsact" => SourceGuard::Clsact,
            other => {
                return Err(invalid(
                    format!("unknown sourceGuard {other:?}"),
                    "sourceGuard is \"auto\", \"tcx\" or \"clsact\"",
                ));
            }
        },
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "sourceGuard must be a string",
                "",
            ));
        }
    };
    let egress_shaping = egress_shaping(map.get("runtimeConfig"))?;
    let dns = match map.get("dns") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(CniError::new(Code::Decode, "dns must be an object", "")),
    };
    let prev_result = match map.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "prevResult must be an object",
                "",
            ));
        }
    };
    // libcni writes the list under both names; the spec's is the first.
    let attachments = map
        .get("cni.dev/valid-attachments")
        .or_else(|| map.get("cni.dev/attachments"));
    let valid_attachments = match attachments {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<Vec<ValidAttachment>>(v.clone()).map_err(|e| {
                CniError::new(
                    Code::Decode,
                    "cannot decode cni.dev/valid-attachments",
                    e.to_string(),
                )
            })?,
        ),
    };

    Ok(NetConf {
        cni_version,
        name,
        mtu,
        data_dir,
        run_dir,
        agent_socket,
        ipam,
        source_guard,
        egress_shaping,
        dns,
        prev_result,
        valid_attachments,
        raw,
    })
}

/// Whether `runtimeConfig.bandwidth` (CNI conventions, bits/s and bits)
/// asks for egress shaping: a non-zero `egressRate` or `egressBurst`. The
/// rest of `runtimeConfig` is other plugins' business and not looked at.
fn egress_shaping(runtime: Option<&Value>) -> CniResult<bool> {
    let bw = match runtime {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(m)) => match m.get("bandwidth") {
            None | Some(Value::Null) => return Ok(false),
            Some(Value::Object(bw)) => bw,
            Some(_) => {
                return Err(CniError::new(
                    Code::Decode,
                    "runtimeConfig.bandwidth must be an object",
                    "",
                ));
            }
        },
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "runtimeConfig must be an object",
                "",
            ));
        }
    };
    let mut shaping = false;
    for key in ["egressRate", "egressBurst"] {
        match bw.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => shaping |= n.as_f64().is_some_and(|v| v != 0.0),
            Some(_) => {
                return Err(CniError::new(
                    Code::Decode,
                    format!("runtimeConfig.bandwidth.{key} must be a number"),
                    "",
                ));
            }
        }
    }
    Ok(shaping)
}

fn abs_path(map: &Map<String, Value>, key: &str, default: &str) -> CniResult<PathBuf> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        Some(Value::String(s)) => Err(invalid(format!("{key} {s:?} must be an absolute path"), "")),
        Some(_) => Err(CniError::new(
            Code::Decode,
            format!("{key} must be a string"),
            "",
        )),
    }
}

fn parse_ipam(v: Option<&Value>) -> CniResult<IpamConf> {
    let map = match v {
        None | Some(Value::Null) => {
            return Ok(IpamConf::Tabby {
                subnets: Vec::new(),
            });
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Err(CniError::new(Code::Decode, "ipam must be an object", "")),
    };
    let ty = match map.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        Some(Value::String(_)) | None => return Err(invalid("ipam.type is required", "")),
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "ipam.type must be a string",
                "",
            ));
        }
    };
    if ty != TABBY_IPAM {
        if ty.contains('/') || ty == "." || ty == ".." {
            return Err(invalid(
                format!("ipam.type {ty:?} is not a plugin name"),
                "",
            ));
        }
        return Ok(IpamConf::Delegate {
            plugin: ty.to_string(),
        });
    }
    for key in map.keys() {
        if key != "type" && key != "subnets" {
            return Err(invalid(
                format!("unknown ipam key {key:?}"),
                "tabby-ipam accepts type and subnets",
            ));
        }
    }
    let subnets = match map.get("subnets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out: Vec<IpNet> = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(CniError::new(
                        Code::Decode,
                        "ipam.subnets must be a list of CIDR strings",
                        item.to_string(),
                    ));
                };
                let net: IpNet = s.parse().map_err(|e| {
                    invalid(format!("ipam.subnets: {s:?} is not a CIDR"), format!("{e}"))
                })?;
                if net.trunc() != net {
                    return Err(invalid(
                        format!("ipam.subnets: {s:?} has host bits set"),
                        format!("did you mean {}?", net.trunc()),
                    ));
                }
                if let Err(why) = check_pool(&net) {
                    return Err(invalid(
                        format!(
                            "ipam.subnets[{}]: {net} is not a usable pod pool",
                            out.len()
                        ),
                        why,
                    ));
                }
                if let Some(other) = out.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                    return Err(invalid(format!("ipam.subnets: {net} overlaps {other}"), ""));
                }
                out.push(net);
            }
            out
        }
        Some(_) => {
            return Err(CniError::new(
                Code::Decode,
                "ipam.subnets must be a list",
                "",
            ));
        }
    };
    Ok(IpamConf::Tabby { subnets })
}

/// Address ranges that can never be pod pools, with the reason given when
/// a subnet overlaps one (RFC 6890 special-purpose registries).
const NOT_POOLS: [(&str, &str); 10] = [
    (
        "0.0.0.0/8",
        "overlaps 0.0.0.0/8 (\"this network\", the unspecified address)",
    ),
    ("127.0.0.0/8", "overlaps the loopback range 127.0.0.0/8"),
    (
        "169.254.0.0/16",
        "overlaps the link-local range 169.254.0.0/16 (the pods' gateway lives there)",
    ),
    ("224.0.0.0/4", "overlaps the multicast range 224.0.0.0/4"),
    (
        "255.255.255.255/32",
        "contains the limited broadcast address 255.255.255.255",
    ),
    ("::/128", "contains the unspecified address ::"),
    ("::1/128", "contains the loopback address ::1"),
    (
        "::ffff:0:0/96",
        "overlaps the IPv4-mapped range ::ffff:0:0/96",
    ),
    (
        "fe80::/10",
        "overlaps the link-local range fe80::/10 (the pods' gateway lives there)",
    ),
    ("ff00::/8", "overlaps the multicast range ff00::/8"),
];

/// The longest IPv4 pool prefix. The IPAM reserves a pool's network and
/// broadcast addresses only from /30 down (a /30 keeps two of its four);
/// /31 and /32 are point-to-point links (RFC 3021) and host routes: under
/// the reservation every other pool gets they leave no usable address.
pub const MAX_POOL_PREFIX_V4: u8 = 30;

/// The longest IPv6 pool prefix: the IPAM reserves the subnet-router
/// anycast address (the first) from /126 down; /127 is a point-to-point
/// link (RFC 6164) and /128 a single address, which leaves none.
pub const MAX_POOL_PREFIX_V6: u8 = 126;

/// Why `net` cannot be a pod pool, if it cannot: the default route, a
/// special-purpose range, or a prefix too long to leave a usable address.
pub fn check_pool(net: &IpNet) -> Result<(), String> {
    if net.prefix_len() == 0 {
        return Err(
            "a default route is not a pod pool: it covers every address, the \
                    unspecified, loopback, multicast and broadcast ones included"
                .to_string(),
        );
    }
    for (range, why) in NOT_POOLS {
        if let Ok(r) = range.parse::<IpNet>()
            && (r.contains(net) || net.contains(&r))
        {
            return Err(why.to_string());
        }
    }
    let max = if net.addr().is_ipv4() {
        MAX_POOL_PREFIX_V4
    } else {
        MAX_POOL_PREFIX_V6
    };
    if net.prefix_len() > max {
        return Err(format!(
            "a /{} leaves no usable pod address: pools are at most /{max}",
            net.prefix_len()
        ));
    }
    Ok(())
}

/// CNI spec: a network name starts with an alphanumeric character, then
/// alphanumerics, `_`, `.`, `-`.
fn validate_network_name(name: &str) -> CniResult<()> {
    if valid_identifier(name) {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid network name {name:?}"),
            "allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*",
        ))
    }
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn env_err(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidEnvironment, msg, "")
}

/// The process environment as text. A `CNI_*` variable that is not valid
/// UTF-8 is an error (code 4, naming it); any other such variable is not
/// ours to read and is ignored. Never panics, unlike `std::env::vars`.
pub fn collect_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> CniResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        let cni = k.as_encoded_bytes().starts_with(b"CNI_");
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => {
                out.insert(k, v);
            }
            (k, _) if cni => {
                let name = match k {
                    Ok(k) => k,
                    Err(raw) => raw.to_string_lossy().into_owned(),
                };
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("{name} is not valid UTF-8"),
                    "CNI variables must be text",
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Reads `CNI_COMMAND`.
pub fn parse_verb(vars: &BTreeMap<String, String>) -> CniResult<Verb> {
    match vars.get("CNI_COMMAND") {
        None => Err(env_err("CNI_COMMAND is not set")),
        Some(c) => Verb::parse(c).ok_or_else(|| env_err(format!("unknown CNI_COMMAND {c:?}"))),
    }
}

/// Reads and validates the rest of the environment for `verb`.
pub fn parse_env(verb: Verb, vars: &BTreeMap<String, String>) -> CniResult<Env> {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    let needs_attachment = matches!(verb, Verb::Add | Verb::Del | Verb::Check);
    let mut missing = Vec::new();
    if needs_attachment {
        for k in ["CNI_CONTAINERID", "CNI_IFNAME"] {
            if get(k).is_none() {
                missing.push(k);
            }
        }
        if verb != Verb::Del && get("CNI_NETNS").is_none() {
            missing.push("CNI_NETNS");
        }
    }
    if verb != Verb::Del && verb != Verb::Version && get("CNI_PATH").is_none() {
        missing.push("CNI_PATH");
    }
    if !missing.is_empty() {
        return Err(env_err(format!(
            "required environment variables missing: {}",
            missing.join(", ")
        )));
    }

    let mut env = Env {
        container_id: get("CNI_CONTAINERID").unwrap_or_default(),
        netns: get("CNI_NETNS").map(PathBuf::from),
        ifname: get("CNI_IFNAME").unwrap_or_default(),
        raw_args: get("CNI_ARGS"),
        path: get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default(),
        ..Env::default()
    };
    if needs_attachment {
        if !valid_identifier(&env.container_id) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "invalid characters in CNI_CONTAINERID",
                env.container_id.clone(),
            ));
        }
        validate_ifname(&env.ifname)?;
        if let Some(ns) = &env.netns
            && !ns.is_absolute()
        {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "CNI_NETNS must be an absolute path",
                ns.display().to_string(),
            ));
        }
    }
    if let Some(args) = &env.raw_args {
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "CNI_ARGS: expected KEY=VALUE pairs separated by ';'",
                    pair.to_string(),
                ));
            };
            match k {
                "K8S_POD_NAMESPACE" if !v.is_empty() => env.pod_namespace = Some(v.to_string()),
                "K8S_POD_NAME" if !v.is_empty() => env.pod_name = Some(v.to_string()),
                _ => {}
            }
        }
    }
    Ok(env)
}

/// Linux interface name rules: 1..=15 bytes, not `.`/`..`, no `/`, `:` or
/// white space.
fn validate_ifname(name: &str) -> CniResult<()> {
    let bad = name.is_empty()
        || name.len() > tabby_common::naming::IFNAME_MAX
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::new(
            Code::InvalidEnvironment,
            "invalid CNI_IFNAME",
            name.to_string(),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> CniResult<NetConf> {
        parse_conf(s.as_bytes())
    }

    fn code(r: CniResult<NetConf>) -> u32 {
        r.map(|_| 0).unwrap_or_else(|e| e.code as u32)
    }

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"k8s","type":"tabby"}"#).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/tabby"));
        assert_eq!(c.run_dir, PathBuf::from("/run/tabby"));
        assert_eq!(c.mtu, None);
        assert_eq!(c.agent_socket, None);
        assert_eq!(c.ipam, IpamConf::Tabby { subnets: vec![] });
    }

    #[test]
    fn the_type_value_is_not_checked() {
        assert_eq!(
            code(conf(
                r#"{"cniVersion":"1.0.0","name":"n","type":"renamed"}"#
            )),
            0
        );
    }

    #[test]
    fn every_documented_key_is_accepted() {
        let c = conf(
            r#"{"cniVersion":"0.4.0","name":"n","type":"tabby","mtu":1400,"dataDir":"/d","runDir":"/r",
                "agentSocket":"/r/agent.sock","sourceGuard":"tcx","ipam":{"type":"tabby-ipam","subnets":["10.0.0.0/24","fd00::/120"]},
                "args":{},"runtimeConfig":{},"capabilities":{"portMappings":true},"dns":{"nameservers":["10.0.0.10"]},
                "cni.dev/example":1}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.agent_socket, Some(PathBuf::from("/r/agent.sock")));
        assert!(matches!(c.ipam, IpamConf::Tabby { ref subnets } if subnets.len() == 2));
    }

    #[test]
    fn malformed_inputs_get_their_spec_codes() {
        let cases: &[(&str, u32)] = &[
            ("", 6),
            ("not json", 6),
            ("[]", 6),
            (r#"{"name":"n","type":"t"}"#, 1),
            (r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, 1),
            (r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#, 1),
            (r#"{"cniVersion":1,"name":"n","type":"t"}"#, 6),
            (r#"{"cniVersion":"1.0.0","type":"t"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"-bad","type":"t"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","bogus":1}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":10}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#,
                6,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","dataDir":"rel"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","x":1}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","subnets":["nope"]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","subnets":["10.0.0.1/24"]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","subnets":["10.0.0.0/24","10.0.0.0/25"]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","subnets":[1]}}"#,
                6,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":"x"}"#,
                6,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(code(conf(input)), *want, "input {input}");
        }
    }

    #[test]
    fn source_guard_defaults_to_auto_and_refuses_unknown_modes_naming_the_key() {
        let base = r#"{"cniVersion":"1.1.0","name":"n","type":"t""#;
        assert_eq!(
            conf(&format!("{base}}}")).unwrap().source_guard,
            SourceGuard::Auto
        );
        for (v, want) in [
            ("auto", SourceGuard::Auto),
            ("tcx", SourceGuard::Tcx),
            ("clsact", SourceGuard::Clsact),
        ] {
            let c = conf(&format!(r#"{base},"sourceGuard":"{v}"}}"#)).unwrap();
            assert_eq!(c.source_guard, want, "{v}");
        }
        for bad in [r#""TCX""#, r#""ebpf""#, r#""""#] {
            let e = conf(&format!(r#"{base},"sourceGuard":{bad}}}"#)).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{bad}");
            assert!(e.msg.contains("sourceGuard"), "{e}");
        }
        let e = conf(&format!(r#"{base},"sourceGuard":1}}"#)).unwrap_err();
        assert_eq!(e.code, Code::Decode);
        assert!(e.msg.contains("sourceGuard"), "{e}");
    }

    #[test]
    fn only_a_non_zero_egress_rate_or_burst_asks_for_egress_shaping() {
        let with = |rc: &str| {
            conf(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","runtimeConfig":{rc}}}"#
            ))
        };
        let cases = [
            (r#"{}"#, false),
            (r#"{"portMappings":[]}"#, false),
            (
                r#"{"bandwidth":{"ingressRate":1000000,"ingressBurst":100000}}"#,
                false,
            ),
            (r#"{"bandwidth":{"egressRate":0,"egressBurst":0}}"#, false),
            (r#"{"bandwidth":{"egressRate":1000000}}"#, true),
            (r#"{"bandwidth":{"egressBurst":100000}}"#, true),
            (
                r#"{"bandwidth":{"ingressRate":1,"ingressBurst":1,"egressRate":20000000,"egressBurst":1000000}}"#,
                true,
            ),
        ];
        for (rc, want) in cases {
            assert_eq!(with(rc).unwrap().egress_shaping, want, "{rc}");
        }
        let e = with(r#"{"bandwidth":{"egressRate":"20M"}}"#).unwrap_err();
        assert_eq!(e.code, Code::Decode);
        assert!(e.msg.contains("egressRate"), "{e}");
        assert_eq!(with(r#"{"bandwidth":[]}"#).unwrap_err().code, Code::Decode);
    }

    #[test]
    fn auto_takes_clsact_unless_egress_is_shaped_and_forced_modes_never_fall_back() {
        use GuardHook::{Clsact, Tcx};
        assert_eq!(SourceGuard::Auto.plan(false), (Clsact, Some(Tcx)));
        assert_eq!(SourceGuard::Auto.plan(true), (Tcx, Some(Clsact)));
        for shaping in [false, true] {
            assert_eq!(SourceGuard::Tcx.plan(shaping), (Tcx, None));
            assert_eq!(SourceGuard::Clsact.plan(shaping), (Clsact, None));
        }
    }

    #[test]
    fn other_ipam_types_are_delegated() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local","ranges":[]}}"#).unwrap();
        assert_eq!(
            c.ipam,
            IpamConf::Delegate {
                plugin: "host-local".into()
            }
        );
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_errors_are_code_4() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
            ),
        ];
        let env = parse_env(Verb::Add, &vars(&full)).unwrap();
        assert_eq!(env.pod(), Some(("ns", "p")));
        assert_eq!(
            parse_verb(&vars(&[])).unwrap_err().code,
            Code::InvalidEnvironment
        );
        assert_eq!(
            parse_verb(&vars(&[("CNI_COMMAND", "FOO")]))
                .unwrap_err()
                .code,
            Code::InvalidEnvironment
        );
        for drop in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let v: Vec<_> = full.iter().copied().filter(|(k, _)| *k != drop).collect();
            assert_eq!(
                parse_env(Verb::Add, &vars(&v)).unwrap_err().code,
                Code::InvalidEnvironment,
                "{drop}"
            );
        }
        let bad = |k: &str, val: &str| {
            let v: Vec<_> = full
                .iter()
                .map(|(kk, vv)| if *kk == k { (*kk, val) } else { (*kk, *vv) })
                .collect();
            parse_env(Verb::Add, &vars(&v)).unwrap_err().code
        };
        assert_eq!(bad("CNI_CONTAINERID", "a/b"), Code::InvalidEnvironment);
        assert_eq!(
            bad("CNI_IFNAME", "averyveryverylongname"),
            Code::InvalidEnvironment
        );
        assert_eq!(bad("CNI_IFNAME", "a:b"), Code::InvalidEnvironment);
        assert_eq!(bad("CNI_NETNS", "relative"), Code::InvalidEnvironment);
        assert_eq!(bad("CNI_ARGS", "novalue"), Code::InvalidEnvironment);
    }

    #[test]
    fn only_usable_pools_pass() {
        let refused = [
            "0.0.0.0/0",
            "::/0",
            "0.0.0.0/8",
            "0.0.0.0/16",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "224.0.0.0/4",
            "239.1.0.0/16",
            "169.254.1.0/24",
            "255.255.255.255/32",
            "255.255.255.0/24",
            "128.0.0.0/1",
            "10.0.0.0/31",
            "10.0.0.4/32",
            "::/128",
            "::1/128",
            "::/64",
            "::ffff:10.0.0.0/120",
            "fe80::/10",
            "fe80::/64",
            "ff00::/8",
            "ff02::/16",
            "fd00::/127",
            "fd00::/128",
        ];
        for s in refused {
            assert!(check_pool(&s.parse().unwrap()).is_err(), "{s} was accepted");
        }
        for s in [
            "10.0.0.0/8",
            "10.0.0.0/30",
            "100.64.0.0/10",
            "192.168.0.0/16",
            "240.0.0.0/5",
            "fd00::/8",
            "fd00::/126",
            "2001:db8::/64",
        ] {
            assert_eq!(check_pool(&s.parse().unwrap()), Ok(()), "{s}");
        }
    }

    #[test]
    fn a_refused_subnet_names_its_index_and_is_code_7() {
        let e = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tabby-ipam","subnets":["10.1.0.0/16","0.0.0.0/0"]}}"#).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.contains("ipam.subnets[1]"), "{e}");
    }

    #[test]
    fn a_cni_variable_that_is_not_utf8_is_code_4_and_others_are_ignored() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'x', 0xff]);
        let e = collect_env([
            (OsString::from("CNI_COMMAND"), OsString::from("ADD")),
            (OsString::from("CNI_ARGS"), bad()),
        ])
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_ARGS"), "{e}");
        let e = collect_env([(
            OsString::from_vec(b"CNI_\xff".to_vec()),
            OsString::from("1"),
        )])
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        let ok = collect_env([
            (OsString::from("CNI_COMMAND"), OsString::from("DEL")),
            (OsString::from("LANG"), bad()),
            (bad(), OsString::from("v")),
        ])
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok["CNI_COMMAND"], "DEL");
    }

    #[test]
    fn del_needs_no_netns() {
        let v = vars(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert!(parse_env(Verb::Del, &v).unwrap().netns.is_none());
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }
}
