//! The lab's few effects on the system: `ip` commands inside the lab's own
//! namespaces, processes, and files replaced atomically. Nothing here ever
//! touches the root namespace: every `ip` call names a lab namespace.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs `cmd` with `input` on its stdin and returns its output (`what`
/// names it in errors).
pub fn run_with_input(
    cmd: &mut Command,
    input: &[u8],
    what: &str,
) -> anyhow::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .with_context(|| format!("writing to {what}"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))
}

/// Runs `ip -n <netns> -batch -` with `lines` (one `ip` command each).
pub fn ip_batch(netns: &str, lines: &[String]) -> anyhow::Result<()> {
    let script = lines.join("\n");
    let out = run_with_input(
        Command::new("ip").args(["-n", netns, "-batch", "-"]),
        script.as_bytes(),
        "`ip` (is iproute2 installed?)",
    )?;
    if !out.status.success() {
        bail!(
            "`ip -n {netns}` failed: {}\ncommands:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim(),
        );
    }
    Ok(())
}

/// Runs `ip <args>` (args must name a lab namespace with `-n` or `netns`).
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every network namespace whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// Creates a namespace with its loopback up.
pub fn add_netns(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process in `netns` and deletes it; idempotent.
pub fn delete_netns(name: &str) -> anyhow::Result<()> {
    if !Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in pids {
            wait_gone(pid, Duration::from_secs(10));
        }
    }
    match ip(&["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !Path::new("/run/netns").join(name).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// True while process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone or `timeout` passes.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Stops `pid`: SIGTERM, then SIGKILL after `grace`.
pub fn stop_process(pid: i32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if !wait_gone(pid, grace) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(10));
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// readers (the agents' datastore) never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // The temporary (`<name>.tmp.<pid>.<n>`) does not end in a manifest
    // extension, so the datastore never reads it.
    tabby_common::atomic::write_atomic(path, bytes, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// Removes a file; a missing file is fine.
pub fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
