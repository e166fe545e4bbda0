//! The agent's decisions as a pure state machine: [`Agent::step`] takes one
//! [`Input`] and returns the [`Output`]s to perform, like the BGP session
//! FSM (`bgp/src/fsm.rs`). No I/O here: no files, no `nft`, no netlink, no
//! clock. The driver (`crate::driver`) reads what the core asks for, performs
//! its outputs through the [`Dataplane`](crate::dataplane::Dataplane),
//! route and host traits, and feeds every result back as an input.
//!
//! ```text
//!   datastore events ─┐                       ┌─> Dataplane(change)  ─> DataplaneApplied
//!   endpoint snapshot ─┤                       ├─> Routes(desired)    ─> RoutesApplied
//!   CNI requests (id) ─┼──> Agent::step ──────┼─> Blocks, Bgp, Status, Refused
//!   ticks ─────────────┤                       ├─> ScanEndpoints      ─> Endpoints(snapshot)
//!   results ──────────┘                       └─> CheckDataplane     ─> DataplaneChecked
//!                                                 Reply(id) once the change is live
//! ```
//!
//! Programming is incremental: the policy index reports what changed
//! ([`tabby_policy::Changes`]), and the core sends the dataplane only the
//! endpoints and sets concerned, diffed against its model of what the
//! dataplane holds. The dataplane is replaced whole only when that model is
//! unknown: the first programming, after a refused change, after tampering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, PodIP};
use tabby_common::agent::{AgentRequest, AgentResponse};
use tabby_common::endpoint::{EndpointRecord, RecordFile, record_file_name};
use tabby_common::naming::HostIface;
use tabby_crds::{BGPConfigurationSpec, BGPPeerSpec, Filter};
use tabby_policy::{EndpointPolicy, PodKey, PolicyIndex, PortTriple, SetName};
use tracing::{debug, info, info_span, warn};

use crate::admission::{self, EndpointSnapshot, Links, Refusal};
use crate::bgp::{BgpIntent, PeerIntent};
use crate::bgp_policy::{self, PeerKind};
use crate::dataplane::{
    Applied, DataplaneChange, EndpointChange, SetChange, SetMembers, SetRef, set_refs,
};
use crate::datastore::{Event, Kind, Object, ObjectRef, Progress};
use crate::peer_secrets::PeerSecrets;
use crate::routes::{DesiredRoutes, EndpointRoute, RouteReport};
use crate::service_routes::ServiceIndex;

pub use crate::driver::{Request, run};

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

/// Identifies a CNI request until its reply.
pub type RequestId = u64;

/// A CNI request, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniRequest {
    /// Program this endpoint; `links` are the node's links when it came.
    Add {
        /// The record the plugin sent.
        endpoint: Box<EndpointRecord>,
        /// The node's links (name -> ifindex), read when the request came.
        links: Links,
    },
    /// The endpoint is gone.
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Is the agent able to program endpoints?
    Status,
}

impl CniRequest {
    /// The core's form of a socket request (`links` only matter for ADD).
    pub fn from_socket(req: AgentRequest, links: Links) -> Self {
        match req {
            AgentRequest::Add { endpoint } => CniRequest::Add {
                endpoint: Box::new(endpoint),
                links,
            },
            AgentRequest::Del {
                container_id,
                ifname,
            } => CniRequest::Del {
                container_id,
                ifname,
            },
            AgentRequest::Status => CniRequest::Status,
        }
    }
}

/// Everything that can happen to the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Datastore events, in order (everything already queued, taken at once
    /// so the dataplane is programmed once for the batch).
    Datastore(Vec<Event>),
    /// The endpoint record files and the node's links, as read.
    Endpoints(EndpointSnapshot),
    /// A request on the CNI socket.
    Cni {
        /// Where the reply goes.
        id: RequestId,
        /// The request.
        request: CniRequest,
    },
    /// Time passed (every 500 ms).
    Tick,
    /// The result of an [`Output::Dataplane`].
    DataplaneApplied {
        /// The change's generation.
        generation: u64,
        /// What it cost, or why it was refused.
        result: Result<Applied, String>,
    },
    /// The result of an [`Output::Routes`].
    RoutesApplied(Result<RouteReport, String>),
    /// The result of an [`Output::CheckDataplane`].
    DataplaneChecked {
        /// False when the dataplane was changed behind the agent's back.
        intact: bool,
    },
}

