//! Interop with BIRD 2 (Debian `bird2`): every test builds its own
//! namespaces, runs BIRD and `tabby-bgp` in them and checks both RIBs and
//! both kernels. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Lab, holds_for, wait_until};

/// BIRD basics: kernel export (so BIRD's FIB can be checked), device scan.
fn bird_base(router_id: &str) -> String {
    format!(
        r#"
router id {router_id};
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export where source = RTS_BGP; import none; }}; }}
protocol kernel k6 {{ ipv6 {{ export where source = RTS_BGP; import none; }}; }}
"#
    )
}

/// A two-node lab: `us` (10.77.0.1, fd77::1) — `bird` (10.77.0.2, fd77::2).
fn pair(lab: &mut Lab) {
    lab.ns("us");
    lab.ns("bird");
    lab.link(
        "us",
        "eth0",
        &["10.77.0.1/24", "fd77::1/64"],
        "bird",
        "eth0",
        &["10.77.0.2/24", "fd77::2/64"],
    );
}

fn ebgp_bird_conf(extra_bgp: &str, statics: &str) -> String {
    format!(
        r#"{base}
protocol static s4 {{ ipv4; {statics} }}
protocol static s6 {{ ipv6; route fd20::/64 via fd77::2; }}
protocol bgp tabby {{
  local 10.77.0.2 as 65002;
  neighbor 10.77.0.1 as 65001;
  {extra_bgp}
  ipv4 {{ import all; export all; }};
  ipv6 {{ import all; export all; next hop address fd77::2; }};
}}
"#,
        base = bird_base("10.77.0.2")
    )
}

const BIRD_STATICS: &str = "route 10.20.0.0/26 via 10.77.0.2; route 10.20.0.64/26 via 10.77.0.2;";

const TABBY_EBGP: &str = r#"
router_id = "10.77.0.1"
asn = 65001
announce = ["10.10.0.0/26", "fd10::/64"]
connect_retry = 1
[[peers]]
address = "10.77.0.2"
asn = 65002
link_local_next_hop = true
"#;

#[test]
fn ebgp_with_bird_carries_ipv4_and_ipv6_both_ways_into_both_kernels_and_withdraws() {
    let mut lab = Lab::new("ebgp");
    pair(&mut lab);
    let bird = lab.bird("bird", "bird", &ebgp_bird_conf("", BIRD_STATICS));
    let tabby = lab.tabby("us", "tabby", TABBY_EBGP);
    wait_until("eBGP session up on both sides", 60, || {
        tabby.established("10.77.0.2") && bird.established("tabby")
    });
    // BIRD's routes reach our kernel with BIRD as next hop, under our protocol.
    wait_until("BIRD's IPv4 prefixes in our FIB", 30, || {
        lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"])
            && lab.has_route("us", "10.20.0.64/26", &["via 10.77.0.2", "proto 151"])
    });
    // IPv6 over the IPv4 session (MP-BGP).
    wait_until("BIRD's IPv6 prefix in our FIB", 30, || {
        lab.has_route("us", "fd20::/64", &["via fd77::2", "proto 151"])
    });
    // Ours reach BIRD's kernel with us as next hop.
    wait_until("our prefixes in BIRD's FIB", 30, || {
        lab.has_route("bird", "10.10.0.0/26", &["via 10.77.0.1", "proto bird"])
            && lab.has_route("bird", "fd10::/64", &["via fd77::1", "proto bird"])
    });
    assert!(bird.route("10.10.0.0/26").contains("BGP.as_path: 65001"));
    // Without next_hop_v6 configured, our IPv6 next hop is the global
    // address of the session's interface, plus its link-local (RFC 2545).
    let r6 = bird.route("fd10::/64");
    assert!(r6.contains("BGP.next_hop: fd77::1 fe80::"), "{r6}");
    // A withdraw on BIRD's side removes the route from our kernel.
    bird.cmd("disable s4");
    wait_until("withdrawn prefixes gone from our FIB", 30, || {
        !lab.routes("us").contains("10.20.0.0/26") && !lab.routes("us").contains("10.20.0.64/26")
    });
    assert!(lab.has_route("us", "fd20::/64", &["via fd77::2"]));
    let peer = tabby.peer("10.77.0.2").unwrap();
    assert_eq!(peer["accepted"], 1);
    assert_eq!(peer["advertised"], 2);
}

