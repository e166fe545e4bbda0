//! Kernel tests of pod wiring: real namespaces, real veths, real packets.
//! They need root (network namespaces) and iproute2 + ping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::*;
use tabby_tests::{Netns, wait_for};

#[test]
fn add_wires_a_dual_stack_pod_reachable_by_ping_and_tcp() {
    let n = Node::new("wire");
    let (pod, res) = n.add_pod("c1");
    assert_eq!(res["cniVersion"], "1.1.0");
    let ifaces = res["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2);
    assert!(ifaces[0]["name"].as_str().unwrap().starts_with("tab"));
    assert_eq!(ifaces[0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], pod.path().display().to_string());
    assert_eq!(res["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(res["ips"][1]["gateway"], "fe80::ecee:eeff:feee:eeee");
    let (v4, v6) = (ipv4_of(&res), ipv6_of(&res));
    assert!(v4.starts_with("10.244.1."), "{v4}");
    assert!(v6.starts_with("fd00:244:1::"), "{v6}");

    // The pod's view: /32 and /128, default routes via the link-local gateways.
    let addrs = pod.ok("ip -o addr show dev eth0");
    assert!(addrs.contains(&format!("{v4}/32")), "{addrs}");
    assert!(addrs.contains(&format!("{v6}/128")), "{addrs}");
    assert!(
        pod.ok("ip route")
            .contains("default via 169.254.1.1 dev eth0")
    );
    assert!(
        pod.ok("ip -6 route")
            .contains("default via fe80::ecee:eeff:feee:eeee dev eth0")
    );
    // The node's view: host routes with tabby's protocol number.
    let host = ifaces[0]["name"].as_str().unwrap();
    assert!(
        n.node
            .ok("ip route show proto 150")
            .contains(&format!("{v4} dev {host}"))
    );
    assert!(
        n.node
            .ok("ip -6 route show proto 150")
            .contains(&format!("{v6} dev {host}"))
    );

    assert_ping(&n.node, &v4);
    assert_ping(&n.node, &v6);
    assert_ping(&pod, NODE_V4);
    assert_ping(&pod, NODE_V6);
    // Routed through the node, no NAT: the router beyond the uplink answers.
    assert_ping(&pod, EXT_V4);
    assert_ping(&pod, EXT_V6);
    assert_ping(&n.ext, &v4);

    let server = tcp_echo_server(&pod, 8080);
    tcp_roundtrip(&n.node, SocketAddr::new(v4.parse().unwrap(), 8080));
    tcp_roundtrip(&n.ext, SocketAddr::new(v6.parse().unwrap(), 8080));
    server.join().unwrap();

    n.del_pod("c1", &pod);
    n.assert_clean();
}

#[test]
fn two_pods_on_one_node_reach_each_other() {
    let n = Node::new("p2p");
    let (a, ra) = n.add_pod("pa");
    let (b, rb) = n.add_pod("pb");
    assert_ne!(ipv4_of(&ra), ipv4_of(&rb));
    assert_ping(&a, &ipv4_of(&rb));
    assert_ping(&b, &ipv4_of(&ra));
    assert_ping(&a, &ipv6_of(&rb));
    let server = tcp_echo_server(&b, 9090);
    tcp_roundtrip(&a, SocketAddr::new(ipv4_of(&rb).parse().unwrap(), 9090));
    tcp_roundtrip(&a, SocketAddr::new(ipv6_of(&rb).parse().unwrap(), 9090));
    server.join().unwrap();
    n.del_pod("pa", &a);
    n.del_pod("pb", &b);
    n.assert_clean();
}

#[test]
fn del_is_idempotent_and_works_without_the_netns() {
    let n = Node::new("del");
    let conf = n.conf("1.0.0");
    // Twice with the netns present.
    let (pod, _) = n.add_pod("d1");
    n.cni("DEL", "d1", Some(&pod.path()), &conf).expect_ok();
    n.cni("DEL", "d1", Some(&pod.path()), &conf).expect_ok();
    n.assert_clean();
    // The runtime already deleted the namespace: DEL with a dangling path, then without CNI_NETNS.
    let (pod, _) = n.add_pod("d2");
    let path = pod.path();
    drop(pod);
    n.cni("DEL", "d2", Some(&path), &conf).expect_ok();
    n.cni("DEL", "d2", None, &conf).expect_ok();
    n.assert_clean();
    // DEL of something never added.
    n.cni("DEL", "never", None, &conf).expect_ok();
    n.assert_clean();
}

/// DEL returns once the kernel has unlisted the pair, before it has
/// reclaimed it (`tabby_sys::teardown`): at that moment nothing of the pod
/// may be visible, and the same pod, under the same interface names, must
/// wire again at once.
#[test]
fn nothing_of_a_deleted_pod_is_visible_when_del_returns() {
    let n = Node::new("delv");
    let conf = n.conf("1.1.0");
    let pod = Netns::new("delv-p");
    for i in 0..20 {
        let res = n.cni("ADD", "v1", Some(&pod.path()), &conf).expect_ok();
        let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
        n.cni("DEL", "v1", Some(&pod.path()), &conf).expect_ok();
        // Checked in-process first: the sooner, the better the test.
        let sysctls = n.node.run(|| {
            ["ipv4", "ipv6"].map(|f| Path::new(&format!("/proc/sys/net/{f}/conf/{host}")).exists())
        });
        assert_eq!(sysctls, [false, false], "round {i}: sysctls of {host} left");
        n.assert_clean();
        let links = pod.ok("ip -o link show");
        assert!(!links.contains("eth0"), "round {i}: pod end left:\n{links}");
    }
}

#[test]
fn check_passes_then_fails_when_the_host_route_is_deleted() {
    let n = Node::new("chk");
    let (pod, res) = n.add_pod("k1");
    let mut conf = n.conf("1.1.0");
    conf["prevResult"] = res.clone();
    n.cni("CHECK", "k1", Some(&pod.path()), &conf).expect_ok();
    n.node.ok(&format!("ip route del {}/32", ipv4_of(&res)));
    let err = n
        .cni("CHECK", "k1", Some(&pod.path()), &conf)
        .expect_err(102);
    assert!(err["msg"].as_str().unwrap().contains("host route"), "{err}");
    // Other kinds of damage are caught too.
    let (pod2, res2) = n.add_pod("k2");
    conf["prevResult"] = res2;
    n.cni("CHECK", "k2", Some(&pod2.path()), &conf).expect_ok();
    pod2.ok("ip route del default");
    n.cni("CHECK", "k2", Some(&pod2.path()), &conf)
        .expect_err(102);
    n.del_pod("k1", &pod);
    n.del_pod("k2", &pod2);
    n.assert_clean();
}

#[test]
fn a_retried_add_gets_the_same_address() {
    let n = Node::new("retry");
    let pod = Netns::new("r1");
    let first = n
        .cni("ADD", "r1", Some(&pod.path()), &n.conf("1.1.0"))
        .expect_ok();
    let again = n
        .cni("ADD", "r1", Some(&pod.path()), &n.conf("1.1.0"))
        .expect_ok();
    assert_eq!(result_ips(&first), result_ips(&again));
    assert_ping(&n.node, &ipv4_of(&again));
    n.del_pod("r1", &pod);
    n.assert_clean();
}

#[test]
fn pool_exhaustion_gives_code_100_and_leaves_nothing() {
    let n = Node::new("full");
    let mut conf = n.conf("1.1.0");
    // A /30 has two usable addresses (network and broadcast are reserved).
    conf["ipam"]["subnets"] = serde_json::json!(["10.244.9.0/30"]);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("x{i}"))).collect();
    let mut got = Vec::new();
    for (i, p) in pods.iter().take(2).enumerate() {
        got.push(ipv4_of(
            &n.cni("ADD", &format!("x{i}"), Some(&p.path()), &conf)
                .expect_ok(),
        ));
    }
    got.sort();
    assert_eq!(got, vec!["10.244.9.1", "10.244.9.2"]);
    let err = n
        .cni("ADD", "x2", Some(&pods[2].path()), &conf)
        .expect_err(100);
    assert!(
        err["details"].as_str().unwrap().contains("10.244.9.0/30"),
        "{err}"
    );
    assert!(
        !pods[2].ok("ip -o link").contains("eth0"),
        "no half-made pod"
    );
    for (i, p) in pods.iter().take(2).enumerate() {
        n.cni("DEL", &format!("x{i}"), Some(&p.path()), &conf)
            .expect_ok();
    }
    n.assert_clean();
}

#[test]
fn a_spoofed_source_address_is_dropped() {
    let n = Node::new("spoof");
    let (pod, res) = n.add_pod("s1");
    let (v4, v6) = (ipv4_of(&res), ipv6_of(&res));
    // The pod claims addresses that are not its own (it has NET_ADMIN here).
    pod.ok("ip addr add 10.244.1.60/32 dev eth0 && ip addr add fd00:244:1::3c/128 dev eth0 nodad");
    for (own, spoofed, dst) in [
        (v4.as_str(), "10.244.1.60", EXT_V4),
        (v6.as_str(), "fd00:244:1::3c", EXT_V6),
    ] {
        let rx = n
            .ext
            .run(|| UdpSocket::bind(SocketAddr::new(dst.parse().unwrap(), 5353)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let send = |src: &str, payload: &'static [u8]| {
            let src: std::net::IpAddr = src.parse().unwrap();
            let dst = SocketAddr::new(dst.parse().unwrap(), 5353);
            pod.run(move || {
                let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
                s.send_to(payload, dst).unwrap();
            });
        };
        // Spoofed first, genuine second, on the same path: once the genuine
        // datagram is in, a spoofed one that got through would be in too.
        send(spoofed, b"spoofed");
        send(own, b"genuine");
        let mut buf = [0u8; 32];
        let (len, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"genuine",
            "a spoofed datagram got through from {from}"
        );
        assert_eq!(from.ip().to_string(), own);
        rx.set_nonblocking(true).unwrap();
        assert!(
            rx.recv_from(&mut buf).is_err(),
            "more than the genuine datagram arrived"
        );
    }
    n.del_pod("s1", &pod);
    n.assert_clean();
}

#[test]
fn mtu_follows_the_uplink_unless_configured() {
    let n = Node::new("mtu");
    n.node.ok("ip link set up0 mtu 1400");
    let (pod, res) = n.add_pod("m1");
    assert!(pod.ok("ip -o link show eth0").contains("mtu 1400"));
    assert_eq!(res["interfaces"][1]["mtu"], 1400);
    let mut conf = n.conf("1.1.0");
    conf["mtu"] = serde_json::json!(1300);
    let pod2 = Netns::new("m2");
    n.cni("ADD", "m2", Some(&pod2.path()), &conf).expect_ok();
    assert!(pod2.ok("ip -o link show eth0").contains("mtu 1300"));
    n.del_pod("m1", &pod);
    n.cni("DEL", "m2", Some(&pod2.path()), &conf).expect_ok();
    n.assert_clean();
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    let n = Node::new("conc");
    let pods: Vec<Netns> = (0..50).map(|i| Netns::new(&format!("c{i}"))).collect();
    let conf = n.conf("1.1.0");
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| n.spawn("ADD", &format!("c{i}"), Some(&p.path()), &conf))
        .collect();
    let mut v4 = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v4.push(ipv4_of(&res));
    }
    let mut distinct = v4.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 50, "duplicate addresses handed out: {v4:?}");
    assert_eq!(n.allocations().len(), 100, "50 IPv4 + 50 IPv6");
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| n.spawn("DEL", &format!("c{i}"), Some(&p.path()), &conf))
        .collect();
    for c in children {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    n.assert_clean();
}

