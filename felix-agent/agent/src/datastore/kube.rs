//! The Kubernetes backend: one kube-rs watcher per kind, turned into
//! [`Event`]s.
//!
//! Each kind runs its own [`watcher()`] (LIST, then WATCH from the list's
//! `resourceVersion`). `Init`/`InitApply`/`InitDone` are buffered and
//! delivered as one [`Event::Reset`], so the consumer swaps a kind's state
//! atomically and never prunes from a partial list; `Apply`/`Delete` pass
//! through. An outage or relist never produces a `Reset` until a LIST has
//! completed.
//!
//! # Load on the API server at 5,000 nodes
//!
//! Every agent watches every Pod, because a NetworkPolicy peer can be any
//! pod: 5,000 nodes × 30 = 150,000 pods. A Pod in JSON is ~6 KB (4–8 KB
//! usual; `managedFields` ~1.5 KB of it).
//!
//! - Initial LIST per agent: 150,000 × 6 KB ≈ 900 MB. All agents at once
//!   (every watch answered 410 after an API server restart, a DaemonSet
//!   rolled at once): 5,000 × 900 MB ≈ 4.5 TB. Each agent then holds
//!   ~0.5 GB of decoded pods.
//! - Each Pod write fans out to 5,000 watch events × 6 KB = 30 MB (encoded
//!   once, sent 5,000 times). A pod's life is ~6 writes (create, bind, IP,
//!   ready, graceful delete, delete) ≈ 180 MB; 20 pod starts/s ≈ 3.6 GB/s
//!   (~29 Gb/s) out of the API servers.
//! - Nodes cost that much while nothing happens: 5,000 kubelets report
//!   status every 5 min (≈ 17 writes/s) of a ~10 KB Node (image list):
//!   17 × 10 KB × 5,000 watchers ≈ 850 MB/s.
//! - A metadata-only watch (~1–1.5 KB a pod) would cut pod bytes ~5×, but
//!   it has no `status.podIPs`, and the spec is needed for `hostNetwork`
//!   and container port names. What tabby uses (name, namespace, labels,
//!   IPs, `hostNetwork`, named ports) is ~300–500 B, 12–20× less, but the
//!   API server cannot serve such a projection; only a fan-out layer can.
//!
//! How this module bounds it:
//!
//! - Resume, never relist: a dropped watch restarts from the last
//!   `resourceVersion` seen (one request, no LIST). Only `410 Gone` relists:
//!   as an ERROR event (kube handles it) or as the WATCH's HTTP status
//!   (which kube would retry with the same stale version forever, so it is
//!   handled here).
//! - Bookmarks keep that version fresh in quiet periods, so a reconnect
//!   after minutes resumes instead of meeting 410 and a 900 MB relist.
//! - LISTs ask for `resourceVersion=0` (`NotOlderThan`), unpaginated (kube
//!   drops `resourceVersion=0` when paginating): served from the API
//!   server's watch cache, not read from etcd. The price: one response of
//!   the full size, and a relist may briefly be older than the last event.
//! - Backoff per kind: 0.8 s doubling to 30 s, each delay stretched by a
//!   random 0–100 %, reset only after 120 s without errors, not by success
//!   (kube's `StreamBackoff` resets on any item, which lets a LIST→410 loop
//!   relist every second forever). In an outage: at most one request per
//!   kind per delay; 5,000 agents × 4 kinds at the cap ≈ 300–700 requests/s
//!   in all, spread out, not synchronised. kube's own retry of 429/503/504
//!   (from 5 ms, 15 times, under this backoff) is turned off in
//!   [`KubeDatastore::connect`], or a 503 would bring bursts of requests
//!   from every agent at once.
//! - The agent's only write is one PATCH of its Node's status per start
//!   (`crate::node_status`), retried with the same backoff.
//! - Pods are selected with `status.phase!=Succeeded,status.phase!=Failed`:
//!   finished pods (Jobs) are never sent, and a pod that finishes arrives
//!   as a delete (its address is released and may be reused). The other
//!   kinds have no useful filter: every agent needs all of them.
//! - `managedFields` are dropped on receipt (agent memory only).
//!
//! - Secrets: the agent never lists or watches them. It GETs, in its own
//!   namespace, only the Secrets that BGPPeers name in
//!   `spec.password.secretKeyRef`, when that set changes and every
//!   [`SECRET_REFRESH`] (a few GETs a minute per agent when BGP passwords
//!   are used, none otherwise). RBAC grants `get` on those names only.
//!
//! Every object is validated on receipt ([`check`]): an invalid one is
//! logged, counted and dropped, and a list holding one is delivered as
//! `Apply`s and a `Prune` that still names it, so its last valid version
//! stays in force.
//!
//! Not bounded: the fan-out itself, and a proxy that answers every WATCH
//! with an empty 200 and closes it, which kube re-watches at once (no error
//! to back off on; client-go waits 1 s there). Spacing WATCHes needs a
//! layer under the `Client` (the `tower-service` and `http` crates).
//!
//! Direct watches are fine to a few hundred nodes. Beyond that tabby needs
//! what Calico calls Typha: relays (say one per 200 agents, 25 in all)
//! watch the API server and fan out to agents. API-server fan-out drops
//! from 5,000 to 25 (200×); a restarted agent lists from a relay; a relay
//! sends only the fields above (~15× fewer bytes) and drops writes that
//! change none of them (node heartbeats, pod conditions), which removes
//! most node traffic. The cost: one more component and hop.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, DefaultBackoff};
use kube::{Client, CustomResourceExt, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tabby_crds::password::{BgpPassword, SecretPasswords};
use tabby_crds::{BGPConfiguration, BGPFilter, BGPPeer};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{DatastoreError, Event, Kind, Object, ObjectRef, Progress, check};
use crate::metrics::Metrics;

/// How often the Secrets that BGPPeers name are read again (a changed
/// password reaches the sessions within this time).
pub const SECRET_REFRESH: Duration = Duration::from_secs(30);

/// Pods that can never carry traffic again: their addresses are released
/// and may already belong to another pod, so they must not reach the index.
const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// Delay used if the backoff ever runs dry (it does not: kube's default has
/// no retry limit).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Kubernetes datastore: watches the API server with kube-rs.
pub struct KubeDatastore {
    client: Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
}

impl KubeDatastore {
    /// In-cluster config, or the given kubeconfig file.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, DatastoreError> {
        let mut config = match kubeconfig {
            Some(path) => {
                let failed = |e: kube::config::KubeconfigError| {
                    DatastoreError::Client(format!("kubeconfig {}: {e}", path.display()))
                };
                let file = Kubeconfig::read_from(path).map_err(failed)?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(failed)?
            }
            None => kube::Config::incluster()
                .map_err(|e| DatastoreError::Client(format!("in-cluster config: {e}")))?,
        };
        // kube's client retries 429/503/504 by itself, from 5 ms and up to
        // 15 times, underneath the watches' backoff: an API server answering
        // 503 would get a burst from every agent. The watches' backoff (and
        // the status PATCH's) is the only one.
        config.default_retry = false;
        let client = Client::try_from(config).map_err(|e| DatastoreError::Client(e.to_string()))?;
        Ok(Self::from_client(client))
    }

    /// From an existing client (tests point it at a fake API server).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            metrics: Arc::new(Metrics::default()),
            namespace: None,
        }
    }

    /// Counts refused objects in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The agent's namespace, where the Secrets BGPPeers name live
    /// (default: the client's, in a cluster the service account's).
    pub fn with_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// The client, for writes that go with the watches (the Node's status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Watches Pods, Namespaces, NetworkPolicies, Nodes and tabby's BGP
    /// resources (all namespaces)
    /// and sends Events into `tx` until `tx` is closed. Returns when the
    /// receiver is dropped.
    pub async fn run(self, tx: mpsc::Sender<Event>) {
        // Four futures on one task rather than four spawned tasks: nothing
        // outlives `run`, and a full channel holds back only the kind that
        // is sending.
        let m = &self.metrics;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| self.client.default_namespace().to_string());
        // BGPPeers pass through a task that learns which Secrets they name.
        let (peer_tx, peer_rx) = mpsc::channel(64);
        let (names_tx, names_rx) = watch::channel(BTreeSet::new());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        tokio::join!(
            watch_kind::<Pod>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<Namespace>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<NetworkPolicy>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<Node>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<Tolerant<BGPConfiguration>>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<Tolerant<BGPPeer>>(self.client.clone(), peer_tx, m.clone()),
            watch_kind::<Tolerant<BGPFilter>>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<Service>(self.client.clone(), tx.clone(), m.clone()),
            watch_kind::<EndpointSlice>(self.client.clone(), tx.clone(), m.clone()),
            follow_peer_secrets(peer_rx, tx.clone(), names_tx),
            read_secrets(secrets, names_rx, tx, m.clone()),
        );
    }
}

