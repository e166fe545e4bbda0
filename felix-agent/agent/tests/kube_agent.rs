//! The real `tabby-agent` binary in the Kubernetes datastore mode, end to
//! end, against the fake API server replaying recorded responses
//! (tests/fixtures/kube/), inside a test network namespace with real
//! nftables, real routes and a pod wired by the real plugin:
//!
//! - the node's blocks come from `Node.spec.podCIDRs` (dual stack): blackhole
//!   routes with protocol 150; the local pod's chains appear in `inet tabby`;
//! - the agent PATCHes `NetworkUnavailable=False` onto its Node;
//! - an API outage (connections cut, then 503s, then refused) leaves the
//!   ruleset (rules and handles) and tabby's routes exactly as they were;
//! - afterwards the watches resume, a NetworkPolicy added meanwhile changes
//!   the rules, and a Node showing `NetworkUnavailable=True` is set back.
//!
//! Needs root, nft, iproute2. Waits are on conditions under deadlines; the
//! one sleep is the outage itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;
#[path = "kube_watch/fake_apiserver.rs"]
mod fake_apiserver;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentkit::{AGENT, Cluster, METRICS, nft_list};
use fake_apiserver::{ALL, FakeApiServer, NAMESPACES, NETWORK_POLICIES, NODES, PODS, Reply};
use tabby_tests::{Netns, http_get, wait_for};
use tokio::net::TcpSocket;

const NODE: &str = "node-a";
const STATUS: &str = "/api/v1/nodes/node-a/status";
const WEB: (&str, &str) = ("shop", "web-7d4b9c6f5-x2k8p");

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A kubeconfig for the server, without credentials (plain HTTP).
fn kubeconfig(path: &Path, url: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
}

