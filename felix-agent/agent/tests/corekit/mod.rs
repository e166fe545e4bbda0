//! The agent's core driven through `Effects::settle` with the fake routes
//! and host, and a dataplane of the test's choice.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use tabby_agent::admission::EndpointSnapshot;
use tabby_agent::agent::{Agent, AgentConfig, CniRequest, Input};
use tabby_agent::dataplane::{Dataplane, DataplaneChange, FakeDataplane};
use tabby_agent::datastore::dir::parse_manifests;
use tabby_agent::datastore::{Event, Kind, Object};
use tabby_agent::driver::{Effects, FakeHost, Settled};
use tabby_agent::routes::FakeRoutes;
use tabby_common::agent::AgentResponse;
use tabby_common::endpoint::{EndpointRecord, RecordFile, record_file_name};
use tabby_common::naming::{HostIface, host_veth_name};

pub const NODE: &str = "n1";

/// One node: the core and the fakes it drives.
pub struct Node<D = FakeDataplane> {
    pub agent: Agent,
    pub fx: Effects<D, FakeRoutes, FakeHost>,
    pub next_id: u64,
}

pub fn objects(yaml: &str) -> Vec<Object> {
    parse_manifests(Path::new("t.yaml"), yaml).unwrap()
}

pub fn node() -> Node {
    node_with(FakeDataplane::default())
}

pub fn node_with<D: Dataplane>(dataplane: D) -> Node<D> {
    Node {
        agent: Agent::new(
            AgentConfig {
                node_name: NODE.into(),
                run_dir: "/nonexistent/run".into(),
                data_dir: "/nonexistent/data".into(),
                bgp_port: None,
                asn: 64512,
            },
            Vec::new(),
        ),
        fx: Effects {
            dataplane,
            routes: FakeRoutes::default(),
            host: FakeHost::default(),
            metrics: Default::default(),
        },
        next_id: 0,
    }
}

/// The record the plugin writes for `ns/pod` (container `cid`).
pub fn record(ns: &str, pod: &str, cid: &str, ip: &str, ifindex: u32) -> EndpointRecord {
    EndpointRecord {
        network: "k8s".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: Some(ns.into()),
        pod_name: Some(pod.into()),
        netns: "/var/run/netns/x".into(),
        host_iface: HostIface::parse(&host_veth_name(Some((ns, pod)), cid, "eth0")).unwrap(),
        host_ifindex: ifindex,
        mac: "02:00:00:00:00:01".into(),
        ips: vec![format!("{ip}/32").parse().unwrap()],
        created_ms: None,
    }
}

pub fn file(rec: &EndpointRecord, mtime: u64) -> RecordFile {
    RecordFile {
        file_name: record_file_name(&rec.container_id, &rec.ifname),
        modified_ms: Some(mtime),
        record: Ok(rec.clone()),
    }
}

/// A record file as the store reads it from raw JSON (forged or corrupt).
pub fn raw_file(name: &str, json: &str) -> RecordFile {
    RecordFile {
        file_name: name.into(),
        modified_ms: Some(1),
        record: serde_json::from_str::<EndpointRecord>(json).map_err(|e| e.to_string()),
    }
}

pub fn pod_yaml(ns: &str, name: &str, labels: &str, ip: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n\
         status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n"
    )
}

pub const NS: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n";

/// web may be reached by client only.
pub const WEB_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: web, namespace: x}\n\
    spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n---\n";

impl<D: Dataplane> Node<D> {
    pub fn settle(&mut self, input: Input) -> Settled {
        self.fx.settle(&mut self.agent, input)
    }

    /// A complete list of every kind, from `yaml`.
    pub fn sync(&mut self, yaml: &str) -> Settled {
        let mut by_kind: BTreeMap<Kind, Vec<Object>> =
            Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
        for o in objects(yaml) {
            by_kind.entry(o.kind()).or_default().push(o);
        }
        self.settle(Input::Datastore(
            Kind::ALL
                .iter()
                .map(|k| Event::Reset(*k, by_kind.remove(k).unwrap_or_default()))
                .collect(),
        ))
    }

    pub fn apply(&mut self, yaml: &str) -> Settled {
        self.settle(Input::Datastore(
            objects(yaml).into_iter().map(Event::Apply).collect(),
        ))
    }

    /// The record files and links the next scan reads.
    pub fn put(&mut self, files: Vec<RecordFile>, links: &[(&HostIface, u32)]) {
        self.fx.host.snapshot = EndpointSnapshot {
            records: files,
            links: links.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
        };
    }

    pub fn scan(&mut self) -> Settled {
        let s = self.fx.host.snapshot.clone();
        self.settle(Input::Endpoints(s))
    }

    /// A CNI ADD of `rec`, whose veth now exists; the plugin wrote its file.
    pub fn cni_add(&mut self, rec: &EndpointRecord) -> AgentResponse {
        self.fx
            .host
            .snapshot
            .links
            .insert(rec.host_iface.to_string(), rec.host_ifindex);
        self.fx.host.snapshot.records.push(file(rec, 100));
        let links = self.fx.host.snapshot.links.clone();
        self.request(CniRequest::Add {
            endpoint: Box::new(rec.clone()),
            links,
        })
    }

    pub fn request(&mut self, request: CniRequest) -> AgentResponse {
        self.next_id += 1;
        let id = self.next_id;
        let s = self.settle(Input::Cni { id, request });
        let mut replies: Vec<AgentResponse> = s
            .replies
            .into_iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(replies.len(), 1, "exactly one reply to request {id}");
        replies.remove(0)
    }

    pub fn tick(&mut self) -> Settled {
        self.settle(Input::Tick)
    }
}

pub fn ifaces(change: &DataplaneChange) -> Vec<String> {
    change
        .endpoints
        .iter()
        .map(|e| e.iface().to_string())
        .collect()
}

/// A node with pods `web` (10.0.0.1) and `client` (10.0.0.2) wired, and
/// the web policy.
pub fn two_pods() -> (Node, EndpointRecord, EndpointRecord) {
    let mut n = node();
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    let client = record("x", "client", "c-client", "10.0.0.2", 12);
    n.put(
        vec![file(&web, 1), file(&client, 2)],
        &[(&web.host_iface, 11), (&client.host_iface, 12)],
    );
    n.scan();
    n.sync(&format!(
        "{NS}{}{}{WEB_POLICY}",
        pod_yaml("x", "web", "app: web", "10.0.0.1", NODE),
        pod_yaml("x", "client", "app: client", "10.0.0.2", NODE),
    ));
    assert!(n.agent.ready());
    (n, web, client)
}

impl Node<FakeDataplane> {
    pub fn changes(&self) -> &[DataplaneChange] {
        &self.fx.dataplane.applied
    }

    pub fn last_change(&self) -> &DataplaneChange {
        self.changes().last().expect("a dataplane change")
    }
}
