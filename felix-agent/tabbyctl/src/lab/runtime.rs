//! `tabbyctl lab runtime`: the stand-in for kubelet on one node of a
//! `--kubernetes` lab (one process per node, in the node's namespace).
//!
//! It renews the node's Lease (so the node lifecycle controller keeps it
//! Ready), watches the Pods bound to its node (by the scheduler or by
//! `spec.nodeName`), and for each one does what kubelet and its runtime do
//! for a pod's network: makes the pod's namespace, runs the CNI plugin with
//! kubelet's environment, and patches `status.podIPs` and `phase: Running`.
//! A Pod being deleted (`deletionTimestamp`) gets CNI DEL, then is removed
//! from the API (as kubelet does once its containers are gone). Pods it
//! wired are recorded in the lab's pod records, as in the `dir:` mode, so
//! `lab status` and `lab probe` work the same in both modes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;

use super::layout::Layout;
use super::manifest::{name_of, ns_of};
use super::{LabState, PodRecord, read_pods, read_state};

/// How often the node's Lease is renewed (kubelet: 10 s, of a 40 s lease).
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// Runs the runtime of `node` until killed.
pub fn run(layout: &Layout, node: &str) -> anyhow::Result<()> {
    let state = read_state(layout)?;
    if !state.nodes.iter().any(|n| n.name == node) {
        anyhow::bail!("no node {node:?} in lab {:?}", layout.name());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(run_async(layout.clone(), state, node.to_string()))
}

/// A client from the lab's admin kubeconfig.
pub async fn client(state: &LabState) -> anyhow::Result<kube::Client> {
    let cp = state
        .control_plane
        .as_ref()
        .ok_or_else(|| anyhow!("this lab has no Kubernetes control plane"))?;
    let file = kube::config::Kubeconfig::read_from(&cp.kubeconfig)
        .with_context(|| format!("reading {}", cp.kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading the lab's kubeconfig")?;
    Ok(kube::Client::try_from(config)?)
}

async fn run_async(layout: Layout, state: LabState, node: String) -> anyhow::Result<()> {
    let client = client(&state).await?;
    tokio::spawn(renew_lease(client.clone(), node.clone()));
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(pods, config).boxed();
    let shared = Arc::new(Shared {
        layout,
        state,
        node,
        client,
        busy: Mutex::new(BTreeSet::new()),
        slots: tokio::sync::Semaphore::new(super::PARALLEL_PODS),
    });
    let mut listed: Option<BTreeSet<(String, String)>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(key_of(&pod));
                }
                shared.clone().handle(pod);
            }
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while nobody watched: tear them down.
                if let Some(l) = listed.take() {
                    for (key, rec) in shared.records() {
                        if !l.contains(&key) {
                            shared.clone().teardown(rec, None);
                        }
                    }
                }
            }
            Ok(watcher::Event::Apply(pod)) => shared.clone().handle(pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(rec) = shared.records().remove(&key_of(&pod)) {
                    shared.clone().teardown(rec, None);
                }
            }
            Err(e) => {
                eprintln!("watching pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

fn key_of(pod: &Pod) -> (String, String) {
    (
        ns_of(&pod.metadata).to_string(),
        name_of(&pod.metadata).to_string(),
    )
}

/// What every pod task shares.
struct Shared {
    layout: Layout,
    state: LabState,
    node: String,
    client: kube::Client,
    /// Pods with a task in flight: one at a time per pod.
    busy: Mutex<BTreeSet<(String, String)>>,
    /// At most this many pods wired at once.
    slots: tokio::sync::Semaphore,
}

impl Shared {
    /// This node's pod records.
    fn records(&self) -> BTreeMap<(String, String), PodRecord> {
        read_pods(&self.layout)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, r)| r.node == self.node)
            .collect()
    }

    /// Claims a pod for one task; false if a task has it.
    fn claim(&self, key: &(String, String)) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert(key.clone()))
            .unwrap_or(false)
    }

    fn release(&self, key: &(String, String)) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(key);
        }
    }

    /// Acts on the current state of a pod bound to this node.
    fn handle(self: Arc<Self>, pod: Pod) {
        let key = key_of(&pod);
        let rec = self.records().remove(&key);
        if pod.metadata.deletion_timestamp.is_some() {
            self.teardown_or_remove(pod, rec);
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match rec {
            Some(rec) if phase != "Running" => self.publish(pod, rec),
            Some(_) => {}
            None if phase == "Pending" || phase.is_empty() => self.wire(pod),
            None => {}
        }
    }

    /// CNI ADD, then the status patch.
    fn wire(self: Arc<Self>, pod: Pod) {
        let key = key_of(&pod);
        if !self.claim(&key) {
            return;
        }
        tokio::spawn(async move {
            let Ok(_slot) = self.slots.acquire().await else {
                return;
            };
            let me = self.clone();
            let p = pod.clone();
            let wired = tokio::task::spawn_blocking(move || {
                super::create_pod(&me.layout, &me.state, &p, &me.node)
            })
            .await
            .map_err(|e| anyhow!("{e}"))
            .and_then(|r| r);
            let result = match wired {
                Ok(rec) => self.patch_running(&pod, &rec).await,
                Err(e) => self.patch_failed(&pod, &format!("{e:#}")).await,
            };
            if let Err(e) = result {
                eprintln!("pod {}/{}: {e:#}", key.0, key.1);
            }
            self.release(&key);
        });
    }

    /// Patches the status of a pod wired before (a restarted runtime).
    fn publish(self: Arc<Self>, pod: Pod, rec: PodRecord) {
        let key = key_of(&pod);
        if !self.claim(&key) {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = self.patch_running(&pod, &rec).await {
                eprintln!("pod {}/{}: {e:#}", key.0, key.1);
            }
            self.release(&key);
        });
    }

    fn teardown_or_remove(self: Arc<Self>, pod: Pod, rec: Option<PodRecord>) {
        match rec {
            Some(rec) => self.teardown(rec, Some(pod)),
            None => {
                let key = key_of(&pod);
                if !self.claim(&key) {
                    return;
                }
                tokio::spawn(async move {
                    if let Err(e) = self.remove(&pod).await {
                        eprintln!("pod {}/{}: {e:#}", key.0, key.1);
                    }
                    self.release(&key);
                });
            }
        }
    }

    /// CNI DEL and the pod's namespace; then, if the API object is still
    /// there, its final removal.
    fn teardown(self: Arc<Self>, rec: PodRecord, pod: Option<Pod>) {
        let key = (rec.namespace.clone(), rec.name.clone());
        if !self.claim(&key) {
            return;
        }
        tokio::spawn(async move {
            let me = self.clone();
            let done =
                tokio::task::spawn_blocking(move || super::delete_pod(&me.layout, &me.state, &rec))
                    .await
                    .map_err(|e| anyhow!("{e}"))
                    .and_then(|r| r);
            let result = match (done, pod) {
                (Ok(()), Some(pod)) => self.remove(&pod).await,
                (Ok(()), None) => Ok(()),
                (Err(e), _) => Err(e),
            };
            if let Err(e) = result {
                eprintln!("pod {}/{}: {e:#}", key.0, key.1);
            }
            self.release(&key);
        });
    }

    /// Removes a terminating pod from the API (grace period 0, this very
    /// pod by UID), as kubelet does once its containers are gone.
    async fn remove(&self, pod: &Pod) -> anyhow::Result<()> {
        let (ns, name) = key_of(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch_running(&self, pod: &Pod, rec: &PodRecord) -> anyhow::Result<()> {
        let host = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == self.node)
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        let now = super::kube::now_rfc3339();
        let ips: Vec<serde_json::Value> = rec
            .ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip}))
            .collect();
        let ready =
            |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now});
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": rec.ips.first(),
            "podIPs": ips,
            "startTime": now,
            "conditions": [
                ready("PodReadyToStartContainers"),
                ready("Initialized"),
                ready("ContainersReady"),
                ready("Ready"),
                ready("PodScheduled"),
            ],
        }});
        self.patch_status(pod, status).await
    }

    async fn patch_failed(&self, pod: &Pod, message: &str) -> anyhow::Result<()> {
        eprintln!(
            "pod {}/{}: {message}",
            ns_of(&pod.metadata),
            name_of(&pod.metadata)
        );
        let status = serde_json::json!({"status": {
            "phase": "Failed",
            "reason": "NetworkSetupFailed",
            "message": message,
        }});
        self.patch_status(pod, status).await
    }

    async fn patch_status(&self, pod: &Pod, status: serde_json::Value) -> anyhow::Result<()> {
        let (ns, name) = key_of(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("patching the status of pod {ns}/{name}"))?;
        Ok(())
    }
}

/// Keeps the node's Lease fresh, as kubelet does.
async fn renew_lease(client: kube::Client, node: String) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let params = PatchParams::apply("tabbyctl-lab-runtime").force();
    loop {
        let now = chrono_like_micro_time();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
        });
        if let Err(e) = api.patch(&node, &params, &Patch::Apply(lease)).await {
            eprintln!("renewing the lease of {node}: {e}");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// Now as a Kubernetes MicroTime (RFC 3339 with microseconds).
fn chrono_like_micro_time() -> String {
    let s = super::kube::now_rfc3339();
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or_default();
    format!("{}.{micros:06}Z", s.trim_end_matches('Z'))
}
