//! The tokio driver: all I/O and timers around the sans-IO [`Fsm`]s and
//! the [`Rib`].
//!
//! ```text
//!  listener task (per address) ──Accepted─────────┐
//!  connect task (per attempt) ───Connected/Failed─┤
//!  reader task (per connection) ─Received/Closed──┼──> core task ──bytes──> writer task (per connection)
//!  SpeakerHandle ────────────────Command──────────┘    FSMs, RIB,  ──RibEvent──> subscribers
//!                                                       timers          (e.g. the kernel route installer)
//! ```
//!
//! The core task owns every FSM and the RIB, so nothing is shared or
//! locked; readers decode messages in parallel and writers drain per
//! connection queues.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::bfd::{self, BfdHandle, Notice};
use crate::config::{Config, PeerConfig};
use crate::fsm::{Action, ConnId, Event, Fsm, FsmConfig, Negotiated, State, Timer};
use crate::packet::{self, Ctx, DecodeError, Family, Message};
use crate::policy::{PrefixCommunities, RejectReason};
use crate::rib::{BestChange, PeerIdx, PeerInfo, Rib, RibConfig};

mod bfd_glue;

/// Errors starting or talking to the speaker.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// A listening socket could not be set up.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The speaker task has stopped.
    #[error("the speaker has stopped")]
    Stopped,
}

/// What route subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibEvent {
    /// Best routes changed (the first event of a subscription carries the
    /// whole table).
    Routes(Vec<BestChange>),
    /// Initial convergence after start: every peer sent End-of-RIB, or the
    /// graceful restart time passed. Kernel routes of ours not re-learned by
    /// now are leftovers of a previous run and can go.
    Synced,
}

/// One peer's operational state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS.
    pub asn: u32,
    /// Session state.
    pub state: State,
    /// Seconds since the session reached Established.
    pub uptime_secs: Option<u64>,
    /// The peer's BGP identifier, once known.
    pub router_id: Option<std::net::Ipv4Addr>,
    /// Prefixes received.
    pub received: u64,
    /// Prefixes accepted into the Adj-RIB-In.
    pub accepted: u64,
    /// Prefixes advertised.
    pub advertised: u64,
    /// Prefixes of this peer the import policy refuses now.
    #[serde(default, rename = "prefixesRejected")]
    pub prefixes_rejected: u64,
    /// The last prefix the import policy refused, and why.
    #[serde(default, rename = "lastRejected")]
    pub last_rejected: Option<Rejected>,
    /// Refusals since the peer was configured, by reason (a prefix refused,
    /// withdrawn and sent again counts twice).
    #[serde(default, rename = "rejectedTotal")]
    pub rejected_total: BTreeMap<RejectReason, u64>,
    /// Why the session last went down or failed to connect.
    pub last_error: Option<String>,
    /// The BFD session with this peer, when BFD is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdStatus>,
}

/// The state of a peer's BFD session, as the speaker last heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfdStatus {
    /// Up or Down (AdminDown: the peer stopped BFD on purpose).
    pub state: bfd::State,
    /// Why it last went down.
    pub diag: bfd::Diag,
}

/// A refused prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The prefix.
    pub prefix: IpNet,
    /// Why it was refused.
    pub reason: RejectReason,
}

/// The speaker's operational state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Our BGP identifier.
    pub router_id: std::net::Ipv4Addr,
    /// Our AS.
    pub asn: u32,
    /// Prefixes in the Loc-RIB.
    pub loc_rib_prefixes: u64,
    /// Initial convergence done.
    pub synced: bool,
    /// Peers, in configuration order.
    pub peers: Vec<PeerStatus>,
}

enum Command {
    SetPeers(Vec<PeerConfig>, oneshot::Sender<()>),
    Announce(Vec<IpNet>),
    Withdraw(Vec<IpNet>),
    SetAnnounced(Vec<IpNet>),
    SetCommunities(Vec<PrefixCommunities>),
    Subscribe(mpsc::Sender<RibEvent>),
    Status(oneshot::Sender<Status>),
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
}

/// A handle on a running speaker; cheap to clone.
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Batches a subscriber's channel holds; only [`PAUSE_BACKLOG`] are used in
/// normal operation, the rest absorbs events made while paused.
const SUBSCRIBER_QUEUE: usize = 1024;
/// A subscriber this many batches behind pauses UPDATE intake.
const PAUSE_BACKLOG: usize = 2;

/// A route subscriber; events that do not fit its channel wait here.
struct Subscriber {
    tx: mpsc::Sender<RibEvent>,
    overflow: std::collections::VecDeque<RibEvent>,
}

