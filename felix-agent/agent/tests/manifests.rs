//! Every manifest under `manifests/` against the Kubernetes API types
//! (k8s-openapi, v1.34) with unknown fields refused, and the invariants the
//! deployment depends on: what the DaemonSet runs and mounts, what RBAC
//! grants, and that the settings and flags are ones the real `tabby-agent`
//! binary has. The examples are also applied to a one-node lab (the agent's
//! manifest-directory datastore, real nftables, real pods) and must isolate
//! tenants as they say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Capabilities, ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

/// Every `.yaml` file under `manifests/`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// One parsed document.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn api_kind(&self) -> (&str, &str) {
        (
            self.value["apiVersion"].as_str().unwrap_or(""),
            self.value["kind"].as_str().unwrap_or(""),
        )
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every non-empty document of every manifest.
fn documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in yaml_files(&manifests_dir()) {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path
            .strip_prefix(manifests_dir())
            .unwrap()
            .display()
            .to_string();
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// Paths of `input` that are missing from or different in `output`: what a
/// typed round trip dropped (unknown or misplaced fields) or changed.
fn dropped(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => dropped(v, w, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                dropped(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        // 1 and 1.0 are the same number to the API server.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The document as the API type `T`, failing on any field the type does
/// not have (the API server would prune or refuse it).
fn typed<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    let what = format!("{} {:?} {}", doc.file, doc.api_kind(), doc.name());
    let t: T = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as the API type: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    let mut bad = Vec::new();
    dropped(&doc.value, &back, "", &mut bad);
    assert!(
        bad.is_empty(),
        "{what}: unknown or changed fields: {bad:#?}"
    );
    t
}

/// Every document, typed; returns the ones the other checks look at.
struct Typed {
    daemonsets: Vec<DaemonSet>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    namespaced_roles: Vec<Role>,
    namespaced_bindings: Vec<RoleBinding>,
    accounts: Vec<ServiceAccount>,
    configmaps: Vec<ConfigMap>,
    crds: Vec<CustomResourceDefinition>,
    policies: Vec<NetworkPolicy>,
    kustomizations: Vec<Value>,
}

fn typed_all() -> Typed {
    let mut t = Typed {
        daemonsets: vec![],
        roles: vec![],
        bindings: vec![],
        namespaced_roles: vec![],
        namespaced_bindings: vec![],
        accounts: vec![],
        configmaps: vec![],
        crds: vec![],
        policies: vec![],
        kustomizations: vec![],
    };
    let docs = documents();
    assert!(docs.len() >= 12, "only {} documents found", docs.len());
    for doc in &docs {
        match doc.api_kind() {
            ("apps/v1", "DaemonSet") => t.daemonsets.push(typed(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => t.roles.push(typed(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => t.bindings.push(typed(doc)),
            ("rbac.authorization.k8s.io/v1", "Role") => t.namespaced_roles.push(typed(doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                t.namespaced_bindings.push(typed(doc))
            }
            ("v1", "ServiceAccount") => t.accounts.push(typed(doc)),
            ("v1", "ConfigMap") => t.configmaps.push(typed(doc)),
            ("v1", "Namespace") => {
                typed::<Namespace>(doc);
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => t.crds.push(typed(doc)),
            ("networking.k8s.io/v1", "NetworkPolicy") => t.policies.push(typed(doc)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                t.kustomizations.push(doc.value.clone())
            }
            other => panic!("{}: {other:?} is not a kind this test knows", doc.file),
        }
    }
    t
}

#[test]
fn every_document_is_a_valid_api_object_without_unknown_fields() {
    let t = typed_all();
    assert_eq!(t.daemonsets.len(), 1);
    assert_eq!(t.roles.len(), 1);
    assert_eq!(t.bindings.len(), 1);
    assert_eq!(t.accounts.len(), 1);
    assert_eq!(t.configmaps.len(), 1);
    let kinds: BTreeSet<&str> = t.crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["BGPConfiguration", "BGPFilter", "BGPPeer", "IPPool"])
    );
    assert!(t.policies.len() >= 4);
}

#[test]
fn the_round_trip_check_catches_an_unknown_field() {
    let doc = Doc {
        file: "inline".into(),
        value: serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "x", "namspace": "typo"}
        }),
    };
    let caught = std::panic::catch_unwind(|| typed::<ServiceAccount>(&doc));
    assert!(caught.is_err(), "a misspelt field went through");
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.name == "tabby-agent")
        .expect("a container named tabby-agent")
}

fn init_container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().expect("init containers");
    init.iter()
        .find(|c| c.name == "install-cni")
        .expect("an init container named install-cni")
}

fn capabilities(c: &Container) -> &Capabilities {
    let sc = c.security_context.as_ref().unwrap();
    sc.capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{} sets no capabilities", c.name))
}

/// `--flag=value` arguments as a map (flags without a value map to "").
fn flags(args: &[String]) -> BTreeMap<String, String> {
    args.iter()
        .map(|a| {
            let a = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{a}: not a --flag"));
            match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (a.to_owned(), String::new()),
            }
        })
        .collect()
}

fn help(subcommand: Option<&str>) -> String {
    let out = Command::new(agentkit::AGENT)
        .args(subcommand)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_daemonset_runs_the_agent_as_the_node_needs() {
    let t = typed_all();
    let ds = &t.daemonsets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint: {tolerations:?}"
    );
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        t.accounts[0].metadata.name.as_deref()
    );

    // Capabilities: exactly what the agent needs, nothing for the installer.
    let agent = agent_container(ds);
    let caps = capabilities(agent);
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "NET_BIND_SERVICE"])
    );
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let init = init_container(ds);
    let init_caps = capabilities(init);
    assert!(init_caps.add.is_none());
    assert_eq!(init_caps.drop, Some(vec!["ALL".to_owned()]));
    for c in [agent, init] {
        let sc = c.security_context.as_ref().unwrap();
        assert_ne!(sc.privileged, Some(true), "{} is privileged", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(c.resources.as_ref().unwrap().requests.is_some());
    }

    // The five host paths, each mounted by a container.
    let volumes = pod.volumes.as_ref().unwrap();
    let host_paths: BTreeMap<&str, &str> = volumes
        .iter()
        .filter_map(|v| Some((v.host_path.as_ref()?.path.as_str(), v.name.as_str())))
        .collect();
    assert_eq!(
        host_paths.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "/opt/cni/bin",
            "/etc/cni/net.d",
            "/var/lib/tabby",
            "/run/tabby",
            "/run/netns"
        ])
    );
    let mounted: BTreeMap<&str, &str> = [agent, init]
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    for (path, volume) in &host_paths {
        assert!(mounted.contains_key(volume), "{path} is not mounted");
    }

    // Command lines: flags the binary has, directories that are mounted
    // at the path the conflist will name (the plugin runs on the host).
    assert_eq!(
        init.command,
        Some(vec![
            "/usr/local/bin/tabby-agent".to_owned(),
            "install-cni".to_owned()
        ])
    );
    assert_eq!(
        agent.command,
        Some(vec!["/usr/local/bin/tabby-agent".to_owned()])
    );
    let agent_flags = flags(agent.args.as_ref().unwrap());
    let init_flags = flags(init.args.as_ref().unwrap());
    let (agent_help, init_help) = (help(None), help(Some("install-cni")));
    for f in agent_flags.keys() {
        assert!(
            agent_help.contains(&format!("--{f} ")),
            "--{f} is not an agent flag"
        );
    }
    for f in init_flags.keys() {
        assert!(
            init_help.contains(&format!("--{f} ")),
            "--{f} is not an install-cni flag"
        );
    }
    for dir in ["run-dir", "data-dir"] {
        assert_eq!(agent_flags[dir], init_flags[dir], "--{dir}");
        assert_eq!(
            mounted[host_paths[agent_flags[dir].as_str()]],
            agent_flags[dir]
        );
    }
    assert_eq!(
        mounted[host_paths["/opt/cni/bin"]],
        init_flags["cni-bin-dir"]
    );
    assert_eq!(
        mounted[host_paths["/etc/cni/net.d"]],
        init_flags["cni-conf-dir"]
    );
    assert_eq!(agent_flags["datastore"], "kubernetes");
    let env = agent.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );

    // Probes on the agent's real endpoints and port.
    let port: i32 = agent_flags["metrics-addr"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (probe, path) in [
        (&agent.liveness_probe, tabby_agent::server::HEALTHZ_PATH),
        (&agent.readiness_probe, tabby_agent::server::READYZ_PATH),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(port));
    }
    let ports = agent.ports.as_ref().unwrap();
    assert!(ports.iter().any(|p| p.container_port == port));
}

