//! The tokio driver of BFD: sockets and timers around the sans-IO
//! [`Session`]s, one per peer address.
//!
//! ```text
//!  receive task (UDP 3784, IPv4) ──┐
//!  receive task (UDP 3784, IPv6) ──┼─ (source, packet) ─> driver task ── Notice::{Up, Down} ──> speaker
//!  BfdHandle ── add / remove ──────┘                      sessions, timers
//!                                                           │ one send socket per session
//!                                                           v (source port 49152-65535, TTL 255)
//! ```
//!
//! RFC 5881: control packets go to UDP port 3784 from a source port in
//! 49152-65535 that stays the same for the life of a session; they are sent
//! with TTL (hop limit) 255, and a received packet whose TTL is not 255 is
//! discarded (GTSM, §5), so nobody more than one hop away can forge one.
//! A packet is matched to its session by Your Discriminator, or while that
//! is 0 by its source address; one matched by discriminator must also come
//! from the session's peer. Sockets belong to the network namespace the
//! driver started in (the agent's, the test's).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::packet::{ControlPacket, Diag, State};
use super::session::{Action, Event, Session, SessionConfig, Timer};

/// UDP port of single-hop control packets (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// TTL / hop limit sent, and required on receipt (RFC 5881 §5).
const TTL: u8 = 255;
/// Source ports (RFC 5881 §4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// DSCP CS6 (network control), as BIRD and FRR send.
const TOS_CS6: u32 = 0xc0;

/// Errors of the BFD driver.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    /// A socket could not be set up.
    #[error("BFD socket {what} for {addr}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The address involved.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The driver task has stopped.
    #[error("the BFD driver has stopped")]
    Stopped,
}

/// What the driver tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The session with this peer reached Up.
    Up(IpAddr),
    /// The session with this peer left Up.
    Down {
        /// The peer.
        peer: IpAddr,
        /// Our diagnostic: why.
        diag: Diag,
        /// The peer said AdminDown: it is stopping BFD on purpose, which is
        /// no path failure (RFC 5882 §3.2), so its clients stay up.
        remote_admin_down: bool,
    },
}

/// One session as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The peer.
    pub peer: IpAddr,
    /// bfd.SessionState.
    pub state: State,
    /// bfd.LocalDiag.
    pub diag: Diag,
    /// Our discriminator.
    pub local_disc: u32,
    /// The peer's (0 while unknown).
    pub remote_disc: u32,
    /// Our source port.
    pub source_port: u16,
}

enum Command {
    Add {
        peer: IpAddr,
        local: Option<IpAddr>,
        cfg: SessionConfig,
    },
    Remove(IpAddr),
    Status(oneshot::Sender<Vec<SessionStatus>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on the running driver; dropping the last one sends AdminDown on
/// every session and stops the driver.
#[derive(Debug, Clone)]
pub struct BfdHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl BfdHandle {
    /// Binds UDP port 3784 (IPv4; IPv6 too where the namespace has it) in
    /// the current network namespace and starts the driver on the current
    /// tokio runtime. Session changes are reported on `notices`.
    pub fn start(notices: mpsc::UnboundedSender<Notice>) -> Result<Self, BfdError> {
        let (pkt_tx, pkt_rx) = mpsc::channel(256);
        let mut receivers = Vec::new();
        let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
        let s4 = receive_socket(v4).map_err(|source| BfdError::Socket {
            what: "bind",
            addr: v4,
            source,
        })?;
        receivers.push(tokio::spawn(receive_loop(s4, pkt_tx.clone())));
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT));
        match receive_socket(v6) {
            Ok(s6) => receivers.push(tokio::spawn(receive_loop(s6, pkt_tx))),
            Err(e) => warn!(error = %e, "no IPv6 BFD socket: IPv6 peers cannot use BFD"),
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            sessions: HashMap::new(),
            notices,
            receivers,
        };
        tokio::spawn(driver.run(rx, pkt_rx));
        Ok(Self { tx })
    }

    /// Starts a session with `peer` (replacing one that exists), sending
    /// from `local` if given.
    pub fn add(
        &self,
        peer: IpAddr,
        local: Option<IpAddr>,
        cfg: SessionConfig,
    ) -> Result<(), BfdError> {
        self.tx
            .send(Command::Add { peer, local, cfg })
            .map_err(|_| BfdError::Stopped)
    }

