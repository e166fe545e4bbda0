//! Two nodes on one fabric, each with its own agent: the agents peer over
//! BGP (full mesh from the Node objects), install each other's blocks with
//! the other node as next hop, and pods on different nodes reach each other
//! with their own addresses on the wire. An agent restart keeps the routes
//! (graceful restart). Needs root, nft, tcpdump.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentkit::{first_ip, serve, spawn_agent, tcp_probe, wait_ready};
use serde_json::json;
use tabby_tests::{Netns, require_tool, run_plugin, scratch, wait_for, workspace_bin};

struct Node {
    name: String,
    ns: Netns,
    dir: tempfile::TempDir,
    agent: Option<Child>,
}

const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDRs: [10.244.1.0/26]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.200.1}]}\n---\n\
apiVersion: v1\nkind: Node\nmetadata: {name: node2}\nspec: {podCIDRs: [10.244.2.0/26]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.200.2}]}\n---\n\
apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

impl Node {
    fn new(fabric: &Netns, name: &str, ip: &str) -> Node {
        let ns = Netns::new(name);
        fabric.ok(&format!("ip link add {name} type veth peer name eth0 netns {} && ip link set {name} master br0 up", ns.name()));
        ns.ok(&format!(
            "ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
        ));
        let dir = scratch();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::write(dir.path().join("manifests/00-cluster.yaml"), NODES).unwrap();
        Node {
            name: name.into(),
            ns,
            dir,
            agent: None,
        }
    }

    fn start(&mut self) {
        self.agent = Some(spawn_agent(&self.ns, self.dir.path(), &self.name));
        wait_ready(&self.ns);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn add_pod(&self, name: &str) -> (Netns, IpAddr) {
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("manifests/pod-{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{nodeName: {}, containers: [{{name: c, image: x}}]}}\n", self.name),
        )
        .unwrap();
        let pod = Netns::new(name);
        let conf = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "tabby",
            "dataDir": d.join("data"), "runDir": d.join("run"),
            "agentSocket": d.join("run/agent.sock"), "ipam": {"type": "tabby-ipam"}});
        let env = vec![
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", format!("c-{name}")),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            (
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=x;K8S_POD_NAME={name}"),
            ),
        ];
        // The pod manifest must reach the agent first; ADD is retried while it is not there yet.
        let mut out = None;
        wait_for("CNI ADD", Duration::from_secs(30), || {
            let r = run_plugin(&workspace_bin("tabby"), &self.ns, &env, &conf.to_string());
            let ok = r.code == 0;
            out = Some(r);
            ok
        });
        let ip = first_ip(&out.unwrap().stdout);
        serve(&pod);
        (pod, ip)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `cond`, failing with both agents' logs.
