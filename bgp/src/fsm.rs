//! The BGP session state machine of RFC 4271 §8, sans-IO: [`Event`]s in,
//! [`Action`]s out. Timers are actions too (start/stop); the driver runs
//! them and feeds their expiry back as events. One [`Fsm`] per configured
//! peer; it tracks at most two TCP connections at a time so that it can
//! resolve connection collisions (§6.8) by BGP identifier.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::packet::error::{cease, code};
use crate::packet::{
    Capability, DecodeError, Family, Message, Notification, Open, RouteRefresh, Update,
};

/// Identifies one TCP connection; allocated by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// Refusing connections.
    Idle,
    /// Waiting for our outgoing connection to complete.
    Connect,
    /// Waiting for the peer to connect.
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPEN exchanged, waiting for KEEPALIVE.
    OpenConfirm,
    /// Routes can flow.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Timers the driver runs on the FSM's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer.
    ConnectRetry,
    /// HoldTimer.
    Hold,
    /// KeepaliveTimer.
    Keepalive,
    /// Delay before an automatic restart after an error (§8.1.1 IdleHoldTimer).
    IdleHold,
}

/// Inputs, named after RFC 4271 §8.1 events.
#[expect(
    clippy::large_enum_variant,
    reason = "events are moved once into the FSM; boxing would allocate per message"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Event 1: ManualStart.
    ManualStart,
    /// Event 2: ManualStop.
    ManualStop,
    /// Event 3: AutomaticStart (after IdleHoldTimer).
    AutomaticStart,
    /// Event 9: ConnectRetryTimer_Expires.
    ConnectRetryTimerExpires,
    /// Event 10: HoldTimer_Expires.
    HoldTimerExpires,
    /// Event 11: KeepaliveTimer_Expires.
    KeepaliveTimerExpires,
    /// Event 13: IdleHoldTimer_Expires.
    IdleHoldTimerExpires,
    /// Event 16: Tcp_CR_Acked — our outgoing connection completed.
    TcpCrAcked(ConnId),
    /// Event 17: TcpConnectionConfirmed — the peer connected to us.
    TcpConnectionConfirmed(ConnId),
    /// Event 18: TcpConnectionFails.
    TcpConnectionFails(ConnId),
    /// Event 19: BGPOpen.
    BgpOpen(ConnId, Open),
    /// Events 21/22/28: BGPHeaderErr, BGPOpenMsgErr, UpdateMsgErr.
    MessageError(ConnId, DecodeError),
    /// Events 24/25: NotifMsgVerErr, NotifMsg.
    NotifMsg(ConnId, Notification),
    /// Event 26: KeepAliveMsg.
    KeepAliveMsg(ConnId),
    /// Event 27: UpdateMsg.
    UpdateMsg(ConnId, Update),
    /// A ROUTE-REFRESH message (RFC 2918).
    RouteRefreshMsg(ConnId, RouteRefresh),
    /// The peer's BFD session went down (RFC 5882 §4.3): down at once, as
    /// on a Hold Timer expiry, and no automatic restart; ManualStart
    /// follows when BFD is Up again.
    BfdDown,
}

impl Event {
    /// The event for a message received on `conn`.
    pub fn from_message(conn: ConnId, msg: Message) -> Self {
        match msg {
            Message::Open(o) => Self::BgpOpen(conn, o),
            Message::Update(u) => Self::UpdateMsg(conn, u),
            Message::Notification(n) => Self::NotifMsg(conn, n),
            Message::Keepalive => Self::KeepAliveMsg(conn),
            Message::RouteRefresh(r) => Self::RouteRefreshMsg(conn, r),
        }
    }
}

/// Graceful restart parameters the peer sent (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGr {
    /// The peer says it has just restarted (R bit).
    pub restart_state: bool,
    /// How long to keep its routes if the session drops.
    pub restart_time: Duration,
    /// Families whose routes it preserves, with the F bit.
    pub families: Vec<(Family, bool)>,
}

