//! Helpers for system tests that run in real network namespaces.
//!
//! Every namespace a test makes is named `tt<pid>-<n>-<tag>`, deleted when
//! its guard drops (also when the test panics), and namespaces of test
//! processes that died without cleaning up are deleted the first time any
//! test of a later run makes one.
//!
//! These helpers panic with a clear message when something a test needs is
//! missing (root, a tool): a test that cannot run must fail loudly, never
//! skip silently.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tabby_sys::NetNs;

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static CLEANUP: Once = Once::new();

/// Panics unless the test runs as root.
pub fn require_root() {
    if !nix_is_root() {
        panic!("this test needs root (network namespaces): run the suite as root, as CI does");
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Panics unless `tool` is on PATH (or is an absolute path that exists).
pub fn require_tool(tool: &str) {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
    };
    if !found {
        panic!(
            "this test needs `{tool}`: install it (bash .ci/run installs everything the tests need)"
        );
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `timeout`
/// naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces left by test processes that no longer exist.
fn cleanup_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("tt") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ns: NetNs,
}

impl Netns {
    /// Makes a fresh namespace with loopback up.
    pub fn new(tag: &str) -> Netns {
        require_root();
        require_tool("ip");
        CLEANUP.call_once(cleanup_stale);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tt{}-{n}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name} failed");
        let ns = NetNs::open(format!("/var/run/netns/{name}")).unwrap();
        let me = Netns { name, ns };
        me.ok("ip link set lo up");
        me
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path (what a runtime passes as `CNI_NETNS`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// The open handle.
    pub fn handle(&self) -> &NetNs {
        &self.ns
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap()
    }

    /// Runs a shell command inside the namespace and returns its stdout,
    /// panicking with its stderr when it fails.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when `cmd` succeeds inside the namespace.
    pub fn succeeds(&self, cmd: &str) -> bool {
        self.sh(cmd).status.success()
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What a plugin run printed and returned.
#[derive(Debug)]
pub struct PluginRun {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl PluginRun {
    /// Stdout as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns the JSON result (or Null when empty).
    pub fn expect_ok(&self) -> serde_json::Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with the CNI error `code` and returns the error object.
    pub fn expect_err(&self, code: u64) -> serde_json::Value {
        assert_ne!(
            self.code, 0,
            "plugin unexpectedly succeeded: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "wrong error code: {v}\nstderr: {}",
            self.stderr
        );
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {v}"
        );
        v
    }
}

/// Runs a CNI plugin binary inside `node`, the way a runtime does: the
/// `CNI_*` variables in the environment and the configuration on stdin.
pub fn run_plugin(binary: &Path, node: &Netns, env: &[(&str, String)], stdin: &str) -> PluginRun {
    let child = spawn_plugin(binary, node, env, stdin);
    let out = child.wait_with_output().unwrap();
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a plugin inside `node` without waiting for it.
pub fn spawn_plugin(
    binary: &Path,
    node: &Netns,
    env: &[(&str, String)],
    stdin: &str,
) -> std::process::Child {
    use std::io::Write;
    // A child process inherits the network namespace of the thread that
    // forks it, so spawning from a thread inside `node` places the plugin
    // there without `ip netns exec` (which also remounts /sys).
    let mut child = node.run(|| {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    });
    if let Some(mut sin) = child.stdin.take() {
        let _ = sin.write_all(stdin.as_bytes());
    }
    child
}

/// A per-test scratch directory (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tabby-test-")
        .tempdir()
        .unwrap()
}

/// Path of a binary of the workspace (e.g. `tabby` from another package),
/// built by `cargo build --bins` into the same target directory as this
/// test. Panics with the fix when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join(name);
    if !bin.exists() {
        panic!(
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; tests/run.sh does)",
            bin.display()
        );
    }
    bin
}

/// An HTTP GET from inside `ns`; returns (status code, body).
pub fn http_get(ns: &Netns, addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