/// The Secret a BGPPeer's password is in, if any.
fn secret_of(o: &Object) -> Option<(String, String)> {
    match o {
        Object::BgpPeer(p) => match &p.spec.password {
            Some(BgpPassword::SecretKeyRef { secret_key_ref }) => {
                Some((o.reference().name, secret_key_ref.name.clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Passes BGPPeer events on, keeping `names` at the set of Secrets they
/// name.
async fn follow_peer_secrets(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    names: watch::Sender<BTreeSet<String>>,
) {
    let mut by_peer: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let ev = tokio::select! {
            () = tx.closed() => return,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        match &ev {
            Event::Reset(_, objects) => {
                by_peer = objects.iter().filter_map(secret_of).collect();
            }
            Event::Prune(_, keep) => {
                let keep: BTreeSet<&str> = keep.iter().map(|r| r.name.as_str()).collect();
                by_peer.retain(|p, _| keep.contains(p.as_str()));
            }
            Event::Apply(o) => {
                by_peer.remove(&o.reference().name);
                by_peer.extend(secret_of(o));
            }
            Event::Delete(r) => {
                by_peer.remove(&r.name);
            }
            Event::Barrier(_) | Event::Progress(_) => {}
        }
        let wanted: BTreeSet<String> = by_peer.values().cloned().collect();
        names.send_if_modified(|n| {
            let changed = *n != wanted;
            *n = wanted;
            changed
        });
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// GETs the Secrets in `names` (nothing else: RBAC allows only them) when
/// the set changes and every [`SECRET_REFRESH`], and sends them as one
/// `Reset` whenever what they hold changed. A Secret that cannot be read
/// keeps its last value; one that is gone (404) is dropped.
async fn read_secrets(
    api: Api<Secret>,
    mut names: watch::Receiver<BTreeSet<String>>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let span = info_span!(
        "kube_secrets",
        namespace = api.namespace().unwrap_or_default()
    );
    async move {
        let mut known: BTreeMap<String, SecretPasswords> = BTreeMap::new();
        let mut sent: Option<Vec<SecretPasswords>> = None;
        let mut tick = tokio::time::interval(SECRET_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wanted = names.borrow_and_update().clone();
            known.retain(|n, _| wanted.contains(n));
            for name in &wanted {
                match api.get_opt(name).await {
                    Ok(Some(secret)) => match check::secret(&secret) {
                        Ok(Object::Secret(p)) => {
                            known.insert(name.clone(), *p);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let r = ObjectRef {
                                kind: Kind::Secret,
                                namespace: api.namespace().map(str::to_string),
                                name: name.clone(),
                            };
                            check::refused(&metrics, "the API server", &r, &e);
                        }
                    },
                    Ok(None) => {
                        if known.remove(name).is_some() || sent.is_none() {
                            warn!(secret = %name, "a Secret named by a BGPPeer does not exist");
                        }
                    }
                    Err(e) => warn!(secret = %name, error = %e, "cannot read a Secret named by a BGPPeer; keeping what was read before"),
                }
            }
            let now: Vec<SecretPasswords> = known.values().cloned().collect();
            if sent.as_ref() != Some(&now) {
                let objects = now.iter().cloned().map(|p| Object::Secret(Box::new(p))).collect();
                if tx.send(Event::Reset(Kind::Secret, objects)).await.is_err() {
                    return;
                }
                sent = Some(now);
            }
            tokio::select! {
                () = tx.closed() => return,
                changed = names.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
    .instrument(span)
    .await
}

/// A kind the datastore watches.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The datastore's name for the kind.
    const KIND: Kind;

    /// Wraps the object for the consumer (None: it cannot be read; skipped).
    fn into_object(self) -> Option<Object>;

    /// A tabby CRD, which may not be installed: a 404 means "none".
    const OPTIONAL: bool = false;

    /// What to ask the API server for.
    fn config() -> watcher::Config {
        base_config()
    }
}

/// LISTs from the watch cache, WATCHes with bookmarks.
fn base_config() -> watcher::Config {
    watcher::Config {
        // kube's default already asks for bookmarks; say so, since
        // resuming without a relist depends on it.
        bookmarks: true,
        // kube drops `resourceVersion=0` from paginated LISTs, which would
        // turn them into quorum reads from etcd; the watch cache serves an
        // unpaginated LIST (and ignores `limit` anyway).
        page_size: None,
        ..watcher::Config::default().any_semantic()
    }
}

impl Watched for Pod {
    const KIND: Kind = Kind::Pod;

    fn into_object(self) -> Option<Object> {
        Some(Object::Pod(Box::new(self)))
    }

    fn config() -> watcher::Config {
        base_config().fields(POD_FIELD_SELECTOR)
    }
}

impl Watched for Namespace {
    const KIND: Kind = Kind::Namespace;

    fn into_object(self) -> Option<Object> {
        Some(Object::Namespace(Box::new(self)))
    }
}

impl Watched for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;

    fn into_object(self) -> Option<Object> {
        Some(Object::NetworkPolicy(Box::new(self)))
    }
}

impl Watched for Node {
    const KIND: Kind = Kind::Node;

    fn into_object(self) -> Option<Object> {
        Some(Object::Node(Box::new(self)))
    }
}

impl Watched for Tolerant<BGPConfiguration> {
    const KIND: Kind = Kind::BgpConfiguration;
    const OPTIONAL: bool = true;

    fn into_object(self) -> Option<Object> {
        self.object
            .map(|mut o| {
                o.metadata = self.meta;
                o
            })
            .map(|o| Object::BgpConfiguration(Box::new(o)))
    }
}

impl Watched for Tolerant<BGPPeer> {
    const KIND: Kind = Kind::BgpPeer;
    const OPTIONAL: bool = true;

    fn into_object(self) -> Option<Object> {
        self.object
            .map(|mut o| {
                o.metadata = self.meta;
                o
            })
            .map(|o| Object::BgpPeer(Box::new(o)))
    }
}

impl Watched for Service {
    const KIND: Kind = Kind::Service;

    fn into_object(self) -> Option<Object> {
        Some(Object::Service(Box::new(self)))
    }
}

impl Watched for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;

    fn into_object(self) -> Option<Object> {
        Some(Object::EndpointSlice(Box::new(self)))
    }
}

impl Watched for Tolerant<BGPFilter> {
    const KIND: Kind = Kind::BgpFilter;
    const OPTIONAL: bool = true;

    fn into_object(self) -> Option<Object> {
        self.object
            .map(|mut o| {
                o.metadata = self.meta;
                o
            })
            .map(|o| Object::BgpFilter(Box::new(o)))
    }
}

/// One of tabby's resources as a newer tabby may have written it. Fields
/// this agent's schema does not declare are pruned before the object is
/// parsed, as an API server prunes what a CRD does not declare: with a
/// newer CRD installed, an object carrying a newer field is read for what
/// this version knows, instead of failing to parse and with it the whole
/// LIST of its kind (the spec types refuse unknown fields, which catches
/// typos in manifests). An object that still does not parse is skipped,
/// with a warning.
#[derive(Clone, Debug)]
struct Tolerant<K> {
    meta: ObjectMeta,
    object: Option<K>,
}

impl<K: Resource<DynamicType = ()>> Resource for Tolerant<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

impl<'de, K: CustomResourceExt + DeserializeOwned> Deserialize<'de> for Tolerant<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(d)?;
        let meta: ObjectMeta =
            serde_json::from_value(value["metadata"].clone()).map_err(serde::de::Error::custom)?;
        if let Some(spec) = value.get_mut("spec") {
            let crd = serde_json::to_value(K::crd()).unwrap_or_default();
            let schema =
                &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
            prune(spec, schema);
        }
        let object = match serde_json::from_value::<K>(value) {
            Ok(o) => Some(o),
            Err(e) => {
                warn!(name = ?meta.name, error = %e, "skipping an object that does not parse");
                None
            }
        };
        Ok(Tolerant { meta, object })
    }
}

/// Removes from `value` every field `schema` (an OpenAPI v3 schema as
/// JSON) does not declare, recursively.
fn prune(value: &mut serde_json::Value, schema: &serde_json::Value) {
    use serde_json::Value;
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                map.retain(|k, _| props.contains_key(k));
                for (k, child) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(child, s);
                    }
                }
            } else if let Some(inner) = schema.get("additionalProperties") {
                for child in map.values_mut() {
                    prune(child, inner);
                }
            }
        }
        Value::Array(items) => {
            if let Some(inner) = schema.get("items") {
                for item in items {
                    prune(item, inner);
                }
            }
        }
        _ => {}
    }
}

/// An object's reference and resourceVersion, from its metadata.
fn position_of<K: Watched>(o: &K) -> (ObjectRef, u64) {
    let meta = o.meta();
    (
        ObjectRef {
            kind: K::KIND,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        },
        meta.resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0),
    )
}

