//! BGP policy on the lab's fabric with real routers (BIRD, FRR, GoBGP) as
//! external peers: hostile announcements refused while the nodes' own routes
//! stay byte-identical, legitimate ones installed beside them, a BGPFilter
//! letting the default route in beside the node's own, communities and
//! Service CIDRs seen by the router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use lab::*;
use tabby_tests::{Netns, require_tool};

/// A router's namespace on the fabric (`addr`/24 on its eth0) and the
/// daemon running in it, killed on drop.
struct Router {
    ns: Netns,
    daemon: Child,
    dir: tempfile::TempDir,
}

impl Router {
    fn plug(lab: &Lab, tag: &str, addr: &str) -> (Netns, tempfile::TempDir) {
        let ns = Netns::new(tag);
        let fabric = lab.fabric_netns();
        let port = format!("rt-{tag}");
        let out = Command::new("ip")
            .args(["-n", &fabric, "link", "add", &port, "type", "veth", "peer"])
            .args(["name", "eth0", "netns", ns.name()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        ip_in(&fabric, &format!("link set {port} master br0 up"));
        ns.ok("ip link set eth0 up");
        ns.ok(&format!("ip addr add {addr}/24 dev eth0"));
        (ns, tempfile::tempdir().unwrap())
    }

    fn spawn(ns: &Netns, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// BIRD at `addr` in AS 65000, peering with every node, with `extra`
    /// configuration (static routes, filters).
    fn bird(lab: &Lab, tag: &str, addr: &str, nodes: usize, extra: &str) -> Router {
        require_tool("bird");
        require_tool("birdc");
        let (ns, dir) = Self::plug(lab, tag, addr);
        let mut conf = format!(
            "router id {addr};\nprotocol device {{ scan time 1; }}\n{extra}\n\
             template bgp node {{ local {addr} as 65000; graceful restart off; \
             ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n"
        );
        for i in 1..=nodes {
            conf.push_str(&format!(
                "protocol bgp n{i} from node {{ neighbor 10.99.0.1{i} as 64512; }}\n"
            ));
        }
        let conf_path = dir.path().join("bird.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let ctl = dir.path().join("bird.ctl");
        let daemon = Self::spawn(
            &ns,
            &[
                "bird",
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
        );
        let r = Router { ns, daemon, dir };
        eventually("BIRD is up", 30, || {
            r.birdc("show status").contains("Daemon is up")
        });
        r
    }

    fn birdc(&self, c: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.path().join("bird.ctl"))
            .args(c.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// FRR's bgpd (no zebra) at `addr` in AS 65001 announcing `networks`.
    fn frr(lab: &Lab, tag: &str, addr: &str, nodes: usize, networks: &[&str]) -> Router {
        require_tool("/usr/lib/frr/bgpd");
        require_tool("vtysh");
        let (ns, dir) = Self::plug(lab, tag, addr);
        let mut conf = format!(
            "frr defaults datacenter\nhostname frr\nrouter bgp 65001\n bgp router-id {addr}\n \
             no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n \
             bgp graceful-restart-disable\n"
        );
        for i in 1..=nodes {
            conf.push_str(&format!(" neighbor 10.99.0.1{i} remote-as 64512\n"));
        }
        conf.push_str(" address-family ipv4 unicast\n");
        for n in networks {
            conf.push_str(&format!("  network {n}\n"));
        }
        for i in 1..=nodes {
            conf.push_str(&format!("  neighbor 10.99.0.1{i} activate\n"));
        }
        conf.push_str(" exit-address-family\n");
        let d = dir.path().to_str().unwrap().to_string();
        let conf_path = format!("{d}/bgpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let pid = format!("{d}/bgpd.pid");
        let daemon = Self::spawn(
            &ns,
            &[
                "/usr/lib/frr/bgpd",
                "-Z",
                "-n",
                "-S",
                "-f",
                &conf_path,
                "-i",
                &pid,
                "--vty_socket",
                &d,
                "-P",
                "0",
            ],
        );
        let r = Router { ns, daemon, dir };
        eventually("FRR is up", 30, || {
            r.vtysh("show bgp summary")
                .contains("BGP router identifier")
        });
        r
    }

    fn vtysh(&self, c: &str) -> String {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-d", "bgpd", "-c", c])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// gobgpd at `addr` in AS 65002 announcing `networks`.
    fn gobgp(lab: &Lab, tag: &str, addr: &str, nodes: usize, networks: &[&str]) -> Router {
        require_tool("gobgpd");
        require_tool("gobgp");
        let (ns, dir) = Self::plug(lab, tag, addr);
        let mut conf =
            format!("[global.config]\n  as = 65002\n  router-id = \"{addr}\"\n  port = 179\n");
        for i in 1..=nodes {
            conf.push_str(&format!(
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.99.0.1{i}\"\n    peer-as = 64512\n  \
                 [neighbors.timers.config]\n    connect-retry = 1\n"
            ));
        }
        let conf_path = dir.path().join("gobgpd.toml");
        std::fs::write(&conf_path, conf).unwrap();
        let daemon = Self::spawn(
            &ns,
            &[
                "gobgpd",
                "-f",
                conf_path.to_str().unwrap(),
                "--api-hosts",
                "127.0.0.1:50051",
            ],
        );
        let r = Router { ns, daemon, dir };
        eventually("gobgpd is up", 30, || {
            r.gobgp_cli(&["global"]).contains("AS")
        });
        for n in networks {
            let out = r.gobgp_cli(&["global", "rib", "add", n, "-a", "ipv4"]);
            assert!(!out.contains("rror"), "gobgp rib add {n}: {out}");
        }
        r
    }

    fn gobgp_cli(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "gobgp", "-u", "127.0.0.1"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A node's main IPv4 and IPv6 tables as `ip` prints them.
fn routes(lab: &Lab, node: &str) -> String {
    let ns = lab.node_netns(node);
    format!(
        "{}{}",
        ip_in(&ns, "-4 route show table main"),
        ip_in(&ns, "-6 route show table main")
    )
}

/// `routes` without the lines of `learned` prefixes.
fn routes_but(lab: &Lab, node: &str, learned: &[&str]) -> String {
    routes(lab, node)
        .lines()
        .filter(|l| !learned.iter().any(|p| l.starts_with(&format!("{p} "))))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A node agent's status file.
fn agent_status(lab: &Lab, node: &str) -> serde_json::Value {
    let path: PathBuf = lab
        .dir()
        .join("nodes")
        .join(node)
        .join("run")
        .join("status.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// The BGP status entry of `peer` on `node`.
fn peer_status(lab: &Lab, node: &str, peer: &str) -> serde_json::Value {
    agent_status(lab, node)["bgp"]["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["address"] == peer).cloned())
        .unwrap_or_default()
}

/// The tail of a node agent's log, for failure messages.
fn agent_log(lab: &Lab, node: &str) -> String {
    let log = std::fs::read_to_string(lab.dir().join("nodes").join(node).join("agent.log"))
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `cond` until it holds or `secs` pass; the panic carries `diag()`.
fn eventually_or(what: &str, secs: u64, mut cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}:\n{}",
            diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn bgppeer(name: &str, ip: &str, asn: u32, extra: &str) -> String {
    format!(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
         spec: {{peerIP: {ip}, asNumber: {asn}{extra}}}\n"
    )
}

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

#[test]
fn hostile_announcements_from_bird_frr_and_gobgp_are_refused_and_node_routes_stay_identical() {
    let lab = Lab::up(3);
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\n\
         spec: {containers: [{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.47}]}\n",
    );
    eventually("the pod has an address", 60, || {
        lab.pod("default/web")["ips"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let pod = lab.pod("default/web");
    let pod_ip = pod["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.as_str())
        .find(|i| !i.contains(':'))
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // Every node knows every other node's block before the routers come.
    eventually("the mesh has converged", 120, || {
        NODES.iter().all(|n| {
            let r = routes(&lab, n);
            (1..=3).all(|i| r.contains(&format!("10.244.{i}.0/24")))
        })
    });
    let before: Vec<String> = NODES.iter().map(|n| routes(&lab, n)).collect();

    let pod32 = format!("{pod_ip}/32");
    let hostile = [
        "0.0.0.0/0",
        "10.99.0.0/24",
        "10.99.0.12/32",
        pod32.as_str(),
        "10.244.3.0/25",
        "127.0.0.0/8",
        "169.254.1.1/32",
    ];
    let legit = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
    let statics: String = hostile
        .iter()
        .chain(&legit[..1])
        .map(|p| format!("route {p} blackhole; "))
        .collect();
    let bird = Router::bird(
        &lab,
        "bird",
        "10.99.0.250",
        3,
        &format!("protocol static s4 {{ ipv4; {statics} }}"),
    );
    let mut frr_nets: Vec<&str> = hostile.to_vec();
    frr_nets.push(legit[1]);
    let frr = Router::frr(&lab, "frr", "10.99.0.251", 3, &frr_nets);
    let mut gobgp_nets: Vec<&str> = hostile.to_vec();
    gobgp_nets.push(legit[2]);
    let gobgp = Router::gobgp(&lab, "gobgp", "10.99.0.252", 3, &gobgp_nets);
    lab.apply(
        &[
            bgppeer("tor-bird", "10.99.0.250", 65000, ""),
            bgppeer("tor-frr", "10.99.0.251", 65001, ""),
            bgppeer("tor-gobgp", "10.99.0.252", 65002, ""),
        ]
        .join("---\n"),
    );

    // The legitimate prefixes are learned and installed with tabby's
    // metric; every hostile one is refused and shown in the status. (BIRD
    // itself never exports 127.0.0.0/8: it sends 6 of the 7.)
    for ((router, prefix), hostile_sent) in ["10.99.0.250", "10.99.0.251", "10.99.0.252"]
        .iter()
        .zip(legit)
        .zip([6, 7, 7])
    {
        for n in NODES {
            eventually(&format!("{n} installs {prefix} from {router}"), 120, || {
                routes(&lab, n).contains(&format!(
                    "{prefix} via {router} dev eth0 proto 151 metric 1151"
                ))
            });
            eventually_or(
                &format!("{n} refuses the {hostile_sent} hostile prefixes of {router}"),
                60,
                || peer_status(&lab, n, router)["prefixesRejected"] == hostile_sent,
                || format!("{}\n{}", peer_status(&lab, n, router), agent_log(&lab, n)),
            );
            let st = peer_status(&lab, n, router);
            assert!(
                st["lastRejected"]["reason"].is_string(),
                "{n}: no lastRejected for {router}: {st}"
            );
            assert!(
                st["rejectedTotal"]["default-route"] == 1
                    && st["rejectedTotal"]["node-address"] == 2
                    && st["rejectedTotal"]["pod-space"] == 2
                    && st["rejectedTotal"]["link-local"] == 1
                    && (hostile_sent == 6 || st["rejectedTotal"]["loopback"] == 1),
                "{n}: {router}: {st}"
            );
        }
    }
    for (n, b) in NODES.iter().zip(&before) {
        assert_eq!(
            &routes_but(&lab, n, &legit),
            b,
            "{n}: the node's own routes changed while the routers announce"
        );
    }
    // The routers never learn a node's route to another router's prefix
    // (external routes stay on the node that learned them).
    assert!(
        !bird
            .birdc("show route 198.51.100.0/24")
            .contains("10.99.0.1"),
        "{}",
        bird.birdc("show route")
    );
    assert!(
        frr.vtysh("show bgp ipv4 unicast summary")
            .contains("10.99.0.11")
    );

    // The routers leave: what they announced goes, nothing else moves.
    drop((bird, frr, gobgp));
    for (n, b) in NODES.iter().zip(&before) {
        eventually(&format!("{n} is back to its own routes"), 240, || {
            routes(&lab, n) == *b
        });
    }
}

#[test]
fn a_bgpfilter_lets_the_default_route_in_beside_the_nodes_own_and_bird_sees_communities_and_services()
 {
    let lab = Lab::up(2);
    let bird = Router::bird(
        &lab,
        "bird",
        "10.99.0.250",
        2,
        "protocol static s4 { ipv4; route 0.0.0.0/0 blackhole; route 192.0.2.0/24 blackhole; }",
    );
    let own_default: Vec<String> = ["node-1", "node-2"]
        .iter()
        .map(|n| ip_in(&lab.node_netns(n), "-4 route show default"))
        .collect();
    assert!(own_default.iter().all(|d| d.starts_with("default via")));
    let filter = "apiVersion: tabby.dev/v1alpha1\nkind: BGPFilter\nmetadata: {name: default-in}\n\
                  spec:\n  importV4:\n  - {cidr: 0.0.0.0/0, matchOperator: Equal, action: Accept}\n";
    let config = "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\n\
                  spec:\n  communities: [{name: rack, value: '65000:1:2'}]\n  \
                  prefixAdvertisements: [{cidr: 10.244.0.0/16, communities: ['65000:100', rack]}]\n  \
                  serviceClusterIPs: [{cidr: 10.96.0.0/12}]\n  \
                  serviceExternalIPs: [{cidr: 198.51.100.0/24}]\n";
    // A Local Service whose only endpoint is on node-2.
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                   spec: {clusterIP: 10.96.0.10, externalIPs: [198.51.100.10], externalTrafficPolicy: Local}\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                 addressType: IPv4\nendpoints: [{addresses: [10.244.2.9], nodeName: node-2}]\n";
    lab.apply(
        &[
            filter.to_string(),
            config.to_string(),
            service.to_string(),
            slice.to_string(),
            bgppeer("tor", "10.99.0.250", 65000, ", filters: [default-in]"),
        ]
        .join("---\n"),
    );
    for (i, n) in ["node-1", "node-2"].iter().enumerate() {
        eventually(&format!("{n} installs BIRD's default route"), 120, || {
            ip_in(&lab.node_netns(n), "-4 route show default")
                .contains("default via 10.99.0.250 dev eth0 proto 151 metric 1151")
        });
        let defaults = ip_in(&lab.node_netns(n), "-4 route show default");
        assert!(
            defaults.starts_with(own_default[i].as_str()),
            "{n}: the node's own default route is no longer first or changed: {defaults}"
        );
    }
    // Communities on the nodes' blocks, standard and large.
    eventually("BIRD sees the communities", 60, || {
        let all = bird.birdc("show route 10.244.1.0/24 all");
        all.contains("(65000,100)") && all.contains("(65000, 1, 2)")
    });
    // The Service range from every node (ECMP at the router).
    eventually("BIRD learns the Service range from both nodes", 60, || {
        bird.birdc("show route 10.96.0.0/12 all")
            .matches("BGP.next_hop")
            .count()
            == 2
    });
    // The Local Service's addresses only from the node hosting its endpoint.
    for host in ["198.51.100.10/32", "10.96.0.10/32"] {
        eventually_or(
            &format!("BIRD learns {host} from node-2 only"),
            60,
            || {
                let all = bird.birdc(&format!("show route {host} all"));
                all.matches("BGP.next_hop").count() == 1 && all.contains("via 10.99.0.12")
            },
            || bird.birdc("show route all"),
        );
    }
    // Without the Service ranges in the configuration they are withdrawn.
    lab.apply(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {}\n",
    );
    eventually("the Service ranges are withdrawn", 60, || {
        let r = bird.birdc("show route");
        !r.contains("10.96.0.") && !r.contains("198.51.100.")
    });
    // Without the filter the default route goes; the node's own stays.
    lab.apply(&bgppeer("tor", "10.99.0.250", 65000, ""));
    for (i, n) in ["node-1", "node-2"].iter().enumerate() {
        eventually(&format!("{n} drops BIRD's default route"), 60, || {
            ip_in(&lab.node_netns(n), "-4 route show default") == own_default[i]
        });
    }
    eventually_or(
        "node-1 shows the default route refused",
        30,
        || {
            let st = peer_status(&lab, "node-1", "10.99.0.250");
            st["rejectedTotal"]["default-route"] == 1 && st["prefixesRejected"] == 1
        },
        || {
            format!(
                "{}\n{}",
                peer_status(&lab, "node-1", "10.99.0.250"),
                agent_log(&lab, "node-1")
            )
        },
    );
}
