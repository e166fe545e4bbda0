//! The library API the agent uses, end to end: two speakers in one test
//! namespace, driven through `SpeakerHandle` (peers and announcements
//! changed at run time, route subscription, status). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tabby_bgp::config::{Config, PeerConfig};
use tabby_bgp::packet::{Capability, Ctx, Message, Open};
use tabby_bgp::speaker::{RibEvent, Speaker};
use tokio::sync::mpsc::Receiver;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Applies route events to `table` until `done(table)` holds (30 s at most).
async fn until(
    rx: &mut Receiver<RibEvent>,
    table: &mut HashMap<IpNet, Vec<IpAddr>>,
    what: &str,
    done: impl Fn(&HashMap<IpNet, Vec<IpAddr>>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(table) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; table: {table:?}"))
            .expect("speaker stopped");
        if let RibEvent::Routes(changes) = ev {
            for c in changes {
                if c.next_hops.is_empty() {
                    table.remove(&c.prefix);
                } else {
                    table.insert(c.prefix, c.next_hops.to_vec());
                }
            }
        }
    }
}

fn speaker(id: &str, asn: u32, announce: &[&str]) -> Config {
    let mut c = Config::new(id.parse().unwrap(), asn);
    c.listen = vec![format!("{id}:179").parse().unwrap()];
    c.connect_retry = 1;
    c.announce = announce.iter().map(|p| net(p)).collect();
    c
}

fn peer(addr: &str, asn: u32, local: &str) -> PeerConfig {
    let mut p = PeerConfig::new(ip(addr), asn);
    p.local_address = Some(ip(local));
    p.families = vec![tabby_bgp::packet::Family::Ipv4Unicast];
    p
}

/// A namespace with 10.90.0.1 on `va` and 10.90.0.2, 10.90.0.3 on `vb`
/// (a veth pair, both ends inside), and `f` run on a thread inside it.
fn in_test_netns(lab: &mut common::Lab, f: impl AsyncFnOnce() + Send + 'static) {
    let ns = lab.ns("n");
    common::sh(&[
        "ip", "-n", &ns, "link", "add", "va", "type", "veth", "peer", "name", "vb",
    ]);
    for (dev, addr) in [
        ("va", "10.90.0.1/24"),
        ("vb", "10.90.0.2/24"),
        ("vb", "10.90.0.3/24"),
    ] {
        common::sh(&["ip", "-n", &ns, "addr", "add", addr, "dev", dev]);
    }
    for dev in ["va", "vb"] {
        common::sh(&["ip", "-n", &ns, "link", "set", dev, "up"]);
    }
    let path = format!("/run/netns/{ns}");
    // setns moves only the calling thread: run the whole test on a thread
    // that entered the namespace, with its own runtime.
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

#[test]
fn peers_and_announcements_change_at_run_time_and_the_route_stream_follows() {
    let mut lab = common::Lab::new("api");
    in_test_netns(&mut lab, scenario);
}

async fn scenario() {
    let a = Speaker::start(speaker("10.90.0.1", 65001, &["10.1.0.0/26"]))
        .await
        .unwrap();
    let mut b_cfg = speaker("10.90.0.2", 65002, &["10.2.0.0/26"]);
    b_cfg.peers = vec![peer("10.90.0.1", 65001, "10.90.0.2")];
    let b = Speaker::start(b_cfg).await.unwrap();
    let mut b_rx = b.subscribe_routes().unwrap();
    let mut a_rx = a.subscribe_routes().unwrap();
    let (mut bt, mut at) = (HashMap::new(), HashMap::new());

    // A has no peers yet: adding one brings the session up.
    a.set_peers(vec![peer("10.90.0.2", 65002, "10.90.0.1")])
        .await
        .unwrap();
    until(&mut b_rx, &mut bt, "A's block at B", |t| {
        t.get(&net("10.1.0.0/26")) == Some(&vec![ip("10.90.0.1")])
    })
    .await;
    until(&mut a_rx, &mut at, "B's block at A", |t| {
        t.get(&net("10.2.0.0/26")) == Some(&vec![ip("10.90.0.2")])
    })
    .await;

    // Announce and withdraw at run time.
    a.announce(vec![net("10.1.1.0/26")]).unwrap();
    a.withdraw(vec![net("10.1.0.0/26")]).unwrap();
    until(
        &mut b_rx,
        &mut bt,
        "B follows A's announce and withdraw",
        |t| t.contains_key(&net("10.1.1.0/26")) && !t.contains_key(&net("10.1.0.0/26")),
    )
    .await;
    a.set_announced(vec![net("10.1.2.0/26")]).unwrap();
    until(&mut b_rx, &mut bt, "B follows set_announced", |t| {
        t.contains_key(&net("10.1.2.0/26")) && !t.contains_key(&net("10.1.1.0/26"))
    })
    .await;

    let st = a.status().await.unwrap();
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert_eq!(p.state.to_string(), "Established");
    assert_eq!(p.accepted, 1);
    assert_eq!(p.advertised, 1);
    assert!(p.uptime_secs.is_some());

    // Removing the peer withdraws what it sent (a Cease is not graceful).
    a.set_peers(vec![]).await.unwrap();
    until(&mut a_rx, &mut at, "B's block gone from A", |t| {
        t.is_empty()
    })
    .await;
    until(&mut b_rx, &mut bt, "A's block gone from B", |t| {
        t.is_empty()
    })
    .await;
    assert!(a.status().await.unwrap().peers.is_empty());

    a.shutdown(false).await.unwrap();
    b.shutdown(false).await.unwrap();
}

/// Reads one whole BGP message from a raw socket.
async fn read_message(s: &mut tokio::net::TcpStream) -> Option<Message> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 19];
    s.read_exact(&mut head).await.ok()?;
    let len = usize::from(u16::from_be_bytes([head[16], head[17]]));
    let mut msg = head.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[19..]).await.ok()?;
    Message::decode(&msg, &Ctx::default()).ok()
}

