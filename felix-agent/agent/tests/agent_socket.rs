//! The real agent's CNI socket under abuse: a request line with no end,
//! and more idle connections than the cap. The agent's memory and
//! descriptors stay bounded and real requests keep working. Needs root,
//! nft, iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use agentkit::*;
use tabby_common::agent::{self, AgentRequest};
use tabby_tests::wait_for;

/// A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_64_mib_request_without_a_newline_is_refused_and_the_agent_stays_small() {
    let mut c = Cluster::new("sockbig");
    c.write(
        "01-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    );
    c.start_agent();
    let pid = c.agent.as_ref().unwrap().id();
    let peak_before = status_kib(pid, "VmHWM");
    let sock = c.run_dir().join("agent.sock");

    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                // The agent closed the connection: what we expect.
                Err(_) => break,
            }
        }
        sent
    });
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":false"), "{answer:?}");
    assert!(answer.contains("longer than 65536 bytes"), "{answer:?}");
    let sent = writer.join().unwrap();
    assert!(sent < 64 << 20, "the agent read all {sent} bytes");

    let growth = status_kib(pid, "VmHWM").saturating_sub(peak_before);
    assert!(
        growth < 16 * 1024,
        "the agent's peak RSS grew by {growth} KiB for one long line"
    );
    agent::call(&sock, &AgentRequest::Status, Duration::from_secs(20)).unwrap();
    c.add_pod("x", "a", "app: a");
    assert_eq!(
        c.metric("tabby_cni_connections_refused_total{reason=\"too_long\"}"),
        Some(1)
    );
}

#[test]
fn with_more_idle_connections_than_the_cap_a_pod_still_starts() {
    let mut c = Cluster::new("sockidle");
    c.write(
        "01-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    );
    c.start_agent();
    let pid = c.agent.as_ref().unwrap().id();
    let fds_before = open_fds(pid);
    let sock = c.run_dir().join("agent.sock");

    // 300 connections that never send a line (the cap is 256).
    let idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // The agent holds at most the cap (plus one being closed).
    wait_for(
        "the agent to take in the connections",
        Duration::from_secs(30),
        || c.metric("tabby_cni_connections_refused_total{reason=\"evicted\"}") >= Some(44),
    );
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 257,
        "{fds} descriptors open, {fds_before} before 300 connections"
    );

    // A request through the socket and a real pod start go through at
    // once, long before the idle ones time out (5 s).
    agent::call(&sock, &AgentRequest::Status, Duration::from_secs(4))
        .expect("a request waited behind idle connections");
    c.add_pod("x", "a", "app: a");

    // The idle ones are closed after the idle timeout.
    let mut last = idle.last().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 1];
    match std::io::Read::read(&mut last, &mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("an idle connection stayed open: {other:?}"),
    }
    wait_for(
        "the agent to drop the idle connections",
        Duration::from_secs(30),
        || open_fds(pid) <= fds_before + 16,
    );
    assert!(c.metric("tabby_cni_connections_refused_total{reason=\"idle\"}") > Some(0));
}
