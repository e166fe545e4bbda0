//! The nftables dataplane: the index's per-endpoint rules rendered into
//! one table, `inet tabby`, changed only by atomic `nft -f` transactions.
//!
//! The table (as `nft list table inet tabby` shows it):
//!
//! ```text
//! table inet tabby {
//!   set s_<set>_4 { type ipv4_addr }                 # pods selected by a peer
//!   set s_<set>_6 { type ipv6_addr }
//!   set s_<set>_4 { type ipv4_addr . inet_proto . inet_service }   # egress to named ports
//!   set workloads { type ifname }                    # every endpoint this agent programs
//!   map ep_from { type ifname : verdict }            # "tabX" : goto out_tabX
//!   map ep_to { type ifname : verdict }              # "tabX" : goto in_tabX
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname "tab*" ct state invalid drop
//!     oifname "tab*" ct state invalid drop
//!     ct state established,related accept            # replies of allowed connections
//!     iifname "tab*" jump from_wl                    # the sender's egress policy
//!     oifname "tab*" jump to_wl                      # the receiver's ingress policy
//!   }
//!   chain input { ... iifname "tab*" jump from_wl }  # pod -> node: egress policy
//!   chain output { oifname "tab*" oifname != @workloads drop }   # node -> pod: allowed
//!   chain from_wl { iifname vmap @ep_from; drop }    # a workload tabby does not know: dropped
//!   chain to_wl { oifname vmap @ep_to; drop }
//!   chain out_tabX { <rule> counter return; ...; counter drop }  # isolated: drop the rest
//!   chain in_tabX { ... }
//! }
//! ```
//!
//! Policy changes that only move pods in or out of a selector change set
//! elements, not rules. The agent's core keeps the model of what it
//! programmed and sends a [`DataplaneChange`] naming only what changed;
//! [`change_script`] turns it into one transaction (or the whole table for
//! a full change). The ruleset is never parsed back (verdict maps do not
//! round-trip through `nft -j`), except to notice that someone flushed the
//! table, which triggers a full resync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use tabby_policy::{
    EndpointPolicy, Peer, PeerMatch, PodKey, PortMatch, PortRange, PortTriple, Protocol, Rule,
};

use crate::dataplane::{
    Applied, Dataplane, DataplaneChange, DataplaneError, EndpointChange, SetChange, SetMembers,
};

/// The table tabby owns.
pub const TABLE: &str = "tabby";

/// Where set members come from (the policy index), looked up only for the
/// sets local endpoints refer to.
pub trait SetSource {
    /// Members of an address set.
    fn ip_set(&self, name: &str) -> Option<&BTreeSet<IpAddr>>;
    /// Members of a named-port set.
    fn port_set(&self, name: &str) -> Option<&BTreeSet<PortTriple>>;
}

impl SetSource for tabby_policy::PolicyIndex {
    fn ip_set(&self, name: &str) -> Option<&BTreeSet<IpAddr>> {
        tabby_policy::PolicyIndex::ip_set(self, name)
    }
    fn port_set(&self, name: &str) -> Option<&BTreeSet<PortTriple>> {
        tabby_policy::PolicyIndex::port_set(self, name)
    }
}

/// Explicit sets, for tests and tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Local endpoints by host interface name.
    pub endpoints: BTreeMap<String, EndpointState>,
    /// Members of address sets, by the index's set name.
    pub ip_sets: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Members of named-port sets, by the index's set name.
    pub port_sets: BTreeMap<String, BTreeSet<PortTriple>>,
}

impl SetSource for Desired {
    fn ip_set(&self, name: &str) -> Option<&BTreeSet<IpAddr>> {
        self.ip_sets.get(name)
    }
    fn port_set(&self, name: &str) -> Option<&BTreeSet<PortTriple>> {
        self.port_sets.get(name)
    }
}

/// One local endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointState {
    /// The pod.
    pub pod: PodKey,
    /// Its policy.
    pub policy: EndpointPolicy,
}

