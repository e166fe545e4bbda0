//! Anti-spoofing for workload interfaces: a classic BPF program on the host
//! end's tc ingress (clsact + cls_bpf in direct-action mode) that lets a pod
//! send only from its own addresses.
//!
//! Why classic BPF: it is loaded with a single netlink message (no `bpf(2)`
//! syscall, no object files, no BPF filesystem), costs well under a
//! millisecond on the pod start path, and works for IPv6, which has no
//! `rp_filter`. The program, as `tc` would print it (ingress frames start at
//! the Ethernet header because cls_bpf pushes it back before running):
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

/// The guard program for a pod owning `allowed`.
pub fn program(allowed: &[IpAddr]) -> Result<Vec<SockFilter>, String> {
    let mut a = Asm::default();
    let (v4, v6, accept, drop) = (a.label(), a.label(), a.label(), a.label());
    a.op(LDH_ABS, SKF_AD_PROTOCOL);
    a.jeq(0x0800, Some(v4), None);
    a.jeq(0x86dd, Some(v6), None);
    a.jeq(0x0806, Some(accept), Some(drop));

    a.bind(v4);
    a.op(LD_ABS, IPV4_SRC);
    for ip in allowed {
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
    for ip in allowed {
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
