//! `tabby-agent`: the per-node daemon. Watches the datastore, programs
//! NetworkPolicy into nftables and tabby's routes, and answers the CNI
//! plugin once a new pod's policy is live.
//!
//! `tabby-agent install-cni` is the DaemonSet's init container: it installs
//! the plugin and its conflist on the node, then exits. Without a
//! subcommand the binary runs the agent, with the same flags as ever.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args as _, CommandFactory, FromArgMatches, Parser};
use tabby_agent::agent::{self, AgentConfig};
use tabby_agent::datastore::dir::DirDatastore;
use tabby_agent::datastore::kube::KubeDatastore;
use tabby_agent::install::{self, InstallConfig, Outcome};
use tabby_agent::metrics::Metrics;
use tabby_agent::node_status;
use tabby_agent::server;
use tabby_common::agent::CniSettings;
use tracing::info;

/// The tabby node agent.
#[derive(Debug, Parser)]
#[command(name = "tabby-agent", version)]
struct Args {
    /// `kubernetes` (in-cluster, or --kubeconfig) or `dir:PATH` (a directory of manifests).
    #[arg(long, env = "TABBY_DATASTORE", default_value = "kubernetes")]
    datastore: String,
    /// Kubeconfig file for the kubernetes datastore (default: in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the CNI plugin writes endpoint records; the socket is `<run-dir>/agent.sock`.
    #[arg(long, env = "TABBY_RUN_DIR", default_value = "/run/tabby")]
    run_dir: PathBuf,
    /// Where the blocks file for tabby-ipam is written.
    #[arg(long, env = "TABBY_DATA_DIR", default_value = "/var/lib/tabby")]
    data_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TABBY_METRICS_ADDR", default_value = "0.0.0.0:9099")]
    metrics_addr: SocketAddr,
    /// How long the CNI plugin waits for this agent on ADD, in milliseconds.
    #[arg(long, env = "TABBY_CNI_TIMEOUT_MS", default_value_t = 10_000)]
    cni_timeout_ms: u64,
    /// Let pods start when the agent does not answer in time (default: fail closed).
    #[arg(long, env = "TABBY_CNI_FAIL_OPEN")]
    cni_fail_open: bool,
    /// Run without BGP (no routes to other nodes' pods).
    #[arg(long, env = "TABBY_NO_BGP")]
    no_bgp: bool,
    /// TCP port of the BGP full mesh.
    #[arg(long, env = "TABBY_BGP_PORT", default_value_t = 179)]
    bgp_port: u16,
    /// This node's AS (until a BGPConfiguration says otherwise).
    #[arg(long, env = "TABBY_BGP_ASN", default_value_t = tabby_agent::bgp::DEFAULT_ASN)]
    bgp_asn: u32,
    /// The agent's namespace: BGPPeers' `spec.password.secretKeyRef` name Secrets there
    /// (default: the service account's in a cluster, `kube-system` with `dir:`).
    #[arg(long, env = "TABBY_NAMESPACE")]
    namespace: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TABBY_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Install the tabby plugin and 10-tabby.conflist on this node (the DaemonSet's init container), then exit.
#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// The plugin binary to install (in the image).
    #[arg(long, env = "TABBY_PLUGIN", default_value = "/usr/local/bin/tabby")]
    plugin: PathBuf,
    /// The runtime's CNI bin directory (host mount).
    #[arg(long, env = "TABBY_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The runtime's CNI configuration directory (host mount).
    #[arg(long, env = "TABBY_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The agent's run directory; the plugin is told `<run-dir>/agent.sock`.
    #[arg(long, env = "TABBY_RUN_DIR", default_value = "/run/tabby")]
    run_dir: PathBuf,
    /// The plugin's data directory (IPAM state, the agent's blocks file).
    #[arg(long, env = "TABBY_DATA_DIR", default_value = "/var/lib/tabby")]
    data_dir: PathBuf,
    /// The pods' MTU (default: the plugin detects the uplink's).
    #[arg(long, env = "TABBY_MTU")]
    mtu: Option<u32>,
    /// The network name in the conflist.
    #[arg(long, env = "TABBY_NETWORK_NAME", default_value = "tabby")]
    network_name: String,
    /// Do not chain the reference `portmap` plugin (no hostPort support).
    #[arg(long, env = "TABBY_NO_PORTMAP")]
    no_portmap: bool,
}

/// The subcommand's name.
const INSTALL_CNI: &str = "install-cni";

/// The agent's flags at the top level (so `tabby-agent --flags` runs the
/// agent as before) plus the `install-cni` subcommand.
fn cli() -> clap::Command {
    Args::command()
        // The agent's required --node-name is not required by a subcommand,
        // and agent flags cannot be mixed with one.
        .subcommand_negates_reqs(true)
        .args_conflicts_with_subcommands(true)
        .subcommand(InstallArgs::augment_args(clap::Command::new(INSTALL_CNI)))
}

fn main() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    if let Some(sub) = matches.subcommand_matches(INSTALL_CNI) {
        let args = InstallArgs::from_arg_matches(sub).unwrap_or_else(|e| e.exit());
        return install_cni(args);
    }
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(
            std::env::var("TABBY_LOG")
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or(tracing::Level::INFO),
        );
    match args.log_format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.with_ansi(false).init(),
        other => bail!("unknown --log-format {other:?} (text or json)"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    info!(node = %args.node_name, datastore = %args.datastore, "tabby-agent starting");
    let metrics = Arc::new(Metrics::default());
    let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(1024);
    match args.datastore.as_str() {
        "kubernetes" => {
            let ds = KubeDatastore::connect(args.kubeconfig.as_deref())
                .await
                .context("connecting to the Kubernetes API")?
                .with_metrics(metrics.clone())
                .with_namespace(args.namespace.clone());
            // The Node's NetworkUnavailable condition follows what the
            // datastore shows of this node, on the way to the agent.
            let (ds_tx, ds_rx) = tokio::sync::mpsc::channel(1024);
            let (seen_tx, seen_rx) = tokio::sync::watch::channel(node_status::Seen::NotYet);
            let client = ds.client();
            tokio::spawn(ds.run(ds_tx));
            tokio::spawn(node_status::tee_own_node(
                args.node_name.clone(),
                ds_rx,
                ev_tx,
                seen_tx,
            ));
            tokio::spawn(node_status::run(
                client,
                args.node_name.clone(),
                metrics.network_ready(),
                seen_rx,
            ));
        }
        other => match other.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => {
                let mut ds = DirDatastore::new(path).with_metrics(metrics.clone());
                if let Some(ns) = &args.namespace {
                    ds = ds.with_namespace(ns.clone());
                }
                tokio::spawn(ds.run(ev_tx));
            }
            _ => bail!("--datastore must be `kubernetes` or `dir:PATH`, not {other:?}"),
        },
    }

