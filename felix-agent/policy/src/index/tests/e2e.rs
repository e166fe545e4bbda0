//! Every scenario of the upstream e2e suite
//! (kubernetes/kubernetes test/e2e/network/netpol/network_policy.go):
//! the same pods, policies, steps and expected truth tables, evaluated
//! through the reference dataplane instead of real probes. The policies are
//! written as the manifests the upstream helpers build (their
//! `SetSpecIngressRules`/`SetSpecEgressRules` set `policyTypes` explicitly).

use super::Sel::{Any, Ns, Pod};
use super::{Cluster, mk_policy};
use crate::Protocol::{self, Sctp, Tcp, Udp};

fn default_deny_ingress(proto: Protocol) {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "y/b"], &[80], &[proto]);
    c.apply(mk_policy(
        "x",
        "deny-ingress",
        "
podSelector: {}
policyTypes: [Ingress]
ingress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    c.check(80, proto, &r);
}

#[test]
fn tcp_default_deny_ingress() {
    default_deny_ingress(Tcp);
}

#[test]
fn udp_default_deny_ingress() {
    default_deny_ingress(Udp);
}

#[test]
fn sctp_default_deny_ingress() {
    default_deny_ingress(Sctp);
}

#[test]
fn default_deny_all() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-all",
        "
podSelector: {}
policyTypes: [Ingress, Egress]
ingress: []
egress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    r.expect_peer(Ns("x"), Any, false);
    c.check(80, Tcp, &r);
}

#[test]
fn allow_traffic_from_pods_within_server_namespace_by_pod_selector() {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "x-a-allows-x-b",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    c.check(80, Tcp, &r);
}

#[test]
fn allow_ingress_traffic_for_a_target() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-all",
        "
podSelector: {}
policyTypes: [Ingress]
ingress: []
",
    ));
    c.apply(mk_policy(
        "x",
        "allow-all-to-a",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {}
    namespaceSelector: {}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", true);
    r.expect_all_ingress("x/b", false);
    c.check(80, Tcp, &r);
}

#[test]
fn allow_ingress_traffic_from_pods_in_all_namespaces() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-from-another-ns",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {}}
",
    ));
    c.check(80, Tcp, &c.reach(true));
}

fn only_from_namespace_y(proto: Protocol, port: u16, rule_ports: &str) {
    let pods: &[&str] = if proto == Tcp && port == 81 {
        &["x/a", "x/b", "y/a", "y/b", "z/a"]
    } else {
        &["x/a", "x/b", "y/a", "z/a"]
    };
    let mut c = Cluster::new(pods, &[i32::from(port)], &[proto]);
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-ns-selector",
        &format!(
            "
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}
{rule_ports}
"
        ),
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Pod("x/a"), false);
    r.expect_peer(Ns("y"), Pod("x/a"), true);
    r.expect_peer(Ns("z"), Pod("x/a"), false);
    c.check(port, proto, &r);
}

#[test]
fn allow_traffic_only_from_a_different_namespace_by_namespace_selector() {
    only_from_namespace_y(Tcp, 80, "");
}

#[test]
fn namespace_selector_with_match_labels_using_default_ns_label() {
    // Upstream uses v1.LabelMetadataName, the same label as the previous
    // scenario: the one the API server puts on every namespace.
    only_from_namespace_y(Tcp, 80, "");
}

#[test]
fn tcp_policy_based_on_ports() {
    only_from_namespace_y(Tcp, 81, "  ports: [{port: 81, protocol: TCP}]");
}

#[test]
fn udp_policy_based_on_ports() {
    only_from_namespace_y(Udp, 81, "  ports: [{port: 81, protocol: UDP}]");
}

#[test]
fn sctp_policy_based_on_ports() {
    only_from_namespace_y(Sctp, 81, "  ports: [{port: 81, protocol: SCTP}]");
}

#[test]
fn pod_selector_with_match_expressions() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "x-a-allows-x-b",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b]}]
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    c.check(80, Tcp, &r);
}

#[test]
fn namespace_selector_with_match_expressions() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-match-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Pod("x/a"), false);
    r.expect_peer(Ns("z"), Pod("x/a"), false);
    c.check(80, Tcp, &r);
}

