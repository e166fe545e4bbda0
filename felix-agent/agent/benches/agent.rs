//! Agent programming latency at scale: 1,000 NetworkPolicies and 10,000 pods
//! in the datastore, 100 of them local. Measures, for each kind of change
//! (policy add, pod relabel, pod add), the time from the event reaching the
//! agent to the change being in the kernel (the `nft` transaction done),
//! and the process's RSS, and the size of each nft transaction (bytes and
//! commands). Runs the agent's core and driver (`Effects::settle`) against
//! real nftables in a fresh network namespace; routes and files are the
//! fakes, and the local endpoints' links are given in the snapshot. Needs
//! root and nft.
//!
//! `cargo bench -p tabby-agent --bench agent [-- --changes N]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tabby_agent::admission::EndpointSnapshot;
use tabby_agent::agent::{Agent, AgentConfig, Input};
use tabby_agent::datastore::{Event, Kind, Object};
use tabby_agent::driver::{Effects, FakeHost};
use tabby_agent::metrics::Metrics;
use tabby_agent::nft::NftDataplane;
use tabby_agent::routes::FakeRoutes;
use tabby_common::endpoint::{EndpointRecord, RecordFile, record_file_name};
use tabby_common::naming::HostIface;
use tabby_tests::{Netns, require_root, require_tool};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 10;
const LOCAL: usize = 100;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap()
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)
}

fn pod(ns: usize, i: usize, app: usize, node: &str) -> Pod {
    let n = ns * PODS_PER_NS + i;
    yaml(&format!(
        "metadata: {{name: p{i}, namespace: ns{ns}, labels: {{app: app{app}, tier: t{}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: x, ports: [{{containerPort: 8080, name: http}}]}}]}}\n\
         status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
        i % 3,
        ip = pod_ip(n)
    ))
}

