//! Kernel route installer: turns [`BestChange`]s into netlink route
//! messages, sent in batches, and owns exactly the routes that carry its
//! `rtm_protocol` number and its metric (`RTA_PRIORITY`).
//!
//! - Routes go in with a metric of our own ([`DEFAULT_METRIC`], as BIRD's
//!   `krt_metric`): the kernel keys a route by prefix, TOS and metric, so a
//!   learned `0.0.0.0/0` sits beside the node's own default route (metric
//!   0, which wins) instead of over it.
//! - A prefix we have not installed is added with `NLM_F_EXCL`, never
//!   `NLM_F_REPLACE`: if somebody else's route holds the same prefix and
//!   metric, the kernel refuses ours (reported as failed) and theirs stays.
//!   Only a prefix we installed ourselves (or found as our leftover) is
//!   changed with `NLM_F_REPLACE`, never delete+add, so a next hop change
//!   does not make the prefix flap.
//! - Equal best next hops become one multipath (ECMP) route.
//! - At start, routes of our protocol and metric already in the table are
//!   leftovers of a previous run: they stay (graceful restart) until
//!   [`FibInstaller::sweep_leftovers`], and those re-learned meanwhile are
//!   simply replaced.
//! - Deletes carry our protocol number and metric, so the kernel never
//!   removes a route of anybody else (e.g. tabby's local pod routes,
//!   protocol 150, or the node's default route).
//!
//! Message building is pure ([`route_message`]); execution is separate.
//! The netlink socket belongs to the netns it was opened in.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::rib::BestChange;

/// Errors of the installer itself (per-route failures are reported in
/// [`ApplyReport`]).
#[derive(Debug, thiserror::Error)]
pub enum FibError {
    /// The protocol number is one the kernel or other tools use.
    #[error("route protocol {0} is reserved (0-4 belong to the kernel and boot)")]
    ReservedProtocol(u8),
    /// Netlink socket I/O failed.
    #[error("netlink {what}")]
    Netlink {
        /// What we were doing.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered something we cannot parse.
    #[error("cannot parse a netlink reply: {0}")]
    Parse(String),
}

/// What one [`FibInstaller::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Routes added or replaced.
    pub installed: usize,
    /// Routes deleted (or already gone).
    pub removed: usize,
    /// Routes the kernel refused, with its error.
    pub failed: Vec<(IpNet, std::io::Error)>,
}

/// The metric (`RTA_PRIORITY`) of our routes unless configured otherwise:
/// above what hosts give their own routes (0 for static IPv4 routes,
/// 100-600 from DHCP clients, 1024 for IPv6 defaults from router
/// advertisements), so a route of the node's own always wins over a learned
/// one for the same prefix.
pub const DEFAULT_METRIC: u32 = 1151;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// Routes per `sendmsg`; the errors of one batch must fit the receive buffer.
const BATCH: usize = 1024;

/// Installs best routes into one kernel routing table.
#[derive(Debug)]
pub struct FibInstaller {
    sock: Socket,
    protocol: u8,
    table: u32,
    metric: u32,
    seq: u32,
    leftovers: HashSet<IpNet>,
    /// Prefixes whose route of ours is in the kernel (per family: 5 and 17
    /// bytes a key keep 100k routes under a megabyte).
    installed_v4: HashSet<Ipv4Net>,
    installed_v6: HashSet<Ipv6Net>,
    rbuf: Vec<u8>,
}

fn nl_err(what: &'static str) -> impl FnOnce(std::io::Error) -> FibError {
    move |source| FibError::Netlink { what, source }
}

/// The netlink route message for `prefix` via `next_hops` (one gateway, or
/// a multipath route for several) with our `protocol` and `metric`.
/// `next_hops` empty builds the delete key (which matches only a route of
/// that protocol and metric).
pub fn route_message(
    prefix: IpNet,
    next_hops: &[IpAddr],
    protocol: u8,
    table: u32,
    metric: u32,
) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match prefix {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = prefix.prefix_len();
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::from(protocol);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            prefix.network(),
        )));
    m.attributes.push(RouteAttribute::Table(table));
    m.attributes.push(RouteAttribute::Priority(metric));
    // A gateway of the other family would need RTA_VIA (RFC 8950); such next
    // hops are left out.
    let same: Vec<IpAddr> = next_hops
        .iter()
        .filter(|nh| nh.is_ipv4() == prefix.addr().is_ipv4())
        .copied()
        .collect();
    match same.as_slice() {
        [] => {}
        [one] => m
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(*one))),
        many => m.attributes.push(RouteAttribute::MultiPath(
            many.iter()
                .map(|nh| {
                    let mut hop = RouteNextHop::default();
                    hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::from(*nh))];
                    hop
                })
                .collect(),
        )),
    }
    m
}

