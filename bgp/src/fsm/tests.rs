//! One test per RFC 4271 behaviour, named as a sentence.

use super::*;
use crate::packet::{Capability, GrFamily};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

fn cfg() -> FsmConfig {
    FsmConfig {
        local_as: 65001,
        remote_as: 65002,
        router_id: LOCAL_ID,
        hold_time: 90,
        connect_retry: Duration::from_secs(5),
        idle_hold: Duration::from_secs(1),
        passive: false,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(Duration::from_secs(120)),
        restarting: false,
    }
}

fn peer_open(id: [u8; 4], hold: u16) -> Open {
    Open::new(
        65002,
        hold,
        Ipv4Addr::from(id),
        vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::FourOctetAs { asn: 65002 },
            Capability::GracefulRestart {
                restart_state: false,
                notification: false,
                restart_time: 90,
                families: vec![GrFamily {
                    afi: 1,
                    safi: 1,
                    forwarding: true,
                }],
            },
        ],
    )
}

const C1: ConnId = ConnId(1);
const C2: ConnId = ConnId(2);

fn established(fsm: &mut Fsm) {
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 30)));
    fsm.handle(Event::KeepAliveMsg(C1));
    assert_eq!(fsm.state(), State::Established);
}

fn sent(actions: &[Action]) -> Vec<(ConnId, &Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, m) => Some((*c, m)),
            _ => None,
        })
        .collect()
}

#[test]
fn manual_start_of_an_active_peer_connects_and_arms_connect_retry() {
    let mut fsm = Fsm::new(cfg());
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Connect);
    assert!(a.contains(&Action::Connect));
    assert!(a.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(5)
    )));
}

#[test]
fn a_passive_peer_waits_in_active_without_connecting() {
    let mut fsm = Fsm::new(FsmConfig {
        passive: true,
        ..cfg()
    });
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Active);
    assert!(!a.contains(&Action::Connect));
    let a = fsm.handle(Event::ConnectRetryTimerExpires);
    assert!(!a.contains(&Action::Connect));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn connect_retry_expiry_in_active_tries_again() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnectionFails(C1));
    assert_eq!(fsm.state(), State::Active);
    let a = fsm.handle(Event::ConnectRetryTimerExpires);
    assert!(a.contains(&Action::Connect));
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn open_exchange_reaches_established() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    let a = fsm.handle(Event::TcpCrAcked(C1));
    assert!(matches!(sent(&a)[..], [(C1, Message::Open(_))]));
    assert_eq!(fsm.state(), State::OpenSent);
    let a = fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 30)));
    assert_eq!(sent(&a), vec![(C1, &Message::Keepalive)]);
    assert_eq!(fsm.state(), State::OpenConfirm);
    let a = fsm.handle(Event::KeepAliveMsg(C1));
    assert_eq!(fsm.state(), State::Established);
    let Some(Action::Established(n)) = a.iter().find(|a| matches!(a, Action::Established(_)))
    else {
        panic!("no Established action in {a:?}")
    };
    assert_eq!(n.hold_time, 30, "the smaller hold time wins");
    assert_eq!(n.families, vec![Family::Ipv4Unicast]);
    assert!(n.four_octet_as);
    assert!(n.gr.is_some());
}

#[test]
fn keepalive_interval_is_a_third_of_the_negotiated_hold_time() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let a = fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 30)));
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(10)
    )));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(30))));
}

#[test]
fn zero_hold_time_disables_hold_and_keepalive_timers() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let a = fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 0)));
    assert!(a.contains(&Action::StopTimer(Timer::Keepalive)));
    assert!(a.contains(&Action::StopTimer(Timer::Hold)));
}