/// A small deterministic generator, so a failing run can be replayed from
/// the seed it prints.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn kill_9_during_add_then_del_or_gc_leaves_nothing_behind() {
    let n = Node::new("kill");
    let conf = n.conf("1.1.0");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    for round in 0..24 {
        let cid = format!("k{round}");
        let pod = Netns::new(&cid);
        let mut child = n.spawn("ADD", &cid, Some(&pod.path()), &conf);
        // A random instant within the ADD (which takes a few ms).
        std::thread::sleep(Duration::from_micros(lcg(&mut seed) % 6000));
        let _ = child.kill();
        let _ = child.wait();
        if round % 2 == 0 {
            n.cni("DEL", &cid, Some(&pod.path()), &conf).expect_ok();
        } else {
            let mut gc = conf.clone();
            gc["cni.dev/valid-attachments"] = serde_json::json!([]);
            n.cni("GC", &cid, None, &gc).expect_ok();
        }
        assert!(
            !pod.ok("ip -o link").contains("eth0"),
            "round {round}: pod interface left behind"
        );
        n.assert_clean();
    }
}

#[test]
fn gc_releases_everything_not_listed() {
    let n = Node::new("gc");
    let (a, ra) = n.add_pod("ga");
    let (b, _) = n.add_pod("gb");
    let mut conf = n.conf("1.1.0");
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "ga", "ifname": "eth0"}]);
    n.cni("GC", "x", None, &conf).expect_ok();
    assert!(
        !b.ok("ip -o link").contains("eth0"),
        "GC left the stale pod's interface"
    );
    let left = n.allocations();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|ip| ip.to_string() == ipv4_of(&ra)));
    assert_ping(&n.node, &ipv4_of(&ra));
    n.del_pod("ga", &a);
    n.assert_clean();
}