#[test]
fn ibgp_with_bird_carries_routes_both_ways_with_unchanged_next_hops() {
    let mut lab = Lab::new("ibgp");
    pair(&mut lab);
    let conf = format!(
        r#"{base}
protocol static s4 {{ ipv4; route 10.21.0.0/26 via 10.77.0.2; }}
protocol bgp tabby {{
  local 10.77.0.2 as 65001;
  neighbor 10.77.0.1 as 65001;
  direct;
  ipv4 {{ import all; export all; next hop self; }};
}}
"#,
        base = bird_base("10.77.0.2")
    );
    let bird = lab.bird("bird", "bird", &conf);
    let tabby = lab.tabby(
        "us",
        "tabby",
        r#"
router_id = "10.77.0.1"
asn = 65001
announce = ["10.11.0.0/26"]
connect_retry = 1
[[peers]]
address = "10.77.0.2"
asn = 65001
families = ["ipv4"]
"#,
    );
    wait_until("iBGP session up", 60, || {
        tabby.established("10.77.0.2") && bird.established("tabby")
    });
    wait_until("BIRD's prefix in our FIB", 30, || {
        lab.has_route("us", "10.21.0.0/26", &["via 10.77.0.2", "proto 151"])
    });
    wait_until("our prefix in BIRD's FIB", 30, || {
        lab.has_route("bird", "10.11.0.0/26", &["via 10.77.0.1", "proto bird"])
    });
    let r = bird.route("10.11.0.0/26");
    assert!(r.contains("BGP.local_pref: 100"), "{r}");
    assert!(
        !r.contains("BGP.as_path: 65001"),
        "iBGP does not prepend: {r}"
    );
}

#[test]
fn an_md5_protected_session_comes_up_only_with_the_right_password() {
    let mut lab = Lab::new("md5");
    pair(&mut lab);
    let bird = lab.bird(
        "bird",
        "bird",
        &ebgp_bird_conf("password \"right-one\";", BIRD_STATICS),
    );
    let wrong = lab.tabby(
        "us",
        "wrong",
        &format!("{TABBY_EBGP}password = \"wrong-one\"\n"),
    );
    holds_for("no session with the wrong password", 8, || {
        !wrong.established("10.77.0.2") && !bird.established("tabby")
    });
    lab.stop("wrong", 9);
    let right = lab.tabby(
        "us",
        "right",
        &format!("{TABBY_EBGP}password = \"right-one\"\n"),
    );
    wait_until("session with the right password", 60, || {
        right.established("10.77.0.2") && bird.established("tabby")
    });
    wait_until("routes flow over the MD5 session", 30, || {
        lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2"])
    });
}

