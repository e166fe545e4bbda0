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
        "metric",
        "1151",
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

/// `ip -n NS route show PREFIX` lines, as the kernel prints them.
fn show(ns: &str, family: &str, what: &[&str]) -> String {
    let mut v = vec!["ip", family, "-n", ns, "route", "show"];
    v.extend_from_slice(what);
    common::sh(&v)
}

#[test]
fn a_learned_default_route_sits_beside_the_nodes_own_and_leaves_it_untouched() {
    let mut lab = common::Lab::new("fibdef");
    let ns = lab.ns("n");
    lab.ns("peer");
    lab.link(
        "n",
        "eth0",
        &["10.97.0.1/24", "fd97::1/64"],
        "peer",
        "eth0",
        &["10.97.0.2/24", "fd97::2/64", "fd97::3/64"],
    );
    let ip = |args: &[&str]| {
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        common::sh(&v);
    };
    // The node's own routes: a default (metric 0), an IPv6 default, and a
    // static route of another owner that happens to use our metric.
    ip(&["route", "add", "default", "via", "10.97.0.2"]);
    ip(&["-6", "route", "add", "default", "via", "fd97::2"]);
    ip(&[
        "route",
        "add",
        "10.98.0.0/24",
        "via",
        "10.97.0.2",
        "metric",
        "1151",
    ]);
    let before_v4 = show(&ns, "-4", &[]);
    let before_v6 = show(&ns, "-6", &[]);

    let ns2 = ns.clone();
    let report = in_netns(&ns2, || {
        let mut fib = FibInstaller::new(151, 254).unwrap();
        fib.apply(&[
            change("0.0.0.0/0", &["10.97.0.3"]),
            change("::/0", &["fd97::3"]),
            change("10.98.0.0/24", &["10.97.0.3"]),
        ])
        .unwrap()
    });
    assert_eq!(report.installed, 2, "{report:?}");
    assert_eq!(
        report
            .failed
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>(),
        vec!["10.98.0.0/24".to_string()],
        "the foreign route of the same metric is not replaced"
    );
    let defaults = show(&ns, "-4", &["default"]);
    assert!(
        defaults
            .lines()
            .any(|l| l.trim_end() == "default via 10.97.0.2 dev eth0")
            && defaults.contains("default via 10.97.0.3 dev eth0 proto 151 metric 1151"),
        "both default routes, the node's first: {defaults}"
    );
    let defaults6 = show(&ns, "-6", &["default"]);
    assert!(
        defaults6.contains("default via fd97::3 dev eth0 proto 151 metric 1151"),
        "{defaults6}"
    );
    for line in before_v4.lines() {
        assert!(
            show(&ns, "-4", &[]).lines().any(|l| l == line),
            "lost {line}"
        );
    }

    // A next hop change and then the withdraw: the node's routes are
    // byte-identical afterwards.
    let ns3 = ns.clone();
    in_netns(&ns3, || {
        let mut fib = FibInstaller::new(151, 254).unwrap();
        assert_eq!(fib.leftovers(), 2);
        let r = fib.apply(&[change("0.0.0.0/0", &["10.97.0.2"])]).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        let r = fib
            .apply(&[
                change("0.0.0.0/0", &[]),
                change("::/0", &[]),
                change("10.98.0.0/24", &[]),
            ])
            .unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        // A second delete of what is gone must not reach the node's own.
        let r = fib.apply(&[change("0.0.0.0/0", &[])]).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
    });
    assert_eq!(show(&ns, "-4", &[]), before_v4);
    assert_eq!(show(&ns, "-6", &[]), before_v6);
}
