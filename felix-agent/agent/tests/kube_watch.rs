//! The Kubernetes datastore against a fake API server that serves recorded
//! responses (tests/fixtures/kube/): initial lists, watch events, bookmarks,
//! 410 Gone, cut connections and an outage.
//!
//! No sleep is used to wait for anything: tests wait for conditions (events
//! received, requests seen) under a 30 s deadline. The two sleeps in the
//! outage test are the outage itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "kube_watch/fake_apiserver.rs"]
mod fake_apiserver;

use std::time::Duration;

use fake_apiserver::{
    ALL, DEADLINE, End, FakeApiServer, NAMESPACES, NETWORK_POLICIES, NODES, PODS, Reply,
};
use tabby_agent::datastore::kube::KubeDatastore;
use tabby_agent::datastore::{DatastoreError, Event, Kind, Object};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A server with the recorded initial LIST of each resource, once.
async fn server_with_lists() -> FakeApiServer {
    log_to_test_output();
    let server = FakeApiServer::start().await;
    serve_initial_lists(&server);
    server
}

/// The recorded initial LIST of each resource, once.
fn serve_initial_lists(server: &FakeApiServer) {
    server.list(PODS, Reply::Body(fixture("pods-list.json")));
    server.list(NAMESPACES, Reply::Body(fixture("namespaces-list.json")));
    server.list(
        NETWORK_POLICIES,
        Reply::Body(fixture("networkpolicies-list.json")),
    );
    server.list(NODES, Reply::Body(fixture("nodes-list.json")));
}

fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .try_init();
}

/// `ns/name`, or `name` for cluster-scoped objects.
fn display_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn version(o: &Object) -> String {
    o.metadata().resource_version.clone().unwrap_or_default()
}

/// One line per event, so that sequences compare as lists of strings.
fn summary(event: &Event) -> String {
    match event {
        Event::Reset(kind, objects) => {
            let mut names: Vec<String> = objects
                .iter()
                .map(|o| {
                    let r = o.reference();
                    display_name(r.namespace.as_deref(), &r.name)
                })
                .collect();
            names.sort();
            format!("reset {kind:?} [{}]", names.join(", "))
        }
        Event::Apply(o) => {
            let r = o.reference();
            format!(
                "apply {:?} {}@{}",
                r.kind,
                display_name(r.namespace.as_deref(), &r.name),
                version(o)
            )
        }
        Event::Delete(r) => format!(
            "delete {:?} {}",
            r.kind,
            display_name(r.namespace.as_deref(), &r.name)
        ),
        // The Kubernetes backend delivers whole lists as Reset; a Prune
        // here would be a bug the comparison should show.
        Event::Prune(kind, keep) => format!("prune {kind:?} {}", keep.len()),
        Event::Barrier(n) => format!("barrier {n}"),
        Event::Progress(p) => format!("progress {:?} {}", p.kind, p.objects),
    }
}

fn kind_of(event: &Event) -> Option<Kind> {
    Some(match event {
        Event::Reset(kind, _) | Event::Prune(kind, _) => *kind,
        Event::Apply(o) => o.kind(),
        Event::Delete(r) => r.kind,
        Event::Barrier(_) | Event::Progress(_) => return None,
    })
}

/// The datastore running against the server, and what it has sent.
struct Consumer {
    rx: mpsc::Receiver<Event>,
    seen: Vec<Event>,
    run: JoinHandle<()>,
}

impl Consumer {
    fn start(datastore: KubeDatastore) -> Self {
        let (tx, rx) = mpsc::channel(64);
        Self {
            rx,
            seen: Vec::new(),
            run: tokio::spawn(datastore.run(tx)),
        }
    }