#[test]
fn status_needs_blocks_and_add_reads_the_agents_blocks_file() {
    let n = Node::new("stat");
    let mut conf = n.conf("1.1.0");
    conf["ipam"] = serde_json::json!({"type": "tabby-ipam"});
    n.cni("STATUS", "", None, &conf).expect_err(50);
    let pod = Netns::new("b1");
    n.cni("ADD", "b1", Some(&pod.path()), &conf).expect_err(11);
    assert!(!pod.ok("ip -o link").contains("eth0"));
    std::fs::create_dir_all(n.data_dir()).unwrap();
    std::fs::write(
        n.data_dir().join("blocks.json"),
        r#"{"blocks": ["10.244.7.0/26"]}"#,
    )
    .unwrap();
    n.cni("STATUS", "", None, &conf).expect_ok();
    let res = n.cni("ADD", "b1", Some(&pod.path()), &conf).expect_ok();
    assert!(ipv4_of(&res).starts_with("10.244.7."));
    assert_eq!(
        result_ips(&res).len(),
        1,
        "IPv4 only: the blocks are IPv4 only"
    );
    n.cni("DEL", "b1", Some(&pod.path()), &conf).expect_ok();
    n.assert_clean();
}

#[test]
fn every_supported_version_gets_its_result_shape() {
    let n = Node::new("ver");
    for (i, ver) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let cid = format!("v{i}");
        let pod = Netns::new(&cid);
        let conf = n.conf(ver);
        let res = n.cni("ADD", &cid, Some(&pod.path()), &conf).expect_ok();
        assert_eq!(res["cniVersion"], *ver);
        let old = ver.starts_with("0.");
        assert_eq!(res["ips"][0].get("version").is_some(), old, "{ver}: {res}");
        assert_eq!(
            res["interfaces"][1].get("mtu").is_some(),
            *ver == "1.1.0",
            "{ver}: {res}"
        );
        n.cni("DEL", &cid, Some(&pod.path()), &conf).expect_ok();
    }
    n.assert_clean();
}

