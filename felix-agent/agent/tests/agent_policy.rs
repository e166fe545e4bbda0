//! The agent on one node: real nftables, real pods wired by the real plugin,
//! real TCP probes. Needs root, nft, iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use agentkit::*;
use tabby_tests::{Netns, wait_for};

const NS_X: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n";

fn three_pods(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag);
    c.write("01-ns.yaml", NS_X);
    c.start_agent();
    c.add_pod("x", "a", "pod: a");
    c.add_pod("x", "b", "pod: b");
    c.add_pod("x", "c", "pod: c");
    c
}

#[test]
fn policies_are_enforced_changed_and_removed() {
    let c = three_pods("pol");
    c.expect(
        "no policy: all allowed",
        &[("x/a", "x/b", true), ("x/c", "x/a", true)],
    );

    c.write(
        "10-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    c.expect(
        "deny all ingress",
        &[
            ("x/a", "x/b", false),
            ("x/b", "x/a", false),
            ("x/c", "x/b", false),
        ],
    );

    c.write(
        "11-allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-a-to-b, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]\n",
    );
    c.expect(
        "a may reach b",
        &[
            ("x/a", "x/b", true),
            ("x/c", "x/b", false),
            ("x/b", "x/a", false),
        ],
    );

    // Relabelling c into the allowed set changes set members, not rules.
    c.write(
        "pod-x-c.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: a}}\nspec: {nodeName: node1, containers: [{name: c, image: x}]}\n",
    );
    c.expect("relabelled c may reach b", &[("x/c", "x/b", true)]);

    c.remove("10-deny.yaml");
    c.remove("11-allow.yaml");
    c.expect(
        "policies removed",
        &[
            ("x/a", "x/b", true),
            ("x/b", "x/a", true),
            ("x/b", "x/c", true),
        ],
    );
    assert!(
        c.metric("tabby_dataplane_errors_total") == Some(0),
        "{}",
        c.agent_log()
    );
}

#[test]
fn a_pod_that_sends_at_once_gets_nothing_through_a_denying_policy() {
    let mut c = Cluster::new("early");
    c.write(NS_FILE, NS_X);
    // Egress of pod=new is denied except to pod=b before the pod exists.
    c.write(
        "10-egress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {pod: new}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: b}}}]\n",
    );
    c.start_agent();
    c.add_pod("x", "a", "pod: a");
    c.add_pod("x", "b", "pod: b");
    let (_, a_ip) = c.pod("x/a");
    let (_, b_ip) = c.pod("x/b");
    let rx_a = c
        .pod("x/a")
        .0
        .run(|| std::net::UdpSocket::bind("0.0.0.0:5000").unwrap());
    let rx_b = c
        .pod("x/b")
        .0
        .run(|| std::net::UdpSocket::bind("0.0.0.0:5000").unwrap());

    let ip = c.add_pod("x", "new", "pod: new");
    // The moment ADD returns, the policy is in the kernel: the forbidden
    // datagram goes first, the allowed one second, on the same path.
    let (pod, _) = c.pod("x/new");
    pod.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"forbidden", SocketAddr::new(a_ip, 5000))
            .unwrap();
        s.send_to(b"allowed", SocketAddr::new(b_ip, 5000)).unwrap();
    });
    rx_b.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 32];
    let (n, from) = rx_b.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"allowed");
    assert_eq!(from.ip(), ip);
    rx_a.set_nonblocking(true).unwrap();
    assert!(
        rx_a.recv_from(&mut buf).is_err(),
        "a forbidden datagram got through"
    );
}

const NS_FILE: &str = "01-ns.yaml";

