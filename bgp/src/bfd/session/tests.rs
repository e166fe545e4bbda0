//! One test per RFC 5880 behaviour, named as a sentence.

use super::*;

const OURS: u32 = 0x1111;
const THEIRS: u32 = 0x2222;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cfg(mult: u8) -> SessionConfig {
    SessionConfig {
        desired_min_tx: ms(300),
        required_min_rx: ms(300),
        detect_mult: NonZeroU8::new(mult).unwrap(),
    }
}

fn session() -> Session {
    Session::new(cfg(3), NonZeroU32::new(OURS).unwrap(), 42)
}

/// A packet from the remote: state, your discriminator, its intervals.
fn remote(state: State, your: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: NonZeroU8::new(3).unwrap(),
        my_disc: NonZeroU32::new(THEIRS).unwrap(),
        your_disc: your,
        desired_min_tx: 300_000,
        required_min_rx: 300_000,
        required_min_echo_rx: 0,
    }
}

fn sent(a: &[Action]) -> Vec<ControlPacket> {
    a.iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn timer(a: &[Action], t: Timer) -> Option<Duration> {
    a.iter().rev().find_map(|a| match a {
        Action::StartTimer(x, d) if *x == t => Some(*d),
        _ => None,
    })
}

/// Down -> Init -> Up against a remote doing the same.
fn up() -> Session {
    let mut s = session();
    s.handle(Event::Start);
    s.handle(Event::Received(remote(State::Down, 0)));
    s.handle(Event::Received(remote(State::Up, OURS)));
    assert_eq!(s.state(), State::Up);
    s
}

#[test]
fn a_new_session_sends_down_at_once_and_then_at_most_once_a_second() {
    let mut s = session();
    let a = s.handle(Event::Start);
    let p = sent(&a);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].state, State::Down);
    assert_eq!(p[0].your_disc, 0);
    assert_eq!(
        p[0].desired_min_tx, 1_000_000,
        "§6.8.3: >= 1 s while not Up"
    );
    assert_eq!(p[0].required_min_rx, 300_000);
    assert_eq!(p[0].required_min_echo_rx, 0, "no echo");
    let t = timer(&a, Timer::Tx).unwrap();
    assert!(t >= ms(750) && t <= ms(1000), "{t:?}");
}

#[test]
fn down_hearing_down_goes_to_init_and_says_so_at_once() {
    let mut s = session();
    s.handle(Event::Start);
    let a = s.handle(Event::Received(remote(State::Down, 0)));
    assert_eq!(s.state(), State::Init);
    let p = sent(&a);
    assert_eq!(p.last().unwrap().state, State::Init);
    assert_eq!(p.last().unwrap().your_disc, THEIRS);
    assert!(!a.contains(&Action::Up));
}

#[test]
fn down_hearing_init_goes_up_and_reports_it() {
    let mut s = session();
    s.handle(Event::Start);
    let a = s.handle(Event::Received(remote(State::Init, OURS)));
    assert_eq!(s.state(), State::Up);
    assert!(a.contains(&Action::Up));
}

#[test]
fn down_hearing_up_stays_down() {
    let mut s = session();
    s.handle(Event::Start);
    s.handle(Event::Received(remote(State::Up, OURS)));
    assert_eq!(s.state(), State::Down);
}

#[test]
fn init_hearing_up_or_init_goes_up() {
    for st in [State::Up, State::Init] {
        let mut s = session();
        s.handle(Event::Received(remote(State::Down, 0)));
        assert_eq!(s.state(), State::Init);
        let a = s.handle(Event::Received(remote(st, OURS)));
        assert_eq!(s.state(), State::Up, "{st:?}");
        assert!(a.contains(&Action::Up));
    }
}