    /// Summaries of the events of one kind, in order.
    fn of(&self, kind: Kind) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| kind_of(e) == Some(kind))
            .map(summary)
            .collect()
    }

    /// Receives events until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let waited = tokio::time::timeout(DEADLINE, async {
            while !done(self) {
                let event = self.rx.recv().await.expect("run() ended early");
                // Progress follows every change; these tests compare changes.
                if !matches!(event, Event::Progress(_)) {
                    self.seen.push(event);
                }
            }
        })
        .await;
        if waited.is_err() {
            let seen: Vec<String> = self.seen.iter().map(summary).collect();
            panic!("timed out waiting for {what}; events so far: {seen:#?}");
        }
    }

    /// Receives until `kind` has produced `n` events.
    async fn until_count(&mut self, kind: Kind, n: usize) {
        self.until(&format!("{n} {kind:?} events"), |c| c.of(kind).len() >= n)
            .await;
    }

    /// Receives until each kind has sent its first `Reset`.
    async fn until_all_reset(&mut self) {
        self.until("a reset of every kind", |c| {
            [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy, Kind::Node]
                .iter()
                .all(|k| c.of(*k).iter().any(|s| s.starts_with("reset")))
        })
        .await;
    }

    /// Fails if an event is already waiting.
    fn assert_nothing_more(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            if !matches!(event, Event::Progress(_)) {
                panic!("unexpected event {}", summary(&event));
            }
        }
    }

    /// Drops the receiver; `run` must return.
    async fn stop(self) {
        drop(self.rx);
        tokio::time::timeout(DEADLINE, self.run)
            .await
            .expect("run() did not return after the receiver was dropped")
            .unwrap();
    }
}

/// The initial lists; a pod watch that sends the first `sent` events of the
/// log `fixture` and then ends as `end`; a second watch that serves the same
/// log from whatever version it asks for. Returns once `pod_events` pod
/// events were received and the second watch was made.
async fn interrupted_pod_watch(
    fixture_name: &str,
    sent: usize,
    end: End,
    pod_events: usize,
) -> (FakeApiServer, Consumer) {
    let server = server_with_lists().await;
    let events = fixture(fixture_name);
    server.watch(PODS, Reply::watch_first(&events, sent, end));
    server.watch(PODS, Reply::watch(&events, End::Hold));
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));
    consumer.until_count(Kind::Pod, pod_events).await;
    server.wait_for_requests(PODS, true, 2).await;
    (server, consumer)
}

/// The pod events of pods-list.json followed by pods-watch.jsonl, each once.
fn pod_list_then_watch() -> Vec<String> {
    vec![
        pod_reset_before(),
        "apply Pod shop/web-7d4b9c6f5-m9tq4@48220".into(),
        "apply Pod shop/web-7d4b9c6f5-m9tq4@48224".into(),
        "delete Pod shop/db-0".into(),
        "apply Pod shop/web-7d4b9c6f5-x2k8p@48236".into(),
    ]
}

fn pod_reset_before() -> String {
    "reset Pod [kube-system/kube-proxy-4xq2n, shop/db-0, shop/web-7d4b9c6f5-x2k8p]".into()
}

