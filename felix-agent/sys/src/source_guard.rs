//! Anti-spoofing for workload interfaces: a program on the host end's
//! ingress that lets a pod send only from its own addresses (plus ARP,
//! and IPv6 link-local and `::` sources for neighbour discovery and DAD).
//!
//! Two forms of the same logic; the plugin picks one per pod (its
//! `sourceGuard` setting) and falls back to the other:
//!
//! - **eBPF on TCX** ([`tcx_program`]): a SCHED_CLS program
//!   assembled here from instructions (no compiler, no object file), loaded
//!   with `bpf(BPF_PROG_LOAD)` and attached with `bpf(BPF_PROG_ATTACH)` at
//!   `BPF_TCX_INGRESS` of the host end, first in line. TCX needs no qdisc,
//!   so the reference `bandwidth` plugin can still add its `ingress` qdisc
//!   (and mirred to an ifb) for `egressRate`; a clsact qdisc of ours made
//!   that fail with "file exists". An allowed packet returns `TCX_NEXT`
//!   (not `TCX_PASS`), so the legacy tc filters behind it (bandwidth's)
//!   still run; a spoofed one returns `TCX_DROP`.
//!   The price: the kernel waits for a normal RCU grace period on every
//!   TCX attach and on deleting the device (~10-20 ms each under RTNL).
//! - **classic BPF on clsact** ([`program`]): one netlink message, no
//!   `bpf(2)`, an expedited grace period (~0.1-0.3 ms); also what kernels
//!   without TCX (before 6.6) have. No `ingress` qdisc fits next to it.
//!
//! The eBPF program, as `bpftool prog dump xlated` would print it (packet
//! words are compared as loaded, i.e. in network byte order):
//!
//! ```text
//!   r2 = skb->data ; r3 = skb->data_end
//!   if skb->vlan_present != 0 goto drop    ; tagged frames never leave a pod
//!   r0 = skb->protocol
//!   if w0 == ARP  goto next
//!   if w0 == IPv4 goto v4
//!   if w0 == IPv6 goto v6
//!   goto drop
//! v4:
//!   if r2 + 30 > r3 goto drop              ; the source must be in the frame
//!   w0 = *(u32 *)(r2 + 26)                 ; IPv4 source
//!   if w0 == <each pod IPv4> goto next
//!   goto drop
//! v6:
//!   if r2 + 38 > r3 goto drop
//!   w0 = *(u32 *)(r2 + 22) & ffc0::        ; fe80::/10: link-local (ND)
//!   if w0 == fe80:: goto next
//!   (for :: (DAD) and each pod IPv6: compare the four words, to next)
//! drop:
//!   r0 = TCX_DROP ; exit
//! next:
//!   r0 = TCX_NEXT ; exit
//! ```
//!
//! The classic program, as `tc` would print it (ingress frames start at the
//! Ethernet header because cls_bpf pushes it back before running):
//!
//! ```text
//!   ldh  proto                ; skb->protocol
//!   jeq  #0x0800 -> v4
//!   jeq  #0x86dd -> v6
//!   jeq  #0x0806 -> accept    ; ARP
//!   ret  #SHOT                ; nothing else leaves a pod
//! v4:
//!   ld   [26]                 ; IPv4 source
//!   jeq  #<each pod IPv4> -> accept
//!   ret  #SHOT
//! v6:
//!   ld   [22]                 ; first word of the IPv6 source
//!   and  #0xffc00000 ; jeq #0xfe800000 -> accept   ; link-local (ND)
//!   (per pod IPv6 and for :: used by DAD: compare the four words)
//!   ret  #SHOT
//! accept:
//!   ret  #OK
//! ```

use std::net::IpAddr;