/// The kind of an nftables set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetType {
    /// `ipv4_addr`.
    V4,
    /// `ipv6_addr`.
    V6,
    /// `ipv4_addr . inet_proto . inet_service`.
    V4Port,
    /// `ipv6_addr . inet_proto . inet_service`.
    V6Port,
}

impl SetType {
    fn nft(self) -> &'static str {
        match self {
            SetType::V4 => "ipv4_addr",
            SetType::V6 => "ipv6_addr",
            SetType::V4Port => "ipv4_addr . inet_proto . inet_service",
            SetType::V6Port => "ipv6_addr . inet_proto . inet_service",
        }
    }
}

/// The compiled table: exactly what is (to be) in the kernel, as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    /// Sets: name -> (type, elements).
    pub sets: BTreeMap<String, (SetType, BTreeSet<String>)>,
    /// Endpoint chains: name -> rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Host interfaces of the endpoints.
    pub workloads: BTreeSet<String>,
}

fn nft_set_name(set: &str, ty: SetType) -> String {
    let clean: String = set
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let suffix = match ty {
        SetType::V4 | SetType::V4Port => "4",
        SetType::V6 | SetType::V6Port => "6",
    };
    format!("s_{clean}_{suffix}")
}

/// Chain of an endpoint's ingress rules.
pub fn in_chain(iface: &str) -> String {
    format!("in_{iface}")
}