#[test]
fn pod_selector_or_namespace_selector() {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-match-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
  - podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut r = c.reach(true);
    r.expect("x/a", "x/a", false);
    r.expect("x/c", "x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn pod_selector_and_namespace_selector() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "y/b", "z/b"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("y/b", "x/a", true);
    r.expect("z/b", "x/a", true);
    c.check(80, Tcp, &r);
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "y/b", "y/c"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-z-pod-b-c",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Pod("x/a"), false);
    r.expect("y/a", "x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn any_pod_selectors() {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-x-pod-b-c",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
  - podSelector: {matchLabels: {pod: c}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    r.expect("x/c", "x/a", true);
    c.check(80, Tcp, &r);
}

fn only_from_pod_in_other_namespace(proto: Protocol) {
    let pods: &[&str] = if proto == Tcp {
        &["x/a", "x/b", "y/a", "y/b", "z/a"]
    } else {
        &["x/a", "x/b", "y/a"]
    };
    let mut c = Cluster::new(pods, &[80], &[proto]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("y/a", "x/a", true);
    c.check(80, proto, &r);
}

#[test]
fn tcp_only_from_a_pod_in_a_different_namespace_by_pod_and_namespace_selector() {
    only_from_pod_in_other_namespace(Tcp);
}

#[test]
fn udp_only_from_a_pod_in_a_different_namespace_by_pod_and_namespace_selector() {
    only_from_pod_in_other_namespace(Udp);
}

#[test]
fn sctp_only_from_a_pod_in_a_different_namespace_by_pod_and_namespace_selector() {
    only_from_pod_in_other_namespace(Sctp);
}

#[test]
fn multiple_stacked_policies_with_overlapping_pod_selectors() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "y/b", "z/a"], &[80, 81], &[Tcp]);
    let policy = |name: &str, port: u16| {
        mk_policy(
            "x",
            name,
            &format!(
                "
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}
  ports: [{{port: {port}, protocol: TCP}}]
"
            ),
        )
    };
    c.apply(policy("allow-client-a-via-ns-selector", 81));
    let mut allow = c.reach(true);
    allow.expect_peer(Ns("x"), Pod("x/a"), false);
    allow.expect_peer(Ns("y"), Pod("x/a"), true);
    allow.expect_peer(Ns("z"), Pod("x/a"), false);
    c.check(81, Tcp, &allow);
    let mut deny = c.reach(true);
    deny.expect_all_ingress("x/a", false);
    c.check(80, Tcp, &deny);
    c.apply(policy("allow-client-a-via-ns-selector-80", 80));
    c.check(80, Tcp, &allow);
}

#[test]
fn allow_all_policy() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80, 81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-all",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress: [{}]
",
    ));
    c.check(80, Tcp, &c.reach(true));
    c.check(81, Tcp, &c.reach(true));
}

#[test]
fn allow_ingress_access_on_one_named_port() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80, 81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-all",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress:
- ports: [{port: serve-81-tcp}]
",
    ));
    c.check(81, Tcp, &c.reach(true));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    c.check(80, Tcp, &r);
}

#[test]
fn allow_ingress_access_from_namespace_on_one_named_port() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "z/a"], &[80, 81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-ns-selector-80",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports: [{port: serve-80-tcp, protocol: TCP}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Pod("x/a"), false);
    r.expect_peer(Ns("z"), Pod("x/a"), false);
    c.check(80, Tcp, &r);
    let mut fail = c.reach(true);
    fail.expect_all_ingress("x/a", false);
    c.check(81, Tcp, &fail);
}

#[test]
fn allow_egress_access_on_one_named_port() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80, 81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-egress",
        "
podSelector: {matchLabels: {}}
policyTypes: [Egress]
egress:
- ports: [{port: serve-80-tcp}]
",
    ));
    c.check(80, Tcp, &c.reach(true));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Any, false);
    c.check(81, Tcp, &r);
}

#[test]
fn enforce_updated_policy() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-all-mutate-to-deny-all",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress: [{}]
",
    ));
    c.check(81, Tcp, &c.reach(true));
    c.apply(mk_policy(
        "x",
        "allow-all-mutate-to-deny-all",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    c.check(81, Tcp, &r);
}

#[test]
fn allow_ingress_access_from_updated_namespace() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-ns-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns2: updated}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(80, Tcp, &r);
    c.add_namespace_label("y", "ns2", "updated");
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect_peer(Ns("y"), Any, true);
    c.check(80, Tcp, &r);
}

