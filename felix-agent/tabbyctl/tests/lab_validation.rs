//! Invalid objects on 2-node labs: `lab apply` refuses them with the API
//! server's field path and changes nothing; written straight into the
//! agents' `dir:` datastore they are skipped, logged, counted, and the last
//! valid version stays enforced. And `hostNetwork` pods, which run in their
//! node's namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::process::Command;

use lab::*;

const PODS_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}]}]}
"#;

const LAB_PODS: [&str; 3] = ["x/a", "x/b", "y/a"];

/// The valid policy: x/a takes TCP 80 from pods of its own namespace only.
const GUARD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guard, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 80}]\n";

/// What GUARD enforces on TCP 80.
fn guarded(from: &str, to: &str) -> bool {
    to != "x/a" || from == to || from == "x/b"
}

/// The seven invalid versions of GUARD from issue 10, with the field path
/// the API server names.
fn bad_guards() -> Vec<(&'static str, String, &'static str)> {
    let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guard, namespace: x}\nspec:\n";
    let with = |spec: &str| format!("{head}{spec}");
    vec![
        (
            "a CIDR with an octet above 255",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.300/8}}]\n",
            ),
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.300/8\"",
        ),
        (
            "port 70000",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 70000}]\n",
            ),
            "spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "protocol ICMP",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: ICMP, port: 80}]\n",
            ),
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\"",
        ),
        (
            "endPort below port",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, endPort: 79}]\n",
            ),
            "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`",
        ),
        (
            "a label value with a space",
            with(
                "  podSelector: {matchLabels: {pod: \"we b!\"}}\n  ingress:\n  - ports: [{port: 80}]\n",
            ),
            "spec.podSelector.matchLabels: Invalid value: \"we b!\"",
        ),
        (
            "a named port of 16 characters",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: sixteen-chars-xx}]\n",
            ),
            "spec.ingress[0].ports[0].port: Invalid value: \"sixteen-chars-xx\": must be no more than 15 characters",
        ),
        (
            "an except outside its cidr",
            with(
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.0.0.0/24]}}]\n",
            ),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/24\": must be a strict subset of `cidr`",
        ),
    ]
}

fn probe_pods(lab: &Lab) -> serde_json::Value {
    let mut args = vec!["probe", "--port", "80", "--protocol", "TCP", "-o", "json"];
    for p in LAB_PODS {
        args.extend(["--from", p, "--to", p]);
    }
    serde_json::from_str(&lab.ok(&args)).unwrap()
}

/// `tabby_invalid_objects_total{kind="NetworkPolicy"}` of a node's agent.
fn invalid_policies(lab: &Lab, node: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node_netns(node)])
        .args([
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9099 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tabby_invalid_objects_total{kind=\"NetworkPolicy\"} "))
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn invalid_policies_are_refused_by_apply_and_skipped_by_the_datastore_keeping_the_valid_one() {
    let lab = Lab::up(2);
    lab.apply(PODS_YAML);
    lab.apply(GUARD);
    let bad = mismatches_of(&probe_pods(&lab), &LAB_PODS, guarded);
    assert!(bad.is_empty(), "the valid policy: {bad:#?}");

    let stored = lab
        .dir()
        .join("manifests")
        .join("networkpolicy_x_guard.json");
    let before = std::fs::read(&stored).unwrap();
    // `lab apply`: refused with the field path, nothing of the file applied
    // (not even the Namespace before the policy).
    for (what, yaml, want) in bad_guards() {
        let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(
            f.path(),
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: w}}\n---\n{yaml}"),
        )
        .unwrap();
        let out = lab.run(&["apply", "-f", f.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains("The NetworkPolicy \"guard\" is invalid: "),
            "{what}: {err}"
        );
        assert!(err.contains(want), "{what}: {err}");
        assert!(
            !lab.dir()
                .join("manifests")
                .join("namespace__w.json")
                .exists(),
            "{what}: the namespace before it was applied"
        );
        assert_eq!(
            std::fs::read(&stored).unwrap(),
            before,
            "{what}: the policy changed"
        );
    }
    let bad = mismatches_of(&probe_pods(&lab), &LAB_PODS, guarded);
    assert!(bad.is_empty(), "after the refusals: {bad:#?}");

    // Straight into the datastore: each version is skipped (a log line
    // naming the file and the field, a count), and the valid one stays.
    for (i, (what, yaml, want)) in bad_guards().into_iter().enumerate() {
        let tmp = lab.dir().join("manifests").join(".guard.tmp");
        std::fs::write(&tmp, &yaml).unwrap();
        std::fs::rename(&tmp, &stored).unwrap();
        let n = i as u64 + 1;
        for node in ["node-1", "node-2"] {
            eventually(&format!("{node} counts {what}"), 60, || {
                invalid_policies(&lab, node).is_some_and(|c| c >= n)
            });
            let log = std::fs::read_to_string(lab.dir().join("nodes").join(node).join("agent.log"))
                .unwrap();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("refusing an invalid object") && l.contains(want))
                .unwrap_or_else(|| panic!("{node}: no log line for {what}:\n{log}"));
            assert!(line.contains("networkpolicy_x_guard.json"), "{line}");
            assert!(line.contains("guard"), "{line}");
        }
        assert_eq!(
            invalid_policies(&lab, "node-1"),
            Some(n),
            "{what}: counted once"
        );
    }
    let bad = mismatches_of(&probe_pods(&lab), &LAB_PODS, guarded);
    assert!(
        bad.is_empty(),
        "the last valid version is still enforced: {bad:#?}"
    );
}