#[test]
fn reaching_up_announces_the_configured_interval_with_a_poll_and_uses_it_at_once() {
    let mut s = session();
    s.handle(Event::Received(remote(State::Down, 0)));
    let a = s.handle(Event::Received(remote(State::Up, OURS)));
    let p = sent(&a);
    let last = p.last().unwrap();
    assert_eq!(last.state, State::Up);
    assert!(last.poll);
    assert_eq!(last.desired_min_tx, 300_000);
    // Smaller than before: no need to wait for the Final.
    let t = timer(&a, Timer::Tx).unwrap();
    assert!(t >= ms(225) && t <= ms(300), "{t:?}");
    // Periodic packets keep the Poll bit until the Final comes.
    let a = s.handle(Event::TxTimerExpired);
    assert!(sent(&a)[0].poll);
}

#[test]
fn a_final_ends_the_poll_sequence() {
    let mut s = up();
    s.handle(Event::Received(ControlPacket {
        final_: true,
        ..remote(State::Up, OURS)
    }));
    let a = s.handle(Event::TxTimerExpired);
    let p = sent(&a);
    assert!(!p[0].poll && !p[0].final_);
}

#[test]
fn a_poll_is_answered_at_once_with_a_final_and_no_poll_bit() {
    let mut s = up();
    let a = s.handle(Event::Received(ControlPacket {
        poll: true,
        ..remote(State::Up, OURS)
    }));
    let p = sent(&a);
    assert_eq!(p.len(), 1);
    assert!(p[0].final_);
    assert!(!p[0].poll, "§6.5: never both");
}

#[test]
fn the_detection_time_is_the_remote_multiplier_times_the_agreed_interval() {
    let mut s = up();
    // Remote sends slower than we require: its interval counts.
    let a = s.handle(Event::Received(ControlPacket {
        detect_mult: NonZeroU8::new(5).unwrap(),
        desired_min_tx: 500_000,
        ..remote(State::Up, OURS)
    }));
    assert_eq!(timer(&a, Timer::Detect), Some(ms(2500)));
    // Remote could send faster than we require: our Required Min RX counts.
    let a = s.handle(Event::Received(ControlPacket {
        detect_mult: NonZeroU8::new(2).unwrap(),
        desired_min_tx: 100_000,
        ..remote(State::Up, OURS)
    }));
    assert_eq!(timer(&a, Timer::Detect), Some(ms(600)));
}

#[test]
fn the_detection_time_expiring_takes_an_up_session_down_with_diagnostic_1() {
    let mut s = up();
    let a = s.handle(Event::DetectTimerExpired);
    assert_eq!(s.state(), State::Down);
    assert!(a.contains(&Action::Down(Diag::DetectionTimeExpired)));
    let p = sent(&a);
    assert_eq!(p[0].state, State::Down);
    assert_eq!(p[0].diag, Diag::DetectionTimeExpired);
    assert_eq!(p[0].your_disc, 0, "§6.8.1: remote discriminator forgotten");
    assert_eq!(p[0].desired_min_tx, 1_000_000, "back to slow transmission");
    assert!(!p[0].poll);
}

#[test]
fn the_detection_time_expiring_takes_an_init_session_down_without_reporting_a_down() {
    let mut s = session();
    s.handle(Event::Received(remote(State::Down, 0)));
    let a = s.handle(Event::DetectTimerExpired);
    assert_eq!(s.state(), State::Down);
    assert!(!a.iter().any(|a| matches!(a, Action::Down(_))));
}

#[test]
fn up_hearing_down_goes_down_with_diagnostic_3() {
    let mut s = up();
    let a = s.handle(Event::Received(remote(State::Down, 0)));
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.diag(), Diag::NeighborDown);
    assert!(a.contains(&Action::Down(Diag::NeighborDown)));
}

#[test]
fn a_remote_admin_down_takes_an_up_session_down_with_diagnostic_3() {
    let mut s = up();
    let a = s.handle(Event::Received(remote(State::AdminDown, OURS)));
    assert_eq!(s.state(), State::Down);
    assert!(a.contains(&Action::Down(Diag::NeighborDown)));
}

#[test]
fn a_remote_admin_down_leaves_a_down_session_down() {
    let mut s = session();
    s.handle(Event::Received(remote(State::AdminDown, 0)));
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.diag(), Diag::None);
}

