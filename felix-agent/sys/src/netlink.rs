//! A small synchronous rtnetlink client.
//!
//! Synchronous on purpose: the CNI plugin is a short-lived process whose whole
//! budget is a few milliseconds, and a netlink socket belongs to the network
//! namespace it was created in, which is simplest to reason about on one
//! thread with no runtime. Messages are built as plain values
//! (netlink-packet-route types) and sent here, the one place that does I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::DefaultNla;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel answered with an errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being done, e.g. "create veth tab1234 / eth0".
        op: String,
        /// The positive errno.
        errno: i32,
    },
    /// The socket itself failed.
    #[error("{op}: netlink socket: {source}")]
    Socket {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent something that does not decode.
    #[error("{op}: undecodable netlink reply: {detail}")]
    Decode {
        /// What was being done.
        op: String,
        /// The decoder's message.
        detail: String,
    },
}

impl NetlinkError {
    /// The errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// "No such device / address / route": what a delete of something
    /// already gone reports.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    /// The object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// What tabby needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// The `IFLA_INFO_KIND` ("veth", "bridge", ...), when there is one.
    pub kind: Option<String>,
    /// Loopback device.
    pub loopback: bool,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
}

/// A route, in the subset of fields tabby reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
    /// `rtm_protocol`: who owns the route.
    pub protocol: u8,
    /// `rtm_scope` (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// `rtm_type` (1 unicast, 6 blackhole).
    pub kind: u8,
    /// Routing table.
    pub table: u32,
}

/// Route scope "link": the destination is directly on the interface.
pub const SCOPE_LINK: u8 = 253;
/// Route scope "universe".
pub const SCOPE_UNIVERSE: u8 = 0;
/// Route type unicast.
pub const RTN_UNICAST: u8 = 1;
/// Route type blackhole.
pub const RTN_BLACKHOLE: u8 = 6;
/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// Parameters of a veth pair created from inside one namespace with its
/// peer placed directly in another.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    /// Name of the end created in the calling socket's namespace.
    pub name: &'a str,
    /// Name of the other end.
    pub peer_name: &'a str,
    /// Namespace (file descriptor) the other end is created in.
    pub peer_netns_fd: std::os::fd::RawFd,
    /// Fixed MAC address of the other end.
    pub peer_mac: Option<[u8; 6]>,
    /// MTU of both ends.
    pub mtu: u32,
}

/// What the kernel reports about a veth end it has just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedVeth {
    /// Index of the end created in the calling socket's namespace.
    pub index: u32,
    /// Its MAC address.
    pub mac: Option<[u8; 6]>,
    /// Index of the other end, in the peer namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
}

