//! A small lab for interop tests: network namespaces joined by veth pairs,
//! real daemons (BIRD, FRR, GoBGP) and our binary running inside them, and
//! a guard that removes everything on drop, even when a test fails.
//!
//! Needs root, `ip`, and the daemons; a missing piece fails the test with a
//! message saying what to install.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning stdout whatever the exit status.
pub fn sh_lossy(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Polls `f` every 100 ms until it returns true or `secs` pass; panics with
/// `what` and the last diagnostic otherwise.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// Asserts `f` stays true during the whole window (for "never happens"
/// checks, which cannot be done without some observation window).
pub fn holds_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        assert!(f(), "{what} stopped holding");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
        || Path::new(tool).exists();
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install -y {package}`"
    );
}

/// The guard: namespaces, processes and a temp dir of one test.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A lab for `test` (short, unique per test file). Removes namespaces a
    /// crashed earlier run of the same test left behind.
    pub fn new(test: &str) -> Self {
        assert!(
            nix_is_root(),
            "interop tests need root (network namespaces)"
        );
        require("ip", "iproute2");
        let stale_prefix = format!("tbgp-{test}-");
        for ns in sh_lossy(&["ip", "netns", "list"]).lines() {
            let name = ns.split_whitespace().next().unwrap_or("");
            if name.starts_with(&stale_prefix) {
                // A run that could not clean up (e.g. the benchmark, built
                // with panic = "abort") may have left daemons inside.
                for pid in sh_lossy(&["ip", "netns", "pids", name]).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        Self {
            prefix: format!("tbgp-{test}-{}-", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix(&format!("tbgp-{test}-"))
                .tempdir()
                .unwrap(),
        }
    }

    /// Full name of namespace `short`.
    pub fn ns_name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Creates namespace `short` with loopback up.
    pub fn ns(&mut self, short: &str) -> String {
        let name = self.ns_name(short);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between two namespaces, with addresses (CIDR; IPv6 too).
    pub fn link(
        &self,
        a: &str,
        a_if: &str,
        a_addrs: &[&str],
        b: &str,
        b_if: &str,
        b_addrs: &[&str],
    ) {
        let (na, nb) = (self.ns_name(a), self.ns_name(b));
        sh(&[
            "ip", "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
            &nb,
        ]);
        for (ns, ifname, addrs) in [(&na, a_if, a_addrs), (&nb, b_if, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["ip", "-n", ns, "addr", "add", addr, "dev", ifname];
                if addr.contains(':') {
                    args.push("nodad");
                }
                sh(&args);
            }
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
    }

    /// Starts `args` inside namespace `short`; killed on drop.
    pub fn spawn(&mut self, short: &str, label: &str, args: &[&str]) -> u32 {
        let ns = self.ns_name(short);
        let log = std::fs::File::create(self.dir.path().join(format!("{label}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        let pid = child.id();
        self.children.push((label.to_string(), child));
        pid
    }

    /// Pid of the process started as `label`.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
    }

    /// Stops the process started as `label` with `signal` and waits for it.
    pub fn stop(&mut self, label: &str, signal: i32) {
        if let Some(pos) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(pos);
            let pid = i32::try_from(child.id()).unwrap();
            // kill(1) keeps the tests free of unsafe code.
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// The log of process `label`.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Path inside the lab's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file into the temp dir.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts BIRD in `short` with config text; returns a handle.
    pub fn bird(&mut self, short: &str, label: &str, conf: &str) -> Bird {
        self.bird_with(short, label, conf, &[])
    }

    /// Starts BIRD with extra command line arguments (e.g. `-R`).
    pub fn bird_with(&mut self, short: &str, label: &str, conf: &str, extra: &[&str]) -> Bird {
        require("bird", "bird2");
        let conf_path = self.write(&format!("{label}.conf"), conf);
        let ctl = self.path(&format!("{label}.ctl"));
        let mut args = vec![
            "bird",
            "-f",
            "-c",
            conf_path.to_str().unwrap(),
            "-s",
            ctl.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.spawn(short, label, &args);
        let bird = Bird { ctl };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bird.cmd("show status").contains("Daemon is up") {
            assert!(
                Instant::now() < deadline,
                "BIRD {label} did not start: {}",
                self.log(label)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bird
    }

    /// Starts FRR's bgpd (no zebra, no kernel) in `short`.
    pub fn frr(&mut self, short: &str, label: &str, conf: &str) -> Frr {
        require("/usr/lib/frr/bgpd", "frr");
        require("vtysh", "frr");
        let dir = self.path(label);
        std::fs::create_dir_all(&dir).unwrap();
        let conf_path = dir.join("bgpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let (c, p, d) = (
            conf_path.to_str().unwrap().to_string(),
            dir.join("bgpd.pid").to_str().unwrap().to_string(),
            dir.to_str().unwrap().to_string(),
        );
        self.spawn(
            short,
            label,
            &[
                "/usr/lib/frr/bgpd",
                "-Z",
                "-n",
                "-S",
                "-f",
                &c,
                "-i",
                &p,
                "--vty_socket",
                &d,
                "-P",
                "0",
            ],
        );
        let frr = Frr { dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !frr
            .cmd("show bgp summary")
            .contains("BGP router identifier")
        {
            assert!(
                Instant::now() < deadline,
                "FRR {label} did not start: {}",
                self.log(label)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        frr
    }

    /// Starts FRR's bfdd (no zebra) in `short` with config text. bfdd
    /// drops to the `frr` user (it has no option to stay root), so its
    /// directory belongs to `frr` and the lab's temp dir is opened for
    /// traversal.
    pub fn bfdd(&mut self, short: &str, label: &str, conf: &str) -> Bfdd {
        require("/usr/lib/frr/bfdd", "frr");
        require("vtysh", "frr");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = self.path(label);
        std::fs::create_dir_all(&dir).unwrap();
        let conf_path = dir.join("bfdd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        sh(&["chown", "-R", "frr:frr", dir.to_str().unwrap()]);
        let d = dir.to_str().unwrap().to_string();
        self.spawn(
            short,
            label,
            &[
                "/usr/lib/frr/bfdd",
                "-f",
                conf_path.to_str().unwrap(),
                "-i",
                &format!("{d}/bfdd.pid"),
                "--vty_socket",
                &d,
                "--bfdctl",
                &format!("{d}/bfdd.sock"),
                "-z",
                &format!("{d}/no-zebra"),
                "-P",
                "0",
                "--log",
                "stdout",
            ],
        );
        let b = Bfdd { dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !b.cmd("show bfd peers").contains("BFD Peers") {
            assert!(
                Instant::now() < deadline,
                "bfdd {label} did not start: {}",
                self.log(label)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    /// Loads an nftables script (`nft -f -`) in namespace `short`, never
    /// in the root namespace.
    pub fn nft(&self, short: &str, script: &str) {
        use std::io::Write;
        require("nft", "nftables");
        let ns = self.ns_name(short);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts gobgpd in `short` with TOML config text; its API listens on
    /// 127.0.0.1:50051 inside the namespace.
    pub fn gobgp(&mut self, short: &str, label: &str, conf: &str) -> Gobgp {
        require("gobgpd", "gobgpd");
        let conf_path = self.write(&format!("{label}.toml"), conf);
        self.spawn(
            short,
            label,
            &[
                "gobgpd",
                "-f",
                conf_path.to_str().unwrap(),
                "--api-hosts",
                "127.0.0.1:50051",
            ],
        );
        let g = Gobgp {
            ns: self.ns_name(short),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !g.cmd(&["global"]).contains("AS") {
            assert!(
                Instant::now() < deadline,
                "gobgpd {label} did not start: {}",
                self.log(label)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        g
    }

    /// Starts our speaker in `short` with TOML config text.
    pub fn tabby(&mut self, short: &str, label: &str, toml: &str) -> Tabby {
        let ctl = self.path(&format!("{label}.sock"));
        let toml = format!("control_socket = \"{}\"\n{toml}", ctl.display());
        let conf = self.write(&format!("{label}.toml"), &toml);
        let bin = tabby_bin();
        self.spawn(
            short,
            label,
            &[&bin, "run", "--config", conf.to_str().unwrap()],
        );
        let t = Tabby { ctl };
        wait_until(&format!("tabby {label} control socket"), 30, || {
            t.try_status().is_some()
        });
        t
    }

    /// `ip route` output of a namespace (both families).
    pub fn routes(&self, short: &str) -> String {
        let ns = self.ns_name(short);
        let mut s = sh_lossy(&["ip", "-n", &ns, "route", "show"]);
        s.push_str(&sh_lossy(&["ip", "-n", &ns, "-6", "route", "show"]));
        s
    }

    /// Whether namespace `short` has a route for `prefix` whose line
    /// contains every one of `parts` (e.g. "via 10.0.0.2", "proto 151").
    pub fn has_route(&self, short: &str, prefix: &str, parts: &[&str]) -> bool {
        self.routes(short)
            .lines()
            .any(|l| l.starts_with(&format!("{prefix} ")) && parts.iter().all(|p| l.contains(p)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failing test shows what the daemons said.
        if std::thread::panicking() {
            for (label, _) in &self.children {
                let log = self.log(label);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last lines of {label}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            // Processes started by daemons inside the namespace would keep it
            // busy; `ip netns pids` finds them and only them.
            for pid in sh_lossy(&["ip", "netns", "pids", ns]).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The `tabby-bgp` binary: Cargo's path for tests, else next to the running
/// example (`target/<profile>/examples/..` → `target/<profile>/tabby-bgp`).
pub fn tabby_bin() -> String {
    if let Some(p) = option_env!("CARGO_BIN_EXE_tabby-bgp") {
        return p.to_string();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tabby-bgp");
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build --release -p tabby-bgp` first",
        bin.display()
    );
    bin.to_string_lossy().into_owned()
}

