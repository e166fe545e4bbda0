//! `tabbyctl lab`: a multi-node tabby cluster on one machine. The fabric is
//! a namespace with a Linux bridge; every node is a namespace plugged into
//! it, running the real `tabby-agent` against a `dir:` datastore the lab
//! owns; every pod is a namespace wired by the real `tabby` plugin, called
//! exactly as kubelet calls it. With `--kubernetes` the datastore is a real
//! control plane instead (`kube`), and a stand-in for kubelet wires the pods
//! the scheduler binds (`runtime`).

pub mod kube;
pub mod layout;
pub mod manifest;
pub mod probe;
pub mod runtime;
pub mod serve;
pub mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodStatus};
use serde::{Deserialize, Serialize};

use layout::{Layout, node_addrs, node_name, node_pod_cidrs};
use manifest::{LabObject, ServedPort, name_of, ns_of, object_file, served_ports};

/// How many pods are wired at once.
pub(crate) const PARALLEL_PODS: usize = 4;

/// The binaries a lab runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Binaries {
    /// The CNI plugin.
    pub tabby: PathBuf,
    /// The node agent.
    pub agent: PathBuf,
    /// This tool (pods' port servers run as `tabbyctl lab serve`).
    pub tabbyctl: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, or next to this executable.
    pub fn find(dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let me = std::env::current_exe().context("finding tabbyctl's own path")?;
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => me
                .parent()
                .context("tabbyctl's path has a directory")?
                .to_path_buf(),
        };
        let b = Binaries {
            tabby: dir.join("tabby"),
            agent: dir.join("tabby-agent"),
            tabbyctl: me,
        };
        for p in [&b.tabby, &b.agent] {
            if !p.is_file() {
                bail!(
                    "{} not found: build the binaries (`cargo build --release`) or pass --bin-dir",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// What `lab.json` records about one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    /// Node name (`node-1`, ...).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its fabric IPv4 address (BGP, InternalIP).
    pub ip: Ipv4Addr,
    /// Its fabric IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Its pod blocks.
    pub pod_cidrs: Vec<String>,
    /// The agent's process.
    pub agent_pid: i32,
    /// The stand-in runtime's process (`--kubernetes` labs).
    #[serde(default)]
    pub runtime_pid: i32,
}

/// What `lab.json` records about the lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    /// The lab's name.
    pub name: String,
    /// The dataplane the agents run.
    pub dataplane: String,
    /// The binaries it runs.
    pub binaries: Binaries,
    /// Its nodes.
    pub nodes: Vec<NodeState>,
    /// The Kubernetes control plane (`up --kubernetes`); none with the
    /// `dir:` datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<kube::ControlPlaneState>,
}

/// What the lab records about one pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// Its addresses (from the CNI result).
    pub ips: Vec<String>,
    /// The container ID given to the plugin.
    pub container_id: String,
    /// The port server's process, if the pod declares ports.
    pub server_pid: Option<i32>,
    /// The ports it serves.
    pub ports: Vec<ServedPort>,
    /// `hostNetwork: true`: it runs in its node's namespace with the node's
    /// addresses (no namespace of its own, no CNI ADD).
    #[serde(default)]
    pub host_network: bool,
}

pub(crate) fn progress(layout: &Layout, msg: impl std::fmt::Display) {
    eprintln!("[lab {}] {msg}", layout.name());
}

/// Holds the lab's lock: one command changes a lab at a time.
struct LabLock {
    _lock: nix::fcntl::Flock<File>,
}

fn lock(layout: &Layout) -> anyhow::Result<LabLock> {
    let path = layout.lock_file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))?;
    Ok(LabLock { _lock: lock })
}

