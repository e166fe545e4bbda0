//! Micro-benchmark at the design target: 10,000 pods in 100 namespaces and
//! 1,000 policies (10 per namespace, a mix of pod, namespace, named-port,
//! ipBlock and default-deny rules). Prints timings; run with
//! `cargo test --release -p tabby-policy bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{key, mk_ns, mk_pod, mk_policy};
use crate::PolicyIndex;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;

fn pod(ns: usize, i: usize, app: usize) -> Pod {
    let app = format!("app-{app}");
    let tier = ["front", "back", "db"][i % 3];
    let ip = format!("10.{}.{}.{}", ns / 256, ns % 256, i + 1);
    mk_pod(
        &format!("ns-{ns}"),
        &format!("pod-{i}"),
        &[("app", &app), ("tier", tier)],
        &[&ip],
        &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
    )
}

fn policy(ns: usize, j: usize, salt: &str) -> NetworkPolicy {
    let (a, b) = ((ns + j) % 20, (ns * 7 + j) % 20);
    let (c, d) = ((ns + j) % 10, (ns * 3 + j) % 50);
    let team = ns % 10;
    let spec = match j % 5 {
        0 => format!(
            "
podSelector: {{matchLabels: {{app: app-{a}}}}}
policyTypes: [Ingress]
ingress:
- from: [{{podSelector: {{matchLabels: {{app: app-{b}{salt}}}}}}}]
  ports: [{{port: 8080}}]
"
        ),
        1 => format!(
            "
podSelector: {{matchLabels: {{app: app-{a}}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{team: t{team}{salt}}}}}
    podSelector:
      matchExpressions:
      - {{key: tier, operator: In, values: [front, back]}}
      - {{key: app, operator: NotIn, values: [app-{ns}]}}
"
        ),
        2 => format!(
            "
podSelector: {{matchLabels: {{app: app-{a}}}}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {{matchLabels: {{team: t{c}}}}}
    podSelector: {{matchLabels: {{app: app-{d}{salt}}}}}
  ports: [{{port: http}}, {{port: 53, protocol: UDP}}]
"
        ),
        3 => format!(
            "
podSelector: {{matchLabels: {{tier: db}}}}
policyTypes: [Ingress]
ingress:
- from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.{team}.0.0/16]}}}}]
  ports: [{{port: 5432{salt}}}]
"
        ),
        _ => "
podSelector: {}
policyTypes: [Ingress]
ingress: []
"
        .to_string(),
    };
    mk_policy(&format!("ns-{ns}"), &format!("policy-{j}{salt}"), &spec)
}

/// Runs `f` `n` times, returning the median and the worst time.
fn time_each(n: usize, mut f: impl FnMut(usize)) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[n / 2], times[n - 1])
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn bench_10k_pods_1k_policies() {
    let namespaces: Vec<_> = (0..NAMESPACES)
        .map(|ns| {
            let team = format!("t{}", ns % 10);
            mk_ns(&format!("ns-{ns}"), &[("team", &team)])
        })
        .collect();
    let pods: Vec<_> = (0..NAMESPACES)
        .flat_map(|ns| (0..PODS_PER_NAMESPACE).map(move |i| pod(ns, i, i % 20)))
        .collect();
    let policies: Vec<_> = (0..NAMESPACES)
        .flat_map(|ns| (0..POLICIES_PER_NAMESPACE).map(move |j| policy(ns, j, "")))
        .collect();

    let mut index = PolicyIndex::new();
    let start = Instant::now();
    index.reset(pods, namespaces.clone(), policies);
    let reset = start.elapsed();
    let changes = index.take_changes();
    let stats = index.stats();
    println!(
        "reset: {reset:?} ({} pods, {} policies, {} ip sets, {} port sets, {} endpoints reported)",
        stats.pods,
        stats.policies,
        stats.ip_sets,
        stats.port_sets,
        changes.endpoints.len()
    );
    let members: usize = index
        .ip_set_names()
        .filter_map(|n| index.ip_set(n))
        .map(|m| m.len())
        .sum();
    let triples: usize = index
        .port_set_names()
        .filter_map(|n| index.port_set(n))
        .map(|m| m.len())
        .sum();
    println!("set members: {members} addresses, {triples} port triples");

    let (median, worst) = time_each(200, |i| {
        // Move a pod to another app: it leaves some sets, joins others.
        index.apply_pod(pod(i % NAMESPACES, i % PODS_PER_NAMESPACE, (i + 7) % 20));
        index.take_changes();
    });
    println!("pod relabel: median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(200, |i| {
        index.apply_pod(pod(i % NAMESPACES, PODS_PER_NAMESPACE + i, i % 20));
        index.take_changes();
    });
    println!("pod add: median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(200, |i| {
        index.delete_pod(&key(&format!(
            "ns-{}/pod-{}",
            i % NAMESPACES,
            PODS_PER_NAMESPACE + i
        )));
        index.take_changes();
    });
    println!("pod delete: median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(100, |i| {
        // New selectors (the salt), so each add creates and fills new sets.
        index.apply_policy(policy(i % NAMESPACES, i % 5, &format!("x{i}")));
        index.take_changes();
    });
    println!("policy add (new sets): median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(100, |i| {
        index.delete_policy(
            &format!("ns-{}", i % NAMESPACES),
            &format!("policy-{}x{i}", i % 5),
        );
        index.take_changes();
    });
    println!("policy delete: median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(50, |i| {
        // Another team: namespaceSelector-based sets re-evaluate its pods.
        let team = format!("t{}", (i + 3) % 10);
        index.apply_namespace(mk_ns(&format!("ns-{}", i % NAMESPACES), &[("team", &team)]));
        index.take_changes();
    });
    println!("namespace relabel: median {median:?}, worst {worst:?}");

    let (median, worst) = time_each(1000, |i| {
        let pod = key(&format!(
            "ns-{}/pod-{}",
            i % NAMESPACES,
            i % PODS_PER_NAMESPACE
        ));
        assert!(index.endpoint_policy(&pod).is_some());
    });
    println!("endpoint_policy: median {median:?}, worst {worst:?}");
}
