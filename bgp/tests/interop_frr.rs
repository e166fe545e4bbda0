//! Interop with FRR 8 (Debian `frr`): bgpd runs without zebra, so FRR's
//! side is checked in its BGP table (vtysh), ours in our kernel. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Lab, wait_until};

fn pair(lab: &mut Lab) {
    lab.ns("us");
    lab.ns("frr");
    lab.link(
        "us",
        "eth0",
        &["10.88.0.1/24", "fd88::1/64"],
        "frr",
        "eth0",
        &["10.88.0.2/24", "fd88::2/64"],
    );
}

fn frr_conf(asn: u32) -> String {
    format!(
        r#"frr defaults datacenter
hostname frr
router bgp {asn}
 bgp router-id 10.88.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.88.0.1 remote-as {remote}
 neighbor 10.88.0.1 timers connect 1
 address-family ipv4 unicast
  network 10.30.0.0/26
 exit-address-family
 address-family ipv6 unicast
  neighbor 10.88.0.1 activate
  network fd30::/64
 exit-address-family
"#,
        remote = 65001
    )
}

fn tabby_conf(peer_as: u32) -> String {
    format!(
        r#"
router_id = "10.88.0.1"
asn = 65001
announce = ["10.12.0.0/26", "fd12::/64"]
next_hop_v6 = "fd88::1"
connect_retry = 1
[[peers]]
address = "10.88.0.2"
asn = {peer_as}
"#
    )
}

#[test]
fn ebgp_with_frr_carries_ipv4_and_ipv6_both_ways() {
    let mut lab = Lab::new("frre");
    pair(&mut lab);
    let frr = lab.frr("frr", "frr", &frr_conf(65003));
    let tabby = lab.tabby("us", "tabby", &tabby_conf(65003));
    wait_until("eBGP session with FRR up", 60, || {
        tabby.established("10.88.0.2") && frr.established("10.88.0.1")
    });
    wait_until("our prefixes best in FRR with us as next hop", 30, || {
        frr.best_next_hop("ipv4", "10.12.0.0/26").as_deref() == Some("10.88.0.1")
            && frr.best_next_hop("ipv6", "fd12::/64").as_deref() == Some("fd88::1")
    });
    // FRR originates with itself as next hop: the session address.
    wait_until("FRR's IPv4 prefix in our FIB", 30, || {
        lab.has_route("us", "10.30.0.0/26", &["via 10.88.0.2", "proto 151"])
    });
    let peer = tabby.peer("10.88.0.2").unwrap();
    assert_eq!(peer["advertised"], 2);
}

#[test]
fn ibgp_with_frr_carries_routes_both_ways() {
    let mut lab = Lab::new("frri");
    pair(&mut lab);
    let frr = lab.frr("frr", "frr", &frr_conf(65001));
    let tabby = lab.tabby("us", "tabby", &tabby_conf(65001));
    wait_until("iBGP session with FRR up", 60, || {
        tabby.established("10.88.0.2") && frr.established("10.88.0.1")
    });
    wait_until("our prefix best in FRR", 30, || {
        frr.best_next_hop("ipv4", "10.12.0.0/26").as_deref() == Some("10.88.0.1")
    });
    let j = frr.cmd("show bgp ipv4 unicast 10.12.0.0/26 json");
    assert!(j.contains("\"locPrf\":100"), "{j}");
    wait_until("FRR's prefix in our FIB", 30, || {
        lab.has_route("us", "10.30.0.0/26", &["via 10.88.0.2", "proto 151"])
    });
}
