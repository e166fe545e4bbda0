//! The parts of networking.k8s.io/v1 the e2e suite does not reach: port
//! ranges, ipBlock on ingress, every selector operator, named ports that
//! differ between pods, policyTypes defaulting, absent vs empty fields,
//! pods that are not endpoints, dual stack, and what `take_changes`
//! reports when labels move pods between sets.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Sel::{Any, Ns, Pod};
use super::{Cluster, allows, connects, key, mk_ns, mk_pod, mk_policy, named_sets};
use crate::Protocol::{Sctp, Tcp, Udp};
use crate::{Changes, EndpointPolicy, PeerMatch, PolicyIndex, PortMatch, PortRange, Rule};

fn index_with(pods: Vec<k8s_openapi::api::core::v1::Pod>) -> PolicyIndex {
    let mut index = PolicyIndex::new();
    index.reset(pods, vec![mk_ns("x", &[]), mk_ns("y", &[])], Vec::new());
    index.take_changes();
    index
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn end_port_allows_the_whole_range_and_nothing_else() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "range",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- ports: [{port: 8000, endPort: 8010}, {port: 9000, endPort: 9000, protocol: UDP}]
",
    ));
    let cases = [
        (7999, Tcp, false),
        (8000, Tcp, true),
        (8005, Tcp, true),
        (8010, Tcp, true),
        (8011, Tcp, false),
        (8005, Udp, false),
        (9000, Udp, true),
        (9000, Tcp, false),
    ];
    for (port, proto, want) in cases {
        assert_eq!(
            connects(&c.index, "y/a", "x/a", port, proto),
            want,
            "{port}/{proto:?}"
        );
    }
    let ingress = c.index.endpoint_policy(&key("x/a")).and_then(|p| p.ingress);
    assert_eq!(
        ingress,
        Some(vec![Rule {
            peers: PeerMatch::Any,
            ports: PortMatch::Ports(vec![
                PortRange {
                    protocol: Tcp,
                    first: 8000,
                    last: 8010
                },
                PortRange {
                    protocol: Udp,
                    first: 9000,
                    last: 9000
                },
            ]),
        }])
    );
}

#[test]
fn invalid_ports_match_nothing_but_still_isolate() {
    // endPort below port, endPort with a named port, an unknown protocol:
    // the API server rejects these; read from a manifest they allow nothing.
    for ports in [
        "[{port: 90, endPort: 80}]",
        "[{port: serve-80-tcp, endPort: 90}]",
        "[{port: 80, protocol: ICMP}]",
        "[{port: 0}]",
    ] {
        let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp]);
        c.apply(mk_policy(
            "x",
            "bad",
            &format!(
                "
podSelector: {{}}
policyTypes: [Ingress]
ingress:
- ports: {ports}
"
            ),
        ));
        let policy = c.index.endpoint_policy(&key("x/a"));
        assert_eq!(policy.and_then(|p| p.ingress), Some(vec![]), "{ports}");
    }
}