fn nix_is_root() -> bool {
    sh_lossy(&["id", "-u"]).trim() == "0"
}

/// A running BIRD.
pub struct Bird {
    pub ctl: PathBuf,
}

impl Bird {
    /// Runs a birdc command.
    pub fn cmd(&self, c: &str) -> String {
        let mut args = vec!["birdc", "-s", self.ctl.to_str().unwrap()];
        args.extend(c.split_whitespace());
        sh_lossy(&args)
    }

    /// Whether BGP protocol `name` is Established.
    pub fn established(&self, name: &str) -> bool {
        self.cmd(&format!("show protocols {name}"))
            .contains("Established")
    }

    /// `show route all <prefix>` output.
    pub fn route(&self, prefix: &str) -> String {
        self.cmd(&format!("show route {prefix} all"))
    }
}

/// A running FRR bgpd.
pub struct Frr {
    pub dir: PathBuf,
}

impl Frr {
    /// Runs a vtysh command against this bgpd.
    pub fn cmd(&self, c: &str) -> String {
        sh_lossy(&[
            "vtysh",
            "--vty_socket",
            self.dir.to_str().unwrap(),
            "-d",
            "bgpd",
            "-c",
            c,
        ])
    }

    /// Whether the session with `peer` is Established.
    pub fn established(&self, peer: &str) -> bool {
        let j: serde_json::Value =
            serde_json::from_str(&self.cmd(&format!("show bgp neighbors {peer} json")))
                .unwrap_or_default();
        j[peer]["bgpState"] == "Established"
    }