#[test]
fn the_agent_acknowledgement_gates_add() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    let n = Node::new("agent");
    let sock = n.dir.path().join("agent.sock");
    let mut conf = n.conf("1.1.0");
    conf["agentSocket"] = serde_json::json!(sock);

    // Nobody listens: the pod must not start (fail closed), and nothing is left.
    let pod = Netns::new("a1");
    n.cni("ADD", "a1", Some(&pod.path()), &conf).expect_err(11);
    n.assert_clean();

    // A listener that acknowledges after reading the endpoint.
    let listener = UnixListener::bind(&sock).unwrap();
    let serve = |answer: &'static str| {
        let l = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        })
    };
    let h = serve("{\"ok\":true}\n");
    let res = n.cni("ADD", "a1", Some(&pod.path()), &conf).expect_ok();
    let req = h.join().unwrap();
    assert_eq!(req["op"], "add");
    assert_eq!(req["endpoint"]["containerId"], "a1");
    assert_eq!(req["endpoint"]["podName"], "a1");
    assert_eq!(req["endpoint"]["ips"][0], format!("{}/32", ipv4_of(&res)));

    // A refusal: ADD fails with 103 and undoes everything.
    let pod2 = Netns::new("a2");
    let h = serve("{\"ok\":false,\"error\":\"policy not ready\"}\n");
    let err = n
        .cni("ADD", "a2", Some(&pod2.path()), &conf)
        .expect_err(103);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("policy not ready")
    );
    h.join().unwrap();
    assert!(!pod2.ok("ip -o link").contains("eth0"));

    // DEL tells the agent, and succeeds whatever the agent says.
    let h = serve("{\"ok\":true}\n");
    n.cni("DEL", "a1", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(h.join().unwrap()["op"], "del");
    drop(listener);
    n.assert_clean();
}

