//! What `lab apply` and `lab delete` accept: multi-document Kubernetes YAML
//! of Namespaces, Pods, NetworkPolicies, Secrets and tabby's CRDs, checked
//! whole before anything changes. Every object is validated as the API
//! server validates it (`tabby_policy::validate`, `tabby_crds::validate`),
//! and refused with the API server's message:
//!
//! ```text
//! f.yaml: document 0: The NetworkPolicy "p" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive
//! ```

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use tabby_crds::password::SecretPasswords;
use tabby_crds::{BGPConfiguration, BGPFilter, BGPPeer};
use tabby_policy::validate::{self, FieldError};

/// One document of a lab manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum LabObject {
    /// `v1/Namespace`.
    Namespace(Box<Namespace>),
    /// `v1/Pod`: becomes a pod network namespace on a node.
    Pod(Box<Pod>),
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy(Box<NetworkPolicy>),
    /// `tabby.dev/v1alpha1/BGPConfiguration`.
    BgpConfiguration(Box<BGPConfiguration>),
    /// `tabby.dev/v1alpha1/BGPPeer`.
    BgpPeer(Box<BGPPeer>),
    /// `v1/Secret`: BGP passwords (the agents read those in `kube-system`).
    Secret(Box<Secret>),
    /// `tabby.dev/v1alpha1/BGPFilter`.
    BgpFilter(Box<BGPFilter>),
    /// `v1/Service`: only read by the agents' BGP (no Service proxy in the lab).
    Service(Box<Service>),
    /// `discovery.k8s.io/v1/EndpointSlice`: which nodes host a Service's endpoints.
    EndpointSlice(Box<EndpointSlice>),
    /// A CustomResourceDefinition: the lab's datastore knows tabby's kinds
    /// already, so applying the CRDs is accepted and changes nothing.
    Crd(String),
}

/// A manifest the lab cannot take.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {index}: {detail}")]
pub struct ManifestError {
    /// The file (or `-`).
    pub source_name: String,
    /// Position of the document (0-based).
    pub index: usize,
    /// What is wrong.
    pub detail: String,
}

impl LabObject {
    /// `Kind/namespace/name` for messages and file names.
    pub fn describe(&self) -> String {
        match self {
            LabObject::Namespace(o) => format!("Namespace/{}", name_of(&o.metadata)),
            LabObject::Pod(o) => format!("Pod/{}/{}", ns_of(&o.metadata), name_of(&o.metadata)),
            LabObject::NetworkPolicy(o) => format!(
                "NetworkPolicy/{}/{}",
                ns_of(&o.metadata),
                name_of(&o.metadata)
            ),
            LabObject::BgpConfiguration(o) => {
                format!("BGPConfiguration/{}", name_of(&o.metadata))
            }
            LabObject::BgpPeer(o) => format!("BGPPeer/{}", name_of(&o.metadata)),
            LabObject::Secret(o) => {
                format!("Secret/{}/{}", ns_of(&o.metadata), name_of(&o.metadata))
            }
            LabObject::BgpFilter(o) => format!("BGPFilter/{}", name_of(&o.metadata)),
            LabObject::Service(o) => {
                format!("Service/{}/{}", ns_of(&o.metadata), name_of(&o.metadata))
            }
            LabObject::EndpointSlice(o) => format!(
                "EndpointSlice/{}/{}",
                ns_of(&o.metadata),
                name_of(&o.metadata)
            ),
            LabObject::Crd(name) => format!("CustomResourceDefinition/{name}"),
        }
    }

    /// The file this object is stored in, in the lab's manifest directory
    /// (None for objects that are not stored).
    pub fn file_name(&self) -> Option<String> {
        let (kind, ns, name) = match self {
            LabObject::Namespace(o) => ("namespace", "", name_of(&o.metadata)),
            LabObject::Pod(o) => ("pod", ns_of(&o.metadata), name_of(&o.metadata)),
            LabObject::NetworkPolicy(o) => {
                ("networkpolicy", ns_of(&o.metadata), name_of(&o.metadata))
            }
            LabObject::BgpConfiguration(o) => ("bgpconfiguration", "", name_of(&o.metadata)),
            LabObject::BgpPeer(o) => ("bgppeer", "", name_of(&o.metadata)),
            LabObject::Secret(o) => ("secret", ns_of(&o.metadata), name_of(&o.metadata)),
            LabObject::BgpFilter(o) => ("bgpfilter", "", name_of(&o.metadata)),
            LabObject::Service(o) => ("service", ns_of(&o.metadata), name_of(&o.metadata)),
            LabObject::EndpointSlice(o) => {
                ("endpointslice", ns_of(&o.metadata), name_of(&o.metadata))
            }
            LabObject::Crd(_) => return None,
        };
        Some(object_file(kind, ns, name))
    }

