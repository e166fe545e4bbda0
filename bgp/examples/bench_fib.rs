//! Benchmark: a feeder announces 100,000 IPv4 /26s over eBGP; the receiver
//! is either `tabby-bgp` or BIRD, in alternating passes of the same run,
//! each pass in fresh namespaces. For each pass: time from the receiver's
//! session reaching Established (polled every 5 ms) to all prefixes in its
//! RIB and in its kernel FIB (polled every 20 ms), and the receiver's RSS at
//! the end.
//!
//! The feeder is GoBGP (routes injected from a generated MRT file before the
//! session starts) or BIRD (a static protocol); BIRD as feeder sometimes
//! holds its last UPDATE back for a second or more, which makes it noisy.
//!
//! Run as root: `cargo build --release -p tabby-bgp --bin tabby-bgp
//! --example bench_fib && target/release/examples/bench_fib [PASSES]
//! [ROUTES] [gobgp|bird]`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{Lab, sh_lossy, wait_until};

#[derive(Clone, Copy, PartialEq)]
enum Receiver {
    Tabby,
    Bird,
}

#[derive(Clone, Copy, PartialEq)]
enum Feeder {
    Gobgp,
    Bird,
}

struct Pass {
    rib: Duration,
    fib: Duration,
    rss_kb: u64,
}

/// The i-th /26 of 10.128.0.0/9 (which holds 131,072 of them).
fn prefix(i: u32) -> u32 {
    0x0a80_0000u32 + (i << 6)
}

fn dotted(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn bird_feeder_conf(routes: u32) -> String {
    let mut s =
        String::from("router id 192.168.55.2;\nprotocol device {}\nprotocol static feed { ipv4;\n");
    for i in 0..routes {
        let _ = writeln!(s, "route {}/26 via 192.168.55.2;", dotted(prefix(i)));
    }
    s.push_str(
        "}\nprotocol bgp recv { local 192.168.55.2 as 65002; neighbor 192.168.55.1 as 65001; disabled;\n  ipv4 { import none; export all; }; }\n",
    );
    s
}

/// An MRT TABLE_DUMP_V2 file (RFC 6396) with one path per prefix, for
/// `gobgp mrt inject global`.
fn mrt(routes: u32) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    // PEER_INDEX_TABLE: collector id, empty view name, one AS4 IPv4 peer.
    let mut b = Vec::new();
    b.extend_from_slice(&[192, 168, 55, 2, 0, 0, 0, 1, 0x02]);
    b.extend_from_slice(&[192, 168, 55, 2, 192, 168, 55, 2]);
    b.extend_from_slice(&65002u32.to_be_bytes());
    record(&mut out, 1, &b);
    // ORIGIN IGP, empty AS_PATH, NEXT_HOP 192.168.55.2.
    let attrs = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 192, 168, 55, 2];
    // `gobgp mrt inject` drops the last few hundred paths when it exits;
    // trailing copies of the first route (harmless re-announcements) take
    // that loss instead of real routes.
    for i in (0..routes).chain(std::iter::repeat_n(0, 2000)) {
        let mut b = Vec::new();
        b.extend_from_slice(&i.to_be_bytes());
        b.push(26);
        b.extend_from_slice(&prefix(i).to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        record(&mut out, 2, &b);
    }
    out
}

const GOBGP_FEEDER: &str = r#"
[global.config]
  as = 65002
  router-id = "192.168.55.2"
  port = 179
"#;

const RECEIVER_BIRD: &str = r#"
router id 192.168.55.1;
protocol device {}
protocol kernel k4 { ipv4 { export all; import none; }; merge paths on; }
protocol bgp feed { local 192.168.55.1 as 65001; neighbor 192.168.55.2 as 65002;
  ipv4 { import all; export none; }; }
"#;

const RECEIVER_TABBY: &str = r#"
router_id = "192.168.55.1"
asn = 65001
connect_retry = 1
[[peers]]
address = "192.168.55.2"
asn = 65002
families = ["ipv4"]
"#;

