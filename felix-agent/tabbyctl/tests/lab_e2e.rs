//! End to end on 3-node labs: the real `tabbyctl`, `tabby-agent` and
//! `tabby` binaries, pods on different nodes, no encapsulation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use lab::*;
use tabby_tests::require_tool;

fn pods_on_different_nodes_reach_each_other_by_pod_ip_without_encapsulation(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    let st = lab.status();
    assert_eq!(st["fabric"]["bridge"], "br0");
    assert_eq!(st["fabric"]["subnet"], "10.99.0.0/24");
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["ready"], true, "{n}");
        let sessions = n["bgpSessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{n}");
        assert!(sessions.iter().all(|s| s["state"] == "Established"), "{n}");
    }
    lab.apply(&xyz());
    let pods = lab.status()["pods"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 9);
    let on: std::collections::BTreeSet<&str> =
        pods.iter().map(|p| p["node"].as_str().unwrap()).collect();
    assert_eq!(on.len(), 3, "round-robin over the nodes: {pods:?}");

    // No waiting: apply returns once every agent has programmed the pods.
    for (port, proto) in [(80, "TCP"), (81, "UDP")] {
        let m = lab.probe(port, proto);
        assert_eq!(m["port"], port);
        assert_eq!(m["protocol"], proto);
        let bad = mismatches(&m, |_, _| true);
        assert!(bad.is_empty(), "{proto}/{port}: {bad:#?}");
    }

    // Each node routes the other nodes' blocks straight to them (BGP).
    let (n2, n3) = (lab.pod_cidrs("node-2"), lab.pod_cidrs("node-3"));
    let routes = ip_in(&lab.node_netns("node-1"), "route show proto 151");
    assert!(
        routes.contains(&format!("{} via 10.99.0.12", n2[0])),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{} via 10.99.0.13", n3[0])),
        "{routes}"
    );
    let routes6 = ip_in(&lab.node_netns("node-1"), "-6 route show proto 151");
    assert!(
        routes6.contains(&format!("{} via fd00:99::c", n2[1])),
        "{routes6}"
    );

    // The packets on the fabric carry the pods' own addresses.
    require_tool("tcpdump");
    let (a, b) = (lab.pod("x/a"), lab.pod("x/b"));
    assert_ne!(a["node"], b["node"]);
    let (ip_a, ip_b) = (a["ips"][0].as_str().unwrap(), b["ips"][0].as_str().unwrap());
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &lab.fabric_netns()])
        .args(["tcpdump", "-i", "br0", "-n", "-l", "-c", "2", "-e"])
        .args([
            "icmp", "or", "udp", "port", "4789", "or", "ip", "proto", "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says "listening on" once its filter is in place.
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("listening") {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "tcpdump: {said}");
        said.push_str(&line);
    }
    let ping = Command::new("ip")
        .args(["netns", "exec", a["netns"].as_str().unwrap()])
        .args(["ping", "-c", "1", "-W", "5", ip_b])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{ip_a} > {ip_b}: ICMP echo request")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{ip_b} > {ip_a}: ICMP echo reply")),
        "{text}"
    );
    for encap in ["VXLAN", "ipip", "4789", "proto IPIP"] {
        assert!(!text.contains(encap), "{encap} in {text}");
    }

    // IPv6 between nodes too.
    let a6 = a["ips"][1].as_str().unwrap();
    let b6 = b["ips"][1].as_str().unwrap();
    assert!(a6.contains(':') && b6.contains(':'));
    let ping6 = Command::new("ip")
        .args(["netns", "exec", a["netns"].as_str().unwrap()])
        .args(["ping", "-6", "-c", "1", "-W", "5", b6])
        .output()
        .unwrap();
    assert!(ping6.status.success(), "{ping6:?}");
}

fn policy(body: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{body}")
}

/// Applies `yaml`, checks both ports against `expect(from, to, port)` with
/// no retry (apply waits for every agent), then deletes it.
fn scenario(lab: &Lab, what: &str, yaml: &str, expect: impl Fn(&str, &str, u16) -> bool) {
    lab.apply(yaml);
    for (port, proto) in [(80, "TCP"), (81, "UDP")] {
        let m = lab.probe(port, proto);
        let bad = mismatches(&m, |f, t| expect(f, t, port));
        assert!(bad.is_empty(), "{what} ({proto}/{port}): {bad:#?}");
    }
    lab.delete(yaml);
}