#[test]
fn ingress_ip_block_with_except() {
    // Pods are 10.0.<ns>.<pod>: x is 10.0.0.0/24, y 10.0.1.0/24, z 10.0.2.0/24.
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "y/b", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "from-block",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.2.1/32]}
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("y"), Pod("x/a"), false);
    r.expect("z/a", "x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn ip_block_host_bits_are_ignored() {
    let mut c = Cluster::new(&["x/a", "y/a", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "from-block",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from:
  - ipBlock: {cidr: 10.0.1.77/24}
",
    ));
    let mut r = c.reach(true);
    r.expect("z/a", "x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn match_expressions_all_four_operators() {
    // Sources y/a..y/d; NotIn and DoesNotExist match pods without the key.
    let pods = vec![
        mk_pod("x", "server", &[("app", "server")], &["10.0.0.1"], &[]),
        mk_pod(
            "y",
            "a",
            &[("tier", "front"), ("env", "prod")],
            &["10.0.1.1"],
            &[],
        ),
        mk_pod("y", "b", &[("tier", "back")], &["10.0.1.2"], &[]),
        mk_pod("y", "c", &[("env", "dev")], &["10.0.1.3"], &[]),
        mk_pod("y", "d", &[], &["10.0.1.4"], &[]),
    ];
    let cases: [(&str, [bool; 4]); 6] = [
        (
            "{key: tier, operator: In, values: [front, back]}",
            [true, true, false, false],
        ),
        (
            "{key: tier, operator: NotIn, values: [front]}",
            [false, true, true, true],
        ),
        ("{key: env, operator: Exists}", [true, false, true, false]),
        (
            "{key: env, operator: DoesNotExist}",
            [false, true, false, true],
        ),
        // Unknown operators and In without values select nothing.
        (
            "{key: env, operator: Matches, values: [prod]}",
            [false, false, false, false],
        ),
        (
            "{key: env, operator: In, values: []}",
            [false, false, false, false],
        ),
    ];
    for (expr, want) in cases {
        let mut index = index_with(pods.clone());
        index.apply_policy(mk_policy(
            "x",
            "p",
            &format!(
                "
podSelector: {{matchLabels: {{app: server}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{}}
    podSelector:
      matchExpressions: [{expr}]
"
            ),
        ));
        let got =
            ["y/a", "y/b", "y/c", "y/d"].map(|from| connects(&index, from, "x/server", 80, Tcp));
        assert_eq!(got, want, "{expr}");
    }
}

#[test]
fn match_labels_and_match_expressions_are_anded() {
    let pods = vec![
        mk_pod("x", "server", &[], &["10.0.0.1"], &[]),
        mk_pod(
            "x",
            "a",
            &[("app", "web"), ("env", "prod")],
            &["10.0.0.2"],
            &[],
        ),
        mk_pod(
            "x",
            "b",
            &[("app", "web"), ("env", "dev")],
            &["10.0.0.3"],
            &[],
        ),
        mk_pod(
            "x",
            "c",
            &[("app", "db"), ("env", "prod")],
            &["10.0.0.4"],
            &[],
        ),
    ];
    let mut index = index_with(pods);
    index.apply_policy(mk_policy(
        "x",
        "p",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector:
      matchLabels: {app: web}
      matchExpressions: [{key: env, operator: NotIn, values: [dev]}]
",
    ));
    let got = ["x/a", "x/b", "x/c"].map(|from| connects(&index, from, "x/server", 80, Tcp));
    assert_eq!(got, [true, false, false]);
}

/// Two web pods naming different numbers "http", one pod without it.
fn named_port_pods() -> Vec<k8s_openapi::api::core::v1::Pod> {
    vec![
        mk_pod("x", "client", &[("app", "client")], &["10.0.0.1"], &[]),
        mk_pod(
            "x",
            "web1",
            &[("app", "web")],
            &["10.0.0.2"],
            &[("http", 8080, "TCP")],
        ),
        mk_pod(
            "y",
            "web2",
            &[("app", "web")],
            &["10.0.1.2"],
            &[("http", 9090, "TCP"), ("dns", 53, "UDP")],
        ),
        mk_pod(
            "y",
            "other",
            &[("app", "web")],
            &["10.0.1.3"],
            &[("metrics", 8080, "TCP")],
        ),
    ]
}

#[test]
fn ingress_named_port_resolves_per_target_pod() {
    let mut index = index_with(named_port_pods());
    for ns in ["x", "y"] {
        index.apply_policy(mk_policy(
            ns,
            "web",
            "
podSelector: {matchLabels: {app: web}}
policyTypes: [Ingress]
ingress:
- ports: [{port: http}]
",
        ));
    }
    let ports = |pod: &str| {
        index
            .endpoint_policy(&key(pod))
            .and_then(|p| p.ingress)
            .map(|rules| rules.into_iter().map(|r| r.ports).collect::<Vec<_>>())
    };
    let tcp = |n| {
        PortMatch::Ports(vec![PortRange {
            protocol: Tcp,
            first: n,
            last: n,
        }])
    };
    assert_eq!(ports("x/web1"), Some(vec![tcp(8080)]));
    assert_eq!(ports("y/web2"), Some(vec![tcp(9090)]));
    // A named port the pod does not have matches nothing: isolated, no rule.
    assert_eq!(ports("y/other"), Some(vec![]));
    let cases = [
        ("x/web1", 8080, true),
        ("x/web1", 9090, false),
        ("y/web2", 9090, true),
        ("y/web2", 8080, false),
        ("y/other", 8080, false),
    ];
    for (to, port, want) in cases {
        assert_eq!(
            connects(&index, "x/client", to, port, Tcp),
            want,
            "{to}:{port}"
        );
    }
}

#[test]
fn egress_named_port_resolves_per_destination_pod() {
    let mut index = index_with(named_port_pods());
    index.apply_policy(mk_policy(
        "x",
        "client",
        "
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {}
    podSelector: {matchLabels: {app: web}}
  ports: [{port: http}, {port: dns, protocol: UDP}]
",
    ));
    let cases = [
        ("x/web1", 8080, Tcp, true),
        ("x/web1", 9090, Tcp, false),
        ("y/web2", 9090, Tcp, true),
        ("y/web2", 8080, Tcp, false),
        ("y/web2", 53, Udp, true),
        ("x/web1", 53, Udp, false),
        ("y/other", 8080, Tcp, false),
    ];
    for (to, port, proto, want) in cases {
        assert_eq!(
            connects(&index, "x/client", to, port, proto),
            want,
            "{to}:{port}/{proto:?}"
        );
    }
    let (ip_sets, port_sets) = named_sets(&index, &[key("x/client")]);
    assert!(ip_sets.is_empty(), "only named ports: no address set");
    assert_eq!(port_sets.len(), 2);
    let members: BTreeSet<_> = port_sets
        .iter()
        .flat_map(|s| index.port_set(s).expect("set").iter().copied())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([
            (ip("10.0.0.2"), Tcp, 8080),
            (ip("10.0.1.2"), Tcp, 9090),
            (ip("10.0.1.2"), Udp, 53),
        ])
    );
}

#[test]
fn egress_named_port_without_to_means_every_pod_with_that_port() {
    let mut index = index_with(named_port_pods());
    index.apply_policy(mk_policy(
        "x",
        "client",
        "
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- ports: [{port: http}]
",
    ));
    assert!(connects(&index, "x/client", "x/web1", 8080, Tcp));
    assert!(connects(&index, "x/client", "y/web2", 9090, Tcp));
    assert!(!connects(&index, "x/client", "y/other", 8080, Tcp));
    // Not a pod: nothing names its ports, so a named port never matches it.
    let outside = ip("192.0.2.1");
    assert!(!allows(
        &index,
        &key("x/client"),
        ip("10.0.0.1"),
        &key("z/none"),
        outside,
        8080,
        Tcp
    ));
}

#[test]
fn egress_rule_mixing_numeric_and_named_ports_and_ip_blocks_is_split() {
    let mut index = index_with(named_port_pods());
    index.apply_policy(mk_policy(
        "x",
        "client",
        "
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- to:
  - podSelector: {matchLabels: {app: web}}
  - ipBlock: {cidr: 192.0.2.0/24}
  ports: [{port: 443}, {port: http}]
",
    ));
    let rules = index
        .endpoint_policy(&key("x/client"))
        .and_then(|p| p.egress)
        .expect("egress isolated");
    assert_eq!(rules.len(), 2, "{rules:#?}");
    let client = key("x/client");
    let src = ip("10.0.0.1");
    let web1 = (key("x/web1"), ip("10.0.0.2"));
    let web2 = (key("y/web2"), ip("10.0.1.2"));
    let block = (key("z/outside"), ip("192.0.2.9"));
    let cases = [
        (&web1, 443, true),
        (&web1, 8080, true),
        (&web1, 9090, false),
        // web2 is in y: the podSelector-only peer selects in x only.
        (&web2, 443, false),
        (&web2, 9090, false),
        (&block, 443, true),
        // Named ports never match ipBlock peers.
        (&block, 8080, false),
    ];
    for ((to, dst), port, want) in cases {
        assert_eq!(
            allows(&index, &client, src, to, *dst, port, Tcp),
            want,
            "{to}:{port}"
        );
    }
}

#[test]
fn named_port_protocol_must_match() {
    let mut index = index_with(named_port_pods());
    index.apply_policy(mk_policy(
        "y",
        "web",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- ports: [{port: dns, protocol: TCP}, {port: dns, protocol: UDP}, {port: http, protocol: SCTP}]
",
    ));
    assert!(connects(&index, "x/client", "y/web2", 53, Udp));
    assert!(!connects(&index, "x/client", "y/web2", 53, Tcp));
    assert!(!connects(&index, "x/client", "y/web2", 9090, Sctp));
    assert!(!connects(&index, "x/client", "y/web2", 9090, Tcp));
}

#[test]
fn policy_types_defaulting() {
    // (policyTypes, ingress, egress) -> (ingress isolation, egress isolation),
    // with `deny` an isolated direction with no rule, `all` one rule allowing
    // everything. Defaulting follows SetDefaults_NetworkPolicy: absent or
    // empty policyTypes is Ingress, plus Egress when egress has rules.
    let none: Option<Vec<Rule>> = None;
    let deny = Some(vec![]);
    let all = Some(vec![Rule {
        peers: PeerMatch::Any,
        ports: PortMatch::Any,
    }]);
    let cases = [
        ("", "", "", deny.clone(), none.clone()),
        ("", "ingress: [{}]", "", all.clone(), none.clone()),
        ("", "", "egress: []", deny.clone(), none.clone()),
        ("", "", "egress: [{}]", deny.clone(), all.clone()),
        ("", "ingress: []", "egress: [{}]", deny.clone(), all.clone()),
        (
            "policyTypes: []",
            "",
            "egress: [{}]",
            deny.clone(),
            all.clone(),
        ),
        (
            "policyTypes: []",
            "",
            "egress: []",
            deny.clone(),
            none.clone(),
        ),
        (
            "policyTypes: [Egress]",
            "ingress: [{}]",
            "",
            none.clone(),
            deny.clone(),
        ),
        (
            "policyTypes: [Egress]",
            "",
            "egress: [{}]",
            none.clone(),
            all.clone(),
        ),
        (
            "policyTypes: [Ingress]",
            "",
            "egress: [{}]",
            deny.clone(),
            none.clone(),
        ),
        (
            "policyTypes: [Ingress, Egress]",
            "",
            "",
            deny.clone(),
            deny.clone(),
        ),
        (
            "policyTypes: [Egress, Ingress]",
            "ingress: [{}]",
            "egress: [{}]",
            all.clone(),
            all.clone(),
        ),
    ];
    for (types, ingress, egress, want_in, want_out) in cases {
        let mut index = index_with(vec![mk_pod("x", "a", &[], &["10.0.0.1"], &[])]);
        let yaml = format!("podSelector: {{}}\n{types}\n{ingress}\n{egress}\n");
        index.apply_policy(mk_policy("x", "p", &yaml));
        let got = index.endpoint_policy(&key("x/a")).expect("endpoint");
        assert_eq!(
            got,
            EndpointPolicy {
                ingress: want_in,
                egress: want_out
            },
            "{yaml}"
        );
    }
}

#[test]
fn absent_and_empty_selectors_and_lists() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    // (rule, who reaches x/a): absent podSelector selects every pod of x.
    let cases = [
        ("- from: []", [true, true]),
        ("- {}", [true, true]),
        ("- ports: []", [true, true]),
        ("- from: [{podSelector: {}}]", [true, false]),
        ("- from: [{namespaceSelector: {}}]", [true, true]),
        (
            "- from: [{namespaceSelector: {}, podSelector: {}}]",
            [true, true],
        ),
        (
            "- from: [{namespaceSelector: {matchLabels: {ns: y}}}]",
            [false, true],
        ),
        // A peer with neither selector nor ipBlock is invalid: nothing.
        ("- from: [{}]", [false, false]),
        ("[]", [false, false]),
    ];
    for (rules, [from_xb, from_ya]) in cases {
        let yaml = format!("policyTypes: [Ingress]\ningress:\n  {rules}\n");
        c.apply(mk_policy("x", "p", &yaml));
        let got = [
            connects(&c.index, "x/b", "x/a", 80, Tcp),
            connects(&c.index, "y/a", "x/a", 80, Tcp),
        ];
        assert_eq!(got, [from_xb, from_ya], "{rules}");
    }
}

#[test]
fn pods_that_are_not_endpoints_get_no_policy_and_join_no_set() {
    let web = |name: &str, ips: &[&str]| {
        mk_pod("x", name, &[("app", "web")], ips, &[("http", 80, "TCP")])
    };
    let mut host = web("host", &["192.0.2.10"]);
    host.spec.as_mut().expect("spec").host_network = Some(true);
    let pending = web("pending", &[]);
    let mut done = web("done", &["10.0.0.3"]);
    done.status.as_mut().expect("status").phase = Some("Succeeded".into());
    let mut failed = web("failed", &["10.0.0.4"]);
    failed.status.as_mut().expect("status").phase = Some("Failed".into());
    let mut terminating = web("terminating", &["10.0.0.5"]);
    let deleted_at = "2026-01-01T00:00:00Z".parse().expect("time");
    terminating.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(deleted_at),
    );
    let running = web("running", &["10.0.0.6"]);
    let mut index = index_with(vec![host, pending, done, failed, terminating, running]);
    index.apply_policy(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {app: web}}
policyTypes: [Ingress, Egress]
ingress:
- from: [{podSelector: {matchLabels: {app: web}}}]
egress:
- to: [{podSelector: {matchLabels: {app: web}}}]
  ports: [{port: http}]
",
    ));
    for pod in ["x/host", "x/pending", "x/done", "x/failed"] {
        assert_eq!(index.endpoint_policy(&key(pod)), None, "{pod}");
    }
    // Terminating pods keep their policy and set membership until deleted.
    for pod in ["x/terminating", "x/running"] {
        assert!(index.endpoint_policy(&key(pod)).is_some(), "{pod}");
    }
    assert_eq!(index.pod_ips(&key("x/host")), Vec::<IpAddr>::new());
    assert_eq!(index.pod_ips(&key("x/done")), vec![ip("10.0.0.3")]);
    let ips: BTreeSet<IpAddr> = index
        .ip_set_names()
        .flat_map(|s| index.ip_set(s).expect("set").clone())
        .collect();
    assert_eq!(ips, BTreeSet::from([ip("10.0.0.5"), ip("10.0.0.6")]));
    let triples: BTreeSet<_> = index
        .port_set_names()
        .flat_map(|s| index.port_set(s).expect("set").clone())
        .collect();
    assert_eq!(
        triples,
        BTreeSet::from([(ip("10.0.0.5"), Tcp, 80), (ip("10.0.0.6"), Tcp, 80)])
    );
    assert_eq!(index.endpoint_policy(&key("x/unknown")), None);
}

