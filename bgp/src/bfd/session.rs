//! One BFD session (RFC 5880 §6, asynchronous mode, no echo, no
//! authentication), sans-IO like [`crate::fsm`]: [`Event`]s in, [`Action`]s
//! out; the driver runs the two timers and feeds their expiry back.
//!
//! The variables are those of §6.8.1 (`bfd.SessionState`, `bfd.RemoteDiscr`,
//! ...). Intervals follow §6.8.2-§6.8.4:
//! - we advertise a Desired Min TX of at least 1 s while not Up (§6.8.3) and
//!   the configured one once Up, announcing the change with a Poll sequence;
//!   a larger interval is used only after the Final (a smaller one at once);
//! - the transmit interval is max(our Desired Min TX, the remote's Required
//!   Min RX), jittered to 75-100% of it (75-90% with a detect multiplier of
//!   1, §6.8.7);
//! - the detection time is the remote's Detect Mult times max(our Required
//!   Min RX, the remote's Desired Min TX) (§6.8.4).

use std::num::{NonZeroU8, NonZeroU32};
use std::time::Duration;

use super::packet::{ControlPacket, Diag, State};

/// While not Up, we send at most one packet a second (§6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// A session's configured intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Desired Min TX Interval once Up.
    pub desired_min_tx: Duration,
    /// Required Min RX Interval.
    pub required_min_rx: Duration,
    /// Detect Mult.
    pub detect_mult: NonZeroU8,
}

/// The two timers the driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Time to send the next periodic packet.
    Tx,
    /// Detection time: no packet from the remote for this long.
    Detect,
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin: send the first packet, arm the transmit timer.
    Start,
    /// A packet for this session passed the codec's and the driver's checks
    /// (version, length, discriminators, TTL 255).
    Received(ControlPacket),
    /// The transmit timer fired.
    TxTimerExpired,
    /// The detection timer fired.
    DetectTimerExpired,
    /// Hold the session down by hand (tell the remote: AdminDown).
    AdminDown,
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the remote.
    Send(ControlPacket),
    /// (Re)arm a timer.
    StartTimer(Timer, Duration),
    /// Disarm a timer.
    StopTimer(Timer),
    /// The session reached Up.
    Up,
    /// The session left Up, for this reason.
    Down(Diag),
}

/// One BFD session.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    /// bfd.LocalDiscr.
    local_disc: NonZeroU32,
    /// bfd.SessionState.
    state: State,
    /// bfd.RemoteSessionState.
    remote_state: State,
    /// bfd.RemoteDiscr.
    remote_disc: u32,
    /// bfd.LocalDiag.
    diag: Diag,
    /// bfd.RemoteMinRxInterval (1 µs until the remote says, §6.8.1).
    remote_min_rx: Duration,
    /// The remote's Desired Min TX, from its last packet.
    remote_min_tx: Duration,
    /// The remote's Detect Mult, from its last packet.
    remote_mult: u8,
    /// bfd.RemoteDemandMode.
    remote_demand: bool,
    /// bfd.DesiredMinTxInterval: what we advertise.
    desired_min_tx: Duration,
    /// The Desired Min TX our transmit timer uses; lags `desired_min_tx`
    /// while a Poll sequence announcing an increase is unanswered.
    tx_in_use: Duration,
    /// A Poll sequence is in progress.
    polling: bool,
    /// xorshift state for the jitter.
    rng: u64,
}

impl Session {
    /// A session in Down with local discriminator `local_disc`; `seed`
    /// feeds the transmit jitter.
    pub fn new(cfg: SessionConfig, local_disc: NonZeroU32, seed: u64) -> Self {
        let slow = cfg.desired_min_tx.max(SLOW_TX);
        Self {
            cfg,
            local_disc,
            state: State::Down,
            remote_state: State::Down,
            remote_disc: 0,
            diag: Diag::None,
            remote_min_rx: Duration::from_micros(1),
            remote_min_tx: Duration::ZERO,
            remote_mult: 0,
            remote_demand: false,
            desired_min_tx: slow,
            tx_in_use: slow,
            polling: false,
            rng: seed | 1,
        }
    }

    /// bfd.SessionState.
    pub fn state(&self) -> State {
        self.state
    }

    /// bfd.RemoteSessionState.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    /// bfd.LocalDiag.
    pub fn diag(&self) -> Diag {
        self.diag
    }

    /// bfd.LocalDiscr.
    pub fn local_disc(&self) -> NonZeroU32 {
        self.local_disc
    }