/// What the two OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's AS.
    pub peer_as: u32,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// Hold time in seconds (0: no keepalives).
    pub hold_time: u16,
    /// Families both sides announced.
    pub families: Vec<Family>,
    /// Both sides use 4-octet AS numbers.
    pub four_octet_as: bool,
    /// The peer accepts ROUTE-REFRESH.
    pub route_refresh: bool,
    /// Both sides support enhanced route refresh (RFC 7313): refreshes are
    /// framed by BoRR/EoRR, and the receiver sweeps what was not refreshed.
    pub enhanced_route_refresh: bool,
    /// The peer's graceful restart capability, if both sides sent one.
    pub gr: Option<PeerGr>,
}

/// Why a session went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    /// Human-readable reason.
    pub reason: String,
    /// RFC 4724: the peer can keep forwarding, so its routes become stale
    /// instead of being removed (the session ended without NOTIFICATION).
    pub graceful: bool,
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open an outgoing TCP connection; report TcpCrAcked or TcpConnectionFails.
    Connect,
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection (after sending what was queued).
    Close(ConnId),
    /// (Re)start a timer.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session reached Established.
    Established(Negotiated),
    /// The session left Established.
    Down(Down),
    /// An UPDATE to hand to the RIB.
    Update(Update),
    /// The peer asks us to resend our routes for a family.
    RouteRefresh(RouteRefresh),
}

/// Per-peer settings the FSM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our AS.
    pub local_as: u32,
    /// The AS the peer must have.
    pub remote_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// ConnectRetryTime.
    pub connect_retry: Duration,
    /// Delay before reconnecting after an error.
    pub idle_hold: Duration,
    /// Never connect; wait for the peer.
    pub passive: bool,
    /// Families to negotiate.
    pub families: Vec<Family>,
    /// Our graceful restart restart time; `None` disables the capability.
    pub graceful_restart: Option<Duration>,
    /// Set the R bit (we restarted) and keep forwarding state (F bit).
    pub restarting: bool,
}

/// Hold time used while waiting for the peer's OPEN (§8.2.2, "large value").
const OPEN_HOLD: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conn {
    id: ConnId,
    outgoing: bool,
}

/// One peer's session state machine.
#[derive(Debug)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    conn: Option<Conn>,
    /// A second connection during OpenSent/OpenConfirm, kept until collision
    /// resolution picks one.
    candidate: Option<Conn>,
    /// The OPEN received on `conn` (OpenConfirm/Established).
    negotiated: Option<Negotiated>,
    /// Set by ManualStop: no automatic restart.
    stopped: bool,
}

