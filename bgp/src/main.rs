//! `tabby-bgp`: the speaker as a standalone route server / test peer.
//!
//! - `tabby-bgp run --config FILE [--no-fib] [--control-socket PATH]` runs
//!   the speaker in the current network namespace and installs learned
//!   routes into the kernel.
//! - `tabby-bgp status --socket PATH [-o table|json]` prints sessions.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tabby_bgp::config::Config;
use tabby_bgp::fib::FibInstaller;
use tabby_bgp::speaker::{RibEvent, Speaker, SpeakerHandle, Status};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "tabby-bgp", about = "tabby's BGP speaker, standalone")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the speaker in the current network namespace.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Do not install learned routes into the kernel.
        #[arg(long)]
        no_fib: bool,
        /// Control socket path (overrides `control_socket`).
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Print the sessions of a running speaker.
    Status {
        /// Control socket of the running speaker.
        #[arg(long)]
        socket: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG is a plain level here (error, warn, info, debug, trace).
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Run {
            config,
            no_fib,
            control_socket,
        } => run(config, no_fib, control_socket),
        Cmd::Status { socket, output } => status(socket, output),
    }
}

fn status(socket: PathBuf, output: Output) -> anyhow::Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let st: Status = serde_json::from_str(&line).context("parsing the speaker's answer")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        Output::Table => print!("{}", table(&st)),
    }
    Ok(())
}

fn table(st: &Status) -> String {
    let mut out = format!(
        "router id {}  AS {}  Loc-RIB {} prefixes  {}\n",
        st.router_id,
        st.asn,
        st.loc_rib_prefixes,
        if st.synced { "synced" } else { "converging" }
    );
    out.push_str(&format!(
        "{:<40} {:>10} {:<12} {:<9} {:>8} {:>9} {:>9} {:>10}  {}\n",
        "PEER", "AS", "STATE", "BFD", "UPTIME", "RECEIVED", "ACCEPTED", "ADVERTISED", "LAST ERROR"
    ));
    for p in &st.peers {
        let up = p
            .uptime_secs
            .map(|s| format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60))
            .unwrap_or_else(|| "-".into());
        let bfd = p
            .bfd
            .map(|b| b.state.to_string())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<40} {:>10} {:<12} {:<9} {:>8} {:>9} {:>9} {:>10}  {}\n",
            p.address,
            p.asn,
            p.state.to_string(),
            bfd,
            up,
            p.received,
            p.accepted,
            p.advertised,
            p.last_error.as_deref().unwrap_or("")
        ));
    }
    out
}

fn run(path: PathBuf, no_fib: bool, control_socket: Option<PathBuf>) -> anyhow::Result<()> {
    let mut cfg = Config::load(&path)?;
    if control_socket.is_some() {
        cfg.control_socket = control_socket;
    }
    let fib = if cfg.fib.enabled && !no_fib {
        let f = FibInstaller::with_metric(cfg.fib.protocol, cfg.fib.table, cfg.fib.metric)
            .context("opening the kernel route installer")?;
        if f.leftovers() > 0 && cfg.graceful_restart.enabled {
            info!(
                routes = f.leftovers(),
                "found our routes in the kernel: restarting gracefully"
            );
            cfg.graceful_restart.restarting = true;
        }
        Some(f)
    } else {
        None
    };
    // One thread is plenty for a route server and keeps RSS small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, fib))
}

async fn serve(cfg: Config, fib: Option<FibInstaller>) -> anyhow::Result<()> {
    let graceful = cfg.graceful_restart.enabled;
    let socket = cfg.control_socket.clone();
    let socket_path = socket.clone();
    let handle = Speaker::start(cfg).await?;
    let installer = match fib {
        Some(f) => {
            let rx = handle.subscribe_routes()?;
            Some(std::thread::spawn(move || install_loop(f, rx, graceful)))
        }
        None => None,
    };
    if let Some(path) = socket {
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        tokio::spawn(control_loop(l, handle.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!(graceful, "stopping");
    handle.shutdown(graceful).await?;
    drop(handle);
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    if let Some(t) = installer
        && t.join().is_err()
    {
        error!("route installer thread panicked");
    }
    Ok(())
}

/// Applies route events as they come, in batches: everything queued is
/// merged into one netlink batch.
fn install_loop(
    mut fib: FibInstaller,
    mut rx: tokio::sync::mpsc::Receiver<RibEvent>,
    graceful: bool,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut changes = Vec::new();
        let mut synced = false;
        let mut ev = Some(first);
        while let Some(e) = ev {
            match e {
                RibEvent::Routes(c) => changes.extend(c),
                RibEvent::Synced => synced = true,
            }
            // Bounded batches keep the peak memory small when the kernel
            // is slower than the speaker.
            ev = if changes.len() < 4096 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        match fib.apply(&changes) {
            Ok(r) => {
                for (p, e) in r.failed.iter().take(5) {
                    warn!(prefix = %p, error = %e, "kernel refused route");
                }
            }
            Err(e) => error!(error = %e, "route installation failed"),
        }
        if synced {
            match fib.sweep_leftovers() {
                Ok(r) if r.removed > 0 => info!(removed = r.removed, "removed stale kernel routes"),
                Ok(_) => {}
                Err(e) => error!(error = %e, "removing stale kernel routes failed"),
            }
        }
    }
    // The speaker stopped. Without graceful restart nobody will refresh our
    // routes: remove them.
    if !graceful && let Err(e) = fib.remove_all() {
        error!(error = %e, "removing our kernel routes failed");
    }
}

async fn control_loop(l: tokio::net::UnixListener, handle: SpeakerHandle) {
    while let Ok((s, _)) = l.accept().await {
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.trim() {
                    "status" => match handle.status().await {
                        Ok(st) => serde_json::to_string(&st).unwrap_or_default(),
                        Err(e) => format!("{{\"error\":\"{e}\"}}"),
                    },
                    other => format!("{{\"error\":\"unknown command {other:?}\"}}"),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