#[test]
fn dual_stack_pods_are_in_sets_with_both_families() {
    let pods = vec![
        mk_pod(
            "x",
            "server",
            &[("app", "server")],
            &["10.0.0.1", "fd00::1"],
            &[],
        ),
        mk_pod(
            "y",
            "client",
            &[("app", "client")],
            &["10.0.1.1", "fd00::1:1"],
            &[],
        ),
        mk_pod("y", "other", &[], &["10.0.1.2", "fd00::1:2"], &[]),
    ];
    let mut index = index_with(pods);
    index.apply_policy(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {app: server}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {}
    podSelector: {matchLabels: {app: client}}
  - ipBlock: {cidr: 'fd00::1:2/128'}
",
    ));
    let names: Vec<_> = index.ip_set_names().cloned().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(
        index.ip_set(&names[0]),
        Some(&BTreeSet::from([ip("10.0.1.1"), ip("fd00::1:1")]))
    );
    assert_eq!(
        index.pod_ips(&key("x/server")),
        vec![ip("10.0.0.1"), ip("fd00::1")]
    );
    let (server, client, other) = (key("x/server"), key("y/client"), key("y/other"));
    let cases = [
        (&client, "fd00::1:1", "fd00::1", true),
        (&client, "10.0.1.1", "10.0.0.1", true),
        (&other, "fd00::1:2", "fd00::1", true),
        (&other, "10.0.1.2", "10.0.0.1", false),
    ];
    for (from, src, dst, want) in cases {
        assert_eq!(
            allows(&index, from, ip(src), &server, ip(dst), 80, Tcp),
            want,
            "{src}"
        );
    }
}