    /// The object as JSON, as the agents' datastore reads it.
    pub fn to_json(&self) -> serde_json::Result<String> {
        match self {
            LabObject::Namespace(o) => serde_json::to_string_pretty(o),
            LabObject::Pod(o) => serde_json::to_string_pretty(o),
            LabObject::NetworkPolicy(o) => serde_json::to_string_pretty(o),
            LabObject::BgpConfiguration(o) => serde_json::to_string_pretty(o),
            LabObject::BgpPeer(o) => serde_json::to_string_pretty(o),
            LabObject::Secret(o) => {
                // k8s-openapi's Secret carries no apiVersion/kind of its own.
                let mut v = serde_json::to_value(o)?;
                v["apiVersion"] = "v1".into();
                v["kind"] = "Secret".into();
                serde_json::to_string_pretty(&v)
            }
            LabObject::BgpFilter(o) => serde_json::to_string_pretty(o),
            LabObject::Service(o) => serde_json::to_string_pretty(o),
            LabObject::EndpointSlice(o) => serde_json::to_string_pretty(o),
            LabObject::Crd(_) => Ok(String::new()),
        }
    }
}

/// The manifest file of an object: `<kind>_<namespace>_<name>.json`.
pub fn object_file(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}_{namespace}_{name}.json")
}

/// An object's name ("" when absent; parsing rejects that).
pub fn name_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or("")
}

/// An object's namespace, `default` when absent (as with kubectl).
pub fn ns_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
    serde_yaml::from_value(v).map_err(|e| e.to_string())
}

/// Parses every document of `text`; the first bad one is an error and
/// nothing is returned.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<LabObject>, ManifestError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |detail: String| ManifestError {
            source_name: source_name.to_string(),
            index,
            detail,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let field = |k: &str| {
            value
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (api, kind) = (field("apiVersion"), field("kind"));
        let obj = match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                let mut ns: Namespace = typed(value).map_err(err)?;
                // As the API server does for every namespace: policies
                // select namespaces by this label.
                let name = ns.metadata.name.clone().unwrap_or_default();
                ns.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("kubernetes.io/metadata.name".into(), name);
                LabObject::Namespace(Box::new(ns))
            }
            ("v1", "Pod") => {
                let mut pod: Pod = typed(value).map_err(err)?;
                pod.metadata.namespace = Some(ns_of(&pod.metadata).to_string());
                LabObject::Pod(Box::new(pod))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let mut np: NetworkPolicy = typed(value).map_err(err)?;
                np.metadata.namespace = Some(ns_of(&np.metadata).to_string());
                LabObject::NetworkPolicy(Box::new(np))
            }
            ("tabby.dev/v1alpha1", "BGPConfiguration") => {
                let c: BGPConfiguration = typed(value).map_err(err)?;
                c.spec.advertisements().map_err(|e| err(e.to_string()))?;
                LabObject::BgpConfiguration(Box::new(c))
            }
            ("v1", "Service") => {
                let mut s: Service = typed(value).map_err(err)?;
                s.metadata.namespace = Some(ns_of(&s.metadata).to_string());
                LabObject::Service(Box::new(s))
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let mut e: EndpointSlice = typed(value).map_err(err)?;
                e.metadata.namespace = Some(ns_of(&e.metadata).to_string());
                LabObject::EndpointSlice(Box::new(e))
            }
            ("tabby.dev/v1alpha1", "BGPFilter") => {
                let f: BGPFilter = typed(value).map_err(err)?;
                f.spec.parse().map_err(|e| err(e.to_string()))?;
                LabObject::BgpFilter(Box::new(f))
            }
            ("tabby.dev/v1alpha1", "BGPPeer") => {
                LabObject::BgpPeer(Box::new(typed(value).map_err(err)?))
            }
            ("v1", "Secret") => {
                let mut secret: Secret = typed(value).map_err(err)?;
                secret.metadata.namespace = Some(ns_of(&secret.metadata).to_string());
                LabObject::Secret(Box::new(secret))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                let name = value
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                if !name.ends_with(".tabby.dev") {
                    return Err(err(format!(
                        "the lab knows only tabby's CRDs, not {name:?}"
                    )));
                }
                LabObject::Crd(name.to_string())
            }
            ("", _) | (_, "") => return Err(err("apiVersion and kind are required".into())),
            (api, kind) => {
                return Err(err(format!(
                    "{api}/{kind} is not something the lab runs (Namespace, Pod, NetworkPolicy, Secret, Service, EndpointSlice, BGPConfiguration, BGPPeer, BGPFilter)"
                )));
            }
        };
        validate_object(&obj).map_err(|e| err(e.to_string()))?;
        out.push(obj);
    }
    Ok(out)
}

