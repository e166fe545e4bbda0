//! Service addresses a node announces as host routes: a Service with
//! `externalTrafficPolicy: Local` is reachable only through nodes that host
//! one of its ready endpoints, so those nodes (and only those) announce its
//! cluster, external and load-balancer addresses as `/32` (`/128`), inside
//! the Service ranges the BGPConfiguration advertises, as Calico does. The
//! covering ranges themselves are announced by every node.
//!
//! Pure: Services and EndpointSlices in, host routes out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name).
type Key = (String, String);

/// What matters of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    local: bool,
    addresses: Vec<IpAddr>,
}

/// What matters of one EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    service: Key,
    nodes: BTreeSet<String>,
}

/// Services and EndpointSlices, reduced to what the announcements need.
#[derive(Debug, Clone, Default)]
pub struct ServiceIndex {
    services: BTreeMap<Key, Svc>,
    slices: BTreeMap<Key, Slice>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl ServiceIndex {
    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, s: &Service) {
        let spec = s.spec.clone().unwrap_or_default();
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let mut raw: Vec<String> = spec.cluster_ips.unwrap_or_default();
        raw.extend(spec.cluster_ip);
        raw.extend(spec.external_ips.unwrap_or_default());
        raw.extend(spec.load_balancer_ip);
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        raw.extend(ingress.into_iter().filter_map(|i| i.ip));
        let mut addresses: Vec<IpAddr> = raw.iter().filter_map(|a| a.parse().ok()).collect();
        addresses.sort();
        addresses.dedup();
        self.services
            .insert(key(&s.metadata), Svc { local, addresses });
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, e: &EndpointSlice) {
        let (ns, _) = key(&e.metadata);
        let Some(service) = e
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            self.slices.remove(&key(&e.metadata));
            return;
        };
        let nodes = e
            .endpoints
            .iter()
            .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .filter_map(|ep| ep.node_name.clone())
            .collect();
        self.slices.insert(
            key(&e.metadata),
            Slice {
                service: (ns, service.clone()),
                nodes,
            },
        );
    }

    /// Forgets a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        self.services
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Forgets an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.slices
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Keeps only the Services in `keep` ((namespace, name)).
    pub fn retain_services(&mut self, keep: &BTreeSet<Key>) {
        self.services.retain(|k, _| keep.contains(k));
    }

    /// Keeps only the EndpointSlices in `keep`.
    pub fn retain_slices(&mut self, keep: &BTreeSet<Key>) {
        self.slices.retain(|k, _| keep.contains(k));
    }

    /// Host routes `node` announces: the addresses, inside `ranges`, of the
    /// `Local` Services with a ready endpoint on `node`.
    pub fn host_routes(&self, node: &str, ranges: &[IpNet]) -> Vec<IpNet> {
        let hosted: BTreeSet<&Key> = self
            .slices
            .values()
            .filter(|s| s.nodes.contains(node))
            .map(|s| &s.service)
            .collect();
        let mut out: Vec<IpNet> = hosted
            .into_iter()
            .filter_map(|k| self.services.get(k))
            .filter(|s| s.local)
            .flat_map(|s| s.addresses.iter())
            .filter(|a| ranges.iter().any(|r| r.contains(*a)))
            .map(|a| IpNet::from(*a))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_local_service_is_announced_only_by_the_nodes_hosting_its_ready_endpoints() {
        let mut idx = ServiceIndex::default();
        idx.apply_service(&svc(
            "metadata: {name: web, namespace: shop}\n\
             spec: {type: LoadBalancer, clusterIP: 10.96.0.10, externalTrafficPolicy: Local, externalIPs: [192.0.2.10]}\n\
             status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}\n",
        ));
        idx.apply_service(&svc(
            "metadata: {name: api, namespace: shop}\nspec: {clusterIP: 10.96.0.11, externalIPs: [192.0.2.11]}\n",
        ));
        idx.apply_slice(&slice(
            "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nendpoints:\n\
             - {addresses: [10.244.2.5], nodeName: node-2, conditions: {ready: true}}\n\
             - {addresses: [10.244.3.5], nodeName: node-3, conditions: {ready: false}}\n",
        ));
        idx.apply_slice(&slice(
            "metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}\n\
             addressType: IPv4\nendpoints: [{addresses: [10.244.2.6], nodeName: node-2}]\n",
        ));
        let ranges: Vec<IpNet> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ];
        let want: Vec<IpNet> = vec![
            "192.0.2.10/32".parse().unwrap(),
            "198.51.100.7/32".parse().unwrap(),
        ];
        assert_eq!(idx.host_routes("node-2", &ranges), want);
        assert!(idx.host_routes("node-3", &ranges).is_empty(), "not ready");
        assert!(idx.host_routes("node-1", &ranges).is_empty());
        idx.delete_slice("shop", "web-1");
        assert!(idx.host_routes("node-2", &ranges).is_empty());
    }
}
