//! The agent's state and its one loop: datastore events and CNI requests
//! in, the policy index updated, the dataplane and routes programmed.
//!
//! Everything runs on one task that owns the index and the dataplane's
//! compiled state, so programming is never concurrent and needs no locks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, PodIP};
use tabby_common::agent::{AgentRequest, AgentResponse};
use tabby_common::endpoint::{EndpointRecord, EndpointStore};
use tabby_common::ipam::{blocks_path, read_blocks, write_blocks};
use tabby_crds::{BGPConfigurationSpec, BGPPeerSpec, Filter};
use tabby_policy::{EndpointPolicy, PodKey, PolicyIndex};
use tabby_sys::Netlink;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, info_span, warn};

use crate::bgp::{BgpIntent, PeerIntent};
use crate::bgp_policy::{self, PeerKind};
use crate::datastore::{Event, Kind, Object, ObjectRef, Progress};
use crate::metrics::Metrics;
use crate::nft::{self, Compiled, EndpointState};
use crate::peer_secrets::PeerSecrets;
use crate::routes::{self, EndpointRoute};
use crate::service_routes::ServiceIndex;

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`Node` object and `spec.nodeName`).
    pub node_name: String,
    /// Where the CNI plugin writes endpoint records and the socket lives.
    pub run_dir: PathBuf,
    /// Where the blocks file lives.
    pub data_dir: PathBuf,
    /// BGP: the port of the full mesh, or None to run without BGP.
    pub bgp_port: Option<u16>,
    /// BGP: this node's AS when no BGPConfiguration sets one.
    pub asn: u32,
}

/// A CNI request with the channel its answer goes back on.
pub type Request = (AgentRequest, oneshot::Sender<AgentResponse>);

/// The agent's state.
pub struct Agent {
    cfg: AgentConfig,
    index: PolicyIndex,
    // Keys of what the index holds, per kind, so that a per-kind reset can
    // delete what disappeared. Full objects stay in the index only: with
    // 10,000 pods a second copy would double the agent's memory.
    pod_keys: BTreeSet<PodKey>,
    ns_keys: BTreeSet<String>,
    policy_keys: BTreeSet<(String, String)>,
    /// Pods scheduled on this node (or with a local endpoint), kept whole
    /// because their addresses come from the CNI record.
    local_pods: BTreeMap<PodKey, Pod>,
    endpoints: BTreeMap<String, EndpointRecord>,
    programmed: Option<Compiled>,
    resets: BTreeSet<Kind>,
    blocks: Vec<IpNet>,
    /// Every node's address (InternalIP), for the BGP full mesh.
    nodes: BTreeMap<String, Option<IpAddr>>,
    /// The BGPConfiguration named `default`, if any.
    bgp_config: Option<BGPConfigurationSpec>,
    /// BGPPeer objects by name.
    bgp_peers: BTreeMap<String, BGPPeerSpec>,
    /// The Secrets of the agent's namespace (BGP passwords).
    peer_secrets: PeerSecrets,
    /// Every node's blocks (podCIDRs), for the BGP import policy.
    node_blocks: BTreeMap<String, Vec<IpNet>>,
    /// Valid BGPFilter objects by name, parsed.
    bgp_filters: BTreeMap<String, Filter>,
    /// Services and EndpointSlices, for `externalTrafficPolicy: Local`.
    services: ServiceIndex,
    /// The node's blocks changed: reconcile routes at the next tick rather
    /// than within the periodic 10 s (the blackholes, and in a cluster the
    /// NetworkUnavailable condition, wait on it).
    routes_dirty: bool,
    /// The last datastore barrier delivered, and the last one programmed.
    barrier_seen: Option<u64>,
    barrier_done: Option<u64>,
    /// The watches' positions delivered, and the ones programmed.
    progress_seen: BTreeMap<Kind, Progress>,
    progress_done: BTreeMap<Kind, Progress>,
    netlink: Option<Netlink>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.cfg.node_name)
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

fn pod_key(rec: &EndpointRecord) -> PodKey {
    match (&rec.pod_namespace, &rec.pod_name) {
        (Some(ns), Some(n)) => PodKey::new(ns.clone(), n.clone()),
        // Not a Kubernetes pod: no policy can select it, and it stays
        // isolated (fail closed).
        _ => PodKey::new("", rec.container_id.clone()),
    }
}

