//! What only a real API server shows: `tabbyctl lab up --kubernetes` with
//! the upstream kube-apiserver, etcd, kube-controller-manager and
//! kube-scheduler, and the agents holding nothing but the manifests' RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lab::*;
use serde_json::Value;

fn nodes(lab: &Lab) -> Vec<Value> {
    let list: Value = serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().clone()
}

#[test]
fn every_node_gets_network_unavailable_false_from_its_agent_and_its_cidrs_from_the_controller() {
    let lab = Lab::up_in(Mode::Kubernetes, 2);
    let st = lab.status();
    assert_eq!(st["controlPlane"]["kind"], "kubernetes", "{st}");
    assert_eq!(st["controlPlane"]["apiserver"], "https://10.99.0.2:6443");
    let kubeconfig = st["controlPlane"]["kubeconfig"].as_str().unwrap();
    assert!(std::path::Path::new(kubeconfig).is_file(), "{kubeconfig}");
    eventually("NetworkUnavailable=False on every node", 60, || {
        nodes(&lab).iter().all(|n| {
            n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| {
                    c["type"] == "NetworkUnavailable"
                        && c["status"] == "False"
                        && c["reason"] == "TabbyIsUp"
                })
        })
    });
    // The lab's blocks are what kube-controller-manager allocated, dual stack.
    for n in nodes(&lab) {
        let name = n["metadata"]["name"].as_str().unwrap();
        let cidrs: Vec<String> = n["spec"]["podCIDRs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cidrs, lab.pod_cidrs(name));
        assert!(
            cidrs[0].starts_with("10.244.") && cidrs[0].ends_with("/24"),
            "{cidrs:?}"
        );
        assert!(
            cidrs[1].starts_with("fd00:244:") && cidrs[1].ends_with("/64"),
            "{cidrs:?}"
        );
    }
}

#[test]
fn the_agents_token_has_exactly_the_manifests_permissions() {
    let lab = Lab::up_in(Mode::Kubernetes, 1);
    let sa = "system:serviceaccount:kube-system:tabby-agent";
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", sa];
        all.extend_from_slice(args);
        let out = std::process::Command::new(workspace_tabbyctl())
            .args(["lab", "kubectl", "--name", &lab.name, "--"])
            .args(&all)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can(&["watch", "pods", "-A"]));
    assert!(can(&["list", "networkpolicies.networking.k8s.io", "-A"]));
    assert!(can(&["patch", "nodes", "--subresource=status"]));
    assert!(can(&["watch", "bgppeers.tabby.dev"]));
    assert!(!can(&["get", "pods", "-A"]), "the agent never GETs");
    assert!(!can(&["patch", "nodes"]));
    assert!(!can(&["list", "secrets", "-A"]));
    assert!(!can(&["create", "pods", "-n", "default"]));
}

fn workspace_tabbyctl() -> std::path::PathBuf {
    tabby_tests::workspace_bin("tabbyctl")
}

/// Everything an agent programmed into a node: its nftables ruleset and routes.
fn dataplane(lab: &Lab, node: &str) -> String {
    let ns = lab.node_netns(node);
    let nft = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(nft.status.success());
    format!(
        "{}\n{}\n{}",
        String::from_utf8_lossy(&nft.stdout),
        ip_in(&ns, "route show"),
        ip_in(&ns, "-6 route show")
    )
}

/// LISTs the agents made, from the API server's audit log.
fn agent_lists(lab: &Lab) -> usize {
    let log = std::fs::read_to_string(lab.dir().join("cp/audit.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["verb"] == "list"
                && e["user"]["username"] == "system:serviceaccount:kube-system:tabby-agent"
        })
        .count()
}

#[test]
fn restarting_the_apiserver_then_etcd_leaves_the_dataplane_untouched_and_the_watches_resume() {
    let lab = Lab::up_in(Mode::Kubernetes, 2);
    lab.apply(&xyz());
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    let node_names = ["node-1", "node-2"];
    let before: Vec<String> = node_names.iter().map(|n| dataplane(&lab, n)).collect();
    let lists_before = agent_lists(&lab);

    // Sample the dataplane all through both outages.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let lab_name = lab.name.clone();
        let before = before.clone();
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                for (i, n) in node_names.iter().enumerate() {
                    let ns = format!("tl.{lab_name}.{n}");
                    let nft = std::process::Command::new("ip")
                        .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
                        .output()
                        .unwrap();
                    let now = format!(
                        "{}\n{}\n{}",
                        String::from_utf8_lossy(&nft.stdout),
                        ip_in(&ns, "route show"),
                        ip_in(&ns, "-6 route show")
                    );
                    assert_eq!(now, before[i], "{n}'s dataplane changed during the outage");
                }
                samples += 1;
            }
            samples
        })
    };
    for component in ["kube-apiserver", "etcd"] {
        lab.ok(&["restart-control-plane", "--component", component]);
    }
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("the dataplane stayed the same");
    assert!(samples > 0);

    // The watches resumed: a change made now is programmed (apply waits
    // for every agent to report it).
    lab.delete(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n",
    );
    let m = lab.probe(80, "TCP");
    assert!(mismatches(&m, |_, _| true).is_empty(), "{m}");
    // No relist storm: at most one LIST per kind per agent per restart
    // (a watch older than the new API server's cache is answered 410).
    let lists = agent_lists(&lab) - lists_before;
    let bound = 6 * node_names.len() * 2;
    eprintln!("agent LISTs across both restarts: {lists} (bound {bound})");
    assert!(lists <= bound, "{lists} LISTs across two restarts");
}

#[test]
fn an_object_with_a_field_from_a_newer_tabby_is_read_for_what_this_agent_knows() {
    let lab = Lab::up_in(Mode::Kubernetes, 1);
    // A newer tabby's CRD: BGPPeer's spec has a field this agent lacks.
    lab.kubectl(&[
        "patch",
        "crd",
        "bgppeers.tabby.dev",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/futureKnob","value":{"type":"string"}}]"#,
    ]);
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(
        f.path(),
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {peerIP: 10.99.0.250, asNumber: 65000, futureKnob: turbo}\n",
    )
    .unwrap();
    // The API server keeps the field (its CRD declares it).
    eventually("the API server accepts the newer field", 30, || {
        std::process::Command::new(workspace_tabbyctl())
            .args(["lab", "kubectl", "--name", &lab.name, "--", "apply", "-f"])
            .arg(f.path())
            .status()
            .unwrap()
            .success()
    });
    let stored = lab.kubectl(&["get", "bgppeer", "tor", "-o", "jsonpath={.spec.futureKnob}"]);
    assert_eq!(stored, "turbo");
    let has_peer = |lab: &Lab| {
        lab.status()["nodes"][0]["bgpSessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["peer"] == "10.99.0.250" && s["asn"] == 65000)
    };
    // Through the watch, and through a fresh LIST after a restart.
    eventually("the agent peers with the newer BGPPeer", 60, || {
        has_peer(&lab)
    });
    lab.ok(&["restart", "--node", "node-1"]);
    eventually("the restarted agent lists it too", 60, || has_peer(&lab));
    assert_eq!(lab.status()["nodes"][0]["ready"], true);
}