/// Validates an object as the API server would; the error reads as
/// kubectl shows the API server's refusal.
pub fn validate_object(obj: &LabObject) -> Result<(), validate::Invalid> {
    let (kind, meta, errors): (&str, _, Vec<FieldError>) = match obj {
        LabObject::Namespace(o) => ("Namespace", &o.metadata, validate::namespace(o)),
        LabObject::Pod(o) => ("Pod", &o.metadata, validate::pod(o)),
        LabObject::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata, validate::network_policy(o)),
        LabObject::BgpConfiguration(o) => (
            "BGPConfiguration",
            &o.metadata,
            tabby_crds::validate::bgp_configuration(o),
        ),
        LabObject::BgpPeer(o) => ("BGPPeer", &o.metadata, tabby_crds::validate::bgp_peer(o)),
        LabObject::Secret(o) => (
            "Secret",
            &o.metadata,
            SecretPasswords::from_secret(o).err().unwrap_or_default(),
        ),
        LabObject::BgpFilter(o) => (
            "BGPFilter",
            &o.metadata,
            tabby_crds::validate::bgp_filter(o),
        ),
        LabObject::Service(o) => (
            "Service",
            &o.metadata,
            validate::object_meta(
                &o.metadata,
                true,
                validate::NameRule::Label,
                &validate::Path::new("metadata"),
            ),
        ),
        LabObject::EndpointSlice(o) => (
            "EndpointSlice",
            &o.metadata,
            validate::object_meta(
                &o.metadata,
                true,
                validate::NameRule::Subdomain,
                &validate::Path::new("metadata"),
            ),
        ),
        LabObject::Crd(_) => return Ok(()),
    };
    validate::check(kind, name_of(meta), errors)
}

/// A port a pod serves: from its containers' `ports`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ServedPort {
    /// The port.
    pub port: u16,
    /// True for UDP, false for TCP.
    pub udp: bool,
}

/// The TCP and UDP ports a pod declares (SCTP is not served: no SCTP sockets here).
pub fn served_ports(pod: &Pod) -> Result<Vec<ServedPort>, String> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("containerPort {} is out of range", p.container_port))?;
            let udp = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => false,
                "UDP" => true,
                "SCTP" => continue,
                other => return Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
            };
            out.push(ServedPort { port, udp });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn every_supported_kind_parses_and_namespaces_default() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {pod: a}}
spec:
  containers:
  - name: c
    image: i
    ports: [{containerPort: 80}, {containerPort: 81, protocol: UDP}, {containerPort: 82, protocol: SCTP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.0.0.254, asNumber: 65000}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {}
---
apiVersion: v1
kind: Secret
metadata: {name: bgp, namespace: kube-system}
stringData: {tor: s3cret}
---
apiVersion: tabby.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor-2}
spec: {peerIP: 10.0.0.253, asNumber: 65000, password: {secretKeyRef: {name: bgp, key: tor}}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: bgppeers.tabby.dev}
spec: {}
"#;
        let objs = parse("t.yaml", text).unwrap();
        let names: Vec<String> = objs.iter().map(LabObject::describe).collect();
        assert_eq!(
            names,
            [
                "Namespace/x",
                "Pod/default/a",
                "NetworkPolicy/x/deny",
                "BGPPeer/tor",
                "BGPConfiguration/default",
                "Secret/kube-system/bgp",
                "BGPPeer/tor-2",
                "CustomResourceDefinition/bgppeers.tabby.dev"
            ]
        );
        let LabObject::Pod(pod) = &objs[1] else {
            panic!()
        };
        assert_eq!(
            served_ports(pod).unwrap(),
            [
                ServedPort {
                    port: 80,
                    udp: false
                },
                ServedPort {
                    port: 81,
                    udp: true
                }
            ]
        );
        assert_eq!(objs[1].file_name().unwrap(), "pod_default_a.json");
        let LabObject::Namespace(ns) = &objs[0] else {
            panic!()
        };
        assert_eq!(
            ns.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "x",
            "set as the API server does"
        );
        assert_eq!(objs[5].file_name().unwrap(), "secret_kube-system_bgp.json");
        assert!(objs[5].to_json().unwrap().contains("\"kind\": \"Secret\""));
        assert_eq!(objs[7].file_name(), None);
    }

    #[test]
    fn bad_documents_are_errors_with_their_position() {
        let cases = [
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
                "not something",
            ),
            ("kind: Pod\nmetadata: {name: a}\n", "required"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {}\n", "metadata.name"),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: A_b}\n",
                "The Pod \"A_b\" is invalid: metadata.name: Invalid value: \"A_b\": a lowercase RFC 1123 subdomain",
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
                "metadata.name: Invalid value: \"a.b\": must not contain dots",
            ),
            (
                "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: nope, asNumber: 1}\n",
                "spec.peerIP: Invalid value: \"nope\": must be a valid IP address",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n",
                "The NetworkPolicy \"p\" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {\"a/b\": x}\n",
                "The Secret \"s\" is invalid: stringData[a/b]",
            ),
            (
                "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 1.2.3.4}\n",
                "asNumber",
            ),
            (
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: foos.example.com}\n",
                "tabby's CRDs",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: [\n",
                "",
            ),
        ];
        for (text, want) in cases {
            let doc =
                format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ok}}\n---\n{text}");
            let e = parse("f.yaml", &doc).unwrap_err();
            assert_eq!(e.index, 1, "{text}: {e}");
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.to_string().starts_with("f.yaml: document 1"), "{e}");
        }
    }
}