/// Chain of an endpoint's egress rules.
pub fn out_chain(iface: &str) -> String {
    format!("out_{iface}")
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn port_expr(r: &PortRange) -> String {
    let proto = proto_name(r.protocol);
    if r.first <= 1 && r.last == u16::MAX {
        format!("meta l4proto {proto}")
    } else if r.first == r.last {
        format!("meta l4proto {proto} th dport {}", r.first)
    } else {
        format!("meta l4proto {proto} th dport {}-{}", r.first, r.last)
    }
}

/// Renders the rules of one direction. `dir` is "saddr" for ingress (the
/// peer is the source) and "daddr" for egress.
fn render_rules(rules: &[Rule], dir: &str, sets: &mut Vec<(String, SetType)>) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules {
        let ports: Vec<String> = match &rule.ports {
            PortMatch::Any => vec![String::new()],
            PortMatch::Ports(p) => p.iter().map(port_expr).collect(),
        };
        let peers: Vec<String> = match &rule.peers {
            PeerMatch::Any => vec![String::new()],
            PeerMatch::Peers(peers) => peers
                .iter()
                .flat_map(|p| peer_exprs(p, dir, sets))
                .collect(),
        };
        for peer in &peers {
            for port in &ports {
                let parts = [peer.as_str(), port.as_str(), "counter return"];
                out.push(
                    parts
                        .iter()
                        .filter(|p| !p.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
    }
    out
}

fn peer_exprs(peer: &Peer, dir: &str, sets: &mut Vec<(String, SetType)>) -> Vec<String> {
    match peer {
        Peer::Pods(set) => {
            let (s4, s6) = (
                nft_set_name(set, SetType::V4),
                nft_set_name(set, SetType::V6),
            );
            sets.push((set.clone(), SetType::V4));
            sets.push((set.clone(), SetType::V6));
            vec![format!("ip {dir} @{s4}"), format!("ip6 {dir} @{s6}")]
        }
        Peer::PodPorts(set) => {
            let (s4, s6) = (
                nft_set_name(set, SetType::V4Port),
                nft_set_name(set, SetType::V6Port),
            );
            sets.push((set.clone(), SetType::V4Port));
            sets.push((set.clone(), SetType::V6Port));
            vec![
                format!("ip {dir} . meta l4proto . th dport @{s4}"),
                format!("ip6 {dir} . meta l4proto . th dport @{s6}"),
            ]
        }
        Peer::Block { cidr, except } => {
            let fam = if cidr.addr().is_ipv4() { "ip" } else { "ip6" };
            let holes: Vec<String> = except
                .iter()
                .filter(|e| e.addr().is_ipv4() == cidr.addr().is_ipv4())
                .map(|e| e.trunc().to_string())
                .collect();
            let mut expr = format!("{fam} {dir} {}", cidr.trunc());
            if !holes.is_empty() {
                let _ = write!(expr, " {fam} {dir} != {{ {} }}", holes.join(", "));
            }
            vec![expr]
        }
    }
}

fn endpoint_chain(
    rules: Option<&Vec<Rule>>,
    dir: &str,
    sets: &mut Vec<(String, SetType)>,
) -> Vec<String> {
    match rules {
        // Not isolated in this direction: the chain ends and control
        // returns, which lets the packet through.
        None => Vec::new(),
        Some(rules) => {
            let mut out = render_rules(rules, dir, sets);
            out.push("counter drop".to_string());
            out
        }
    }
}

fn element(ip: &IpAddr) -> String {
    ip.to_string()
}

/// Compiles explicit desired state into table contents.
pub fn compile(d: &Desired) -> Compiled {
    compile_with(&d.endpoints, d)
}

/// Compiles local endpoints, with set members from `d`.
pub fn compile_with(endpoints: &BTreeMap<String, EndpointState>, d: &impl SetSource) -> Compiled {
    let mut c = Compiled::default();
    let mut used: Vec<(String, SetType)> = Vec::new();
    for (iface, ep) in endpoints {
        c.workloads.insert(iface.clone());
        c.chains.insert(
            in_chain(iface),
            endpoint_chain(ep.policy.ingress.as_ref(), "saddr", &mut used),
        );
        c.chains.insert(
            out_chain(iface),
            endpoint_chain(ep.policy.egress.as_ref(), "daddr", &mut used),
        );
    }
    for (set, ty) in used {
        let name = nft_set_name(&set, ty);
        if c.sets.contains_key(&name) {
            continue;
        }
        let elements: BTreeSet<String> = match ty {
            SetType::V4 | SetType::V6 => d
                .ip_set(&set)
                .into_iter()
                .flatten()
                .filter(|ip| ip.is_ipv4() == (ty == SetType::V4))
                .map(element)
                .collect(),
            SetType::V4Port | SetType::V6Port => d
                .port_set(&set)
                .into_iter()
                .flatten()
                .filter(|(ip, _, _)| ip.is_ipv4() == (ty == SetType::V4Port))
                .map(|(ip, p, port)| format!("{} . {} . {port}", element(ip), proto_name(*p)))
                .collect(),
        };
        c.sets.insert(name, (ty, elements));
    }
    c
}

fn quoted_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items
        .into_iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A script that replaces the whole table in one transaction.
pub fn full_script(c: &Compiled) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for (name, (ty, elements)) in &c.sets {
        let _ = write!(s, "  set {name} {{\n    type {}\n", ty.nft());
        if !elements.is_empty() {
            let _ = writeln!(
                s,
                "    elements = {{ {} }}",
                elements.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "  set workloads {{\n    type ifname");
    if !c.workloads.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", quoted_list(&c.workloads));
    }
    let _ = writeln!(s, "  }}");
    let _ = write!(
        s,
        "  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"tab*\" ct state invalid counter drop comment \"tabby\"
    oifname \"tab*\" ct state invalid counter drop
    ct state established,related accept
    iifname \"tab*\" jump from_wl
    oifname \"tab*\" jump to_wl
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"tab*\" ct state invalid counter drop
    iifname \"tab*\" ct state established,related accept
    iifname \"tab*\" jump from_wl
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname \"tab*\" oifname != @workloads counter drop
  }}
"
    );
    for (name, rules) in &c.chains {
        let _ = writeln!(s, "  chain {name} {{");
        for r in rules {
            let _ = writeln!(s, "    {r}");
        }
        let _ = writeln!(s, "  }}");
    }
    for (map, chain) in [("ep_from", "out"), ("ep_to", "in")] {
        let _ = writeln!(s, "  map {map} {{\n    type ifname : verdict");
        if !c.workloads.is_empty() {
            let elements: Vec<String> = c
                .workloads
                .iter()
                .map(|w| format!("\"{w}\" : goto {chain}_{w}"))
                .collect();
            let _ = writeln!(s, "    elements = {{ {} }}", elements.join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = write!(
        s,
        "  chain from_wl {{
    iifname vmap @ep_from
    counter drop
  }}
  chain to_wl {{
    oifname vmap @ep_to
    counter drop
  }}
}}
"
    );
    s
}

/// A script that turns `old` into `new`; empty when they are equal.
pub fn diff_script(old: &Compiled, new: &Compiled) -> String {
    let mut s = String::new();
    let t = TABLE;
    // 1. Sets first, so new rules can refer to them.
    for (name, (ty, elements)) in &new.sets {
        match old.sets.get(name) {
            None => {
                let _ = writeln!(s, "add set inet {t} {name} {{ type {}; }}", ty.nft());
                if !elements.is_empty() {
                    let _ = writeln!(
                        s,
                        "add element inet {t} {name} {{ {} }}",
                        join(elements.iter())
                    );
                }
            }
            Some((_, before)) => {
                let added: Vec<&String> = elements.difference(before).collect();
                let removed: Vec<&String> = before.difference(elements).collect();
                if !added.is_empty() {
                    let _ = writeln!(
                        s,
                        "add element inet {t} {name} {{ {} }}",
                        join(added.into_iter())
                    );
                }
                if !removed.is_empty() {
                    let _ = writeln!(
                        s,
                        "delete element inet {t} {name} {{ {} }}",
                        join(removed.into_iter())
                    );
                }
            }
        }
    }
    // 2. Chains: new ones created, changed ones flushed and refilled.
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(before) if before == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain inet {t} {name}");
            }
            None => {
                let _ = writeln!(s, "add chain inet {t} {name}");
            }
        }
        for r in rules {
            let _ = writeln!(s, "add rule inet {t} {name} {r}");
        }
    }
    // 3. Dispatch: new workloads become reachable only now that their
    //    chains exist; gone ones are unhooked before their chains go.
    for w in new.workloads.difference(&old.workloads) {
        let _ = writeln!(s, "add element inet {t} workloads {{ \"{w}\" }}");
        let _ = writeln!(
            s,
            "add element inet {t} ep_from {{ \"{w}\" : goto out_{w} }}"
        );
        let _ = writeln!(s, "add element inet {t} ep_to {{ \"{w}\" : goto in_{w} }}");
    }
    for w in old.workloads.difference(&new.workloads) {
        let _ = writeln!(s, "delete element inet {t} ep_from {{ \"{w}\" }}");
        let _ = writeln!(s, "delete element inet {t} ep_to {{ \"{w}\" }}");
        let _ = writeln!(s, "delete element inet {t} workloads {{ \"{w}\" }}");
    }
    // 4. Then what nothing refers to any more.
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        let _ = writeln!(s, "delete chain inet {t} {name}");
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set inet {t} {name}");
    }
    s
}

