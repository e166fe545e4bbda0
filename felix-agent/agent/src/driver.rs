//! The agent's thin driver: reads what the core asks for, performs its
//! outputs through traits, and feeds every result back as an input.
//!
//! ```text
//!  datastore ──events──┐
//!  CNI socket ─request─┼─> run (tokio task) ──> Effects::settle ──> Agent::step
//!  500 ms tick ────────┘                          │  Dataplane  (nftables | fake)
//!                                                 │  RouteExecutor (netlink | fake)
//!                                                 │  Host (record files, links, blocks, status)
//!                                                 └─ replies, BGP intent ─> socket, speaker
//! ```
//!
//! [`Effects::settle`] is synchronous and shared by the daemon and the
//! tests: with the fakes it runs the whole decision logic without root.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tabby_common::agent::{AgentRequest, AgentResponse};
use tabby_common::atomic::write_atomic;
use tabby_common::endpoint::EndpointStore;
use tabby_common::ipam::{blocks_path, read_blocks, write_blocks};
use tabby_sys::Netlink;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::admission::{EndpointSnapshot, Links};
use crate::agent::{Agent, AgentConfig, CniRequest, Input, Output, RequestId, Status};
use crate::bgp::BgpIntent;
use crate::dataplane::{Applied, Dataplane};
use crate::datastore::Event;
use crate::error::AgentError;
use crate::metrics::Metrics;
use crate::nft::NftDataplane;
use crate::routes::{NetlinkRoutes, RouteExecutor};

/// A CNI request with the channel its answer goes back on.
pub type Request = (AgentRequest, oneshot::Sender<AgentResponse>);

/// The node's files and links, as the core needs them.
pub trait Host {
    /// Reads the endpoint record files and the links together.
    fn scan_endpoints(&mut self) -> Result<EndpointSnapshot, AgentError>;
    /// Reads the node's links.
    fn links(&mut self) -> Result<Links, AgentError>;
    /// Replaces the blocks file.
    fn write_blocks(&mut self, blocks: &[IpNet]) -> Result<(), AgentError>;
    /// Replaces `<run-dir>/status.json`.
    fn write_status(&mut self, text: &str) -> Result<(), AgentError>;
}

/// The real node: files under the run and data directories, links by
/// netlink.
#[derive(Debug)]
pub struct NodeHost {
    run_dir: PathBuf,
    data_dir: PathBuf,
    netlink: Option<Netlink>,
}

impl NodeHost {
    /// The host of an agent with these directories.
    pub fn new(run_dir: PathBuf, data_dir: PathBuf) -> Self {
        NodeHost {
            run_dir,
            data_dir,
            netlink: None,
        }
    }
}

impl Host for NodeHost {
    fn scan_endpoints(&mut self) -> Result<EndpointSnapshot, AgentError> {
        let records = EndpointStore::new(&self.run_dir).list_files()?;
        Ok(EndpointSnapshot {
            records,
            links: self.links()?,
        })
    }

    fn links(&mut self) -> Result<Links, AgentError> {
        let nl = match self.netlink.as_mut() {
            Some(nl) => nl,
            None => self.netlink.insert(Netlink::open()?),
        };
        match nl.links() {
            Ok(l) => Ok(l.into_iter().map(|l| (l.name, l.index)).collect()),
            Err(e) => {
                self.netlink = None;
                Err(e.into())
            }
        }
    }

    fn write_blocks(&mut self, blocks: &[IpNet]) -> Result<(), AgentError> {
        let path = blocks_path(&self.data_dir);
        std::fs::create_dir_all(&self.data_dir).map_err(|source| AgentError::Write {
            path: self.data_dir.clone(),
            source,
        })?;
        Ok(write_blocks(&path, blocks)?)
    }

    fn write_status(&mut self, text: &str) -> Result<(), AgentError> {
        let path = self.run_dir.join("status.json");
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|source| AgentError::Write { path, source })
    }
}

/// A host in memory, for tests.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// What a scan returns.
    pub snapshot: EndpointSnapshot,
    /// Every blocks file written.
    pub blocks: Vec<Vec<IpNet>>,
    /// Every status written.
    pub status: Vec<String>,
}