pub(crate) fn read_state(layout: &Layout) -> anyhow::Result<LabState> {
    let path = layout.state_file();
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "lab {:?} is not running (no {}); start it with `tabbyctl lab up --name {}`",
            layout.name(),
            path.display(),
            layout.name()
        ),
        _ => anyhow!("reading {}: {e}", path.display()),
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn write_state(layout: &Layout, state: &LabState) -> anyhow::Result<()> {
    sys::write_atomic(
        &layout.state_file(),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

pub(crate) fn read_pods(layout: &Layout) -> anyhow::Result<BTreeMap<(String, String), PodRecord>> {
    let mut out = BTreeMap::new();
    let dir = layout.pods_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        let rec: PodRecord = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", entry.path().display()))?;
        out.insert((rec.namespace.clone(), rec.name.clone()), rec);
    }
    Ok(out)
}

fn pod_record_path(layout: &Layout, namespace: &str, name: &str) -> PathBuf {
    layout.pods_dir().join(format!("{namespace}_{name}.json"))
}

/// An agent's `status.json`.
pub(crate) fn agent_status(layout: &Layout, node: &str) -> Option<serde_json::Value> {
    let path = layout.node_dir(node).join("run").join("status.json");
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn agent_log(layout: &Layout, node: &str) -> PathBuf {
    layout.node_dir(node).join("agent.log")
}

/// BGP sessions of a node as (peer, asn, state).
fn bgp_sessions(status: Option<&serde_json::Value>) -> Vec<(String, u64, String)> {
    status
        .and_then(|s| s["bgp"]["peers"].as_array())
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    (
                        p["address"].as_str().unwrap_or_default().to_string(),
                        p["asn"].as_u64().unwrap_or_default(),
                        p["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// `nftables` (the only dataplane so far).
    pub dataplane: String,
    /// Manifests to apply once the lab is up.
    pub files: Vec<PathBuf>,
    /// Where the binaries are.
    pub bin_dir: Option<PathBuf>,
    /// How long to wait for readiness.
    pub timeout: Duration,
    /// A real control plane as the datastore.
    pub kubernetes: bool,
}

/// `lab up`.
pub fn up(layout: &Layout, opts: &UpOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    if opts.nodes == 0 || opts.nodes > layout::MAX_NODES {
        bail!("--nodes must be between 1 and {}", layout::MAX_NODES);
    }
    match opts.dataplane.as_str() {
        "nftables" => {}
        "ebpf" => bail!("the eBPF dataplane is not available yet; use --dataplane nftables"),
        other => bail!("unknown dataplane {other:?} (nftables)"),
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("`{tool}` is not installed (apt-get install iproute2 nftables)");
        }
    }
    let binaries = Binaries::find(opts.bin_dir.as_deref())?;
    if opts.kubernetes {
        kube::find_bin_dir()?;
    }
    // Parse the files first: a typo should not cost a whole lab start.
    let sources = read_sources(&opts.files)?;
    {
        let _lock = lock(layout)?;
        if let Ok(state) = read_state(layout)
            && state.nodes.iter().any(|n| sys::alive(n.agent_pid))
        {
            bail!(
                "lab {:?} is already running; `tabbyctl lab down --name {}` first",
                layout.name(),
                layout.name()
            );
        }
        if layout.dir().exists() || !sys::netns_with_prefix(&layout.prefix()).is_empty() {
            progress(layout, "cleaning up the leftovers of a previous run");
            teardown(layout)?;
        }
        let result = build(layout, opts, binaries);
        if let Err(e) = result {
            progress(
                layout,
                "start failed; the lab is left for inspection (`tabbyctl lab down` removes it)",
            );
            return Err(e);
        }
    }
    progress(
        layout,
        format!(
            "up: {} node(s), BGP mesh established, in {:.1}s",
            opts.nodes,
            started.elapsed().as_secs_f64()
        ),
    );
    if !sources.is_empty() {
        apply_sources(layout, &sources, opts.timeout)?;
    }
    Ok(())
}

fn build(layout: &Layout, opts: &UpOptions, binaries: Binaries) -> anyhow::Result<()> {
    for d in [layout.manifests(), layout.pods_dir()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut state = LabState {
        name: layout.name().to_string(),
        dataplane: opts.dataplane.clone(),
        binaries,
        nodes: Vec::new(),
        control_plane: None,
    };
    for i in 1..=opts.nodes {
        let name = node_name(i);
        let (ip, ipv6) = node_addrs(i);
        state.nodes.push(NodeState {
            netns: layout.node_netns(&name),
            name,
            ip,
            ipv6,
            pod_cidrs: node_pod_cidrs(i).iter().map(ToString::to_string).collect(),
            agent_pid: 0,
            runtime_pid: 0,
        });
    }
    write_state(layout, &state)?;

    progress(layout, "creating the fabric");
    let fabric = layout.fabric_netns();
    sys::add_netns(&fabric)?;
    let (gw4, gw6) = layout::fabric_gateway();
    sys::ip_batch(
        &fabric,
        &[
            format!("link add {} type bridge", layout::BRIDGE),
            format!("link set {} up", layout::BRIDGE),
            format!("addr add {gw4}/24 dev {}", layout::BRIDGE),
            format!("addr add {gw6}/64 dev {} nodad", layout::BRIDGE),
        ],
    )?;
    for (i, node) in state.nodes.iter().enumerate() {
        progress(layout, format!("creating {} ({})", node.name, node.ip));
        sys::add_netns(&node.netns)?;
        let port = format!("n{}", i + 1);
        sys::ip_batch(
            &fabric,
            &[
                format!(
                    "link add {port} type veth peer name eth0 netns {}",
                    node.netns
                ),
                format!("link set {port} master {} up", layout::BRIDGE),
            ],
        )?;
        sys::ip_batch(
            &node.netns,
            &[
                "link set eth0 up".to_string(),
                format!("addr add {}/24 dev eth0", node.ip),
                format!("addr add {}/64 dev eth0 nodad", node.ipv6),
                format!("route add default via {gw4}"),
                format!("route add default via {gw6}"),
            ],
        )?;
        if !opts.kubernetes {
            write_node_manifest(layout, node)?;
        }
    }
    if opts.kubernetes {
        kube::start(layout, &mut state, opts.timeout)?;
        for idx in 0..state.nodes.len() {
            let cp = state.control_plane.clone().context("the control plane")?;
            state.nodes[idx].pod_cidrs =
                kube::register_node(layout, &cp, &state.nodes[idx], opts.timeout)?;
            progress(
                layout,
                format!(
                    "{}: registered, podCIDRs {}",
                    state.nodes[idx].name,
                    state.nodes[idx].pod_cidrs.join(",")
                ),
            );
            state.nodes[idx].runtime_pid = spawn_runtime(layout, &state, &state.nodes[idx])?;
            write_state(layout, &state)?;
        }
    } else {
        write_manifest(
        layout,
        &object_file("namespace", "", "default"),
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}
        })
        .to_string(),
        )?;
    }

    for idx in 0..state.nodes.len() {
        let pid = spawn_agent(layout, &state, &state.nodes[idx])?;
        state.nodes[idx].agent_pid = pid;
        write_state(layout, &state)?;
    }
    wait_ready(layout, &state, opts.timeout)
}

fn write_node_manifest(layout: &Layout, node: &NodeState) -> anyhow::Result<()> {
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {"podCIDR": node.pod_cidrs.first(), "podCIDRs": node.pod_cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ip.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
            {"type": "Hostname", "address": node.name},
        ]}
    });
    // Checked against the real type, so a typo here fails at once.
    let _: Node = serde_json::from_value(obj.clone()).context("building a Node object")?;
    write_manifest(
        layout,
        &object_file("node", "", &node.name),
        &serde_json::to_string_pretty(&obj)?,
    )
}