impl Fsm {
    /// A new FSM in Idle; send [`Event::ManualStart`] to begin.
    pub fn new(cfg: FsmConfig) -> Self {
        Self {
            cfg,
            state: State::Idle,
            conn: None,
            candidate: None,
            negotiated: None,
            stopped: true,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The connection carrying the session, if any.
    pub fn connection(&self) -> Option<ConnId> {
        self.conn.map(|c| c.id)
    }

    /// What was negotiated, once OPENs were exchanged.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Settings in use.
    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// Clears the R bit once a session came up after our restart.
    pub fn set_restarting(&mut self, restarting: bool) {
        self.cfg.restarting = restarting;
    }

    /// Our OPEN.
    pub fn open_message(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .cfg
            .families
            .iter()
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                Capability::Multiprotocol { afi, safi }
            })
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::EnhancedRouteRefresh);
        if let Some(rt) = self.cfg.graceful_restart {
            caps.push(Capability::GracefulRestart {
                restart_state: self.cfg.restarting,
                notification: false,
                restart_time: u16::try_from(rt.as_secs()).unwrap_or(0x0fff).min(0x0fff),
                families: self
                    .cfg
                    .families
                    .iter()
                    .map(|f| {
                        let (afi, safi) = f.afi_safi();
                        crate::packet::GrFamily {
                            afi,
                            safi,
                            forwarding: self.cfg.restarting,
                        }
                    })
                    .collect(),
            });
        }
        caps.push(Capability::FourOctetAs {
            asn: self.cfg.local_as,
        });
        Open::new(
            self.cfg.local_as,
            self.cfg.hold_time,
            self.cfg.router_id,
            caps,
        )
    }

    /// Feeds one event; returns the actions to perform, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.step(event, &mut out);
        out
    }

    fn is_conn(&self, id: ConnId) -> bool {
        self.conn.is_some_and(|c| c.id == id)
    }

    fn is_candidate(&self, id: ConnId) -> bool {
        self.candidate.is_some_and(|c| c.id == id)
    }

    fn step(&mut self, event: Event, out: &mut Vec<Action>) {
        use State::*;
        // Events on a collision candidate are handled apart from the main
        // connection's.
        if let Some(id) = event_conn(&event)
            && self.is_candidate(id)
        {
            self.candidate_event(event, out);
            return;
        }
        match (self.state, event) {
            (_, Event::ManualStop) => {
                self.stopped = true;
                out.push(Action::StopTimer(Timer::IdleHold));
                self.go_idle(
                    out,
                    Some(Notification::new(code::CEASE, cease::ADMIN_SHUTDOWN)),
                    "administratively stopped",
                    false,
                );
            }
            (_, Event::BfdDown) => {
                self.stopped = true;
                out.push(Action::StopTimer(Timer::IdleHold));
                self.go_idle(
                    out,
                    Some(Notification::new(code::CEASE, cease::BFD_DOWN)),
                    "BFD session down",
                    false,
                );
            }
            (Idle, Event::ManualStart) => {
                self.stopped = false;
                self.start(out);
            }
            (Idle, Event::AutomaticStart | Event::IdleHoldTimerExpires) if !self.stopped => {
                self.start(out);
            }
            (Idle, Event::TcpConnectionConfirmed(id) | Event::TcpCrAcked(id)) => {
                out.push(Action::Close(id));
            }
            (Idle, _) => {}
            (Connect | Active, Event::ConnectRetryTimerExpires) => {
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
                if !self.cfg.passive {
                    out.push(Action::Connect);
                    self.state = Connect;
                }
            }
            (Connect | Active, Event::TcpCrAcked(id)) => self.connected(id, true, out),
            (Connect | Active, Event::TcpConnectionConfirmed(id)) => {
                self.connected(id, false, out);
            }
            (Connect, Event::TcpConnectionFails(_)) => self.state = Active,
            (Connect | Active, _) => {}
            (OpenSent | OpenConfirm, Event::TcpCrAcked(id)) => self.add_candidate(id, true, out),
            (OpenSent | OpenConfirm, Event::TcpConnectionConfirmed(id)) => {
                self.add_candidate(id, false, out);
            }
            (Established, Event::TcpConnectionConfirmed(id)) => {
                if self.negotiated.as_ref().is_some_and(|n| n.gr.is_some()) {
                    // RFC 4724 §4.2: a new connection from a graceful restart
                    // peer means it restarted; its routes go stale and the
                    // new connection carries the next session.
                    self.go_idle(out, None, "peer restarted (new connection)", true);
                    self.stopped = false;
                    out.push(Action::StopTimer(Timer::IdleHold));
                    self.connected(id, false, out);
                } else {
                    out.push(Action::Close(id));
                }
            }
            (Established, Event::TcpCrAcked(id)) => out.push(Action::Close(id)),
            (OpenSent, Event::TcpConnectionFails(id)) if self.is_conn(id) => {
                // RFC 4271 §8.2.2: back to Active, listening, with the
                // ConnectRetryTimer running. Going Idle instead (where
                // incoming connections are refused) lets two peers that
                // restart together refuse each other forever.
                self.conn = None;
                out.push(Action::Close(id));
                match self.candidate.take() {
                    // A collision candidate (its OPEN sent) becomes the
                    // connection.
                    Some(c) => {
                        self.conn = Some(c);
                        out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD));
                    }
                    None => {
                        out.push(Action::StopTimer(Timer::Hold));
                        out.push(Action::StartTimer(
                            Timer::ConnectRetry,
                            self.cfg.connect_retry,
                        ));
                        self.state = Active;
                    }
                }
            }
            (_, Event::TcpConnectionFails(id)) if self.is_conn(id) => {
                let graceful = self.state == Established;
                self.go_idle(out, None, "connection lost", graceful);
            }
            (_, Event::TcpConnectionFails(_)) => {}
            (_, Event::HoldTimerExpires) => {
                self.go_idle(
                    out,
                    Some(Notification::new(code::HOLD_TIMER, 0)),
                    "hold timer expired",
                    false,
                );
            }
            (OpenConfirm | Established, Event::KeepaliveTimerExpires) => {
                if let Some(c) = self.conn {
                    out.push(Action::Send(c.id, Message::Keepalive));
                }
                self.start_keepalive(out);
            }
            (_, Event::KeepaliveTimerExpires | Event::ConnectRetryTimerExpires) => {}
            (_, Event::IdleHoldTimerExpires | Event::AutomaticStart | Event::ManualStart) => {}
            (_, Event::MessageError(id, e)) if self.is_conn(id) => {
                let n = e.to_notification();
                self.go_idle(out, Some(n), &format!("bad message: {e}"), false);
            }
            (_, Event::NotifMsg(id, n)) if self.is_conn(id) => {
                self.go_idle(out, None, &format!("NOTIFICATION received: {n}"), false);
            }
            (OpenSent, Event::BgpOpen(id, open)) if self.is_conn(id) => {
                self.open_received(open, out);
            }
            (OpenConfirm, Event::KeepAliveMsg(id)) if self.is_conn(id) => {
                self.restart_hold(out);
                self.state = Established;
                if let Some(n) = self.negotiated.clone() {
                    out.push(Action::Established(n));
                }
            }
            (Established, Event::KeepAliveMsg(id)) if self.is_conn(id) => self.restart_hold(out),
            (Established, Event::UpdateMsg(id, u)) if self.is_conn(id) => {
                self.restart_hold(out);
                out.push(Action::Update(u));
            }
            (Established, Event::RouteRefreshMsg(id, r)) if self.is_conn(id) => {
                out.push(Action::RouteRefresh(r));
            }
            (_, ev) => {
                if event_conn(&ev).is_some_and(|id| self.is_conn(id)) {
                    // §8.2.2: any other message in these states is an FSM error.
                    self.go_idle(
                        out,
                        Some(Notification::new(code::FSM, 0)),
                        "unexpected message",
                        false,
                    );
                } else if let Some(id) = event_conn(&ev) {
                    out.push(Action::Close(id));
                }
            }
        }
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
        }
    }

    fn connected(&mut self, id: ConnId, outgoing: bool, out: &mut Vec<Action>) {
        out.push(Action::StopTimer(Timer::ConnectRetry));
        self.conn = Some(Conn { id, outgoing });
        out.push(Action::Send(id, Message::Open(self.open_message())));
        out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD));
        self.state = State::OpenSent;
    }

    fn add_candidate(&mut self, id: ConnId, outgoing: bool, out: &mut Vec<Action>) {
        if self.candidate.is_some() {
            out.push(Action::Close(id));
            return;
        }
        self.candidate = Some(Conn { id, outgoing });
        out.push(Action::Send(id, Message::Open(self.open_message())));
    }

    fn candidate_event(&mut self, event: Event, out: &mut Vec<Action>) {
        let Some(cand) = self.candidate else {
            return;
        };
        match event {
            Event::BgpOpen(_, open) => {
                // §6.8: the connection opened by the speaker with the higher
                // BGP identifier survives.
                let local_wins = u32::from(self.cfg.router_id) > u32::from(open.bgp_id);
                let keep_outgoing = local_wins;
                let collision = Notification::new(code::CEASE, cease::COLLISION);
                let main_is_kept = self.conn.is_some_and(|c| c.outgoing == keep_outgoing)
                    || cand.outgoing != keep_outgoing;
                self.candidate = None;
                if main_is_kept {
                    out.push(Action::Send(cand.id, Message::Notification(collision)));
                    out.push(Action::Close(cand.id));
                    return;
                }
                if let Some(old) = self.conn.take() {
                    out.push(Action::Send(old.id, Message::Notification(collision)));
                    out.push(Action::Close(old.id));
                }
                self.conn = Some(cand);
                self.state = State::OpenSent;
                out.push(Action::StopTimer(Timer::Keepalive));
                self.open_received(open, out);
            }
            Event::TcpConnectionFails(_)
            | Event::NotifMsg(..)
            | Event::MessageError(..)
            | Event::KeepAliveMsg(_)
            | Event::UpdateMsg(..)
            | Event::RouteRefreshMsg(..) => {
                self.candidate = None;
                out.push(Action::Close(cand.id));
            }
            _ => {}
        }
    }

    fn check_open(&self, open: &Open) -> Result<(), DecodeError> {
        if open.asn() != self.cfg.remote_as {
            return Err(DecodeError::BadPeerAs { asn: open.asn() });
        }
        let ibgp = self.cfg.remote_as == self.cfg.local_as;
        if open.bgp_id.is_unspecified() || (ibgp && open.bgp_id == self.cfg.router_id) {
            return Err(DecodeError::BadBgpId { id: open.bgp_id });
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(DecodeError::UnacceptableHoldTime {
                hold_time: open.hold_time,
            });
        }
        Ok(())
    }

    fn open_received(&mut self, open: Open, out: &mut Vec<Action>) {
        if let Err(e) = self.check_open(&open) {
            let n = e.to_notification();
            self.go_idle(out, Some(n), &format!("OPEN refused: {e}"), false);
            return;
        }
        let hold_time = self.cfg.hold_time.min(open.hold_time);
        let families: Vec<Family> = open
            .families()
            .into_iter()
            .filter(|f| self.cfg.families.contains(f))
            .collect();
        let gr = match (self.cfg.graceful_restart, open.graceful_restart()) {
            (
                Some(_),
                Some(Capability::GracefulRestart {
                    restart_state,
                    restart_time,
                    families: grf,
                    ..
                }),
            ) => Some(PeerGr {
                restart_state: *restart_state,
                restart_time: Duration::from_secs(u64::from(*restart_time)),
                families: grf
                    .iter()
                    .filter_map(|g| Family::from_afi_safi(g.afi, g.safi).map(|f| (f, g.forwarding)))
                    .collect(),
            }),
            _ => None,
        };
        self.negotiated = Some(Negotiated {
            peer_as: open.asn(),
            peer_id: open.bgp_id,
            hold_time,
            families,
            four_octet_as: open.four_octet_as().is_some(),
            route_refresh: open.route_refresh(),
            enhanced_route_refresh: open
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::EnhancedRouteRefresh)),
            gr,
        });
        if let Some(c) = self.conn {
            out.push(Action::Send(c.id, Message::Keepalive));
        }
        self.start_keepalive(out);
        self.restart_hold(out);
        self.state = State::OpenConfirm;
    }

    fn hold(&self) -> u16 {
        self.negotiated.as_ref().map_or(0, |n| n.hold_time)
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        match self.hold() {
            0 => out.push(Action::StopTimer(Timer::Hold)),
            h => out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(h)),
            )),
        }
    }

    fn start_keepalive(&self, out: &mut Vec<Action>) {
        match self.hold() {
            0 => out.push(Action::StopTimer(Timer::Keepalive)),
            h => out.push(Action::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(u64::from((h / 3).max(1))),
            )),
        }
    }

    /// Goes back to Idle: optionally sends a NOTIFICATION, closes every
    /// connection, stops timers, reports the session down if it was up and
    /// arms the automatic restart unless stopped by hand.
    fn go_idle(
        &mut self,
        out: &mut Vec<Action>,
        notify: Option<Notification>,
        reason: &str,
        graceful: bool,
    ) {
        for c in [self.conn.take(), self.candidate.take()]
            .into_iter()
            .flatten()
        {
            if let Some(n) = &notify
                && self.state != State::Connect
                && self.state != State::Active
            {
                out.push(Action::Send(c.id, Message::Notification(n.clone())));
            }
            out.push(Action::Close(c.id));
        }
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(t));
        }
        if self.state == State::Established {
            let graceful = graceful && self.negotiated.as_ref().is_some_and(|n| n.gr.is_some());
            out.push(Action::Down(Down {
                reason: reason.to_string(),
                graceful,
            }));
        }
        self.negotiated = None;
        self.state = State::Idle;
        if !self.stopped {
            out.push(Action::StartTimer(Timer::IdleHold, self.cfg.idle_hold));
        }
    }
}

fn event_conn(e: &Event) -> Option<ConnId> {
    match e {
        Event::TcpCrAcked(id)
        | Event::TcpConnectionConfirmed(id)
        | Event::TcpConnectionFails(id)
        | Event::BgpOpen(id, _)
        | Event::MessageError(id, _)
        | Event::NotifMsg(id, _)
        | Event::KeepAliveMsg(id)
        | Event::UpdateMsg(id, _)
        | Event::RouteRefreshMsg(id, _) => Some(*id),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
