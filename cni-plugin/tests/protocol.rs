//! The CNI protocol as a runtime sees it: error codes for bad input, VERSION,
//! delegated IPAM, and chaining with the reference plugins from Debian's
//! `containernetworking-plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use serde_json::{Value, json};
use tabby_tests::{Netns, PluginRun, require_tool, run_plugin};

fn run_raw(n: &Node, env: &[(&str, &str)], stdin: &str) -> PluginRun {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    run_plugin(Path::new(TABBY), &n.node, &env, stdin)
}

#[test]
fn malformed_input_gets_the_spec_error_code() {
    let n = Node::new("bad");
    let pod = Netns::new("bp");
    let netns = pod.path().display().to_string();
    let good = n.conf("1.1.0").to_string();
    let base = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let with = |k: &str, v: Option<&'static str>| -> Vec<(&str, &str)> {
        let mut e: Vec<(&str, &str)> = base.iter().copied().filter(|(kk, _)| *kk != k).collect();
        if let Some(v) = v {
            e.push((leak(k), v));
        }
        e
    };
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);
    let cases: Vec<Case> = vec![
        ("no CNI_COMMAND", with("CNI_COMMAND", None), good.clone(), 4),
        ("unknown CNI_COMMAND", with("CNI_COMMAND", Some("ATTACH")), good.clone(), 4),
        ("no CNI_CONTAINERID", with("CNI_CONTAINERID", None), good.clone(), 4),
        ("bad CNI_CONTAINERID", with("CNI_CONTAINERID", Some("-x/y")), good.clone(), 4),
        ("no CNI_IFNAME", with("CNI_IFNAME", None), good.clone(), 4),
        ("long CNI_IFNAME", with("CNI_IFNAME", Some("eth0123456789012")), good.clone(), 4),
        ("no CNI_NETNS", with("CNI_NETNS", None), good.clone(), 4),
        ("no CNI_PATH", with("CNI_PATH", None), good.clone(), 4),
        ("missing netns", with("CNI_NETNS", Some("/var/run/netns/does-not-exist")), good.clone(), 8),
        ("netns is not a netns", with("CNI_NETNS", Some("/etc/hostname")), good.clone(), 8),
        ("node's own netns", with("CNI_NETNS", Some("/proc/thread-self/ns/net")), good.clone(), 8),
        ("empty stdin", base.to_vec(), String::new(), 6),
        ("not JSON", base.to_vec(), "{".into(), 6),
        ("old version", base.to_vec(), json!({"cniVersion": "0.2.0", "name": "n", "type": "tabby"}).to_string(), 1),
        ("unknown key", base.to_vec(), json!({"cniVersion": "1.0.0", "name": "n", "type": "tabby", "color": "red"}).to_string(), 7),
        ("bad subnet", base.to_vec(), json!({"cniVersion": "1.0.0", "name": "n", "type": "tabby", "ipam": {"type": "tabby-ipam", "subnets": ["10.0.0.0/33"]}}).to_string(), 7),
        ("missing ipam plugin", base.to_vec(), json!({"cniVersion": "1.0.0", "name": "n", "type": "tabby", "ipam": {"type": "nonexistent-ipam"}}).to_string(), 7),
        ("CHECK on 0.3.1", with("CNI_COMMAND", Some("CHECK")), n.conf("0.3.1").to_string(), 1),
        ("GC on 1.0.0", with("CNI_COMMAND", Some("GC")), n.conf("1.0.0").to_string(), 1),
        ("STATUS on 0.4.0", with("CNI_COMMAND", Some("STATUS")), n.conf("0.4.0").to_string(), 1),
        ("CHECK without prevResult", with("CNI_COMMAND", Some("CHECK")), good.clone(), 7),
    ];
    for (what, env, stdin, code) in cases {
        let run = run_raw(&n, &env, &stdin);
        assert_ne!(run.code, 0, "{what}: succeeded");
        let err = run.json();
        assert_eq!(err["code"].as_u64(), Some(code), "{what}: {err}");
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        assert!(err["cniVersion"].is_string(), "{what}: {err}");
        assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
    }
    assert!(!pod.ok("ip -o link").contains("eth0"));
    n.assert_clean();
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

