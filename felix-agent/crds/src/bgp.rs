//! BGP policy resources: the `BGPFilter` kind, the pieces of
//! `BGPConfiguration` that shape announcements (communities, Service
//! addresses), and their parsing at the boundary into
//! [`tabby_bgp::policy`] values, refusing with the field's path.

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tabby_bgp::policy::{Action, Community, MatchOperator, PrefixCommunities, Rule};

use crate::{BGPConfigurationSpec, CIDR_PATTERN};

/// A field that does not hold what it must; the object is refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field's path, e.g. `spec.importV4[1].cidr`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses `s` as a CIDR (host bits are cleared).
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet, Invalid> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| invalid(field, format!("{s:?} is not a CIDR")))
}

/// Import and export filters for BGP peers, in the spirit of Calico's
/// BGPFilter: ordered rules per direction and family, the first match
/// decides, no match accepts. Peers refer to filters by name
/// (`BGPPeer.spec.filters`). Import rules cannot let in what the safe
/// defaults refuse (the cluster's addresses, node addresses and subnets,
/// loopback, link-local, multicast), except the default route.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "tabby.dev",
    version = "v1alpha1",
    kind = "BGPFilter",
    plural = "bgpfilters",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes sent to the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes received from the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes sent to the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes received from the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BGPFilterRule>,
}

/// One rule: a route matches when its prefix relates to `cidr` as
/// `matchOperator` says and its length is within `prefixLength`; without
/// `cidr` every route of the family matches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterRule {
    /// The CIDR routes are compared with (set together with `matchOperator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: Option<String>,
    /// `Equal`: the prefix is `cidr`; `In`: inside it (or equal); `NotIn`: not inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<BGPFilterMatchOperator>,
    /// Prefix lengths the rule applies to (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<BGPFilterPrefixLength>,
    /// What a match does.
    pub action: BGPFilterAction,
}

/// How a rule compares a prefix with its CIDR.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BGPFilterMatchOperator {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is inside the CIDR.
    In,
    /// The prefix is not inside the CIDR.
    NotIn,
}

/// What a matching rule does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BGPFilterAction {
    /// Let the route through.
    Accept,
    /// Refuse it.
    Reject,
}

/// An inclusive range of prefix lengths.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub struct BGPFilterPrefixLength {
    /// Shortest length (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub min: Option<u8>,
    /// Longest length (default 32 for IPv4, 128 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub max: Option<u8>,
}

/// A BGPFilter, parsed: rules per direction, IPv4 and IPv6 together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// Rules for routes received.
    pub import: Vec<Rule>,
    /// Rules for routes sent.
    pub export: Vec<Rule>,
}

fn parse_rules(field: &str, rules: &[BGPFilterRule], v4: bool) -> Result<Vec<Rule>, Invalid> {
    let max_len: u8 = if v4 { 32 } else { 128 };
    let any: IpNet = if v4 {
        IpNet::V4(ipnet::Ipv4Net::default())
    } else {
        IpNet::V6(ipnet::Ipv6Net::default())
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |f: &str| format!("{field}[{i}].{f}");
            let (cidr, operator) = match (&r.cidr, r.match_operator) {
                (Some(c), Some(op)) => {
                    let net = parse_cidr(&at("cidr"), c)?;
                    if net.addr().is_ipv4() != v4 {
                        return Err(invalid(
                            at("cidr"),
                            format!("{c} is not an IPv{} CIDR", if v4 { 4 } else { 6 }),
                        ));
                    }
                    let op = match op {
                        BGPFilterMatchOperator::Equal => MatchOperator::Equal,
                        BGPFilterMatchOperator::In => MatchOperator::In,
                        BGPFilterMatchOperator::NotIn => MatchOperator::NotIn,
                    };
                    (net, op)
                }
                (None, None) => (any, MatchOperator::In),
                (Some(_), None) => {
                    return Err(invalid(at("matchOperator"), "required with cidr"));
                }
                (None, Some(_)) => return Err(invalid(at("cidr"), "required with matchOperator")),
            };
            let prefix_length = match r.prefix_length {
                None => None,
                Some(p) => {
                    let (min, max) = (p.min.unwrap_or(0), p.max.unwrap_or(max_len));
                    if max > max_len {
                        return Err(invalid(
                            at("prefixLength.max"),
                            format!("{max} is longer than {max_len}"),
                        ));
                    }
                    if min > max {
                        return Err(invalid(
                            at("prefixLength.min"),
                            format!("{min} is above max {max}"),
                        ));
                    }
                    Some((min, max))
                }
            };
            Ok(Rule {
                cidr,
                operator,
                prefix_length,
                action: match r.action {
                    BGPFilterAction::Accept => Action::Accept,
                    BGPFilterAction::Reject => Action::Reject,
                },
            })
        })
        .collect()
}

