//! Benchmark: a BIRD feeder announces 100,000 IPv4 /26s over eBGP; the
//! receiver is either `tabby-bgp` or BIRD, in alternating passes of the same
//! run. For each pass: time from the receiver's session reaching
//! Established (polled every 5 ms) to all prefixes in its RIB and in its
//! kernel FIB (polled every 20 ms), and the receiver's RSS at the end.
//!
//! Run as root: `cargo build --release -p tabby-bgp && cargo run --release
//! -p tabby-bgp --example bench_fib -- [PASSES] [ROUTES]`.

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

struct Pass {
    rib: Duration,
    fib: Duration,
    rss_kb: u64,
}

fn feeder_conf(routes: u32) -> String {
    let mut s =
        String::from("router id 192.168.55.2;\nprotocol device {}\nprotocol static feed { ipv4;\n");
    for i in 0..routes {
        // 10.128.0.0/9 holds 131,072 /26s.
        let a = 0x0a80_0000u32 + (i << 6);
        let _ = writeln!(
            s,
            "route {}.{}.{}.{}/26 via 192.168.55.2;",
            a >> 24,
            (a >> 16) & 255,
            (a >> 8) & 255,
            a & 255
        );
    }
    s.push_str(
        "}\nprotocol bgp recv { local 192.168.55.2 as 65002; neighbor 192.168.55.1 as 65001; disabled;\n  ipv4 { import none; export all; }; }\n",
    );
    s
}

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

fn run_pass(kind: Receiver, routes: u32, feeder: &str) -> Pass {
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
    let bird = lab.bird("feed", "feeder", feeder);
    wait_until("feeder loaded its static routes", 120, || {
        bird.cmd("show route count")
            .contains(&format!("{routes} of {routes} routes"))
    });
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
    bird.cmd("enable recv");
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
    if std::env::var_os("BENCH_SMAPS").is_some() {
        std::thread::sleep(Duration::from_millis(500));
        for l in lab.log("tabby").lines().filter(|l| l.contains("backlog")) {
            eprintln!("{l}");
        }
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut name = String::new();
        for l in smaps.lines() {
            if l.contains('-') && !l.starts_with(char::is_uppercase) {
                name = l.to_string();
            } else if let Some(r) = l.strip_prefix("Rss:") {
                let kb: u64 = r
                    .split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0);
                if kb > 200 {
                    eprintln!("{kb:>8} kB  {name}");
                }
            }
        }
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
    let feeder = feeder_conf(routes);
    let mut results: Vec<(Receiver, Pass)> = Vec::new();
    for i in 0..passes {
        for kind in [Receiver::Tabby, Receiver::Bird] {
            let p = run_pass(kind, routes, &feeder);
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
    println!("\nmedians over {passes} passes, {routes} IPv4 /26 prefixes:");
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
