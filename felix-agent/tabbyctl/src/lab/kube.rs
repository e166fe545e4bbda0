//! `tabbyctl lab up --kubernetes`: a real Kubernetes control plane for the
//! lab. etcd, kube-apiserver, kube-controller-manager and kube-scheduler run
//! in the control-plane namespace `tl.<name>.cp`, plugged into the fabric
//! bridge at [`CP_V4`]/[`CP_V6`]; nothing listens in the root namespace.
//! The binaries are the upstream ones built by `tests/k8s/build.sh`.
//!
//! ```text
//!  tl.<name>.cp          etcd (127.0.0.1:2379, data in <lab>/cp/etcd)
//!    10.99.0.2           kube-apiserver (:6443, every address of the namespace)
//!                        kube-controller-manager (node podCIDRs), kube-scheduler
//!  tl.<name>.node-N      tabby-agent --datastore kubernetes (tabby-agent token)
//!                        tabbyctl lab runtime (the stand-in for kubelet)
//! ```
//!
//! The lab makes its own CA and certificates with `openssl`: the API
//! server's serving certificate (SANs: the control plane's addresses, the
//! `kubernetes` Service's IP and names), an admin client certificate
//! (`system:masters`, used by the lab, the controllers and the stand-in
//! runtime) and the service-account signing key. The agents get a token of
//! the `tabby-agent` ServiceAccount (TokenRequest), so they have exactly the
//! permissions `manifests/tabby.yaml` grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::layout::{self, Layout};
use super::manifest::{LabObject, name_of, ns_of, served_ports};
use super::{LabState, NodeState, progress, sys};

/// The control plane's fabric IPv4 address.
pub const CP_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The control plane's fabric IPv6 address.
pub const CP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
/// The API server's port.
pub const APISERVER_PORT: u16 = 6443;
/// The cluster's pod space (the controller-manager cuts node blocks from it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16,fd00:244::/56";
/// The Service range; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16,fd00:96::/112";
/// The `kubernetes` Service's address (a SAN of the serving certificate).
pub const SERVICE_IP: &str = "10.96.0.1";
/// The Kubernetes release `tests/k8s/go.mod` pins.
pub const RELEASE: &str = "v1.34.4";

/// tabby's CRDs, applied to every Kubernetes lab.
const CRDS_YAML: &str = include_str!("../../../../manifests/crds.yaml");
/// tabby's install manifest; the lab applies its RBAC objects.
const TABBY_YAML: &str = include_str!("../../../../manifests/tabby.yaml");

/// The audit policy: LISTs and WATCHes at Metadata level (to count relists),
/// nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  verbs: [list, watch]\n- level: None\n";

/// What `lab.json` records about the control plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlPlaneState {
    /// The API server's URL.
    pub apiserver: String,
    /// The admin kubeconfig (`tabbyctl lab kubectl` uses it).
    pub kubeconfig: PathBuf,
    /// The agents' kubeconfig (the `tabby-agent` ServiceAccount's token).
    pub agent_kubeconfig: PathBuf,
    /// Where the Kubernetes binaries are.
    pub bin_dir: PathBuf,
    /// The components' processes, by name, in start order.
    pub pids: Vec<(String, i32)>,
}

/// The control plane's namespace.
pub fn cp_netns(layout: &Layout) -> String {
    format!("{}cp", layout.prefix())
}

/// The control plane's directory (certificates, etcd's data, logs).
pub fn cp_dir(layout: &Layout) -> PathBuf {
    layout.dir().join("cp")
}