#[test]
fn a_malformed_update_resets_only_its_own_session() {
    let mut lab = common::Lab::new("malformed");
    in_test_netns(&mut lab, async || {
        use tokio::io::AsyncWriteExt;
        let mut a_cfg = speaker("10.90.0.1", 65001, &["10.1.0.0/26"]);
        let mut bad = peer("10.90.0.3", 65003, "10.90.0.1");
        bad.passive = true;
        a_cfg.peers = vec![peer("10.90.0.2", 65002, "10.90.0.1"), bad];
        let a = Speaker::start(a_cfg).await.unwrap();
        let mut b_cfg = speaker("10.90.0.2", 65002, &["10.2.0.0/26"]);
        b_cfg.peers = vec![peer("10.90.0.1", 65001, "10.90.0.2")];
        let b = Speaker::start(b_cfg).await.unwrap();
        let mut a_rx = a.subscribe_routes().unwrap();
        let mut at = HashMap::new();
        until(&mut a_rx, &mut at, "B's block at A", |t| {
            t.contains_key(&net("10.2.0.0/26"))
        })
        .await;

        // A hand-driven peer: OPEN, KEEPALIVE, then an UPDATE whose
        // withdrawn-routes length runs past the message.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("10.90.0.3:0".parse().unwrap()).unwrap();
        let mut s = sock
            .connect("10.90.0.1:179".parse().unwrap())
            .await
            .unwrap();
        let open = Open::new(
            65003,
            90,
            "10.90.0.3".parse().unwrap(),
            vec![Capability::FourOctetAs { asn: 65003 }],
        );
        let ctx = Ctx::default();
        s.write_all(&Message::Open(open).encode(&ctx))
            .await
            .unwrap();
        s.write_all(&Message::Keepalive.encode(&ctx)).await.unwrap();
        assert!(matches!(read_message(&mut s).await, Some(Message::Open(_))));
        assert!(matches!(
            read_message(&mut s).await,
            Some(Message::Keepalive)
        ));
        let mut garbage = vec![0xff; 16];
        garbage.extend_from_slice(&[0, 23, 2, 0x00, 0xff, 0, 0]);
        s.write_all(&garbage).await.unwrap();
        let mut got = None;
        while let Some(m) = read_message(&mut s).await {
            if let Message::Notification(n) = m {
                got = Some(n);
                break;
            }
        }
        let n = got.expect("a NOTIFICATION");
        assert_eq!((n.code, n.subcode), (3, 1), "malformed attribute list");

        // The other session never noticed.
        let st = a.status().await.unwrap();
        let good = st
            .peers
            .iter()
            .find(|p| p.address == ip("10.90.0.2"))
            .unwrap();
        assert_eq!(good.state.to_string(), "Established");
        assert_eq!(good.accepted, 1);
        let bad = st
            .peers
            .iter()
            .find(|p| p.address == ip("10.90.0.3"))
            .unwrap();
        assert_ne!(bad.state.to_string(), "Established");
        assert!(
            bad.last_error
                .as_deref()
                .unwrap_or("")
                .contains("malformed"),
            "{bad:?}"
        );
        a.shutdown(false).await.unwrap();
        b.shutdown(false).await.unwrap();
    });
}