use crate::bpf::{self, BpfError};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// `BPF_LD | BPF_H | BPF_ABS`.
pub const LDH_ABS: u16 = 0x28;
/// `BPF_LD | BPF_W | BPF_ABS`.
pub const LD_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub const JEQ_K: u16 = 0x15;
/// `BPF_ALU | BPF_AND | BPF_K`.
pub const AND_K: u16 = 0x54;
/// `BPF_RET | BPF_K`.
pub const RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_PROTOCOL`: loads `skb->protocol` in host order.
pub const SKF_AD_PROTOCOL: u32 = 0xffff_f000;
/// `TC_ACT_OK`.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;

const ETH_HLEN: u32 = 14;
const IPV4_SRC: u32 = ETH_HLEN + 12;
const IPV6_SRC: u32 = ETH_HLEN + 8;

/// A tiny assembler with forward labels, so jump offsets are computed
/// rather than counted by hand.
#[derive(Default)]
struct Asm {
    insns: Vec<(SockFilter, Option<usize>, Option<usize>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.insns.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.insns.push((
            SockFilter {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            None,
            None,
        ));
    }
    /// `jeq #k`: to `t` when equal, else to `f` (None = next instruction).
    fn jeq(&mut self, k: u32, t: Option<usize>, f: Option<usize>) {
        self.insns.push((
            SockFilter {
                code: JEQ_K,
                jt: 0,
                jf: 0,
                k,
            },
            t,
            f,
        ));
    }
    fn finish(self) -> Result<Vec<SockFilter>, String> {
        let mut out = Vec::with_capacity(self.insns.len());
        for (pc, (mut insn, t, f)) in self.insns.into_iter().enumerate() {
            let resolve = |l: Option<usize>| -> Result<u8, String> {
                let Some(l) = l else { return Ok(0) };
                let target = self.labels[l].ok_or("unbound label")?;
                let off = target.checked_sub(pc + 1).ok_or("backward jump")?;
                u8::try_from(off).map_err(|_| "jump too far: too many addresses".to_string())
            };
            insn.jt = resolve(t)?;
            insn.jf = resolve(f)?;
            out.push(insn);
        }
        Ok(out)
    }
}

/// The guard program for a pod owning `allowed`. The addresses are sorted
/// first, so one set always gives the same program, which is what CHECK
/// compares with the kernel's copy.
pub fn program(allowed: &[IpAddr]) -> Result<Vec<SockFilter>, String> {
    let mut allowed = allowed.to_vec();
    allowed.sort();
    allowed.dedup();
    let mut a = Asm::default();
    let (v4, v6, accept, drop) = (a.label(), a.label(), a.label(), a.label());
    a.op(LDH_ABS, SKF_AD_PROTOCOL);
    a.jeq(0x0800, Some(v4), None);
    a.jeq(0x86dd, Some(v6), None);
    a.jeq(0x0806, Some(accept), Some(drop));

    a.bind(v4);
    a.op(LD_ABS, IPV4_SRC);
    for ip in &allowed {
        if let IpAddr::V4(v) = ip {
            a.jeq(u32::from(*v), Some(accept), None);
        }
    }
    a.op(RET_K, TC_ACT_SHOT);

    a.bind(v6);
    a.op(LD_ABS, IPV6_SRC);
    a.op(AND_K, 0xffc0_0000);
    a.jeq(0xfe80_0000, Some(accept), None);
    let mut sources: Vec<[u32; 4]> = vec![[0; 4]];
    for ip in &allowed {
        if let IpAddr::V6(v) = ip {
            let o = v.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            sources.push([w(0), w(4), w(8), w(12)]);
        }
    }
    for words in sources {
        let next = a.label();
        for (i, w) in words.iter().enumerate() {
            a.op(LD_ABS, IPV6_SRC + 4 * i as u32);
            if i == 3 {
                a.jeq(*w, Some(accept), Some(next));
            } else {
                a.jeq(*w, None, Some(next));
            }
        }
        a.bind(next);
    }
    a.bind(drop);
    a.op(RET_K, TC_ACT_SHOT);
    a.bind(accept);
    a.op(RET_K, TC_ACT_OK);
    a.finish()
}

