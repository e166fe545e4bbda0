//! Per-kind resets (`reset_pods`, `reset_namespaces`, `reset_policies`) and
//! their piecewise form (`retain_*`): what a list leaves out is gone, what
//! it repeats unchanged is not reported, and the outcome equals a fresh
//! index built from the same objects.

use super::{key, mk_ns, mk_pod, mk_policy};
use crate::PolicyIndex;

const INGRESS_FROM_CLIENTS: &str = "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]\n";

fn world() -> PolicyIndex {
    let mut ix = PolicyIndex::new();
    ix.reset_namespaces(vec![mk_ns("x", &[])]);
    ix.reset_pods(vec![
        mk_pod("x", "web", &[("app", "web")], &["10.0.0.1"], &[]),
        mk_pod("x", "client", &[("app", "client")], &["10.0.0.2"], &[]),
        mk_pod("x", "other", &[("app", "client")], &["10.0.0.3"], &[]),
    ]);
    ix.reset_policies(vec![mk_policy("x", "web", INGRESS_FROM_CLIENTS)]);
    ix.take_changes();
    ix
}

#[test]
fn a_pod_list_without_a_pod_deletes_it_and_reports_only_what_changed() {
    let mut ix = world();
    ix.reset_pods(vec![
        mk_pod("x", "web", &[("app", "web")], &["10.0.0.1"], &[]),
        mk_pod("x", "client", &[("app", "client")], &["10.0.0.2"], &[]),
    ]);
    let changes = ix.take_changes();
    assert_eq!(
        changes.endpoints.into_iter().collect::<Vec<_>>(),
        vec![key("x/other")]
    );
    assert_eq!(changes.ip_sets.len(), 1, "the client set lost 10.0.0.3");
    assert!(ix.endpoint_policy(&key("x/other")).is_none());
    assert_eq!(ix.stats().pods, 2);
}

#[test]
fn repeating_the_same_lists_changes_nothing() {
    let mut ix = world();
    ix.reset_namespaces(vec![mk_ns("x", &[])]);
    ix.reset_pods(vec![
        mk_pod("x", "web", &[("app", "web")], &["10.0.0.1"], &[]),
        mk_pod("x", "client", &[("app", "client")], &["10.0.0.2"], &[]),
        mk_pod("x", "other", &[("app", "client")], &["10.0.0.3"], &[]),
    ]);
    ix.reset_policies(vec![mk_policy("x", "web", INGRESS_FROM_CLIENTS)]);
    let changes = ix.take_changes();
    assert!(changes.endpoints.is_empty(), "{changes:?}");
    assert!(changes.ip_sets.is_empty(), "{changes:?}");
}

#[test]
fn an_empty_policy_list_unisolates_the_pods_it_selected() {
    let mut ix = world();
    assert!(ix.endpoint_policy(&key("x/web")).unwrap().ingress.is_some());
    ix.reset_policies(Vec::new());
    let changes = ix.take_changes();
    assert!(changes.endpoints.contains(&key("x/web")));
    assert!(ix.endpoint_policy(&key("x/web")).unwrap().ingress.is_none());
    assert_eq!(ix.stats().ip_sets, 0, "the set nobody names is released");
}

#[test]
fn retain_is_the_end_of_a_piecewise_list() {
    let mut ix = world();
    ix.retain_pods(|k| k.name != "client");
    ix.retain_policies(|_, _| true);
    ix.retain_namespaces(|n| n == "x");
    let mut fresh = PolicyIndex::new();
    fresh.reset_namespaces(vec![mk_ns("x", &[])]);
    fresh.reset_pods(vec![
        mk_pod("x", "web", &[("app", "web")], &["10.0.0.1"], &[]),
        mk_pod("x", "other", &[("app", "client")], &["10.0.0.3"], &[]),
    ]);
    fresh.reset_policies(vec![mk_policy("x", "web", INGRESS_FROM_CLIENTS)]);
    for pod in ["x/web", "x/client", "x/other"] {
        assert_eq!(
            ix.endpoint_policy(&key(pod)),
            fresh.endpoint_policy(&key(pod)),
            "{pod}"
        );
    }
    let names: Vec<_> = ix.ip_set_names().cloned().collect();
    for n in &names {
        assert_eq!(ix.ip_set(n), fresh.ip_set(n));
    }
}