fn wait_logged(n1: &Node, n2: &Node, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\nnode1:\n{}\nnode2:\n{}",
            n1.log(),
            n2.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_learn_each_others_blocks_over_bgp_and_pods_talk_without_encapsulation() {
    require_tool("tcpdump");
    let fabric = Netns::new("fabric");
    fabric.ok("ip link add br0 type bridge && ip link set br0 up");
    let mut n1 = Node::new(&fabric, "node1", "192.168.200.1");
    let mut n2 = Node::new(&fabric, "node2", "192.168.200.2");
    n1.start();
    n2.start();
    wait_for(
        "node1 to learn node2's block",
        Duration::from_secs(60),
        || {
            n1.ns
                .ok("ip route show proto 151")
                .contains("10.244.2.0/26 via 192.168.200.2")
        },
    );
    wait_for(
        "node2 to learn node1's block",
        Duration::from_secs(60),
        || {
            n2.ns
                .ok("ip route show proto 151")
                .contains("10.244.1.0/26 via 192.168.200.1")
        },
    );
    let (a, a_ip) = n1.add_pod("a");
    let (b, b_ip) = n2.add_pod("b");
    assert!(a_ip.to_string().starts_with("10.244.1.") && b_ip.to_string().starts_with("10.244.2."));

    // On the fabric, the packets carry the pod addresses: no overlay.
    let cap = fabric
        .run(|| {
            Command::new("tcpdump")
                .args([
                    "-i",
                    "br0",
                    "-n",
                    "-c",
                    "1",
                    "-l",
                    &format!("ip and src host {a_ip} and dst host {b_ip}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .unwrap();
    wait_for(
        "pod a to reach pod b across nodes",
        Duration::from_secs(30),
        || tcp_probe(&a, SocketAddr::new(b_ip, 80)),
    );
    assert!(tcp_probe(&b, SocketAddr::new(a_ip, 80)), "b -> a");
    // tcpdump may need a moment to attach; keep sending until it has its packet.
    let pinger = {
        let a = a.name().to_string();
        let b_ip = b_ip.to_string();
        std::thread::spawn(move || {
            let _ = Command::new("ip")
                .args(["netns", "exec", &a, "ping", "-c", "40", "-i", "0.2", &b_ip])
                .output();
        })
    };
    let out = cap.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    // "IP 10.244.1.1.40232 > 10.244.2.1.80: Flags [S] ...": the pods'
    // addresses in the outer (only) IP header.
    assert!(
        line.contains(&format!("IP {a_ip}.")) && line.contains(&format!("> {b_ip}.")),
        "capture: {line}"
    );
    assert!(
        n1.ns.ok("ip -d link").find("vxlan").is_none(),
        "no tunnel devices"
    );
    pinger.join().unwrap();

    // Graceful restart: node2's agent goes away; node1 keeps its route and traffic flows.
    n2.stop();
    assert!(
        n1.ns
            .ok("ip route show proto 151")
            .contains("10.244.2.0/26 via 192.168.200.2"),
        "{}",
        n1.log()
    );
    assert!(
        tcp_probe(&a, SocketAddr::new(b_ip, 80)),
        "traffic while node2's agent is down"
    );
    n2.start();
    wait_logged(&n1, &n2, "the session to come back", || {
        n2.ns
            .ok("ip route show proto 151")
            .contains("10.244.1.0/26 via 192.168.200.1")
    });
    assert!(
        tcp_probe(&a, SocketAddr::new(b_ip, 80)),
        "after the restart"
    );
    assert!(
        n1.ns
            .ok("ip route show proto 151")
            .contains("10.244.2.0/26"),
        "{}",
        n1.log()
    );
    drop(b);
}

/// The BGP status entry of `peer` in `node`'s `status.json`.
fn bgp_peer(node: &Node, peer: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(node.dir.path().join("run/status.json")).unwrap_or_default();
    let st: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    st["bgp"]["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["address"] == peer).cloned())
        .unwrap_or_default()
}

#[test]
fn mesh_bfd_takes_a_silent_nodes_routes_away_and_a_restarting_agent_keeps_them() {
    let fabric = Netns::new("fabric");
    fabric.ok("ip link add br0 type bridge && ip link set br0 up");
    let mut n1 = Node::new(&fabric, "node1", "192.168.200.1");
    let mut n2 = Node::new(&fabric, "node2", "192.168.200.2");
    for n in [&n1, &n2] {
        std::fs::write(
            n.dir.path().join("manifests/01-bgp.yaml"),
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshBFD: {}}\n",
        )
        .unwrap();
    }
    n1.start();
    n2.start();
    let learned = |n: &Node| {
        n.ns.ok("ip route show proto 151")
            .contains("10.244.2.0/26 via 192.168.200.2")
    };
    wait_logged(
        &n1,
        &n2,
        "node1 to learn node2's block over a BFD-backed session",
        || learned(&n1) && bgp_peer(&n1, "192.168.200.2")["bfd"]["state"] == "Up",
    );

    // node2 goes silent (its packets dropped in its own namespace): BFD
    // takes node1's session and node2's block away.
    n2.ns.ok("nft add table inet tbfd_silence && nft add chain inet tbfd_silence out '{ type filter hook output priority 0; policy accept; }' && nft add rule inet tbfd_silence out oifname eth0 drop");
    let t0 = std::time::Instant::now();
    wait_logged(&n1, &n2, "node2's block to leave node1's kernel", || {
        !learned(&n1)
    });
    eprintln!(
        "mesh: node2 silenced -> its block out of node1's kernel after {} ms (status polled every 100 ms)",
        t0.elapsed().as_millis()
    );
    assert!(
        n1.log().contains("BFD down: taking the BGP session down"),
        "{}",
        n1.log()
    );
    n2.ns.ok("nft delete table inet tbfd_silence");
    wait_logged(&n1, &n2, "the BFD-backed session to come back", || {
        learned(&n1) && bgp_peer(&n1, "192.168.200.2")["bfd"]["state"] == "Up"
    });

    // A restarting agent says AdminDown: node1 keeps node2's block
    // (graceful restart) well past the 0.9 s detection time.
    n2.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert!(
            learned(&n1),
            "node2's block lost during its restart\n{}",
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        bgp_peer(&n1, "192.168.200.2")["bfd"]["state"],
        "AdminDown",
        "{}",
        n1.log()
    );
    n2.start();
    wait_logged(&n1, &n2, "BFD Up again after the restart", || {
        learned(&n1) && bgp_peer(&n1, "192.168.200.2")["bfd"]["state"] == "Up"
    });
}
