//! Pod start/stop latency of `tabby` against the reference `ptp` +
//! `host-local` plugins from Debian's `containernetworking-plugins`, measured
//! in the same run, interleaved, on the same node namespace.
//!
//! `cargo bench -p tabby-cni --bench cni [-- --pairs N --concurrent C --passes P --tabby PATH --source-guard MODE]`
//!
//! `--tabby` measures another build of the plugin, e.g. the statically
//! linked one that ships (`cni-plugin/bench.sh` builds and passes it).
//! `--source-guard` sets the plugin's `sourceGuard` (default: unset, i.e.
//! `auto`, which without bandwidth limits is clsact).
//!
//! Prints p50/p99 for sequential ADD and DEL, the wall time of C concurrent
//! ADDs, and each figure as a ratio tabby / reference. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tabby_tests::{Netns, require_root, require_tool, spawn_plugin};

const TABBY: &str = env!("CARGO_BIN_EXE_tabby");
const PTP: &str = "/usr/lib/cni/ptp";

struct Contender {
    name: &'static str,
    binary: PathBuf,
    conf: Value,
}

fn env(cmd: &str, cid: &str, netns: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
        ),
        ("TABBY_LOG", "warn".to_string()),
    ]
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(node: &Netns, c: &Contender, cmd: &str, cid: &str, pod: &Netns) -> Duration {
    let t = Instant::now();
    let child = spawn_plugin(
        &c.binary,
        node,
        &env(cmd, cid, &pod.path()),
        &c.conf.to_string(),
    );
    finish(child, &format!("{} {cmd}", c.name));
    t.elapsed()
}

fn concurrent_adds(node: &Netns, c: &Contender, pods: &[Netns], pass: usize) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spawn_plugin(
                &c.binary,
                node,
                &env("ADD", &format!("cc{pass}x{i}"), &p.path()),
                &c.conf.to_string(),
            )
        })
        .collect();
    for ch in children {
        finish(ch, &format!("{} concurrent ADD", c.name));
    }
    let wall = t.elapsed();
    for (i, p) in pods.iter().enumerate() {
        finish(
            spawn_plugin(
                &c.binary,
                node,
                &env("DEL", &format!("cc{pass}x{i}"), &p.path()),
                &c.conf.to_string(),
            ),
            "DEL",
        );
    }
    wall
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn string_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn tabby_binary() -> PathBuf {
    string_arg("--tabby")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TABBY))
}

fn main() {
    require_root();
    require_tool(PTP);
    require_tool("/usr/lib/cni/host-local");
    let pairs = arg("--pairs", 200);
    let conc = arg("--concurrent", 20);
    let passes = arg("--passes", 5);

    // State on disk (not tmpfs), like a real node's /var/lib.
    let scratch = tempfile::Builder::new()
        .prefix("tabby-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let node = Netns::new("bench-n");
    node.ok("ip link add up0 type veth peer name up0p && ip addr add 192.168.100.1/24 dev up0 && ip link set up0 up && ip link set up0p up && ip route add default via 192.168.100.2");
    let mut tabby_conf = json!({"cniVersion": "1.0.0", "name": "bench-tabby", "type": "tabby",
        "dataDir": scratch.path().join("tabby-data"), "runDir": scratch.path().join("tabby-run"),
        "ipam": {"type": "tabby-ipam", "subnets": ["10.244.0.0/16"]}});
    if let Some(mode) = string_arg("--source-guard") {
        tabby_conf["sourceGuard"] = json!(mode);
    }
    let contenders = [
        Contender {
            name: "tabby",
            binary: tabby_binary(),
            conf: tabby_conf,
        },
        Contender {
            name: "ptp+host-local",
            binary: PathBuf::from(PTP),
            conf: json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp",
                "ipam": {"type": "host-local", "subnet": "10.245.0.0/16", "dataDir": scratch.path().join("host-local")}}),
        },
    ];
    // The floor: spawning a process that does nothing, the same way.
    let floor = {
        let mut v: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                finish(spawn_plugin(Path::new("/bin/true"), &node, &[], ""), "true");
                t.elapsed()
            })
            .collect();
        pct(&mut v, 0.5)
    };
    let pod = Netns::new("bench-p");
    let pods: Vec<Netns> = (0..conc)
        .map(|i| Netns::new(&format!("bench-c{i}")))
        .collect();

    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    let mut wall = [Vec::new(), Vec::new()];
    // Warm-up: page cache, binaries, first-run sysctls.
    for c in &contenders {
        timed(&node, c, "ADD", "warm", &pod);
        timed(&node, c, "DEL", "warm", &pod);
    }
    for pass in 0..passes {
        for (k, c) in contenders.iter().enumerate() {
            for i in 0..pairs / passes {
                let cid = format!("p{pass}x{i}");
                add[k].push(timed(&node, c, "ADD", &cid, &pod));
                del[k].push(timed(&node, c, "DEL", &cid, &pod));
            }
            wall[k].push(concurrent_adds(&node, c, &pods, pass));
        }
    }

    println!(
        "tabby CNI benchmark: {pairs} sequential ADD/DEL pairs and {passes} x {conc} concurrent ADDs per plugin, interleaved"
    );
    println!(
        "process spawn floor (/bin/true, same launcher): {:.2}ms",
        ms(floor)
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "conc wall p50"
    );
    let mut figs = Vec::new();
    for (k, c) in contenders.iter().enumerate() {
        let f = (
            pct(&mut add[k], 0.5),
            pct(&mut add[k], 0.99),
            pct(&mut del[k], 0.5),
            pct(&mut del[k], 0.99),
            pct(&mut wall[k], 0.5),
        );
        println!(
            "{:<16} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>12.1}ms",
            c.name,
            ms(f.0),
            ms(f.1),
            ms(f.2),
            ms(f.3),
            ms(f.4)
        );
        figs.push(f);
    }
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let (t, p) = (figs[0], figs[1]);
    println!(
        "ratio tabby/ref: ADD p50 {:.2}x (target <= 0.25x), DEL p50 {:.2}x (target <= 0.70x), {conc} concurrent ADDs {:.2}x (target <= 0.25x)",
        r(t.0, p.0),
        r(t.2, p.2),
        r(t.4, p.4)
    );
}