impl Subscriber {
    /// Queues an event; false once the subscriber has gone away.
    fn push(&mut self, ev: RibEvent) -> bool {
        self.overflow.push_back(ev);
        self.drain()
    }

    fn drain(&mut self) -> bool {
        while let Some(ev) = self.overflow.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.overflow.push_front(ev);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        !self.tx.is_closed()
    }

    fn backlog(&self) -> usize {
        SUBSCRIBER_QUEUE - self.tx.capacity() + self.overflow.len()
    }
}

/// `now + d`, saturating at a year instead of overflowing on absurd
/// configured durations.
/// `d` scaled by a random factor in [0.75, 1.0) (RFC 4271 §10).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is seeded from the OS and bumped per call: random
    // enough for spreading timers, without a dependency.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let frac = 0.75 + (r % 1000) as f64 / 4000.0;
    d.mul_f64(frac)
}

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Decoded messages waiting for the core, over all connections.
const EVENT_QUEUE: usize = 16;

/// Starts speakers.
#[derive(Debug)]
pub struct Speaker;

impl Speaker {
    /// Binds the listening sockets and starts the speaker on the current
    /// tokio runtime: peers connect, `announce` prefixes are originated.
    pub async fn start(config: Config) -> Result<SpeakerHandle, SpeakerError> {
        config.validate()?;
        // Bounded: a fast peer is slowed down by TCP instead of filling memory
        // with decoded UPDATEs the core has not applied yet.
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let l = listen(*addr).map_err(|source| SpeakerError::Listen {
                addr: *addr,
                source,
            })?;
            let l = Arc::new(l);
            tokio::spawn(accept_loop(l.clone(), ev_tx.clone()));
            listeners.push(l);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (bfd_tx, bfd_rx) = mpsc::unbounded_channel();
        let mut core = Core::new(config, listeners, ev_tx);
        core.bfd_notices = Some(bfd_tx);
        let peers = core.config.peers.clone();
        core.set_peers(peers);
        core.rib
            .set_local_communities(core.config.communities.clone());
        for p in core.config.announce.clone() {
            core.announced.insert(p.trunc());
            core.rib.announce_local(p);
        }
        core.flush();
        tokio::spawn(core.run(rx, ev_rx, bfd_rx));
        Ok(SpeakerHandle { tx })
    }
}

impl SpeakerHandle {
    fn send(&self, c: Command) -> Result<(), SpeakerError> {
        self.tx.send(c).map_err(|_| SpeakerError::Stopped)
    }

    /// Replaces the peer list: new peers start, missing ones stop (Cease),
    /// changed ones restart.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetPeers(peers, tx))?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Originates prefixes.
    pub fn announce(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Command::Announce(prefixes))
    }

    /// Stops originating prefixes.
    pub fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Command::Withdraw(prefixes))
    }

    /// Makes `prefixes` exactly the set originated.
    pub fn set_announced(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Command::SetAnnounced(prefixes))
    }

    /// Sets the communities attached to our own prefixes (by CIDR); the
    /// prefixes already announced go out again with theirs.
    pub fn set_communities(&self, table: Vec<PrefixCommunities>) -> Result<(), SpeakerError> {
        self.send(Command::SetCommunities(table))
    }

    /// A stream of best-route changes, starting with the whole table. Keep
    /// reading it: while a subscriber is more than a few batches behind, the
    /// speaker stops taking in UPDATEs (TCP slows the peers down), so that
    /// a slow consumer such as the kernel bounds memory instead of growing it.
    pub fn subscribe_routes(&self) -> Result<mpsc::Receiver<RibEvent>, SpeakerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.send(Command::Subscribe(tx))?;
        Ok(rx)
    }

    /// Sessions and counters.
    pub async fn status(&self) -> Result<Status, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx))?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Stops the speaker. `graceful`: close sessions without NOTIFICATION so
    /// that graceful-restart peers keep our routes (a restart follows);
    /// otherwise send Cease to every peer.
    pub async fn shutdown(&self, graceful: bool) -> Result<(), SpeakerError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Shutdown { graceful, done })?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Keep IPv4 for a separate listener, so MD5 keys are per family.
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

#[expect(
    clippy::large_enum_variant,
    reason = "one event per message, moved once through a channel"
)]
enum IoEvent {
    Accepted(TcpStream, SocketAddr),
    Connected(IpAddr, ConnId, TcpStream),
    ConnectFailed(IpAddr, ConnId, String),
    Received(ConnId, Result<Message, DecodeError>),
    Closed(ConnId, Option<String>),
}