#[test]
fn a_pod_that_sends_at_once_is_reachable_without_waiting_for_arp() {
    // The gateway has a static neighbour entry, so the pod's first packet
    // leaves without resolution and the node needs no route for proxy ARP.
    let n = Node::new("gw");
    let (pod, _) = n.add_pod("g1");
    let neigh = pod.ok("ip neigh show dev eth0");
    assert!(
        neigh.contains("169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT"),
        "{neigh}"
    );
    assert!(
        pod.ok("ip -6 neigh show dev eth0")
            .contains("fe80::ecee:eeff:feee:eeee lladdr ee:ee:ee:ee:ee:ee PERMANENT")
    );
    wait_for("first ping", Duration::from_secs(20), || {
        pod.succeeds(&format!("ping -c1 -W1 {NODE_V4}"))
    });
    n.del_pod("g1", &pod);
    n.assert_clean();
}

#[test]
fn the_agents_settings_bound_the_wait_and_may_fail_open() {
    use std::os::unix::net::UnixListener;
    use tabby_common::agent::CniSettings;
    let n = Node::new("agentwait");
    let sock = n.dir.path().join("agent.sock");
    let mut conf = n.conf("1.1.0");
    conf["agentSocket"] = serde_json::json!(sock);
    // An agent that accepts but never answers.
    let listener = UnixListener::bind(&sock).unwrap();
    let hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(listener.accept().unwrap().0);
        }
        conns
    });
    let settings = |fail_open| {
        CniSettings {
            timeout_ms: 300,
            fail_open,
        }
        .write(&n.run_dir())
        .unwrap()
    };
    settings(false);
    let pod = Netns::new("w1");
    let started = std::time::Instant::now();
    n.cni("ADD", "w1", Some(&pod.path()), &conf).expect_err(103);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the 300 ms bound was not used"
    );
    n.assert_clean();
    settings(true);
    let res = n.cni("ADD", "w1", Some(&pod.path()), &conf).expect_ok();
    assert_ping(&n.node, &ipv4_of(&res));
    drop(hold);
    n.cni("DEL", "w1", Some(&pod.path()), &conf).expect_ok();
    n.assert_clean();
}

/// Where tabby's guard sits on a host end: (a clsact qdisc exists, the
/// number of programs at its TCX ingress).
fn guard_hooks(n: &Node, host: &str) -> (bool, usize) {
    use tabby_sys::bpf;
    let qdiscs = n.node.ok(&format!("tc qdisc show dev {host}"));
    let index = host_index(n, host);
    let tcx = n
        .node
        .run(|| bpf::prog_query(index, bpf::BPF_TCX_INGRESS).unwrap());
    (qdiscs.contains("clsact"), tcx.len())
}