fn upstream_network_policy_truth_tables_hold_across_nodes(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    lab.apply(&xyz());
    // "should support a 'default-deny-ingress' policy"
    scenario(
        &lab,
        "default deny ingress in x",
        &policy(
            "metadata: {name: deny-ingress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
        ),
        |f, t, _| ns(t) != "x" || f == t,
    );
    // "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"
    scenario(
        &lab,
        "x/a only from namespace y",
        &policy(
            "metadata: {name: allow-ns-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n",
        ),
        |f, t, _| t != "x/a" || ns(f) == "y" || f == t,
    );
    // "should enforce policy based on PodSelector and NamespaceSelector" on a named port
    scenario(
        &lab,
        "x/a only from y/b on http",
        &policy(
            "metadata: {name: and-named-port, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: http}]\n",
        ),
        |f, t, p| t != "x/a" || (f == "y/b" && p == 80) || f == t,
    );
    // "should enforce egress policy allowing traffic to a server in a different namespace" (port range)
    scenario(
        &lab,
        "x sends only UDP 80-90 to z",
        &policy(
            "metadata: {name: egress-z, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{protocol: UDP, port: 80, endPort: 90}]\n",
        ),
        |f, t, p| ns(f) != "x" || (ns(t) == "z" && p == 81) || f == t,
    );
    // "should enforce except clause while egress access to server in CIDR block"
    let yb = lab.pod("y/b")["ips"][0].as_str().unwrap().to_string();
    scenario(
        &lab,
        "x/a egress to the pod CIDR except y/b",
        &policy(&format!(
            "metadata: {{name: cidr-except, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{yb}/32]}}}}]\n"
        )),
        |f, t, _| f != "x/a" || t != "y/b",
    );
    // "should allow ingress access from updated pod": relabelling a pod
    // changes only its labels (same address) and the policy follows.
    let deny_but_b2 = policy(
        "metadata: {name: allow-b2, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b2}}}]\n",
    );
    lab.apply(&deny_but_b2);
    let before = lab.pod("y/b");
    let m = lab.probe(80, "TCP");
    assert_eq!(m["matrix"]["y/b"]["x/a"], false);
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: y, labels: {pod: b2}}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: [{containerPort: 80, name: http}, {containerPort: 81, protocol: UDP}]\n",
    );
    let after = lab.pod("y/b");
    assert_eq!(before, after, "a label change keeps the pod as it is");
    let m = lab.probe(80, "TCP");
    assert_eq!(m["matrix"]["y/b"]["x/a"], true, "{m}");
    assert_eq!(m["matrix"]["y/a"]["x/a"], false, "{m}");
    lab.delete(&deny_but_b2);
    let bad = mismatches(&lab.probe(80, "TCP"), |_, _| true);
    assert!(bad.is_empty(), "policies deleted: {bad:#?}");
}

/// The pid of the agent of `node`, from the lab's state.
fn agent_pid(lab: &Lab, node: &str) -> i32 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir().join("lab.json")).unwrap())
            .unwrap();
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["agent_pid"]
        .as_i64()
        .unwrap() as i32
}