#[test]
fn pod_ip_is_used_when_pod_ips_is_absent() {
    let mut pod = mk_pod("x", "a", &[], &["10.0.0.1"], &[]);
    pod.status.as_mut().expect("status").pod_ips = None;
    let index = index_with(vec![pod]);
    assert_eq!(index.pod_ips(&key("x/a")), vec![ip("10.0.0.1")]);
}

fn selector_sets_fixture() -> (PolicyIndex, String, String) {
    let pods = vec![
        mk_pod("x", "server", &[("app", "server")], &["10.0.0.1"], &[]),
        mk_pod("x", "a", &[("role", "frontend")], &["10.0.0.2"], &[]),
        mk_pod("y", "b", &[("role", "backend")], &["10.0.1.2"], &[]),
    ];
    let mut index = index_with(pods);
    index.apply_policy(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {app: server}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {}
    podSelector: {matchLabels: {role: frontend}}
- from:
  - namespaceSelector: {}
    podSelector: {matchLabels: {role: backend}}
",
    ));
    index.take_changes();
    let find = |member: &str| {
        index
            .ip_set_names()
            .find(|s| index.ip_set(s).is_some_and(|m| m.contains(&ip(member))))
            .cloned()
            .expect("set")
    };
    let (front, back) = (find("10.0.0.2"), find("10.0.1.2"));
    (index, front, back)
}

