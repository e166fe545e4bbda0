//! The datastore's boundary: every object is validated as the API server
//! validates it before the agent sees it. A refused object is logged with
//! its field errors, counted in `tabby_invalid_objects_total{kind}`, and
//! dropped, so whatever version of it the agent had stays in force.
//!
//! The API server already validates NetworkPolicies, Pods, Namespaces and
//! Nodes; the Kubernetes backend checks them again (defence in depth: an
//! older or patched server, a CRD the schema cannot fully check), and the
//! directory backend has no API server in front of it at all.

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Secret;
use tabby_crds::password::{BgpPassword, SecretPasswords};
use tabby_policy::validate::{self, Invalid};
use tracing::warn;

use super::{Kind, Object, ObjectRef};
use crate::metrics::Metrics;

/// The API server's field errors of `o`, as one refusal (`Ok` when valid).
pub fn check(o: &Object) -> Result<(), Invalid> {
    let errors = match o {
        Object::Pod(p) => validate::pod(p),
        Object::Namespace(n) => validate::namespace(n),
        Object::NetworkPolicy(np) => validate::network_policy(np),
        Object::Node(n) => validate::node(n),
        Object::BgpConfiguration(c) => tabby_crds::validate::bgp_configuration(c),
        Object::BgpPeer(p) => {
            let errors = tabby_crds::validate::bgp_peer(p);
            if errors.is_empty() && matches!(p.spec.password, Some(BgpPassword::Inline(_))) {
                warn_inline_password(&o.reference().name);
            }
            errors
        }
        Object::BgpFilter(f) => tabby_crds::validate::bgp_filter(f),
        Object::Service(svc) => validate::object_meta(
            &svc.metadata,
            true,
            validate::NameRule::Label,
            &validate::Path::new("metadata"),
        ),
        Object::EndpointSlice(es) => validate::object_meta(
            &es.metadata,
            true,
            validate::NameRule::Subdomain,
            &validate::Path::new("metadata"),
        ),
        // Checked when it was parsed (`secret`).
        Object::Secret(_) => Vec::new(),
    };
    validate::check(o.kind().name(), &o.reference().name, errors)
}

/// A Secret, checked and reduced to its passwords.
pub fn secret(s: &Secret) -> Result<Object, Invalid> {
    SecretPasswords::from_secret(s)
        .map(|p| Object::Secret(Box::new(p)))
        .map_err(|errors| Invalid {
            kind: Kind::Secret.name().to_string(),
            name: s.metadata.name.clone().unwrap_or_default(),
            errors,
        })
}

static WARNED_INLINE: AtomicBool = AtomicBool::new(false);

/// The inline form of `spec.password` is deprecated: said once per agent.
fn warn_inline_password(peer: &str) {
    if !WARNED_INLINE.swap(true, Ordering::Relaxed) {
        warn!(
            peer,
            "BGPPeer spec.password as an inline string is deprecated: anyone who can read BGPPeers can read it; use spec.password.secretKeyRef naming a Secret in the agent's namespace"
        );
    }
}

/// Logs and counts a refused object. `source` says where it came from (a
/// file, or the API server).
pub fn refused(metrics: &Metrics, source: &str, r: &ObjectRef, err: &Invalid) {
    metrics.invalid_objects.inc(r.kind.name());
    let errors: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
    warn!(
        source,
        kind = r.kind.name(),
        namespace = r.namespace.as_deref().unwrap_or(""),
        name = %r.name,
        errors = %errors.join("; "),
        "refusing an invalid object; its last valid version stays in force"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::datastore::dir::parse_documents;

    #[test]
    fn every_kind_is_checked_and_refusals_name_the_field() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: "we b!"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: Upper}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/33]}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.0.0.300, asNumber: 65000}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 0}
---
apiVersion: v1
kind: Secret
metadata: {name: bgp, namespace: kube-system}
data: {"a/b": eA==}
"#;
        let docs = parse_documents(std::path::Path::new("t.yaml"), text).unwrap();
        assert_eq!(docs.len(), 7);
        let refused: Vec<String> = docs
            .iter()
            .map(|d| match d {
                Err((_, e)) => e.to_string(),
                Ok(o) => panic!("accepted {o:?}"),
            })
            .collect();
        assert_eq!(
            refused[0],
            "The NetworkPolicy \"p\" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert!(refused[1].contains("metadata.labels: Invalid value: \"we b!\""));
        assert!(refused[2].contains("metadata.name: Invalid value: \"Upper\""));
        assert!(refused[3].contains("spec.podCIDRs[0]"));
        assert!(refused[4].contains("spec.peerIP: Invalid value: \"10.0.0.300\""));
        assert!(refused[5].contains("spec.asNumber: Invalid value: 0"));
        assert!(
            refused[6].starts_with("The Secret \"bgp\" is invalid: data[a/b]"),
            "{}",
            refused[6]
        );
    }

    #[test]
    fn a_refusal_is_counted_per_kind() {
        let m = Metrics::default();
        let r = ObjectRef {
            kind: Kind::NetworkPolicy,
            namespace: Some("x".into()),
            name: "p".into(),
        };
        let err = Invalid {
            kind: "NetworkPolicy".into(),
            name: "p".into(),
            errors: vec![],
        };
        refused(&m, "t.yaml", &r, &err);
        refused(&m, "t.yaml", &r, &err);
        assert!(
            m.render(&[])
                .contains("tabby_invalid_objects_total{kind=\"NetworkPolicy\"} 2\n")
        );
    }
}