/// The directory of the Kubernetes binaries: `$TABBY_K8S_BIN_DIR`, or
/// `target/k8s/bin` next to this executable's `target/<profile>/`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TABBY_K8S_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let me = std::env::current_exe().context("finding tabbyctl's own path")?;
            me.parent()
                .and_then(Path::parent)
                .map(|t| t.join("k8s").join("bin"))
                .context("tabbyctl's path has a target directory")?
        }
    };
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ] {
        if !dir.join(b).is_file() {
            bail!(
                "{} not found: build the control plane with `bash tests/k8s/build.sh` \
                 (or set TABBY_K8S_BIN_DIR)",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A certificate signed by the lab's CA, with a fresh P-256 key.
fn issue(dir: &Path, name: &str, subject: &str, extensions: &[String]) -> anyhow::Result<()> {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let mut args = vec![
        "req",
        "-config",
        "openssl.cnf",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &crt,
        "-days",
        "3650",
        "-subj",
        subject,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ];
    for e in extensions {
        args.push("-addext");
        args.push(e);
    }
    openssl(dir, &args)
}

/// The CA, the API server's serving certificate, the admin's client
/// certificate and the service-account signing key pair.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A config with nothing in it: every extension is given on the command
    // line, none comes from the system's defaults.
    std::fs::write(
        dir.join("openssl.cnf"),
        "[req]\ndistinguished_name=dn\n[dn]\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-config",
            "openssl.cnf",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=tabby-lab-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    let sans = format!(
        "subjectAltName=IP:{CP_V4},IP:{CP_V6},IP:{SERVICE_IP},IP:127.0.0.1,DNS:localhost,\
         DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
         DNS:kubernetes.default.svc.cluster.local"
    );
    issue(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        &[
            sans,
            "keyUsage=critical,digitalSignature".into(),
            "extendedKeyUsage=serverAuth".into(),
        ],
    )?;
    issue(
        dir,
        "admin",
        "/O=system:masters/CN=kubernetes-admin",
        &[
            "keyUsage=critical,digitalSignature".into(),
            "extendedKeyUsage=clientAuth".into(),
        ],
    )?;
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

/// A kubeconfig for `user` (a client certificate or a token).
fn kubeconfig(server: &str, ca: &Path, user: serde_json::Value) -> anyhow::Result<String> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "lab", "user": user}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// Starts one component in the control-plane namespace, its output in
/// `<cp>/<name>.log`.
fn spawn(layout: &Layout, bin_dir: &Path, name: &str, args: &[String]) -> anyhow::Result<i32> {
    let log_path = cp_dir(layout).join(format!("{name}.log"));
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &cp_netns(layout)])
        .arg(bin_dir.join(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(child.id() as i32)
}

/// Runs the real kubectl against the lab with the admin kubeconfig.
/// kubectl runs in the control plane's network namespace (the API server
/// is not reachable from the host's), in the host's mount namespace.
pub fn kubectl_cmd(layout: &Layout, cp: &ControlPlaneState) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", cp_netns(layout)))
        .arg(cp.bin_dir.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig);
    cmd
}

/// Runs kubectl with `input` on stdin; fails with its stderr.
pub fn kubectl(
    layout: &Layout,
    cp: &ControlPlaneState,
    args: &[&str],
    input: &str,
) -> anyhow::Result<String> {
    let mut cmd = kubectl_cmd(layout, cp);
    cmd.args(args);
    let out = sys::run_with_input(&mut cmd, input.as_bytes(), "kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_alive(layout: &Layout, cp: &ControlPlaneState) -> anyhow::Result<()> {
    for (name, pid) in &cp.pids {
        if !sys::alive(*pid) {
            let log = cp_dir(layout).join(format!("{name}.log"));
            bail!(
                "{name} exited; its log ({}):\n{}",
                log.display(),
                sys::log_tail(&log, 20)
            );
        }
    }
    Ok(())
}

/// Creates the control-plane namespace, the certificates, and starts etcd,
/// kube-apiserver, kube-controller-manager and kube-scheduler; returns once
/// the API server is ready. `state.control_plane` is filled in (and saved)
/// as components start, so that a failed start is torn down completely.
pub fn start(layout: &Layout, state: &mut LabState, timeout: Duration) -> anyhow::Result<()> {
    let bin_dir = find_bin_dir()?;
    let dir = cp_dir(layout);
    let pki = dir.join("pki");
    progress(layout, "control plane: certificates");
    make_pki(&pki)?;
    std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

    let ns = cp_netns(layout);
    sys::add_netns(&ns)?;
    sys::ip_batch(
        &layout.fabric_netns(),
        &[
            format!("link add cp type veth peer name eth0 netns {ns}"),
            format!("link set cp master {} up", layout::BRIDGE),
        ],
    )?;
    let (gw4, gw6) = layout::fabric_gateway();
    sys::ip_batch(
        &ns,
        &[
            "link set lo up".to_string(),
            "link set eth0 up".to_string(),
            format!("addr add {CP_V4}/24 dev eth0"),
            format!("addr add {CP_V6}/64 dev eth0 nodad"),
            format!("route add default via {gw4}"),
            format!("route add default via {gw6}"),
        ],
    )?;

    let apiserver = format!("https://{CP_V4}:{APISERVER_PORT}");
    let admin = dir.join("admin.kubeconfig");
    sys::write_atomic(
        &admin,
        kubeconfig(
            &apiserver,
            &pki.join("ca.crt"),
            serde_json::json!({
                "client-certificate": pki.join("admin.crt"),
                "client-key": pki.join("admin.key"),
            }),
        )?
        .as_bytes(),
    )?;
    let mut cp = ControlPlaneState {
        apiserver: apiserver.clone(),
        kubeconfig: admin.clone(),
        agent_kubeconfig: dir.join("agent.kubeconfig"),
        bin_dir: bin_dir.clone(),
        pids: Vec::new(),
    };
    let p = |f: &str| pki.join(f).display().to_string();

    progress(layout, "control plane: etcd");
    let etcd = spawn(layout, &bin_dir, "etcd", &etcd_args(layout))?;
    cp.pids.push(("etcd".into(), etcd));
    state.control_plane = Some(cp.clone());
    super::write_state(layout, state)?;

    progress(layout, "control plane: kube-apiserver");
    let apiserver_pid = spawn(layout, &bin_dir, "kube-apiserver", &apiserver_args(layout))?;
    cp.pids.push(("kube-apiserver".into(), apiserver_pid));
    state.control_plane = Some(cp.clone());
    super::write_state(layout, state)?;
    wait_apiserver(layout, &cp, timeout)?;

    progress(
        layout,
        "control plane: kube-controller-manager, kube-scheduler",
    );
    let cm = spawn(
        layout,
        &bin_dir,
        "kube-controller-manager",
        &[
            format!("--kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--allocate-node-cidrs".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size-ipv4=24".into(),
            "--node-cidr-mask-size-ipv6=64".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            "--use-service-account-credentials=false".into(),
            "--v=1".into(),
        ],
    )?;
    cp.pids.push(("kube-controller-manager".into(), cm));
    let sched = spawn(
        layout,
        &bin_dir,
        "kube-scheduler",
        &[
            format!("--kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ],
    )?;
    cp.pids.push(("kube-scheduler".into(), sched));
    state.control_plane = Some(cp.clone());
    super::write_state(layout, state)?;

    progress(layout, "control plane: tabby's CRDs and RBAC");
    kubectl(layout, &cp, &["apply", "-f", "-"], CRDS_YAML)?;
    kubectl(layout, &cp, &["apply", "-f", "-"], &rbac_of(TABBY_YAML)?)?;
    wait_for("the CRDs to be established", timeout, || {
        Ok(kubectl(
            layout,
            &cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/bgpconfigurations.tabby.dev",
                "crd/bgppeers.tabby.dev",
            ],
            "",
        )
        .is_ok())
    })?;
    let token = kubectl(
        layout,
        &cp,
        &[
            "-n",
            "kube-system",
            "create",
            "token",
            "tabby-agent",
            "--duration=8760h",
        ],
        "",
    )?;
    sys::write_atomic(
        &cp.agent_kubeconfig,
        kubeconfig(
            &apiserver,
            &pki.join("ca.crt"),
            serde_json::json!({"token": token.trim()}),
        )?
        .as_bytes(),
    )?;
    Ok(())
}

fn etcd_args(layout: &Layout) -> Vec<String> {
    let d = cp_dir(layout).display().to_string();
    vec![
        "--name=lab".into(),
        format!("--data-dir={d}/etcd"),
        "--listen-client-urls=http://127.0.0.1:2379".into(),
        "--advertise-client-urls=http://127.0.0.1:2379".into(),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=lab=http://127.0.0.1:2380".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(layout: &Layout) -> Vec<String> {
    let dir = cp_dir(layout);
    let p = |f: &str| dir.join("pki").join(f).display().to_string();
    vec![
        format!("--advertise-address={CP_V4}"),
        "--bind-address=::".into(),
        format!("--secure-port={APISERVER_PORT}"),
        "--etcd-servers=http://127.0.0.1:2379".into(),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=RBAC".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        format!(
            "--audit-policy-file={}",
            dir.join("audit-policy.yaml").display()
        ),
        format!("--audit-log-path={}", dir.join("audit.log").display()),
        "--audit-log-format=json".into(),
        "--v=1".into(),
    ]
}

fn wait_apiserver(
    layout: &Layout,
    cp: &ControlPlaneState,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for("kube-apiserver to be ready", timeout, || {
        check_alive(layout, cp)?;
        let out = kubectl_cmd(layout, cp)
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .output()?;
        Ok(out.status.success())
    })
}

/// The RBAC documents (and the ServiceAccount) of tabby's install manifest.
fn rbac_of(yaml: &str) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc).context("parsing manifests/tabby.yaml")?;
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            docs.push(serde_yaml::to_string(&v)?);
        }
    }
    if docs.is_empty() {
        bail!("manifests/tabby.yaml has no RBAC objects");
    }
    Ok(docs.join("---\n"))
}

/// Registers a node as kubelet would (addresses, capacity, `Ready`) and
/// waits until kube-controller-manager has given it its pod CIDRs, which
/// are returned. Nodes are registered one at a time, so node `i` gets the
/// `i`-th block of each family.
pub fn register_node(
    layout: &Layout,
    cp: &ControlPlaneState,
    node: &NodeState,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let now = now_rfc3339();
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "InternalIP", "address": node.ipv6.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "tabbyctl lab runtime is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "kubeletVersion": RELEASE, "kubeProxyVersion": "",
                "architecture": "amd64", "operatingSystem": "linux",
                "containerRuntimeVersion": "tabbyctl-lab://0", "kernelVersion": "",
                "osImage": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    });
    kubectl(layout, cp, &["create", "-f", "-"], &obj.to_string())?;
    let mut cidrs = Vec::new();
    wait_for(
        &format!(
            "kube-controller-manager to give {} its pod CIDRs",
            node.name
        ),
        timeout,
        || {
            let out = kubectl(
                layout,
                cp,
                &["get", "node", &node.name, "-o", "jsonpath={.spec.podCIDRs}"],
                "",
            )?;
            cidrs = serde_json::from_str::<Vec<String>>(out.trim()).unwrap_or_default();
            Ok(cidrs.len() == 2)
        },
    )?;
    Ok(cidrs)
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The agent's arguments for the Kubernetes datastore.
pub fn agent_datastore_args(cp: &ControlPlaneState) -> Vec<String> {
    vec![
        "--datastore=kubernetes".into(),
        format!("--kubeconfig={}", cp.agent_kubeconfig.display()),
    ]
}

