//! Import and export policy per peer: which learned prefixes may enter the
//! RIB, and which of ours a peer may see. Pure values and functions; the
//! RIB calls [`ImportPolicy::check`] for every announced prefix and
//! [`ExportPolicy::allows`] for every prefix it would advertise.
//!
//! Three import policies:
//! - [`ImportPolicy::AcceptAll`]: the RFC rules only (the standalone
//!   binary's default).
//! - [`ImportPolicy::Members`]: a peer inside a cluster (the node mesh, a
//!   route reflector): a prefix is accepted only if the speaker that
//!   originated it (ORIGINATOR_ID when the route was reflected, else the
//!   peer itself) holds it: one of its blocks, or a host route (/32, /128)
//!   inside one of them.
//! - [`ImportPolicy::External`]: a router outside: everything except what
//!   overlaps a protected range (the cluster's address space, the node's
//!   own addresses and connected subnets, loopback, link-local, multicast,
//!   unspecified) and except the default route unless allowed, then ordered
//!   filter rules (first match wins). No rule can let a protected prefix
//!   in: only the default route can be allowed, by a flag or an `Accept`
//!   rule.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::packet::attribute::LargeCommunity;

/// Why a prefix was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectReason {
    /// `0.0.0.0/0` or `::/0` from a peer not allowed to send it.
    DefaultRoute,
    /// Overlaps the cluster's pod address space (external peers).
    PodSpace,
    /// Overlaps a node's address or a connected subnet.
    NodeAddress,
    /// Loopback (`127.0.0.0/8`, `::1`).
    Loopback,
    /// Link-local (`169.254.0.0/16`, `fe80::/10`), pods' gateway included.
    LinkLocal,
    /// Multicast (`224.0.0.0/4`, `ff00::/8`).
    Multicast,
    /// Unspecified, broadcast or otherwise reserved (`0.0.0.0/8`,
    /// `240.0.0.0/4`, `::/128`).
    Reserved,
    /// From a cluster peer, but not a block (or pod address) that the
    /// originating speaker holds.
    NotOriginatorsBlock,
    /// A filter rule said `Reject`.
    Filter,
}

impl RejectReason {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DefaultRoute => "default-route",
            Self::PodSpace => "pod-space",
            Self::NodeAddress => "node-address",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::NotOriginatorsBlock => "not-originators-block",
            Self::Filter => "filter",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rule compares a prefix with its CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The prefix is exactly the CIDR.
    Equal,
    /// The prefix is inside the CIDR (or equal to it).
    In,
    /// The prefix is not inside the CIDR.
    NotIn,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Let the prefix through.
    Accept,
    /// Refuse it.
    Reject,
}

/// One filter rule; rules are evaluated in order, the first match decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The CIDR the prefix is compared with (its family is the rule's).
    pub cidr: IpNet,
    /// How it is compared.
    pub operator: MatchOperator,
    /// Prefix lengths the rule applies to, inclusive (`None`: any).
    pub prefix_length: Option<(u8, u8)>,
    /// What a match does.
    pub action: Action,
}

impl Rule {
    /// Whether the rule applies to `prefix`.
    pub fn matches(&self, prefix: &IpNet) -> bool {
        if prefix.addr().is_ipv4() != self.cidr.addr().is_ipv4() {
            return false;
        }
        let inside = self.cidr.contains(prefix);
        let by_cidr = match self.operator {
            MatchOperator::Equal => prefix.trunc() == self.cidr.trunc(),
            MatchOperator::In => inside,
            MatchOperator::NotIn => !inside,
        };
        let len = prefix.prefix_len();
        by_cidr
            && self
                .prefix_length
                .is_none_or(|(min, max)| (min..=max).contains(&len))
    }
}

/// The first rule matching `prefix` decides; `None` when none matches.
pub fn evaluate(rules: &[Rule], prefix: &IpNet) -> Option<Action> {
    rules.iter().find(|r| r.matches(prefix)).map(|r| r.action)
}

/// Whether two prefixes overlap (one contains the other).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

const fn v4(a: [u8; 4], len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(
        Ipv4Addr::new(a[0], a[1], a[2], a[3]),
        len,
    ))
}

const fn v6(a: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(a, len))
}

/// Ranges no external peer may ever announce into, whatever the
/// configuration says.
pub const ALWAYS_PROTECTED: [(IpNet, RejectReason); 9] = [
    (v4([127, 0, 0, 0], 8), RejectReason::Loopback),
    (v4([169, 254, 0, 0], 16), RejectReason::LinkLocal),
    (v4([224, 0, 0, 0], 4), RejectReason::Multicast),
    (v4([0, 0, 0, 0], 8), RejectReason::Reserved),
    (v4([240, 0, 0, 0], 4), RejectReason::Reserved),
    (v6(Ipv6Addr::LOCALHOST, 128), RejectReason::Loopback),
    (v6(Ipv6Addr::UNSPECIFIED, 128), RejectReason::Reserved),
    (
        v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        RejectReason::LinkLocal,
    ),
    (
        v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        RejectReason::Multicast,
    ),
];

/// Import policy towards an external router.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct External {
    /// Ranges nothing may overlap, with the reason given when something
    /// does (the cluster's pod space, node addresses, connected subnets);
    /// [`ALWAYS_PROTECTED`] is checked on top.
    pub protected: Vec<(IpNet, RejectReason)>,
    /// The default route is accepted (without a rule saying so).
    pub allow_default_route: bool,
    /// Ordered rules; no match accepts.
    pub rules: Vec<Rule>,
}