async fn accept_loop(l: Arc<TcpListener>, tx: mpsc::Sender<IoEvent>) {
    loop {
        match l.accept().await {
            Ok((s, remote)) => {
                if tx.send(IoEvent::Accepted(s, remote)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect(peer: PeerConfig, conn: ConnId, tx: mpsc::Sender<IoEvent>) {
    let res = async {
        let addr = SocketAddr::new(peer.address, peer.port);
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(pw) = &peer.password {
            tabby_sys::tcp_md5::set_tcp_md5(sock.as_fd(), peer.address, pw.as_bytes())
                .map_err(std::io::Error::other)?;
        }
        if let Some(local) = peer.local_address {
            sock.bind(SocketAddr::new(local, 0))?;
        }
        tokio::time::timeout(Duration::from_secs(10), sock.connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
    .await;
    let ev = match res {
        Ok(s) => IoEvent::Connected(peer.address, conn, s),
        Err(e) => IoEvent::ConnectFailed(peer.address, conn, e.to_string()),
    };
    let _ = tx.send(ev).await;
}

/// Cuts the byte stream into messages and decodes them. The 4-octet AS
/// context follows the peer's OPEN (we always send the capability).
async fn read_loop(mut r: tokio::net::tcp::OwnedReadHalf, conn: ConnId, tx: mpsc::Sender<IoEvent>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut ctx = Ctx::default();
    loop {
        // Decode every complete message, then drop them from the buffer
        // in one move.
        let mut off = 0;
        loop {
            match packet::frame_len(&buf[off..]) {
                Ok(Some(len)) => {
                    let msg = Message::decode(&buf[off..off + len], &ctx);
                    off += len;
                    if let Ok(Message::Open(o)) = &msg {
                        ctx.four_octet_as = o.four_octet_as().is_some();
                    }
                    let failed = msg.is_err();
                    if tx.send(IoEvent::Received(conn, msg)).await.is_err() || failed {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(IoEvent::Received(conn, Err(e))).await;
                    return;
                }
            }
        }
        buf.drain(..off);
        match r.read(&mut chunk).await {
            Ok(0) => {
                let _ = tx.send(IoEvent::Closed(conn, None)).await;
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                let _ = tx.send(IoEvent::Closed(conn, Some(e.to_string()))).await;
                return;
            }
        }
    }
}

async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        // Coalesce whatever is queued into one write.
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if w.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

struct Conn {
    peer: IpAddr,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
    local: Option<SocketAddr>,
    ctx: Ctx,
}

struct Peer {
    idx: PeerIdx,
    cfg: PeerConfig,
    fsm: Fsm,
    timers: HashMap<Timer, Instant>,
    connecting: Option<(ConnId, JoinHandle<()>)>,
    established: Option<Instant>,
    negotiated: Option<Negotiated>,
    /// GR helper: when the peer's stale routes are dropped if no End-of-RIB.
    stale_deadline: Option<Instant>,
    eor: HashSet<Family>,
    last_error: Option<String>,
    /// BFD configured: its last known state; the session starts only while
    /// it is Up.
    bfd: Option<BfdStatus>,
    rejected_total: BTreeMap<RejectReason, u64>,
    last_rejected: Option<Rejected>,
    /// Refused prefixes already logged (bounded: see [`LOGGED_REFUSALS`]).
    logged: HashSet<IpNet>,
}

/// Refused prefixes logged per peer; beyond this only counters move, so a
/// peer sending a full table that is all refused cannot flood the log.
const LOGGED_REFUSALS: usize = 1000;

struct Core {
    config: Config,
    rib: Rib,
    peers: Vec<(IpAddr, Peer)>,
    conns: HashMap<ConnId, Conn>,
    listeners: Vec<Arc<TcpListener>>,
    ev_tx: mpsc::Sender<IoEvent>,
    subscribers: Vec<Subscriber>,
    announced: BTreeSet<IpNet>,
    next_conn: u64,
    synced: bool,
    sync_deadline: Instant,
    /// The BFD driver, started with the first peer that wants BFD.
    bfd: Option<BfdHandle>,
    /// Where the BFD driver reports sessions going up and down.
    bfd_notices: Option<mpsc::UnboundedSender<Notice>>,
}

impl Core {
    fn new(config: Config, listeners: Vec<Arc<TcpListener>>, ev_tx: mpsc::Sender<IoEvent>) -> Self {
        let rib = Rib::new(RibConfig {
            local_as: config.asn,
            router_id: config.router_id,
            cluster_id: config.cluster_id.unwrap_or(config.router_id),
            default_local_pref: config.local_pref,
            multipath: config.multipath,
        });
        let wait = if config.graceful_restart.enabled {
            u64::from(config.graceful_restart.restart_time)
        } else {
            0
        };
        Self {
            sync_deadline: after(Instant::now(), Duration::from_secs(wait)),
            config,
            rib,
            peers: Vec::new(),
            conns: HashMap::new(),
            listeners,
            ev_tx,
            subscribers: Vec::new(),
            announced: BTreeSet::new(),
            next_conn: 1,
            synced: false,
            bfd: None,
            bfd_notices: None,
        }
    }

    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::Receiver<IoEvent>,
        mut bfd_notices: mpsc::UnboundedReceiver<Notice>,
    ) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown { graceful, done }) => {
                        self.shutdown(graceful);
                        if let Some(b) = self.bfd.take() {
                            b.shutdown().await;
                        }
                        if !graceful {
                            // Give the writer tasks a moment to deliver the
                            // Cease before the caller ends the runtime.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                    None => {
                        self.shutdown(false);
                        return;
                    }
                },
                Some(ev) = events.recv(), if !self.paused() => {
                    self.io_event(ev);
                    // Drain a little of what is queued before exporting:
                    // fewer, fuller UPDATEs out, while the per-flush buffers
                    // (and so the process's peak memory) stay small.
                    let mut n = 0;
                    while n < 4 {
                        match events.try_recv() {
                            Ok(ev) => self.io_event(ev),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                // Never paused: a BFD Down must take a session down at once.
                Some(n) = bfd_notices.recv() => self.bfd_notice(n),
                () = tokio::time::sleep_until(deadline) => self.fire_timers(),
            }
            self.check_sync();
            self.flush();
        }
    }

    fn peer_mut(&mut self, addr: IpAddr) -> Option<&mut Peer> {
        self.peers
            .iter_mut()
            .find(|(a, _)| *a == addr)
            .map(|(_, p)| p)
    }

    fn fsm_config(&self, p: &PeerConfig) -> FsmConfig {
        let gr = &self.config.graceful_restart;
        FsmConfig {
            local_as: self.config.asn,
            remote_as: p.asn,
            router_id: self.config.router_id,
            hold_time: p.hold_time.unwrap_or(self.config.hold_time),
            connect_retry: Duration::from_secs(self.config.connect_retry.max(1)),
            idle_hold: Duration::from_secs(self.config.idle_hold),
            passive: p.passive,
            families: p.families.clone(),
            graceful_restart: gr
                .enabled
                .then(|| Duration::from_secs(u64::from(gr.restart_time))),
            restarting: gr.enabled && gr.restarting,
        }
    }

    fn set_md5(&self, peer: IpAddr, key: &[u8]) {
        for l in &self.listeners {
            let same_family = l.local_addr().is_ok_and(|a| a.is_ipv4() == peer.is_ipv4());
            if !same_family {
                continue;
            }
            if let Err(e) = tabby_sys::tcp_md5::set_tcp_md5(l.as_fd(), peer, key) {
                warn!(%peer, error = %e, "cannot set TCP MD5 key on listener");
            }
        }
    }

    fn set_peers(&mut self, wanted: Vec<PeerConfig>) {
        // A peer whose session settings are unchanged keeps its session;
        // a new policy is applied under it.
        let keep: Vec<PeerConfig> = wanted
            .iter()
            .filter(|w| self.peers.iter().any(|(_, p)| p.cfg.same_session(w)))
            .cloned()
            .collect();
        let gone: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| !keep.iter().any(|k| k.same_session(&p.cfg)))
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            self.remove_peer(addr);
        }
        for k in &keep {
            if let Some(p) = self.peer_mut(k.address)
                && p.cfg.policy != k.policy
            {
                p.cfg.policy = k.policy.clone();
                let idx = p.idx;
                self.rib.set_policy(idx, k.policy.clone());
            }
        }
        for w in wanted {
            if !keep.iter().any(|k| k.same_session(&w)) {
                self.add_peer(w);
            }
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) {
        if self.peers.iter().any(|(a, _)| *a == cfg.address) {
            warn!(peer = %cfg.address, "peer listed twice: keeping the first");
            return;
        }
        info!(peer = %cfg.address, asn = cfg.asn, "adding peer");
        // The lowest free index: removed peers leave nothing behind in the
        // RIB, so indexes can be reused and never run out under churn.
        let Some(idx) = (1..=PeerIdx::MAX).find(|i| self.peers.iter().all(|(_, p)| p.idx != *i))
        else {
            warn!(peer = %cfg.address, "too many peers");
            return;
        };
        if let Some(pw) = &cfg.password {
            self.set_md5(cfg.address, pw.as_bytes());
        }
        let addr = cfg.address;
        self.rib.set_policy(idx, cfg.policy.clone());
        let fsm = Fsm::new(self.fsm_config(&cfg));
        self.peers.push((
            addr,
            Peer {
                idx,
                cfg,
                fsm,
                timers: HashMap::new(),
                connecting: None,
                established: None,
                negotiated: None,
                stale_deadline: None,
                eor: HashSet::new(),
                last_error: None,
                bfd: None,
                rejected_total: BTreeMap::new(),
                last_rejected: None,
                logged: HashSet::new(),
            },
        ));
        if !self.start_bfd(addr) {
            self.fsm_event(addr, Event::ManualStart);
        }
    }

    fn remove_peer(&mut self, addr: IpAddr) {
        info!(peer = %addr, "removing peer");
        self.fsm_event(addr, Event::ManualStop);
        if let Some(pos) = self.peers.iter().position(|(a, _)| *a == addr) {
            let (_, p) = self.peers.remove(pos);
            if let Some((_, h)) = p.connecting {
                h.abort();
            }
            if p.cfg.password.is_some() {
                self.set_md5(addr, b"");
            }
            if p.bfd.is_some()
                && let Some(b) = &self.bfd
            {
                let _ = b.remove(addr);
            }
            self.rib.remove_peer(p.idx);
            self.rib.gc();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::SetPeers(peers, done) => {
                self.set_peers(peers);
                let _ = done.send(());
            }
            Command::Announce(ps) => {
                for p in ps {
                    if self.announced.insert(p.trunc()) {
                        self.rib.announce_local(p);
                    }
                }
            }
            Command::Withdraw(ps) => {
                for p in ps {
                    if self.announced.remove(&p.trunc()) {
                        self.rib.withdraw_local(p);
                    }
                }
            }
            Command::SetAnnounced(ps) => {
                let wanted: BTreeSet<IpNet> = ps.iter().map(IpNet::trunc).collect();
                for p in self
                    .announced
                    .difference(&wanted)
                    .copied()
                    .collect::<Vec<_>>()
                {
                    self.rib.withdraw_local(p);
                }
                for p in wanted
                    .difference(&self.announced)
                    .copied()
                    .collect::<Vec<_>>()
                {
                    self.rib.announce_local(p);
                }
                self.announced = wanted;
            }
            Command::SetCommunities(table) => self.rib.set_local_communities(table),
            Command::Subscribe(tx) => {
                let mut sub = Subscriber {
                    tx,
                    overflow: std::collections::VecDeque::new(),
                };
                let mut ok = sub.push(RibEvent::Routes(self.rib.snapshot()));
                if self.synced {
                    ok &= sub.push(RibEvent::Synced);
                }
                if ok {
                    self.subscribers.push(sub);
                }
            }
            Command::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn status(&self) -> Status {
        Status {
            router_id: self.config.router_id,
            asn: self.config.asn,
            loc_rib_prefixes: self.rib.len() as u64,
            synced: self.synced,
            peers: self
                .peers
                .iter()
                .map(|(addr, p)| {
                    let c = self.rib.counts(p.idx);
                    PeerStatus {
                        address: *addr,
                        asn: p.cfg.asn,
                        state: p.fsm.state(),
                        uptime_secs: p.established.map(|t| t.elapsed().as_secs()),
                        router_id: p.negotiated.as_ref().map(|n| n.peer_id),
                        received: c.received,
                        accepted: c.accepted,
                        advertised: c.advertised,
                        prefixes_rejected: c.filtered,
                        last_rejected: p.last_rejected,
                        rejected_total: p.rejected_total.clone(),
                        last_error: p.last_error.clone(),
                        bfd: p.bfd,
                    }
                })
                .collect(),
        }
    }

    fn shutdown(&mut self, graceful: bool) {
        if graceful {
            // Close without NOTIFICATION: GR peers keep our routes.
            for (_, c) in self.conns.drain() {
                c.reader.abort();
            }
        } else {
            let addrs: Vec<IpAddr> = self.peers.iter().map(|(a, _)| *a).collect();
            for a in addrs {
                self.fsm_event(a, Event::ManualStop);
            }
        }
        for (_, p) in &mut self.peers {
            if let Some((_, h)) = p.connecting.take() {
                h.abort();
            }
        }
    }

    /// A subscriber is behind: take no UPDATEs until it catches up.
    fn paused(&self) -> bool {
        self.subscribers.iter().any(|s| s.backlog() > PAUSE_BACKLOG)
    }

    fn next_deadline(&self) -> Instant {
        if self.paused() {
            // Look again soon: nothing else wakes us when a subscriber reads.
            return Instant::now() + Duration::from_millis(2);
        }
        let mut next = Instant::now() + Duration::from_secs(3600);
        for (_, p) in &self.peers {
            for t in p.timers.values().chain(p.stale_deadline.iter()) {
                next = next.min(*t);
            }
        }
        if !self.synced {
            next = next.min(self.sync_deadline);
        }
        next
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut due: Vec<(IpAddr, Event)> = Vec::new();
        let mut stale: Vec<PeerIdx> = Vec::new();
        for (addr, p) in &mut self.peers {
            let expired: Vec<Timer> = p
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in expired {
                p.timers.remove(&t);
                due.push((
                    *addr,
                    match t {
                        Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                        Timer::Hold => Event::HoldTimerExpires,
                        Timer::Keepalive => Event::KeepaliveTimerExpires,
                        Timer::IdleHold => Event::IdleHoldTimerExpires,
                    },
                ));
            }
            if p.stale_deadline.is_some_and(|d| d <= now) {
                p.stale_deadline = None;
                stale.push(p.idx);
            }
        }
        for idx in stale {
            info!(
                peer = idx,
                "graceful restart timer expired: dropping stale routes"
            );
            self.rib.sweep_stale(idx, None);
        }
        for (addr, ev) in due {
            self.fsm_event(addr, ev);
        }
    }

    fn alloc_conn(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// Starts the reader and writer tasks of a new connection.
    fn register(&mut self, peer: IpAddr, id: ConnId, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let (r, w) = stream.into_split();
        let (wtx, wrx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(w, wrx));
        let reader = tokio::spawn(read_loop(r, id, self.ev_tx.clone()));
        self.conns.insert(
            id,
            Conn {
                peer,
                writer: wtx,
                reader,
                local,
                ctx: Ctx::default(),
            },
        );
    }

    fn io_event(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Accepted(stream, remote) => {
                let ip = remote.ip().to_canonical();
                if !self.peers.iter().any(|(a, _)| *a == ip) {
                    debug!(%remote, "connection from an unknown address refused");
                    return;
                }
                let id = self.alloc_conn();
                self.register(ip, id, stream);
                self.fsm_event(ip, Event::TcpConnectionConfirmed(id));
            }
            IoEvent::Connected(peer, id, stream) => {
                let current = self
                    .peer_mut(peer)
                    .and_then(|p| p.connecting.take_if(|(c, _)| *c == id));
                if current.is_none() {
                    return;
                }
                self.register(peer, id, stream);
                self.fsm_event(peer, Event::TcpCrAcked(id));
            }
            IoEvent::ConnectFailed(peer, id, err) => {
                let Some(p) = self.peer_mut(peer) else {
                    return;
                };
                if p.connecting.take_if(|(c, _)| *c == id).is_some() {
                    debug!(%peer, error = %err, "connect failed");
                    p.last_error = Some(format!("connect: {err}"));
                    self.fsm_event(peer, Event::TcpConnectionFails(id));
                }
            }
            IoEvent::Received(id, msg) => {
                let Some(peer) = self.conns.get(&id).map(|c| c.peer) else {
                    return;
                };
                let ev = match msg {
                    Ok(m) => Event::from_message(id, m),
                    Err(e) => {
                        warn!(%peer, error = %e, "malformed message");
                        Event::MessageError(id, e)
                    }
                };
                self.fsm_event(peer, ev);
            }
            IoEvent::Closed(id, err) => {
                let Some(c) = self.conns.remove(&id) else {
                    return;
                };
                if let Some(e) = err
                    && let Some(p) = self.peer_mut(c.peer)
                {
                    p.last_error = Some(e);
                }
                self.fsm_event(c.peer, Event::TcpConnectionFails(id));
            }
        }
    }

    fn fsm_event(&mut self, addr: IpAddr, ev: Event) {
        let Some(p) = self.peer_mut(addr) else {
            return;
        };
        let before = p.fsm.state();
        let what = format!("{ev:?}");
        let actions = p.fsm.handle(ev);
        debug!(peer = %addr, event = %what, from = ?before, to = ?p.fsm.state(), actions = actions.len(), "FSM");
        for a in actions {
            self.action(addr, a);
        }
    }

    fn send(&self, conn: ConnId, bytes: Vec<u8>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.writer.send(bytes);
        }
    }

    fn action(&mut self, addr: IpAddr, a: Action) {
        let now = Instant::now();
        let stale_time = Duration::from_secs(self.config.graceful_restart.stale_time);
        let next_hop_v6 = self.config.next_hop_v6;
        match a {
            Action::Connect => {
                let id = self.alloc_conn();
                let tx = self.ev_tx.clone();
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                if let Some((_, h)) = p.connecting.take() {
                    h.abort();
                }
                let h = tokio::spawn(connect(p.cfg.clone(), id, tx));
                p.connecting = Some((id, h));
            }
            Action::Send(conn, msg) => {
                let ctx = self.conns.get(&conn).map(|c| c.ctx).unwrap_or_default();
                if let Message::Notification(n) = &msg {
                    info!(peer = %addr, notification = %n, "sending NOTIFICATION");
                }
                self.send(conn, msg.encode(&ctx));
            }
            Action::Close(conn) => {
                if let Some(c) = self.conns.remove(&conn) {
                    c.reader.abort();
                }
            }
            Action::StartTimer(t, d) => {
                // RFC 4271 §10: jitter the retry timers. Two speakers that
                // lost their session at the same instant otherwise retry in
                // lock step, each one Idle (refusing) exactly when the
                // other connects, forever.
                let d = match t {
                    Timer::ConnectRetry | Timer::IdleHold => jitter(d),
                    Timer::Hold | Timer::Keepalive => d,
                };
                if let Some(p) = self.peer_mut(addr) {
                    p.timers.insert(t, after(now, d));
                }
            }
            Action::StopTimer(t) => {
                if let Some(p) = self.peer_mut(addr) {
                    p.timers.remove(&t);
                }
            }
            Action::Established(neg) => {
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                let Some(conn) = p.fsm.connection() else {
                    return;
                };
                info!(peer = %addr, peer_id = %neg.peer_id, families = ?neg.families, "session established");
                p.established = Some(now);
                p.negotiated = Some(neg.clone());
                p.eor.clear();
                p.last_error = None;
                p.fsm.set_restarting(false);
                let idx = p.idx;
                let cfg = p.cfg.clone();
                let had_stale = p.stale_deadline.is_some();
                if had_stale {
                    p.stale_deadline = Some(after(now, stale_time));
                }
                let ctx = Ctx {
                    four_octet_as: neg.four_octet_as,
                };
                let local = self.conns.get_mut(&conn).and_then(|c| {
                    c.ctx = ctx;
                    c.local
                });
                if had_stale {
                    // RFC 4724 §4.2: families the peer no longer preserves
                    // lose their stale routes now; the others wait for EoR.
                    let kept: Vec<Family> = neg
                        .gr
                        .as_ref()
                        .map(|g| {
                            g.families
                                .iter()
                                .filter(|(_, f)| *f)
                                .map(|(f, _)| *f)
                                .collect()
                        })
                        .unwrap_or_default();
                    for f in Family::ALL {
                        if !kept.contains(&f) {
                            self.rib.sweep_stale(idx, Some(f));
                        }
                    }
                }
                let local_ip = local.map(|l| l.ip().to_canonical());
                let v6 = local_ip.map(crate::iface::v6_next_hops).unwrap_or_default();
                let info = PeerInfo {
                    address: addr,
                    asn: neg.peer_as,
                    router_id: neg.peer_id,
                    rr_client: cfg.rr_client,
                    next_hop_self: cfg.next_hop_self,
                    export_local_only: cfg.export_local_only,
                    local_v4: match local_ip {
                        Some(IpAddr::V4(a)) => Some(a),
                        _ => None,
                    },
                    // Configured, else the session's own IPv6 address,
                    // else a global one on the session's interface.
                    local_v6: match local_ip {
                        _ if next_hop_v6.is_some() => next_hop_v6,
                        Some(IpAddr::V6(a)) => Some(a),
                        _ => v6.global,
                    },
                    local_link_local: v6.link_local.filter(|_| cfg.link_local_next_hop),
                    families: neg.families.clone(),
                    ctx,
                };
                for m in self.rib.peer_up(idx, info) {
                    self.send(conn, m);
                }
            }
            Action::Down(d) => {
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                info!(peer = %addr, reason = %d.reason, graceful = d.graceful, "session down");
                p.established = None;
                p.last_error = Some(d.reason);
                let idx = p.idx;
                let restart = p
                    .negotiated
                    .take()
                    .and_then(|n| n.gr)
                    .map(|g| g.restart_time);
                let graceful = d.graceful && restart.is_some();
                if graceful {
                    p.stale_deadline = restart.map(|r| after(now, r));
                }
                self.rib.peer_down(idx, graceful);
                self.rib.gc();
            }
            Action::Update(u) => {
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                let idx = p.idx;
                if let Some(f) = u.as_end_of_rib() {
                    debug!(peer = %addr, family = %f, "End-of-RIB");
                    p.eor.insert(f);
                    self.rib.sweep_stale(idx, Some(f));
                    if !self.rib.has_stale(idx)
                        && let Some(p) = self.peer_mut(addr)
                    {
                        p.stale_deadline = None;
                    }
                } else {
                    if u.treat_as_withdraw {
                        warn!(peer = %addr, "malformed attribute: UPDATE treated as withdraw (RFC 7606)");
                    }
                    self.rib.apply_update(idx, u);
                }
            }
            Action::RouteRefresh(r) => {
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                let (idx, conn) = (p.idx, p.fsm.connection());
                let enhanced = p
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.enhanced_route_refresh);
                let (Some(f), Some(conn)) = (Family::from_afi_safi(r.afi, r.safi), conn) else {
                    return;
                };
                let ctx = self.conns.get(&conn).map(|c| c.ctx).unwrap_or_default();
                let marker = |subtype| {
                    Message::RouteRefresh(crate::packet::RouteRefresh {
                        afi: r.afi,
                        subtype,
                        safi: r.safi,
                    })
                    .encode(&ctx)
                };
                match r.subtype {
                    // A request: resend everything, framed by BoRR/EoRR
                    // when enhanced route refresh was negotiated.
                    0 => {
                        if enhanced {
                            self.send(conn, marker(1));
                        }
                        for m in self.rib.refresh(idx, f) {
                            self.send(conn, m);
                        }
                        if enhanced {
                            self.send(conn, marker(2));
                        }
                    }
                    // RFC 7313 §4: BoRR marks the peer's routes stale, EoRR
                    // removes those it did not send again.
                    1 if enhanced => self.rib.mark_stale(idx, f),
                    2 if enhanced => self.rib.sweep_stale(idx, Some(f)),
                    _ => {}
                }
            }
        }
    }

    fn check_sync(&mut self) {
        if self.synced {
            return;
        }
        let all_eor = self.peers.iter().all(|(_, p)| {
            p.negotiated
                .as_ref()
                .is_some_and(|n| n.families.iter().all(|f| p.eor.contains(f)))
        });
        if all_eor || Instant::now() >= self.sync_deadline {
            info!(all_eor, "initial routing convergence done");
            self.synced = true;
            self.subscribers.retain_mut(|s| s.push(RibEvent::Synced));
        }
    }

    /// Logs (once per prefix, bounded) and counts what the import policy
    /// refused.
    fn note_refusals(&mut self) {
        for r in self.rib.take_refusals() {
            let Some((addr, p)) = self.peers.iter_mut().find(|(_, p)| p.idx == r.peer) else {
                continue;
            };
            *p.rejected_total.entry(r.reason).or_default() += 1;
            p.last_rejected = Some(Rejected {
                prefix: r.prefix,
                reason: r.reason,
            });
            if p.logged.len() < LOGGED_REFUSALS && p.logged.insert(r.prefix) {
                warn!(peer = %addr, prefix = %r.prefix, reason = %r.reason, "import policy refused a prefix");
            }
        }
    }

    fn flush(&mut self) {
        self.note_refusals();
        for (idx, msgs) in self.rib.take_exports() {
            let conn = self
                .peers
                .iter()
                .find(|(_, p)| p.idx == idx)
                .and_then(|(_, p)| p.fsm.connection());
            if let Some(conn) = conn {
                for m in msgs {
                    self.send(conn, m);
                }
            }
        }
        let changes = self.rib.take_changes();
        if changes.is_empty() {
            self.subscribers.retain_mut(Subscriber::drain);
            return;
        }
        // Clone for all subscribers but the last, which gets the original.
        let mut subs = std::mem::take(&mut self.subscribers);
        let last = subs.pop();
        subs.retain_mut(|s| s.push(RibEvent::Routes(changes.clone())));
        if let Some(mut l) = last
            && l.push(RibEvent::Routes(changes))
        {
            subs.push(l);
        }
        self.subscribers = subs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_timers_are_jittered_within_three_quarters_to_one() {
        let d = Duration::from_secs(4);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(d)).collect();
        assert!(
            samples
                .iter()
                .all(|s| *s >= Duration::from_secs(3) && *s < d)
        );
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "not random: {}", distinct.len());
    }
}