fn key_of(pod: &Pod) -> PodKey {
    PodKey::new(
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The span of one object's changes, keyed by its reference.
fn object_span(r: &ObjectRef) -> tracing::Span {
    info_span!("object", kind = ?r.kind, namespace = r.namespace.as_deref().unwrap_or(""), name = %r.name)
}

/// A node's InternalIP (IPv4 preferred), the address BGP peers with.
fn node_address(node: &Node) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let internal: Vec<IpAddr> = addrs
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    internal
        .iter()
        .find(|a| a.is_ipv4())
        .or(internal.first())
        .copied()
}

/// An error with its causes, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Everything denied: the policy of an endpoint whose Pod the agent does
/// not know (yet).
fn deny_all() -> EndpointPolicy {
    EndpointPolicy {
        ingress: Some(Vec::new()),
        egress: Some(Vec::new()),
    }
}

impl Agent {
    /// A new agent; nothing is programmed until the first datastore resets.
    pub fn new(cfg: AgentConfig, metrics: Arc<Metrics>) -> Self {
        let blocks = read_blocks(&blocks_path(&cfg.data_dir)).unwrap_or_default();
        Agent {
            cfg,
            index: PolicyIndex::new(),
            pod_keys: BTreeSet::new(),
            ns_keys: BTreeSet::new(),
            policy_keys: BTreeSet::new(),
            local_pods: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            programmed: None,
            resets: BTreeSet::new(),
            blocks,
            nodes: BTreeMap::new(),
            bgp_config: None,
            bgp_peers: BTreeMap::new(),
            peer_secrets: PeerSecrets::default(),
            node_blocks: BTreeMap::new(),
            bgp_filters: BTreeMap::new(),
            services: ServiceIndex::default(),
            routes_dirty: false,
            barrier_seen: None,
            barrier_done: None,
            progress_seen: BTreeMap::new(),
            progress_done: BTreeMap::new(),
            netlink: None,
            metrics,
        }
    }

    /// True once every kind was listed and the result programmed.
    pub fn ready(&self) -> bool {
        self.synced() && self.programmed.is_some()
    }

    /// True once every kind was listed at least once.
    pub fn synced(&self) -> bool {
        self.resets.len() == Kind::ALL.len()
    }

    /// The Pod as the index should see it: for local endpoints, the
    /// addresses come from the CNI record, which exists before kubelet
    /// reports them in the Pod's status.
    fn effective(&self, pod: &Pod) -> Pod {
        let key = key_of(pod);
        let Some(rec) = self.endpoints.values().find(|r| pod_key(r) == key) else {
            return pod.clone();
        };
        let mut pod = pod.clone();
        let ips: Vec<String> = rec.ips.iter().map(|i| i.addr().to_string()).collect();
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = ips.first().cloned();
        status.pod_ips = Some(ips.into_iter().map(|ip| PodIP { ip }).collect());
        pod
    }

    /// Re-feeds a local pod after its endpoint record changed.
    fn reindex_pod(&mut self, key: &PodKey) {
        if let Some(p) = self.local_pods.get(key) {
            let p = self.effective(p);
            self.index.apply_pod(p);
        }
    }

    fn is_local(&self, pod: &Pod, key: &PodKey) -> bool {
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.cfg.node_name.as_str())
            || self.endpoints.values().any(|r| pod_key(r) == *key)
    }

    fn apply_pod(&mut self, pod: Pod) {
        let key = key_of(&pod);
        self.pod_keys.insert(key.clone());
        let effective = self.effective(&pod);
        if self.is_local(&pod, &key) {
            self.local_pods.insert(key, pod);
        } else {
            self.local_pods.remove(&key);
        }
        self.index.apply_pod(effective);
    }

    fn delete_pod(&mut self, key: &PodKey) {
        self.pod_keys.remove(key);
        self.local_pods.remove(key);
        self.index.delete_pod(key);
    }

    /// Forgets every object of `kind` that is not in `keep`.
    fn prune(&mut self, kind: Kind, keep: &[ObjectRef]) {
        let ns_of = |r: &ObjectRef| r.namespace.clone().unwrap_or_else(|| "default".into());
        match kind {
            Kind::Pod => {
                let keep: BTreeSet<PodKey> = keep
                    .iter()
                    .map(|r| PodKey::new(ns_of(r), r.name.clone()))
                    .collect();
                for gone in self.pod_keys.difference(&keep).cloned().collect::<Vec<_>>() {
                    self.delete_pod(&gone);
                }
            }
            Kind::Namespace => {
                let keep: BTreeSet<String> = keep.iter().map(|r| r.name.clone()).collect();
                for gone in self.ns_keys.difference(&keep).cloned().collect::<Vec<_>>() {
                    self.ns_keys.remove(&gone);
                    self.index.delete_namespace(&gone);
                }
            }
            Kind::NetworkPolicy => {
                let keep: BTreeSet<(String, String)> =
                    keep.iter().map(|r| (ns_of(r), r.name.clone())).collect();
                for gone in self
                    .policy_keys
                    .difference(&keep)
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    self.policy_keys.remove(&gone);
                    self.index.delete_policy(&gone.0, &gone.1);
                }
            }
            Kind::Node => {
                let keep: BTreeSet<String> = keep.iter().map(|r| r.name.clone()).collect();
                self.nodes.retain(|n, _| keep.contains(n));
                self.node_blocks.retain(|n, _| keep.contains(n));
            }
            Kind::BgpConfiguration => {
                if !keep.iter().any(|r| r.name == "default") {
                    self.bgp_config = None;
                }
            }
            Kind::BgpPeer => {
                let keep: BTreeSet<String> = keep.iter().map(|r| r.name.clone()).collect();
                self.bgp_peers.retain(|n, _| keep.contains(n));
            }
            Kind::Secret => {
                let keep: BTreeSet<String> = keep.iter().map(|r| r.name.clone()).collect();
                self.peer_secrets.retain(&keep);
            }
            Kind::BgpFilter => {
                let keep: BTreeSet<String> = keep.iter().map(|r| r.name.clone()).collect();
                self.bgp_filters.retain(|n, _| keep.contains(n));
            }
            Kind::Service | Kind::EndpointSlice => {
                let keep: BTreeSet<(String, String)> =
                    keep.iter().map(|r| (ns_of(r), r.name.clone())).collect();
                if kind == Kind::Service {
                    self.services.retain_services(&keep);
                } else {
                    self.services.retain_slices(&keep);
                }
            }
        }
    }

    fn apply(&mut self, o: Object) {
        match o {
            Object::Pod(p) => self.apply_pod(*p),
            Object::Namespace(n) => {
                self.ns_keys
                    .insert(n.metadata.name.clone().unwrap_or_default());
                self.index.apply_namespace(*n);
            }
            Object::NetworkPolicy(np) => {
                self.policy_keys.insert((
                    np.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    np.metadata.name.clone().unwrap_or_default(),
                ));
                self.index.apply_policy(*np);
            }
            Object::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name.clone(), node_address(&n));
                self.node_blocks.insert(name, bgp_policy::pod_cidrs(&n));
                self.node_changed(&n);
            }
            Object::BgpConfiguration(c) => {
                // Only `default` applies, as with Calico; others are
                // reserved (per-node overrides) and ignored.
                if c.metadata.name.as_deref() == Some("default") {
                    if let Some(Err(e)) = c
                        .spec
                        .node_to_node_mesh_bfd
                        .as_ref()
                        .map(|b| crate::bgp::bfd_config("spec.nodeToNodeMeshBFD", b))
                    {
                        warn!(error = %e, "refusing BGPConfiguration default: keeping the previous one");
                        return;
                    }
                    match c.spec.advertisements() {
                        Ok(_) => self.bgp_config = Some(c.spec),
                        Err(e) => {
                            warn!(error = %e, "refusing the BGPConfiguration; the previous one stays");
                        }
                    }
                } else {
                    debug!("ignoring a BGPConfiguration not named `default`");
                }
            }
            Object::BgpPeer(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(Err(e)) = p
                    .spec
                    .bfd
                    .as_ref()
                    .map(|b| crate::bgp::bfd_config("spec.bfd", b))
                {
                    warn!(peer = %name, error = %e, "refusing BGPPeer: keeping the previous version");
                    return;
                }
                self.bgp_peers.insert(name, p.spec);
            }
            Object::Secret(s) => self.peer_secrets.apply(*s),
            Object::Service(s) => self.services.apply_service(&s),
            Object::EndpointSlice(e) => self.services.apply_slice(&e),
            Object::BgpFilter(f) => {
                let name = f.metadata.name.clone().unwrap_or_default();
                match f.spec.parse() {
                    Ok(parsed) => {
                        self.bgp_filters.insert(name, parsed);
                    }
                    Err(e) => {
                        warn!(error = %e, "refusing the BGPFilter; the previous version stays");
                    }
                }
            }
        }
    }

    /// Applies one datastore event.
    pub fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Reset(kind, objects) => {
                info!(?kind, count = objects.len(), "datastore resync");
                self.resets.insert(kind);
                let refs: Vec<ObjectRef> = objects.iter().map(Object::reference).collect();
                self.prune(kind, &refs);
                for o in objects {
                    self.apply(o);
                }
            }
            Event::Prune(kind, keep) => {
                info!(?kind, count = keep.len(), "datastore resync");
                self.resets.insert(kind);
                self.prune(kind, &keep);
            }
            Event::Apply(o) => {
                let r = o.reference();
                let span = object_span(&r);
                let _e = span.enter();
                debug!("apply");
                self.apply(o);
            }
            Event::Delete(r) => {
                let span = object_span(&r);
                let _e = span.enter();
                debug!("delete");
                self.forget(&r);
            }
            Event::Barrier(n) => self.barrier_seen = Some(n),
            Event::Progress(p) => {
                self.progress_seen.insert(p.kind, p);
            }
        }
        self.update_metrics();
    }

    /// Marks the last barrier seen as done: call after programming
    /// succeeded for everything delivered before it.
    fn barrier_reached(&mut self) {
        if self.ready() {
            self.barrier_done = self.barrier_seen;
            self.progress_done.clone_from(&self.progress_seen);
        }
    }

    /// What `/status` and `<run-dir>/status.json` say: readiness, the last
    /// barrier done, and BGP's state (`bgp`, from the speaker).
    pub fn status(&self, bgp: Option<&serde_json::Value>) -> serde_json::Value {
        serde_json::json!({
            "node": self.cfg.node_name,
            "ready": self.ready(),
            "barrier": self.barrier_done,
            "endpoints": self.endpoints.len(),
            "blocks": self.blocks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "bgp": bgp,
            "datastore": self.progress_done.values().map(|p| {
                (format!("{:?}", p.kind), serde_json::json!({
                    "resourceVersion": p.resource_version,
                    "objects": p.objects,
                }))
            }).collect::<serde_json::Map<_, _>>(),
        })
    }

    fn forget(&mut self, r: &ObjectRef) {
        let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
        match r.kind {
            Kind::Pod => self.delete_pod(&PodKey::new(ns, r.name.clone())),
            Kind::Namespace => {
                self.ns_keys.remove(&r.name);
                self.index.delete_namespace(&r.name);
            }
            Kind::NetworkPolicy => {
                self.policy_keys.remove(&(ns.clone(), r.name.clone()));
                self.index.delete_policy(&ns, &r.name);
            }
            Kind::Node => {
                self.nodes.remove(&r.name);
                self.node_blocks.remove(&r.name);
            }
            Kind::BgpConfiguration => {
                if r.name == "default" {
                    self.bgp_config = None;
                }
            }
            Kind::BgpPeer => {
                self.bgp_peers.remove(&r.name);
            }
            Kind::Secret => self.peer_secrets.remove(&r.name),
            Kind::BgpFilter => {
                self.bgp_filters.remove(&r.name);
            }
            Kind::Service => self.services.delete_service(&ns, &r.name),
            Kind::EndpointSlice => self.services.delete_slice(&ns, &r.name),
        }
    }

    /// What BGP should do now: (router ID, intent), or None while this
    /// node's IPv4 address is unknown. `port` is the mesh's port.
    pub fn bgp_intent(&self, port: u16) -> Option<(std::net::Ipv4Addr, BgpIntent)> {
        let router_id = match self.nodes.get(&self.cfg.node_name)? {
            Some(IpAddr::V4(ip)) => *ip,
            _ => return None,
        };
        let asn = self
            .bgp_config
            .as_ref()
            .map_or(self.cfg.asn, |c| c.as_number);
        let mesh_on = self.bgp_config.as_ref().is_none_or(|c| c.node_to_node_mesh);
        // Checked when the objects came in: errors cannot happen here.
        let mesh_bfd = self
            .bgp_config
            .as_ref()
            .and_then(|c| c.node_to_node_mesh_bfd.as_ref())
            .and_then(|b| crate::bgp::bfd_config("spec.nodeToNodeMeshBFD", b).ok());
        let cluster = bgp_policy::Cluster {
            asn,
            nodes: &self.nodes,
            node_blocks: &self.node_blocks,
            filters: &self.bgp_filters,
        };
        // Validated when the object was taken.
        let adv = self
            .bgp_config
            .as_ref()
            .and_then(|c| c.advertisements().ok())
            .unwrap_or_default();
        let members = Arc::new(cluster.members());
        let mesh_policy = bgp_policy::Cluster::cluster_policy(&members, &adv.service_cidrs);
        let mut peers: BTreeMap<IpAddr, PeerIntent> = BTreeMap::new();
        if mesh_on {
            for (name, ip) in &self.nodes {
                if let Some(ip) = ip
                    && *name != self.cfg.node_name
                {
                    peers.insert(
                        *ip,
                        PeerIntent {
                            address: *ip,
                            asn,
                            port,
                            password: None,
                            rr_client: false,
                            mesh: true,
                            bfd: mesh_bfd,
                            policy: mesh_policy.clone(),
                        },
                    );
                }
            }
        }
        for (name, p) in &self.bgp_peers {
            if p.node.as_ref().is_some_and(|n| *n != self.cfg.node_name) {
                continue;
            }
            let address: IpAddr = match p.peer_ip.parse() {
                Ok(a) => a,
                Err(_) => {
                    warn!(peer = %name, peer_ip = %p.peer_ip, "ignoring a BGPPeer with an invalid peerIP");
                    continue;
                }
            };
            if self.nodes.get(&self.cfg.node_name) == Some(&Some(address)) {
                continue;
            }
            let password = match self.peer_secrets.resolve(p.password.as_ref()) {
                Ok(pw) => pw,
                Err(e) => {
                    // Peering without the key the admin asked for would be
                    // refused by the peer anyway.
                    warn!(peer = %name, error = %e, "not peering until the BGPPeer's password can be read");
                    continue;
                }
            };
            let policy = match cluster.kind_of(p, address) {
                PeerKind::Cluster => mesh_policy.clone(),
                PeerKind::External => {
                    let (policy, missing) = cluster.external_policy(p);
                    if !missing.is_empty() {
                        warn!(peer = %name, ?missing, "BGPPeer refers to BGPFilters that do not exist: accepting nothing from it");
                    }
                    policy
                }
            };
            // An explicit peer wins over the mesh entry for the same
            // address (say, a node that is also a route reflector).
            peers.insert(
                address,
                PeerIntent {
                    address,
                    asn: p.as_number,
                    port: 179,
                    password,
                    rr_client: p.route_reflector_client,
                    mesh: false,
                    bfd: p
                        .bfd
                        .as_ref()
                        .and_then(|b| crate::bgp::bfd_config("spec.bfd", b).ok()),
                    policy,
                },
            );
        }
        let mut announce = self.blocks.clone();
        announce.extend(
            self.services
                .host_routes(&self.cfg.node_name, &adv.service_cidrs),
        );
        announce.extend(adv.service_cidrs);
        Some((
            router_id,
            BgpIntent {
                asn,
                announce,
                peers: peers.into_values().collect(),
                communities: adv.communities,
            },
        ))
    }

    /// This node's blocks come from `spec.podCIDRs` of its Node object.
    fn node_changed(&mut self, node: &Node) {
        if node.metadata.name.as_deref() != Some(self.cfg.node_name.as_str()) {
            return;
        }
        let spec = node.spec.as_ref();
        let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if cidrs.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
        {
            cidrs.push(c);
        }
        let blocks: Vec<IpNet> = cidrs
            .iter()
            .filter_map(|c| match c.parse::<IpNet>() {
                Ok(n) => Some(n.trunc()),
                Err(e) => {
                    warn!(cidr = %c, error = %e, "ignoring an unparseable podCIDR");
                    None
                }
            })
            .collect();
        if blocks == self.blocks || blocks.is_empty() {
            return;
        }
        info!(?blocks, "node blocks changed");
        let written = std::fs::create_dir_all(&self.cfg.data_dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                write_blocks(&blocks_path(&self.cfg.data_dir), &blocks).map_err(|e| error_chain(&e))
            });
        if let Err(e) = written {
            error!(error = %e, "cannot write the blocks file");
        }
        self.blocks = blocks;
        self.routes_dirty = true;
    }

    /// Reads the CNI plugin's endpoint records and adopts what changed
    /// (the plugin may run without the socket, or the agent may have been
    /// restarted). Returns true when something changed.
    pub fn sync_records(&mut self) -> bool {
        let store = EndpointStore::new(&self.cfg.run_dir);
        let records = match store.list() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot list endpoint records");
                return false;
            }
        };
        let mut now = BTreeMap::new();
        for r in records {
            match r {
                Ok(rec) => {
                    now.insert(rec.host_iface.clone(), rec);
                }
                Err(e) => warn!(error = %e, "skipping an unreadable endpoint record"),
            }
        }
        if now == self.endpoints {
            return false;
        }
        let touched: BTreeSet<PodKey> = self
            .endpoints
            .values()
            .chain(now.values())
            .map(pod_key)
            .collect();
        self.endpoints = now;
        for k in touched {
            self.reindex_pod(&k);
        }
        true
    }

    /// Handles a request from the CNI plugin.
    pub fn handle_request(&mut self, req: AgentRequest) -> AgentResponse {
        match req {
            AgentRequest::Add { endpoint } => {
                let span =
                    info_span!("endpoint", pod = %pod_key(&endpoint), iface = %endpoint.host_iface);
                let _e = span.enter();
                let key = pod_key(&endpoint);
                self.endpoints.insert(endpoint.host_iface.clone(), endpoint);
                self.reindex_pod(&key);
                match self.program() {
                    Ok(()) => {
                        info!(known = self.pod_keys.contains(&key), "endpoint programmed");
                        AgentResponse::ok()
                    }
                    Err(e) => AgentResponse::refused(e),
                }
            }
            AgentRequest::Del {
                container_id,
                ifname,
            } => {
                let gone: Vec<String> = self
                    .endpoints
                    .iter()
                    .filter(|(_, r)| r.container_id == container_id && r.ifname == ifname)
                    .map(|(k, _)| k.clone())
                    .collect();
                for iface in gone {
                    if let Some(rec) = self.endpoints.remove(&iface) {
                        self.reindex_pod(&pod_key(&rec));
                    }
                }
                match self.program() {
                    Ok(()) => AgentResponse::ok(),
                    Err(e) => AgentResponse::refused(e),
                }
            }
            AgentRequest::Status => {
                if self.ready() {
                    AgentResponse::ok()
                } else {
                    AgentResponse::refused("the agent has not finished its first sync")
                }
            }
        }
    }

    /// Programs the dataplane: the difference from what is in the kernel, or
    /// the whole table when that is unknown or the difference fails.
    pub fn program(&mut self) -> Result<(), String> {
        if !self.synced() {
            // Before the first full sync the index is partial: programming
            // now would cut off pods that a restarted agent's previous
            // table still serves correctly.
            return Err("the agent has not finished its first datastore sync".into());
        }
        let started = Instant::now();
        let endpoints: BTreeMap<String, EndpointState> = self
            .endpoints
            .iter()
            .map(|(iface, rec)| {
                let pod = pod_key(rec);
                let policy = self.index.endpoint_policy(&pod).unwrap_or_else(deny_all);
                (iface.clone(), EndpointState { pod, policy })
            })
            .collect();
        let compiled = nft::compile_with(&endpoints, &self.index);
        let _ = self.index.take_changes();
        if self.programmed.as_ref() == Some(&compiled) {
            return Ok(());
        }
        let result = match &self.programmed {
            Some(old) => {
                let script = nft::diff_script(old, &compiled);
                match nft::apply(&script) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        warn!(error = %e, "incremental update failed; replacing the whole table");
                        self.metrics.dataplane_errors.inc();
                        nft::apply(&nft::full_script(&compiled))
                    }
                }
            }
            None => nft::apply(&nft::full_script(&compiled)),
        };
        match result {
            Ok(()) => {
                self.programmed = Some(compiled);
                self.metrics.programming.observe(started.elapsed());
                self.update_metrics();
                Ok(())
            }
            Err(e) => {
                self.metrics.dataplane_errors.inc();
                self.programmed = None;
                error!(error = %e, "cannot program nftables");
                Err(e.to_string())
            }
        }
    }

    /// Repairs a table someone deleted or flushed.
    pub fn check_tamper(&mut self) {
        if self.programmed.is_some() && !nft::intact() {
            warn!("the nftables table was changed behind tabby's back; resyncing");
            self.metrics.resyncs.inc();
            self.programmed = None;
            let _ = self.program();
        }
    }

    /// Reconciles tabby's routes.
    pub fn reconcile_routes(&mut self) {
        if self.netlink.is_none() {
            match Netlink::open() {
                Ok(nl) => self.netlink = Some(nl),
                Err(e) => {
                    error!(error = %e, "cannot open netlink");
                    return;
                }
            }
        }
        let eps: Vec<EndpointRoute> = self
            .endpoints
            .values()
            .flat_map(|r| {
                r.ips.iter().map(|ip| EndpointRoute {
                    ip: ip.addr(),
                    iface: r.host_iface.clone(),
                })
            })
            .collect();
        if let Some(nl) = self.netlink.as_mut()
            && let Err(e) = routes::reconcile(nl, &eps, &self.blocks)
        {
            error!(error = %e, "route reconciliation failed");
            self.metrics.dataplane_errors.inc();
            self.netlink = None;
        }
        // Netlink is dropped on failure, so this means the routes are in.
        if self.netlink.is_some() {
            self.metrics
                .set_network_ready(self.ready() && !self.blocks.is_empty());
        }
    }

    fn update_metrics(&self) {
        let s = self.index.stats();
        self.metrics.set_gauges(
            self.endpoints.len(),
            s.policies,
            s.ip_sets + s.port_sets,
            s.pods,
        );
        self.metrics.set_ready(self.ready());
    }

    /// The addresses of local endpoints (for tools and tests).
    pub fn local_ips(&self) -> Vec<IpAddr> {
        self.endpoints
            .values()
            .flat_map(|r| r.ips.iter().map(|i| i.addr()))
            .collect()
    }
}