fn spawn_agent(c: &Cluster, kubeconfig: &Path) -> Child {
    let args = [
        "--datastore=kubernetes".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--node-name={NODE}"),
        format!("--run-dir={}", c.run_dir().display()),
        format!("--data-dir={}", c.data_dir().display()),
        format!("--metrics-addr={METRICS}"),
        // The mesh peer (node-b) does not exist here; BGP has its own tests.
        "--no-bgp".to_owned(),
    ];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.path().join("agent.log"))
        .unwrap();
    c.node.run(|| {
        Command::new(AGENT)
            .args(&args)
            .env("TABBY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    })
}

/// What must not change while the API server is away: the ruleset with
/// rule handles (a rewrite of identical rules changes them) and without
/// counters (traffic changes those), and every route tabby owns.
fn dataplane(node: &Netns) -> String {
    node.ok("nft -a -s list ruleset; ip route show proto 150; ip -6 route show proto 150")
}

fn patches(server: &FakeApiServer) -> Vec<serde_json::Value> {
    server
        .requests()
        .iter()
        .filter(|r| r.is_patch())
        .map(|r| {
            assert_eq!(r.path, STATUS);
            assert_eq!(
                r.content_type.as_deref(),
                Some("application/strategic-merge-patch+json")
            );
            serde_json::from_str(&r.body).unwrap()
        })
        .collect()
}

fn assert_network_available(patch: &serde_json::Value) {
    let c = &patch["status"]["conditions"][0];
    assert_eq!(c["type"], "NetworkUnavailable", "{patch}");
    assert_eq!(c["status"], "False", "{patch}");
    assert_eq!(c["reason"], "TabbyIsUp", "{patch}");
    assert!(c["lastTransitionTime"].is_string(), "{patch}");
}

/// Drives the server from this (blocking) test thread.
struct Api {
    rt: tokio::runtime::Runtime,
    server: FakeApiServer,
}

impl Api {
    fn wait_for_patches(&self, n: usize) {
        self.rt.block_on(self.server.wait_for(
            Duration::from_secs(120),
            &format!("{n} status PATCHes"),
            |r| r.iter().filter(|r| r.is_patch()).count() >= n,
        ));
    }

    /// Waits until every resource has had `n` WATCH attempts since `since`
    /// requests had arrived.
    fn wait_for_watches_after(&self, since: usize, n: usize) {
        self.rt.block_on(self.server.wait_for(
            Duration::from_secs(120),
            &format!("{n} WATCH attempts per resource"),
            |reqs| {
                ALL.iter().all(|p| {
                    reqs[since.min(reqs.len())..]
                        .iter()
                        .filter(|r| r.path == *p && r.is_watch())
                        .count()
                        >= n
                })
            },
        ));
    }
}

#[test]
fn agent_on_recorded_api_programs_node_sets_condition_and_survives_outages() {
    let mut c = Cluster::new("kag");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The server listens inside the node's namespace, where the agent's
    // 127.0.0.1 is.
    let netns = Arc::new(tabby_sys::NetNs::open(c.node.path()).unwrap());
    let server = rt.block_on(FakeApiServer::start_with(Arc::new(move || {
        netns.run(|| TcpSocket::new_v4().unwrap()).unwrap()
    })));
    // Lists as recorded, also for any relist; watches stay open and silent
    // until the test scripts events.
    for (path, list) in [
        (PODS, "pods-list.json"),
        (NAMESPACES, "namespaces-list.json"),
        (NETWORK_POLICIES, "networkpolicies-list.json"),
        (NODES, "nodes-list.json"),
    ] {
        server.list_default(path, Reply::Body(fixture(list)));
    }
    // No Services or EndpointSlices (read for the BGP announcements of
    // `externalTrafficPolicy: Local` Services).
    for (path, kind, api) in [
        ("/api/v1/services", "ServiceList", "v1"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "EndpointSliceList",
            "discovery.k8s.io/v1",
        ),
    ] {
        server.list_default(
            path,
            Reply::Body(format!(
                r#"{{"kind":"{kind}","apiVersion":"{api}","metadata":{{"resourceVersion":"48200"}},"items":[]}}"#
            )),
        );
    }
    // A cluster without tabby's CRDs: the agent treats them as empty
    // instead of waiting for them.
    for path in [
        "/apis/tabby.dev/v1alpha1/bgpconfigurations",
        "/apis/tabby.dev/v1alpha1/bgppeers",
        "/apis/tabby.dev/v1alpha1/bgpfilters",
    ] {
        server.list_default(
            path,
            Reply::Status {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
            },
        );
    }
    let mut api = Api { rt, server };
    let config = c.dir.path().join("kubeconfig");
    kubeconfig(&config, &api.server.url());
    c.agent = Some(spawn_agent(&c, &config));
    c.wait_ready();

    // Dual-stack blocks from node-a's podCIDRs: blackholes, protocol 150.
    wait_for("blackhole routes", Duration::from_secs(30), || {
        c.node
            .ok("ip route show proto 150")
            .contains("blackhole 10.244.1.0/24")
            && c.node
                .ok("ip -6 route show proto 150")
                .contains("blackhole fd00:10:244:1::/64")
    });
    let blocks = std::fs::read_to_string(c.data_dir().join("blocks.json")).unwrap();
    assert!(
        blocks.contains("10.244.1.0/24") && blocks.contains("fd00:10:244:1::/64"),
        "{blocks}"
    );

    // The recorded web pod, scheduled on node-a, wired by the real plugin:
    // the agent acknowledges once its chains are in.
    let pod = Netns::new("kagweb");
    let add = c.cni("ADD", WEB.0, WEB.1, &pod);
    assert_eq!(add.code, 0, "ADD: {}\n{}", add.stdout, c.agent_log());
    let host_iface = add.json()["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let table = nft_list(&c.node, "table inet tabby");
    assert!(table.contains(&host_iface), "{table}");
    // allow-web: egress to the db pod on node-b (a set member) on 5432.
    assert!(table.contains("5432"), "{table}");
    assert!(!table.contains("9100"), "{table}");

    // Routes programmed after a full sync: NetworkUnavailable=False.
    api.wait_for_patches(1);
    assert_network_available(&patches(&api.server)[0]);

    // The outage: every connection cut and each watch answered 503 until
    // it has retried twice (while the backoff is still short)...
    wait_for("the pod's route", Duration::from_secs(30), || {
        c.node.ok("ip route show proto 150").contains(&host_iface)
    });
    let before = dataplane(&c.node);
    api.server.fail_with(Some(503));
    let seen = api.server.requests().len();
    api.rt.block_on(api.server.restart());
    api.wait_for_watches_after(seen, 2);
    assert_eq!(dataplane(&c.node), before, "503 answers: {}", c.agent_log());
    // Each watch backs off between attempts (0.8 s at least, jittered up),
    // with no quick retries of the client's own underneath.
    let outage = &api.server.requests()[seen..];
    for path in ALL {
        let at: Vec<_> = outage
            .iter()
            .filter(|r| r.path == path && r.is_watch())
            .map(|r| r.at)
            .collect();
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(700),
                "{path}: retried after {gap:?}"
            );
        }
    }
    // ...then refused for longer than the agent's route reconciliation
    // period (10 s), so that one runs in the outage and must change nothing.
    api.rt.block_on(api.server.stop());
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        dataplane(&c.node),
        before,
        "refused connections: {}",
        c.agent_log()
    );
    assert!(matches!(
        http_get(&c.node, METRICS.parse().unwrap(), "/readyz"),
        Some((200, _))
    ));
    assert_eq!(c.metric("tabby_dataplane_errors_total"), Some(0));

    // Back: the watches resume from their versions and get what happened
    // meanwhile. Scripted while the server is down, so no watch takes the
    // silent default first.
    api.server.watch(
        NETWORK_POLICIES,
        Reply::watch(
            &fixture("networkpolicies-watch-web.jsonl"),
            fake_apiserver::End::Hold,
        ),
    );
    api.server.watch(
        NODES,
        Reply::watch(
            &fixture("nodes-watch-unavailable.jsonl"),
            fake_apiserver::End::Hold,
        ),
    );
    let seen = api.server.requests().len();
    api.server.fail_with(None);
    api.rt.block_on(api.server.restart());
    wait_for(
        "the new policy in the rules",
        Duration::from_secs(120),
        || nft_list(&c.node, "table inet tabby").contains("9100"),
    );
    // The node showed NetworkUnavailable=True: set back to False.
    api.wait_for_patches(2);
    assert_network_available(&patches(&api.server)[1]);
    // Resumed, not relisted: no LIST since the outage ended, and each WATCH
    // asked for a version at least that of its list. (The absent tabby
    // CRDs are retried by LIST, with backoff: there is nothing to watch.)
    let after = &api.server.requests()[seen..];
    assert!(
        after
            .iter()
            .all(|r| r.is_watch() || r.is_patch() || r.path.starts_with("/apis/tabby.dev/")),
        "a relist after the outage: {after:#?}"
    );
    for (path, listed) in [(NETWORK_POLICIES, 48205u64), (NODES, 48211), (PODS, 48213)] {
        for r in after.iter().filter(|r| r.path == path) {
            let v: u64 = r.param("resourceVersion").unwrap().parse().unwrap();
            assert!(v >= listed, "{path} resumed from {v}");
        }
    }

    let del = c.cni("DEL", WEB.0, WEB.1, &pod);
    assert_eq!(del.code, 0, "DEL: {}", del.stdout);
    c.stop_agent();
}