fn write_manifest(layout: &Layout, file: &str, text: &str) -> anyhow::Result<()> {
    sys::write_atomic(&layout.manifests().join(file), text.as_bytes())
}

fn spawn_agent(layout: &Layout, state: &LabState, node: &NodeState) -> anyhow::Result<i32> {
    let dir = layout.node_dir(&node.name);
    for d in [dir.join("run"), dir.join("data")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A previous agent's status must not pass for the new one's.
    sys::remove_file(&dir.join("run").join("status.json"))?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(agent_log(layout, &node.name))
        .context("opening the agent log")?;
    let datastore = match &state.control_plane {
        Some(cp) => kube::agent_datastore_args(cp),
        None => vec![format!("--datastore=dir:{}", layout.manifests().display())],
    };
    let child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&state.binaries.agent)
        .args(datastore)
        .arg(format!("--node-name={}", node.name))
        .arg(format!("--run-dir={}", dir.join("run").display()))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--metrics-addr={}", layout::METRICS_ADDR))
        .arg(format!("--bgp-port={}", layout::BGP_PORT))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal that ran `up`
        // does not stop the lab.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", state.binaries.agent.display()))?;
    Ok(child.id() as i32)
}

/// Starts the stand-in runtime of a node (`tabbyctl lab runtime`).
fn spawn_runtime(layout: &Layout, state: &LabState, node: &NodeState) -> anyhow::Result<i32> {
    let dir = layout.node_dir(&node.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("runtime.log"))
        .context("opening the runtime log")?;
    // In the node's network namespace but the host's mount namespace
    // (`ip netns exec` would give it a private one, and the pod namespaces
    // it makes would not be visible outside it).
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.netns))
        .arg(&state.binaries.tabbyctl)
        .args([
            "lab",
            "runtime",
            "--name",
            layout.name(),
            "--node",
            &node.name,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the node's runtime")?;
    Ok(child.id() as i32)
}

/// Fails with the agent's last log lines when its process is gone.
pub(crate) fn check_agent(layout: &Layout, node: &NodeState) -> anyhow::Result<()> {
    if sys::alive(node.agent_pid) {
        return Ok(());
    }
    let log = agent_log(layout, &node.name);
    bail!(
        "the agent of {} is not running; its log ({}):\n{}",
        node.name,
        log.display(),
        sys::log_tail(&log, 20)
    )
}

/// Waits until every agent is ready and every node has an Established
/// session with every other node.
fn wait_ready(layout: &Layout, state: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want_peers = state.nodes.len().saturating_sub(1);
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut pending = Vec::new();
        for node in &state.nodes {
            check_agent(layout, node)?;
            let status = agent_status(layout, &node.name);
            let ready = status.as_ref().is_some_and(|s| s["ready"] == true);
            let established = bgp_sessions(status.as_ref())
                .iter()
                .filter(|(_, _, s)| s == "Established")
                .count();
            if ready && established >= want_peers {
                if reported.insert(node.name.clone()) {
                    progress(
                        layout,
                        format!(
                            "{}: agent ready, {established} BGP session(s) up",
                            node.name
                        ),
                    );
                }
            } else {
                pending.push(format!(
                    "{} (ready: {ready}, BGP sessions up: {established}/{want_peers})",
                    node.name
                ));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let first = pending.first().cloned().unwrap_or_default();
            let node = first
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            bail!(
                "timed out after {}s waiting for {}; log of {node}:\n{}",
                timeout.as_secs(),
                pending.join(", "),
                sys::log_tail(&agent_log(layout, &node), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A manifest file's name (`-` for stdin) and text.
pub(crate) type Source = (String, String);

fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    for path in paths {
        out.push(if path == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading stdin")?;
            ("-".to_string(), s)
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        });
    }
    // Parsed before anything changes: a typo costs nothing.
    for (name, text) in &out {
        manifest::parse(name, text)?;
    }
    Ok(out)
}

fn parse_sources(sources: &[Source]) -> anyhow::Result<Vec<LabObject>> {
    let mut objects = Vec::new();
    for (name, text) in sources {
        objects.extend(manifest::parse(name, text)?);
    }
    Ok(objects)
}

/// `lab apply -f FILE...`.
pub fn apply(layout: &Layout, files: &[PathBuf], timeout: Duration) -> anyhow::Result<()> {
    let sources = read_sources(files)?;
    apply_sources(layout, &sources, timeout)
}

fn apply_sources(layout: &Layout, sources: &[Source], timeout: Duration) -> anyhow::Result<()> {
    let objects = parse_sources(sources)?;
    if read_state(layout)?.control_plane.is_some() {
        let _lock = lock(layout)?;
        let state = read_state(layout)?;
        return kube::apply(layout, &state, sources, &objects, timeout);
    }
    apply_objects(layout, objects, timeout)
}

fn known_namespaces(layout: &Layout) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(layout.manifests()) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(rest) = n.strip_prefix("namespace__")
                && let Some(ns) = rest.strip_suffix(".json")
            {
                out.insert(ns.to_string());
            }
        }
    }
    out
}

fn apply_objects(
    layout: &Layout,
    objects: Vec<LabObject>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let _lock = lock(layout)?;
    let state = read_state(layout)?;
    let pods = read_pods(layout)?;
    // Everything is checked before anything changes.
    let mut namespaces = known_namespaces(layout);
    // As in every cluster; the agents read their Secrets there.
    namespaces.insert("kube-system".to_string());
    for o in &objects {
        if let LabObject::Namespace(ns) = o {
            namespaces.insert(name_of(&ns.metadata).to_string());
        }
    }
    let nodes: BTreeSet<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
    for o in &objects {
        let meta = match o {
            LabObject::Pod(p) => &p.metadata,
            LabObject::NetworkPolicy(p) => &p.metadata,
            LabObject::Secret(p) => &p.metadata,
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
            let wanted = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if let Some(n) = wanted
                && !nodes.contains(n)
            {
                bail!(
                    "{}: spec.nodeName {n:?} is not a node of this lab ({})",
                    o.describe(),
                    nodes.iter().copied().collect::<Vec<_>>().join(", ")
                );
            }
            let key = (
                ns_of(&p.metadata).to_string(),
                name_of(&p.metadata).to_string(),
            );
            if let (Some(rec), Some(n)) = (pods.get(&key), wanted)
                && rec.node != n
            {
                bail!(
                    "{}: already running on {}; delete it before moving it to {n}",
                    o.describe(),
                    rec.node
                );
            }
            if let Some(rec) = pods.get(&key)
                && rec.host_network != is_host_network(p)
            {
                bail!(
                    "{}: spec.hostNetwork cannot change on a running pod; delete it first",
                    o.describe()
                );
            }
        }
    }

    // Namespaces, policies and BGP resources are files the agents read;
    // the pods then need wiring.
    let mut new_pods = Vec::new();
    for o in objects {
        match o {
            LabObject::Pod(p) => new_pods.push(*p),
            LabObject::Crd(name) => {
                out!("customresourcedefinition/{name} unchanged (built into the lab)");
            }
            other => {
                if let Some(file) = other.file_name() {
                    write_manifest(layout, &file, &other.to_json()?)?;
                    out!("{} applied", other.describe());
                }
            }
        }
    }
    let mut errors = Vec::new();
    let mut load: BTreeMap<String, usize> =
        state.nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    for rec in pods.values() {
        *load.entry(rec.node.clone()).or_default() += 1;
    }
    let mut to_create = Vec::new();
    for pod in new_pods {
        let key = (
            ns_of(&pod.metadata).to_string(),
            name_of(&pod.metadata).to_string(),
        );
        match pods.get(&key) {
            Some(rec) => match update_pod(layout, &state, rec, &pod) {
                Ok(()) => out!("Pod/{}/{} configured", key.0, key.1),
                Err(e) => errors.push(format!("Pod/{}/{}: {e:#}", key.0, key.1)),
            },
            None => {
                let node = match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    Some(n) => n,
                    None => load
                        .iter()
                        .min_by_key(|(name, count)| (**count, node_index(name)))
                        .map(|(n, _)| n.clone())
                        .context("the lab has no nodes")?,
                };
                *load.entry(node.clone()).or_default() += 1;
                to_create.push((pod, node));
            }
        }
    }
    let created = std::sync::Mutex::new(Vec::new());
    let queue = std::sync::Mutex::new(to_create.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_PODS {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some((pod, node)) = next else { break };
                    let what = format!("Pod/{}/{}", ns_of(&pod.metadata), name_of(&pod.metadata));
                    match create_pod(layout, &state, &pod, &node) {
                        Ok(rec) => {
                            out!("{what} created on {node} ({})", rec.ips.join(", "));
                            if let Ok(mut c) = created.lock() {
                                c.push(rec);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("{what}: {e:#}"));
                            }
                        }
                    }
                }
            });
        }
    });
    errors.extend(failures.into_inner().unwrap_or_default());
    barrier(layout, &state, timeout)?;
    if !errors.is_empty() {
        bail!("{} object(s) failed:\n{}", errors.len(), errors.join("\n"));
    }
    Ok(())
}