/// Stops the control plane's processes, newest first.
pub fn stop(layout: &Layout, cp: &ControlPlaneState) {
    for (_, pid) in cp.pids.iter().rev() {
        if owned(layout, *pid) {
            sys::stop_process(*pid, Duration::from_secs(10));
        }
    }
}

/// True when `pid` runs with one of this lab's paths or namespaces in its
/// command line, so that a reused pid is never killed.
pub fn owned(layout: &Layout, pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(&layout.prefix()) || cmdline.contains(&*layout.dir().to_string_lossy())
}

/// Restarts one component (`kube-apiserver` or `etcd`) with the same
/// arguments: for tests of the agents' behaviour across an outage.
pub fn restart_component(
    layout: &Layout,
    state: &mut LabState,
    component: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut cp = state
        .control_plane
        .clone()
        .ok_or_else(|| anyhow!("lab {:?} has no control plane", layout.name()))?;
    let idx = cp
        .pids
        .iter()
        .position(|(n, _)| n == component)
        .ok_or_else(|| anyhow!("no component {component:?} (etcd, kube-apiserver, ...)"))?;
    let old = cp.pids[idx].1;
    progress(
        layout,
        format!("control plane: restarting {component} (pid {old})"),
    );
    sys::stop_process(old, Duration::from_secs(10));
    let args = match component {
        "kube-apiserver" => apiserver_args(layout),
        "etcd" => etcd_args(layout),
        other => bail!("restarting {other} is not supported (etcd, kube-apiserver)"),
    };
    let pid = spawn(layout, &cp.bin_dir.clone(), component, &args)?;
    cp.pids[idx].1 = pid;
    state.control_plane = Some(cp.clone());
    super::write_state(layout, state)?;
    wait_apiserver(layout, &cp, timeout)
}