/// A synchronous rtnetlink socket bound to the namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let sock_err = |source| NetlinkError::Socket {
            op: "open".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err)?;
        socket.bind_auto().map_err(sock_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(sock_err)?;
        // Extended ACKs make the kernel's refusals carry a reason; strict
        // checking makes filtered dumps honour the filter.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Socket {
                op: op.to_string(),
                source,
            })?;
        Ok(self.seq)
    }

    /// Reads replies to `seq` until the ACK (or DONE for dumps), handing
    /// every data message to `on_msg`.
    fn receive(
        &mut self,
        op: &str,
        seq: u32,
        mut on_msg: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| NetlinkError::Socket {
                    op: op.to_string(),
                    source,
                })?;
            let mut offset = 0;
            while offset < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| NetlinkError::Decode {
                        op: op.to_string(),
                        detail: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                errno: code.get().abs(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => on_msg(m),
                    _ => {}
                }
            }
        }
    }

    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(op, msg, flags | NLM_F_ACK)?;
        self.receive(op, seq, |_| {})
    }

    fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(op, msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(op, seq, |m| out.push(m))?;
        Ok(out)
    }

    /// Looks a link up by name; `None` when there is no such link.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkSummary>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("get link {name}"), msg)
    }

    /// Looks a link up by index; `None` when there is no such link.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkSummary>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&format!("get link #{index}"), msg)
    }

    fn get_link(
        &mut self,
        op: &str,
        msg: LinkMessage,
    ) -> Result<Option<LinkSummary>, NetlinkError> {
        let seq = self.send(op, RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)?;
        let mut found = None;
        match self.receive(op, seq, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                found = Some(summarize_link(&l));
            }
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkSummary>, NetlinkError> {
        let msgs = self.dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(summarize_link(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `spec.name` here, `spec.peer_name` directly in the
    /// peer namespace, so that no half of the pair ever appears elsewhere.
    ///
    /// The request asks the kernel to echo the new link (`NLM_F_ECHO`,
    /// honoured by `RTM_NEWLINK` since Linux 6.1), which carries its index,
    /// its MAC and the peer's index: no lookups afterwards. `None` when the
    /// kernel does not echo; the caller then looks the ends up by name.
    pub fn create_veth(
        &mut self,
        spec: &VethSpec<'_>,
    ) -> Result<Option<CreatedVeth>, NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns_fd));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        // One queue each way, as the kernel would settle on anyway: asked
        // for explicitly, each end is allocated with one instead of one per
        // CPU and then shrunk, and the shrinking costs an expedited RCU
        // grace period per end, under RTNL (veth_init_queues).
        for m in [&mut peer, &mut msg] {
            m.attributes.push(LinkAttribute::NumTxQueues(1));
            m.attributes.push(LinkAttribute::NumRxQueues(1));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let op = format!("create veth {} (peer {})", spec.name, spec.peer_name);
        let seq = self.send(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK | NLM_F_ECHO,
        )?;
        let mut created = None;
        self.receive(&op, seq, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                let summary = summarize_link(&l);
                if summary.name == spec.name {
                    created = Some(CreatedVeth {
                        index: summary.index,
                        mac: summary.mac,
                        peer_index: summary.link,
                    });
                }
            }
        })?;
        Ok(created)
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Deletes a link; a link that is already gone is success.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(
            &format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Adds (or keeps) an address on a link. `nodad` skips IPv6 duplicate
    /// address detection, which would otherwise leave the address
    /// unusable for about a second.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        scope_link: bool,
        nodad: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.header.scope = if scope_link {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        if nodad {
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        let op = format!("add address {addr}/{prefix_len} to link {index}");
        self.request(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Addresses of one link (or of all links), as (ifindex, address, prefix).
    pub fn addresses(
        &mut self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, IpAddr, u8)>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.index = index.unwrap_or(0);
        let msgs = self.dump("dump addresses", RouteNetlinkMessage::GetAddress(req))?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if index.is_some_and(|i| i != a.header.index) {
                    continue;
                }
                let addr = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = addr.or_else(|| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(ip) = addr {
                    out.push((a.header.index, ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Installs a route, replacing any route to the same destination (so a
    /// change never leaves a window without a route).
    pub fn replace_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = format!("replace route {}", describe_route(route));
        self.request(
            &op,
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a route; one already gone is success.
    pub fn delete_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = format!("delete route {}", describe_route(route));
        match self.request(&op, RouteNetlinkMessage::DelRoute(route_message(route)), 0) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The routes of one family in one table.
    pub fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<RouteSpec>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.dump("dump routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }

    /// The routing table entry the kernel would use to reach `dst` (a FIB
    /// lookup, policy rules included, answered with the matching entry's
    /// prefix: `RTM_F_FIB_MATCH`); `None` when nothing matches. One
    /// request, whatever the size of the table.
    pub fn route_to(&mut self, dst: IpAddr) -> Result<Option<RouteSpec>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family_of(dst);
        req.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        req.header.flags = RouteFlags::FibMatch;
        req.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        let op = format!("look up the route to {dst}");
        let seq = self.send(&op, RouteNetlinkMessage::GetRoute(req), NLM_F_ACK)?;
        let mut found = None;
        match self.receive(&op, seq, |m| {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                found = parse_route(&r);
            }
        }) {
            Ok(()) => Ok(found),
            Err(e) if matches!(e.errno(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Installs a permanent neighbour entry, so that the address never
    /// needs resolving.
    pub fn replace_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let op = format!("add neighbour {ip} on link {index}");
        self.request(
            &op,
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Permanent neighbour entries of a link, as (address, MAC).
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<(IpAddr, Vec<u8>)>, NetlinkError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let mut req = NeighbourMessage::default();
            req.header.family = if v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            req.header.ifindex = index;
            for m in self.dump("dump neighbours", RouteNetlinkMessage::GetNeighbour(req))? {
                if let RouteNetlinkMessage::NewNeighbour(n) = m {
                    if n.header.ifindex != index {
                        continue;
                    }
                    let mut ip = None;
                    let mut mac = Vec::new();
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                                ip = Some(IpAddr::V4(*a))
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                                ip = Some(IpAddr::V6(*a))
                            }
                            NeighbourAttribute::LinkLayerAddress(m) => mac = m.clone(),
                            _ => {}
                        }
                    }
                    if let Some(ip) = ip {
                        out.push((ip, mac));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Netlink {
    /// Attaches the anti-spoofing program of [`crate::source_guard`] to the
    /// ingress of `index`, a link with nothing attached yet, at `hook`:
    /// the eBPF program at TCX, or the classic one on a clsact qdisc. The
    /// caller chooses (and falls back); nothing is tried behind its back.
    pub fn install_source_guard(
        &mut self,
        index: u32,
        allowed: &[IpAddr],
        hook: GuardHook,
    ) -> Result<(), NetlinkError> {
        match hook {
            GuardHook::Clsact => self.install_source_guard_clsact(index, allowed),
            GuardHook::Tcx => {
                crate::source_guard::attach_tcx(index, allowed).map_err(|e| match e {
                    crate::source_guard::TcxError::Unavailable(e)
                    | crate::source_guard::TcxError::Failed(e) => NetlinkError::Kernel {
                        op: format!("install source guard on link {index}: {}", e.op)
                            + &if e.log.is_empty() {
                                String::new()
                            } else {
                                format!(" (verifier: {})", e.log.trim())
                            },
                        errno: e.errno,
                    },
                    e @ crate::source_guard::TcxError::Assemble(_) => NetlinkError::Decode {
                        op: format!("install source guard on link {index}"),
                        detail: e.to_string(),
                    },
                })
            }
        }
    }

    /// Removes the clsact qdisc of `index` (and the filters on it): what a
    /// half-made clsact guard leaves before the caller falls back to TCX.
    /// Already gone is success.
    pub fn remove_clsact(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = format!("remove the clsact qdisc of link {index}");
        let mut qdisc = TcMessage::default();
        qdisc.header.index = i32::try_from(index).map_err(|_| NetlinkError::Kernel {
            op: op.clone(),
            errno: libc::EINVAL,
        })?;
        qdisc.header.parent = TcHandle::CLSACT;
        qdisc.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.request(&op, RouteNetlinkMessage::DelQueueDiscipline(qdisc), 0) {
            Err(NetlinkError::Kernel { errno, .. })
                if errno == libc::ENOENT || errno == libc::EINVAL || errno == libc::ENODEV =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The classic program on the tc ingress of `index` (adding the clsact
    /// qdisc first), replacing any earlier version of it.
    fn install_source_guard_clsact(
        &mut self,
        index: u32,
        allowed: &[IpAddr],
    ) -> Result<(), NetlinkError> {
        let op = format!("install source guard on link {index}");
        let prog =
            crate::source_guard::program(allowed).map_err(|detail| NetlinkError::Decode {
                op: op.clone(),
                detail,
            })?;
        let ifindex = i32::try_from(index).map_err(|_| NetlinkError::Kernel {
            op: op.clone(),
            errno: libc::EINVAL,
        })?;

        let mut qdisc = TcMessage::default();
        qdisc.header.index = ifindex;
        qdisc.header.parent = TcHandle::CLSACT;
        qdisc.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.request(
            &op,
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => {}
            other => other?,
        }

        const TCA_BPF_OPS_LEN: u16 = 4;
        const TCA_BPF_OPS: u16 = 5;
        const TCA_BPF_NAME: u16 = 7;
        const TCA_BPF_FLAGS: u16 = 8;
        const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
        let len = u16::try_from(prog.len()).map_err(|_| NetlinkError::Kernel {
            op: op.clone(),
            errno: libc::E2BIG,
        })?;
        let mut filter = TcMessage::default();
        filter.header.index = ifindex;
        filter.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        filter.header.handle = TcHandle { major: 0, minor: 1 };
        // info = priority << 16 | protocol (ETH_P_ALL, network order).
        filter.header.info =
            (u32::from(SOURCE_GUARD_PRIORITY) << 16) | u32::from(0x0003u16.to_be());
        filter.attributes.push(TcAttribute::Kind("bpf".into()));
        let mut name = b"tabby-source-guard".to_vec();
        name.push(0);
        filter.attributes.push(TcAttribute::Options(vec![
            TcOption::Other(DefaultNla::new(TCA_BPF_OPS_LEN, len.to_ne_bytes().to_vec())),
            TcOption::Other(DefaultNla::new(
                TCA_BPF_OPS,
                crate::source_guard::encode(&prog),
            )),
            TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name)),
            TcOption::Other(DefaultNla::new(
                TCA_BPF_FLAGS,
                TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec(),
            )),
        ]));
        self.request(
            &op,
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Whether the source guard for `allowed` protects `index`: first at
    /// its TCX ingress (checked exactly, by the program's tag), or else on
    /// its clsact qdisc (checked exactly, by the program the kernel dumps).
    pub fn source_guard(
        &mut self,
        index: u32,
        allowed: &[IpAddr],
    ) -> Result<GuardState, NetlinkError> {
        use crate::source_guard::{TcxGuard, tcx_guard};
        match tcx_guard(index, allowed) {
            Ok(TcxGuard::Current) => return Ok(GuardState::Tcx),
            Ok(TcxGuard::Stale) => return Ok(GuardState::Stale),
            // Nothing on TCX (or no TCX here): clsact may be in use.
            Ok(TcxGuard::Absent) | Err(_) => {}
        }
        let want = crate::source_guard::program(allowed)
            .map(|p| crate::source_guard::encode(&p))
            .map_err(|detail| NetlinkError::Decode {
                op: format!("check source guard on link {index}"),
                detail,
            })?;
        Ok(match self.clsact_guard_ops(index)? {
            None => GuardState::Missing,
            Some(ops) if ops == want => GuardState::Clsact,
            Some(_) => GuardState::Stale,
        })
    }

    /// The classic program of tabby's filter on `index`'s clsact ingress,
    /// as the kernel dumps it (`TCA_BPF_OPS`), or `None` when there is no
    /// such filter.
    fn clsact_guard_ops(&mut self, index: u32) -> Result<Option<Vec<u8>>, NetlinkError> {
        use netlink_packet_core::Nla;
        use netlink_packet_route::tc::TcFilterBpfOption;
        const TCA_BPF_OPS: u16 = 5;
        let mut req = TcMessage::default();
        req.header.index = i32::try_from(index).unwrap_or(0);
        req.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        let msgs = self.dump(
            "dump tc filters",
            RouteNetlinkMessage::GetTrafficFilter(req),
        )?;
        for m in &msgs {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
            if f.header.info >> 16 != u32::from(SOURCE_GUARD_PRIORITY)
                || !f
                    .attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
            {
                continue;
            }
            // The dump lists the priority's head (kind, no options) before
            // the filter itself: only an entry with a program counts.
            let mut ops = None;
            for a in &f.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        let nla: &dyn Nla = match o {
                            TcOption::Bpf(TcFilterBpfOption::Other(n)) | TcOption::Other(n) => n,
                            _ => continue,
                        };
                        if nla.kind() == TCA_BPF_OPS {
                            let mut v = vec![0u8; nla.value_len()];
                            nla.emit_value(&mut v);
                            ops = Some(v);
                        }
                    }
                }
            }
            if ops.is_some() {
                return Ok(ops);
            }
        }
        Ok(None)
    }
}

/// Where a source guard is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardHook {
    /// eBPF at the TCX ingress: no qdisc, so the `bandwidth` plugin can add
    /// its `ingress` qdisc; costs an RCU grace period per attach and per
    /// device deletion.
    Tcx,
    /// Classic BPF on a clsact qdisc: fast, but no `ingress` qdisc can be
    /// added next to it.
    Clsact,
}

impl GuardHook {
    /// The other hook (the fallback).
    pub fn other(self) -> GuardHook {
        match self {
            GuardHook::Tcx => GuardHook::Clsact,
            GuardHook::Clsact => GuardHook::Tcx,
        }
    }

    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardHook::Tcx => "tcx",
            GuardHook::Clsact => "clsact",
        }
    }
}

/// What protects a host end (see [`Netlink::source_guard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardState {
    /// The guard for the expected addresses runs first at TCX ingress.
    Tcx,
    /// The classic guard is on a clsact qdisc.
    Clsact,
    /// A tabby guard runs first at TCX ingress, for other addresses.
    Stale,
    /// No guard.
    Missing,
}

/// tc priority of the anti-spoofing filter; later filters (the eBPF
/// dataplane) use higher numbers and so run after it.
pub const SOURCE_GUARD_PRIORITY: u16 = 1;

fn describe_route(r: &RouteSpec) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if r.kind == RTN_BLACKHOLE {
        s.insert_str(0, "blackhole ");
    }
    s.push_str(&format!(" proto {}", r.protocol));
    s
}

fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(r.dst.addr());
    msg.header.destination_prefix_length = r.dst.prefix_len();
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.scope = RouteScope::from(r.scope);
    msg.header.kind = RouteType::from(r.kind);
    msg.header.table = if r.table < 256 {
        r.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    msg.attributes.push(RouteAttribute::Table(r.table));
    msg.attributes
        .push(RouteAttribute::Destination(route_address(r.dst.network())));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

fn parse_route(m: &RouteMessage) -> Option<RouteSpec> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let dst = match (dst, m.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteSpec {
        dst,
        gateway,
        oif,
        protocol: u8::from(m.header.protocol),
        scope: u8::from(m.header.scope),
        kind: u8::from(m.header.kind),
        table,
    })
}

fn summarize_link(l: &LinkMessage) -> LinkSummary {
    let mut s = LinkSummary {
        index: l.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: l.header.flags.contains(LinkFlags::Up),
        kind: None,
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        link: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::Link(i) => s.link = Some(*i),
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(mac);
                s.mac = Some(m);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}