#[test]
fn pod_relabel_moves_it_between_sets_and_reports_exactly_those() {
    let (mut index, front, back) = selector_sets_fixture();
    index.apply_pod(mk_pod("x", "a", &[("role", "backend")], &["10.0.0.2"], &[]));
    let changes = index.take_changes();
    assert_eq!(
        changes,
        Changes {
            endpoints: BTreeSet::from([key("x/a")]),
            ip_sets: set(&[&front, &back]),
            port_sets: BTreeSet::new(),
        }
    );
    assert_eq!(index.ip_set(&front), Some(&BTreeSet::new()));
    assert_eq!(
        index.ip_set(&back),
        Some(&BTreeSet::from([ip("10.0.0.2"), ip("10.0.1.2")]))
    );
    // The same object again changes nothing.
    index.apply_pod(mk_pod("x", "a", &[("role", "backend")], &["10.0.0.2"], &[]));
    assert_eq!(index.take_changes(), Changes::default());
    // An address change touches only the set holding the pod.
    index.apply_pod(mk_pod("x", "a", &[("role", "backend")], &["10.0.0.9"], &[]));
    let changes = index.take_changes();
    assert_eq!(changes.ip_sets, set(&[&back]));
    assert_eq!(changes.endpoints, BTreeSet::from([key("x/a")]));
    index.delete_pod(&key("x/a"));
    let changes = index.take_changes();
    assert_eq!(changes.ip_sets, set(&[&back]));
    assert_eq!(changes.endpoints, BTreeSet::from([key("x/a")]));
}