/// `spec.hostNetwork: true`.
fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

fn node_index(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// The Pod as the agents see it: on its node, with its addresses.
fn pod_manifest(pod: &Pod, rec: &PodRecord, host_ip: Ipv4Addr) -> anyhow::Result<String> {
    let mut pod = pod.clone();
    pod.metadata.namespace = Some(rec.namespace.clone());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(rec.node.clone());
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(host_ip.to_string()),
        pod_ip: rec.ips.first().cloned(),
        pod_ips: Some(rec.ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        ..PodStatus::default()
    });
    let mut v = serde_json::to_value(&pod)?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Pod".into();
    Ok(serde_json::to_string_pretty(&v)?)
}

fn node_of<'a>(state: &'a LabState, name: &str) -> anyhow::Result<&'a NodeState> {
    state
        .nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| anyhow!("no node {name:?} in this lab"))
}

pub(crate) fn create_pod(
    layout: &Layout,
    state: &LabState,
    pod: &Pod,
    node: &str,
) -> anyhow::Result<PodRecord> {
    let namespace = ns_of(&pod.metadata).to_string();
    let name = name_of(&pod.metadata).to_string();
    let node_state = node_of(state, node)?;
    if is_host_network(pod) {
        return create_host_network_pod(layout, state, pod, node_state);
    }
    let netns = layout.pod_netns(&namespace, &name);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut rec = PodRecord {
        namespace,
        name,
        node: node.to_string(),
        netns: netns.clone(),
        ips: Vec::new(),
        container_id: format!("lab{nanos:x}"),
        server_pid: None,
        ports: served_ports(pod).map_err(|e| anyhow!(e))?,
        host_network: false,
    };
    // A leftover of a crashed apply would make `ip netns add` fail.
    sys::delete_netns(&netns)?;
    sys::add_netns(&netns)?;
    let wired = cni(layout, state, node_state, "ADD", &rec).and_then(|result| {
        rec.ips = result_ips(&result);
        if rec.ips.is_empty() {
            bail!("the CNI result has no addresses: {result}");
        }
        if !rec.ports.is_empty() {
            rec.server_pid = Some(start_server(layout, state, &rec)?);
        }
        save_pod(layout, state, &rec, pod, node_state.ip)
    });
    if let Err(e) = wired {
        // Nothing half made: the plugin undoes its own partial ADD, and a
        // DEL releases whatever a completed one holds.
        if let Some(pid) = rec.server_pid {
            sys::stop_process(pid, Duration::from_secs(2));
        }
        let _ = cni(layout, state, node_state, "DEL", &rec);
        let _ = sys::delete_netns(&netns);
        let _ = sys::remove_file(&pod_record_path(layout, &rec.namespace, &rec.name));
        return Err(e);
    }
    Ok(rec)
}