    /// The best path's next hop for `prefix`, if FRR has one.
    pub fn best_next_hop(&self, afi: &str, prefix: &str) -> Option<String> {
        let j: serde_json::Value =
            serde_json::from_str(&self.cmd(&format!("show bgp {afi} unicast {prefix} json")))
                .ok()?;
        j["paths"]
            .as_array()?
            .iter()
            .find(|p| p["bestpath"]["overall"] == true)
            .and_then(|p| p["nexthops"][0]["ip"].as_str().map(str::to_string))
    }
}

/// A running FRR bfdd.
pub struct Bfdd {
    pub dir: PathBuf,
}

impl Bfdd {
    /// Runs a vtysh command against this bfdd.
    pub fn cmd(&self, c: &str) -> String {
        sh_lossy(&[
            "vtysh",
            "--vty_socket",
            self.dir.to_str().unwrap(),
            "-d",
            "bfdd",
            "-c",
            c,
        ])
    }

    /// The status (`up`, `down`, `init`, ...) of the session with `peer`.
    pub fn peer_status(&self, peer: &str) -> String {
        let j: serde_json::Value =
            serde_json::from_str(&self.cmd("show bfd peers json")).unwrap_or_default();
        j.as_array()
            .and_then(|a| a.iter().find(|p| p["peer"] == peer))
            .and_then(|p| p["status"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A running gobgpd.
pub struct Gobgp {
    pub ns: String,
}

impl Gobgp {
    /// Runs a `gobgp` CLI command against this daemon.
    pub fn cmd(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.ns, "gobgp", "-u", "127.0.0.1"];
        v.extend_from_slice(args);
        sh_lossy(&v)
    }
}

/// A running `tabby-bgp`.
pub struct Tabby {
    pub ctl: PathBuf,
}

impl Tabby {
    /// The status JSON, if the control socket answers.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.ctl).ok()?;
        s.write_all(b"status\n").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// State of the session with `peer`.
    pub fn state(&self, peer: &str) -> String {
        self.peer(peer)
            .and_then(|p| p["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The status entry of `peer`.
    pub fn peer(&self, peer: &str) -> Option<serde_json::Value> {
        let st = self.try_status()?;
        st["peers"]
            .as_array()?
            .iter()
            .find(|p| p["address"] == peer)
            .cloned()
    }

    /// Whether the session with `peer` is Established.
    pub fn established(&self, peer: &str) -> bool {
        self.state(peer) == "Established"
    }

    /// The BFD state (`Up`, `Down`, `AdminDown`) of the session with `peer`.
    pub fn bfd_state(&self, peer: &str) -> String {
        self.peer(peer)
            .and_then(|p| p["bfd"]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}