/// Turns one kind's watcher events into datastore events, holding a
/// (re)list back until it is complete.
#[derive(Debug)]
struct Resync {
    kind: Kind,
    /// Objects of the LIST in progress; `None` outside a LIST.
    listing: Option<Vec<Object>>,
    /// The objects delivered, and the highest resourceVersion among them
    /// (see [`Event::Progress`]).
    known: std::collections::BTreeSet<ObjectRef>,
    resource_version: u64,
    /// What the LIST in progress has delivered, readable or not.
    listed: Vec<(ObjectRef, u64)>,
}

impl Resync {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            listing: None,
            known: std::collections::BTreeSet::new(),
            resource_version: 0,
            listed: Vec::new(),
        }
    }

    /// Where the watch is: the highest resourceVersion delivered and how
    /// many objects the kind has.
    fn progress(&self) -> Event {
        Event::Progress(Progress {
            kind: self.kind,
            resource_version: self.resource_version,
            objects: self.known.len(),
        })
    }

    /// The datastore event for one watcher event, if any.
    fn step<K: Watched>(&mut self, event: watcher::Event<K>) -> Option<Event> {
        // Server-side apply bookkeeping: often a third of the object and
        // never read by the agent.
        let event = event.modify(|o| o.meta_mut().managed_fields = None);
        match event {
            watcher::Event::Init => {
                // A LIST that failed half way starts over with a new Init:
                // what it had delivered is dropped, never applied.
                self.listing = Some(Vec::new());
                self.listed.clear();
                None
            }
            watcher::Event::InitApply(o) => {
                let (r, rv) = position_of(&o);
                match &mut self.listing {
                    Some(listing) => {
                        self.listed.push((r, rv));
                        listing.extend(o.into_object());
                    }
                    // kube always sends Init first; a list not seen to
                    // start can never be delivered as complete.
                    None => warn!("listed object outside a list; ignored"),
                }
                None
            }
            watcher::Event::InitDone => match self.listing.take() {
                Some(objects) => {
                    let listed = std::mem::take(&mut self.listed);
                    self.resource_version = listed.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
                    self.known = listed.into_iter().map(|(r, _)| r).collect();
                    Some(Event::Reset(self.kind, objects))
                }
                None => {
                    warn!("list ended without having started; ignored");
                    None
                }
            },
            watcher::Event::Apply(o) => {
                let (r, rv) = position_of(&o);
                self.known.insert(r);
                self.resource_version = self.resource_version.max(rv);
                o.into_object().map(Event::Apply)
            }
            watcher::Event::Delete(o) => {
                // A deletion's resourceVersion is the revision that deleted it.
                let (r, rv) = position_of(&o);
                self.resource_version = self.resource_version.max(rv);
                self.known.remove(&r);
                Some(Event::Delete(r))
            }
        }
    }
}

