//! `tabbyctl`: tabby's admin CLI. `tabbyctl lab` builds a multi-node tabby
//! cluster on one Linux machine from network namespaces and runs the real
//! binaries in it.

/// Prints a line on stdout; a closed pipe (`| head`) is not an error.
macro_rules! out {
    () => { out!("") };
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Prints on stdout without a newline; a closed pipe is not an error.
macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

mod lab;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};

use lab::layout::Layout;

/// tabby's admin CLI.
#[derive(Debug, Parser)]
#[command(name = "tabbyctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// A multi-node tabby cluster made of network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
enum Protocol {
    Tcp,
    Udp,
}

/// What `apply` and `delete` take.
#[derive(Debug, clap::Args)]
struct ChangeArgs {
    /// The lab's name.
    #[arg(long, default_value = "tabby")]
    name: String,
    /// Multi-document YAML files (`-` for stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Seconds to wait for every agent to program the change.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Build the fabric and the nodes, start the agents, wait for BGP.
    Up {
        /// The lab's name (its namespaces are named `tl.<name>.*`).
        #[arg(long, default_value = "tabby")]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The agents' dataplane.
        #[arg(long, default_value = "nftables")]
        dataplane: String,
        /// Manifests to apply once the lab is up.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Where `tabby` and `tabby-agent` are (default: next to tabbyctl).
        #[arg(long, env = "TABBY_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Seconds to wait for the agents and BGP.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Run a real Kubernetes control plane (etcd, kube-apiserver,
        /// kube-controller-manager, kube-scheduler) as the agents' datastore.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Run the real kubectl against a `--kubernetes` lab.
    Kubectl {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// kubectl's arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Create or update Namespaces, Pods, NetworkPolicies and tabby CRDs.
    Apply(ChangeArgs),
    /// Delete the objects of the files (pods get CNI DEL).
    Delete(ChangeArgs),
    /// The fabric, the nodes with their BGP sessions, and the pods.
    Status {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Connect from pods to pods (all pairs by default) and show what works.
    Probe {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// Destination port.
        #[arg(long)]
        port: u16,
        /// TCP or UDP.
        #[arg(long, value_enum, default_value = "TCP")]
        protocol: Protocol,
        /// Source pods, `NS/POD` (or `NS` for all its pods); default all.
        #[arg(long)]
        from: Vec<String>,
        /// Destination pods, `NS/POD` (or `NS`); default all.
        #[arg(long)]
        to: Vec<String>,
        /// How long one connection may take.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Restart one node's agent (as an upgrade would) and wait until it is ready.
    Restart {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// The node.
        #[arg(long)]
        node: String,
        /// Seconds to wait for the agent and its BGP sessions.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop everything and delete every namespace, process and file of the lab.
    Down {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
    },
    /// (internal) Restart a control-plane component (etcd, kube-apiserver).
    #[command(hide = true)]
    RestartControlPlane {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// The component.
        #[arg(long)]
        component: String,
        /// Seconds to wait for the API server.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// (internal) The stand-in for kubelet on one node of a `--kubernetes` lab.
    #[command(hide = true)]
    Runtime {
        /// The lab's name.
        #[arg(long, default_value = "tabby")]
        name: String,
        /// The node.
        #[arg(long)]
        node: String,
    },
    /// (internal) Serve a pod's ports inside its namespace.
    #[command(hide = true)]
    Serve {
        /// The pod's namespace file.
        #[arg(long)]
        netns: PathBuf,
        /// `PORT/TCP` or `PORT/UDP`.
        #[arg(long = "port")]
        ports: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn selected(
    pods: &[lab::probe::Endpoint],
    filters: &[String],
) -> anyhow::Result<Vec<lab::probe::Endpoint>> {
    if filters.is_empty() {
        return Ok(pods.to_vec());
    }
    let mut out = Vec::new();
    for f in filters {
        let before = out.len();
        out.extend(
            pods.iter()
                .filter(|p| match f.split_once('/') {
                    Some(_) => p.id == *f,
                    None => p.id.split_once('/').is_some_and(|(ns, _)| ns == f),
                })
                .cloned(),
        );
        if out.len() == before {
            bail!("no pod matches {f:?} (use NS/POD or NS)");
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Top::Lab { command } = cli.command;
    match command {
        LabCmd::Up {
            name,
            nodes,
            dataplane,
            files,
            bin_dir,
            timeout,
            kubernetes,
        } => lab::up(
            &Layout::new(&name)?,
            &lab::UpOptions {
                nodes,
                dataplane,
                files,
                bin_dir,
                timeout: Duration::from_secs(timeout),
                kubernetes,
            },
        ),
        LabCmd::Kubectl { name, args } => {
            let code = lab::kube::run_kubectl(&Layout::new(&name)?, &args)?;
            std::process::exit(code);
        }
        LabCmd::RestartControlPlane {
            name,
            component,
            timeout,
        } => lab::restart_control_plane(
            &Layout::new(&name)?,
            &component,
            Duration::from_secs(timeout),
        ),
        LabCmd::Runtime { name, node } => lab::runtime::run(&Layout::new(&name)?, &node),
        LabCmd::Apply(a) => lab::apply(
            &Layout::new(&a.name)?,
            &a.files,
            Duration::from_secs(a.timeout),
        ),
        LabCmd::Delete(a) => lab::delete(
            &Layout::new(&a.name)?,
            &a.files,
            Duration::from_secs(a.timeout),
        ),
        LabCmd::Status { name, output } => {
            lab::status(&Layout::new(&name)?, output == Output::Json)
        }
        LabCmd::Probe {
            name,
            port,
            protocol,
            from,
            to,
            timeout_ms,
            output,
        } => {
            if port == 0 {
                bail!("--port must be 1-65535");
            }
            let layout = Layout::new(&name)?;
            let pods = lab::pods_of(&layout)?
                .iter()
                .map(lab::probe::Endpoint::of)
                .collect::<anyhow::Result<Vec<_>>>()?;
            if pods.is_empty() {
                bail!("lab {name:?} has no pods to probe");
            }
            let (udp, proto) = match protocol {
                Protocol::Tcp => (false, "TCP"),
                Protocol::Udp => (true, "UDP"),
            };
            let matrix = lab::probe::run(
                &selected(&pods, &from)?,
                &selected(&pods, &to)?,
                port,
                udp,
                Duration::from_millis(timeout_ms),
            )?;
            match output {
                Output::Json => out!(
                    "{}",
                    serde_json::to_string_pretty(&lab::probe::to_json(&matrix, port, proto))?
                ),
                Output::Table => out_raw!("{}", lab::probe::render(&matrix, port, proto)),
            }
            Ok(())
        }
        LabCmd::Restart {
            name,
            node,
            timeout,
        } => lab::restart(&Layout::new(&name)?, &node, Duration::from_secs(timeout)),
        LabCmd::Down { name } => lab::down(&Layout::new(&name)?),
        LabCmd::Serve { netns, ports } => {
            let ports = ports
                .iter()
                .map(|p| lab::serve::parse_port(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            lab::serve::serve(&netns, &ports)
        }
    }
}