fn restarting_a_nodes_agent_keeps_its_routes_and_pod_traffic_flowing(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec: {nodeName: node-1, containers: [{name: c, image: i}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}\n",
    );
    let client = lab.pod("default/client");
    let server_ip = lab.pod("default/server")["ips"][0]
        .as_str()
        .unwrap()
        .to_string();
    let old = agent_pid(&lab, "node-2");
    // 200 pings over ~10 s while node-2's agent restarts.
    let ping = Command::new("ip")
        .args(["netns", "exec", client["netns"].as_str().unwrap()])
        .args([
            "ping", "-n", "-q", "-i", "0.05", "-c", "200", "-W", "1", &server_ip,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    lab.ok(&["restart", "--node", "node-2"]);
    let new = agent_pid(&lab, "node-2");
    assert_ne!(old, new, "a new agent process");
    // While it was away node-1 kept the route (graceful restart), and it
    // is there now.
    let routes = ip_in(&lab.node_netns("node-1"), "route show proto 151");
    let block = &lab.pod_cidrs("node-2")[0];
    assert!(
        routes.contains(&format!("{block} via 10.99.0.12")),
        "{routes}"
    );
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "pings were lost across the restart: {text}"
    );
    let st = lab.status();
    for n in st["nodes"].as_array().unwrap() {
        assert_eq!(n["ready"], true, "{n}");
        assert!(
            n["bgpSessions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["state"] == "Established"),
            "{n}"
        );
    }
}

fn a_bird_router_on_the_fabric_peers_with_every_node_through_a_bgppeer(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    let mut conf = String::from(
        "router id 10.99.0.250;\nprotocol device { scan time 1; }\n\
         protocol static s4 { ipv4; route 192.0.2.0/24 blackhole; }\n\
         template bgp node { local 10.99.0.250 as 65000; ipv4 { import all; export all; }; }\n",
    );
    for i in 1..=3 {
        conf.push_str(&format!(
            "protocol bgp n{i} from node {{ neighbor 10.99.0.1{i} as 64512; }}\n"
        ));
    }
    let router = Router::attach(&lab, &conf);
    lab.apply(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.99.0.250, asNumber: 65000}\n",
    );
    eventually("BIRD established with every node", 120, || {
        (1..=3).all(|i| {
            router
                .cmd(&format!("show protocols n{i}"))
                .contains("Established")
        })
    });
    for i in 1..=3 {
        let block = lab.pod_cidrs(&format!("node-{i}"))[0].clone();
        eventually(&format!("BIRD learns {block}"), 60, || {
            router
                .cmd(&format!("show route {block}"))
                .contains(&format!("via 10.99.0.1{i}"))
        });
        let all = router.cmd(&format!("show route {block} all"));
        assert_eq!(
            all.matches("BGP.next_hop").count(),
            1,
            "only the owner announces a block to an external peer: {all}"
        );
        let node = lab.node_netns(&format!("node-{i}"));
        eventually(&format!("node-{i} installs the router's route"), 60, || {
            ip_in(&node, "route show 192.0.2.0/24").contains("via 10.99.0.250")
        });
    }
    // `lab status` shows the router on every node (agents publish their
    // BGP state every half second).
    eventually("every node shows its session with the router", 30, || {
        lab.status()["nodes"].as_array().unwrap().iter().all(|n| {
            let sessions = n["bgpSessions"].as_array().unwrap();
            sessions.len() == 3
                && sessions.iter().any(|s| {
                    s["peer"] == "10.99.0.250" && s["asn"] == 65000 && s["state"] == "Established"
                })
        })
    });
    // Removing the BGPPeer ends the sessions and the route.
    lab.delete(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.99.0.250, asNumber: 65000}\n",
    );
    eventually("the router's route is withdrawn", 60, || {
        !ip_in(&lab.node_netns("node-1"), "route show 192.0.2.0/24").contains("via")
    });
}

fn deleting_pods_and_lab_down_leave_nothing_behind(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    let pods = xyz();
    lab.apply(&pods);
    let dir = lab.dir();
    assert!(dir.join("pods").read_dir().unwrap().count() > 0);
    lab.delete(&pods);
    assert!(lab.status()["pods"].as_array().unwrap().is_empty());
    assert!(netns_with_prefix(&format!("tl.{}.pod.", lab.name)).is_empty());
    for i in 1..=3 {
        let node = lab.node_netns(&format!("node-{i}"));
        let links = ip_in(&node, "-o link show");
        assert!(!links.contains(": tab"), "veths left on node-{i}: {links}");
        let routes = ip_in(&node, "route show proto 150");
        assert!(
            routes.lines().all(|l| l.starts_with("blackhole")),
            "pod routes left on node-{i}: {routes}"
        );
    }
    // Every address went back to its pool, and no endpoint record is left.
    for i in 1..=3 {
        let node_dir = dir.join(format!("nodes/node-{i}"));
        let store =
            tabby_common::ipam::IpamStore::open(&node_dir.join("data"), "tabby-lab").unwrap();
        let state = store.read().unwrap();
        assert_eq!(
            state.allocations().count(),
            0,
            "allocations left on node-{i}"
        );
        let records = std::fs::read_dir(node_dir.join("run/endpoints"))
            .unwrap()
            .count();
        assert_eq!(records, 0, "endpoint records left on node-{i}");
    }

    let name = lab.name.clone();
    lab.ok(&["down"]);
    assert!(netns_with_prefix(&format!("tl.{name}.")).is_empty());
    assert!(!dir.exists(), "{} left", dir.display());
    let procs = Command::new("pgrep")
        .args(["-f", &dir.to_string_lossy()])
        .output()
        .unwrap();
    assert!(procs.stdout.is_empty(), "processes left: {procs:?}");
    // A second down has nothing to do and succeeds.
    lab.ok(&["down"]);
}