/// The API server's status code carried by a watcher error, if any.
fn status_code(err: &watcher::Error) -> Option<u16> {
    match err {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        },
        watcher::Error::NoResourceVersion => None,
    }
}

/// True when the error says our resourceVersion is too old: only a new LIST
/// recovers from that.
fn is_gone(err: &watcher::Error) -> bool {
    status_code(err) == Some(410)
}

/// True when the resource does not exist on the server (its CRD is not
/// installed).
fn is_not_found(err: &watcher::Error) -> bool {
    status_code(err) == Some(404)
}

/// Watches one kind until `tx` is closed.
async fn watch_kind<K: Watched>(client: Client, tx: mpsc::Sender<Event>, metrics: Arc<Metrics>) {
    let span = info_span!("kube_watch", kind = ?K::KIND);
    watch_loop::<K>(Api::all(client), tx, metrics)
        .instrument(span)
        .await;
}

/// Drops invalid objects (logged and counted). A list that held one
/// becomes `Apply`s and a `Prune` naming every listed object, so the
/// consumer keeps the last valid version of the invalid ones.
fn screen(event: Event, metrics: &Metrics) -> Vec<Event> {
    let refuse = |o: &Object| match check::check(o) {
        Ok(()) => false,
        Err(e) => {
            check::refused(metrics, "the API server", &o.reference(), &e);
            true
        }
    };
    match event {
        Event::Apply(o) if refuse(&o) => Vec::new(),
        Event::Reset(kind, objects) => {
            let bad: Vec<bool> = objects.iter().map(refuse).collect();
            if !bad.contains(&true) {
                return vec![Event::Reset(kind, objects)];
            }
            let keep = objects.iter().map(Object::reference).collect();
            let mut out: Vec<Event> = objects
                .into_iter()
                .zip(bad)
                .filter(|(_, bad)| !bad)
                .map(|(o, _)| Event::Apply(o))
                .collect();
            out.push(Event::Prune(kind, keep));
            out
        }
        other => vec![other],
    }
}