fn host_index(n: &Node, host: &str) -> u32 {
    n.node
        .ok(&format!("cat /sys/class/net/{host}/ifindex"))
        .trim()
        .parse()
        .unwrap()
}

/// ADDs pod `cid` with `conf`, checks where the guard went, that spoofing
/// is dropped and CHECK passes, then DELs it and checks nothing is left.
fn add_check_del_with_guard_on(n: &Node, cid: &str, conf: &serde_json::Value, want_tcx: bool) {
    let pod = Netns::new(cid);
    let res = n.cni("ADD", cid, Some(&pod.path()), conf).expect_ok();
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let want = if want_tcx { (false, 1) } else { (true, 0) };
    assert_eq!(
        guard_hooks(n, &host),
        want,
        "(clsact qdisc, TCX programs) on {host} for {conf}"
    );
    assert_spoofing_dropped(n, &host, &pod, &ipv4_of(&res), "10.244.1.62");
    let mut check = conf.clone();
    check["prevResult"] = res;
    n.cni("CHECK", cid, Some(&pod.path()), &check).expect_ok();
    n.cni("DEL", cid, Some(&pod.path()), conf).expect_ok();
    n.assert_clean();
}

/// A datagram from the pod's own address reaches the router beyond the
/// uplink; one from `spoofed` (added to the pod's interface) does not.
/// Strict reverse-path filtering is off meanwhile, so that only the guard
/// stands in the way.
fn assert_spoofing_dropped(n: &Node, host: &str, pod: &Netns, own: &str, spoofed: &str) {
    n.node.ok(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{host}.rp_filter=0"
    ));
    pod.ok(&format!("ip addr add {spoofed}/32 dev eth0"));
    let rx = n
        .ext
        .run(|| UdpSocket::bind(SocketAddr::new(EXT_V4.parse().unwrap(), 5354)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for (src, payload) in [(spoofed, b"spoofed"), (own, b"genuine")] {
        let src: std::net::IpAddr = src.parse().unwrap();
        pod.run(|| {
            let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
            s.send_to(payload, SocketAddr::new(EXT_V4.parse().unwrap(), 5354))
                .unwrap();
        });
    }
    let mut buf = [0u8; 16];
    let (len, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..len],
        b"genuine",
        "a spoofed datagram got through from {from}"
    );
    rx.set_nonblocking(true).unwrap();
    assert!(
        rx.recv_from(&mut buf).is_err(),
        "more than the genuine datagram arrived"
    );
    pod.ok(&format!("ip addr del {spoofed}/32 dev eth0"));
    n.node
        .ok(&format!("sysctl -qw net.ipv4.conf.{host}.rp_filter=1"));
}

/// CHECK answers 102 with a message containing `needle`.
fn assert_check_fails(n: &Node, cid: &str, pod: &Netns, conf: &serde_json::Value, needle: &str) {
    let err = n.cni("CHECK", cid, Some(&pod.path()), conf).expect_err(102);
    assert!(err["msg"].as_str().unwrap().contains(needle), "{err}");
}

fn with_egress_shaping(mut conf: serde_json::Value) -> serde_json::Value {
    conf["capabilities"] = serde_json::json!({"bandwidth": true});
    conf["runtimeConfig"] = serde_json::json!({"bandwidth": {
        "ingressRate": 20_000_000, "ingressBurst": 1_000_000,
        "egressRate": 20_000_000, "egressBurst": 1_000_000
    }});
    conf
}