/// Everything the agent asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Apply this change to the policy dataplane; answer with
    /// [`Input::DataplaneApplied`].
    Dataplane(DataplaneChange),
    /// Bring tabby's routes to this; answer with [`Input::RoutesApplied`].
    Routes(DesiredRoutes),
    /// Replace the blocks file with these blocks.
    Blocks(Vec<IpNet>),
    /// What BGP should do now (sent when it changed).
    Bgp {
        /// The router ID (this node's IPv4 address).
        router_id: Ipv4Addr,
        /// Peers, AS and announcements.
        intent: BgpIntent,
    },
    /// Answer a CNI request.
    Reply {
        /// The request's id.
        id: RequestId,
        /// The answer.
        response: AgentResponse,
    },
    /// The agent's status changed.
    Status(Status),
    /// An endpoint record was refused (once per file and reason): log it
    /// and count it in `tabby_endpoints_refused_total{reason}`.
    Refused(Refusal),
    /// Read the endpoint records and links; answer with [`Input::Endpoints`].
    ScanEndpoints,
    /// Check that the dataplane is intact; answer with
    /// [`Input::DataplaneChecked`].
    CheckDataplane,
}

/// What the agent reports about itself (`/status`, `status.json`, gauges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Every kind listed and the result programmed.
    pub ready: bool,
    /// The last datastore barrier programmed.
    pub barrier: Option<u64>,
    /// Admitted local endpoints.
    pub endpoints: usize,
    /// This node's blocks.
    pub blocks: Vec<IpNet>,
    /// NetworkPolicies known.
    pub policies: usize,
    /// Sets the index keeps.
    pub sets: usize,
    /// Pods known.
    pub pods: usize,
    /// Ready, blocks known and the routes installed.
    pub network_ready: bool,
    /// Each watched kind's position, as of the last programming.
    pub datastore: BTreeMap<Kind, Progress>,
}

