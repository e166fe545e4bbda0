//! A BGPPeer's password comes from the Secret it names, follows that Secret,
//! and never shows: not in the agent's logs, not in its status, not in the
//! `Debug` of the BGP intent. No root needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tabby_agent::agent::{Agent, AgentConfig, Input};
use tabby_agent::datastore::dir::parse_manifests;
use tabby_agent::datastore::{Event, Kind, ObjectRef};

const SECRET_TEXT: &str = "s3cret-of-the-tor";

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
"#;

fn agent(dir: &tempfile::TempDir) -> Agent {
    let dir = dir.path();
    Agent::new(
        AgentConfig {
            node_name: "n1".into(),
            run_dir: dir.join("run"),
            data_dir: dir.join("data"),
            bgp_port: Some(1179),
            asn: 64512,
        },
        Vec::new(),
    )
}

fn feed(a: &mut Agent, yaml: &str) {
    for o in parse_manifests(std::path::Path::new("t.yaml"), yaml).unwrap() {
        a.step(Input::Datastore(vec![Event::Apply(o)]));
    }
}

/// The external peer's password, as the speaker will get it.
fn tor_password(a: &Agent) -> Option<Option<String>> {
    let (_, intent) = a.bgp_intent(1179).unwrap();
    intent
        .peers
        .iter()
        .find(|p| p.address.to_string() == "10.0.0.254")
        .map(|p| p.password.as_ref().map(|p| p.expose().to_string()))
}

fn secret(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tabby-bgp-passwords, namespace: kube-system}}\nstringData: {{tor: {value}}}\n"
    )
}

/// Everything logged while `f` runs.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_peer_password_comes_from_the_secret_it_names_and_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = agent(&dir);
    feed(&mut a, NODES);
    feed(
        &mut a,
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: tabby-bgp-passwords, key: tor}}}\n",
    );
    assert_eq!(
        tor_password(&a),
        None,
        "no Secret yet: not peering without the key"
    );
    feed(&mut a, &secret(SECRET_TEXT));
    assert_eq!(tor_password(&a), Some(Some(SECRET_TEXT.into())));
    feed(&mut a, &secret("rotated"));
    assert_eq!(tor_password(&a), Some(Some("rotated".into())));
    a.step(Input::Datastore(vec![Event::Delete(ObjectRef {
        kind: Kind::Secret,
        namespace: Some("kube-system".into()),
        name: "tabby-bgp-passwords".into(),
    })]));
    assert_eq!(tor_password(&a), None);
    // The deprecated inline form still works.
    feed(
        &mut a,
        "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65000, password: inline-key}\n",
    );
    assert_eq!(tor_password(&a), Some(Some("inline-key".into())));
}

#[test]
fn a_password_never_appears_in_logs_status_or_the_debug_of_the_bgp_intent() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = agent(&dir);
    let logs = logs_of(|| {
        feed(&mut a, NODES);
        feed(&mut a, &secret(SECRET_TEXT));
        feed(
            &mut a,
            &format!(
                "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{peerIP: 10.0.0.254, asNumber: 65000, password: {{secretKeyRef: {{name: tabby-bgp-passwords, key: tor}}}}}}\n---\napiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: old}}\nspec: {{peerIP: 10.0.0.253, asNumber: 65000, password: {SECRET_TEXT}}}\n"
            ),
        );
        a.step(Input::Datastore(vec![Event::Prune(Kind::Secret, vec![])]));
        let _ = a.bgp_intent(1179);
    });
    // The inline form's deprecation warning is said once per process, so
    // whether it lands in these logs depends on which test fed an inline
    // password first; what matters here is that the key never shows.
    assert!(!logs.contains(SECRET_TEXT), "{logs}");
    feed(&mut a, &secret(SECRET_TEXT));
    let (_, intent) = a.bgp_intent(1179).unwrap();
    assert!(intent.peers.iter().filter(|p| p.password.is_some()).count() == 2);
    let debug = format!("{intent:?} {intent:#?}");
    assert!(!debug.contains(SECRET_TEXT), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let status = a.status().to_json(None).to_string();
    assert!(!status.contains(SECRET_TEXT), "{status}");
}