/// A `hostNetwork` pod, as kubelet runs one: in the node's namespace with
/// the node's addresses; no namespace of its own and no CNI call. Its
/// ports are served in the node's namespace.
fn create_host_network_pod(
    layout: &Layout,
    state: &LabState,
    pod: &Pod,
    node: &NodeState,
) -> anyhow::Result<PodRecord> {
    let mut rec = PodRecord {
        namespace: ns_of(&pod.metadata).to_string(),
        name: name_of(&pod.metadata).to_string(),
        node: node.name.clone(),
        netns: node.netns.clone(),
        ips: vec![node.ip.to_string(), node.ipv6.to_string()],
        container_id: String::new(),
        server_pid: None,
        ports: served_ports(pod).map_err(|e| anyhow!(e))?,
        host_network: true,
    };
    if !rec.ports.is_empty() {
        rec.server_pid = Some(start_server(layout, state, &rec)?);
    }
    if let Err(e) = save_pod(layout, state, &rec, pod, node.ip) {
        if let Some(pid) = rec.server_pid {
            sys::stop_process(pid, Duration::from_secs(2));
        }
        let _ = sys::remove_file(&pod_record_path(layout, &rec.namespace, &rec.name));
        return Err(e);
    }
    Ok(rec)
}

fn update_pod(layout: &Layout, state: &LabState, rec: &PodRecord, pod: &Pod) -> anyhow::Result<()> {
    let ports = served_ports(pod).map_err(|e| anyhow!(e))?;
    let mut rec = rec.clone();
    if ports != rec.ports {
        if let Some(pid) = rec.server_pid.take() {
            sys::stop_process(pid, Duration::from_secs(2));
        }
        rec.ports = ports;
        if !rec.ports.is_empty() {
            rec.server_pid = Some(start_server(layout, state, &rec)?);
        }
    }
    save_pod(layout, state, &rec, pod, node_of(state, &rec.node)?.ip)
}

