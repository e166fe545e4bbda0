//! The nftables dataplane against the real kernel: a table built by the
//! core's incremental changes is the table a full replace of the final
//! state builds. Needs root and nft.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod corekit;

use std::collections::BTreeMap;
use std::process::Command;

use corekit::*;
use tabby_agent::agent::CniRequest;
use tabby_agent::datastore::{Event, Kind, ObjectRef};
use tabby_agent::nft::NftDataplane;
use tabby_tests::{Netns, require_root, require_tool};

/// The table as values: sets and maps with sorted elements, chains with
/// their rules in order (handles dropped).
fn table() -> BTreeMap<String, String> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", "tabby"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut t: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("handle");
        }
        match kind.as_str() {
            "set" | "map" => {
                let mut elems: Vec<String> = body["elem"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect();
                elems.sort();
                let name = body["name"].as_str().unwrap().to_string();
                t.insert(format!("{kind} {name}"), elems);
            }
            "chain" => {
                let name = body["name"].as_str().unwrap().to_string();
                t.entry(format!("chain {name}")).or_default();
            }
            "rule" => {
                let chain = body["chain"].as_str().unwrap().to_string();
                t.entry(format!("chain {chain}"))
                    .or_default()
                    .push(body["expr"].to_string());
            }
            _ => {}
        }
    }
    t.into_iter().map(|(k, v)| (k, v.join("\n"))).collect()
}

#[test]
fn incremental_nft_transactions_build_the_table_a_full_replace_builds() {
    require_root();
    require_tool("nft");
    let incremental = Netns::new("nftinc");
    let full = Netns::new("nftfull");
    let web = record("x", "web", "c-web", "10.0.0.1", 11);
    let client = record("x", "client", "c-client", "10.0.0.2", 12);
    let third = record("x", "client2", "c-client2", "10.0.0.3", 13);
    let egress = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: egress, namespace: x}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {team: a}}}]\n    ports: [{port: 53, protocol: UDP}, {port: 8000, endPort: 8080}]\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n";

    let got = incremental.run(|| {
        let mut n = node_with(NftDataplane);
        n.put(
            vec![file(&web, 1), file(&client, 2)],
            &[(&web.host_iface, 11), (&client.host_iface, 12)],
        );
        n.scan();
        n.sync(&format!(
            "{NS}{}{}{WEB_POLICY}",
            pod_yaml("x", "web", "app: web", "10.0.0.1", NODE),
            pod_yaml("x", "client", "app: client", "10.0.0.2", NODE),
        ));
        assert!(n.agent.ready());
        n.apply(&pod_yaml("x", "client2", "app: client", "10.0.0.3", NODE));
        assert!(n.cni_add(&third).ok);
        n.apply(egress);
        n.apply(&pod_yaml("x", "far", "app: client", "10.9.0.1", "n2"));
        n.apply(&pod_yaml("x", "client", "app: web", "10.0.0.2", NODE));
        n.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: b}}\n");
        n.settle(tabby_agent::agent::Input::Datastore(vec![Event::Delete(
            ObjectRef {
                kind: Kind::NetworkPolicy,
                namespace: Some("x".into()),
                name: "web".into(),
            },
        )]));
        assert!(
            n.request(CniRequest::Del {
                container_id: "c-client2".into(),
                ifname: "eth0".into(),
            })
            .ok
        );
        assert!(
            n.agent.ready(),
            "every incremental transaction was accepted"
        );
        assert_eq!(n.fx.metrics.dataplane_errors.get(), 0);
        table()
    });
    let want = full.run(|| {
        let mut n = node_with(NftDataplane);
        n.put(
            vec![file(&web, 1), file(&client, 2)],
            &[(&web.host_iface, 11), (&client.host_iface, 12)],
        );
        n.scan();
        n.sync(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{team: b}}}}\n---\n{}{}{}{}{egress}",
            pod_yaml("x", "web", "app: web", "10.0.0.1", NODE),
            pod_yaml("x", "client", "app: web", "10.0.0.2", NODE),
            pod_yaml("x", "client2", "app: client", "10.0.0.3", NODE),
            pod_yaml("x", "far", "app: client", "10.9.0.1", "n2"),
        ));
        assert!(n.agent.ready());
        table()
    });
    assert_eq!(got, want);
}
