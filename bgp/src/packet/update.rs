//! UPDATE message (RFC 4271 §4.3) and the multiprotocol attributes that
//! carry IPv6 NLRI (RFC 4760).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::attribute::{self, FLAG_OPTIONAL, PathAttrs, put_attr};
use super::error::DecodeError;
use super::{Ctx, Family, HEADER_LEN, MAX_MESSAGE_LEN, Message, Reader};

/// An UPDATE message.
///
/// ```text
/// +-----------------------------------------------------+
/// |   Withdrawn Routes Length (2 octets)                |
/// +-----------------------------------------------------+
/// |   Withdrawn Routes (variable)                       |
/// +-----------------------------------------------------+
/// |   Total Path Attribute Length (2 octets)            |
/// +-----------------------------------------------------+
/// |   Path Attributes (variable)                        |
/// +-----------------------------------------------------+
/// |   Network Layer Reachability Information (variable) |
/// +-----------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 prefixes.
    pub withdrawn: Vec<Ipv4Net>,
    /// Path attributes; `None` when the message has none (a pure withdraw).
    pub attrs: Option<PathAttrs>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Announced IPv4 prefixes.
    pub nlri: Vec<Ipv4Net>,
    /// RFC 7606 treat-as-withdraw: an attribute was malformed, so every
    /// prefix this UPDATE announces (`nlri` and `mp_reach`) must be handled
    /// as withdrawn. Not encoded.
    pub treat_as_withdraw: bool,
}

/// MP_REACH_NLRI (RFC 4760 §3).
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Length of Next Hop Network Address (1 octet)            |
/// | Network Address of Next Hop (variable)                  |
/// | Reserved (1 octet)                                      |
/// | Network Layer Reachability Information (variable)       |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// Family of the NLRI.
    pub family: Family,
    /// Next hop (global address for IPv6).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop, when the next hop field is 32 octets.
    pub link_local: Option<Ipv6Addr>,
    /// Announced prefixes.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Withdrawn Routes (variable)                             |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// Family of the withdrawn prefixes.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<IpNet>,
}

fn decode_prefixes(
    buf: &[u8],
    family: Family,
    err: DecodeError,
) -> Result<Vec<IpNet>, DecodeError> {
    let mut out = Vec::new();
    let mut r = Reader::new(buf);
    let max = match family {
        Family::Ipv4Unicast => 32,
        Family::Ipv6Unicast => 128,
    };
    while !r.is_empty() {
        let len = r.u8().ok_or(err.clone())?;
        if len > max {
            return Err(err);
        }
        let bytes = r.take(usize::from(len).div_ceil(8)).ok_or(err.clone())?;
        let net = match family {
            Family::Ipv4Unicast => {
                let mut a = [0u8; 4];
                a[..bytes.len()].copy_from_slice(bytes);
                Ipv4Net::new(Ipv4Addr::from(a), len)
                    .map(|n| IpNet::V4(n.trunc()))
                    .map_err(|_| err.clone())?
            }
            Family::Ipv6Unicast => {
                let mut a = [0u8; 16];
                a[..bytes.len()].copy_from_slice(bytes);
                Ipv6Net::new(Ipv6Addr::from(a), len)
                    .map(|n| IpNet::V6(n.trunc()))
                    .map_err(|_| err.clone())?
            }
        };
        out.push(net);
    }
    Ok(out)
}