#[test]
fn pod_relabel_into_a_policy_reports_the_pod() {
    let mut c = Cluster::new(&["x/a", "x/b"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "isolate",
        "
podSelector: {matchLabels: {target: isolated}}
policyTypes: [Ingress]
ingress: []
",
    ));
    c.index.take_changes();
    c.add_pod_labels("x/a", &[("target", "isolated")]);
    let changes = c.index.take_changes();
    assert_eq!(changes.endpoints, BTreeSet::from([key("x/a")]));
    assert!(changes.ip_sets.is_empty());
}

#[test]
fn namespace_relabel_moves_its_pods_and_reports_only_sets() {
    let mut c = Cluster::new(&["x/a", "y/a", "y/b", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "p",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from: [{namespaceSelector: {matchLabels: {team: blue}}}]
- from: [{namespaceSelector: {matchLabels: {ns: z}}}]
",
    ));
    let _ = c.index.take_changes();
    let blue = c
        .index
        .ip_set_names()
        .find(|s| c.index.ip_set(s).is_some_and(BTreeSet::is_empty))
        .cloned()
        .expect("empty set");
    c.add_namespace_label("y", "team", "blue");
    let changes = c.index.take_changes();
    assert_eq!(changes.ip_sets, set(&[&blue]));
    assert!(
        changes.endpoints.is_empty(),
        "rules name sets, not namespaces"
    );
    assert_eq!(c.index.ip_set(&blue).map(BTreeSet::len), Some(2));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    r.expect_peer(Ns("y"), Ns("x"), true);
    r.expect_peer(Ns("z"), Ns("x"), true);
    c.check(80, Tcp, &r);
    // A label no selector looks at changes nothing.
    c.add_namespace_label("y", "unrelated", "1");
    assert_eq!(c.index.take_changes(), Changes::default());
    // Deleting the namespace leaves its pods the name label only.
    c.index.delete_namespace("y");
    assert_eq!(c.index.take_changes().ip_sets, set(&[&blue]));
    assert_eq!(c.index.ip_set(&blue).map(BTreeSet::len), Some(0));
}

#[test]
fn policy_delete_restores_allow_all_and_drops_its_sets() {
    let (mut index, front, back) = selector_sets_fixture();
    assert_eq!(index.stats().ip_sets, 2);
    index.delete_policy("x", "p");
    let changes = index.take_changes();
    assert_eq!(changes.endpoints, BTreeSet::from([key("x/server")]));
    assert_eq!(changes.ip_sets, set(&[&front, &back]));
    assert_eq!(
        index.endpoint_policy(&key("x/server")),
        Some(EndpointPolicy::default())
    );
    assert_eq!(index.ip_set(&front), None);
    assert_eq!(index.stats().ip_sets, 0);
    assert!(connects(&index, "y/b", "x/server", 80, Tcp));
}