impl Host for FakeHost {
    fn scan_endpoints(&mut self) -> Result<EndpointSnapshot, AgentError> {
        Ok(self.snapshot.clone())
    }
    fn links(&mut self) -> Result<Links, AgentError> {
        Ok(self.snapshot.links.clone())
    }
    fn write_blocks(&mut self, blocks: &[IpNet]) -> Result<(), AgentError> {
        self.blocks.push(blocks.to_vec());
        Ok(())
    }
    fn write_status(&mut self, text: &str) -> Result<(), AgentError> {
        self.status.push(text.to_string());
        Ok(())
    }
}

/// What is left for the async side after a settle.
#[derive(Debug, Default)]
pub struct Settled {
    /// CNI replies.
    pub replies: Vec<(RequestId, AgentResponse)>,
    /// The latest BGP intent, when it changed.
    pub bgp: Option<(Ipv4Addr, BgpIntent)>,
    /// The latest status, when it changed.
    pub status: Option<Status>,
    /// Every dataplane change applied, with its size.
    pub applied: Vec<Applied>,
}

/// The performers of the core's outputs.
#[derive(Debug)]
pub struct Effects<D, R, H> {
    /// The policy dataplane.
    pub dataplane: D,
    /// The route executor.
    pub routes: R,
    /// Files and links.
    pub host: H,
    /// Counters the outputs feed.
    pub metrics: Arc<Metrics>,
}

impl<D: Dataplane, R: RouteExecutor, H: Host> Effects<D, R, H> {
    /// Steps `agent` with `input` and performs its outputs, feeding each
    /// result back, until nothing is left but what the async side does.
    pub fn settle(&mut self, agent: &mut Agent, input: Input) -> Settled {
        let mut settled = Settled::default();
        let mut inputs = std::collections::VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for output in agent.step(input) {
                if let Some(next) = self.perform(output, &mut settled) {
                    inputs.push_back(next);
                }
            }
        }
        settled
    }

    fn perform(&mut self, output: Output, settled: &mut Settled) -> Option<Input> {
        match output {
            Output::Dataplane(change) => {
                let result = self.dataplane.apply(&change);
                if let Ok(a) = &result {
                    settled.applied.push(*a);
                } else {
                    self.metrics.dataplane_errors.inc();
                }
                Some(Input::DataplaneApplied {
                    generation: change.generation,
                    result: result.map_err(|e| e.to_string()),
                })
            }
            Output::Routes(desired) => {
                let result = self.routes.reconcile(&desired);
                if result.is_err() {
                    self.metrics.dataplane_errors.inc();
                }
                Some(Input::RoutesApplied(result.map_err(|e| e.to_string())))
            }
            Output::Blocks(blocks) => {
                if let Err(e) = self.host.write_blocks(&blocks) {
                    error!(error = %e, "cannot write the blocks file");
                }
                None
            }
            Output::ScanEndpoints => match self.host.scan_endpoints() {
                Ok(s) => Some(Input::Endpoints(s)),
                Err(e) => {
                    // No snapshot rather than an empty one: an unreadable
                    // directory must not unprogram every endpoint.
                    warn!(error = %e, "cannot read the endpoint records");
                    None
                }
            },
            Output::CheckDataplane => {
                let intact = self.dataplane.intact();
                if !intact {
                    self.metrics.resyncs.inc();
                }
                Some(Input::DataplaneChecked { intact })
            }
            Output::Refused(r) => {
                self.metrics.endpoint_refused(r.reason);
                None
            }
            Output::Status(s) => {
                self.metrics
                    .set_gauges(s.endpoints, s.policies, s.sets, s.pods);
                self.metrics.set_ready(s.ready);
                self.metrics.set_network_ready(s.network_ready);
                settled.status = Some(s);
                None
            }
            Output::Reply { id, response } => {
                settled.replies.push((id, response));
                None
            }
            Output::Bgp { router_id, intent } => {
                settled.bgp = Some((router_id, intent));
                None
            }
        }
    }
}