impl BGPFilterSpec {
    /// Checks every rule and returns them as policy rules.
    pub fn parse(&self) -> Result<Filter, Invalid> {
        let mut import = parse_rules("spec.importV4", &self.import_v4, true)?;
        import.extend(parse_rules("spec.importV6", &self.import_v6, false)?);
        let mut export = parse_rules("spec.exportV4", &self.export_v4, true)?;
        export.extend(parse_rules("spec.exportV6", &self.export_v6, false)?);
        Ok(Filter { import, export })
    }
}

/// Communities for the announced prefixes inside `cidr`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixAdvertisement {
    /// Announced prefixes inside this CIDR (or equal to it) get the communities.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: String,
    /// Standard (`65000:100`) or large (`65000:1:2`) communities, or names from `spec.communities`.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// A named community, usable in `prefixAdvertisements`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedCommunity {
    /// The name.
    pub name: String,
    /// `A:B` (16-bit parts) or `A:B:C` (32-bit parts).
    pub value: String,
}

/// A CIDR of Service addresses every node announces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCidr {
    /// The CIDR.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: String,
}

/// What a BGPConfiguration adds to announcements, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advertisements {
    /// Communities by CIDR.
    pub communities: Vec<PrefixCommunities>,
    /// Service CIDRs every node announces (cluster, external and load
    /// balancer addresses together).
    pub service_cidrs: Vec<IpNet>,
}