    CniSettings {
        timeout_ms: args.cni_timeout_ms,
        fail_open: args.cni_fail_open,
    }
    .write(&args.run_dir)
    .with_context(|| format!("writing the CNI settings under {}", args.run_dir.display()))?;
    let socket = args.run_dir.join("agent.sock");
    let listener = server::bind_cni_socket(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(server::serve_cni(listener, req_tx, metrics.clone()));
    let http = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tokio::spawn(server::serve_http(http, metrics.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });

    let cfg = AgentConfig {
        node_name: args.node_name,
        run_dir: args.run_dir.clone(),
        data_dir: args.data_dir,
        bgp_port: (!args.no_bgp).then_some(args.bgp_port),
        asn: args.bgp_asn,
    };
    agent::run(cfg, metrics, ev_rx, req_rx, stop_rx).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn install_cni(args: InstallArgs) -> anyhow::Result<()> {
    let cfg = InstallConfig {
        plugin: args.plugin,
        cni_bin_dir: args.cni_bin_dir,
        cni_conf_dir: args.cni_conf_dir,
        run_dir: args.run_dir,
        data_dir: args.data_dir,
        mtu: args.mtu,
        network_name: args.network_name,
        portmap: !args.no_portmap,
    };
    let report = install::install(&cfg).context("installing the CNI plugin")?;
    // One line per file on stderr: the init container's log says what it changed.
    for (path, outcome) in [
        (&report.plugin_path, report.plugin),
        (&report.conflist_path, report.conflist),
    ] {
        let what = match outcome {
            Outcome::Written => "installed",
            Outcome::Unchanged => "unchanged",
        };
        eprintln!("tabby-agent install-cni: {what} {}", path.display());
    }
    Ok(())
}