/// The nft set names (v4, v6) of an index set.
fn family_sets(set: &str, ports: bool) -> [(String, SetType); 2] {
    let (t4, t6) = if ports {
        (SetType::V4Port, SetType::V6Port)
    } else {
        (SetType::V4, SetType::V6)
    };
    [(nft_set_name(set, t4), t4), (nft_set_name(set, t6), t6)]
}

/// The elements of a set's members in one family, as nft writes them.
fn member_elements(members: &SetMembers, v4: bool) -> BTreeSet<String> {
    match members {
        SetMembers::Addrs(m) => m
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .map(element)
            .collect(),
        SetMembers::Ports(m) => m
            .iter()
            .filter(|(ip, _, _)| ip.is_ipv4() == v4)
            .map(|(ip, p, port)| format!("{} . {} . {port}", element(ip), proto_name(*p)))
            .collect(),
    }
}

/// The table a full change describes.
pub fn compile_change(change: &DataplaneChange) -> Compiled {
    let mut d = Desired::default();
    for e in &change.endpoints {
        if let EndpointChange::Add { iface, pod, policy }
        | EndpointChange::Update { iface, pod, policy } = e
        {
            d.endpoints.insert(
                iface.to_string(),
                EndpointState {
                    pod: pod.clone(),
                    policy: policy.clone(),
                },
            );
        }
    }
    for s in &change.sets {
        if let SetChange::Create { name, members } = s {
            match members {
                SetMembers::Addrs(m) => {
                    d.ip_sets.insert(name.clone(), m.clone());
                }
                SetMembers::Ports(m) => {
                    d.port_sets.insert(name.clone(), m.clone());
                }
            }
        }
    }
    compile(&d)
}