/// `tabbyctl lab kubectl -- ARGS`: the real kubectl against the lab, with
/// the lab's admin kubeconfig; returns kubectl's exit code.
pub fn run_kubectl(layout: &Layout, args: &[String]) -> anyhow::Result<i32> {
    let state = super::read_state(layout)?;
    let cp = state.control_plane.as_ref().ok_or_else(|| {
        anyhow!(
            "lab {:?} has no Kubernetes control plane (start it with `tabbyctl lab up --kubernetes`)",
            layout.name()
        )
    })?;
    let status = kubectl_cmd(layout, cp)
        .args(args)
        .status()
        .context("running kubectl")?;
    Ok(status.code().unwrap_or(1))
}

/// The objects of the files as one JSON `List` for kubectl. The lab reads
/// YAML 1.2 in both modes (serde_yaml): kubectl's YAML 1.1 would read an
/// unquoted `y` or `no` as a boolean, and the same file must mean the same
/// in both modes.
fn joined(sources: &[super::Source]) -> anyhow::Result<String> {
    let mut items = Vec::new();
    for (name, text) in sources {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v =
                serde_yaml::Value::deserialize(doc).with_context(|| format!("parsing {name}"))?;
            if v.is_null() {
                continue;
            }
            items.push(serde_json::to_value(v).with_context(|| format!("converting {name}"))?);
        }
    }
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())
}