#[test]
fn allow_ingress_access_from_updated_pod() {
    let mut c = Cluster::new(&["x/a", "x/b"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-pod-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b, pod2: updated}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(80, Tcp, &r);
    c.add_pod_labels("x/b", &[("pod", "b"), ("pod2", "updated")]);
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    c.check(80, Tcp, &r);
}

#[test]
fn deny_ingress_from_pods_on_other_namespaces() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-empty-policy",
        "
podSelector: {}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {}}
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("y"), Ns("x"), false);
    r.expect_peer(Ns("z"), Ns("x"), false);
    c.check(80, Tcp, &r);
}

#[test]
fn deny_ingress_access_to_updated_pod() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-ingress-via-label-selector",
        "
podSelector: {matchLabels: {target: isolated}}
policyTypes: [Ingress]
ingress: []
",
    ));
    c.check(80, Tcp, &c.reach(true));
    c.add_pod_labels("x/a", &[("target", "isolated")]);
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn deny_egress_from_pods_based_on_pod_selector() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-egress-pod-a",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_all_egress("x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn deny_egress_from_all_pods_in_a_namespace() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-egress-ns-x",
        "
podSelector: {}
policyTypes: [Egress]
egress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Any, false);
    c.check(80, Tcp, &r);
}

#[test]
fn ingress_and_egress_specified_together() {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c", "y/a"], &[80, 81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-pod-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress, Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
egress:
- ports: [{port: 80}]
",
    ));
    let mut r80 = c.reach(true);
    r80.expect_all_ingress("x/a", false);
    r80.expect("x/b", "x/a", true);
    c.check(80, Tcp, &r80);
    let mut r81 = c.reach(true);
    r81.expect_all_ingress("x/a", false);
    r81.expect_all_egress("x/a", false);
    r81.expect("x/b", "x/a", true);
    c.check(81, Tcp, &r81);
}

#[test]
fn deny_egress_on_the_client_side_even_if_the_server_allows_it() {
    let mut c = Cluster::new(&["x/a", "y/a", "y/b"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-to-ns-y-pod-a",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
",
    ));
    for (name, target) in [
        ("allow-from-xa-on-ya-match-selector", "a"),
        ("allow-from-xa-on-yb-match-selector", "b"),
    ] {
        c.apply(mk_policy(
            "y",
            name,
            &format!(
                "
podSelector: {{matchLabels: {{pod: {target}}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: x}}}}
    podSelector: {{matchLabels: {{pod: a}}}}
"
            ),
        ));
    }
    let mut r = c.reach(true);
    r.expect_peer(Pod("x/a"), Any, false);
    r.expect_peer(Any, Pod("y/a"), false);
    r.expect_peer(Pod("x/a"), Pod("y/a"), true);
    r.expect_peer(Any, Pod("y/b"), false);
    c.check(80, Tcp, &r);
}

#[test]
fn egress_to_a_server_in_a_different_namespace_by_pod_and_namespace_selector() {
    let mut c = Cluster::new(&["x/a", "y/a", "y/b"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-to-ns-y-pod-a",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
",
    ));
    let mut r = c.reach(true);
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "y/a", true);
    c.check(80, Tcp, &r);
}

#[test]
fn ingress_allowing_any_port_on_a_specific_protocol() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp, Udp]);
    c.apply(mk_policy(
        "x",
        "allow-ingress-by-proto",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- ports: [{protocol: TCP}]
",
    ));
    c.check(80, Tcp, &c.reach(true));
    let mut r = c.reach(true);
    r.expect_peer(Any, Pod("x/a"), false);
    c.check(80, Udp, &r);
}

#[test]
fn multiple_ingress_policies_with_allow_all_taking_precedence() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ingress-port-80",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress:
- ports: [{port: 80}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    c.check(81, Tcp, &r);
    c.apply(mk_policy(
        "x",
        "allow-ingress",
        "
podSelector: {matchLabels: {}}
policyTypes: [Ingress]
ingress: [{}]
",
    ));
    c.check(81, Tcp, &c.reach(true));
}

#[test]
fn multiple_egress_policies_with_allow_all_taking_precedence() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-egress-port-80",
        "