/// Publishes the agent's status (HTTP `/status` and `<run-dir>/status.json`,
/// replaced atomically) when it changed.
fn write_status(
    agent: &Agent,
    bgp: &Option<serde_json::Value>,
    last: &mut Option<serde_json::Value>,
) {
    let status = agent.status(bgp.as_ref());
    if last.as_ref() == Some(&status) {
        return;
    }
    let text = status.to_string();
    agent.metrics.set_status(text.clone());
    let path = agent.cfg.run_dir.join("status.json");
    let tmp = agent.cfg.run_dir.join(".status.json.tmp");
    let written = std::fs::write(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        warn!(path = %path.display(), error = %e, "cannot write the status file");
        return;
    }
    *last = Some(status);
}

/// Runs the agent until `events` closes or `shutdown` fires. The dataplane
/// is left in place on exit so pods keep working while the agent restarts.
pub async fn run(
    mut agent: Agent,
    mut events: mpsc::Receiver<Event>,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut pending_program = false;
    let mut bgp: Option<crate::bgp::Bgp> = None;
    let mut last_bgp: Option<serde_json::Value> = None;
    let mut last_status: Option<serde_json::Value> = None;
    // The endpoints a previous run wired are known before the first
    // programming, so a restarted agent never programs a table without them.
    tokio::task::block_in_place(|| agent.sync_records());
    loop {
        if let Some(port) = agent.cfg.bgp_port
            && agent.synced()
            && let Some((router_id, intent)) = agent.bgp_intent(port)
        {
            if let Some(b) = bgp.as_ref()
                && b.asn() != intent.asn
            {
                info!(
                    from = b.asn(),
                    to = intent.asn,
                    "the AS changed; restarting BGP"
                );
                b.stop_hard().await;
                bgp = None;
            }
            if bgp.is_none() {
                match crate::bgp::Bgp::start(router_id, port, &intent).await {
                    Ok(b) => bgp = Some(b),
                    Err(e) => error!(error = %e, "cannot start BGP"),
                }
            }
            if let Some(b) = bgp.as_mut() {
                b.apply(&intent).await;
            }
        }
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                agent.handle_event(ev);
                // Take everything already queued before programming once.
                while let Ok(ev) = events.try_recv() {
                    agent.handle_event(ev);
                }
                if agent.synced() {
                    let programmed = tokio::task::block_in_place(|| agent.program());
                    pending_program = programmed.is_err();
                    if programmed.is_ok() {
                        agent.barrier_reached();
                    }
                } else {
                    pending_program = true;
                }
                write_status(&agent, &last_bgp, &mut last_status);
            }
            req = requests.recv() => {
                let Some((req, reply)) = req else { continue };
                let resp = tokio::task::block_in_place(|| agent.handle_request(req));
                let _ = reply.send(resp);
            }
            _ = tick.tick() => {
                ticks += 1;
                tokio::task::block_in_place(|| {
                    let changed = agent.sync_records();
                    if (changed || pending_program) && agent.synced() {
                        pending_program = agent.program().is_err();
                        if !pending_program {
                            agent.barrier_reached();
                        }
                    }
                    if ticks.is_multiple_of(4) {
                        agent.check_tamper();
                    }
                    if changed || agent.routes_dirty || ticks % 20 == 1 {
                        agent.routes_dirty = false;
                        agent.reconcile_routes();
                    }
                });
                agent.update_metrics();
                if let Some(b) = bgp.as_ref() {
                    last_bgp = b.status_json().await;
                }
                write_status(&agent, &last_bgp, &mut last_status);
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(b) = bgp {
        b.stop().await;
    }
    info!("agent stopping; the dataplane and routes stay in place");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::datastore::dir::parse_manifests;

    fn agent(node: &str) -> Agent {
        let dir = std::env::temp_dir().join(format!("tabby-agent-unit-{}", std::process::id()));
        Agent::new(
            AgentConfig {
                node_name: node.into(),
                run_dir: dir.join("run"),
                data_dir: dir.join("data"),
                bgp_port: Some(1179),
                asn: DEFAULT_TEST_ASN,
            },
            Arc::new(Metrics::default()),
        )
    }

    const DEFAULT_TEST_ASN: u32 = 64512;

    fn feed(a: &mut Agent, yaml: &str) {
        for o in parse_manifests(std::path::Path::new("t.yaml"), yaml).unwrap() {
            a.handle_event(Event::Apply(o));
        }
    }

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: n3}
status: {addresses: [{type: InternalIP, address: 10.0.0.3}]}
"#;

    fn peers(a: &Agent) -> Vec<(String, u32, bool, bool, Option<String>)> {
        let (_, intent) = a.bgp_intent(1179).unwrap();
        intent
            .peers
            .iter()
            .map(|p| {
                (
                    p.address.to_string(),
                    p.asn,
                    p.mesh,
                    p.rr_client,
                    p.password.as_ref().map(|p| p.expose().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn the_mesh_is_every_other_node_in_the_default_as() {
        let mut a = agent("n1");
        assert!(a.bgp_intent(179).is_none(), "no address for this node yet");
        feed(&mut a, NODES);
        let (rid, intent) = a.bgp_intent(1179).unwrap();
        assert_eq!(rid.to_string(), "10.0.0.1");
        assert_eq!(intent.asn, 64512);
        assert!(intent.peers.iter().all(|p| p.port == 1179 && p.mesh));
        assert_eq!(
            peers(&a).iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            ["10.0.0.2", "10.0.0.3"]
        );
    }

    #[test]
    fn bgp_configuration_sets_the_as_and_can_turn_the_mesh_off() {
        let mut a = agent("n1");
        feed(&mut a, NODES);
        feed(
            &mut a,
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 65010}\n",
        );
        let (_, intent) = a.bgp_intent(1179).unwrap();
        assert_eq!(intent.asn, 65010);
        assert!(intent.peers.iter().all(|p| p.asn == 65010));
        // Only `default` counts.
        feed(
            &mut a,
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: other}\nspec: {asNumber: 1}\n",
        );
        assert_eq!(a.bgp_intent(1179).unwrap().1.asn, 65010);
        feed(
            &mut a,
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMesh: false}\n",
        );
        let (_, intent) = a.bgp_intent(1179).unwrap();
        assert_eq!(intent.asn, 64512, "asNumber defaults to 64512");
        assert!(intent.peers.is_empty());
        // Deleting it restores the defaults.
        a.handle_event(Event::Prune(Kind::BgpConfiguration, vec![]));
        assert_eq!(peers(&a).len(), 2);
    }

    #[test]
    fn bgp_peers_apply_to_their_node_and_win_over_the_mesh() {
        let mut a = agent("n1");
        feed(&mut a, NODES);
        feed(
            &mut a,
            r#"
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.0.0.254, asNumber: 65000, password: s3cret}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: only-n2}
spec: {peerIP: 10.0.0.253, asNumber: 65000, node: n2}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: rr-n3}
spec: {peerIP: 10.0.0.3, asNumber: 64512, routeReflectorClient: true}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: self}
spec: {peerIP: 10.0.0.1, asNumber: 64512}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: broken}
spec: {peerIP: "10.0.0.300", asNumber: 65000}
"#,
        );
        assert_eq!(
            peers(&a),
            vec![
                ("10.0.0.2".into(), 64512, true, false, None),
                ("10.0.0.3".into(), 64512, false, true, None),
                (
                    "10.0.0.254".into(),
                    65000,
                    false,
                    false,
                    Some("s3cret".into())
                ),
            ]
        );
        let external = a
            .bgp_intent(1179)
            .unwrap()
            .1
            .peers
            .into_iter()
            .find(|p| !p.mesh && !p.rr_client)
            .unwrap();
        assert_eq!(
            external.port, 179,
            "external peers are on the standard port"
        );
        a.handle_event(Event::Delete(ObjectRef {
            kind: Kind::BgpPeer,
            namespace: None,
            name: "tor".into(),
        }));
        assert_eq!(peers(&a).len(), 2);
    }

    #[test]
    fn a_barrier_is_done_only_once_the_agent_is_ready() {
        let mut a = agent("n1");
        a.handle_event(Event::Barrier(3));
        a.barrier_reached();
        assert_eq!(a.status(None)["barrier"], serde_json::Value::Null);
        assert_eq!(a.status(None)["ready"], false);
    }

    #[test]
    fn bfd_settings_reach_the_bgp_intent_and_bad_ones_keep_the_previous_object() {
        let mut a = agent("n1");
        feed(&mut a, NODES);
        let bfd = |a: &Agent, addr: &str| {
            a.bgp_intent(1179)
                .unwrap()
                .1
                .peers
                .into_iter()
                .find(|p| p.address.to_string() == addr)
                .unwrap()
                .bfd
        };
        assert_eq!(bfd(&a, "10.0.0.2"), None, "off unless asked for");
        feed(
            &mut a,
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshBFD: {}}\n---\napiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65000, bfd: {minTxMs: 100, multiplier: 5}}\n",
        );
        assert_eq!(
            bfd(&a, "10.0.0.2"),
            Some(tabby_bgp::bfd::BfdConfig::default())
        );
        let tor = tabby_bgp::bfd::BfdConfig {
            min_tx_ms: 100,
            min_rx_ms: 300,
            multiplier: 5,
        };
        assert_eq!(bfd(&a, "10.0.0.254"), Some(tor));
        feed(
            &mut a,
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65000, bfd: {minTxMs: 1}}\n",
        );
        assert_eq!(
            bfd(&a, "10.0.0.254"),
            Some(tor),
            "refused: the previous one stays"
        );
    }
}