/// The speakers of a cluster and the blocks each holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    /// Blocks by the member's address (its peering address and, for
    /// reflected routes, its BGP identifier).
    pub blocks: HashMap<IpAddr, Vec<IpNet>>,
}

impl Members {
    /// Whether `origin` holds `prefix`: one of its blocks, or a host route
    /// inside one of them.
    pub fn holds(&self, origin: IpAddr, prefix: &IpNet) -> bool {
        let host = prefix.prefix_len() == prefix.max_prefix_len();
        self.blocks.get(&origin).is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.trunc() == prefix.trunc() || (host && b.contains(prefix)))
        })
    }
}

/// What a peer may send us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImportPolicy {
    /// Everything the RFC checks let through.
    #[default]
    AcceptAll,
    /// A cluster member: only blocks the originating member holds.
    Members(Arc<Members>),
    /// An external router: everything but protected ranges.
    External(Arc<External>),
}

impl ImportPolicy {
    /// Checks one announced prefix; `origin` is the speaker that
    /// originated it (ORIGINATOR_ID of a reflected route, else the peer).
    pub fn check(&self, prefix: &IpNet, origin: IpAddr) -> Result<(), RejectReason> {
        match self {
            Self::AcceptAll => Ok(()),
            Self::Members(m) => {
                if m.holds(origin, prefix) {
                    Ok(())
                } else {
                    Err(RejectReason::NotOriginatorsBlock)
                }
            }
            Self::External(e) => check_external(e, prefix),
        }
    }
}

fn check_external(e: &External, prefix: &IpNet) -> Result<(), RejectReason> {
    let prefix = prefix.trunc();
    let rule = evaluate(&e.rules, &prefix);
    if prefix.prefix_len() == 0 {
        return match rule {
            Some(Action::Accept) => Ok(()),
            Some(Action::Reject) => Err(RejectReason::Filter),
            None if e.allow_default_route => Ok(()),
            None => Err(RejectReason::DefaultRoute),
        };
    }
    if let Some((_, why)) = e
        .protected
        .iter()
        .chain(ALWAYS_PROTECTED.iter())
        .find(|(range, _)| overlaps(range, &prefix))
    {
        return Err(*why);
    }
    match rule {
        Some(Action::Reject) => Err(RejectReason::Filter),
        Some(Action::Accept) | None => Ok(()),
    }
}

/// What we may send a peer (on top of the RFC rules and
/// `export_local_only`): ordered rules, no match accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportPolicy {
    /// Ordered rules.
    pub rules: Vec<Rule>,
}

impl ExportPolicy {
    /// Whether `prefix` may go to the peer.
    pub fn allows(&self, prefix: &IpNet) -> bool {
        evaluate(&self.rules, prefix) != Some(Action::Reject)
    }
}

/// A peer's policies; changing them does not restart the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// What the peer may send us.
    pub import: ImportPolicy,
    /// What we may send it.
    pub export: Arc<ExportPolicy>,
    /// Routes learned from this peer may be advertised to other peers
    /// (false keeps them on this speaker: a node-scoped upstream).
    pub readvertise: bool,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self {
            import: ImportPolicy::AcceptAll,
            export: Arc::new(ExportPolicy::default()),
            readvertise: true,
        }
    }
}

/// A BGP community as written in configuration: `AS:value` (RFC 1997,
/// both parts 16 bits) or `global:local1:local2` (RFC 8092, 32 bits each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Community {
    /// A standard community.
    Standard(u32),
    /// A large community.
    Large(LargeCommunity),
}

/// A community that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a community: `A:B` with 16-bit parts or `A:B:C` with 32-bit parts")]
pub struct BadCommunity(pub String);

impl std::str::FromStr for Community {
    type Err = BadCommunity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCommunity(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [a, b] => {
                let a: u16 = a.parse().map_err(|_| bad())?;
                let b: u16 = b.parse().map_err(|_| bad())?;
                Ok(Self::Standard((u32::from(a) << 16) | u32::from(b)))
            }
            [a, b, c] => Ok(Self::Large(LargeCommunity {
                global: a.parse().map_err(|_| bad())?,
                local1: b.parse().map_err(|_| bad())?,
                local2: c.parse().map_err(|_| bad())?,
            })),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Community {
    type Error = BadCommunity;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for Community {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Standard(c) => write!(f, "{}:{}", c >> 16, c & 0xffff),
            Self::Large(l) => write!(f, "{}:{}:{}", l.global, l.local1, l.local2),
        }
    }
}

impl From<Community> for String {
    fn from(c: Community) -> String {
        c.to_string()
    }
}

/// Communities attached to our own prefixes inside `cidr` (a prefix
/// inside several CIDRs gets all their communities).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixCommunities {
    /// Our prefixes inside this CIDR (or equal to it) get the communities.
    pub cidr: IpNet,
    /// The communities.
    pub communities: Vec<Community>,
}

/// The standard and large communities for our prefix `prefix`, sorted and
/// without duplicates.
pub fn communities_for(
    table: &[PrefixCommunities],
    prefix: &IpNet,
) -> (Vec<u32>, Vec<LargeCommunity>) {
    let mut standard = Vec::new();
    let mut large = Vec::new();
    for c in table.iter().filter(|t| t.cidr.contains(prefix)) {
        for x in &c.communities {
            match x {
                Community::Standard(v) => standard.push(*v),
                Community::Large(l) => large.push(*l),
            }
        }
    }
    standard.sort_unstable();
    standard.dedup();
    large.sort_unstable();
    large.dedup();
    (standard, large)
}

#[cfg(test)]
mod tests;