#[test]
fn by_default_the_guard_sits_on_clsact_and_moves_to_tcx_only_for_egress_shaping() {
    let n = Node::new("gauto");
    add_check_del_with_guard_on(&n, "ga1", &n.conf("1.1.0"), false);
    // Ingress shaping alone needs no ingress qdisc: clsact stays.
    let mut ingress_only = n.conf("1.1.0");
    ingress_only["runtimeConfig"] =
        serde_json::json!({"bandwidth": {"ingressRate": 20_000_000, "ingressBurst": 1_000_000}});
    add_check_del_with_guard_on(&n, "ga2", &ingress_only, false);
    add_check_del_with_guard_on(&n, "ga3", &with_egress_shaping(n.conf("1.1.0")), true);
}

#[test]
fn source_guard_tcx_and_clsact_force_their_hook_whatever_the_shaping() {
    let n = Node::new("gforce");
    let mut tcx = n.conf("1.1.0");
    tcx["sourceGuard"] = "tcx".into();
    add_check_del_with_guard_on(&n, "gf1", &tcx, true);
    let mut clsact = with_egress_shaping(n.conf("1.1.0"));
    clsact["sourceGuard"] = "clsact".into();
    add_check_del_with_guard_on(&n, "gf2", &clsact, false);
    let mut auto = n.conf("1.1.0");
    auto["sourceGuard"] = "auto".into();
    add_check_del_with_guard_on(&n, "gf3", &auto, false);
}

#[test]
fn an_unknown_source_guard_is_code_7_naming_the_key_and_touches_nothing() {
    let n = Node::new("gbad");
    let pod = Netns::new("gb1");
    let mut conf = n.conf("1.1.0");
    conf["sourceGuard"] = "ebpf".into();
    let err = n.cni("ADD", "gb1", Some(&pod.path()), &conf).expect_err(7);
    assert!(
        err["msg"].as_str().unwrap().contains("sourceGuard"),
        "{err}"
    );
    n.assert_clean();
}

#[test]
fn check_notices_a_clsact_guard_for_other_addresses_or_none() {
    let n = Node::new("gcls");
    let (pod, res) = n.add_pod("gc1");
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let mut conf = n.conf("1.1.0");
    conf["prevResult"] = res.clone();
    n.cni("CHECK", "gc1", Some(&pod.path()), &conf).expect_ok();
    // tabby's filter replaced by a guard for another pod's address.
    let index = host_index(&n, &host);
    n.node
        .run(|| {
            tabby_sys::Netlink::open().unwrap().install_source_guard(
                index,
                &["10.244.1.61".parse().unwrap()],
                tabby_sys::GuardHook::Clsact,
            )
        })
        .unwrap();
    assert_check_fails(&n, "gc1", &pod, &conf, "not for the pod");
    n.node.ok(&format!("tc qdisc del dev {host} clsact"));
    assert_check_fails(&n, "gc1", &pod, &conf, "source guard");
    n.del_pod("gc1", &pod);
    n.assert_clean();
}

#[test]
fn the_tcx_source_guard_needs_no_qdisc_and_check_verifies_it() {
    use tabby_sys::source_guard::{TcxGuard, attach_tcx, tcx_guard};
    let n = Node::new("tcx");
    let pod = Netns::new("t1");
    let mut conf = n.conf("1.1.0");
    conf["sourceGuard"] = "tcx".into();
    let res = n.cni("ADD", "t1", Some(&pod.path()), &conf).expect_ok();
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ips: Vec<std::net::IpAddr> = result_ips(&res)
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    let qdiscs = n.node.ok(&format!("tc qdisc show dev {host}"));
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let index = host_index(&n, &host);
    // The plugin has exited: the device alone holds the program.
    let state = n.node.run(|| tcx_guard(index, &ips).unwrap());
    assert_eq!(state, TcxGuard::Current);
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    n.cni("CHECK", "t1", Some(&pod.path()), &check).expect_ok();
    // A guard for other addresses put in front of it: CHECK notices.
    n.node
        .run(|| attach_tcx(index, &["10.244.1.61".parse().unwrap()]))
        .unwrap();
    assert_check_fails(&n, "t1", &pod, &check, "source guard");
    n.cni("DEL", "t1", Some(&pod.path()), &conf).expect_ok();
    n.assert_clean();
}