/// Runs the agent until `events` closes or `shutdown` fires. The dataplane
/// is left in place on exit so pods keep working while the agent restarts.
pub async fn run(
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    mut events: mpsc::Receiver<Event>,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let blocks = read_blocks(&blocks_path(&cfg.data_dir)).unwrap_or_default();
    let mut fx = Effects {
        dataplane: NftDataplane,
        routes: NetlinkRoutes::default(),
        host: NodeHost::new(cfg.run_dir.clone(), cfg.data_dir.clone()),
        metrics: metrics.clone(),
    };
    let bgp_port = cfg.bgp_port;
    let mut agent = Agent::new(cfg, blocks);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: HashMap<RequestId, oneshot::Sender<AgentResponse>> = HashMap::new();
    let mut next_id: RequestId = 0;
    let mut bgp: Option<crate::bgp::Bgp> = None;
    let mut bgp_want: Option<(Ipv4Addr, BgpIntent)> = None;
    let mut bgp_dirty = false;
    let mut bgp_json: Option<serde_json::Value> = None;
    let mut status: Option<Status> = None;
    let mut last_written: Option<serde_json::Value> = None;
    // The endpoints a previous run wired are known before the first
    // programming, so a restarted agent never programs a table without them.
    let mut settled = tokio::task::block_in_place(|| fx.settle(&mut agent, Input::Tick));
    loop {
        for (id, resp) in settled.replies.drain(..) {
            if let Some(tx) = pending.remove(&id) {
                let _ = tx.send(resp);
            }
        }
        if let Some(b) = settled.bgp.take() {
            bgp_want = Some(b);
            bgp_dirty = true;
        }
        if let Some(s) = settled.status.take() {
            status = Some(s);
        }
        if bgp_port.is_some()
            && let Some((router_id, intent)) = bgp_want.as_ref()
        {
            if let Some(b) = bgp.as_ref()
                && b.asn() != intent.asn
            {
                info!(
                    from = b.asn(),
                    to = intent.asn,
                    "the AS changed; restarting BGP"
                );
                b.stop_hard().await;
                bgp = None;
            }
            if bgp.is_none() {
                match crate::bgp::Bgp::start(*router_id, bgp_port.unwrap_or(179), intent).await {
                    Ok(b) => {
                        bgp = Some(b);
                        bgp_dirty = true;
                    }
                    Err(e) => error!(error = %e, "cannot start BGP"),
                }
            }
            if bgp_dirty && let Some(b) = bgp.as_mut() {
                b.apply(intent).await;
                bgp_dirty = false;
            }
        }
        if let Some(s) = status.as_ref() {
            let json = s.to_json(bgp_json.as_ref());
            if last_written.as_ref() != Some(&json) {
                let text = json.to_string();
                metrics.set_status(text.clone());
                match fx.host.write_status(&text) {
                    Ok(()) => last_written = Some(json),
                    Err(e) => warn!(error = %e, "cannot write the status file"),
                }
            }
        }
        let input = tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                // Take everything already queued, to program once.
                let mut batch = vec![ev];
                while let Ok(ev) = events.try_recv() {
                    batch.push(ev);
                }
                Input::Datastore(batch)
            }
            req = requests.recv() => {
                let Some((req, reply)) = req else { continue };
                next_id += 1;
                pending.insert(next_id, reply);
                let links = if matches!(req, AgentRequest::Add { .. }) {
                    tokio::task::block_in_place(|| fx.host.links()).unwrap_or_else(|e| {
                        warn!(error = %e, "cannot read the node's links");
                        Links::new()
                    })
                } else {
                    Links::new()
                };
                Input::Cni { id: next_id, request: CniRequest::from_socket(req, links) }
            }
            _ = tick.tick() => {
                // Requests whose client gave up.
                pending.retain(|_, tx| !tx.is_closed());
                if let Some(b) = bgp.as_ref() {
                    bgp_json = b.status_json().await;
                }
                Input::Tick
            }
            _ = shutdown.changed() => break,
        };
        let started = Instant::now();
        settled = tokio::task::block_in_place(|| fx.settle(&mut agent, input));
        if !settled.applied.is_empty() {
            metrics.programming.observe(started.elapsed());
        }
    }
    if let Some(b) = bgp {
        b.stop().await;
    }
    info!("agent stopping; the dataplane and routes stay in place");
}