#[test]
fn rbac_grants_what_the_agent_reads_and_writes_only_node_status() {
    let t = typed_all();
    let role = &t.roles[0];
    let binding = &t.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = &t.accounts[0];
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);

    // (group, resource) -> verbs.
    let mut grants: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for v in &rule.verbs {
            assert_ne!(v, "*", "wildcard verb");
        }
        for g in rule.api_groups.iter().flatten() {
            assert_ne!(g, "*", "wildcard group");
            for r in rule.resources.iter().flatten() {
                assert!(!r.contains('*'), "wildcard resource {r}");
                grants
                    .entry((g.clone(), r.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let read = BTreeSet::from(["list".to_owned(), "watch".to_owned()]);
    let mut want = BTreeMap::new();
    for (g, r) in [
        ("", "pods"),
        ("", "namespaces"),
        ("", "nodes"),
        ("networking.k8s.io", "networkpolicies"),
        // The BGP announcements of `externalTrafficPolicy: Local` Services.
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        want.insert((g.to_owned(), r.to_owned()), read.clone());
    }
    for crd in &t.crds {
        want.insert(
            (crd.spec.group.clone(), crd.spec.names.plural.clone()),
            read.clone(),
        );
    }
    want.insert(
        (String::new(), "nodes/status".to_owned()),
        BTreeSet::from(["patch".to_owned()]),
    );
    assert_eq!(grants, want);
}

/// BGP passwords: `get` on the named Secrets only, in the agent's own
/// namespace; no list, no watch, no other Secret (the ClusterRole has none:
/// see the test above).
#[test]
fn secrets_are_readable_only_by_name_in_the_agents_namespace() {
    let t = typed_all();
    let sa = &t.accounts[0];
    assert_eq!(t.namespaced_roles.len(), 1);
    let role = &t.namespaced_roles[0];
    assert_eq!(role.metadata.namespace, sa.metadata.namespace);
    let rules = role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["secrets".to_owned()][..]));
    assert_eq!(rule.verbs, ["get"]);
    let names = rule.resource_names.as_ref().unwrap();
    assert_eq!(names, &["tabby-bgp-passwords"]);
    assert_eq!(t.namespaced_bindings.len(), 1);
    let b = &t.namespaced_bindings[0];
    assert_eq!(b.metadata.namespace, sa.metadata.namespace);
    assert_eq!(b.role_ref.kind, "Role");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects = b.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
}

#[test]
fn configmap_keys_are_variables_the_binaries_read_and_their_values_parse() {
    let t = typed_all();
    let ds = &t.daemonsets[0];
    let cm = &t.configmaps[0];
    for c in [agent_container(ds), init_container(ds)] {
        let from = c.env_from.as_ref().unwrap();
        assert_eq!(
            from[0].config_map_ref.as_ref().unwrap().name,
            cm.metadata.name.clone().unwrap(),
            "{} reads the ConfigMap",
            c.name
        );
    }
    let data = cm.data.as_ref().unwrap();
    let (agent_help, init_help) = (help(None), help(Some("install-cni")));
    for key in data.keys() {
        // TABBY_LOG is the log level, read by both outside clap.
        let known = key == "TABBY_LOG"
            || agent_help.contains(&format!("[env: {key}="))
            || init_help.contains(&format!("[env: {key}="));
        assert!(known, "ConfigMap key {key} is no flag's variable");
    }
    assert!(["text", "json"].contains(&data["TABBY_LOG_FORMAT"].as_str()));
    assert!(["error", "warn", "info", "debug", "trace"].contains(&data["TABBY_LOG"].as_str()));

    // The installer with exactly this environment, into a scratch directory.
    let base = tabby_tests::scratch();
    let out = Command::new(agentkit::AGENT)
        .env_clear()
        .envs(data)
        .arg("install-cni")
        .arg(format!("--plugin={}", agentkit::AGENT))
        .arg(format!(
            "--cni-bin-dir={}",
            base.path().join("bin").display()
        ))
        .arg(format!(
            "--cni-conf-dir={}",
            base.path().join("conf").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent with this environment gets past flag parsing: it stops at
    // the (deliberately) bad --log-format, which is checked after every
    // flag and variable parsed.
    let out = Command::new(agentkit::AGENT)
        .env_clear()
        .envs(data)
        .args(["--node-name=n", "--log-format=check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown --log-format"),
        "the agent refused the ConfigMap's settings: {stderr}"
    );
}

#[test]
fn the_kustomization_lists_the_manifests_and_the_image() {
    let t = typed_all();
    assert_eq!(t.kustomizations.len(), 1);
    let k = &t.kustomizations[0];
    let allowed = BTreeSet::from(["apiVersion", "kind", "resources", "images"]);
    for key in k.as_object().unwrap().keys() {
        assert!(allowed.contains(key.as_str()), "unexpected key {key}");
    }
    let resources: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(resources, BTreeSet::from(["crds.yaml", "tabby.yaml"]));
    for r in &resources {
        assert!(manifests_dir().join(r).exists());
    }
    let ds = &t.daemonsets[0];
    let image_name = k["images"][0]["name"].as_str().unwrap();
    for c in [agent_container(ds), init_container(ds)] {
        let image = c.image.as_deref().unwrap();
        assert!(
            image.starts_with(&format!("{image_name}:")),
            "{image} is not overridden by the kustomization"
        );
    }
}

/// The tenant-isolation examples in a lab: the agent reads them from its
/// manifest directory like any other objects, and pods of three namespaces
/// probe each other.
#[test]
fn the_tenant_isolation_examples_isolate_tenants_in_a_lab() {
    let mut c = agentkit::Cluster::new("mfx");
    c.write(
        "00-namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: tenant-b, labels: {kubernetes.io/metadata.name: tenant-b}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: monitoring, labels: {kubernetes.io/metadata.name: monitoring}}\n",
    );
    let example =
        std::fs::read_to_string(manifests_dir().join("examples/tenant-isolation.yaml")).unwrap();
    c.write("10-tenant-isolation.yaml", &example);
    c.start_agent();
    c.add_pod("tenant-a", "a1", "app: web");
    c.add_pod("tenant-a", "a2", "app: db");
    c.add_pod("tenant-b", "b1", "app: web");
    c.add_pod("monitoring", "m1", "app: prometheus");
    c.expect(
        "tenant isolation",
        &[
            ("tenant-a/a1", "tenant-a/a2", true),
            ("tenant-a/a2", "tenant-a/a1", true),
            ("tenant-b/b1", "tenant-a/a1", false),
            ("tenant-a/a1", "tenant-b/b1", false),
            ("monitoring/m1", "tenant-a/a2", true),
            // Monitoring may scrape tenants; tenants may not call out to it.
            ("tenant-a/a1", "monitoring/m1", false),
            ("tenant-b/b1", "monitoring/m1", true),
        ],
    );
}