fn bad_input_is_refused_before_anything_changes(mode: Mode) {
    let lab = Lab::up_in(mode, 1);
    let out = lab.run(&["apply", "-f", "/nonexistent.yaml"]);
    assert!(!out.status.success());
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(
        f.path(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nope}\n",
    )
    .unwrap();
    let out = lab.run(&["apply", "-f", f.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("namespace \"nope\" does not exist"), "{err}");
    assert!(
        lab.status()["pods"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
    std::fs::write(
        f.path(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node-9, containers: []}\n",
    )
    .unwrap();
    let err = lab.run(&["apply", "-f", f.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("node-9"));
    // A second `up` of a running lab is refused.
    let again = lab.run(&["up", "--nodes", "1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));
}

fn the_crds_and_the_tenant_isolation_example_apply_to_a_lab_and_isolate(mode: Mode) {
    let lab = Lab::up_in(mode, 3);
    let root = repo_root();
    let file = |p: &str| root.join(p).to_string_lossy().into_owned();
    lab.ok(&[
        "apply",
        "-f",
        &file("manifests/crds.yaml"),
        "-f",
        &file("tests/lab-demo.yaml"),
    ]);
    let pods = [
        "tenant-a/web",
        "tenant-a/api",
        "tenant-b/web",
        "monitoring/prometheus",
        "kube-system/coredns",
    ];
    let open = lab.probe(80, "TCP");
    let bad = mismatches_of(&open, &pods, |_, _| true);
    assert!(bad.is_empty(), "before the policies: {bad:#?}");
    lab.ok(&[
        "apply",
        "-f",
        &file("manifests/examples/tenant-isolation.yaml"),
    ]);
    let tenant_a = |p: &str| ns(p) == "tenant-a";
    let m = lab.probe(80, "TCP");
    let bad = mismatches_of(&m, &pods, |f, t| {
        if f == t {
            return true;
        }
        let egress_ok = !tenant_a(f) || tenant_a(t);
        let ingress_ok = !tenant_a(t) || tenant_a(f) || ns(f) == "monitoring";
        egress_ok && ingress_ok
    });
    assert!(bad.is_empty(), "tenant isolation on TCP 80: {bad:#?}");
    let dns = lab.probe(53, "UDP");
    for p in ["tenant-a/web", "tenant-a/api"] {
        assert_eq!(
            dns["matrix"][p]["kube-system/coredns"], true,
            "{p} resolves names"
        );
    }
    assert_eq!(
        dns["matrix"]["monitoring/prometheus"]["kube-system/coredns"],
        true
    );
}

crate::in_both_modes!(
    pods_on_different_nodes_reach_each_other_by_pod_ip_without_encapsulation,
    upstream_network_policy_truth_tables_hold_across_nodes,
    restarting_a_nodes_agent_keeps_its_routes_and_pod_traffic_flowing,
    a_bird_router_on_the_fabric_peers_with_every_node_through_a_bgppeer,
    deleting_pods_and_lab_down_leave_nothing_behind,
    bad_input_is_refused_before_anything_changes,
    the_crds_and_the_tenant_isolation_example_apply_to_a_lab_and_isolate,
);
