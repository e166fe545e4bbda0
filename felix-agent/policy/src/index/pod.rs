//! What the index keeps of a Pod and a Namespace: only the fields policy
//! depends on, so that an update touching anything else (status
//! conditions, annotations) is recognised as a no-op.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::selector::Labels;
use crate::model::{PodKey, Protocol};

/// The label the API server puts on every namespace (immutable, equal to
/// the name). Added here too when absent, so that objects from a local
/// manifest directory behave like those from a cluster.
pub(crate) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A container port with a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NamedPort {
    /// `ports[].name`.
    pub(crate) name: String,
    /// `ports[].protocol`, TCP when absent.
    pub(crate) protocol: Protocol,
    /// `ports[].containerPort`.
    pub(crate) port: u16,
}

/// The policy-relevant part of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodState {
    /// `metadata.labels`.
    pub(crate) labels: Labels,
    /// Addresses, deduplicated, in status order.
    pub(crate) ips: Vec<IpAddr>,
    /// Whether the pod is a policy endpoint: it has its own addresses
    /// (not hostNetwork), at least one of them, and is not finished.
    pub(crate) endpoint: bool,
    /// Named container ports, sorted.
    pub(crate) named_ports: Vec<NamedPort>,
}

impl PodState {
    /// The key and policy state of a pod; `None` when it has no name.
    ///
    /// Terminating pods (`deletionTimestamp` set) stay endpoints until they
    /// are deleted: they still run and hold their address during the grace
    /// period, and Calico does the same (it only drops a terminating pod
    /// once its CNI has released the address). Pods in phase Succeeded or
    /// Failed are not endpoints: their address may already belong to a new
    /// pod.
    pub(crate) fn from_pod(pod: &Pod) -> Option<(PodKey, PodState)> {
        let name = pod.metadata.name.clone()?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ips = if host_network {
            // A hostNetwork pod's addresses are the node's: never put them
            // in a set, or a policy naming that pod would allow the node.
            Vec::new()
        } else {
            pod_ips(pod)
        };
        let mut named_ports: Vec<NamedPort> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: parse_protocol(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok().filter(|n| *n != 0)?,
                })
            })
            .collect();
        named_ports.sort();
        named_ports.dedup();
        let state = PodState {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            endpoint: !host_network && !finished && !ips.is_empty(),
            ips,
            named_ports,
        };
        Some((PodKey::new(namespace, name), state))
    }

    /// The port numbers this pod gives the name `name` for `protocol`.
    pub(crate) fn resolve(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = u16> {
        self.named_ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The addresses of a pod: `status.podIPs`, else `status.podIP`;
/// unparsable entries are skipped.
pub(crate) fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    let texts = if listed.is_empty() {
        status.pod_ip.iter().map(String::as_str).collect()
    } else {
        listed
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in texts.iter().filter_map(|t| t.parse::<IpAddr>().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// A Kubernetes protocol name; absent means TCP (the API default for both
/// container ports and policy ports); an unknown name is `None`.
pub(crate) fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(_) => None,
    }
}

/// The key of a pod (namespace `default` when absent, as the API server
/// would have set it); `None` without a name.
pub fn key_of(pod: &Pod) -> Option<PodKey> {
    let name = pod.metadata.name.clone()?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    Some(PodKey::new(namespace, name))
}

/// The name and effective labels of a namespace (with the name label
/// added when missing); `None` when it has no name.
pub(crate) fn namespace_labels(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Some((name, labels))
}

/// The labels of a namespace the index has not seen (yet): only the name
/// label, which the API server guarantees every namespace has.
pub(crate) fn default_namespace_labels(name: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
}
