//! The datastore: where the agent learns about Pods, Namespaces,
//! NetworkPolicies, Nodes and tabby's BGP resources (BGPConfiguration,
//! BGPPeer, BGPFilter), the Secrets that BGPPeers name, and Services and
//! EndpointSlices (for the BGP announcements of `externalTrafficPolicy:
//! Local` Services). Two backends produce the same stream of
//! [`Event`]s: Kubernetes (watchers) and a directory of manifests (the lab,
//! standalone nodes, tests).
//!
//! Each kind is resynchronised independently: [`Event::Reset`] carries the
//! complete current set of objects of one kind and replaces what the
//! consumer knew of that kind (a watcher's initial list or relist), so a
//! partial snapshot is never used to prune. Deletes may be lost across a
//! relist; the consumer reconciles from the reset, not from events.
//!
//! Every object is validated where it enters ([`check`]), as the API server
//! would: an invalid object is logged with its field errors, counted in
//! `tabby_invalid_objects_total{kind}`, and never delivered, so the last
//! valid version of it stays in force.

pub mod check;
pub mod dir;
pub mod kube;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tabby_crds::password::SecretPasswords;
use tabby_crds::{BGPConfiguration, BGPFilter, BGPPeer};

/// The kinds the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Pod`.
    Pod,
    /// `v1/Namespace`.
    Namespace,
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy,
    /// `v1/Node`.
    Node,
    /// `tabby.dev/v1alpha1/BGPConfiguration`.
    BgpConfiguration,
    /// `tabby.dev/v1alpha1/BGPPeer`.
    BgpPeer,
    /// `v1/Secret`: only those in the agent's namespace (BGP passwords).
    Secret,
    /// `tabby.dev/v1alpha1/BGPFilter`.
    BgpFilter,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
}

impl Kind {
    /// Every kind, in the order of an initial sync (namespaces before the
    /// pods and policies that refer to them).
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Node,
        Kind::BgpConfiguration,
        Kind::Secret,
        Kind::BgpPeer,
        Kind::BgpFilter,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::NetworkPolicy,
    ];

    /// The kind as Kubernetes spells it (the `kind` label of metrics).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::Secret => "Secret",
            Kind::BgpFilter => "BGPFilter",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
}

/// One object of a watched kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A Pod.
    Pod(Box<Pod>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Node.
    Node(Box<Node>),
    /// A BGPConfiguration.
    BgpConfiguration(Box<BGPConfiguration>),
    /// A BGPPeer.
    BgpPeer(Box<BGPPeer>),
    /// A Secret, reduced to its name and values (which never print).
    Secret(Box<SecretPasswords>),
    /// A BGPFilter.
    BgpFilter(Box<BGPFilter>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Node(_) => Kind::Node,
            Object::BgpConfiguration(_) => Kind::BgpConfiguration,
            Object::BgpPeer(_) => Kind::BgpPeer,
            Object::Secret(_) => Kind::Secret,
            Object::BgpFilter(_) => Kind::BgpFilter,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::BgpConfiguration(o) => &o.metadata,
            Object::BgpPeer(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::BgpFilter(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
        }
    }

    /// The object's reference (kind, namespace, name).
    pub fn reference(&self) -> ObjectRef {
        let meta = self.metadata();
        ObjectRef {
            kind: self.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Identifies an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Kind.
    pub kind: Kind,
    /// Namespace (None for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// A change in the datastore.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The complete current set of objects of one kind.
    Reset(Kind, Vec<Object>),
    /// The same as a `Reset` delivered in pieces, so a large list never has
    /// to be held whole: the objects came as `Apply` events, and these are
    /// all the objects of the kind; everything else of the kind is gone.
    Prune(Kind, Vec<ObjectRef>),
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectRef),
    /// Everything written to the datastore before barrier `n` was set has
    /// been delivered (the dir backend's `.barrier` file): once the agent
    /// has programmed it, it reports `n` as done, so a tool that changed
    /// the datastore can wait for every node to have caught up.
    Barrier(u64),
    /// How far one kind's watch has got (the kubernetes backend, after every
    /// change of the kind): once the agent has programmed it, it reports it,
    /// so a tool that changed the API can wait until every node has caught
    /// up (the `--kubernetes` lab's equivalent of [`Event::Barrier`]).
    Progress(Progress),
}

/// One kind's watch position (see [`Event::Progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The kind.
    pub kind: Kind,
    /// The highest `resourceVersion` delivered (etcd's revision; 0 if none).
    pub resource_version: u64,
    /// How many objects of the kind the datastore holds now.
    pub objects: usize,
}

/// Errors of the datastore layer.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// A manifest file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest does not parse or is of a kind the agent does not know.
    #[error("{path}: document {index}: {detail}")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// Position of the document in the file (0-based).
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// The Kubernetes client could not be set up.
    #[error("kubernetes client: {0}")]
    Client(String),
}