impl Status {
    /// The JSON of `/status` and `<run-dir>/status.json`; `bgp` is the
    /// speaker's state.
    pub fn to_json(&self, bgp: Option<&serde_json::Value>) -> serde_json::Value {
        serde_json::json!({
            "node": self.node,
            "ready": self.ready,
            "barrier": self.barrier,
            "endpoints": self.endpoints,
            "blocks": self.blocks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "bgp": bgp,
            "datastore": self.datastore.values().map(|p| {
                (format!("{:?}", p.kind), serde_json::json!({
                    "resourceVersion": p.resource_version,
                    "objects": p.objects,
                }))
            }).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// What the core believes the dataplane holds.
#[derive(Debug, Clone, Default)]
struct Programmed {
    endpoints: BTreeMap<HostIface, (PodKey, EndpointPolicy)>,
    ip_sets: BTreeMap<SetName, BTreeSet<IpAddr>>,
    port_sets: BTreeMap<SetName, BTreeSet<PortTriple>>,
    /// How many programmed endpoints refer to each set.
    refs: BTreeMap<SetRef, usize>,
}

/// The agent's state.
pub struct Agent {
    cfg: AgentConfig,
    index: PolicyIndex,
    /// Pods scheduled on this node (or with a local endpoint), kept whole
    /// because their addresses come from the CNI record.
    local_pods: BTreeMap<PodKey, Pod>,
    /// Record files as last read (plus those handed over the socket).
    records: BTreeMap<String, RecordFile>,
    /// The node's links as last read.
    links: Links,
    /// Admitted records by host interface.
    endpoints: BTreeMap<HostIface, EndpointRecord>,
    /// Refusals already reported, so a bad file is logged once.
    refused: BTreeMap<String, Refusal>,
    /// The endpoint records were read at least once.
    scanned: bool,
    programmed: Option<Programmed>,
    /// Endpoints whose record changed since the last programming.
    dirty: BTreeSet<HostIface>,
    /// Changes sent and not yet answered: generation -> full.
    in_flight: BTreeMap<u64, bool>,
    generation: u64,
    /// CNI replies waiting for a generation to be applied.
    waiting: Vec<(u64, RequestId)>,
    /// Programming failed: try again at the next tick.
    retry: bool,
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
    /// Routes must be reconciled at the next tick (endpoints or blocks
    /// changed) rather than within the periodic 10 s.
    routes_dirty: bool,
    routes_ok: bool,
    barrier_seen: Option<u64>,
    barrier_done: Option<u64>,
    /// The watches' positions delivered, and the ones programmed (reported
    /// like the barrier: only once what came before is live).
    progress_seen: BTreeMap<Kind, Progress>,
    progress_done: BTreeMap<Kind, Progress>,
    ticks: u64,
    last_status: Option<Status>,
    last_bgp: Option<(Ipv4Addr, BgpIntent)>,
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
    tabby_policy::pod_key(pod).unwrap_or_else(|| PodKey::new("default", ""))
}

/// An object's namespace (`default` when the reference has none).
fn ns_of(r: &ObjectRef) -> String {
    r.namespace.clone().unwrap_or_else(|| "default".into())
}

fn ref_key(r: &ObjectRef) -> PodKey {
    PodKey::new(ns_of(r), r.name.clone())
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

/// Everything denied: the policy of an endpoint whose Pod the agent does
/// not know (yet).
fn deny_all() -> EndpointPolicy {
    EndpointPolicy {
        ingress: Some(Vec::new()),
        egress: Some(Vec::new()),
    }
}

impl Agent {
    /// A new agent with the blocks the blocks file held (the driver reads
    /// it); nothing is programmed until every kind was listed and the
    /// endpoint records were read.
    pub fn new(cfg: AgentConfig, blocks: Vec<IpNet>) -> Self {
        Agent {
            cfg,
            index: PolicyIndex::new(),
            local_pods: BTreeMap::new(),
            records: BTreeMap::new(),
            links: Links::new(),
            endpoints: BTreeMap::new(),
            refused: BTreeMap::new(),
            scanned: false,
            programmed: None,
            dirty: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            generation: 0,
            waiting: Vec::new(),
            retry: false,
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
            routes_ok: false,
            barrier_seen: None,
            barrier_done: None,
            progress_seen: BTreeMap::new(),
            progress_done: BTreeMap::new(),
            ticks: 0,
            last_status: None,
            last_bgp: None,
        }
    }

    /// The agent's settings.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// True once every kind was listed and the result programmed.
    pub fn ready(&self) -> bool {
        self.synced() && self.programmed.is_some()
    }

    /// True once every kind was listed at least once.
    pub fn synced(&self) -> bool {
        self.resets.len() == Kind::ALL.len()
    }

    /// Admitted local endpoints, by host interface.
    pub fn endpoints(&self) -> &BTreeMap<HostIface, EndpointRecord> {
        &self.endpoints
    }

    /// Refused endpoint records, by file name.
    pub fn refused(&self) -> &BTreeMap<String, Refusal> {
        &self.refused
    }

    /// The addresses of local endpoints (for tools and tests).
    pub fn local_ips(&self) -> Vec<IpAddr> {
        self.endpoints
            .values()
            .flat_map(|r| r.ips.iter().map(|i| i.addr()))
            .collect()
    }

    /// Takes one input; returns what to do.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Datastore(events) => {
                for ev in events {
                    self.handle_event(ev, &mut out);
                }
                self.program(&mut out);
            }
            Input::Endpoints(snapshot) => {
                self.links = snapshot.links;
                self.records = snapshot
                    .records
                    .into_iter()
                    .map(|r| (r.file_name.clone(), r))
                    .collect();
                self.scanned = true;
                self.readmit(&mut out);
                self.program(&mut out);
            }
            Input::Cni { id, request } => self.handle_request(id, request, &mut out),
            Input::Tick => self.tick(&mut out),
            Input::DataplaneApplied { generation, result } => {
                self.dataplane_applied(generation, result, &mut out);
            }
            Input::RoutesApplied(result) => match result {
                Ok(_) => self.routes_ok = true,
                Err(e) => {
                    warn!(error = %e, "route reconciliation failed");
                    self.routes_ok = false;
                }
            },
            Input::DataplaneChecked { intact } => {
                if !intact && self.programmed.is_some() {
                    warn!("the dataplane was changed behind tabby's back; resyncing");
                    self.programmed = None;
                    self.program(&mut out);
                }
            }
        }
        self.publish(&mut out);
        out
    }

    fn tick(&mut self, out: &mut Vec<Output>) {
        self.ticks += 1;
        out.push(Output::ScanEndpoints);
        if self.retry {
            self.program(out);
        }
        if self.ticks.is_multiple_of(4) && self.programmed.is_some() && self.in_flight.is_empty() {
            out.push(Output::CheckDataplane);
        }
        if self.routes_dirty || self.ticks % 20 == 1 {
            self.routes_dirty = false;
            out.push(Output::Routes(self.desired_routes()));
        }
    }

    fn desired_routes(&self) -> DesiredRoutes {
        DesiredRoutes {
            endpoints: self
                .endpoints
                .values()
                .flat_map(|r| {
                    r.ips.iter().map(|ip| EndpointRoute {
                        ip: ip.addr(),
                        iface: r.host_iface.clone(),
                        ifindex: r.host_ifindex,
                    })
                })
                .collect(),
            blocks: self.blocks.clone(),
        }
    }

    /// What the agent reports about itself now.
    pub fn status(&self) -> Status {
        let s = self.index.stats();
        Status {
            node: self.cfg.node_name.clone(),
            ready: self.ready(),
            barrier: self.barrier_done,
            endpoints: self.endpoints.len(),
            blocks: self.blocks.clone(),
            policies: s.policies,
            sets: s.ip_sets + s.port_sets,
            pods: s.pods,
            network_ready: self.ready() && self.routes_ok && !self.blocks.is_empty(),
            datastore: self.progress_done.clone(),
        }
    }

    /// Status and BGP intent, when they changed.
    fn publish(&mut self, out: &mut Vec<Output>) {
        if let Some(port) = self.cfg.bgp_port
            && self.synced()
            && let Some((router_id, intent)) = self.bgp_intent(port)
            && self.last_bgp.as_ref() != Some(&(router_id, intent.clone()))
        {
            self.last_bgp = Some((router_id, intent.clone()));
            out.push(Output::Bgp { router_id, intent });
        }
        let status = self.status();
        if self.last_status.as_ref() != Some(&status) {
            self.last_status = Some(status.clone());
            out.push(Output::Status(status));
        }
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

    /// Remembers a pod if local; returns what the index should see.
    fn track_pod(&mut self, pod: Pod) -> Pod {
        let key = key_of(&pod);
        let effective = self.effective(&pod);
        if self.is_local(&pod, &key) {
            self.local_pods.insert(key, pod);
        } else {
            self.local_pods.remove(&key);
        }
        effective
    }

    /// Forgets every object of `kind` not in `keep` (the end of a list
    /// delivered piecewise).
    fn retain(&mut self, kind: Kind, keep: &[ObjectRef]) {
        match kind {
            Kind::Pod => {
                let keep: BTreeSet<PodKey> = keep.iter().map(ref_key).collect();
                self.local_pods.retain(|k, _| keep.contains(k));
                self.index.retain_pods(|k| keep.contains(k));
            }
            Kind::Namespace => {
                let keep: BTreeSet<&str> = keep.iter().map(|r| r.name.as_str()).collect();
                self.index.retain_namespaces(|n| keep.contains(n));
            }
            Kind::NetworkPolicy => {
                let keep: BTreeSet<PodKey> = keep.iter().map(ref_key).collect();
                self.index
                    .retain_policies(|ns, name| keep.contains(&PodKey::new(ns, name)));
            }
            Kind::Node => {
                let keep: BTreeSet<&str> = keep.iter().map(|r| r.name.as_str()).collect();
                self.nodes.retain(|n, _| keep.contains(n.as_str()));
                self.node_blocks.retain(|n, _| keep.contains(n.as_str()));
            }
            Kind::BgpConfiguration => {
                if !keep.iter().any(|r| r.name == "default") {
                    self.bgp_config = None;
                }
            }
            Kind::BgpPeer => {
                let keep: BTreeSet<&str> = keep.iter().map(|r| r.name.as_str()).collect();
                self.bgp_peers.retain(|n, _| keep.contains(n.as_str()));
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

    /// A complete list of one kind.
    fn reset(&mut self, kind: Kind, objects: Vec<Object>, out: &mut Vec<Output>) {
        match kind {
            Kind::Pod => {
                let keep: BTreeSet<PodKey> = objects
                    .iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some(key_of(p)),
                        _ => None,
                    })
                    .collect();
                self.local_pods.retain(|k, _| keep.contains(k));
                let pods: Vec<Pod> = objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some(self.track_pod(*p)),
                        _ => None,
                    })
                    .collect();
                self.index.reset_pods(pods);
            }
            Kind::Namespace => self.index.reset_namespaces(
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Namespace(n) => Some(*n),
                        _ => None,
                    })
                    .collect(),
            ),
            Kind::NetworkPolicy => self.index.reset_policies(
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::NetworkPolicy(n) => Some(*n),
                        _ => None,
                    })
                    .collect(),
            ),
            Kind::Node
            | Kind::BgpConfiguration
            | Kind::BgpPeer
            | Kind::Secret
            | Kind::BgpFilter
            | Kind::Service
            | Kind::EndpointSlice => {
                let refs: Vec<ObjectRef> = objects.iter().map(Object::reference).collect();
                self.retain(kind, &refs);
                for o in objects {
                    self.apply(o, out);
                }
            }
        }
    }

    fn apply(&mut self, o: Object, out: &mut Vec<Output>) {
        match o {
            Object::Pod(p) => {
                let p = self.track_pod(*p);
                self.index.apply_pod(p);
            }
            Object::Namespace(n) => self.index.apply_namespace(*n),
            Object::NetworkPolicy(np) => self.index.apply_policy(*np),
            Object::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name.clone(), node_address(&n));
                self.node_blocks.insert(name, bgp_policy::pod_cidrs(&n));
                self.node_changed(&n, out);
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

    fn forget(&mut self, r: &ObjectRef) {
        match r.kind {
            Kind::Pod => {
                let key = ref_key(r);
                self.local_pods.remove(&key);
                self.index.delete_pod(&key);
            }
            Kind::Namespace => self.index.delete_namespace(&r.name),
            Kind::NetworkPolicy => {
                let key = ref_key(r);
                self.index.delete_policy(&key.namespace, &key.name);
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
            Kind::Service => self.services.delete_service(&ns_of(r), &r.name),
            Kind::EndpointSlice => self.services.delete_slice(&ns_of(r), &r.name),
        }
    }

    /// Applies one datastore event.
    fn handle_event(&mut self, ev: Event, out: &mut Vec<Output>) {
        match ev {
            Event::Reset(kind, objects) => {
                info!(?kind, count = objects.len(), "datastore resync");
                self.resets.insert(kind);
                self.reset(kind, objects, out);
            }
            Event::Prune(kind, keep) => {
                info!(?kind, count = keep.len(), "datastore resync");
                self.resets.insert(kind);
                self.retain(kind, &keep);
            }
            Event::Apply(o) => {
                let r = o.reference();
                let span = object_span(&r);
                let _e = span.enter();
                debug!("apply");
                self.apply(o, out);
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
    }

    /// This node's blocks come from `spec.podCIDRs` of its Node object.
    fn node_changed(&mut self, node: &Node, out: &mut Vec<Output>) {
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
        out.push(Output::Blocks(blocks.clone()));
        self.blocks = blocks;
        self.routes_dirty = true;
    }

    /// Decides again which records to believe; adopts what changed.
    fn readmit(&mut self, out: &mut Vec<Output>) {
        let admitted = admission::admit(self.records.values(), &self.links);
        for (file, refusal) in &admitted.refused {
            if self.refused.get(file) != Some(refusal) {
                warn!(file = %file, reason = refusal.reason.as_str(), detail = %refusal.detail, "endpoint record refused");
                out.push(Output::Refused(refusal.clone()));
            }
        }
        self.refused = admitted.refused;
        if admitted.endpoints == self.endpoints {
            return;
        }
        let mut touched: BTreeSet<PodKey> = BTreeSet::new();
        for (iface, rec) in &self.endpoints {
            if admitted.endpoints.get(iface) != Some(rec) {
                self.dirty.insert(iface.clone());
                touched.insert(pod_key(rec));
            }
        }
        for (iface, rec) in &admitted.endpoints {
            if self.endpoints.get(iface) != Some(rec) {
                self.dirty.insert(iface.clone());
                touched.insert(pod_key(rec));
            }
        }
        self.endpoints = admitted.endpoints;
        for k in touched {
            self.reindex_pod(&k);
        }
        self.routes_dirty = true;
    }

    /// Handles a request from the CNI plugin.
    fn handle_request(&mut self, id: RequestId, req: CniRequest, out: &mut Vec<Output>) {
        match req {
            CniRequest::Add { endpoint, links } => {
                let span =
                    info_span!("endpoint", pod = %pod_key(&endpoint), iface = %endpoint.host_iface);
                let _e = span.enter();
                let file_name = record_file_name(&endpoint.container_id, &endpoint.ifname);
                self.links = links;
                self.records.insert(
                    file_name.clone(),
                    RecordFile {
                        file_name: file_name.clone(),
                        modified_ms: None,
                        record: Ok(*endpoint),
                    },
                );
                self.readmit(out);
                if let Some(refusal) = self.refused.get(&file_name) {
                    let response = AgentResponse::refused(refusal.to_string());
                    out.push(Output::Reply { id, response });
                    return;
                }
                self.program_then_reply(id, out);
            }
            CniRequest::Del {
                container_id,
                ifname,
            } => {
                self.records
                    .remove(&record_file_name(&container_id, &ifname));
                self.readmit(out);
                self.program_then_reply(id, out);
            }
            CniRequest::Status => {
                let response = if self.ready() {
                    AgentResponse::ok()
                } else {
                    AgentResponse::refused("the agent has not finished its first sync")
                };
                out.push(Output::Reply { id, response });
            }
        }
    }

    /// Programs what changed; the reply goes once it is live.
    fn program_then_reply(&mut self, id: RequestId, out: &mut Vec<Output>) {
        match self.program(out) {
            Some(generation) => self.waiting.push((generation, id)),
            None if !self.in_flight.is_empty() => {
                // Nothing new, but an earlier change this endpoint may be
                // part of is still on its way.
                let last = self.generation;
                self.waiting.push((last, id));
            }
            None if self.ready() => {
                info!(request = id, "endpoint programmed");
                out.push(Output::Reply {
                    id,
                    response: AgentResponse::ok(),
                });
            }
            None => out.push(Output::Reply {
                id,
                response: AgentResponse::refused(
                    "the agent has not finished its first datastore sync",
                ),
            }),
        }
    }

    fn can_program(&self) -> bool {
        // Before the first full sync the index is partial, and before the
        // records are read the endpoints are: programming now would cut
        // off pods that a restarted agent's previous table still serves.
        self.synced() && self.scanned
    }

    /// Sends the dataplane what changed (everything when its state is
    /// unknown). Returns the change's generation, or None when nothing was
    /// sent.
    fn program(&mut self, out: &mut Vec<Output>) -> Option<u64> {
        let changes = self.index.take_changes();
        if !self.can_program() {
            return None;
        }
        let change = match self.programmed.as_mut() {
            None => {
                let (programmed, change) = self.full_change();
                self.programmed = Some(programmed);
                change
            }
            Some(_) => {
                let mut ifaces = std::mem::take(&mut self.dirty);
                if !changes.endpoints.is_empty() {
                    ifaces.extend(
                        self.endpoints
                            .iter()
                            .filter(|(_, r)| changes.endpoints.contains(&pod_key(r)))
                            .map(|(i, _)| i.clone()),
                    );
                }
                self.incremental_change(&ifaces, &changes.ip_sets, &changes.port_sets)
            }
        };
        self.dirty.clear();
        self.retry = false;
        if change.is_empty() {
            if self.in_flight.is_empty() {
                self.barrier_reached();
            }
            return None;
        }
        self.generation += 1;
        let generation = self.generation;
        self.in_flight.insert(generation, change.full);
        out.push(Output::Dataplane(DataplaneChange {
            generation,
            ..change
        }));
        Some(generation)
    }

    /// Everything delivered so far is programmed: the last barrier and the
    /// watches' positions seen become the ones reported (only once ready).
    fn barrier_reached(&mut self) {
        if self.ready() {
            self.barrier_done = self.barrier_seen;
            self.progress_done.clone_from(&self.progress_seen);
        }
    }

    /// The policy of one local endpoint.
    fn endpoint_state(&self, rec: &EndpointRecord) -> (PodKey, EndpointPolicy) {
        let pod = pod_key(rec);
        let policy = self.index.endpoint_policy(&pod).unwrap_or_else(deny_all);
        (pod, policy)
    }

    fn members(&self, r: &SetRef) -> SetMembers {
        match r {
            SetRef::Addrs(n) => {
                SetMembers::Addrs(self.index.ip_set(n).cloned().unwrap_or_default())
            }
            SetRef::Ports(n) => {
                SetMembers::Ports(self.index.port_set(n).cloned().unwrap_or_default())
            }
        }
    }

    /// Everything, for a dataplane whose state is unknown.
    fn full_change(&self) -> (Programmed, DataplaneChange) {
        let mut p = Programmed::default();
        let mut change = DataplaneChange {
            full: true,
            ..Default::default()
        };
        for (iface, rec) in &self.endpoints {
            let (pod, policy) = self.endpoint_state(rec);
            for r in set_refs(&policy) {
                *p.refs.entry(r).or_default() += 1;
            }
            change.endpoints.push(EndpointChange::Add {
                iface: iface.clone(),
                pod: pod.clone(),
                policy: policy.clone(),
            });
            p.endpoints.insert(iface.clone(), (pod, policy));
        }
        for r in p.refs.keys() {
            let members = self.members(r);
            match (&members, r) {
                (SetMembers::Addrs(m), SetRef::Addrs(n)) => {
                    p.ip_sets.insert(n.clone(), m.clone());
                }
                (SetMembers::Ports(m), SetRef::Ports(n)) => {
                    p.port_sets.insert(n.clone(), m.clone());
                }
                _ => {}
            }
            change.sets.push(SetChange::Create {
                name: r.name().clone(),
                members,
            });
        }
        (p, change)
    }

    /// Only the endpoints in `ifaces` and the sets that changed, against
    /// what is programmed.
    fn incremental_change(
        &mut self,
        ifaces: &BTreeSet<HostIface>,
        ip_changed: &BTreeSet<SetName>,
        port_changed: &BTreeSet<SetName>,
    ) -> DataplaneChange {
        let desired: Vec<(HostIface, Option<(PodKey, EndpointPolicy)>)> = ifaces
            .iter()
            .map(|i| {
                (
                    i.clone(),
                    self.endpoints.get(i).map(|r| self.endpoint_state(r)),
                )
            })
            .collect();
        let mut change = DataplaneChange::default();
        let Some(p) = self.programmed.as_mut() else {
            return change;
        };
        let mut gained: BTreeSet<SetRef> = BTreeSet::new();
        let mut lost: BTreeSet<SetRef> = BTreeSet::new();
        for (iface, want) in desired {
            let have = p.endpoints.get(&iface);
            if have == want.as_ref() {
                continue;
            }
            let old_refs = have.map(|(_, pol)| set_refs(pol)).unwrap_or_default();
            let new_refs = want
                .as_ref()
                .map(|(_, pol)| set_refs(pol))
                .unwrap_or_default();
            for r in old_refs {
                if let Some(n) = p.refs.get_mut(&r) {
                    *n -= 1;
                    if *n == 0 {
                        p.refs.remove(&r);
                        lost.insert(r);
                    }
                }
            }
            for r in new_refs {
                let n = p.refs.entry(r.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    gained.insert(r);
                }
            }
            change.endpoints.push(match (&want, have.is_some()) {
                (Some((pod, policy)), false) => EndpointChange::Add {
                    iface: iface.clone(),
                    pod: pod.clone(),
                    policy: policy.clone(),
                },
                (Some((pod, policy)), true) => EndpointChange::Update {
                    iface: iface.clone(),
                    pod: pod.clone(),
                    policy: policy.clone(),
                },
                (None, _) => EndpointChange::Remove {
                    iface: iface.clone(),
                },
            });
            match want {
                Some(v) => p.endpoints.insert(iface, v),
                None => p.endpoints.remove(&iface),
            };
        }
        // A set lost and regained in one change simply stays.
        let both: BTreeSet<SetRef> = gained.intersection(&lost).cloned().collect();
        for r in &both {
            gained.remove(r);
            lost.remove(r);
        }
        let index = &self.index;
        for r in &gained {
            let members = match r {
                SetRef::Addrs(n) => {
                    let m = index.ip_set(n).cloned().unwrap_or_default();
                    p.ip_sets.insert(n.clone(), m.clone());
                    SetMembers::Addrs(m)
                }
                SetRef::Ports(n) => {
                    let m = index.port_set(n).cloned().unwrap_or_default();
                    p.port_sets.insert(n.clone(), m.clone());
                    SetMembers::Ports(m)
                }
            };
            change.sets.push(SetChange::Create {
                name: r.name().clone(),
                members,
            });
        }
        // Sets still programmed whose members changed (or that were both
        // lost and regained: their members may have moved meanwhile).
        let kept_changed = ip_changed
            .iter()
            .map(|n| SetRef::Addrs(n.clone()))
            .chain(port_changed.iter().map(|n| SetRef::Ports(n.clone())))
            .chain(both)
            .filter(|r| !gained.contains(r) && p.refs.contains_key(r))
            .collect::<BTreeSet<_>>();
        for r in kept_changed {
            match &r {
                SetRef::Addrs(n) => {
                    let now = index.ip_set(n).cloned().unwrap_or_default();
                    let before = p.ip_sets.entry(n.clone()).or_default();
                    let added: BTreeSet<IpAddr> = now.difference(before).copied().collect();
                    let removed: BTreeSet<IpAddr> = before.difference(&now).copied().collect();
                    if added.is_empty() && removed.is_empty() {
                        continue;
                    }
                    *before = now;
                    change.sets.push(SetChange::Update {
                        name: n.clone(),
                        added: SetMembers::Addrs(added),
                        removed: SetMembers::Addrs(removed),
                    });
                }
                SetRef::Ports(n) => {
                    let now = index.port_set(n).cloned().unwrap_or_default();
                    let before = p.port_sets.entry(n.clone()).or_default();
                    let added: BTreeSet<PortTriple> = now.difference(before).copied().collect();
                    let removed: BTreeSet<PortTriple> = before.difference(&now).copied().collect();
                    if added.is_empty() && removed.is_empty() {
                        continue;
                    }
                    *before = now;
                    change.sets.push(SetChange::Update {
                        name: n.clone(),
                        added: SetMembers::Ports(added),
                        removed: SetMembers::Ports(removed),
                    });
                }
            }
        }
        for r in lost {
            match &r {
                SetRef::Addrs(n) => {
                    p.ip_sets.remove(n);
                }
                SetRef::Ports(n) => {
                    p.port_sets.remove(n);
                }
            }
            change.sets.push(SetChange::Delete {
                name: r.name().clone(),
            });
        }
        change
    }

    fn dataplane_applied(
        &mut self,
        generation: u64,
        result: Result<Applied, String>,
        out: &mut Vec<Output>,
    ) {
        let Some(full) = self.in_flight.remove(&generation) else {
            return;
        };
        match result {
            Ok(_) => {
                if self.in_flight.is_empty() {
                    self.barrier_reached();
                    let (done, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                        .into_iter()
                        .partition(|(g, _)| *g <= generation);
                    self.waiting = later;
                    for (_, id) in done {
                        info!(request = id, "endpoint programmed");
                        out.push(Output::Reply {
                            id,
                            response: AgentResponse::ok(),
                        });
                    }
                }
            }
            Err(e) => {
                // What the dataplane holds is now unknown: replace it whole.
                self.programmed = None;
                if !full {
                    warn!(error = %e, "incremental update failed; replacing the whole dataplane");
                    if let Some(g) = self.program(out) {
                        for w in &mut self.waiting {
                            w.0 = w.0.max(g);
                        }
                        return;
                    }
                }
                warn!(error = %e, "cannot program the dataplane; retrying at the next tick");
                self.retry = true;
                for (_, id) in std::mem::take(&mut self.waiting) {
                    out.push(Output::Reply {
                        id,
                        response: AgentResponse::refused(format!(
                            "cannot program the dataplane: {e}"
                        )),
                    });
                }
            }
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
            Vec::new(),
        )
    }

    const DEFAULT_TEST_ASN: u32 = 64512;

    fn feed(a: &mut Agent, yaml: &str) {
        for o in parse_manifests(std::path::Path::new("t.yaml"), yaml).unwrap() {
            a.step(Input::Datastore(vec![Event::Apply(o)]));
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
        a.step(Input::Datastore(vec![Event::Prune(
            Kind::BgpConfiguration,
            vec![],
        )]));
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
        a.step(Input::Datastore(vec![Event::Delete(ObjectRef {
            kind: Kind::BgpPeer,
            namespace: None,
            name: "tor".into(),
        })]));
        assert_eq!(peers(&a).len(), 2);
    }

    #[test]
    fn a_barrier_is_done_only_once_the_agent_is_ready() {
        let mut a = agent("n1");
        a.step(Input::Datastore(vec![Event::Barrier(3)]));
        let status = a.last_status.clone().unwrap();
        assert_eq!(status.barrier, None);
        assert!(!status.ready);
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