#[tokio::test]
async fn initial_lists_become_one_reset_per_kind_then_watch_events_follow_in_order() {
    let server = server_with_lists().await;
    server.watch(PODS, Reply::watch(&fixture("pods-watch.jsonl"), End::Hold));
    server.watch(
        NETWORK_POLICIES,
        Reply::watch(&fixture("networkpolicies-watch.jsonl"), End::Hold),
    );
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));

    consumer.until_all_reset().await;
    consumer.until_count(Kind::Pod, 5).await;
    consumer.until_count(Kind::NetworkPolicy, 2).await;
    for path in ALL {
        server.wait_for_requests(path, true, 1).await;
    }

    assert_eq!(consumer.of(Kind::Pod), pod_list_then_watch());
    assert_eq!(
        consumer.of(Kind::Namespace),
        ["reset Namespace [default, kube-system, shop]"]
    );
    assert_eq!(
        consumer.of(Kind::NetworkPolicy),
        [
            "reset NetworkPolicy [shop/allow-web, shop/default-deny]",
            "apply NetworkPolicy shop/allow-db-from-web@48231",
        ]
    );
    assert_eq!(consumer.of(Kind::Node), ["reset Node [node-a, node-b]"]);
    consumer.assert_nothing_more();

    // The fields the index needs came through, without managedFields.
    let Some(Event::Reset(_, pods)) = consumer
        .seen
        .iter()
        .find(|e| matches!(e, Event::Reset(Kind::Pod, _)))
    else {
        panic!("no pod reset");
    };
    let pod = |name: &str| {
        pods.iter()
            .find_map(|o| match o {
                Object::Pod(p) if p.metadata.name.as_deref() == Some(name) => Some(p.clone()),
                _ => None,
            })
            .unwrap()
    };
    let web = pod("web-7d4b9c6f5-x2k8p");
    assert_eq!(web.metadata.managed_fields, None);
    let ips: Vec<String> = web
        .status
        .clone()
        .unwrap()
        .pod_ips
        .unwrap()
        .into_iter()
        .map(|i| i.ip)
        .collect();
    assert_eq!(ips, ["10.244.1.5", "fd00:10:244:1::5"]);
    let spec = web.spec.unwrap();
    let port = &spec.containers[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    assert_eq!(
        pod("kube-proxy-4xq2n").spec.unwrap().host_network,
        Some(true)
    );
    let started = consumer.seen.iter().find_map(|e| match e {
        Event::Apply(Object::Pod(p)) if p.metadata.resource_version.as_deref() == Some("48224") => {
            Some(p.clone())
        }
        _ => None,
    });
    let ips: Vec<String> = started
        .unwrap()
        .status
        .unwrap()
        .pod_ips
        .unwrap()
        .into_iter()
        .map(|i| i.ip)
        .collect();
    assert_eq!(ips, ["10.244.2.14", "fd00:10:244:2::e"]);
    let policy = consumer.seen.iter().find_map(|e| match e {
        Event::Apply(Object::NetworkPolicy(p)) => Some(p.clone()),
        _ => None,
    });
    let rule = &policy.unwrap().spec.unwrap().ingress.unwrap()[0];
    let block = rule.from.as_ref().unwrap()[1].ip_block.clone().unwrap();
    assert_eq!(block.except, Some(vec!["10.0.99.0/24".to_owned()]));
    assert_eq!(rule.ports.as_ref().unwrap()[1].end_port, Some(9110));

    // One LIST each, from the watch cache (unpaginated: kube would drop
    // resourceVersion=0 with a limit); pods without finished ones.
    for path in ALL {
        let lists = server.requests_for(path, false);
        assert_eq!(lists.len(), 1, "{path}: {lists:#?}");
        assert_eq!(lists[0].param("resourceVersion"), Some("0"), "{path}");
        assert_eq!(
            lists[0].param("resourceVersionMatch"),
            Some("NotOlderThan"),
            "{path}"
        );
        assert_eq!(lists[0].param("limit"), None, "{path}");
    }
    let pod_list = &server.requests_for(PODS, false)[0];
    assert_eq!(
        pod_list.param("fieldSelector"),
        Some("status.phase!=Succeeded,status.phase!=Failed")
    );
    // Each WATCH starts at its LIST's version and asks for bookmarks.
    for (path, version) in [
        (PODS, "48213"),
        (NAMESPACES, "48190"),
        (NETWORK_POLICIES, "48205"),
        (NODES, "48211"),
    ] {
        let watch = &server.requests_for(path, true)[0];
        assert_eq!(watch.param("resourceVersion"), Some(version), "{path}");
        assert_eq!(watch.param("allowWatchBookmarks"), Some("true"), "{path}");
    }
    assert_eq!(
        server.requests_for(PODS, true)[0].param("fieldSelector"),
        pod_list.param("fieldSelector")
    );
    consumer.stop().await;
}

