//! The kernel route installer against a real kernel, in a test namespace:
//! replace semantics, ECMP, IPv6, leftovers of a previous run, and routes of
//! other protocols left alone. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;

use ipnet::IpNet;
use tabby_bgp::fib::FibInstaller;
use tabby_bgp::rib::BestChange;

fn change(prefix: &str, hops: &[&str]) -> BestChange {
    BestChange {
        prefix: prefix.parse::<IpNet>().unwrap(),
        next_hops: hops.iter().map(|h| h.parse::<IpAddr>().unwrap()).collect(),
    }
}

/// Runs `f` on a thread inside namespace `ns` (setns moves one thread only).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .map_err(|_| "netns thread failed")
    .unwrap()
}

#[test]
fn the_installer_replaces_spreads_sweeps_and_leaves_other_protocols_alone() {
    let mut lab = common::Lab::new("fib");
    let ns = lab.ns("n");
    lab.ns("peer");
    lab.link(
        "n",
        "eth0",
        &["10.91.0.1/24", "fd91::1/64"],
        "peer",
        "eth0",
        &["10.91.0.2/24", "fd91::2/64"],
    );
    let ip = |args: &[&str]| {
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        common::sh(&v);
    };
    // A leftover of ours from a "previous run", and somebody else's route.
    ip(&[
        "route",
        "add",
        "10.93.0.0/26",
        "via",
        "10.91.0.2",
        "proto",
        "151",
    ]);
    ip(&[
        "route",
        "add",
        "10.92.0.0/26",
        "via",
        "10.91.0.2",
        "proto",
        "150",
    ]);

    let ns2 = ns.clone();
    let (leftovers, report) = in_netns(&ns2, || {
        let mut fib = FibInstaller::new(151, 254).unwrap();
        let leftovers = fib.leftovers();
        let r = fib
            .apply(&[
                change("10.94.0.0/26", &["10.91.0.2"]),
                change("10.95.0.0/26", &["10.91.0.2", "10.91.0.3"]),
                change("fd94::/64", &["fd91::2"]),
                // Deleting somebody else's route must not work.
                change("10.92.0.0/26", &[]),
                // Deleting what is not there is fine.
                change("10.96.0.0/26", &[]),
            ])
            .unwrap();
        (leftovers, r)
    });
    assert_eq!(leftovers, 1);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.installed, 3);
    assert!(lab.has_route("n", "10.94.0.0/26", &["via 10.91.0.2", "proto 151"]));
    assert!(lab.has_route("n", "fd94::/64", &["via fd91::2", "proto 151"]));
    let routes = lab.routes("n");
    assert!(
        routes.contains("nexthop via 10.91.0.2") && routes.contains("nexthop via 10.91.0.3"),
        "ECMP route missing: {routes}"
    );
    assert!(
        lab.has_route("n", "10.92.0.0/26", &["proto 150"]),
        "{routes}"
    );
    assert!(
        lab.has_route("n", "10.93.0.0/26", &["proto 151"]),
        "leftover kept until synced"
    );

    // A new next hop replaces the route in place; the sweep removes only the
    // leftover that was not re-learned.
    let ns3 = ns.clone();
    in_netns(&ns3, || {
        let mut fib = FibInstaller::new(151, 254).unwrap();
        let r = fib
            .apply(&[
                change("10.94.0.0/26", &["10.91.0.3"]),
                change("10.95.0.0/26", &["10.91.0.2"]),
                change("fd94::/64", &["fd91::2"]),
            ])
            .unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        let swept = fib.sweep_leftovers().unwrap();
        assert_eq!(swept.removed, 1);
    });
    assert!(lab.has_route("n", "10.94.0.0/26", &["via 10.91.0.3", "proto 151"]));
    assert!(lab.has_route("n", "10.95.0.0/26", &["via 10.91.0.2", "proto 151"]));
    assert!(!lab.routes("n").contains("10.93.0.0/26"));
    assert!(lab.has_route("n", "10.92.0.0/26", &["proto 150"]));

    // remove_all takes exactly ours away.
    in_netns(&ns, || {
        let mut fib = FibInstaller::new(151, 254).unwrap();
        assert_eq!(fib.remove_all().unwrap().removed, 3);
    });
    let routes = lab.routes("n");
    assert!(!routes.contains("proto 151"), "{routes}");
    assert!(routes.contains("10.92.0.0/26"));
}
