//! Interop with GoBGP 3 (Debian `gobgpd`): eBGP with IPv4 and IPv6 both
//! ways, and a withdraw. GoBGP's side is checked in its RIB (it has no FIB
//! here), ours in our kernel. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Lab, wait_until};

const GOBGP: &str = r#"
[global.config]
  as = 65004
  router-id = "10.89.0.2"
  port = 179
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.89.0.1"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#;

#[test]
fn ebgp_with_gobgp_carries_ipv4_and_ipv6_both_ways_and_withdraws() {
    let mut lab = Lab::new("gobgp");
    lab.ns("us");
    lab.ns("gobgp");
    lab.link(
        "us",
        "eth0",
        &["10.89.0.1/24", "fd89::1/64"],
        "gobgp",
        "eth0",
        &["10.89.0.2/24", "fd89::2/64"],
    );
    let gobgp = lab.gobgp("gobgp", "gobgpd", GOBGP);
    let tabby = lab.tabby(
        "us",
        "tabby",
        r#"
router_id = "10.89.0.1"
asn = 65001
announce = ["10.13.0.0/26", "fd13::/64"]
connect_retry = 1
[[peers]]
address = "10.89.0.2"
asn = 65004
"#,
    );
    wait_until("session with GoBGP up", 60, || {
        tabby.established("10.89.0.2") && gobgp.cmd(&["neighbor"]).contains("Establ")
    });
    gobgp.cmd(&["global", "rib", "add", "10.40.0.0/26", "-a", "ipv4"]);
    gobgp.cmd(&[
        "global",
        "rib",
        "add",
        "fd40::/64",
        "-a",
        "ipv6",
        "nexthop",
        "fd89::2",
    ]);
    wait_until("GoBGP's prefixes in our FIB", 30, || {
        lab.has_route("us", "10.40.0.0/26", &["via 10.89.0.2", "proto 151"])
            && lab.has_route("us", "fd40::/64", &["via fd89::2", "proto 151"])
    });
    wait_until(
        "our prefixes in GoBGP's RIB with us as next hop",
        30,
        || {
            let v4 = gobgp.cmd(&["global", "rib", "-a", "ipv4"]);
            let v6 = gobgp.cmd(&["global", "rib", "-a", "ipv6"]);
            v4.lines().any(|l| {
                l.contains("10.13.0.0/26") && l.contains("10.89.0.1") && l.contains("65001")
            }) && v6
                .lines()
                .any(|l| l.contains("fd13::/64") && l.contains("fd89::1"))
        },
    );
    gobgp.cmd(&["global", "rib", "del", "10.40.0.0/26", "-a", "ipv4"]);
    wait_until("GoBGP's withdraw reaches our FIB", 30, || {
        !lab.routes("us").contains("10.40.0.0/26")
    });
    assert!(lab.has_route("us", "fd40::/64", &["via fd89::2"]));
}