/// The nft script of a change: the whole table for a full change, else
/// one transaction that touches only the sets and endpoints named. In
/// order: sets made or filled (so rules can refer to them), endpoint
/// chains, dispatch of new endpoints (only once their chains exist), then
/// gone endpoints unhooked before their chains and sets are deleted.
pub fn change_script(change: &DataplaneChange) -> String {
    if change.full {
        return full_script(&compile_change(change));
    }
    let t = TABLE;
    let mut s = String::new();
    for set in &change.sets {
        match set {
            SetChange::Create { name, members } => {
                let ports = matches!(members, SetMembers::Ports(_));
                for (v4, (nft_name, ty)) in [true, false].into_iter().zip(family_sets(name, ports))
                {
                    let _ = writeln!(s, "add set inet {t} {nft_name} {{ type {}; }}", ty.nft());
                    let elements = member_elements(members, v4);
                    if !elements.is_empty() {
                        let _ = writeln!(
                            s,
                            "add element inet {t} {nft_name} {{ {} }}",
                            join(elements.iter())
                        );
                    }
                }
            }
            SetChange::Update {
                name,
                added,
                removed,
            } => {
                let ports = matches!(added, SetMembers::Ports(_));
                for (v4, (nft_name, _)) in [true, false].into_iter().zip(family_sets(name, ports)) {
                    let add = member_elements(added, v4);
                    if !add.is_empty() {
                        let _ = writeln!(
                            s,
                            "add element inet {t} {nft_name} {{ {} }}",
                            join(add.iter())
                        );
                    }
                    let del = member_elements(removed, v4);
                    if !del.is_empty() {
                        let _ = writeln!(
                            s,
                            "delete element inet {t} {nft_name} {{ {} }}",
                            join(del.iter())
                        );
                    }
                }
            }
            SetChange::Delete { .. } => {}
        }
    }
    let mut unused = Vec::new();
    for e in &change.endpoints {
        let (iface, policy, new) = match e {
            EndpointChange::Add { iface, policy, .. } => (iface, policy, true),
            EndpointChange::Update { iface, policy, .. } => (iface, policy, false),
            EndpointChange::Remove { .. } => continue,
        };
        for (name, rules) in [
            (
                in_chain(iface.as_str()),
                endpoint_chain(policy.ingress.as_ref(), "saddr", &mut unused),
            ),
            (
                out_chain(iface.as_str()),
                endpoint_chain(policy.egress.as_ref(), "daddr", &mut unused),
            ),
        ] {
            if new {
                let _ = writeln!(s, "add chain inet {t} {name}");
            } else {
                let _ = writeln!(s, "flush chain inet {t} {name}");
            }
            for r in rules {
                let _ = writeln!(s, "add rule inet {t} {name} {r}");
            }
        }
    }
    for e in &change.endpoints {
        if let EndpointChange::Add { iface: w, .. } = e {
            let _ = writeln!(s, "add element inet {t} workloads {{ \"{w}\" }}");
            let _ = writeln!(
                s,
                "add element inet {t} ep_from {{ \"{w}\" : goto out_{w} }}"
            );
            let _ = writeln!(s, "add element inet {t} ep_to {{ \"{w}\" : goto in_{w} }}");
        }
    }
    for e in &change.endpoints {
        if let EndpointChange::Remove { iface: w } = e {
            let _ = writeln!(s, "delete element inet {t} ep_from {{ \"{w}\" }}");
            let _ = writeln!(s, "delete element inet {t} ep_to {{ \"{w}\" }}");
            let _ = writeln!(s, "delete element inet {t} workloads {{ \"{w}\" }}");
            let _ = writeln!(s, "delete chain inet {t} {}", in_chain(w.as_str()));
            let _ = writeln!(s, "delete chain inet {t} {}", out_chain(w.as_str()));
        }
    }
    for set in &change.sets {
        if let SetChange::Delete { name } = set {
            // Both kinds of an index set share the nft names.
            for (nft_name, _) in family_sets(name, false) {
                let _ = writeln!(s, "delete set inet {t} {nft_name}");
            }
        }
    }
    s
}