/// Writes the lab's record of a pod, then (`dir:` datastore) the Pod the
/// agents read; with a control plane the runtime patches the Pod's status.
fn save_pod(
    layout: &Layout,
    state: &LabState,
    rec: &PodRecord,
    pod: &Pod,
    host_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    sys::write_atomic(
        &pod_record_path(layout, &rec.namespace, &rec.name),
        serde_json::to_string_pretty(rec)?.as_bytes(),
    )?;
    if state.control_plane.is_some() {
        return Ok(());
    }
    write_manifest(
        layout,
        &object_file("pod", &rec.namespace, &rec.name),
        &pod_manifest(pod, rec, host_ip)?,
    )
}

/// The addresses of a CNI result (without prefix length).
fn result_ips(result: &serde_json::Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .filter_map(|a| a.split('/').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the plugin in the node's namespace as kubelet would.
fn cni(
    layout: &Layout,
    state: &LabState,
    node: &NodeState,
    command: &str,
    rec: &PodRecord,
) -> anyhow::Result<serde_json::Value> {
    let run = layout.node_dir(&node.name).join("run");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tabby-lab",
        "type": "tabby",
        "dataDir": layout.node_dir(&node.name).join("data"),
        "runDir": run,
        "agentSocket": run.join("agent.sock"),
        "ipam": {"type": "tabby-ipam"},
    });
    let cni_path = state
        .binaries
        .tabby
        .parent()
        .map(|p| format!("{}:/usr/lib/cni:/opt/cni/bin", p.display()))
        .unwrap_or_default();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.netns])
        .arg(&state.binaries.tabby)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &rec.container_id)
        .env("CNI_NETNS", format!("/run/netns/{}", rec.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                rec.namespace, rec.name, rec.container_id
            ),
        );
    let out = sys::run_with_input(&mut cmd, conf.to_string().as_bytes(), "the tabby plugin")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        bail!(
            "CNI {command} failed: {} {} (code {}){}",
            err["msg"].as_str().unwrap_or("no error object"),
            err["details"].as_str().unwrap_or_default(),
            err["code"],
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => String::new(),
                s => format!("; stderr: {s}"),
            }
        );
    }
    if stdout.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&stdout).context("parsing the CNI result")
}

/// Starts `tabbyctl lab serve` for a pod and waits until it listens.
fn start_server(layout: &Layout, state: &LabState, rec: &PodRecord) -> anyhow::Result<i32> {
    let log_path = layout
        .pods_dir()
        .join(format!("{}_{}.log", rec.namespace, rec.name));
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .context("opening the pod's log")?;
    let mut cmd = Command::new(&state.binaries.tabbyctl);
    cmd.args(["lab", "serve", "--netns"])
        .arg(format!("/run/netns/{}", rec.netns));
    for p in &rec.ports {
        cmd.arg("--port")
            .arg(format!("{}/{}", p.port, if p.udp { "UDP" } else { "TCP" }));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the pod's port server")?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line.trim() == serve::READY => Ok(pid),
        _ => {
            sys::stop_process(pid, Duration::from_secs(1));
            bail!(
                "the port server did not start: {}",
                sys::log_tail(&log_path, 5)
            )
        }
    }
}