/// The program as `struct sock_filter[]` bytes (native endian).
pub fn encode(prog: &[SockFilter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset (memory access, jump).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
pub const LDX_W: u8 = 0x61;
/// `BPF_ALU64 | BPF_MOV | BPF_X`: `dst = src`.
pub const MOV64_X: u8 = 0xbf;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm` (sign-extended).
pub const MOV64_K: u8 = 0xb7;
/// `BPF_ALU64 | BPF_ADD | BPF_K`: `dst += imm`.
pub const ADD64_K: u8 = 0x07;
/// `BPF_ALU | BPF_AND | BPF_K`: `wdst &= imm` (32-bit).
pub const AND32_K: u8 = 0x54;
/// `BPF_JMP | BPF_JNE | BPF_K` (64-bit compare).
pub const JNE_K: u8 = 0x55;
/// `BPF_JMP | BPF_JGT | BPF_X`: unsigned `dst > src`.
pub const JGT_X: u8 = 0x2d;
/// `BPF_JMP32 | BPF_JEQ | BPF_K`: compares the low 32 bits, so a word
/// with its top bit set matches its immediate (no sign extension).
pub const JEQ32_K: u8 = 0x16;
/// `BPF_JMP32 | BPF_JNE | BPF_K`.
pub const JNE32_K: u8 = 0x56;
/// `BPF_JMP | BPF_JA`.
pub const JA: u8 = 0x05;
/// `BPF_JMP | BPF_EXIT`.
pub const EXIT: u8 = 0x95;

/// `TCX_NEXT`: no verdict, the next program (or the legacy tc filters) runs.
pub const TCX_NEXT: i32 = -1;
/// `TCX_PASS`: accept at once, skipping everything behind.
pub const TCX_PASS: i32 = 0;
/// `TCX_DROP`.
pub const TCX_DROP: i32 = 2;

/// `offsetof(struct __sk_buff, protocol)`.
pub const SKB_PROTOCOL: i16 = 16;
/// `offsetof(struct __sk_buff, vlan_present)`.
pub const SKB_VLAN_PRESENT: i16 = 20;
/// `offsetof(struct __sk_buff, data)`.
pub const SKB_DATA: i16 = 76;
/// `offsetof(struct __sk_buff, data_end)`.
pub const SKB_DATA_END: i16 = 80;

/// The license the guard is loaded under (it calls no GPL-only helper).
const LICENSE: &str = "Apache-2.0";

/// The name the guard is loaded under (what CHECK looks for).
pub const TCX_PROG_NAME: &str = "tabby_guard";

/// A word of the frame as the program loads it: its bytes in memory order.
fn word(bytes: [u8; 4]) -> i32 {
    i32::from_ne_bytes(bytes)
}

/// `skb->protocol` (a `__be16` in a `__u32`) as the program loads it.
fn proto(ethertype: u16) -> i32 {
    i32::from(u16::from_ne_bytes(ethertype.to_be_bytes()))
}

/// An eBPF assembler with forward labels.
#[derive(Default)]
struct Asm64 {
    insns: Vec<(Insn, Option<usize>)>,
    labels: Vec<Option<usize>>,
}

impl Asm64 {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.insns.len());
    }
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push((
            Insn {
                code,
                dst,
                src,
                off,
                imm,
            },
            None,
        ));
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: usize) {
        self.insns.push((
            Insn {
                code,
                dst,
                src,
                off: 0,
                imm,
            },
            Some(to),
        ));
    }
    fn finish(self) -> Result<Vec<Insn>, String> {
        let mut out = Vec::with_capacity(self.insns.len());
        for (pc, (mut insn, to)) in self.insns.into_iter().enumerate() {
            if let Some(l) = to {
                let target = self.labels[l].ok_or("unbound label")?;
                let off = target as i64 - (pc as i64 + 1);
                insn.off = i16::try_from(off).map_err(|_| "jump too far: too many addresses")?;
            }
            out.push(insn);
        }
        Ok(out)
    }
}

/// The eBPF guard program for a pod owning `allowed` (see the module doc).
/// The addresses are sorted first, so one set always gives the same
/// program, and the same kernel tag, which is what CHECK compares.
pub fn tcx_program(allowed: &[IpAddr]) -> Result<Vec<Insn>, String> {
    let mut allowed = allowed.to_vec();
    allowed.sort();
    allowed.dedup();
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    let mut a = Asm64::default();
    let (v4, v6, next, drop) = (a.label(), a.label(), a.label(), a.label());
    a.op(LDX_W, R2, R1, SKB_DATA, 0);
    a.op(LDX_W, R3, R1, SKB_DATA_END, 0);
    a.op(LDX_W, R0, R1, SKB_VLAN_PRESENT, 0);
    a.jump(JNE_K, R0, 0, 0, drop);
    a.op(LDX_W, R0, R1, SKB_PROTOCOL, 0);
    a.jump(JEQ32_K, R0, 0, proto(0x0806), next);
    a.jump(JEQ32_K, R0, 0, proto(0x0800), v4);
    a.jump(JEQ32_K, R0, 0, proto(0x86dd), v6);
    a.jump(JA, 0, 0, 0, drop);

    a.bind(v4);
    a.op(MOV64_X, R4, R2, 0, 0);
    a.op(ADD64_K, R4, 0, 0, IPV4_SRC as i32 + 4);
    a.jump(JGT_X, R4, R3, 0, drop);
    a.op(LDX_W, R0, R2, IPV4_SRC as i16, 0);
    for ip in &allowed {
        if let IpAddr::V4(v) = ip {
            a.jump(JEQ32_K, R0, 0, word(v.octets()), next);
        }
    }
    a.jump(JA, 0, 0, 0, drop);

    a.bind(v6);
    a.op(MOV64_X, R4, R2, 0, 0);
    a.op(ADD64_K, R4, 0, 0, IPV6_SRC as i32 + 16);
    a.jump(JGT_X, R4, R3, 0, drop);
    a.op(LDX_W, R0, R2, IPV6_SRC as i16, 0);
    a.op(AND32_K, R0, 0, 0, word([0xff, 0xc0, 0, 0]));
    a.jump(JEQ32_K, R0, 0, word([0xfe, 0x80, 0, 0]), next);
    let mut sources = vec![[0u8; 16]];
    sources.extend(allowed.iter().filter_map(|ip| match ip {
        IpAddr::V6(v) => Some(v.octets()),
        IpAddr::V4(_) => None,
    }));
    for o in sources {
        let no = a.label();
        for i in 0..4 {
            let w = word([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            a.op(LDX_W, R0, R2, IPV6_SRC as i16 + 4 * i as i16, 0);
            if i == 3 {
                a.jump(JEQ32_K, R0, 0, w, next);
            } else {
                a.jump(JNE32_K, R0, 0, w, no);
            }
        }
        a.bind(no);
    }
    a.bind(drop);
    a.op(MOV64_K, R0, 0, 0, TCX_DROP);
    a.op(EXIT, 0, 0, 0, 0);
    a.bind(next);
    a.op(MOV64_K, R0, 0, 0, TCX_NEXT);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// The program as `struct bpf_insn[]` bytes (native endian; the register
/// nibbles are a bitfield whose order follows the byte order).
pub fn encode_insns(prog: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.push(i.code);
        let regs = if cfg!(target_endian = "little") {
            (i.src << 4) | (i.dst & 0xf)
        } else {
            (i.dst << 4) | (i.src & 0xf)
        };
        out.push(regs);
        out.extend_from_slice(&i.off.to_ne_bytes());
        out.extend_from_slice(&i.imm.to_ne_bytes());
    }
    out
}

/// Why the TCX guard could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TcxError {
    /// This kernel (or this process's rights) offers no TCX.
    #[error("TCX unavailable: {0}")]
    Unavailable(#[source] BpfError),
    /// TCX is there but the guard was refused.
    #[error(transparent)]
    Failed(BpfError),
    /// The program could not be assembled.
    #[error("cannot assemble the source guard: {0}")]
    Assemble(String),
}

/// Loads the guard for `allowed` and attaches it first in line at the TCX
/// ingress of `ifindex`. The descriptor is closed on return: the device
/// holds the program until it is deleted.
pub fn attach_tcx(ifindex: u32, allowed: &[IpAddr]) -> Result<(), TcxError> {
    let insns = encode_insns(&tcx_program(allowed).map_err(TcxError::Assemble)?);
    let prog = bpf::prog_load(bpf::BPF_PROG_TYPE_SCHED_CLS, &insns, TCX_PROG_NAME, LICENSE)
        .map_err(|e| match e.errno {
            libc::ENOSYS | libc::EPERM => TcxError::Unavailable(e),
            _ => TcxError::Failed(e),
        })?;
    bpf::prog_attach_tcx(&prog, ifindex, bpf::BPF_TCX_INGRESS, bpf::BPF_F_BEFORE).map_err(|e| {
        match e.errno {
            // Before Linux 6.6 the attach type is unknown: EINVAL.
            libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::EOPNOTSUPP => {
                TcxError::Unavailable(e)
            }
            _ => TcxError::Failed(e),
        }
    })
}

/// What is attached at the TCX ingress of a host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcxGuard {
    /// The guard for exactly the expected addresses runs first.
    Current,
    /// A tabby guard runs first, but for other addresses.
    Stale,
    /// Something else runs first, or nothing is attached.
    Absent,
}

/// Inspects the TCX ingress of `ifindex` (`BPF_PROG_QUERY`): is the guard
/// for `allowed` the first program? `Err` when TCX cannot be queried here.
pub fn tcx_guard(ifindex: u32, allowed: &[IpAddr]) -> Result<TcxGuard, BpfError> {
    let ids = bpf::prog_query(ifindex, bpf::BPF_TCX_INGRESS)?;
    let Some(first) = ids.first() else {
        return Ok(TcxGuard::Absent);
    };
    let info = bpf::prog_summary(*first)?;
    if info.name != TCX_PROG_NAME || info.prog_type != bpf::BPF_PROG_TYPE_SCHED_CLS {
        return Ok(TcxGuard::Absent);
    }
    // The kernel's tag is a digest of the instructions (SHA-1 on older
    // kernels, SHA-256 on newer ones): loading the expected program and
    // asking for its tag compares like with like.
    let insns = encode_insns(&tcx_program(allowed).map_err(|_| BpfError {
        op: "assemble",
        errno: libc::E2BIG,
        log: String::new(),
    })?);
    let want = bpf::prog_load(bpf::BPF_PROG_TYPE_SCHED_CLS, &insns, TCX_PROG_NAME, LICENSE)?;
    Ok(if info.tag == bpf::prog_info(&want)?.tag {
        TcxGuard::Current
    } else {
        TcxGuard::Stale
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF the guard uses over a frame.
    fn run(prog: &[SockFilter], proto: u16, frame: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LDH_ABS if i.k == SKF_AD_PROTOCOL => a = u32::from(proto),
                LD_ABS => {
                    let k = i.k as usize;
                    let Some(b) = frame.get(k..k + 4) else {
                        return 0xdead;
                    };
                    a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                }
                AND_K => a &= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn v4_frame(src: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 34];
        f[26..30].copy_from_slice(&src);
        f
    }

    fn v6_frame(src: std::net::Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[22..38].copy_from_slice(&src.octets());
        f
    }

    #[test]
    fn a_pod_may_send_only_from_its_own_addresses() {
        let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let p = program(&own).unwrap();
        assert_eq!(run(&p, 0x0800, &v4_frame([10, 0, 0, 5])), TC_ACT_OK);
        assert_eq!(run(&p, 0x0800, &v4_frame([10, 0, 0, 6])), TC_ACT_SHOT);
        assert_eq!(run(&p, 0x0800, &v4_frame([0, 0, 0, 0])), TC_ACT_SHOT);
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("fd00::5".parse().unwrap())),
            TC_ACT_OK
        );
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("fd00::6".parse().unwrap())),
            TC_ACT_SHOT
        );
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("fd00:0:0:1::5".parse().unwrap())),
            TC_ACT_SHOT
        );
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("2001:db8::5".parse().unwrap())),
            TC_ACT_SHOT
        );
    }

    #[test]
    fn neighbour_discovery_and_arp_pass() {
        let p = program(&["10.0.0.5".parse().unwrap()]).unwrap();
        assert_eq!(run(&p, 0x0806, &[0u8; 42]), TC_ACT_OK);
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("fe80::1234".parse().unwrap())),
            TC_ACT_OK
        );
        assert_eq!(run(&p, 0x86dd, &v6_frame("::".parse().unwrap())), TC_ACT_OK);
    }

    #[test]
    fn other_ethertypes_are_dropped() {
        let p = program(&["10.0.0.5".parse().unwrap()]).unwrap();
        for proto in [0x8100u16, 0x88a8, 0x88cc, 0x8847] {
            assert_eq!(
                run(&p, proto, &v4_frame([10, 0, 0, 5])),
                TC_ACT_SHOT,
                "{proto:#x}"
            );
        }
    }

    #[test]
    fn a_pod_without_ipv4_sends_no_ipv4() {
        let p = program(&["fd00::5".parse().unwrap()]).unwrap();
        assert_eq!(run(&p, 0x0800, &v4_frame([10, 0, 0, 5])), TC_ACT_SHOT);
        assert_eq!(
            run(&p, 0x86dd, &v6_frame("fd00::5".parse().unwrap())),
            TC_ACT_OK
        );
    }

    #[test]
    fn many_addresses_still_assemble() {
        let ips: Vec<IpAddr> = (0..20u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let p = program(&ips).unwrap();
        for i in 0..20u8 {
            assert_eq!(run(&p, 0x0800, &v4_frame([10, 0, 0, i])), TC_ACT_OK);
        }
        assert_eq!(run(&p, 0x0800, &v4_frame([10, 0, 0, 20])), TC_ACT_SHOT);
    }

    /// The SCHED_CLS context the eBPF interpreter below models.
    struct Skb<'a> {
        protocol: u16,
        vlan_present: bool,
        frame: &'a [u8],
    }

    /// Runs the subset of eBPF the guard uses: r1 is the context, `data`
    /// reads as 0 and `data_end` as the frame length, and loads through any
    /// other register read the frame (out of bounds panics: the verifier
    /// would have refused such a program).
    fn run64(prog: &[Insn], skb: &Skb<'_>) -> i32 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            let jump = |pc: &mut usize, cond: bool| {
                if cond {
                    *pc = (*pc as i64 + i64::from(i.off)) as usize;
                }
            };
            match i.code {
                LDX_W if s == 1 => {
                    r[d] = match i.off {
                        SKB_DATA => 0,
                        SKB_DATA_END => skb.frame.len() as u64,
                        SKB_PROTOCOL => u64::from(u16::from_ne_bytes(skb.protocol.to_be_bytes())),
                        SKB_VLAN_PRESENT => u64::from(skb.vlan_present),
                        other => panic!("context offset {other}"),
                    }
                }
                LDX_W => {
                    let at = (r[s] as i64 + i64::from(i.off)) as usize;
                    let b = &skb.frame[at..at + 4];
                    r[d] = u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                MOV64_X => r[d] = r[s],
                MOV64_K => r[d] = i64::from(i.imm) as u64,
                ADD64_K => r[d] = r[d].wrapping_add(i64::from(i.imm) as u64),
                AND32_K => r[d] = u64::from(r[d] as u32 & i.imm as u32),
                JNE_K => jump(&mut pc, r[d] != i64::from(i.imm) as u64),
                JGT_X => jump(&mut pc, r[d] > r[s]),
                JEQ32_K => jump(&mut pc, r[d] as u32 == i.imm as u32),
                JNE32_K => jump(&mut pc, r[d] as u32 != i.imm as u32),
                JA => jump(&mut pc, true),
                EXIT => return r[0] as i32,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn ip4(src: [u8; 4]) -> Skb<'static> {
        Skb {
            protocol: 0x0800,
            vlan_present: false,
            frame: Box::leak(v4_frame(src).into_boxed_slice()),
        }
    }

    fn ip6(src: &str) -> Skb<'static> {
        Skb {
            protocol: 0x86dd,
            vlan_present: false,
            frame: Box::leak(v6_frame(src.parse().unwrap()).into_boxed_slice()),
        }
    }

    #[test]
    fn the_tcx_guard_passes_own_sources_on_and_drops_others() {
        let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let p = tcx_program(&own).unwrap();
        assert_eq!(run64(&p, &ip4([10, 0, 0, 5])), TCX_NEXT);
        assert_eq!(run64(&p, &ip4([10, 0, 0, 6])), TCX_DROP);
        assert_eq!(run64(&p, &ip4([0, 0, 0, 0])), TCX_DROP);
        // Top bit set: compared as 32-bit words, never sign-extended.
        assert_eq!(run64(&p, &ip4([250, 0, 0, 5])), TCX_DROP);
        assert_eq!(run64(&p, &ip6("fd00::5")), TCX_NEXT);
        assert_eq!(run64(&p, &ip6("fd00::6")), TCX_DROP);
        assert_eq!(run64(&p, &ip6("fd00:0:0:1::5")), TCX_DROP);
        assert_eq!(run64(&p, &ip6("2001:db8::5")), TCX_DROP);
        let high = tcx_program(&["250.1.2.3".parse().unwrap()]).unwrap();
        assert_eq!(run64(&high, &ip4([250, 1, 2, 3])), TCX_NEXT);
    }

    #[test]
    fn the_tcx_guard_lets_arp_and_neighbour_discovery_through() {
        let p = tcx_program(&["10.0.0.5".parse().unwrap()]).unwrap();
        let arp = Skb {
            protocol: 0x0806,
            vlan_present: false,
            frame: &[0u8; 42],
        };
        assert_eq!(run64(&p, &arp), TCX_NEXT);
        assert_eq!(run64(&p, &ip6("fe80::1234")), TCX_NEXT);
        assert_eq!(run64(&p, &ip6("febf::1")), TCX_NEXT);
        assert_eq!(run64(&p, &ip6("fec0::1")), TCX_DROP);
        assert_eq!(run64(&p, &ip6("::")), TCX_NEXT);
    }

    #[test]
    fn the_tcx_guard_drops_truncated_tagged_and_foreign_frames() {
        let p = tcx_program(&["10.0.0.5".parse().unwrap()]).unwrap();
        let short = Skb {
            protocol: 0x0800,
            vlan_present: false,
            frame: &[0u8; 29],
        };
        assert_eq!(run64(&p, &short), TCX_DROP);
        let short6 = Skb {
            protocol: 0x86dd,
            vlan_present: false,
            frame: &[0u8; 37],
        };
        assert_eq!(run64(&p, &short6), TCX_DROP);
        let mut tagged = ip4([10, 0, 0, 5]);
        tagged.vlan_present = true;
        assert_eq!(run64(&p, &tagged), TCX_DROP);
        for proto in [0x8100u16, 0x88a8, 0x88cc, 0x8847] {
            let mut f = ip4([10, 0, 0, 5]);
            f.protocol = proto;
            assert_eq!(run64(&p, &f), TCX_DROP, "{proto:#x}");
        }
    }

    #[test]
    fn the_tcx_guard_of_many_addresses_still_assembles() {
        let ips: Vec<IpAddr> = (0..40u8)
            .map(|i| IpAddr::from([10, 0, 0, i]))
            .chain((0..40u16).map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])))
            .collect();
        let p = tcx_program(&ips).unwrap();
        for ip in &ips {
            let skb = match ip {
                IpAddr::V4(v) => ip4(v.octets()),
                IpAddr::V6(v) => ip6(&v.to_string()),
            };
            assert_eq!(run64(&p, &skb), TCX_NEXT, "{ip}");
        }
        assert_eq!(run64(&p, &ip4([10, 0, 0, 40])), TCX_DROP);
        assert_eq!(
            run64(&p, &ip6("fd00::28")),
            TCX_DROP,
            "0x28 = 40, one past the last"
        );
    }

    #[test]
    fn bpf_insn_encoding_puts_dst_in_the_low_nibble() {
        let b = encode_insns(&[Insn {
            code: LDX_W,
            dst: 2,
            src: 1,
            off: 76,
            imm: -1,
        }]);
        assert_eq!(b.len(), 8);
        assert_eq!(b[0], 0x61);
        if cfg!(target_endian = "little") {
            assert_eq!(b[1], 0x12);
        }
        assert_eq!(&b[2..4], &76i16.to_ne_bytes());
        assert_eq!(&b[4..8], &(-1i32).to_ne_bytes());
    }

    #[test]
    fn encoding_is_struct_sock_filter() {
        let b = encode(&[SockFilter {
            code: RET_K,
            jt: 1,
            jf: 2,
            k: 3,
        }]);
        assert_eq!(b.len(), 8);
        assert_eq!(&b[..2], &RET_K.to_ne_bytes());
        assert_eq!(b[2..4], [1, 2]);
    }
}