/// The nftables dataplane: one table, one `nft -f` transaction per change.
#[derive(Debug, Default)]
pub struct NftDataplane;

impl Dataplane for NftDataplane {
    fn apply(&mut self, change: &DataplaneChange) -> Result<Applied, DataplaneError> {
        let script = change_script(change);
        apply(&script).map_err(|e| match e {
            NftError::Spawn(e) => DataplaneError::Unavailable(e.to_string()),
            NftError::Refused { stderr } => DataplaneError::Refused(stderr),
        })?;
        Ok(Applied {
            bytes: script.len(),
            commands: script.lines().count(),
        })
    }

    fn intact(&mut self) -> bool {
        intact()
    }
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items.cloned().collect::<Vec<_>>().join(", ")
}

/// Errors of the nftables dataplane.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run.
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the transaction (nothing was changed).
    #[error("nft refused the transaction: {stderr}")]
    Refused {
        /// What nft printed.
        stderr: String,
    },
}

/// Runs one `nft -f -` transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// True when the table and its base chains are as tabby made them; false
/// after someone deleted or flushed the table.
pub fn intact() -> bool {
    let Ok(out) = Command::new("nft")
        .args(["-j", "list", "chain", "inet", TABLE, "forward"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The marker rule carries the comment "tabby"; a flush removes it.
    text.contains("\"comment\": \"tabby\"")
}

/// Deletes tabby's table (uninstall); a table already gone is success.
pub fn delete_table() -> Result<(), NftError> {
    apply(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
}

/// Per-endpoint drop counters: (chain name, packets) of each endpoint
/// chain's final drop rule, read from the kernel.
pub fn drop_counters() -> Result<Vec<(String, u64)>, NftError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stderr(Stdio::piped())
        .output()
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(chain) = rule["chain"].as_str() else {
            continue;
        };
        if !(chain.starts_with("in_") || chain.starts_with("out_")) {
            continue;
        }
        let exprs = rule["expr"].as_array();
        let is_drop = exprs.is_some_and(|e| e.iter().any(|x| x.get("drop").is_some()));
        if !is_drop {
            continue;
        }
        let packets = exprs
            .into_iter()
            .flatten()
            .find_map(|x| x["counter"]["packets"].as_u64())
            .unwrap_or(0);
        last.insert(chain.to_string(), packets);
    }
    Ok(last.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(set: &str) -> Peer {
        Peer::Pods(set.to_string())
    }

    fn tcp(port: u16) -> PortRange {
        PortRange {
            protocol: Protocol::Tcp,
            first: port,
            last: port,
        }
    }

    fn desired(policy: EndpointPolicy, members: &[&str]) -> Desired {
        let mut d = Desired::default();
        d.endpoints.insert(
            "tab0123456789ab".into(),
            EndpointState {
                pod: PodKey::new("x", "a"),
                policy,
            },
        );
        d.ip_sets.insert(
            "p-1".into(),
            members.iter().map(|m| m.parse().unwrap()).collect(),
        );
        d
    }

    #[test]
    fn an_isolated_endpoint_gets_its_rules_then_a_drop() {
        let policy = EndpointPolicy {
            ingress: Some(vec![Rule {
                peers: PeerMatch::Peers(vec![pods("p-1")]),
                ports: PortMatch::Ports(vec![tcp(80)]),
            }]),
            egress: None,
        };
        let c = compile(&desired(policy, &["10.0.0.1", "fd00::1"]));
        assert_eq!(
            c.chains["in_tab0123456789ab"],
            vec![
                "ip saddr @s_p_1_4 meta l4proto tcp th dport 80 counter return",
                "ip6 saddr @s_p_1_6 meta l4proto tcp th dport 80 counter return",
                "counter drop",
            ]
        );
        assert!(
            c.chains["out_tab0123456789ab"].is_empty(),
            "egress not isolated"
        );
        assert_eq!(
            c.sets["s_p_1_4"].1,
            BTreeSet::from(["10.0.0.1".to_string()])
        );
        assert_eq!(c.sets["s_p_1_6"].1, BTreeSet::from(["fd00::1".to_string()]));
    }

    #[test]
    fn deny_all_is_a_lone_drop() {
        let policy = EndpointPolicy {
            ingress: Some(vec![]),
            egress: Some(vec![]),
        };
        let c = compile(&desired(policy, &[]));
        assert_eq!(c.chains["in_tab0123456789ab"], vec!["counter drop"]);
        assert_eq!(c.chains["out_tab0123456789ab"], vec!["counter drop"]);
        assert!(c.sets.is_empty(), "no set referenced, none made");
    }

    #[test]
    fn blocks_ranges_and_named_ports_render() {
        let policy = EndpointPolicy {
            ingress: None,
            egress: Some(vec![
                Rule {
                    peers: PeerMatch::Peers(vec![Peer::Block {
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        except: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
                    }]),
                    ports: PortMatch::Ports(vec![
                        PortRange {
                            protocol: Protocol::Udp,
                            first: 5000,
                            last: 5010,
                        },
                        PortRange {
                            protocol: Protocol::Sctp,
                            first: 1,
                            last: 65535,
                        },
                    ]),
                },
                Rule {
                    peers: PeerMatch::Peers(vec![Peer::PodPorts("n-1".into())]),
                    ports: PortMatch::Any,
                },
                Rule {
                    peers: PeerMatch::Any,
                    ports: PortMatch::Any,
                },
            ]),
        };
        let mut d = desired(policy, &[]);
        d.port_sets.insert(
            "n-1".into(),
            BTreeSet::from([("10.0.0.9".parse().unwrap(), Protocol::Tcp, 8080)]),
        );
        let c = compile(&d);
        assert_eq!(
            c.chains["out_tab0123456789ab"],
            vec![
                "ip daddr 10.0.0.0/8 ip daddr != { 10.1.0.0/16 } meta l4proto udp th dport 5000-5010 counter return",
                "ip daddr 10.0.0.0/8 ip daddr != { 10.1.0.0/16 } meta l4proto sctp counter return",
                "ip daddr . meta l4proto . th dport @s_n_1_4 counter return",
                "ip6 daddr . meta l4proto . th dport @s_n_1_6 counter return",
                "counter return",
                "counter drop",
            ]
        );
        assert_eq!(
            c.sets["s_n_1_4"].1,
            BTreeSet::from(["10.0.0.9 . tcp . 8080".to_string()])
        );
    }

    #[test]
    fn a_membership_change_is_an_element_change_not_a_rule_change() {
        let policy = EndpointPolicy {
            ingress: Some(vec![Rule {
                peers: PeerMatch::Peers(vec![pods("p-1")]),
                ports: PortMatch::Any,
            }]),
            egress: None,
        };
        let a = compile(&desired(policy.clone(), &["10.0.0.1"]));
        let b = compile(&desired(policy, &["10.0.0.2"]));
        assert_eq!(
            diff_script(&a, &b),
            "add element inet tabby s_p_1_4 { 10.0.0.2 }\ndelete element inet tabby s_p_1_4 { 10.0.0.1 }\n"
        );
        assert_eq!(diff_script(&b, &b), "");
    }

    #[test]
    fn a_new_endpoint_is_hooked_only_after_its_chains_exist() {
        let a = Compiled::default();
        let b = compile(&desired(EndpointPolicy::default(), &[]));
        let s = diff_script(&a, &b);
        let chain = s.find("add chain inet tabby in_tab0123456789ab").unwrap();
        let hook = s
            .find("ep_to { \"tab0123456789ab\" : goto in_tab0123456789ab }")
            .unwrap();
        assert!(chain < hook, "{s}");
        let back = diff_script(&b, &a);
        let unhook = back.find("delete element inet tabby ep_to").unwrap();
        let gone = back
            .find("delete chain inet tabby in_tab0123456789ab")
            .unwrap();
        assert!(unhook < gone, "{back}");
    }
}