impl BGPConfigurationSpec {
    /// Checks communities, prefix advertisements and Service CIDRs.
    pub fn advertisements(&self) -> Result<Advertisements, Invalid> {
        let mut named: Vec<(&str, Community)> = Vec::new();
        for (i, c) in self.communities.iter().enumerate() {
            let v = c
                .value
                .parse::<Community>()
                .map_err(|e| invalid(format!("spec.communities[{i}].value"), e.to_string()))?;
            if c.name.is_empty() || named.iter().any(|(n, _)| *n == c.name) {
                return Err(invalid(
                    format!("spec.communities[{i}].name"),
                    "must be set and unique",
                ));
            }
            named.push((&c.name, v));
        }
        let mut communities = Vec::new();
        for (i, a) in self.prefix_advertisements.iter().enumerate() {
            let cidr = parse_cidr(&format!("spec.prefixAdvertisements[{i}].cidr"), &a.cidr)?;
            let values = a
                .communities
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    named
                        .iter()
                        .find(|(n, _)| n == c)
                        .map(|(_, v)| *v)
                        .or_else(|| c.parse().ok())
                        .ok_or_else(|| {
                            invalid(
                                format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                                format!(
                                    "{c:?} is neither a community nor a name in spec.communities"
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            communities.push(PrefixCommunities {
                cidr,
                communities: values,
            });
        }
        let mut service_cidrs = Vec::new();
        for (field, list) in [
            ("serviceClusterIPs", &self.service_cluster_ips),
            ("serviceExternalIPs", &self.service_external_ips),
            ("serviceLoadBalancerIPs", &self.service_load_balancer_ips),
        ] {
            for (i, s) in list.iter().enumerate() {
                let net = parse_cidr(&format!("spec.{field}[{i}].cidr"), &s.cidr)?;
                if net.prefix_len() == 0 {
                    return Err(invalid(
                        format!("spec.{field}[{i}].cidr"),
                        "the default route is not a Service range",
                    ));
                }
                if !service_cidrs.contains(&net) {
                    service_cidrs.push(net);
                }
            }
        }
        Ok(Advertisements {
            communities,
            service_cidrs,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn filter(yaml: &str) -> Result<Filter, Invalid> {
        serde_yaml::from_str::<BGPFilterSpec>(yaml).unwrap().parse()
    }

    #[test]
    fn a_filter_parses_into_ordered_rules_of_both_families() {
        let f = filter(
            "importV4:\n- {cidr: 0.0.0.0/0, matchOperator: Equal, action: Accept}\n- {cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {min: 16}, action: Reject}\n\
             importV6:\n- {action: Reject}\nexportV4:\n- {cidr: 10.96.0.0/12, matchOperator: NotIn, action: Reject}\n",
        )
        .unwrap();
        assert_eq!(f.import.len(), 3);
        assert_eq!(f.import[1].prefix_length, Some((16, 32)));
        assert_eq!(f.import[2].cidr, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(f.export[0].operator, MatchOperator::NotIn);
    }

    #[test]
    fn a_bad_rule_is_refused_naming_its_field() {
        for (yaml, field) in [
            (
                "importV4: [{cidr: fd00::/8, matchOperator: In, action: Accept}]",
                "spec.importV4[0].cidr",
            ),
            (
                "importV6: [{cidr: nope, matchOperator: In, action: Accept}]",
                "spec.importV6[0].cidr",
            ),
            (
                "exportV4: [{action: Accept}, {cidr: 10.0.0.0/8, action: Accept}]",
                "spec.exportV4[1].matchOperator",
            ),
            (
                "importV4: [{prefixLength: {min: 30, max: 24}, action: Accept}]",
                "spec.importV4[0].prefixLength.min",
            ),
            (
                "importV4: [{prefixLength: {max: 33}, action: Accept}]",
                "spec.importV4[0].prefixLength.max",
            ),
        ] {
            assert_eq!(filter(yaml).unwrap_err().field, field, "{yaml}");
        }
        assert!(serde_yaml::from_str::<BGPFilterSpec>("importV4: [{action: Maybe}]").is_err());
    }

    #[test]
    fn advertisements_resolve_named_communities_and_collect_service_cidrs() {
        let spec: BGPConfigurationSpec = serde_yaml::from_str(
            "communities: [{name: rack, value: '65000:1:2'}]\n\
             prefixAdvertisements: [{cidr: 10.244.0.0/16, communities: ['65000:100', rack]}]\n\
             serviceClusterIPs: [{cidr: 10.96.0.0/12}]\nserviceExternalIPs: [{cidr: 192.0.2.0/24}, {cidr: 10.96.0.0/12}]\n",
        )
        .unwrap();
        let a = spec.advertisements().unwrap();
        assert_eq!(a.communities.len(), 1);
        assert_eq!(a.communities[0].communities.len(), 2);
        assert_eq!(a.service_cidrs.len(), 2);
        let bad: BGPConfigurationSpec = serde_yaml::from_str(
            "prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: [nope]}]\n",
        )
        .unwrap();
        assert_eq!(
            bad.advertisements().unwrap_err().field,
            "spec.prefixAdvertisements[0].communities[0]"
        );
        let bad: BGPConfigurationSpec =
            serde_yaml::from_str("serviceLoadBalancerIPs: [{cidr: 0.0.0.0/0}]\n").unwrap();
        assert_eq!(
            bad.advertisements().unwrap_err().field,
            "spec.serviceLoadBalancerIPs[0].cidr"
        );
    }
}