#[test]
fn policy_update_reports_pods_selected_before_and_after() {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: []
",
    ));
    assert_eq!(
        c.index.take_changes().endpoints,
        BTreeSet::from([key("x/a")])
    );
    c.apply(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {pod: b}}
policyTypes: [Ingress]
ingress: []
",
    ));
    assert_eq!(
        c.index.take_changes().endpoints,
        BTreeSet::from([key("x/a"), key("x/b")])
    );
    // Same spec again: nothing to do.
    c.apply(mk_policy(
        "x",
        "p",
        "
podSelector: {matchLabels: {pod: b}}
policyTypes: [Ingress]
ingress: []
",
    ));
    assert_eq!(c.index.take_changes(), Changes::default());
}

#[test]
fn equal_selectors_share_one_set_and_names_are_valid_for_nftables() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    // The same peer written two ways in two policies of x: one set. The
    // same podSelector in y selects in y: another set.
    c.apply(mk_policy(
        "x",
        "p1",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]
",
    ));
    c.apply(mk_policy(
        "x",
        "p2",
        "
podSelector: {}
policyTypes: [Ingress, Egress]
ingress:
- from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]
egress:
- to: [{podSelector: {matchLabels: {pod: b}}}]
  ports: [{port: serve-80-tcp}]
",
    ));
    c.apply(mk_policy(
        "y",
        "p1",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]
",
    ));
    let stats = c.index.stats();
    assert_eq!((stats.ip_sets, stats.port_sets, stats.policies), (2, 1, 3));
    let names: Vec<String> = c
        .index
        .ip_set_names()
        .chain(c.index.port_set_names())
        .cloned()
        .collect();
    for name in &names {
        assert!(name.len() <= 31, "{name}");
        assert!(
            name.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "{name}"
        );
        assert!(name.starts_with("p-") || name.starts_with("n-"), "{name}");
    }
    // Names do not depend on the order objects arrived in.
    let mut other = PolicyIndex::new();
    other.apply_policy(mk_policy(
        "y",
        "p1",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from: [{podSelector: {matchLabels: {pod: b}}}]
",
    ));
    assert!(other.ip_set_names().all(|n| names.contains(n)));
    // Deleting one of two policies sharing a set keeps the set.
    c.index.take_changes();
    c.index.delete_policy("x", "p1");
    let changes = c.index.take_changes();
    assert!(changes.ip_sets.is_empty(), "{changes:?}");
    assert_eq!(c.index.stats().ip_sets, 2);
}

#[test]
fn pods_of_unknown_namespaces_are_selected_by_the_name_label() {
    let mut index = PolicyIndex::new();
    index.apply_pod(mk_pod("x", "server", &[], &["10.0.0.1"], &[]));
    index.apply_pod(mk_pod("y", "client", &[], &["10.0.1.1"], &[]));
    index.apply_policy(mk_policy(
        "x",
        "p",
        "
policyTypes: [Ingress]
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
",
    ));
    assert!(connects(&index, "y/client", "x/server", 80, Tcp));
    // The namespace arrives with labels of its own: the name label stays.
    index.apply_namespace(mk_ns("y", &[("team", "blue")]));
    assert!(connects(&index, "y/client", "x/server", 80, Tcp));
    assert_eq!(index.stats().namespaces, 1);
}

#[test]
fn reset_replaces_everything_and_reports_old_and_new() {
    let (mut index, front, back) = selector_sets_fixture();
    index.reset(
        vec![mk_pod("z", "new", &[], &["10.0.2.1"], &[])],
        vec![mk_ns("z", &[])],
        Vec::new(),
    );
    let changes = index.take_changes();
    assert_eq!(
        changes.endpoints,
        BTreeSet::from([key("x/server"), key("x/a"), key("y/b"), key("z/new")])
    );
    assert_eq!(changes.ip_sets, set(&[&front, &back]));
    assert_eq!(
        index.stats(),
        crate::IndexStats {
            pods: 1,
            namespaces: 1,
            ..Default::default()
        }
    );
    assert_eq!(index.endpoint_policy(&key("x/server")), None);
}