#[test]
fn an_open_from_the_wrong_as_is_refused_with_bad_peer_as() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let mut open = peer_open([10, 0, 0, 9], 90);
    open.capabilities = vec![Capability::FourOctetAs { asn: 65099 }];
    let a = fsm.handle(Event::BgpOpen(C1, open));
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(2, 2)))]
    );
    assert!(a.contains(&Action::Close(C1)));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn a_hold_time_of_two_seconds_is_unacceptable() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let a = fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 2)));
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(2, 6)))]
    );
}

#[test]
fn an_ibgp_peer_with_our_own_identifier_is_refused() {
    let mut fsm = Fsm::new(FsmConfig {
        remote_as: 65001,
        ..cfg()
    });
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let open = Open::new(
        65001,
        90,
        LOCAL_ID,
        vec![Capability::FourOctetAs { asn: 65001 }],
    );
    let a = fsm.handle(Event::BgpOpen(C1, open));
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(2, 3)))]
    );
}

#[test]
fn hold_timer_expiry_sends_notification_and_goes_idle() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::HoldTimerExpires);
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(4, 0)))]
    );
    assert!(a.contains(&Action::Close(C1)));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Down(d) if !d.graceful))
    );
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn after_an_error_the_session_restarts_after_idle_hold() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::HoldTimerExpires);
    assert!(a.contains(&Action::StartTimer(Timer::IdleHold, Duration::from_secs(1))));
    let a = fsm.handle(Event::IdleHoldTimerExpires);
    assert!(a.contains(&Action::Connect));
}

#[test]
fn manual_stop_sends_cease_and_never_restarts() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::ManualStop);
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(6, 2)))]
    );
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
    );
    assert!(fsm.handle(Event::IdleHoldTimerExpires).is_empty());
}

#[test]
fn losing_the_connection_of_a_graceful_restart_peer_is_graceful() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::TcpConnectionFails(C1));
    assert!(a.iter().any(|a| matches!(a, Action::Down(d) if d.graceful)));
}

#[test]
fn a_notification_from_the_peer_is_not_graceful() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::NotifMsg(C1, Notification::new(6, 2)));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Down(d) if !d.graceful))
    );
    assert!(sent(&a).is_empty(), "never answer a NOTIFICATION with one");
}

#[test]
fn an_update_in_established_goes_to_the_rib_and_restarts_hold() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::UpdateMsg(C1, Update::default()));
    assert!(a.contains(&Action::Update(Update::default())));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(30))));
}

#[test]
fn an_update_in_open_confirm_is_an_fsm_error() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    fsm.handle(Event::BgpOpen(C1, peer_open([10, 0, 0, 9], 30)));
    let a = fsm.handle(Event::UpdateMsg(C1, Update::default()));
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(5, 0)))]
    );
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn a_malformed_message_is_answered_with_its_notification() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::MessageError(
        C1,
        DecodeError::MalformedAttributeList { reason: "test" },
    ));
    assert_eq!(
        sent(&a),
        vec![(C1, &Message::Notification(Notification::new(3, 1)))]
    );
}

#[test]
fn collision_keeps_our_connection_when_our_identifier_is_higher() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let a = fsm.handle(Event::TcpConnectionConfirmed(C2));
    assert!(matches!(sent(&a)[..], [(C2, Message::Open(_))]));
    // The peer's identifier 10.0.0.1 is lower than ours (10.0.0.5).
    let a = fsm.handle(Event::BgpOpen(C2, peer_open([10, 0, 0, 1], 90)));
    assert_eq!(
        sent(&a),
        vec![(C2, &Message::Notification(Notification::new(6, 7)))]
    );
    assert!(a.contains(&Action::Close(C2)));
    assert_eq!(fsm.connection(), Some(C1));
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn collision_keeps_the_peers_connection_when_its_identifier_is_higher() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    fsm.handle(Event::TcpConnectionConfirmed(C2));
    let a = fsm.handle(Event::BgpOpen(C2, peer_open([10, 0, 0, 9], 90)));
    assert!(a.contains(&Action::Send(
        C1,
        Message::Notification(Notification::new(6, 7))
    )));
    assert!(a.contains(&Action::Close(C1)));
    assert!(a.contains(&Action::Send(C2, Message::Keepalive)));
    assert_eq!(fsm.connection(), Some(C2));
    assert_eq!(fsm.state(), State::OpenConfirm);
}