fn decode_v4(buf: &[u8], reason: &'static str) -> Result<Vec<Ipv4Net>, DecodeError> {
    let err = DecodeError::InvalidNetworkField { reason };
    Ok(decode_prefixes(buf, Family::Ipv4Unicast, err)?
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// Encoded size of one prefix in NLRI form.
pub fn prefix_wire_len(p: &IpNet) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// Appends a prefix in NLRI form (length, then the significant octets).
pub fn put_prefix(out: &mut Vec<u8>, p: &IpNet) {
    let n = usize::from(p.prefix_len()).div_ceil(8);
    out.push(p.prefix_len());
    match p {
        IpNet::V4(v) => out.extend_from_slice(&v.addr().octets()[..n]),
        IpNet::V6(v) => out.extend_from_slice(&v.addr().octets()[..n]),
    }
}

impl MpReach {
    pub(crate) fn decode(value: &[u8]) -> Result<Option<Self>, DecodeError> {
        let bad = |reason| DecodeError::MalformedMp { reason };
        let mut r = Reader::new(value);
        let afi = r.u16().ok_or(bad("short MP_REACH"))?;
        let safi = r.u8().ok_or(bad("short MP_REACH"))?;
        let nh_len = r.u8().ok_or(bad("short MP_REACH"))?;
        let nh = r.take(usize::from(nh_len)).ok_or(bad("next hop overrun"))?;
        let _reserved = r.u8().ok_or(bad("short MP_REACH"))?;
        // A family we never negotiate is ignored rather than fatal.
        let Some(family) = Family::from_afi_safi(afi, safi) else {
            return Ok(None);
        };
        let (next_hop, link_local) = match (family, nh.len()) {
            (Family::Ipv4Unicast, 4) => {
                (IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])), None)
            }
            (_, 16) => (IpAddr::V6(v6(&nh[..16])), None),
            (_, 32) => (IpAddr::V6(v6(&nh[..16])), Some(v6(&nh[16..32]))),
            _ => return Err(bad("next hop length")),
        };
        let nlri = decode_prefixes(r.rest(), family, bad("MP_REACH NLRI"))?;
        Ok(Some(Self {
            family,
            next_hop,
            link_local,
            nlri,
        }))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let (afi, safi) = self.family.afi_safi();
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&afi.to_be_bytes());
        v.push(safi);
        let mut nh = match self.next_hop {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if let Some(ll) = self.link_local {
            nh.extend_from_slice(&ll.octets());
        }
        v.push(u8::try_from(nh.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(&nh);
        v.push(0);
        for p in &self.nlri {
            put_prefix(&mut v, p);
        }
        put_attr(out, FLAG_OPTIONAL, attribute::MP_REACH, &v);
    }
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

impl MpUnreach {
    pub(crate) fn decode(value: &[u8]) -> Result<Option<Self>, DecodeError> {
        let bad = |reason| DecodeError::MalformedMp { reason };
        let mut r = Reader::new(value);
        let afi = r.u16().ok_or(bad("short MP_UNREACH"))?;
        let safi = r.u8().ok_or(bad("short MP_UNREACH"))?;
        let Some(family) = Family::from_afi_safi(afi, safi) else {
            return Ok(None);
        };
        let withdrawn = decode_prefixes(r.rest(), family, bad("MP_UNREACH NLRI"))?;
        Ok(Some(Self { family, withdrawn }))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let (afi, safi) = self.family.afi_safi();
        let mut v = Vec::with_capacity(8);
        v.extend_from_slice(&afi.to_be_bytes());
        v.push(safi);
        for p in &self.withdrawn {
            put_prefix(&mut v, p);
        }
        put_attr(out, FLAG_OPTIONAL, attribute::MP_UNREACH, &v);
    }
}

impl Update {
    pub(crate) fn decode(body: &[u8], ctx: &Ctx) -> Result<Self, DecodeError> {
        let bad_list = |reason| DecodeError::MalformedAttributeList { reason };
        let mut r = Reader::new(body);
        let wlen = r.u16().ok_or(bad_list("short UPDATE"))?;
        let wbuf = r
            .take(usize::from(wlen))
            .ok_or(bad_list("withdrawn routes length"))?;
        let alen = r.u16().ok_or(bad_list("short UPDATE"))?;
        let abuf = r
            .take(usize::from(alen))
            .ok_or(bad_list("total path attribute length"))?;
        let withdrawn = decode_v4(wbuf, "withdrawn routes")?;
        let nlri = decode_v4(r.rest(), "NLRI")?;
        let d = attribute::decode(abuf, ctx)?;
        let mut treat_as_withdraw = d.treat_as_withdraw;
        let reach_nlri = d.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        // §3(d): a missing mandatory attribute poisons the announced prefixes.
        if (!nlri.is_empty() || reach_nlri)
            && (!d.has_origin || !d.has_as_path || (!nlri.is_empty() && d.attrs.next_hop.is_none()))
        {
            treat_as_withdraw = true;
        }
        let only_mp_unreach = d.mp_reach.is_none()
            && d.attrs == PathAttrs::default()
            && !d.has_origin
            && !d.has_as_path;
        Ok(Self {
            withdrawn,
            attrs: (d.any && !only_mp_unreach).then_some(d.attrs),
            mp_reach: d.mp_reach,
            mp_unreach: d.mp_unreach,
            nlri,
            treat_as_withdraw,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>, ctx: &Ctx) {
        let mut w = Vec::new();
        for p in &self.withdrawn {
            put_prefix(&mut w, &IpNet::V4(*p));
        }
        out.extend_from_slice(&u16::try_from(w.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&w);
        let mut pieces = Vec::new();
        if let Some(a) = &self.attrs {
            a.encode_pieces(ctx, &mut pieces);
        }
        if let Some(m) = &self.mp_reach {
            let mut b = Vec::new();
            m.encode(&mut b);
            pieces.push((attribute::MP_REACH, b));
        }
        if let Some(m) = &self.mp_unreach {
            let mut b = Vec::new();
            m.encode(&mut b);
            pieces.push((attribute::MP_UNREACH, b));
        }
        // Ascending type code, as RFC 4271 §5 recommends (stable for equal codes).
        pieces.sort_by_key(|(code, _)| *code);
        let alen: usize = pieces.iter().map(|(_, b)| b.len()).sum();
        out.extend_from_slice(&u16::try_from(alen).unwrap_or(u16::MAX).to_be_bytes());
        for (_, b) in pieces {
            out.extend_from_slice(&b);
        }
        for p in &self.nlri {
            put_prefix(out, &IpNet::V4(*p));
        }
    }

    /// The End-of-RIB marker for a family (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Self {
        match family {
            Family::Ipv4Unicast => Self::default(),
            Family::Ipv6Unicast => Self {
                mp_unreach: Some(MpUnreach {
                    family,
                    withdrawn: vec![],
                }),
                ..Self::default()
            },
        }
    }

    /// The family this UPDATE is the End-of-RIB marker for, if it is one.
    pub fn as_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        match (&self.attrs, &self.mp_unreach) {
            (None, None) => Some(Family::Ipv4Unicast),
            (None, Some(u)) if u.withdrawn.is_empty() => Some(u.family),
            _ => None,
        }
    }
}

/// Encodes announcements of `prefixes` (all of one family) with `attrs`
/// into as many UPDATE messages as needed to stay within 4096 bytes. For
/// IPv4, `attrs.next_hop` must be set; for IPv6, `next_hop` (and the
/// optional `link_local`, RFC 2545) go in MP_REACH.
pub fn encode_announce(
    attrs: &PathAttrs,
    family: Family,
    next_hop: IpAddr,
    link_local: Option<Ipv6Addr>,
    prefixes: &[IpNet],
    ctx: &Ctx,
) -> Vec<Vec<u8>> {
    let make = |chunk: &[IpNet]| match family {
        Family::Ipv4Unicast => Update {
            attrs: Some(attrs.clone()),
            nlri: chunk.iter().filter_map(as_v4).collect(),
            ..Update::default()
        },
        Family::Ipv6Unicast => Update {
            attrs: Some(PathAttrs {
                next_hop: None,
                ..attrs.clone()
            }),
            mp_reach: Some(MpReach {
                family,
                next_hop,
                link_local,
                nlri: chunk.to_vec(),
            }),
            ..Update::default()
        },
    };
    pack(prefixes, ctx, make)
}

/// Encodes withdrawals of `prefixes` (all of one family) into as many UPDATE
/// messages as needed.
pub fn encode_withdraw(family: Family, prefixes: &[IpNet], ctx: &Ctx) -> Vec<Vec<u8>> {
    let make = |chunk: &[IpNet]| match family {
        Family::Ipv4Unicast => Update {
            withdrawn: chunk.iter().filter_map(as_v4).collect(),
            ..Update::default()
        },
        Family::Ipv6Unicast => Update {
            mp_unreach: Some(MpUnreach {
                family,
                withdrawn: chunk.to_vec(),
            }),
            ..Update::default()
        },
    };
    pack(prefixes, ctx, make)
}

fn as_v4(p: &IpNet) -> Option<Ipv4Net> {
    match p {
        IpNet::V4(v) => Some(*v),
        IpNet::V6(_) => None,
    }
}

/// Greedy packing: the size of a message with no prefix is measured once,
/// then prefixes are added while they fit (keeping 2 octets of slack for an
/// attribute that switches to the extended length form).
fn pack(prefixes: &[IpNet], ctx: &Ctx, make: impl Fn(&[IpNet]) -> Update) -> Vec<Vec<u8>> {
    let base = Message::Update(make(&[])).encode(ctx).len() + 2;
    let budget = MAX_MESSAGE_LEN.saturating_sub(base).max(HEADER_LEN);
    let mut out = Vec::new();
    let mut start = 0;
    while start < prefixes.len() {
        let mut used = 0;
        let mut end = start;
        while end < prefixes.len() && used + prefix_wire_len(&prefixes[end]) <= budget {
            used += prefix_wire_len(&prefixes[end]);
            end += 1;
        }
        // Always make progress, even if one prefix alone does not fit.
        let end = end.max(start + 1);
        out.push(Message::Update(make(&prefixes[start..end])).encode(ctx));
        start = end;
    }
    out
}