    /// Ends the session with `peer`, telling it AdminDown.
    pub fn remove(&self, peer: IpAddr) -> Result<(), BfdError> {
        self.tx
            .send(Command::Remove(peer))
            .map_err(|_| BfdError::Stopped)
    }

    /// Sends AdminDown on every session and stops the driver; returns once
    /// the packets are out (a process about to exit must wait for this, or
    /// its peers see a path failure instead of a deliberate stop).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Every session.
    pub async fn status(&self) -> Result<Vec<SessionStatus>, BfdError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)
    }
}

fn receive_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(std::io::Error::from)?;
    } else {
        setsockopt(&s, sockopt::Ipv4RecvTtl, &true).map_err(std::io::Error::from)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// A send socket bound to a free port in 49152-65535, TTL 255, CS6.
fn send_socket(peer: IpAddr, local: Option<IpAddr>) -> std::io::Result<(StdUdpSocket, u16)> {
    let unspecified = if peer.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let ip = local.unwrap_or(unspecified);
    let domain = socket2::Domain::for_address(SocketAddr::new(ip, 0));
    let span = u64::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let first = random_u64() % span;
    let mut last_err = None;
    for i in 0..span {
        let port = SOURCE_PORTS.start() + u16::try_from((first + i) % span).unwrap_or(0);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if peer.is_ipv4() {
            s.set_ttl_v4(u32::from(TTL))?;
            s.set_tos_v4(TOS_CS6)?;
        } else {
            s.set_only_v6(true)?;
            s.set_unicast_hops_v6(u32::from(TTL))?;
            s.set_tclass_v6(TOS_CS6)?;
        }
        match s.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => {
                s.set_nonblocking(true)?;
                return Ok((s.into(), port));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free BFD source port")))
}

/// Random enough for discriminators, ports and jitter seeds: a fresh
/// `RandomState` is seeded from the OS.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A datagram that passed the TTL check, decoded.
struct Received {
    from: IpAddr,
    packet: Result<ControlPacket, super::packet::DecodeError>,
}

async fn receive_loop(sock: UdpSocket, tx: mpsc::Sender<Received>) {
    let sock = Arc::new(sock);
    let mut buf = [0u8; 512];
    loop {
        let res = sock
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(i32);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<SockaddrStorage>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .map_err(std::io::Error::from)?;
                let mut ttl = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv4Ttl(t)
                            | ControlMessageOwned::Ipv6HopLimit(t) => {
                                ttl = Some(t);
                            }
                            _ => {}
                        }
                    }
                }
                let from = msg.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                });
                Ok((msg.bytes, ttl, from))
            })
            .await;
        let (n, ttl, from) = match res {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "BFD receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(from) = from.map(|a| a.to_canonical()) else {
            continue;
        };
        if ttl != Some(i32::from(TTL)) {
            debug!(%from, ?ttl, "BFD packet discarded: TTL is not 255 (RFC 5881 §5)");
            continue;
        }
        let packet = ControlPacket::decode(buf.get(..n).unwrap_or_default());
        if tx.send(Received { from, packet }).await.is_err() {
            return;
        }
    }
}

struct Entry {
    session: Session,
    sock: StdUdpSocket,
    port: u16,
    timers: HashMap<Timer, Instant>,
}