/// `lab apply` through the API server: `kubectl apply` (so the API
/// server's validation and defaulting apply), then waits until every Pod
/// of the files runs with its addresses and every agent has programmed the
/// change ([`barrier`]).
pub fn apply(
    layout: &Layout,
    state: &LabState,
    sources: &[super::Source],
    objects: &[LabObject],
    timeout: Duration,
) -> anyhow::Result<()> {
    let cp = state.control_plane.as_ref().context("the control plane")?;
    // Checked before anything changes, as in the dir mode: kubectl applies
    // document by document and would leave the first ones in place.
    let existing = kubectl(
        layout,
        cp,
        &[
            "get",
            "namespaces",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        "",
    )?;
    let mut namespaces: BTreeSet<String> =
        existing.split_whitespace().map(str::to_string).collect();
    for o in objects {
        if let LabObject::Namespace(ns) = o {
            namespaces.insert(name_of(&ns.metadata).to_string());
        }
    }
    let nodes: BTreeSet<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut pods = BTreeSet::new();
    for o in objects {
        let meta = match o {
            LabObject::Pod(p) => &p.metadata,
            LabObject::NetworkPolicy(p) => &p.metadata,
            _ => continue,
        };
        if !namespaces.contains(ns_of(meta)) {
            bail!(
                "{}: namespace {:?} does not exist (apply a Namespace first)",
                o.describe(),
                ns_of(meta)
            );
        }
        if let LabObject::Pod(p) = o {
            served_ports(p).map_err(|e| anyhow!("{}: {e}", o.describe()))?;
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                && !nodes.contains(n)
            {
                bail!(
                    "{}: spec.nodeName {n:?} is not a node of this lab ({})",
                    o.describe(),
                    nodes.iter().copied().collect::<Vec<_>>().join(", ")
                );
            }
            pods.insert((ns_of(meta).to_string(), name_of(meta).to_string()));
        }
    }
    let out = kubectl(layout, cp, &["apply", "-f", "-"], &joined(sources)?)?;
    out!("{}", out.trim_end());
    wait_pods_running(layout, cp, &pods, timeout)?;
    barrier(layout, state, timeout)
}

/// `lab delete` through the API server: `kubectl delete` (which waits until
/// the objects are gone: pods get CNI DEL from their node's runtime first),
/// then waits for every agent ([`barrier`]).
pub fn delete(
    layout: &Layout,
    state: &LabState,
    sources: &[super::Source],
    timeout: Duration,
) -> anyhow::Result<()> {
    let cp = state.control_plane.as_ref().context("the control plane")?;
    let out = kubectl(
        layout,
        cp,
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            &format!("--timeout={}s", timeout.as_secs()),
            "-f",
            "-",
        ],
        &joined(sources)?,
    )?;
    out!("{}", out.trim_end());
    barrier(layout, state, timeout)
}