#[test]
fn host_network_pods_run_in_their_nodes_namespace_with_its_address() {
    let lab = Lab::up(2);
    lab.apply(PODS_YAML);
    lab.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: h}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: hn, namespace: h, labels: {pod: hn}}\nspec: {hostNetwork: true, nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 8080}]}]}\n",
    );
    let st = lab.status();
    let node2 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-2")
        .unwrap()
        .clone();
    let hn = lab.pod("h/hn");
    assert_eq!(hn["node"], "node-2");
    assert_eq!(hn["netns"], node2["netns"], "{hn}");
    assert_eq!(hn["ips"][0], node2["ip"], "{hn}");
    assert!(
        netns_with_prefix(&format!("tl.{}.pod.h.", lab.name)).is_empty(),
        "no namespace of its own"
    );
    // No CNI ADD: node-2 has endpoint records of x/b and y/a only.
    let records = std::fs::read_dir(lab.dir().join("nodes/node-2/run/endpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(records, 2, "x/b and y/a only");
    // Its port is served on the node's address.
    let m: serde_json::Value = serde_json::from_str(&lab.ok(&[
        "probe", "--port", "8080", "--from", "x/a", "--to", "h/hn", "-o", "json",
    ]))
    .unwrap();
    assert_eq!(m["matrix"]["x/a"]["h/hn"], true, "{m}");
    // It reaches pods like the node does.
    let m: serde_json::Value = serde_json::from_str(&lab.ok(&[
        "probe", "--port", "80", "--from", "h/hn", "--to", "x/a", "--to", "y/a", "-o", "json",
    ]))
    .unwrap();
    assert_eq!(m["matrix"]["h/hn"]["x/a"], true, "{m}");
    assert_eq!(m["matrix"]["h/hn"]["y/a"], true, "{m}");
    // Deleting it leaves the node as it was.
    lab.delete("apiVersion: v1\nkind: Pod\nmetadata: {name: hn, namespace: h}\n");
    assert!(netns_with_prefix(&lab.node_netns("node-2")).contains(&lab.node_netns("node-2")));
    let nodes = lab.status()["nodes"].as_array().unwrap().clone();
    assert!(nodes.iter().all(|n| n["ready"] == true), "{nodes:?}");
    assert_eq!(lab.probe(80, "TCP")["matrix"]["x/a"]["y/a"], true);
}

#[test]
fn a_bgppeer_password_from_a_secret_keys_the_session_and_never_shows() {
    let lab = Lab::up(1);
    let password = "md5-from-a-secret";
    let router = Router::attach(
        &lab,
        &format!(
            "router id 10.99.0.250;\nprotocol device {{ scan time 1; }}\n\
             protocol bgp n1 {{ local 10.99.0.250 as 65000; neighbor 10.99.0.11 as 64512; password \"{password}\"; ipv4 {{ import all; export none; }}; }}\n"
        ),
    );
    // The peer names the Secret; the Secret comes later: no session
    // without the key.
    let peer = "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.99.0.250, asNumber: 65000, password: {secretKeyRef: {name: tabby-bgp-passwords, key: tor}}}\n";
    lab.apply(peer);
    let log_path = lab.dir().join("nodes/node-1/agent.log");
    eventually("the agent says the password is missing", 60, || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("not peering until the BGPPeer's password can be read")
    });
    assert!(!router.cmd("show protocols n1").contains("Established"));
    lab.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tabby-bgp-passwords, namespace: kube-system}}\nstringData: {{tor: {password}}}\n"
    ));
    eventually("BIRD established with the key from the Secret", 120, || {
        router.cmd("show protocols n1").contains("Established")
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains(password),
        "the password is in the agent's log"
    );
    let status = lab.ok(&["status", "-o", "json"]);
    assert!(!status.contains(password));
    let agent_status =
        std::fs::read_to_string(lab.dir().join("nodes/node-1/run/status.json")).unwrap();
    assert!(!agent_status.contains(password), "{agent_status}");
}