/// Bumps the datastore barrier and waits until every agent has programmed
/// everything written before it.
fn barrier(layout: &Layout, state: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let path = layout.manifests().join(".barrier");
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    sys::write_atomic(&path, format!("{n}\n").as_bytes())?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for node in &state.nodes {
            check_agent(layout, node)?;
            let done = agent_status(layout, &node.name)
                .and_then(|s| s["barrier"].as_u64())
                .unwrap_or(0);
            if done < n {
                behind.push(node.name.clone());
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s: {} did not program the change; see {}",
                timeout.as_secs(),
                behind.join(", "),
                agent_log(layout, &behind[0]).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lab delete -f FILE...`.
pub fn delete(layout: &Layout, files: &[PathBuf], timeout: Duration) -> anyhow::Result<()> {
    let sources = read_sources(files)?;
    let objects = parse_sources(&sources)?;
    let _lock = lock(layout)?;
    let state = read_state(layout)?;
    if state.control_plane.is_some() {
        return kube::delete(layout, &state, &sources, timeout);
    }
    let pods = read_pods(layout)?;
    let mut errors = Vec::new();
    let mut pod_keys = BTreeSet::new();
    let mut files_gone = Vec::new();
    for o in &objects {
        match o {
            LabObject::Pod(p) => {
                pod_keys.insert((
                    ns_of(&p.metadata).to_string(),
                    name_of(&p.metadata).to_string(),
                ));
            }
            LabObject::Namespace(ns) => {
                // As in Kubernetes, a namespace takes its contents along.
                let name = name_of(&ns.metadata);
                pod_keys.extend(pods.keys().filter(|(n, _)| n == name).cloned());
                if let Ok(entries) = std::fs::read_dir(layout.manifests()) {
                    for e in entries.flatten() {
                        let f = e.file_name().to_string_lossy().to_string();
                        if f.starts_with(&format!("networkpolicy_{name}_")) {
                            files_gone.push((f.clone(), format!("NetworkPolicy in {name}")));
                        }
                    }
                }
                files_gone.push((o.file_name().unwrap_or_default(), o.describe()));
            }
            LabObject::Crd(_) => {}
            other => files_gone.push((other.file_name().unwrap_or_default(), other.describe())),
        }
    }
    for key in &pod_keys {
        match pods.get(key) {
            Some(rec) => match delete_pod(layout, &state, rec) {
                Ok(()) => out!("Pod/{}/{} deleted", key.0, key.1),
                Err(e) => errors.push(format!("Pod/{}/{}: {e:#}", key.0, key.1)),
            },
            None => eprintln!("Pod/{}/{} not found", key.0, key.1),
        }
    }
    for (file, what) in files_gone {
        let path = layout.manifests().join(&file);
        if path.exists() {
            sys::remove_file(&path)?;
            out!("{what} deleted");
        } else {
            eprintln!("{what} not found");
        }
    }
    barrier(layout, &state, timeout)?;
    if !errors.is_empty() {
        bail!("{} object(s) failed:\n{}", errors.len(), errors.join("\n"));
    }
    Ok(())
}

pub(crate) fn delete_pod(layout: &Layout, state: &LabState, rec: &PodRecord) -> anyhow::Result<()> {
    if let Some(pid) = rec.server_pid {
        sys::stop_process(pid, Duration::from_secs(2));
    }
    // A hostNetwork pod's namespace is its node's: nothing to undo there.
    if !rec.host_network {
        let node = node_of(state, &rec.node)?;
        cni(layout, state, node, "DEL", rec)?;
        sys::delete_netns(&rec.netns)?;
    }
    sys::remove_file(
        &layout
            .manifests()
            .join(object_file("pod", &rec.namespace, &rec.name)),
    )?;
    sys::remove_file(&pod_record_path(layout, &rec.namespace, &rec.name))?;
    sys::remove_file(
        &layout
            .pods_dir()
            .join(format!("{}_{}.log", rec.namespace, rec.name)),
    )?;
    Ok(())
}

/// `lab restart --node NODE`: stops the node's agent as an upgrade would
/// (SIGTERM: its dataplane and routes stay, BGP peers keep its routes) and
/// starts a new one, then waits until the lab is ready again.
pub fn restart(layout: &Layout, node: &str, timeout: Duration) -> anyhow::Result<()> {
    let _lock = lock(layout)?;
    let mut state = read_state(layout)?;
    let idx = state
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| anyhow!("no node {node:?} in lab {:?}", layout.name()))?;
    let old = state.nodes[idx].agent_pid;
    progress(layout, format!("{node}: stopping the agent (pid {old})"));
    sys::stop_process(old, Duration::from_secs(20));
    let pid = spawn_agent(layout, &state, &state.nodes[idx])?;
    state.nodes[idx].agent_pid = pid;
    write_state(layout, &state)?;
    progress(layout, format!("{node}: agent restarted (pid {pid})"));
    wait_ready(layout, &state, timeout)
}

/// `lab restart-control-plane --component C` (hidden; for tests).
pub fn restart_control_plane(
    layout: &Layout,
    component: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let _lock = lock(layout)?;
    let mut state = read_state(layout)?;
    kube::restart_component(layout, &mut state, component, timeout)
}

/// `lab down`.
pub fn down(layout: &Layout) -> anyhow::Result<()> {
    let _lock = lock(layout)?;
    let existed = layout.dir().exists() || !sys::netns_with_prefix(&layout.prefix()).is_empty();
    teardown(layout)?;
    if existed {
        progress(layout, "down: every namespace, process and file removed");
    } else {
        progress(layout, "nothing to remove");
    }
    let _ = std::fs::remove_file(layout.lock_file());
    Ok(())
}

/// Removes everything of the lab: processes, namespaces, files.
fn teardown(layout: &Layout) -> anyhow::Result<()> {
    // Processes recorded but perhaps outside the namespaces (a server that
    // failed to enter its pod) go first, checked by name so that a reused
    // pid is never killed.
    let mut pids = Vec::new();
    let mut control_plane = None;
    if let Ok(state) = read_state(layout) {
        pids.extend(state.nodes.iter().map(|n| n.runtime_pid));
        pids.extend(state.nodes.iter().map(|n| n.agent_pid));
        control_plane = state.control_plane;
    }
    if let Ok(pods) = read_pods(layout) {
        pids.extend(pods.values().filter_map(|p| p.server_pid));
    }
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let ours = cmdline.contains(&layout.prefix())
            || cmdline.contains(&*layout.dir().to_string_lossy());
        if pid > 0 && ours {
            sys::stop_process(pid, Duration::from_secs(5));
        }
    }
    if let Some(cp) = &control_plane {
        kube::stop(layout, cp);
    }
    // Pods first (their veths' host ends live in the nodes), then nodes,
    // then the fabric.
    let all = sys::netns_with_prefix(&layout.prefix());
    let fabric = layout.fabric_netns();
    let pod_prefix = format!("{}pod.", layout.prefix());
    let (pods, rest): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|n| n.starts_with(&pod_prefix));
    let (fabric_ns, nodes): (Vec<String>, Vec<String>) =
        rest.into_iter().partition(|n| *n == fabric);
    for ns in pods.iter().chain(&nodes).chain(&fabric_ns) {
        sys::delete_netns(ns).with_context(|| format!("deleting namespace {ns}"))?;
    }
    let dir = layout.dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// `lab status`.
pub fn status(layout: &Layout, json: bool) -> anyhow::Result<()> {
    let state = read_state(layout)?;
    let pods = read_pods(layout)?;
    let nodes: Vec<serde_json::Value> = state
        .nodes
        .iter()
        .map(|n| {
            let st = agent_status(layout, &n.name);
            let ready = sys::alive(n.agent_pid)
                && st.as_ref().is_some_and(|s| s["ready"] == true);
            serde_json::json!({
                "name": n.name,
                "netns": n.netns,
                "ip": n.ip.to_string(),
                "podCIDRs": n.pod_cidrs,
                "ready": ready,
                "bgpSessions": bgp_sessions(st.as_ref())
                    .into_iter()
                    .map(|(peer, asn, state)| serde_json::json!({"peer": peer, "asn": asn, "state": state}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let pods_json: Vec<serde_json::Value> = pods
        .values()
        .map(|p| {
            serde_json::json!({
                "namespace": p.namespace,
                "name": p.name,
                "node": p.node,
                "netns": p.netns,
                "ips": p.ips,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "name": layout.name(),
        "fabric": {
            "netns": layout.fabric_netns(),
            "bridge": layout::BRIDGE,
            "subnet": layout::fabric_subnet(),
        },
        "nodes": nodes,
        "pods": pods_json,
        "controlPlane": match &state.control_plane {
            Some(cp) => serde_json::json!({
                "kind": "kubernetes",
                "apiserver": cp.apiserver,
                "kubeconfig": cp.kubeconfig,
            }),
            None => serde_json::json!({"kind": "dir"}),
        },
    });
    if json {
        out!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    out!(
        "lab {}: fabric {} (bridge {}, {})",
        layout.name(),
        layout.fabric_netns(),
        layout::BRIDGE,
        layout::fabric_subnet()
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "NETNS".into(),
        "IP".into(),
        "POD CIDRS".into(),
        "READY".into(),
        "BGP".into(),
    ]];
    for n in &nodes {
        let sessions: Vec<String> = n["bgpSessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {}",
                    s["peer"].as_str().unwrap_or_default(),
                    s["state"].as_str().unwrap_or_default()
                )
            })
            .collect();
        rows.push(vec![
            n["name"].as_str().unwrap_or_default().into(),
            n["netns"].as_str().unwrap_or_default().into(),
            n["ip"].as_str().unwrap_or_default().into(),
            n["podCIDRs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(","),
            n["ready"].to_string(),
            sessions.join(", "),
        ]);
    }
    print_table(&rows);
    out!();
    let mut rows = vec![vec![
        "NAMESPACE".to_string(),
        "POD".into(),
        "NODE".into(),
        "IPS".into(),
        "NETNS".into(),
    ]];
    for p in pods.values() {
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            p.node.clone(),
            p.ips.join(","),
            p.netns.clone(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Rows as aligned columns, one line each.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn print_table(rows: &[Vec<String>]) {
    out!("{}", table(rows).trim_end_matches('\n'));
}

/// The pods of a running lab, for `probe`.
pub fn pods_of(layout: &Layout) -> anyhow::Result<Vec<PodRecord>> {
    read_state(layout)?;
    Ok(read_pods(layout)?.into_values().collect())
}