#[test]
fn a_new_connection_while_established_is_refused_without_graceful_restart() {
    let mut fsm = Fsm::new(FsmConfig {
        graceful_restart: None,
        ..cfg()
    });
    established(&mut fsm);
    let a = fsm.handle(Event::TcpConnectionConfirmed(C2));
    assert_eq!(a, vec![Action::Close(C2)]);
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn a_new_connection_from_a_restarting_peer_replaces_the_session_gracefully() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::TcpConnectionConfirmed(C2));
    assert!(a.iter().any(|a| matches!(a, Action::Down(d) if d.graceful)));
    assert!(a.contains(&Action::Close(C1)));
    assert_eq!(fsm.connection(), Some(C2));
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn idle_refuses_incoming_connections() {
    let mut fsm = Fsm::new(cfg());
    assert_eq!(
        fsm.handle(Event::TcpConnectionConfirmed(C1)),
        vec![Action::Close(C1)]
    );
}

#[test]
fn our_open_carries_restart_state_and_forwarding_bits_after_a_restart() {
    let fsm = Fsm::new(FsmConfig {
        restarting: true,
        ..cfg()
    });
    let open = fsm.open_message();
    let Some(Capability::GracefulRestart {
        restart_state,
        families,
        ..
    }) = open.graceful_restart()
    else {
        panic!("no GR capability")
    };
    assert!(*restart_state);
    assert!(families.iter().all(|f| f.forwarding));
    assert_eq!(open.four_octet_as(), Some(65001));
}

#[test]
fn enhanced_route_refresh_is_offered_and_negotiated_when_both_sides_have_it() {
    let mut fsm = Fsm::new(cfg());
    assert!(
        fsm.open_message()
            .capabilities
            .contains(&Capability::EnhancedRouteRefresh)
    );
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    let mut open = peer_open([10, 0, 0, 9], 90);
    open.capabilities.push(Capability::EnhancedRouteRefresh);
    fsm.handle(Event::BgpOpen(C1, open));
    assert!(fsm.negotiated().unwrap().enhanced_route_refresh);
}

#[test]
fn a_connection_lost_in_open_sent_goes_active_and_still_accepts_the_peer() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked(C1));
    assert_eq!(fsm.state(), State::OpenSent);
    let a = fsm.handle(Event::TcpConnectionFails(C1));
    assert_eq!(fsm.state(), State::Active, "RFC 4271 §8.2.2");
    assert!(a.contains(&Action::Close(C1)));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::ConnectRetry, _)))
    );
    // The peer connecting to us now is taken, not refused.
    let a = fsm.handle(Event::TcpConnectionConfirmed(C2));
    assert!(matches!(sent(&a)[..], [(C2, Message::Open(_))]));
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn bfd_down_takes_an_established_session_down_without_graceful_restart_or_automatic_restart() {
    let mut fsm = Fsm::new(cfg());
    established(&mut fsm);
    let a = fsm.handle(Event::BfdDown);
    assert_eq!(fsm.state(), State::Idle);
    assert!(a.contains(&Action::Send(
        C1,
        Message::Notification(Notification::new(code::CEASE, cease::BFD_DOWN))
    )));
    assert!(a.contains(&Action::Close(C1)));
    assert!(a.contains(&Action::Down(Down {
        reason: "BFD session down".into(),
        graceful: false
    })));
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::StartTimer(Timer::IdleHold, _)))
    );
    // Nothing restarts it but a ManualStart (BFD Up again).
    assert!(fsm.handle(Event::IdleHoldTimerExpires).is_empty());
    assert!(fsm.handle(Event::ManualStart).contains(&Action::Connect));
}