#[test]
fn version_lists_every_supported_version() {
    let n = Node::new("vers");
    for asked in ["1.1.0", "0.4.0"] {
        let v = run_raw(
            &n,
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": asked}).to_string(),
        )
        .expect_ok();
        assert_eq!(v["cniVersion"], asked);
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn another_ipam_plugin_is_delegated_to() {
    require_tool("/usr/lib/cni/host-local");
    let n = Node::new("hl");
    let pod = Netns::new("h1");
    let mut conf = n.conf("1.0.0");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.5.0/24"}]],
        "dataDir": n.dir.path().join("host-local"),
    });
    let res = n.cni("ADD", "h1", Some(&pod.path()), &conf).expect_ok();
    let ip = ipv4_of(&res);
    assert!(ip.starts_with("10.244.5."), "{res}");
    // The pod gets the address as a /32, routed like any tabby address.
    assert!(pod.ok("ip -o addr show eth0").contains(&format!("{ip}/32")));
    assert_ping(&n.node, &ip);
    let reservation = n.dir.path().join("host-local").join(NET).join(&ip);
    assert!(reservation.exists(), "host-local did not record {ip}");
    let mut check = conf.clone();
    check["prevResult"] = res;
    n.cni("CHECK", "h1", Some(&pod.path()), &check).expect_ok();
    n.cni("DEL", "h1", Some(&pod.path()), &conf).expect_ok();
    assert!(!reservation.exists(), "DEL was not passed to host-local");
    let links = n.node.ok("ip -o link");
    assert!(!links.contains(": tab"), "{links}");
}

/// Runs one plugin of a chain the way libcni does: its own configuration
/// plus `name`, `cniVersion` and the previous result.
fn chain_step(
    n: &Node,
    plugin: &str,
    cmd: &str,
    pod: &Netns,
    mut conf: Value,
    prev: Option<&Value>,
) -> PluginRun {
    conf["name"] = json!(NET);
    conf["cniVersion"] = json!("1.0.0");
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let env = n.env(cmd, "chain1", Some(&pod.path()), Some("chain1"));
    let bin = if plugin == "tabby" {
        TABBY.to_string()
    } else {
        format!("/usr/lib/cni/{plugin}")
    };
    run_plugin(Path::new(&bin), &n.node, &env, &conf.to_string())
}

#[test]
fn chains_with_the_reference_portmap_and_bandwidth_plugins() {
    require_tool("/usr/lib/cni/portmap");
    require_tool("/usr/lib/cni/bandwidth");
    require_tool("iptables");
    let n = Node::new("chain");
    let pod = Netns::new("ch");
    let mut tabby = n.conf("1.0.0");
    tabby.as_object_mut().unwrap().remove("cniVersion");
    let portmap = json!({
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]}
    });
    let bandwidth = json!({
        "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 10_000_000}}
    });
    let r1 = chain_step(&n, "tabby", "ADD", &pod, tabby.clone(), None).expect_ok();
    let r2 = chain_step(&n, "portmap", "ADD", &pod, portmap.clone(), Some(&r1)).expect_ok();
    let r3 = chain_step(&n, "bandwidth", "ADD", &pod, bandwidth.clone(), Some(&r2)).expect_ok();
    assert_eq!(
        result_ips(&r3),
        result_ips(&r1),
        "tabby's result passes through the chain"
    );

    // portmap: the node's port 30080 reaches the pod's 8080, from outside the node.
    let server = tcp_echo_server(&pod, 8080);
    tcp_roundtrip(&n.ext, SocketAddr::new(NODE_V4.parse().unwrap(), 30080));
    // bandwidth: a token bucket shapes traffic towards the pod on tabby's host end.
    let host = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let qdisc = n.node.ok(&format!("tc qdisc show dev {host}"));
    assert!(qdisc.contains("tbf"), "no shaping on {host}: {qdisc}");
    tcp_roundtrip(
        &n.node,
        SocketAddr::new(ipv4_of(&r1).parse().unwrap(), 8080),
    );
    server.join().unwrap();

    // CHECK along the chain, then DEL in reverse order.
    chain_step(&n, "tabby", "CHECK", &pod, tabby.clone(), Some(&r3)).expect_ok();
    chain_step(&n, "bandwidth", "DEL", &pod, bandwidth, Some(&r3)).expect_ok();
    chain_step(&n, "portmap", "DEL", &pod, portmap, Some(&r3)).expect_ok();
    chain_step(&n, "tabby", "DEL", &pod, tabby, Some(&r3)).expect_ok();
    n.assert_clean();
}