/// Waits until each pod runs (`phase: Running` with its addresses, patched
/// by its node's runtime); a pod that failed fails the apply.
fn wait_pods_running(
    layout: &Layout,
    cp: &ControlPlaneState,
    pods: &BTreeSet<(String, String)>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if pods.is_empty() {
        return Ok(());
    }
    let mut pending: Vec<String> = Vec::new();
    let waited = wait_for("the pods to run", timeout, || {
        let out = kubectl(layout, cp, &["get", "pods", "-A", "-o", "json"], "")?;
        let list: serde_json::Value = serde_json::from_str(&out).context("parsing the pod list")?;
        let mut running = BTreeSet::new();
        let mut failed = Vec::new();
        for p in list["items"].as_array().into_iter().flatten() {
            let key = (
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            if !pods.contains(&key) {
                continue;
            }
            let phase = p["status"]["phase"].as_str().unwrap_or_default();
            let has_ips = p["status"]["podIPs"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if phase == "Running" && has_ips {
                running.insert(key);
            } else if phase == "Failed" {
                failed.push(format!(
                    "Pod/{}/{}: {}",
                    key.0,
                    key.1,
                    p["status"]["message"].as_str().unwrap_or("failed")
                ));
            }
        }
        if !failed.is_empty() {
            bail!("{} pod(s) failed:\n{}", failed.len(), failed.join("\n"));
        }
        pending = pods
            .iter()
            .filter(|k| !running.contains(*k))
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect();
        Ok(pending.is_empty())
    });
    waited.map_err(|e| {
        anyhow!(
            "{e}: not running: {}",
            pending
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// What the agents must have programmed: per kind (as the agents name it),
/// how many objects and the highest resourceVersion among them.
fn targets(
    layout: &Layout,
    cp: &ControlPlaneState,
) -> anyhow::Result<BTreeMap<String, (usize, u64)>> {
    let mut out: BTreeMap<String, (usize, u64)> = [
        "Pod",
        "Namespace",
        "NetworkPolicy",
        "Node",
        "BgpConfiguration",
        "BgpPeer",
    ]
    .iter()
    .map(|k| (k.to_string(), (0, 0)))
    .collect();
    let lists = [
        kubectl(
            layout,
            cp,
            &[
                "get",
                "pods",
                "-A",
                "-o",
                "json",
                "--field-selector=status.phase!=Succeeded,status.phase!=Failed",
            ],
            "",
        )?,
        kubectl(
            layout,
            cp,
            &[
                "get",
                "namespaces,nodes,networkpolicies.networking.k8s.io,\
                 bgpconfigurations.tabby.dev,bgppeers.tabby.dev",
                "-A",
                "-o",
                "json",
            ],
            "",
        )?,
    ];
    for text in lists {
        let list: serde_json::Value = serde_json::from_str(&text).context("parsing a list")?;
        for item in list["items"].as_array().into_iter().flatten() {
            let kind = match item["kind"].as_str().unwrap_or_default() {
                "BGPConfiguration" => "BgpConfiguration",
                "BGPPeer" => "BgpPeer",
                other => other,
            };
            let rv = item["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(t) = out.get_mut(kind) {
                t.0 += 1;
                t.1 = t.1.max(rv);
            }
        }
    }
    Ok(out)
}

/// The `--kubernetes` lab's barrier: returns once every agent has
/// programmed what the API server holds now.
///
/// Why this and not a barrier object: the agent watches each kind on its
/// own stream, so no single object can order the others' events; and a
/// ConfigMap the agents watch would need a permission the manifests do not
/// grant. Instead every agent reports, per kind, the highest
/// resourceVersion it has programmed and how many objects it holds (the
/// `datastore` of its status). etcd's revisions are one sequence for every
/// kind, and a kind's watch delivers in order: an agent that has seen the
/// kind up to the newest object's version, and holds as many objects as the
/// API server, has seen every change of the kind until now, deletes
/// included (a delete after the newest write is the only change it could
/// still miss, and that changes the count).
pub fn barrier(layout: &Layout, state: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let cp = state.control_plane.as_ref().context("the control plane")?;
    let want = targets(layout, cp)?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for node in &state.nodes {
            super::check_agent(layout, node)?;
            let st = super::agent_status(layout, &node.name);
            for (kind, (count, rv)) in &want {
                let got = st.as_ref().map(|s| &s["datastore"][kind.as_str()]);
                let ok = got.is_some_and(|g| {
                    g["objects"].as_u64() == Some(*count as u64)
                        && g["resourceVersion"].as_u64().unwrap_or(0) >= *rv
                });
                if !ok {
                    behind.push(format!(
                        "{} ({kind}: has {}, want {count} objects up to version {rv})",
                        node.name,
                        got.map(ToString::to_string).unwrap_or_default()
                    ));
                }
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s: not programmed: {}",
                timeout.as_secs(),
                behind.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
