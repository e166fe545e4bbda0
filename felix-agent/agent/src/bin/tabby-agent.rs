//! `tabby-agent`: the per-node daemon. Watches the datastore, programs
//! NetworkPolicy into nftables and tabby's routes, and answers the CNI
//! plugin once a new pod's policy is live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use tabby_agent::agent::{self, Agent, AgentConfig};
use tabby_agent::datastore::dir::DirDatastore;
use tabby_agent::datastore::kube::KubeDatastore;
use tabby_agent::metrics::Metrics;
use tabby_agent::server;
use tabby_common::agent::CniSettings;
use tracing::info;

/// The tabby node agent.
#[derive(Debug, Parser)]
#[command(name = "tabby-agent", version)]
struct Args {
    /// `kubernetes` (in-cluster, or --kubeconfig) or `dir:PATH` (a directory of manifests).
    #[arg(long, default_value = "kubernetes")]
    datastore: String,
    /// Kubeconfig file for the kubernetes datastore (default: in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the CNI plugin writes endpoint records; the socket is `<run-dir>/agent.sock`.
    #[arg(long, default_value = "/run/tabby")]
    run_dir: PathBuf,
    /// Where the blocks file for tabby-ipam is written.
    #[arg(long, default_value = "/var/lib/tabby")]
    data_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9099")]
    metrics_addr: SocketAddr,
    /// How long the CNI plugin waits for this agent on ADD, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    cni_timeout_ms: u64,
    /// Let pods start when the agent does not answer in time (default: fail closed).
    #[arg(long)]
    cni_fail_open: bool,
    /// Run without BGP (no routes to other nodes' pods).
    #[arg(long)]
    no_bgp: bool,
    /// TCP port of the BGP full mesh.
    #[arg(long, default_value_t = 179)]
    bgp_port: u16,
    /// This node's AS (until a BGPConfiguration says otherwise).
    #[arg(long, default_value_t = tabby_agent::bgp::DEFAULT_ASN)]
    bgp_asn: u32,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
                .context("connecting to the Kubernetes API")?;
            tokio::spawn(ds.run(ev_tx));
        }
        other => match other.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => {
                tokio::spawn(DirDatastore::new(path).run(ev_tx));
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
    tokio::spawn(server::serve_cni(listener, req_tx));
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

    let agent = Agent::new(
        AgentConfig {
            node_name: args.node_name,
            run_dir: args.run_dir.clone(),
            data_dir: args.data_dir,
            bgp_port: (!args.no_bgp).then_some(args.bgp_port),
            asn: args.bgp_asn,
        },
        metrics,
    );
    agent::run(agent, ev_rx, req_rx, stop_rx).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