#[test]
fn admin_down_is_sent_with_diagnostic_7_and_later_packets_change_nothing() {
    let mut s = up();
    let a = s.handle(Event::AdminDown);
    assert!(a.contains(&Action::Down(Diag::AdminDown)));
    assert!(a.contains(&Action::StopTimer(Timer::Detect)));
    let p = sent(&a);
    assert_eq!((p[0].state, p[0].diag), (State::AdminDown, Diag::AdminDown));
    let a = s.handle(Event::Received(remote(State::Up, OURS)));
    assert_eq!(s.state(), State::AdminDown);
    assert!(a.is_empty());
}

#[test]
fn the_transmit_interval_is_the_larger_of_ours_and_the_remote_rx_jittered_to_75_to_100_percent() {
    let mut s = up();
    // The remote wants packets no faster than every 400 ms.
    s.handle(Event::Received(ControlPacket {
        required_min_rx: 400_000,
        ..remote(State::Up, OURS)
    }));
    assert_eq!(s.tx_interval(), Some(ms(400)));
    let samples: Vec<Duration> = (0..500)
        .map(|_| timer(&s.handle(Event::TxTimerExpired), Timer::Tx).unwrap())
        .collect();
    assert!(samples.iter().all(|t| *t >= ms(300) && *t <= ms(400)));
    assert!(samples.iter().any(|t| *t < ms(320)));
    assert!(samples.iter().any(|t| *t > ms(380)));
}

#[test]
fn with_a_detect_multiplier_of_1_the_jitter_is_75_to_90_percent() {
    let mut s = Session::new(cfg(1), NonZeroU32::new(OURS).unwrap(), 7);
    let samples: Vec<Duration> = (0..500)
        .map(|_| timer(&s.handle(Event::TxTimerExpired), Timer::Tx).unwrap())
        .collect();
    assert!(samples.iter().all(|t| *t >= ms(750) && *t <= ms(900)));
    assert!(samples.iter().any(|t| *t > ms(880)));
}

#[test]
fn a_remote_required_rx_of_zero_stops_periodic_packets() {
    let mut s = up();
    s.handle(Event::Received(ControlPacket {
        required_min_rx: 0,
        ..remote(State::Up, OURS)
    }));
    let a = s.handle(Event::TxTimerExpired);
    assert!(sent(&a).is_empty());
}

#[test]
fn remote_demand_mode_stops_periodic_packets_while_both_are_up() {
    let mut s = up();
    s.handle(Event::Received(ControlPacket {
        demand: true,
        ..remote(State::Up, OURS)
    }));
    assert!(sent(&s.handle(Event::TxTimerExpired)).is_empty());
}

#[test]
fn after_going_down_the_session_comes_up_again_and_polls_again() {
    let mut s = up();
    s.handle(Event::DetectTimerExpired);
    s.handle(Event::Received(remote(State::Down, 0)));
    assert_eq!(s.state(), State::Init);
    let a = s.handle(Event::Received(remote(State::Up, OURS)));
    assert!(a.contains(&Action::Up));
    assert!(sent(&a).last().unwrap().poll);
    assert_eq!(s.diag(), Diag::None);
}

#[test]
fn a_remote_asking_for_packets_sooner_gets_the_transmit_timer_re_armed_at_once() {
    let mut s = session();
    s.handle(Event::Start);
    // FRR asks for 1 s while not Up...
    s.handle(Event::Received(ControlPacket {
        required_min_rx: 1_000_000,
        desired_min_tx: 1_000_000,
        ..remote(State::Init, OURS)
    }));
    assert_eq!(s.state(), State::Up);
    assert_eq!(s.tx_interval(), Some(ms(1000)));
    // ...then 300 ms with a Poll once Up: the next packet must not wait for
    // the 1 s timer, or its 900 ms detection time runs out.
    let a = s.handle(Event::Received(ControlPacket {
        poll: true,
        ..remote(State::Up, OURS)
    }));
    let t = timer(&a, Timer::Tx).unwrap();
    assert!(t <= ms(300), "{t:?}");
}

