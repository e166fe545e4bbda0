//! The TCX source guard in the real kernel: the assembled program passes
//! the verifier, gives the expected verdicts on crafted frames
//! (`BPF_PROG_TEST_RUN`), and stays attached to a device after the loader
//! closed its descriptor. Needs root (bpf(2), a network namespace).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;

use tabby_sys::NetNs;
use tabby_sys::bpf;
use tabby_sys::source_guard::{
    TCX_DROP, TCX_NEXT, TCX_PROG_NAME, TcxGuard, attach_tcx, encode_insns, tcx_guard, tcx_program,
};

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "this test needs root (bpf(2)): run the suite as root, as CI does"
    );
}

fn own() -> Vec<IpAddr> {
    vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()]
}

fn load(allowed: &[IpAddr]) -> std::os::fd::OwnedFd {
    let insns = encode_insns(&tcx_program(allowed).unwrap());
    bpf::prog_load(
        bpf::BPF_PROG_TYPE_SCHED_CLS,
        &insns,
        TCX_PROG_NAME,
        "Apache-2.0",
    )
    .unwrap_or_else(|e| panic!("the verifier refused the guard: {e}"))
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet frame carrying a UDP/IPv4 header from `src`.
fn udp4(src: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[192, 0, 2, 1]);
    ip.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
    eth(0x0800, &ip)
}

/// An Ethernet frame carrying an IPv6 header from `src` with `next` as
/// next header and `payload` after it.
fn ip6(src: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 255]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&"ff02::1:ff00:5".parse::<Ipv6Addr>().unwrap().octets());
    ip.extend_from_slice(payload);
    eth(0x86dd, &ip)
}

fn udp6(src: &str) -> Vec<u8> {
    ip6(src, 17, &[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0])
}

/// A neighbour solicitation (ICMPv6 type 135) from `src`.
fn ns6(src: &str) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&"fd00::5".parse::<Ipv6Addr>().unwrap().octets());
    ip6(src, 58, &icmp)
}

fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 10, 0, 0, 5];
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
    eth(0x0806, &a)
}

#[test]
fn the_kernel_runs_the_guard_with_the_expected_verdicts() {
    require_root();
    let prog = load(&own());
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("own IPv4", udp4([10, 0, 0, 5]), TCX_NEXT),
        ("spoofed IPv4", udp4([10, 0, 0, 6]), TCX_DROP),
        (
            "spoofed IPv4 with the top bit set",
            udp4([250, 0, 0, 5]),
            TCX_DROP,
        ),
        ("own IPv6", udp6("fd00::5"), TCX_NEXT),
        ("spoofed IPv6", udp6("fd00::6"), TCX_DROP),
        ("spoofed IPv6 elsewhere", udp6("2001:db8::5"), TCX_DROP),
        ("ARP", arp(), TCX_NEXT),
        ("ND from a link-local address", ns6("fe80::1"), TCX_NEXT),
        ("DAD from ::", ns6("::"), TCX_NEXT),
        // (Truncated IP headers the kernel refuses to test-run at all:
        // the unit tests' interpreter covers them.)
        (
            "an 802.1Q tag",
            eth(0x8100, &[0, 5, 8, 0, 0x45, 0, 0, 20]),
            TCX_DROP,
        ),
        ("LLDP", eth(0x88cc, &[0; 32]), TCX_DROP),
    ];
    for (what, frame, want) in cases {
        let got = bpf::prog_test_run(&prog, &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn the_kernel_names_the_guard_as_check_expects() {
    require_root();
    let prog = load(&own());
    let info = bpf::prog_info(&prog).unwrap();
    assert_eq!(info.name, TCX_PROG_NAME);
    assert_eq!(info.prog_type, bpf::BPF_PROG_TYPE_SCHED_CLS);
    // One set of addresses, in any order, is one program and one tag.
    let mut reversed = own();
    reversed.reverse();
    assert_eq!(bpf::prog_info(&load(&reversed)).unwrap().tag, info.tag);
    assert_ne!(
        bpf::prog_info(&load(&["10.0.0.5".parse().unwrap()]))
            .unwrap()
            .tag,
        info.tag
    );
}

/// A network namespace with a veth pair, deleted on drop.
struct TestNs(String);

impl TestNs {
    fn new(tag: &str) -> TestNs {
        let name = format!("tsg{}-{tag}", std::process::id());
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = TestNs(name);
        let st = Command::new("ip")
            .args([
                "-n",
                &ns.0,
                "link",
                "add",
                "tabguard0",
                "type",
                "veth",
                "peer",
                "name",
                "p0",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        ns
    }

    fn handle(&self) -> NetNs {
        NetNs::open(format!("/var/run/netns/{}", self.0)).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn an_attached_guard_stays_after_its_descriptor_is_closed_and_runs_first() {
    require_root();
    let ns = TestNs::new("attach");
    let verdict = ns
        .handle()
        .run(|| {
            let index = nix::net::if_::if_nametoindex("tabguard0").unwrap();
            assert_eq!(tcx_guard(index, &own()).unwrap(), TcxGuard::Absent);
            // Something attached earlier (another program) must run after it.
            let other = load(&["10.9.9.9".parse().unwrap()]);
            bpf::prog_attach_tcx(&other, index, bpf::BPF_TCX_INGRESS, 0).unwrap();
            drop(other);
            // attach_tcx closes its descriptor before returning.
            attach_tcx(index, &own()).unwrap();
            let ids = bpf::prog_query(index, bpf::BPF_TCX_INGRESS).unwrap();
            assert_eq!(ids.len(), 2, "both programs stay attached: {ids:?}");
            (
                tcx_guard(index, &own()).unwrap(),
                tcx_guard(index, &["10.0.0.7".parse().unwrap()]).unwrap(),
            )
        })
        .unwrap();
    assert_eq!(verdict.0, TcxGuard::Current);
    assert_eq!(verdict.1, TcxGuard::Stale, "another pod's addresses");
}