fn policy(ns: usize, k: usize) -> NetworkPolicy {
    yaml(&format!(
        "metadata: {{name: np{k}, namespace: ns{ns}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  policyTypes: [Ingress, Egress]\n\
         \x20 ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: app{}}}}}\n    - namespaceSelector: {{matchLabels: {{team: team{}}}}}\n      podSelector: {{matchLabels: {{tier: t{}}}}}\n    ports: [{{port: 8080}}, {{port: http}}]\n\
         \x20 egress:\n  - to: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}]\n    ports: [{{port: http}}]\n  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}}}]\n",
        k % 20,
        (k + 1) % 20,
        k % 5,
        k % 3,
        (k + 2) % 20
    ))
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn main() {
    require_root();
    require_tool("nft");
    let args: Vec<String> = std::env::args().collect();
    let changes: usize = args
        .iter()
        .position(|a| a == "--changes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let node = Netns::new("agentbench");
    let dir = tempfile::tempdir().unwrap();
    let rss_start = rss_mb();

    // The whole run happens on a thread inside the namespace: nft, which
    // the agent runs, inherits it.
    node.run(|| {
        let mut snapshot = EndpointSnapshot::default();
        for i in 0..LOCAL {
            let ns = i / 10;
            let n = ns * PODS_PER_NS + i % 10;
            let iface = tabby_common::naming::host_veth_name(
                Some((&format!("ns{ns}"), &format!("p{}", i % 10))),
                "c",
                "eth0",
            );
            let ifindex = 100 + i as u32;
            snapshot.links.insert(iface.clone(), ifindex);
            let rec = EndpointRecord {
                network: "k8s".into(),
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
                pod_namespace: Some(format!("ns{ns}")),
                pod_name: Some(format!("p{}", i % 10)),
                netns: "/var/run/netns/none".into(),
                host_iface: HostIface::parse(&iface).unwrap(),
                host_ifindex: ifindex,
                mac: "02:00:00:00:00:01".into(),
                ips: vec![IpNet::from(pod_ip(n).parse::<std::net::IpAddr>().unwrap())],
                created_ms: Some(i as u64),
            };
            snapshot.records.push(RecordFile {
                file_name: record_file_name(&rec.container_id, &rec.ifname),
                modified_ms: None,
                record: Ok(rec),
            });
        }
        let metrics = Arc::new(Metrics::default());
        let mut fx = Effects {
            dataplane: NftDataplane,
            routes: FakeRoutes::default(),
            host: FakeHost {
                snapshot: snapshot.clone(),
                ..FakeHost::default()
            },
            metrics,
        };
        let mut agent = Agent::new(
            AgentConfig {
                node_name: "local".into(),
                run_dir: dir.path().join("run"),
                data_dir: dir.path().join("data"),
                bgp_port: None,
                asn: 64512,
            },
            Vec::new(),
        );
        fx.settle(&mut agent, Input::Endpoints(snapshot));
        let namespaces: Vec<Object> = (0..NAMESPACES)
            .map(|ns| {
                Object::Namespace(Box::new(yaml::<Namespace>(&format!(
                    "metadata: {{name: ns{ns}, labels: {{team: team{}}}}}",
                    ns % 5
                ))))
            })
            .collect();
        // Pods arrive one by one, as watch events do; a 10,000-pod list held
        // whole would add its own transient peak (see the note printed below).
        let pods = (0..NAMESPACES).flat_map(|ns| {
            (0..PODS_PER_NS).map(move |i| {
                let node = if ns < 10 && i < 10 { "local" } else { "remote" };
                Object::Pod(Box::new(pod(ns, i, i % 20, node)))
            })
        });
        let policies: Vec<Object> = (0..NAMESPACES)
            .flat_map(|ns| (0..POLICIES_PER_NS).map(move |k| Object::NetworkPolicy(Box::new(policy(ns, k)))))
            .collect();
        let t = Instant::now();
        // Every kind listed once (`Kind::ALL`), or the agent never counts
        // as synced and nothing is programmed.
        fx.settle(
            &mut agent,
            Input::Datastore(vec![
                Event::Reset(Kind::Namespace, namespaces),
                Event::Reset(Kind::Node, vec![]),
                Event::Reset(Kind::BgpConfiguration, vec![]),
                Event::Reset(Kind::Secret, vec![]),
                Event::Reset(Kind::BgpPeer, vec![]),
                Event::Reset(Kind::BgpFilter, vec![]),
                Event::Reset(Kind::Service, vec![]),
                Event::Reset(Kind::EndpointSlice, vec![]),
                Event::Reset(Kind::Pod, Vec::new()),
            ]),
        );
        for p in pods {
            fx.settle(&mut agent, Input::Datastore(vec![Event::Apply(p)]));
        }
        let first = fx.settle(
            &mut agent,
            Input::Datastore(vec![Event::Reset(Kind::NetworkPolicy, policies)]),
        );
        assert!(agent.ready(), "the first full sync was not programmed");
        let initial = t.elapsed();
        let initial_bytes: usize = first.applied.iter().map(|a| a.bytes).sum();
        let rss_loaded = rss_mb();

        type Sizes = Vec<(usize, usize)>;
        let mut results: Vec<(&str, Vec<Duration>, Sizes)> = Vec::new();
        let mut run = |name: &'static str, agent: &mut Agent, ev: &dyn Fn(usize) -> Event| {
            let mut v = Vec::with_capacity(changes);
            let mut sizes = Vec::with_capacity(changes);
            for i in 0..changes {
                let e = ev(i);
                let t = Instant::now();
                let s = fx.settle(agent, Input::Datastore(vec![e]));
                v.push(t.elapsed());
                assert!(agent.ready(), "a change was refused by nft");
                sizes.push((
                    s.applied.iter().map(|a| a.bytes).sum(),
                    s.applied.iter().map(|a| a.commands).sum(),
                ));
            }
            results.push((name, v, sizes));
        };
        // A new policy in a namespace with local pods.
        run("policy add", &mut agent, &|i| {
            Event::Apply(Object::NetworkPolicy(Box::new(policy(i % 10, 1000 + i))))
        });
        // A remote pod moves between apps (in and out of sets local endpoints use).
        run("pod relabel", &mut agent, &|i| {
            Event::Apply(Object::Pod(Box::new(pod(50 + i % 50, 50, (i * 7) % 20, "remote"))))
        });
        // A new remote pod.
        run("pod add", &mut agent, &|i| {
            let mut p = pod(60 + i % 40, 200 + i, i % 20, "remote");
            p.status = yaml(&format!("{{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}", ip = pod_ip(20_000 + i)));
            Event::Apply(Object::Pod(Box::new(p)))
        });
        let listed = std::process::Command::new("nft")
            .args(["-a", "list", "table", "inet", "tabby"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&listed.stdout).matches("# handle").count();

        println!(
            "tabby-agent benchmark: {} policies, {} pods ({} local), {changes} changes of each kind",
            NAMESPACES * POLICIES_PER_NS,
            NAMESPACES * PODS_PER_NS,
            LOCAL
        );
        println!(
            "initial sync (index + full nft table, {rules} rules and elements, {initial_bytes} bytes): {:.0} ms",
            initial.as_secs_f64() * 1e3
        );
        println!(
            "{:<12} {:>9} {:>9} {:>9}   {:>22} {:>18}",
            "change", "p50", "p99", "max", "nft tx bytes mean/max", "commands mean/max"
        );
        for (name, mut v, sizes) in results {
            let (p50, p99, max) = (pct(&mut v, 0.5), pct(&mut v, 0.99), pct(&mut v, 1.0));
            let n = sizes.len().max(1) as f64;
            let mean_b = sizes.iter().map(|s| s.0).sum::<usize>() as f64 / n;
            let max_b = sizes.iter().map(|s| s.0).max().unwrap_or(0);
            let mean_c = sizes.iter().map(|s| s.1).sum::<usize>() as f64 / n;
            let max_c = sizes.iter().map(|s| s.1).max().unwrap_or(0);
            println!(
                "{name:<12} {p50:>7.1}ms {p99:>7.1}ms {max:>7.1}ms   {mean_b:>13.0} / {max_b:<6} {mean_c:>10.1} / {max_c:<6}  (target p99 < 100 ms)"
            );
        }
        println!(
            "RSS: {:.1} MB at start, {:.1} MB with everything loaded, {:.1} MB now (target < 50 MB)",
            rss_start,
            rss_loaded,
            rss_mb()
        );
    });
}