#[test]
fn a_graceful_restart_of_our_speaker_keeps_routes_on_both_sides_until_end_of_rib() {
    let mut lab = Lab::new("gr");
    pair(&mut lab);
    let bird = lab.bird(
        "bird",
        "bird",
        &ebgp_bird_conf("graceful restart on;", BIRD_STATICS),
    );
    let tabby = lab.tabby("us", "tabby1", TABBY_EBGP);
    wait_until("session up", 60, || tabby.established("10.77.0.2"));
    wait_until("routes in both kernels", 30, || {
        lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"])
            && lab.has_route("us", "10.20.0.64/26", &["via 10.77.0.2", "proto 151"])
            && lab.has_route("bird", "10.10.0.0/26", &["via 10.77.0.1"])
    });
    // Stop our speaker the graceful-restart way (no NOTIFICATION).
    lab.stop("tabby1", 15);
    wait_until("BIRD notices the session is gone", 30, || {
        !bird.established("tabby")
    });
    // While we are down, BIRD keeps our routes (stale) in its kernel, and
    // ours stay in our kernel.
    assert!(lab.has_route("bird", "10.10.0.0/26", &["via 10.77.0.1"]));
    assert!(lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"]));
    // One BIRD route goes away while we are down: our restarted speaker
    // must drop it from the kernel once BIRD's End-of-RIB says so.
    bird.cmd("disable s4");
    let conf = ebgp_bird_conf("graceful restart on;", "route 10.20.0.0/26 via 10.77.0.2;");
    std::fs::write(lab.path("bird.conf"), conf).unwrap();
    bird.cmd("configure");
    bird.cmd("enable s4");
    let tabby = lab.tabby("us", "tabby2", TABBY_EBGP);
    wait_until("session back up", 60, || tabby.established("10.77.0.2"));
    wait_until("the vanished route swept after End-of-RIB", 30, || {
        !lab.routes("us").contains("10.20.0.64/26")
    });
    assert!(lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"]));
    assert!(lab.has_route("bird", "10.10.0.0/26", &["via 10.77.0.1"]));
    assert!(lab.log("tabby2").contains("restarting gracefully"));
}

#[test]
fn when_bird_restarts_gracefully_we_keep_its_routes_until_its_end_of_rib() {
    let mut lab = Lab::new("grhelper");
    pair(&mut lab);
    let bird = lab.bird(
        "bird",
        "bird1",
        &ebgp_bird_conf("graceful restart on;", BIRD_STATICS),
    );
    let tabby = lab.tabby("us", "tabby", TABBY_EBGP);
    wait_until("session up", 60, || {
        tabby.established("10.77.0.2") && bird.established("tabby")
    });
    wait_until("BIRD's routes in our FIB", 30, || {
        lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"])
            && lab.has_route("us", "10.20.0.64/26", &["via 10.77.0.2", "proto 151"])
    });
    // BIRD dies without a NOTIFICATION: we are the helper and keep its
    // routes (stale) in our RIB and kernel.
    lab.stop("bird1", 9);
    wait_until("we notice the session is gone", 30, || {
        !tabby.established("10.77.0.2")
    });
    holds_for("stale routes stay in our FIB while BIRD is away", 2, || {
        lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"])
            && lab.has_route("us", "10.20.0.64/26", &["via 10.77.0.2", "proto 151"])
    });
    // BIRD comes back in restart mode without one of its routes.
    let conf = ebgp_bird_conf("graceful restart on;", "route 10.20.0.0/26 via 10.77.0.2;");
    let bird = lab.bird_with("bird", "bird2", &conf, &["-R"]);
    wait_until("session back up", 60, || {
        tabby.established("10.77.0.2") && bird.established("tabby")
    });
    wait_until("the route BIRD lost is swept at its End-of-RIB", 60, || {
        !lab.routes("us").contains("10.20.0.64/26")
    });
    assert!(lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"]));
}

#[test]
fn route_refresh_with_bird_works_both_ways_and_an_enhanced_refresh_drops_what_bird_no_longer_sends()
{
    let mut lab = Lab::new("rr7313");
    pair(&mut lab);
    let conf = |filter: &str| {
        ebgp_bird_conf("", BIRD_STATICS).replace(
            "ipv4 { import all; export all; };",
            &format!("ipv4 {{ import all; export {filter}; }};"),
        )
    };
    let bird = lab.bird("bird", "bird", &conf("all"));
    let tabby = lab.tabby("us", "tabby", TABBY_EBGP);
    wait_until("session up", 60, || {
        tabby.established("10.77.0.2") && bird.established("tabby")
    });
    wait_until("BIRD's routes in our FIB", 30, || {
        lab.has_route("us", "10.20.0.64/26", &["via 10.77.0.2", "proto 151"])
    });
    let r = bird.cmd("show protocols all tabby");
    assert!(r.contains("Enhanced refresh"), "{r}");
    // BIRD asks us for our routes again: they stay in its table.
    bird.cmd("reload in tabby");
    holds_for("our routes stay at BIRD during the refresh", 2, || {
        lab.has_route("bird", "10.10.0.0/26", &["via 10.77.0.1"])
    });
    // BIRD stops exporting one route and re-sends the rest.
    std::fs::write(lab.path("bird.conf"), conf("where net != 10.20.0.64/26")).unwrap();
    bird.cmd("configure");
    bird.cmd("reload out tabby");
    wait_until("the route BIRD no longer sends is gone", 30, || {
        !lab.routes("us").contains("10.20.0.64/26")
    });
    assert!(lab.has_route("us", "10.20.0.0/26", &["via 10.77.0.2", "proto 151"]));
    assert!(tabby.established("10.77.0.2"));
}

/// Our speaker as route reflector for two BIRD clients on one bridge.
#[test]
fn our_route_reflector_reflects_between_two_bird_clients() {
    let mut lab = Lab::new("rrs");
    let rr = lab.ns("rr");
    lab.ns("c1");
    lab.ns("c2");
    common::sh(&["ip", "-n", &rr, "link", "add", "br0", "type", "bridge"]);
    common::sh(&["ip", "-n", &rr, "addr", "add", "10.78.0.1/24", "dev", "br0"]);
    common::sh(&["ip", "-n", &rr, "link", "set", "br0", "up"]);
    for (n, c) in [(2, "c1"), (3, "c2")] {
        let port = format!("p{c}");
        lab.link("rr", &port, &[], c, "eth0", &[&format!("10.78.0.{n}/24")]);
        common::sh(&["ip", "-n", &rr, "link", "set", &port, "master", "br0"]);
    }
    let client = |id: &str, prefix: &str| {
        format!(
            r#"{base}
protocol static s4 {{ ipv4; route {prefix} via {id}; }}
protocol bgp reflector {{
  local {id} as 65010;
  neighbor 10.78.0.1 as 65010;
  direct;
  ipv4 {{ import all; export all; }};
}}
"#,
            base = bird_base(id)
        )
    };
    let c1 = lab.bird("c1", "c1", &client("10.78.0.2", "10.31.0.0/26"));
    let c2 = lab.bird("c2", "c2", &client("10.78.0.3", "10.32.0.0/26"));
    let tabby = lab.tabby(
        "rr",
        "rr",
        r#"
router_id = "10.78.0.1"
asn = 65010
connect_retry = 1
[[peers]]
address = "10.78.0.2"
asn = 65010
rr_client = true
families = ["ipv4"]
[[peers]]
address = "10.78.0.3"
asn = 65010
rr_client = true
families = ["ipv4"]
"#,
    );
    wait_until("both client sessions up", 60, || {
        tabby.established("10.78.0.2") && tabby.established("10.78.0.3")
    });
    wait_until("c1's prefix reflected to c2's FIB", 30, || {
        lab.has_route("c2", "10.31.0.0/26", &["via 10.78.0.2", "proto bird"])
    });
    wait_until("c2's prefix reflected to c1's FIB", 30, || {
        lab.has_route("c1", "10.32.0.0/26", &["via 10.78.0.3", "proto bird"])
    });
    let r = c2.route("10.31.0.0/26");
    assert!(r.contains("BGP.originator_id: 10.78.0.2"), "{r}");
    assert!(r.contains("BGP.cluster_list: 10.78.0.1"), "{r}");
    // The reflected route is not sent back to its originator.
    assert!(
        !c1.route("10.31.0.0/26").contains("[reflector"),
        "reflected back to the originator"
    );
    // A withdraw is reflected too.
    c1.cmd("disable s4");
    wait_until("withdraw reflected", 30, || {
        !lab.routes("c2").contains("10.31.0.0/26")
    });
}

/// Our speaker as a client of a BIRD route reflector, next to a BIRD client.
#[test]
fn our_speaker_as_client_of_a_bird_route_reflector() {
    let mut lab = Lab::new("rrc");
    let hub = lab.ns("rr");
    lab.ns("us");
    lab.ns("c2");
    common::sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
    common::sh(&[
        "ip",
        "-n",
        &hub,
        "addr",
        "add",
        "10.79.0.1/24",
        "dev",
        "br0",
    ]);
    common::sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
    for (n, c) in [(2, "us"), (3, "c2")] {
        let port = format!("p{c}");
        lab.link("rr", &port, &[], c, "eth0", &[&format!("10.79.0.{n}/24")]);
        common::sh(&["ip", "-n", &hub, "link", "set", &port, "master", "br0"]);
    }
    let rr_conf = format!(
        r#"{base}
template bgp rrclients {{
  local 10.79.0.1 as 65020;
  rr client;
  direct;
  ipv4 {{ import all; export all; }};
}}
protocol bgp tabby from rrclients {{ neighbor 10.79.0.2 as 65020; }}
protocol bgp client2 from rrclients {{ neighbor 10.79.0.3 as 65020; }}
"#,
        base = bird_base("10.79.0.1")
    );
    let _rr = lab.bird("rr", "rr", &rr_conf);
    let c2 = lab.bird(
        "c2",
        "c2",
        &format!(
            r#"{base}
protocol static s4 {{ ipv4; route 10.42.0.0/26 via 10.79.0.3; }}
protocol bgp reflector {{
  local 10.79.0.3 as 65020;
  neighbor 10.79.0.1 as 65020;
  direct;
  ipv4 {{ import all; export all; }};
}}
"#,
            base = bird_base("10.79.0.3")
        ),
    );
    let tabby = lab.tabby(
        "us",
        "us",
        r#"
router_id = "10.79.0.2"
asn = 65020
announce = ["10.41.0.0/26"]
connect_retry = 1
[[peers]]
address = "10.79.0.1"
asn = 65020
families = ["ipv4"]
"#,
    );
    wait_until("session with the BIRD RR up", 60, || {
        tabby.established("10.79.0.1")
    });
    wait_until(
        "c2's prefix reflected into our FIB with c2 as next hop",
        30,
        || lab.has_route("us", "10.42.0.0/26", &["via 10.79.0.3", "proto 151"]),
    );
    wait_until("our prefix reflected to c2", 30, || {
        lab.has_route("c2", "10.41.0.0/26", &["via 10.79.0.2", "proto bird"])
    });
    let r = c2.route("10.41.0.0/26");
    assert!(r.contains("BGP.originator_id: 10.79.0.2"), "{r}");
}
