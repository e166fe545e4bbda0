//! The CRD manifests in the repository are exactly what the types generate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds.yaml")
}

#[test]
fn crds_yaml_matches_the_types() {
    let want = tabby_crds::render().unwrap();
    if std::env::var_os("TABBY_UPDATE_CRDS").is_some() {
        std::fs::write(manifest(), &want).unwrap();
    }
    let have = std::fs::read_to_string(manifest()).unwrap_or_default();
    assert!(
        have == want,
        "manifests/crds.yaml differs from the Rust types: run `TABBY_UPDATE_CRDS=1 cargo test -p tabby-crds`"
    );
}

#[test]
fn examples_parse_with_defaults() {
    let c: tabby_crds::BGPConfiguration =
        serde_yaml::from_str("apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {}\n").unwrap();
    assert_eq!(c.spec.as_number, 64512);
    assert!(c.spec.node_to_node_mesh);
    let p: tabby_crds::BGPPeer = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 192.168.0.254, asNumber: 65000, routeReflectorClient: true}\n",
    )
    .unwrap();
    assert_eq!(p.spec.peer_ip, "192.168.0.254");
    assert!(p.spec.route_reflector_client);
    assert!(p.spec.node.is_none());
}

/// In an upgrade the CRDs change before the agents: an agent must read an
/// object written for a newer tabby, ignoring what it does not know.
#[test]
fn objects_of_a_newer_tabby_version_parse_and_their_new_fields_are_ignored() {
    let p: tabby_crds::BGPPeer = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 1.2.3.4, asNumber: 1, keepaliveTime: 10s, bfd: {enabled: true}}\n",
    )
    .unwrap();
    assert_eq!(p.spec.peer_ip, "1.2.3.4");
    assert!(tabby_crds::validate::bgp_peer(&p).is_empty());
    let c: tabby_crds::BGPConfiguration = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 65001, serviceClusterIPs: [{cidr: 10.96.0.0/12}]}\n",
    )
    .unwrap();
    assert_eq!(c.spec.as_number, 65001);
    let pool: tabby_crds::IPPool = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, nodeSelector: all()}\n",
    )
    .unwrap();
    assert_eq!(pool.spec.cidr, "10.244.0.0/16");
    // Nothing in the generated schemas forbids them either.
    let yaml = tabby_crds::render().unwrap();
    assert!(!yaml.contains("additionalProperties: false"), "{yaml}");
}

#[test]
fn schemas_carry_validation() {
    let yaml = tabby_crds::render().unwrap();
    assert!(yaml.contains("pattern:"), "IP/CIDR patterns");
    assert!(yaml.contains("maximum: 4294967295"), "AS number range");
    assert!(yaml.contains("scope: Cluster"));
    assert!(
        yaml.contains("x-kubernetes-preserve-unknown-fields: true"),
        "spec.password is a string or a secretKeyRef"
    );
    // Every document is a valid CustomResourceDefinition.
    for doc in yaml.split("\n---\n").skip(1) {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(doc).unwrap();
        assert_eq!(crd.spec.group, "tabby.dev");
    }
}

#[test]
fn bfd_is_an_object_on_bgp_peers_and_on_the_mesh() {
    let c: tabby_crds::BGPConfiguration = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshBFD: {}}\n",
    )
    .unwrap();
    assert_eq!(
        c.spec.node_to_node_mesh_bfd,
        Some(tabby_crds::BFDSpec::default())
    );
    let p: tabby_crds::BGPPeer = serde_yaml::from_str(
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 192.168.0.254, asNumber: 65000, bfd: {minTxMs: 100, minRxMs: 200, multiplier: 4}}\n",
    )
    .unwrap();
    let b = p.spec.bfd.unwrap();
    assert_eq!(
        (b.min_tx_ms, b.min_rx_ms, b.multiplier),
        (Some(100), Some(200), Some(4))
    );
    // A misspelt key (`minTx`) is ignored like any unknown field of an API
    // object (see above); a value of the wrong type is still refused.
    for bad in ["bfd: true", "bfd: {minTxMs: fast}"] {
        let y = format!(
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{peerIP: 192.168.0.254, asNumber: 65000, {bad}}}\n"
        );
        assert!(
            serde_yaml::from_str::<tabby_crds::BGPPeer>(&y).is_err(),
            "{bad}"
        );
    }
}