#[tokio::test]
async fn bookmarks_are_silent_and_the_next_watch_resumes_from_the_bookmark() {
    // The first watch sends an event and a bookmark, then ends at its timeout.
    let (server, mut consumer) =
        interrupted_pod_watch("pods-watch-bookmark.jsonl", 2, End::Close, 3).await;

    assert_eq!(
        consumer.of(Kind::Pod),
        [
            pod_reset_before(),
            "apply Pod shop/web-7d4b9c6f5-m9tq4@48220".into(),
            "apply Pod shop/web-7d4b9c6f5-m9tq4@48410".into(),
        ]
    );
    // The second watch resumes from the bookmark.
    assert_eq!(server.watch_versions(PODS), ["48213", "48400"]);
    assert_eq!(server.requests_for(PODS, false).len(), 1, "no relist");
    consumer.assert_nothing_more();
    consumer.stop().await;
}

#[tokio::test]
async fn an_expired_watch_relists_and_the_new_reset_drops_what_was_deleted_meanwhile() {
    let server = server_with_lists().await;
    // One event, then the watch ends; resuming from it is answered with an
    // ERROR event 410 (the version was compacted while we were away).
    server.watch(
        PODS,
        Reply::watch_first(&fixture("pods-watch.jsonl"), 1, End::Close),
    );
    server.watch(
        PODS,
        Reply::watch(&fixture("watch-expired.jsonl"), End::Close),
    );
    server.list(PODS, Reply::Body(fixture("pods-list-relist.json")));
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));

    consumer.until_count(Kind::Pod, 3).await;
    server.wait_for_requests(PODS, true, 3).await;

    assert_eq!(
        consumer.of(Kind::Pod),
        [
            pod_reset_before(),
            "apply Pod shop/web-7d4b9c6f5-m9tq4@48220".into(),
            // db-0 was deleted while the watch was down: no Delete ever
            // came, and the new reset does not have it.
            "reset Pod [kube-system/kube-proxy-4xq2n, shop/web-7d4b9c6f5-m9tq4, shop/web-7d4b9c6f5-x2k8p]".into(),
        ]
    );
    assert_eq!(server.watch_versions(PODS), ["48213", "48220", "49100"]);
    assert_eq!(server.requests_for(PODS, false).len(), 2);
    for kind in [Kind::Namespace, Kind::NetworkPolicy, Kind::Node] {
        assert_eq!(consumer.of(kind).len(), 1, "{kind:?} is not relisted");
    }
    consumer.assert_nothing_more();
    consumer.stop().await;
}

#[tokio::test]
async fn a_watch_refused_with_http_410_relists() {
    let server = server_with_lists().await;
    server.watch(
        NETWORK_POLICIES,
        Reply::Status {
            code: 410,
            reason: "Expired",
            message: "too old resource version: 48205 (49050)".into(),
        },
    );
    server.list(
        NETWORK_POLICIES,
        Reply::Body(fixture("networkpolicies-list-relist.json")),
    );
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));

    consumer.until_count(Kind::NetworkPolicy, 2).await;
    server.wait_for_requests(NETWORK_POLICIES, true, 2).await;

    assert_eq!(
        consumer.of(Kind::NetworkPolicy),
        [
            "reset NetworkPolicy [shop/allow-web, shop/default-deny]",
            "reset NetworkPolicy [shop/allow-db-from-web, shop/default-deny]",
        ]
    );
    assert_eq!(server.watch_versions(NETWORK_POLICIES), ["48205", "49100"]);
    assert_eq!(server.requests_for(NETWORK_POLICIES, false).len(), 2);
    consumer.assert_nothing_more();
    consumer.stop().await;
}

#[tokio::test]
async fn a_connection_cut_mid_event_resumes_from_the_last_version_without_loss_or_duplicates() {
    // Two events, then half of the third, then the socket closes.
    let (server, mut consumer) = interrupted_pod_watch("pods-watch.jsonl", 2, End::Cut, 5).await;

    assert_eq!(consumer.of(Kind::Pod), pod_list_then_watch());
    // Resumed after the last whole event; the cut one is sent again.
    assert_eq!(server.watch_versions(PODS), ["48213", "48224"]);
    assert_eq!(server.requests_for(PODS, false).len(), 1, "no relist");
    consumer.assert_nothing_more();
    consumer.stop().await;
}