#[test]
fn established_connections_survive_an_agent_restart() {
    let mut c = three_pods("restart");
    c.write(
        "10-allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-a, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n",
    );
    c.expect(
        "only a reaches b",
        &[("x/a", "x/b", true), ("x/c", "x/b", false)],
    );
    let (a, _) = c.pod("x/a");
    let (_, b_ip) = c.pod("x/b");
    let mut conn = a.run(|| {
        TcpStream::connect_timeout(&SocketAddr::new(b_ip, 80), Duration::from_secs(5)).unwrap()
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = |s: &mut TcpStream| {
        let mut buf = [0u8; 5];
        s.write_all(b"hello").unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    };
    echo(&mut conn);
    c.stop_agent();
    echo(&mut conn);
    assert!(
        c.tcp("x/a", "x/b"),
        "the table stays while the agent is down"
    );
    assert!(!c.tcp("x/c", "x/b"), "and keeps enforcing");
    c.start_agent();
    echo(&mut conn);
    c.expect(
        "after restart",
        &[("x/a", "x/b", true), ("x/c", "x/b", false)],
    );
}

#[test]
fn a_flushed_table_is_repaired() {
    let c = three_pods("tamper");
    c.write(
        "10-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}\n",
    );
    c.expect("b isolated", &[("x/a", "x/b", false)]);
    c.node.ok("nft flush table inet tabby");
    wait_for(
        "the agent to repair the table",
        Duration::from_secs(30),
        || nft_list(&c.node, "chain inet tabby forward").contains("jump from_wl"),
    );
    c.expect(
        "b isolated again",
        &[("x/a", "x/b", false), ("x/a", "x/c", true)],
    );
    assert!(c.metric("tabby_resyncs_total").is_some_and(|n| n >= 1));
}

#[test]
fn an_unknown_workload_interface_is_dropped_both_ways() {
    let mut c = three_pods("unknown");
    // A workload-looking veth the agent never heard of, wired like a pod.
    let rogue = Netns::new("rogue");
    c.node.ok(&format!(
        "ip link add tabdeadbeef0001 type veth peer name eth0 netns {}",
        rogue.name()
    ));
    c.node.ok(
        "sysctl -qw net.ipv4.conf.tabdeadbeef0001.proxy_arp=1 && ip link set tabdeadbeef0001 up \
         && ip route add 10.244.1.60/32 dev tabdeadbeef0001",
    );
    rogue.ok(
        "ip link set eth0 address 02:00:00:00:00:01 && ip addr add 10.244.1.60/32 dev eth0 && ip link set eth0 up \
         && ip route add 169.254.1.1 dev eth0 && ip route add default via 169.254.1.1 \
         && ip neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent",
    );
    c.node
        .ok("ip link set tabdeadbeef0001 address ee:ee:ee:ee:ee:ee");
    serve(&rogue);
    let (_, a_ip) = c.pod("x/a");
    let rogue_to_a = || tcp_probe(&rogue, SocketAddr::new(a_ip, 80));
    let a_to_rogue = |c: &Cluster| tcp_probe(c.pod("x/a").0, "10.244.1.60:80".parse().unwrap());

    // Control: without tabby's table the rogue is reachable both ways, so
    // the drops below are the agent's doing.
    c.stop_agent();
    c.node.ok("nft delete table inet tabby");
    wait_for(
        "the rogue to work without tabby",
        Duration::from_secs(20),
        || rogue_to_a() && a_to_rogue(&c),
    );

    c.start_agent();
    assert!(!rogue_to_a(), "rogue -> pod");
    assert!(!a_to_rogue(&c), "pod -> rogue");
    assert!(
        !c.node.succeeds("ping -c1 -W1 10.244.1.60"),
        "node -> rogue"
    );
    c.expect("known pods unaffected", &[("x/a", "x/b", true)]);
}

#[test]
fn metrics_routes_and_the_blocks_file_follow_the_node() {
    let c = three_pods("obs");
    assert_eq!(c.metric("tabby_endpoints"), Some(3));
    assert_eq!(c.metric("tabby_ready"), Some(1));
    // Blocks from Node.spec.podCIDRs: the blocks file for tabby-ipam and a blackhole.
    let blocks = std::fs::read_to_string(c.data_dir().join("blocks.json")).unwrap();
    assert!(blocks.contains("10.244.1.0/26"), "{blocks}");
    wait_for("the blackhole route", Duration::from_secs(30), || {
        c.node
            .ok("ip route show proto 150")
            .contains("blackhole 10.244.1.0/26")
    });
    // A deleted endpoint route is put back.
    let (_, a_ip) = c.pod("x/a");
    c.node.ok(&format!("ip route del {a_ip}/32"));
    wait_for(
        "the endpoint route to be repaired",
        Duration::from_secs(30),
        || {
            c.node
                .ok("ip route show proto 150")
                .contains(&format!("{a_ip} dev tab"))
        },
    );
    // Drops are counted per endpoint.
    c.write(
        "10-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}}\n",
    );
    c.expect("b isolated", &[("x/a", "x/b", false)]);
    let (_, body) = tabby_tests::http_get(&c.node, METRICS.parse().unwrap(), "/metrics").unwrap();
    assert!(
        body.contains("tabby_dropped_packets_total{interface=\"tab"),
        "{body}"
    );
    assert!(body.contains("tabby_programming_seconds_count"), "{body}");
}