async fn watch_loop<K: Watched>(api: Api<K>, tx: mpsc::Sender<Event>, metrics: Arc<Metrics>) {
    let config = K::config();
    let mut resync = Resync::new(K::KIND);
    // Called once per error and never reset on success (see the module
    // doc); it resets itself after 120 s without errors.
    let mut backoff = DefaultBackoff::default();
    // An optional kind whose CRD is missing is reported once as empty, so
    // that the agent's first sync does not wait for it forever.
    let mut reported_missing = false;
    loop {
        // A fresh watcher starts with a LIST; the old one is only dropped
        // on 410 Gone (or if it ever ended).
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = stream.next() => next,
            };
            let (relist, failure) = match next {
                Some(Ok(event)) => {
                    let before = (resync.resource_version, resync.known.len());
                    let changed = resync.step(event);
                    let moved = before != (resync.resource_version, resync.known.len());
                    if let Some(event) = changed {
                        reported_missing = false;
                        for event in screen(event, &metrics) {
                            log_event(&event);
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        if tx.send(resync.progress()).await.is_err() {
                            return;
                        }
                    } else if moved && tx.send(resync.progress()).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Err(err)) if K::OPTIONAL && is_not_found(&err) => {
                    if !reported_missing {
                        info!("the resource is not installed; treating it as empty");
                        reported_missing = true;
                        resync.known.clear();
                        if tx.send(Event::Reset(K::KIND, Vec::new())).await.is_err()
                            || tx.send(resync.progress()).await.is_err()
                        {
                            return;
                        }
                    }
                    (true, err.to_string())
                }
                Some(Err(err)) => (is_gone(&err), err.to_string()),
                // kube's watcher never ends; if it does, start over without
                // spinning.
                None => (true, "watch stream ended".to_owned()),
            };
            let delay = backoff.next().unwrap_or(MAX_BACKOFF);
            warn!(error = %failure, retry_in = ?delay, relist, "watch failed");
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
            if relist {
                break;
            }
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Reset(_, objects) => info!(objects = objects.len(), "resynced"),
        Event::Prune(_, keep) => info!(objects = keep.len(), "resynced"),
        Event::Apply(o) => {
            let r = o.reference();
            debug!(namespace = ?r.namespace, name = %r.name, "applied");
        }
        Event::Delete(r) => debug!(namespace = ?r.namespace, name = %r.name, "deleted"),
        Event::Barrier(n) => debug!(n, "barrier"),
        Event::Progress(_) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
    use kube::core::Status;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some("7".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn names(event: &Event) -> Vec<String> {
        match event {
            Event::Reset(_, objects) => objects.iter().map(|o| o.reference().name).collect(),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[test]
    fn a_list_is_held_back_until_done_then_delivered_whole() {
        let mut r = Resync::new(Kind::Pod);
        assert_eq!(r.step(watcher::Event::<Pod>::Init), None);
        assert_eq!(r.step(watcher::Event::InitApply(pod("a"))), None);
        assert_eq!(r.step(watcher::Event::InitApply(pod("b"))), None);
        let reset = r.step(watcher::Event::<Pod>::InitDone).unwrap();
        assert_eq!(names(&reset), ["a", "b"]);
    }

    #[test]
    fn a_list_that_restarts_drops_what_the_failed_one_delivered() {
        let mut r = Resync::new(Kind::Pod);
        r.step(watcher::Event::<Pod>::Init);
        r.step(watcher::Event::InitApply(pod("stale")));
        r.step(watcher::Event::<Pod>::Init);
        r.step(watcher::Event::InitApply(pod("fresh")));
        let reset = r.step(watcher::Event::<Pod>::InitDone).unwrap();
        assert_eq!(names(&reset), ["fresh"]);
    }

    #[test]
    fn an_empty_list_is_an_empty_reset_but_an_unstarted_one_is_nothing() {
        let mut r = Resync::new(Kind::NetworkPolicy);
        assert_eq!(r.step(watcher::Event::<NetworkPolicy>::InitDone), None);
        r.step(watcher::Event::<NetworkPolicy>::Init);
        assert_eq!(
            r.step(watcher::Event::<NetworkPolicy>::InitDone),
            Some(Event::Reset(Kind::NetworkPolicy, vec![]))
        );
    }

    #[test]
    fn applies_and_deletes_pass_through_without_managed_fields() {
        let mut r = Resync::new(Kind::Pod);
        let Some(Event::Apply(Object::Pod(p))) = r.step(watcher::Event::Apply(pod("a"))) else {
            panic!("expected an apply");
        };
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(
            r.step(watcher::Event::Delete(pod("a"))),
            Some(Event::Delete(super::super::ObjectRef {
                kind: Kind::Pod,
                namespace: Some("shop".into()),
                name: "a".into(),
            }))
        );
    }

    #[test]
    fn a_field_a_newer_tabby_added_is_pruned_and_the_rest_is_read() {
        let json = serde_json::json!({
            "apiVersion": "tabby.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "tor", "resourceVersion": "12"},
            "spec": {"peerIP": "10.0.0.1", "asNumber": 65000, "futureKnob": "turbo"},
        });
        let t: Tolerant<BGPPeer> = serde_json::from_value(json).unwrap();
        assert_eq!(t.object.as_ref().unwrap().spec.peer_ip, "10.0.0.1");
        let Some(Object::BgpPeer(p)) = t.into_object() else {
            panic!("expected a BGPPeer");
        };
        assert_eq!(p.metadata.name.as_deref(), Some("tor"));
    }

    #[test]
    fn an_object_that_does_not_parse_is_skipped_but_counted() {
        let json = serde_json::json!({
            "apiVersion": "tabby.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "bad", "resourceVersion": "15"},
            "spec": {"peerIP": "10.0.0.1", "asNumber": "not a number"},
        });
        let t: Tolerant<BGPPeer> = serde_json::from_value(json).unwrap();
        let mut r = Resync::new(Kind::BgpPeer);
        assert_eq!(r.step(watcher::Event::Apply(t)), None);
        assert_eq!(
            r.progress(),
            Event::Progress(Progress {
                kind: Kind::BgpPeer,
                resource_version: 15,
                objects: 1
            })
        );
    }

    #[test]
    fn progress_counts_the_objects_and_keeps_the_highest_version() {
        let mut r = Resync::new(Kind::Pod);
        r.step(watcher::Event::<Pod>::Init);
        r.step(watcher::Event::InitApply(pod("a")));
        r.step(watcher::Event::<Pod>::InitDone);
        let mut b = pod("b");
        b.metadata.resource_version = Some("9".into());
        r.step(watcher::Event::Apply(b.clone()));
        b.metadata.resource_version = Some("11".into());
        r.step(watcher::Event::Delete(b));
        assert_eq!(
            r.progress(),
            Event::Progress(Progress {
                kind: Kind::Pod,
                resource_version: 11,
                objects: 1
            })
        );
    }

    #[test]
    fn only_410_means_gone() {
        let gone = Status::failure("too old resource version", "Expired").with_code(410);
        let other = Status::failure("boom", "InternalError").with_code(500);
        assert!(is_gone(&watcher::Error::WatchError(Box::new(gone.clone()))));
        assert!(is_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(Box::new(gone))
        )));
        assert!(!is_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(Box::new(other))
        )));
        assert!(!is_gone(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn an_invalid_object_from_the_api_server_is_dropped_and_counted() {
        let m = Metrics::default();
        let mut bad = NetworkPolicy::default();
        bad.metadata.name = Some("p".into());
        bad.metadata.namespace = Some("x".into());
        bad.spec =
            Some(serde_json::from_str(r#"{"ingress": [{"ports": [{"port": 70000}]}]}"#).unwrap());
        let mut good = bad.clone();
        good.metadata.name = Some("q".into());
        good.spec = None;
        let apply = screen(
            Event::Apply(Object::NetworkPolicy(Box::new(bad.clone()))),
            &m,
        );
        assert_eq!(apply, vec![]);
        assert_eq!(m.invalid_objects.get("NetworkPolicy"), 1);
        // In a list: the valid ones applied, then a prune that keeps the
        // invalid one's last valid version.
        let list = screen(
            Event::Reset(
                Kind::NetworkPolicy,
                vec![
                    Object::NetworkPolicy(Box::new(bad)),
                    Object::NetworkPolicy(Box::new(good.clone())),
                ],
            ),
            &m,
        );
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], Event::Apply(Object::NetworkPolicy(Box::new(good))));
        let Event::Prune(Kind::NetworkPolicy, keep) = &list[1] else {
            panic!("{list:?}");
        };
        let names: Vec<&str> = keep.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["p", "q"]);
        assert_eq!(m.invalid_objects.get("NetworkPolicy"), 2);
        // A valid list stays a reset.
        let ok = screen(
            Event::Reset(Kind::Pod, vec![Object::Pod(Box::new(pod("a")))]),
            &m,
        );
        assert!(matches!(ok.as_slice(), [Event::Reset(Kind::Pod, _)]));
    }
}