#[tokio::test]
async fn an_outage_backs_off_and_resumes_without_any_reset() {
    let mut server = server_with_lists().await;
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));
    consumer.until_all_reset().await;
    for path in ALL {
        server.wait_for_requests(path, true, 1).await;
    }
    let before = server.requests().len();

    // The API server goes away: open watches drop, connections are refused.
    // The two sleeps are the outage, not waits for something.
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Then it answers, but every request fails with 500.
    server.fail_with(Some(500));
    server.restart().await;
    let failing = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during: Vec<_> = server.requests()[before..]
        .iter()
        .filter(|r| r.at < failing + Duration::from_secs(4))
        .cloned()
        .collect();
    for path in ALL {
        let n = during.iter().filter(|r| r.path == path).count();
        // Retries: at once and 0.8–1.6 s later (both refused), then at
        // 2.4–4.8 s, then not before 5.6 s: one or two in this window.
        // A hot loop would make thousands.
        assert!(
            (1..=2).contains(&n),
            "{path}: {n} requests in 4 s: {during:#?}"
        );
        assert!(
            during
                .iter()
                .filter(|r| r.path == path)
                .all(|r| r.is_watch()),
            "{path}: a failing watch must not relist"
        );
    }

    // It recovers, and a pod was created in the meantime.
    server.watch(
        PODS,
        Reply::watch(&fixture("pods-watch-after-outage.jsonl"), End::Hold),
    );
    server.fail_with(None);
    consumer.until_count(Kind::Pod, 2).await;

    assert_eq!(
        consumer.of(Kind::Pod),
        [
            pod_reset_before(),
            "apply Pod shop/web-7d4b9c6f5-q7wzd@48950".into(),
        ]
    );
    assert_eq!(
        consumer
            .seen
            .iter()
            .filter(|e| matches!(e, Event::Reset(k, _) if *k != Kind::Secret))
            .count(),
        4,
        "no reset, empty or not, during or after the outage"
    );
    assert_eq!(
        consumer
            .seen
            .iter()
            .filter(|e| matches!(e, Event::Reset(Kind::Secret, _)))
            .count(),
        1,
        "no BGPPeer names a Secret: one empty reset, no GET"
    );
    for path in ALL {
        assert_eq!(
            server.requests_for(path, false).len(),
            1,
            "{path}: relisted"
        );
    }
    let last = server.requests_for(PODS, true).pop().unwrap();
    assert_eq!(
        last.param("resourceVersion"),
        Some("48213"),
        "resumed, not relisted"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn an_api_server_failing_at_start_sends_nothing_until_a_list_completes() {
    log_to_test_output();
    let server = FakeApiServer::start().await;
    // The first two pod LISTs fail, the third is the recorded one.
    let failed = Reply::Status {
        code: 500,
        reason: "InternalError",
        message: "etcdserver: leader changed".into(),
    };
    server.list(PODS, failed.clone());
    server.list(PODS, failed);
    serve_initial_lists(&server);
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));

    consumer.until_all_reset().await;

    // No empty reset stood in for the failed LISTs.
    assert_eq!(consumer.of(Kind::Pod), [pod_reset_before()]);
    let lists = server.requests_for(PODS, false);
    assert_eq!(lists.len(), 3);
    for (i, min) in [(1, 0.8), (2, 1.6)] {
        let gap = lists[i].at - lists[i - 1].at;
        assert!(
            gap >= Duration::from_secs_f64(min),
            "LIST {i} came {gap:?} after the previous one"
        );
    }
    consumer.stop().await;
}