#[test]
fn every_state_and_received_state_moves_as_rfc_5880_section_6_8_6_says() {
    use State::*;
    let in_state = |st: State| {
        let mut s = session();
        match st {
            AdminDown => {
                s.handle(Event::AdminDown);
            }
            Down => {}
            Init => {
                s.handle(Event::Received(remote(Down, 0)));
            }
            Up => s = up(),
        }
        assert_eq!(s.state(), st);
        s
    };
    // (our state, the state the remote sends) -> our next state
    let table = [
        (AdminDown, AdminDown, AdminDown),
        (AdminDown, Down, AdminDown),
        (AdminDown, Init, AdminDown),
        (AdminDown, Up, AdminDown),
        (Down, AdminDown, Down),
        (Down, Down, Init),
        (Down, Init, Up),
        (Down, Up, Down),
        (Init, AdminDown, Down),
        (Init, Down, Init),
        (Init, Init, Up),
        (Init, Up, Up),
        (Up, AdminDown, Down),
        (Up, Down, Down),
        (Up, Init, Up),
        (Up, Up, Up),
    ];
    for (from, heard, to) in table {
        let mut s = in_state(from);
        let your = if heard == Down || heard == AdminDown {
            0
        } else {
            OURS
        };
        s.handle(Event::Received(remote(heard, your)));
        assert_eq!(s.state(), to, "{from:?} hearing {heard:?}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn any_event() -> impl Strategy<Value = Event> {
        let packet = (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            1u8..=5,
            prop_oneof![Just(0u32), Just(OURS), any::<u32>()],
            prop_oneof![Just(0u32), Just(300_000u32), 1u32..3_000_000],
            prop_oneof![Just(0u32), Just(300_000u32), 1u32..3_000_000],
        )
            .prop_map(|(sta, poll, fin, demand, mult, your, tx, rx)| {
                let state = match sta {
                    0 => State::AdminDown,
                    1 => State::Down,
                    2 => State::Init,
                    _ => State::Up,
                };
                ControlPacket {
                    poll,
                    final_: fin && !poll,
                    demand,
                    detect_mult: NonZeroU8::new(mult).unwrap(),
                    desired_min_tx: tx,
                    required_min_rx: rx,
                    ..remote(state, your)
                }
            });
        prop_oneof![
            1 => Just(Event::Start),
            1 => Just(Event::TxTimerExpired),
            1 => Just(Event::DetectTimerExpired),
            1 => Just(Event::AdminDown),
            // Packets are the common case.
            4 => packet.prop_map(Event::Received),
        ]
    }

    proptest! {
        /// Whatever happens: Up and Down reports alternate and match the
        /// state, every packet we send is well formed and carries the
        /// discriminators we hold, and the transmit timer never runs
        /// faster than 75% of the agreed interval.
        #[test]
        fn reports_alternate_and_every_packet_sent_is_well_formed(
            events in proptest::collection::vec(any_event(), 1..60)
        ) {
            let mut s = session();
            let mut up = false;
            for ev in events {
                for a in s.handle(ev) {
                    match a {
                        Action::Up => {
                            prop_assert!(!up, "Up twice");
                            up = true;
                        }
                        Action::Down(_) => {
                            prop_assert!(up, "Down without Up");
                            up = false;
                        }
                        Action::Send(p) => {
                            prop_assert!(!(p.poll && p.final_));
                            prop_assert_eq!(p.my_disc.get(), OURS);
                            prop_assert_eq!(p.your_disc, s.remote_disc());
                            prop_assert_eq!(ControlPacket::decode(&p.encode()).ok(), Some(p));
                            if p.state != State::Up {
                                prop_assert!(p.desired_min_tx >= 1_000_000, "slow while not Up");
                            }
                        }
                        Action::StartTimer(Timer::Tx, d) => {
                            if let Some(i) = s.tx_interval() {
                                prop_assert!(d >= i.mul_f64(0.75) && d <= i, "{:?} for {:?}", d, i);
                            }
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(up, s.state() == State::Up);
            }
        }
    }
}
