//! NetworkPolicy truth tables on real nftables: namespaces x/y/z with pods
//! a/b/c (the upstream e2e suite's layout) on one node, TCP 80 and UDP 81
//! probed between every pair, for scenarios of the upstream suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use agentkit::*;
use tabby_tests::{Netns, wait_for};

const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

fn udp_probe(from: &Netns, to: SocketAddr) -> bool {
    from.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 8];
        s.send_to(b"probe", to).is_ok() && s.recv_from(&mut buf).is_ok()
    })
}

/// Every (from, to, port) reachability, probed in parallel.
fn matrix(c: &Cluster) -> Vec<((&'static str, &'static str, u16), bool)> {
    let pairs: Vec<(&str, &str, u16)> = PODS
        .iter()
        .flat_map(|f| {
            PODS.iter()
                .filter(move |t| *t != f)
                .flat_map(move |t| [(*f, *t, 80), (*f, *t, 81)])
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|&(f, t, port)| {
                s.spawn(move || {
                    let (src, _) = c.pod(f);
                    let (_, ip) = c.pod(t);
                    let ok = if port == 80 {
                        tcp_probe(src, SocketAddr::new(ip, 80))
                    } else {
                        udp_probe(src, SocketAddr::new(ip, 81))
                    };
                    ((f, t, port), ok)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Waits until the probed matrix equals `expect` (programming follows the
/// manifest change asynchronously), then reports the differences if not.
fn check(c: &Cluster, what: &str, expect: impl Fn(&str, &str, u16) -> bool) {
    let mut last = Vec::new();
    let done = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < done {
        last = matrix(c)
            .into_iter()
            .filter(|((f, t, p), ok)| expect(f, t, *p) != *ok)
            .map(|((f, t, p), ok)| {
                format!("{f} -> {t}:{p} {}", if ok { "allowed" } else { "blocked" })
            })
            .collect();
        if last.is_empty() {
            return;
        }
    }
    panic!(
        "{what}: {} unexpected results:\n{}\n{}",
        last.len(),
        last.join("\n"),
        c.agent_log()
    );
}

fn ns(p: &str) -> &str {
    p.split('/').next().unwrap()
}
fn name(p: &str) -> &str {
    p.split('/').nth(1).unwrap()
}

fn policy(c: &Cluster, file: &str, body: &str) {
    c.write(
        file,
        &format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{body}"),
    );
}

#[test]
fn upstream_scenarios_hold_on_real_nftables() {
    let mut c = Cluster::new("truth");
    for n in ["x", "y", "z"] {
        c.write(
            &format!("01-ns-{n}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{ns: {n}}}}}\n"
            ),
        );
    }
    c.start_agent();
    for p in PODS {
        c.add_pod(ns(p), name(p), &format!("pod: {}", name(p)));
    }
    check(&c, "no policies", |_, _, _| true);

    // "should support a 'default-deny-ingress' policy"
    policy(
        &c,
        "10.yaml",
        "metadata: {name: deny-ingress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    check(&c, "default deny ingress in x", |_, t, _| ns(t) != "x");

    // "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"
    policy(
        &c,
        "10.yaml",
        "metadata: {name: allow-ns-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n",
    );
    check(&c, "x/a only from namespace y", |f, t, _| {
        t != "x/a" || ns(f) == "y"
    });

    // "should enforce policy based on PodSelector and NamespaceSelector" (AND in one peer), on a named port
    policy(
        &c,
        "10.yaml",
        "metadata: {name: and-named-port, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: http}]\n",
    );
    check(&c, "x/a only from y/b on http (80/TCP)", |f, t, p| {
        t != "x/a" || (f == "y/b" && p == 80)
    });

    // "should enforce egress policy allowing traffic to a server in a different namespace" with a port range
    policy(
        &c,
        "10.yaml",
        "metadata: {name: egress-z, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{protocol: UDP, port: 80, endPort: 90}]\n",
    );
    check(&c, "x may send only UDP 80-90 to z", |f, t, p| {
        ns(f) != "x" || (ns(t) == "z" && p == 81)
    });

    // "should enforce except clause while egress access to server in CIDR block"
    let (_, yb) = c.pod("y/b");
    policy(
        &c,
        "10.yaml",
        &format!(
            "metadata: {{name: cidr-except, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{yb}/32]}}}}]\n"
        ),
    );
    check(&c, "x/a egress to the pod CIDR except y/b", |f, t, _| {
        f != "x/a" || t != "y/b"
    });

    // "should stop enforcing policies after they are deleted"
    c.remove("10.yaml");
    check(&c, "policies deleted", |_, _, _| true);
    wait_for("no dataplane errors", Duration::from_secs(5), || {
        c.metric("tabby_dataplane_errors_total") == Some(0)
    });
}