podSelector: {matchLabels: {}}
policyTypes: [Egress]
egress:
- ports: [{port: 80}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Any, false);
    c.check(81, Tcp, &r);
    c.apply(mk_policy(
        "x",
        "allow-egress",
        "
podSelector: {matchLabels: {}}
policyTypes: [Egress]
egress: [{}]
",
    ));
    c.check(81, Tcp, &c.reach(true));
}

#[test]
fn stop_enforcing_policies_after_they_are_deleted() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-all",
        "
podSelector: {}
policyTypes: [Ingress, Egress]
ingress: []
egress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Ns("x"), Any, false);
    r.expect_peer(Any, Ns("x"), false);
    c.check(80, Tcp, &r);
    c.index.delete_policy("x", "deny-all");
    c.check(80, Tcp, &c.reach(true));
}

#[test]
fn allow_egress_access_to_server_in_cidr_block() {
    let mut c = Cluster::new(&["x/a", "y/a", "y/b"], &[80], &[Tcp]);
    let cidr = format!("{}/32", c.ip("y/b"));
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Egress]
egress:
- to:
  - ipBlock: {{cidr: '{cidr}'}}
"
        ),
    ));
    let mut r = c.reach(true);
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "y/b", true);
    c.check(80, Tcp, &r);
}

/// The upstream `makeLargeCIDRForIP`: the /4 holding the address.
fn large_cidr(ip: std::net::IpAddr) -> String {
    let net = ipnet::IpNet::new(ip, 4).expect("prefix").trunc();
    net.to_string()
}

fn cidr_except_pod_b() -> Cluster {
    let mut c = Cluster::new(&["x/a", "x/b", "x/c"], &[80], &[Tcp]);
    let b = c.ip("x/b");
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Egress]
egress:
- to:
  - ipBlock: {{cidr: '{}', except: ['{b}/32']}}
",
            large_cidr(b)
        ),
    ));
    let mut r = c.reach(true);
    r.expect("x/a", "x/b", false);
    c.check(80, Tcp, &r);
    c
}

#[test]
fn enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    cidr_except_pod_b();
}

#[test]
fn ip_overlapping_both_cidr_and_except_is_allowed_by_another_rule() {
    let mut c = cidr_except_pod_b();
    // Upstream updates the same policy (same name) to allow only x/b.
    let b = c.ip("x/b");
    c.apply(mk_policy(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Egress]
egress:
- to:
  - ipBlock: {{cidr: '{b}/32'}}
"
        ),
    ));
    let mut r = c.reach(true);
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "x/b", true);
    c.check(80, Tcp, &r);
}

#[test]
fn ingress_and_egress_policies_controlled_independently() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-egress-for-target",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{}]
",
    ));
    c.check(80, Tcp, &c.reach(true));
    c.apply(mk_policy(
        "x",
        "deny-ingress-via-label-selector",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: []
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(80, Tcp, &r);
}

#[test]
fn sctp_is_not_mistaken_for_tcp() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "deny-ingress",
        "
podSelector: {}
policyTypes: [Ingress]
ingress: []
",
    ));
    c.apply(mk_policy(
        "x",
        "allow-only-sctp-ingress-on-port-81",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- ports: [{port: 81, protocol: SCTP}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Any, Ns("x"), false);
    c.check(81, Tcp, &r);
}

#[test]
fn sctp_policy_still_isolates_pods_for_tcp() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-only-sctp-ingress-on-port-80",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- ports: [{port: 80, protocol: SCTP}]
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(81, Tcp, &r);
}

#[test]
fn udp_only_policy_does_not_allow_tcp() {
    let mut c = Cluster::new(&["x/a", "y/a"], &[81], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-only-udp-ingress-on-port-81",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- ports: [{port: 81, protocol: UDP}]
",
    ));
    let mut r = c.reach(true);
    r.expect_all_ingress("x/a", false);
    c.check(81, Tcp, &r);
}

#[test]
fn namespace_selector_with_match_expressions_using_default_ns_label() {
    let mut c = Cluster::new(&["x/a", "x/b", "y/a", "z/a"], &[80], &[Tcp]);
    c.apply(mk_policy(
        "x",
        "allow-ns-y-match-selector-for-immutable-ns-label",
        "
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
",
    ));
    let mut r = c.reach(true);
    r.expect_peer(Pod("x/a"), Ns("y"), false);
    c.check(80, Tcp, &r);
}
