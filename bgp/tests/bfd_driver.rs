//! The BFD driver against a hand-made remote in a test namespace: RFC 5881
//! GTSM (a packet with TTL below 255 is ignored), demultiplexing by source
//! address and by Your Discriminator, the detection time. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::num::{NonZeroU8, NonZeroU32};
use std::time::Duration;

use tabby_bgp::bfd::{BfdConfig, BfdHandle, ControlPacket, Diag, Notice, State};
use tokio::sync::mpsc::UnboundedReceiver;

const US: &str = "10.91.0.1";
const PEER: &str = "10.91.0.2";
const STRANGER: &str = "10.91.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `f` on a thread inside a fresh namespace holding US, PEER and
/// STRANGER on a veth pair.
fn in_test_netns(lab: &mut common::Lab, f: impl AsyncFnOnce() + Send + 'static) {
    let ns = lab.ns("n");
    common::sh(&[
        "ip", "-n", &ns, "link", "add", "va", "type", "veth", "peer", "name", "vb",
    ]);
    for (dev, addr) in [("va", US), ("vb", PEER), ("vb", STRANGER)] {
        common::sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ]);
    }
    for dev in ["va", "vb"] {
        common::sh(&["ip", "-n", &ns, "link", "set", dev, "up"]);
    }
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    })
    .join()
    .map_err(|_| "scenario failed")
    .unwrap();
}

/// A fake remote sending from `from` with `ttl`.
fn sender(from: &str, ttl: u32) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip(from), 0)).unwrap();
    s.set_ttl(ttl).unwrap();
    s
}

fn packet(state: State, my: u32, your: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: NonZeroU8::new(3).unwrap(),
        my_disc: NonZeroU32::new(my).unwrap(),
        your_disc: your,
        desired_min_tx: 300_000,
        required_min_rx: 300_000,
        required_min_echo_rx: 0,
    }
}

fn send(s: &UdpSocket, p: ControlPacket) {
    s.send_to(&p.encode(), SocketAddr::new(ip(US), 3784))
        .unwrap();
}

/// Polls the session with PEER until `f` holds (30 s at most).
async fn until(h: &BfdHandle, what: &str, f: impl Fn(&tabby_bgp::bfd::SessionStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = h.status().await.unwrap();
        let s = st.iter().find(|s| s.peer == ip(PEER)).unwrap();
        if f(s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_notice(rx: &mut UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no notice within 30 s")
        .expect("driver stopped")
}

#[test]
fn the_driver_ignores_packets_below_ttl_255_and_strangers_and_detects_a_silent_peer() {
    let mut lab = common::Lab::new("bfdd");
    in_test_netns(&mut lab, scenario);
}

async fn scenario() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = BfdHandle::start(tx).unwrap();
    let cfg = BfdConfig::default().session_config().unwrap();
    h.add(ip(PEER), Some(ip(US)), cfg).unwrap();
    until(&h, "the session", |s| s.state == State::Down).await;
    let ours = h.status().await.unwrap()[0].local_disc;
    let (hop1, far, stranger) = (sender(PEER, 255), sender(PEER, 254), sender(STRANGER, 255));

    // From two hops away (TTL 254) an Init addressed to us would bring the
    // session Up; ignored, the Down that follows only brings it to Init.
    send(&far, packet(State::Init, 7, ours));
    // A stranger with the right discriminator is ignored as well.
    send(&stranger, packet(State::Init, 8, ours));
    send(&hop1, packet(State::Down, 9, 0));
    until(&h, "Init from the one-hop Down", |s| {
        s.state == State::Init && s.remote_disc == 9
    })
    .await;
    assert!(rx.try_recv().is_err(), "nothing may have come Up");

    // The real remote answers Init: Up.
    send(&hop1, packet(State::Init, 9, ours));
    assert_eq!(next_notice(&mut rx).await, Notice::Up(ip(PEER)));

    // It goes silent: Down after the detection time (3 x 300 ms).
    let t0 = std::time::Instant::now();
    let n = next_notice(&mut rx).await;
    assert_eq!(
        n,
        Notice::Down {
            peer: ip(PEER),
            diag: Diag::DetectionTimeExpired,
            remote_admin_down: false
        }
    );
    eprintln!("silent peer detected after {} ms", t0.elapsed().as_millis());

    // Up again, then the remote says AdminDown: reported as such, so that
    // the speaker keeps its BGP session.
    send(&hop1, packet(State::Down, 9, ours));
    until(&h, "Init again", |s| s.state == State::Init).await;
    send(&hop1, packet(State::Up, 9, ours));
    assert_eq!(next_notice(&mut rx).await, Notice::Up(ip(PEER)));
    send(&hop1, packet(State::AdminDown, 9, ours));
    assert_eq!(
        next_notice(&mut rx).await,
        Notice::Down {
            peer: ip(PEER),
            diag: Diag::NeighborDown,
            remote_admin_down: true
        }
    );
}