fn prefix_of(m: &RouteMessage) -> Option<IpNet> {
    let addr = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let addr = match (addr, m.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    IpNet::new(addr, m.header.destination_prefix_length).ok()
}

fn metric_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

impl FibInstaller {
    /// Opens a netlink socket in the current network namespace and records
    /// the routes of `protocol` already in `table` as leftovers; routes go
    /// in with [`DEFAULT_METRIC`].
    pub fn new(protocol: u8, table: u32) -> Result<Self, FibError> {
        Self::with_metric(protocol, table, DEFAULT_METRIC)
    }

    /// [`FibInstaller::new`] with routes of metric `metric` (a metric
    /// other than 0 keeps deletes from matching routes of any metric).
    pub fn with_metric(protocol: u8, table: u32, metric: u32) -> Result<Self, FibError> {
        if protocol <= 4 {
            return Err(FibError::ReservedProtocol(protocol));
        }
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("socket"))?;
        sock.bind_auto().map_err(nl_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect"))?;
        // Acks of a whole batch must fit; errors carry the request back.
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        let mut me = Self {
            sock,
            protocol,
            table,
            metric,
            seq: 1,
            leftovers: HashSet::new(),
            installed_v4: HashSet::new(),
            installed_v6: HashSet::new(),
            rbuf: vec![0; 256 * 1024],
        };
        me.leftovers = me.ours()?.into_iter().collect();
        Ok(me)
    }

    /// Number of routes from a previous run not yet re-learned.
    pub fn leftovers(&self) -> usize {
        self.leftovers.len()
    }

    /// The metric of our routes.
    pub fn metric(&self) -> u32 {
        self.metric
    }

    fn owns(&self, prefix: &IpNet) -> bool {
        self.leftovers.contains(prefix)
            || match prefix {
                IpNet::V4(p) => self.installed_v4.contains(p),
                IpNet::V6(p) => self.installed_v6.contains(p),
            }
    }

    fn set_installed(&mut self, prefix: IpNet, yes: bool) {
        match (prefix, yes) {
            (IpNet::V4(p), true) => self.installed_v4.insert(p),
            (IpNet::V4(p), false) => self.installed_v4.remove(&p),
            (IpNet::V6(p), true) => self.installed_v6.insert(p),
            (IpNet::V6(p), false) => self.installed_v6.remove(&p),
        };
    }

    /// Prefixes of our protocol and metric currently in the table.
    pub fn ours(&mut self) -> Result<Vec<IpNet>, FibError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            let seq = self.next_seq();
            self.send_one(
                RouteNetlinkMessage::GetRoute(m),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
            )?;
            'recv: loop {
                let msgs = self.recv_messages("recv dump")?;
                if msgs.is_empty() {
                    break 'recv;
                }
                for msg in msgs {
                    match msg.payload {
                        NetlinkPayload::Done(_) => break 'recv,
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(nl_err("dump")(e.to_io()));
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r))
                            if u8::from(r.header.protocol) == self.protocol
                                && table_of(&r) == self.table
                                && metric_of(&r) == self.metric =>
                        {
                            if let Some(p) = prefix_of(&r) {
                                out.push(p);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// Receives one datagram and parses the netlink messages in it.
    fn recv_messages(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, FibError> {
        let n = self
            .sock
            .recv(&mut &mut self.rbuf[..], 0)
            .map_err(nl_err(what))?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rbuf[off..n])
                .map_err(|e| FibError::Parse(e.to_string()))?;
            let len = usize::try_from(msg.header.length).unwrap_or(0);
            if len == 0 {
                break;
            }
            off += len;
            out.push(msg);
        }
        Ok(out)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
    }

    fn send_one(&mut self, msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Result<(), FibError> {
        let mut buf = Vec::new();
        Self::encode(msg, flags, seq, &mut buf);
        self.sock.send(&buf, 0).map_err(nl_err("send"))?;
        Ok(())
    }

    /// Applies best-route changes: add (or replace ours) for next hops,
    /// delete ours for none. A prefix held by somebody else's route of the
    /// same metric is refused by the kernel and reported in `failed`.
    pub fn apply(&mut self, changes: &[BestChange]) -> Result<ApplyReport, FibError> {
        let mut report = ApplyReport::default();
        for chunk in changes.chunks(BATCH) {
            let mut buf = Vec::with_capacity(chunk.len() * 96);
            let first = self.seq.wrapping_add(1);
            for (i, c) in chunk.iter().enumerate() {
                let seq = self.next_seq();
                let m = route_message(
                    c.prefix,
                    &c.next_hops,
                    self.protocol,
                    self.table,
                    self.metric,
                );
                // Only the last message asks for an ACK: the kernel handles a
                // socket's messages in order and reports every failure, so
                // that ACK means the whole batch is done, without 512 replies
                // to build and parse.
                let ack = if i + 1 == chunk.len() { NLM_F_ACK } else { 0 };
                if c.next_hops.is_empty() {
                    Self::encode(
                        RouteNetlinkMessage::DelRoute(m),
                        NLM_F_REQUEST | ack,
                        seq,
                        &mut buf,
                    );
                } else {
                    // Replace only what is ours: over anybody else's route
                    // NLM_F_REPLACE would take its place.
                    let how = if self.owns(&c.prefix) {
                        NLM_F_REPLACE
                    } else {
                        NLM_F_EXCL
                    };
                    Self::encode(
                        RouteNetlinkMessage::NewRoute(m),
                        NLM_F_REQUEST | ack | NLM_F_CREATE | how,
                        seq,
                        &mut buf,
                    );
                }
            }
            self.sock.send(&buf, 0).map_err(nl_err("send batch"))?;
            let last = self.seq;
            let mut failed: Vec<Option<std::io::Error>> = Vec::new();
            failed.resize_with(chunk.len(), || None);
            let mut done = false;
            while !done {
                let msgs = self.recv_messages("recv acks")?;
                if msgs.is_empty() {
                    break;
                }
                for msg in msgs {
                    let NetlinkPayload::Error(e) = msg.payload else {
                        continue;
                    };
                    let seq = msg.header.sequence_number;
                    let i = seq.wrapping_sub(first) as usize;
                    if let (Some(slot), Some(_)) = (failed.get_mut(i), e.code) {
                        *slot = Some(e.to_io());
                    }
                    done |= seq == last;
                }
            }
            for (c, err) in chunk.iter().zip(failed) {
                let was_ours = self.owns(&c.prefix);
                self.leftovers.remove(&c.prefix);
                match (c.next_hops.is_empty(), err) {
                    (false, None) => {
                        self.set_installed(c.prefix, true);
                        report.installed += 1;
                    }
                    (true, None) => {
                        self.set_installed(c.prefix, false);
                        report.removed += 1;
                    }
                    // "Already gone" is what a delete wants.
                    (true, Some(e)) if matches!(e.raw_os_error(), Some(ENOENT | ESRCH)) => {
                        self.set_installed(c.prefix, false);
                        report.removed += 1;
                    }
                    (false, Some(e)) => {
                        // A failed replace leaves our old route in place.
                        if was_ours && !matches!(e.raw_os_error(), Some(ENOENT | ESRCH)) {
                            self.set_installed(c.prefix, true);
                        }
                        report.failed.push((c.prefix, e));
                    }
                    (true, Some(e)) => report.failed.push((c.prefix, e)),
                }
            }
        }
        Ok(report)
    }

    /// Deletes the leftovers of a previous run that were not re-learned
    /// (call once the speaker reports [`crate::speaker::RibEvent::Synced`]).
    pub fn sweep_leftovers(&mut self) -> Result<ApplyReport, FibError> {
        let gone: Vec<BestChange> = self
            .leftovers
            .iter()
            .map(|p| BestChange {
                prefix: *p,
                next_hops: vec![],
            })
            .collect();
        self.apply(&gone)
    }

    /// Deletes every route of our protocol and metric in the table (clean
    /// shutdown).
    pub fn remove_all(&mut self) -> Result<ApplyReport, FibError> {
        let all: Vec<BestChange> = self
            .ours()?
            .into_iter()
            .map(|p| BestChange {
                prefix: p,
                next_hops: vec![],
            })
            .collect();
        self.apply(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn one_next_hop_is_a_gateway_route_with_our_protocol() {
        let m = route_message(
            net("10.2.0.0/26"),
            &["192.0.2.2".parse().unwrap()],
            151,
            254,
            1151,
        );
        assert_eq!(u8::from(m.header.protocol), 151);
        assert_eq!(metric_of(&m), 1151);
        assert_eq!(m.header.table, 254);
        assert_eq!(m.header.destination_prefix_length, 26);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                    "192.0.2.2".parse().unwrap()
                )))
        );
        assert_eq!(prefix_of(&m), Some(net("10.2.0.0/26")));
    }

    #[test]
    fn equal_next_hops_become_one_multipath_route() {
        let m = route_message(
            net("fd00:2::/64"),
            &["fd00::2".parse().unwrap(), "fd00::3".parse().unwrap()],
            151,
            254,
            1151,
        );
        let Some(RouteAttribute::MultiPath(hops)) = m
            .attributes
            .iter()
            .find(|a| matches!(a, RouteAttribute::MultiPath(_)))
        else {
            panic!("no multipath attribute")
        };
        assert_eq!(hops.len(), 2);
    }

    #[test]
    fn a_table_above_255_goes_in_the_attribute_only() {
        let m = route_message(net("10.2.0.0/26"), &[], 151, 1000, 1151);
        assert_eq!(m.header.table, 0);
        assert_eq!(table_of(&m), 1000);
    }

    #[test]
    fn the_delete_key_carries_our_protocol_and_metric() {
        let m = route_message(net("0.0.0.0/0"), &[], 151, 254, 1151);
        assert_eq!(u8::from(m.header.protocol), 151);
        assert_eq!(metric_of(&m), 1151);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
    }

    #[test]
    fn the_kernels_own_protocol_numbers_are_refused() {
        assert!(matches!(
            FibInstaller::new(2, 254),
            Err(FibError::ReservedProtocol(2))
        ));
    }
}