#[test]
fn tabby_accepts_a_previous_result_when_not_first_in_the_chain() {
    let n = Node::new("second");
    let pod = Netns::new("se");
    let mut conf = n.conf("1.0.0");
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net0", "sandbox": pod.path()}],
        "ips": [{"address": "192.0.2.10/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let res = n.cni("ADD", "se", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(res["ips"][0]["address"], "192.0.2.10/24");
    assert_eq!(
        res["ips"][1]["interface"], 2,
        "tabby's addresses point at its own interface"
    );
    assert_eq!(res["dns"]["nameservers"][0], "192.0.2.53");
    n.cni("DEL", "se", Some(&pod.path()), &n.conf("1.0.0"))
        .expect_ok();
    n.assert_clean();
}

/// An iperf3 server inside a namespace, killed on drop.
struct Iperf3Server(std::process::Child);

impl Iperf3Server {
    fn start(ns: &Netns, port: u16) -> Iperf3Server {
        let child = ns.run(|| {
            std::process::Command::new("iperf3")
                .args(["-s", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        });
        let server = Iperf3Server(child);
        tabby_tests::wait_for(
            "iperf3 to listen",
            std::time::Duration::from_secs(20),
            || ns.ok("ss -Hltn").contains(&format!(":{port}")),
        );
        server
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TCP throughput from `pod` to `server` (reverse: from the server to the
/// pod), in Mbit/s, as the receiver counted it, leaving out the first
/// second (slow start, the token bucket's burst).
fn iperf3_mbps(pod: &Netns, server: &str, port: u16, reverse: bool) -> f64 {
    let out = pod.ok(&format!(
        "iperf3 -c {server} -p {port} -t 4 -O 1 -J {}",
        if reverse { "-R" } else { "" }
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in iperf3's output: {out}"))
        / 1e6
}

#[test]
fn bandwidth_shapes_both_directions_behind_tabby_and_spoofing_stays_dropped() {
    require_tool("/usr/lib/cni/bandwidth");
    require_tool("iperf3");
    const LIMIT_MBPS: f64 = 20.0;
    let n = Node::new("bw");
    let pod = Netns::new("bwp");
    // As libcni does: every plugin declaring the bandwidth capability gets
    // the pod's limits in its runtimeConfig, tabby too.
    let limits = json!({"bandwidth": {
        "ingressRate": 20_000_000, "ingressBurst": 1_000_000,
        "egressRate": 20_000_000, "egressBurst": 1_000_000
    }});
    let mut tabby = n.conf("1.0.0");
    tabby.as_object_mut().unwrap().remove("cniVersion");
    tabby["capabilities"] = json!({"bandwidth": true});
    tabby["runtimeConfig"] = limits.clone();
    let bandwidth = json!({
        "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": limits,
    });
    let r1 = chain_step(&n, "tabby", "ADD", &pod, tabby.clone(), None).expect_ok();
    // Egress shaping asked for: the guard went to TCX, leaving no qdisc.
    let host = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let qdiscs = n.node.ok(&format!("tc qdisc show dev {host}"));
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let _server = Iperf3Server::start(&n.ext, 5201);
    let free_out = iperf3_mbps(&pod, EXT_V4, 5201, false);
    let free_in = iperf3_mbps(&pod, EXT_V4, 5201, true);

    // What failed with tabby's clsact qdisc: "create ingress qdisc: file exists".
    let r2 = chain_step(&n, "bandwidth", "ADD", &pod, bandwidth.clone(), Some(&r1)).expect_ok();
    let qdiscs = n.node.ok(&format!("tc qdisc show dev {host}"));
    assert!(
        qdiscs.contains("tbf"),
        "no ingress shaping on {host}: {qdiscs}"
    );
    assert!(
        qdiscs.contains("ingress"),
        "no egress shaping on {host}: {qdiscs}"
    );
    let out = iperf3_mbps(&pod, EXT_V4, 5201, false);
    let inn = iperf3_mbps(&pod, EXT_V4, 5201, true);
    eprintln!(
        "pod egress {out:.1} Mbit/s (unshaped {free_out:.1}), pod ingress {inn:.1} Mbit/s (unshaped {free_in:.1}), limit {LIMIT_MBPS}"
    );
    for (what, shaped, free) in [("egress", out, free_out), ("ingress", inn, free_in)] {
        assert!(
            (0.5 * LIMIT_MBPS..=1.3 * LIMIT_MBPS).contains(&shaped),
            "{what}: {shaped:.1} Mbit/s is not near the {LIMIT_MBPS} Mbit/s limit"
        );
        assert!(
            free > 3.0 * shaped,
            "{what}: unshaped {free:.1} Mbit/s is not well above shaped {shaped:.1}"
        );
    }

    // The guard still runs first, in front of bandwidth's ingress filter
    // (strict reverse-path filtering off, so only the guard can drop).
    let own = ipv4_of(&r1);
    n.node.ok(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{host}.rp_filter=0"
    ));
    pod.ok("ip addr add 10.244.1.60/32 dev eth0");
    let rx = n
        .ext
        .run(|| std::net::UdpSocket::bind(SocketAddr::new(EXT_V4.parse().unwrap(), 5353)).unwrap());
    rx.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    for (src, payload) in [("10.244.1.60", b"spoofed"), (own.as_str(), b"genuine")] {
        let src: std::net::IpAddr = src.parse().unwrap();
        pod.run(|| {
            let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
            s.send_to(payload, SocketAddr::new(EXT_V4.parse().unwrap(), 5353))
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

    chain_step(&n, "tabby", "CHECK", &pod, tabby.clone(), Some(&r2)).expect_ok();
    chain_step(&n, "bandwidth", "DEL", &pod, bandwidth, Some(&r2)).expect_ok();
    chain_step(&n, "tabby", "DEL", &pod, tabby, Some(&r2)).expect_ok();
    n.assert_clean();
}