struct Driver {
    sessions: HashMap<IpAddr, Entry>,
    notices: mpsc::UnboundedSender<Notice>,
    receivers: Vec<JoinHandle<()>>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut packets: mpsc::Receiver<Received>,
    ) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        self.stop();
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(r) = packets.recv() => self.received(r),
                () = tokio::time::sleep_until(deadline) => self.fire_timers(),
            }
        }
        self.stop();
    }

    /// Tells every peer we stop on purpose (AdminDown), so that it does not
    /// take its BGP session down for a path failure (RFC 5882 §3.2).
    fn stop(&mut self) {
        let peers: Vec<IpAddr> = self.sessions.keys().copied().collect();
        for p in peers {
            self.remove(p);
        }
        for r in &self.receivers {
            r.abort();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Add { peer, local, cfg } => self.add(peer, local, cfg),
            Command::Remove(peer) => self.remove(peer),
            Command::Shutdown(_) => {}
            Command::Status(tx) => {
                let mut v: Vec<SessionStatus> = self
                    .sessions
                    .iter()
                    .map(|(peer, e)| SessionStatus {
                        peer: *peer,
                        state: e.session.state(),
                        diag: e.session.diag(),
                        local_disc: e.session.local_disc().get(),
                        remote_disc: e.session.remote_disc(),
                        source_port: e.port,
                    })
                    .collect();
                v.sort_by_key(|s| s.peer);
                let _ = tx.send(v);
            }
        }
    }

    fn add(&mut self, peer: IpAddr, local: Option<IpAddr>, cfg: SessionConfig) {
        self.remove(peer);
        let (sock, port) = match send_socket(peer, local) {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "cannot open a BFD socket: the session stays Down");
                return;
            }
        };
        let disc = loop {
            let d = NonZeroU32::new(random_u64() as u32);
            if let Some(d) = d
                && self.sessions.values().all(|e| e.session.local_disc() != d)
            {
                break d;
            }
        };
        info!(%peer, source_port = port, local_disc = disc.get(), "BFD session added");
        self.sessions.insert(
            peer,
            Entry {
                session: Session::new(cfg, disc, random_u64()),
                sock,
                port,
                timers: HashMap::new(),
            },
        );
        self.event(peer, Event::Start);
    }

    fn remove(&mut self, peer: IpAddr) {
        if self.sessions.contains_key(&peer) {
            self.event(peer, Event::AdminDown);
            self.sessions.remove(&peer);
            info!(%peer, "BFD session removed");
        }
    }

    /// Demultiplexing (RFC 5880 §6.8.6, RFC 5881 §3).
    fn received(&mut self, r: Received) {
        let p = match r.packet {
            Ok(p) => p,
            Err(e) => {
                debug!(from = %r.from, error = %e, "BFD packet discarded");
                return;
            }
        };
        let peer = if p.your_disc != 0 {
            let Some((peer, _)) = self
                .sessions
                .iter()
                .find(|(_, e)| e.session.local_disc().get() == p.your_disc)
            else {
                debug!(from = %r.from, your_disc = p.your_disc, "BFD packet for no session");
                return;
            };
            if *peer != r.from {
                debug!(from = %r.from, session = %peer, "BFD packet from the wrong address");
                return;
            }
            *peer
        } else if self.sessions.contains_key(&r.from) {
            r.from
        } else {
            debug!(from = %r.from, "BFD packet from an address without a session");
            return;
        };
        self.event(peer, Event::Received(p));
    }

    fn event(&mut self, peer: IpAddr, ev: Event) {
        let Some(e) = self.sessions.get_mut(&peer) else {
            return;
        };
        let before = e.session.state();
        let actions = e.session.handle(ev);
        let after = e.session.state();
        if before != after {
            debug!(%peer, from = %before, to = %after, diag = %e.session.diag(), "BFD state");
        }
        let now = Instant::now();
        for a in actions {
            match a {
                Action::Send(p) => {
                    let to = SocketAddr::new(peer, PORT);
                    if let Err(err) = e.sock.send_to(&p.encode(), to) {
                        debug!(%peer, error = %err, "BFD send failed");
                    }
                }
                Action::StartTimer(t, d) => {
                    e.timers.insert(t, now + d);
                }
                Action::StopTimer(t) => {
                    e.timers.remove(&t);
                }
                Action::Up => {
                    info!(%peer, "BFD session up");
                    let _ = self.notices.send(Notice::Up(peer));
                }
                Action::Down(diag) => {
                    let remote_admin_down = e.session.remote_state() == State::AdminDown;
                    info!(%peer, %diag, remote_admin_down, "BFD session down");
                    let _ = self.notices.send(Notice::Down {
                        peer,
                        diag,
                        remote_admin_down,
                    });
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.sessions
            .values()
            .flat_map(|e| e.timers.values())
            .copied()
            .min()
            .unwrap_or(far)
            .min(far)
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (peer, e) in &mut self.sessions {
            let expired: Vec<Timer> = e
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in expired {
                e.timers.remove(&t);
                due.push((*peer, t));
            }
        }
        // Detection first: a packet due at the same instant must not carry
        // a state the expiry is about to change.
        due.sort_by_key(|(_, t)| matches!(t, Timer::Tx));
        for (peer, t) in due {
            let ev = match t {
                Timer::Tx => Event::TxTimerExpired,
                Timer::Detect => Event::DetectTimerExpired,
            };
            self.event(peer, ev);
        }
    }
}