    /// bfd.RemoteDiscr (0 while unknown).
    pub fn remote_disc(&self) -> u32 {
        self.remote_disc
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The detection time (§6.8.4), once the remote has been heard.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_mult > 0).then(|| {
            self.cfg
                .required_min_rx
                .max(self.remote_min_tx)
                .saturating_mul(u32::from(self.remote_mult))
        })
    }

    /// The transmit interval before jitter (§6.8.7); `None`: send nothing
    /// periodically (the remote asked for no packets, or Demand mode).
    pub fn tx_interval(&self) -> Option<Duration> {
        if self.remote_min_rx.is_zero() {
            return None;
        }
        if self.remote_demand && self.state == State::Up && self.remote_state == State::Up {
            return None;
        }
        Some(self.tx_in_use.max(self.remote_min_rx))
    }

    /// Feeds one event; returns the actions, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Start => {
                self.send(false, &mut out);
                self.arm_tx(&mut out);
            }
            Event::Received(p) => self.received(p, &mut out),
            Event::TxTimerExpired => {
                if self.tx_interval().is_some() {
                    self.send(false, &mut out);
                }
                self.arm_tx(&mut out);
            }
            Event::DetectTimerExpired => {
                // §6.8.1: RemoteDiscr goes back to 0 when the remote has
                // not been heard for a detection time; §6.8.4: Init or Up
                // go Down.
                self.remote_disc = 0;
                self.remote_mult = 0;
                self.remote_demand = false;
                if matches!(self.state, State::Init | State::Up) {
                    self.set_state(State::Down, Diag::DetectionTimeExpired, &mut out);
                }
            }
            Event::AdminDown => {
                if self.state != State::AdminDown {
                    self.set_state(State::AdminDown, Diag::AdminDown, &mut out);
                    out.push(Action::StopTimer(Timer::Detect));
                }
            }
        }
        out
    }

    /// §6.8.6, from "Set bfd.RemoteDiscr to the value of My
    /// Discriminator" on (the codec and the driver did the checks above it).
    fn received(&mut self, p: ControlPacket, out: &mut Vec<Action>) {
        let interval_before = self.tx_interval();
        self.remote_disc = p.my_disc.get();
        self.remote_state = p.state;
        self.remote_demand = p.demand;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
        self.remote_min_tx = Duration::from_micros(u64::from(p.desired_min_tx));
        self.remote_mult = p.detect_mult.get();
        if p.final_ && self.polling {
            // The remote has seen our new intervals: use them.
            self.polling = false;
            self.tx_in_use = self.desired_min_tx;
        }
        if self.state == State::AdminDown {
            return;
        }
        // The packet counts as received for the detection time.
        if let Some(d) = self.detection_time() {
            out.push(Action::StartTimer(Timer::Detect, d));
        }
        match (self.state, p.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, Diag::NeighborDown, out);
            }
            (State::Down, State::Down) => self.set_state(State::Init, Diag::None, out),
            (State::Down, State::Init) => self.set_state(State::Up, Diag::None, out),
            (State::Init, State::Init | State::Up) => self.set_state(State::Up, Diag::None, out),
            (State::Up, State::Down) => self.set_state(State::Down, Diag::NeighborDown, out),
            _ => {}
        }
        if p.poll {
            // Answer at once, whatever the transmit timer says (§6.8.7);
            // never Poll and Final in one packet (§6.5).
            self.send(true, out);
        }
        // §6.8.7: the interval is recalculated when the remote's Required
        // Min RX changes. A shorter one must not wait for the timer armed
        // with the longer one: the remote (FRR, asking for 1 s until Up,
        // then 300 ms with a Poll) would time out first.
        let interval_after = self.tx_interval();
        if interval_after != interval_before
            && interval_after.is_some_and(|a| interval_before.is_none_or(|b| a < b))
            && !out
                .iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::Tx, _)))
        {
            self.arm_tx(out);
        }
    }

    fn set_state(&mut self, to: State, diag: Diag, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        // bfd.LocalDiag: why we last left Up (kept through Init), cleared
        // once Up again.
        if to == State::Up {
            self.diag = Diag::None;
        } else if diag != Diag::None {
            self.diag = diag;
        }
        if to == State::Up {
            // §6.8.3: the configured interval applies only once Up; a
            // change is announced by a Poll sequence.
            self.change_desired_tx(self.cfg.desired_min_tx);
            out.push(Action::Up);
        } else {
            if from == State::Up {
                out.push(Action::Down(self.diag));
            }
            let slow = self.cfg.desired_min_tx.max(SLOW_TX);
            self.desired_min_tx = slow;
            self.tx_in_use = slow;
            self.polling = false;
        }
        // Tell the remote at once rather than at the next tick: both sides
        // reach Up (or learn of a Down) one round trip sooner.
        self.send(false, out);
        self.arm_tx(out);
    }

    fn change_desired_tx(&mut self, to: Duration) {
        if to == self.desired_min_tx {
            return;
        }
        // §6.8.3: a larger interval waits for the Final; a smaller one can
        // be used at once (the remote's detection time only gets safer).
        if to < self.tx_in_use {
            self.tx_in_use = to;
        }
        self.desired_min_tx = to;
        self.polling = true;
    }

    /// The packet we send now (§6.8.7 lists the field values).
    pub fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            cpi: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_min_tx),
            required_min_rx: micros(self.cfg.required_min_rx),
            required_min_echo_rx: 0,
        }
    }

    fn send(&self, final_: bool, out: &mut Vec<Action>) {
        out.push(Action::Send(self.packet(final_)));
    }

    fn arm_tx(&mut self, out: &mut Vec<Action>) {
        match self.tx_interval() {
            Some(i) => {
                let j = self.jitter(i);
                out.push(Action::StartTimer(Timer::Tx, j));
            }
            // Not sending now; look again after the slow interval (the
            // remote may change its mind).
            None => out.push(Action::StartTimer(Timer::Tx, SLOW_TX)),
        }
    }

    /// `i` reduced by 0-25% (0-10% less at least with Detect Mult 1, so the
    /// interval is 75-90%), §6.8.7.
    fn jitter(&mut self, i: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let r = (self.rng % 10_000) as f64 / 10_000.0;
        let max_cut = 0.25;
        let min_cut = if self.cfg.detect_mult.get() == 1 {
            0.10
        } else {
            0.0
        };
        i.mul_f64(1.0 - (min_cut + r * (max_cut - min_cut)))
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