/// Routes in the receiver's main IPv4 table (minus the connected one).
fn fib_count(lab: &Lab) -> usize {
    let ns = lab.ns_name("recv");
    let out = sh_lossy(&["ip", "netns", "exec", &ns, "cat", "/proc/net/route"]);
    out.lines().count().saturating_sub(2)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts the feeder with all routes loaded but no session; returns the
/// command that starts the session.
fn start_feeder(lab: &mut Lab, feeder: Feeder, routes: u32, bird_conf: &str) -> Box<dyn Fn()> {
    let ns = lab.ns_name("feed");
    match feeder {
        Feeder::Bird => {
            let bird = lab.bird("feed", "feeder", bird_conf);
            let want = format!("{routes} of {routes} routes");
            wait_until("feeder loaded its static routes", 120, || {
                bird.cmd("show route count").contains(&want)
            });
            Box::new(move || {
                bird.cmd("enable recv");
            })
        }
        Feeder::Gobgp => {
            let conf = lab.write("gobgpd.toml", GOBGP_FEEDER);
            let mrt_path = lab.path("routes.mrt");
            std::fs::write(&mrt_path, mrt(routes)).unwrap();
            lab.spawn(
                "feed",
                "gobgpd",
                &[
                    "gobgpd",
                    "-f",
                    conf.to_str().unwrap(),
                    "--api-hosts",
                    "127.0.0.1:50051",
                ],
            );
            let gobgp = move |args: &[&str]| {
                let mut v = vec![
                    "ip",
                    "netns",
                    "exec",
                    ns.as_str(),
                    "gobgp",
                    "-u",
                    "127.0.0.1",
                ];
                v.extend_from_slice(args);
                sh_lossy(&v)
            };
            wait_until("gobgpd API up", 30, || gobgp(&["global"]).contains("AS"));
            gobgp(&["mrt", "inject", "global", mrt_path.to_str().unwrap()]);
            let want = format!("Destination: {routes},");
            wait_until("feeder loaded its routes", 120, || {
                gobgp(&["global", "rib", "summary", "-a", "ipv4"]).contains(&want)
            });
            Box::new(move || {
                gobgp(&["neighbor", "add", "192.168.55.1", "as", "65001"]);
            })
        }
    }
}

fn run_pass(kind: Receiver, feeder: Feeder, routes: u32, bird_conf: &str) -> Pass {
    let mut lab = Lab::new(match kind {
        Receiver::Tabby => "benchT",
        Receiver::Bird => "benchB",
    });
    lab.ns("feed");
    lab.ns("recv");
    lab.link(
        "recv",
        "eth0",
        &["192.168.55.1/24"],
        "feed",
        "eth0",
        &["192.168.55.2/24"],
    );
    let start = start_feeder(&mut lab, feeder, routes, bird_conf);
    // (is the session Established?, are all prefixes in the RIB?)
    type Probe = Box<dyn Fn() -> bool>;
    let (established, rib_done): (Probe, Probe) = match kind {
        Receiver::Tabby => {
            let t = std::rc::Rc::new(lab.tabby("recv", "tabby", RECEIVER_TABBY));
            let want = u64::from(routes);
            let t2 = t.clone();
            (
                Box::new(move || t.established("192.168.55.2")),
                Box::new(move || {
                    t2.try_status()
                        .is_some_and(|s| s["loc_rib_prefixes"].as_u64() == Some(want))
                }),
            )
        }
        Receiver::Bird => {
            let b = std::rc::Rc::new(lab.bird("recv", "receiver", RECEIVER_BIRD));
            let want = format!("{routes} of {routes} routes");
            let b2 = b.clone();
            (
                Box::new(move || b.established("feed")),
                Box::new(move || b2.cmd("show route count").contains(&want)),
            )
        }
    };
    let label = match kind {
        Receiver::Tabby => "tabby",
        Receiver::Bird => "receiver",
    };
    let pid = lab.pid(label).unwrap();
    start();
    let mut t0 = Instant::now();
    while !established() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "session never came up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Times count from the first poll that saw Established.
    t0 = Instant::now();
    let mut rib = None;
    let mut fib = None;
    let deadline = t0 + Duration::from_secs(300);
    while (rib.is_none() || fib.is_none()) && Instant::now() < deadline {
        if rib.is_none() && rib_done() {
            rib = Some(t0.elapsed());
        }
        if fib.is_none() && fib_count(&lab) >= routes as usize {
            fib = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (Some(rib), Some(fib)) = (rib, fib) else {
        panic!("pass did not complete: fib {} routes", fib_count(&lab))
    };
    Pass {
        rib,
        fib,
        rss_kb: rss_kb(pid),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let passes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let routes: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let feeder = match args.next().as_deref() {
        Some("bird") => Feeder::Bird,
        _ => Feeder::Gobgp,
    };
    let bird_conf = if feeder == Feeder::Bird {
        bird_feeder_conf(routes)
    } else {
        String::new()
    };
    let mut results: Vec<(Receiver, Pass)> = Vec::new();
    for i in 0..passes {
        for kind in [Receiver::Tabby, Receiver::Bird] {
            let p = run_pass(kind, feeder, routes, &bird_conf);
            println!(
                "pass {} {:<9} RIB {:>6.3} s  FIB {:>6.3} s  RSS {:>6.1} MB",
                i + 1,
                if kind == Receiver::Tabby {
                    "tabby-bgp"
                } else {
                    "bird"
                },
                p.rib.as_secs_f64(),
                p.fib.as_secs_f64(),
                p.rss_kb as f64 / 1024.0
            );
            results.push((kind, p));
        }
    }
    let med = |k: Receiver, f: &dyn Fn(&Pass) -> f64| {
        median(
            results
                .iter()
                .filter(|(r, _)| *r == k)
                .map(|(_, p)| f(p))
                .collect(),
        )
    };
    println!(
        "\nmedians over {passes} passes, {routes} IPv4 /26 prefixes from {}:",
        if feeder == Feeder::Gobgp {
            "GoBGP"
        } else {
            "BIRD"
        }
    );
    for (name, f) in [
        (
            "RIB complete (s)",
            &(|p: &Pass| p.rib.as_secs_f64()) as &dyn Fn(&Pass) -> f64,
        ),
        ("FIB complete (s)", &|p: &Pass| p.fib.as_secs_f64()),
        ("RSS (MB)", &|p: &Pass| p.rss_kb as f64 / 1024.0),
    ] {
        let (t, b) = (med(Receiver::Tabby, f), med(Receiver::Bird, f));
        println!(
            "  {name:<18} tabby-bgp {t:>7.3}   bird {b:>7.3}   ratio tabby/bird {:.2}",
            t / b
        );
    }
}