#[tokio::test]
async fn a_watch_that_keeps_expiring_relists_no_faster_than_the_backoff() {
    let server = server_with_lists().await;
    // Every LIST succeeds and every WATCH is answered 410 at once.
    server.list_default(PODS, Reply::Body(fixture("pods-list.json")));
    server.watch_default(
        PODS,
        Reply::watch(&fixture("watch-expired.jsonl"), End::Close),
    );
    let mut consumer = Consumer::start(KubeDatastore::from_client(server.client()));

    server.wait_for_requests(PODS, false, 4).await;
    let lists = server.requests_for(PODS, false);
    // The successful LIST in between does not reset the backoff: the gaps
    // grow (0.8, 1.6, 3.2 s at least; jitter only adds).
    for (i, min) in [(1, 0.8), (2, 1.6), (3, 3.2)] {
        let gap = lists[i].at - lists[i - 1].at;
        assert!(
            gap >= Duration::from_secs_f64(min),
            "LIST {i} came {gap:?} after the previous one"
        );
    }
    // Each complete relist is a complete reset; nothing in between.
    consumer.until_count(Kind::Pod, 3).await;
    assert!(
        consumer
            .of(Kind::Pod)
            .iter()
            .all(|s| *s == pod_reset_before())
    );
    consumer.stop().await;
}

#[tokio::test]
async fn connect_reads_a_kubeconfig_and_run_returns_when_the_receiver_is_dropped() {
    let server = server_with_lists().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            server.url()
        ),
    )
    .unwrap();

    let datastore = KubeDatastore::connect(Some(&kubeconfig)).await.unwrap();
    let mut consumer = Consumer::start(datastore);
    consumer.until_all_reset().await;
    // With every watch open and idle, dropping the receiver ends run().
    consumer.stop().await;

    let missing = dir.path().join("missing");
    assert!(matches!(
        KubeDatastore::connect(Some(&missing)).await,
        Err(DatastoreError::Client(_))
    ));
}

#[tokio::test]
async fn the_secrets_bgppeers_name_are_read_by_name_and_nothing_else_of_secrets() {
    let server = server_with_lists().await;
    let peers = "/apis/tabby.dev/v1alpha1/bgppeers";
    let secret = "/api/v1/namespaces/kube-system/secrets/tabby-bgp-passwords";
    server.list(
        peers,
        Reply::Body(
            serde_json::json!({
                "apiVersion": "tabby.dev/v1alpha1", "kind": "BGPPeerList",
                "metadata": {"resourceVersion": "7"},
                "items": [{
                    "apiVersion": "tabby.dev/v1alpha1", "kind": "BGPPeer",
                    "metadata": {"name": "tor", "resourceVersion": "7"},
                    "spec": {"peerIP": "10.0.0.254", "asNumber": 65000,
                             "password": {"secretKeyRef": {"name": "tabby-bgp-passwords", "key": "tor"}}}
                }]
            })
            .to_string(),
        ),
    );
    server.list(
        secret,
        Reply::Body(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "tabby-bgp-passwords", "namespace": "kube-system",
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"tor\":\"czNjcmV0\"}}"}},
                "data": {"tor": "czNjcmV0"}
            })
            .to_string(),
        ),
    );
    let mut consumer = Consumer::start(
        KubeDatastore::from_client(server.client()).with_namespace(Some("kube-system".into())),
    );
    consumer
        .until("the Secret", |c| {
            c.of(Kind::Secret)
                .iter()
                .any(|s| s == "reset Secret [kube-system/tabby-bgp-passwords]")
        })
        .await;
    let Some(Event::Reset(_, objects)) = consumer
        .seen
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Reset(Kind::Secret, _)))
    else {
        panic!("no secret reset");
    };
    let Object::Secret(s) = &objects[0] else {
        panic!("{objects:?}");
    };
    assert_eq!(s.keys["tor"].expose(), "s3cret");
    assert_eq!(
        s.metadata.annotations, None,
        "annotations may repeat the data"
    );
    assert!(!format!("{:?}", consumer.seen).contains("s3cret"));
    let to_secrets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("secrets"))
        .collect();
    assert!(!to_secrets.is_empty());
    assert!(
        to_secrets
            .iter()
            .all(|r| r.path == secret && r.method == "GET" && !r.is_watch()),
        "only GETs of the named Secret: {to_secrets:#?}"
    );
    consumer.stop().await;
}
