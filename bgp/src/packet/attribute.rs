//! Path attributes (RFC 4271 §4.3, §5) and their RFC 7606 error handling.
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +---------------+---------------+
//! |  Attr. Flags  |Attr. Type Code|  then 1 or 2 length octets, value
//! +---------------+---------------+
//! ```

use std::net::Ipv4Addr;

use super::error::DecodeError;
use super::update::{MpReach, MpUnreach};
use super::{AS_TRANS, Ctx, Reader};

/// Attribute flag: optional.
pub const FLAG_OPTIONAL: u8 = 0x80;
/// Attribute flag: transitive.
pub const FLAG_TRANSITIVE: u8 = 0x40;
/// Attribute flag: partial.
pub const FLAG_PARTIAL: u8 = 0x20;
/// Attribute flag: two-octet length.
pub const FLAG_EXT_LEN: u8 = 0x10;

/// ORIGIN type code.
pub const ORIGIN: u8 = 1;
/// AS_PATH type code.
pub const AS_PATH: u8 = 2;
/// NEXT_HOP type code.
pub const NEXT_HOP: u8 = 3;
/// MULTI_EXIT_DISC type code.
pub const MED: u8 = 4;
/// LOCAL_PREF type code.
pub const LOCAL_PREF: u8 = 5;
/// ATOMIC_AGGREGATE type code.
pub const ATOMIC_AGGREGATE: u8 = 6;
/// AGGREGATOR type code.
pub const AGGREGATOR: u8 = 7;
/// COMMUNITIES type code (RFC 1997).
pub const COMMUNITIES: u8 = 8;
/// ORIGINATOR_ID type code (RFC 4456).
pub const ORIGINATOR_ID: u8 = 9;
/// CLUSTER_LIST type code (RFC 4456).
pub const CLUSTER_LIST: u8 = 10;
/// MP_REACH_NLRI type code (RFC 4760).
pub const MP_REACH: u8 = 14;
/// MP_UNREACH_NLRI type code (RFC 4760).
pub const MP_UNREACH: u8 = 15;
/// AS4_PATH type code (RFC 6793).
pub const AS4_PATH: u8 = 17;
/// AS4_AGGREGATOR type code (RFC 6793).
pub const AS4_AGGREGATOR: u8 = 18;
/// LARGE_COMMUNITY type code (RFC 8092).
pub const LARGE_COMMUNITY: u8 = 32;

/// One BGP large community (RFC 8092 §3), `global:local1:local2`.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                      Global Administrator                     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       Local Data Part 1                       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       Local Data Part 2                       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator (usually an AS number).
    pub global: u32,
    /// Local data part 1.
    pub local1: u32,
    /// Local data part 2.
    pub local2: u32,
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    /// Learned from an interior protocol.
    #[default]
    Igp = 0,
    /// Learned from EGP.
    Egp = 1,
    /// Learned some other way.
    Incomplete = 2,
}

/// An AS_PATH segment.
///
/// ```text
/// +------+--------+----------------------------+
/// | type | count  | count x (2 or 4)-octet ASN |
/// +------+--------+----------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// AS_SET (type 1): unordered, counts as one hop.
    Set(Vec<u32>),
    /// AS_SEQUENCE (type 2).
    Sequence(Vec<u32>),
}

/// An AS_PATH: a list of segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    /// Segments in wire order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// Path length for the decision process: an AS_SET counts as one.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Set(_) => 1,
                AsSegment::Sequence(v) => v.len(),
            })
            .sum()
    }

    /// Whether the path has no AS at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `asn` appears anywhere in the path (loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Set(v) | AsSegment::Sequence(v) => v.contains(&asn),
        })
    }

    /// The neighbouring AS: first AS of a leading AS_SEQUENCE.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn` as the leftmost AS_SEQUENCE entry.
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => self.segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
    }
}

/// AGGREGATOR value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// AS of the aggregating speaker.
    pub asn: u32,
    /// Its BGP identifier.
    pub address: Ipv4Addr,
}

/// An attribute this speaker does not interpret, kept to be passed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    /// Flags as received (length and unused bits cleared).
    pub flags: u8,
    /// Type code.
    pub code: u8,
    /// Value.
    pub value: Vec<u8>,
}

/// The path attributes of an UPDATE, except MP_REACH/MP_UNREACH which carry
/// NLRI and live in [`super::Update`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttrs {
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH, with AS4_PATH merged in when the peer is a 2-octet speaker.
    pub as_path: AsPath,
    /// NEXT_HOP (IPv4 NLRI only).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// AGGREGATOR.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES, in wire order.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY (RFC 8092), in wire order.
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST, leftmost first.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised optional attributes, by ascending type code.
    pub unknown: Vec<RawAttr>,
}

/// The attribute section of one UPDATE, decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub attrs: PathAttrs,
    pub any: bool,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub treat_as_withdraw: bool,
    pub has_origin: bool,
    pub has_as_path: bool,
}

/// Expected optional/transitive bits of each known attribute.
fn expected_flags(code: u8) -> Option<u8> {
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => FLAG_TRANSITIVE,
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => FLAG_OPTIONAL,
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR | LARGE_COMMUNITY => {
            FLAG_OPTIONAL | FLAG_TRANSITIVE
        }
        _ => return None,
    })
}

/// Decodes the path attribute section, applying RFC 7606: errors that only
/// poison this UPDATE set `treat_as_withdraw`, harmless ones drop the
/// attribute, and only those that make the stream unparseable are returned
/// as errors.
pub(crate) fn decode(buf: &[u8], ctx: &Ctx) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::default();
    let mut seen = [false; 256];
    let mut as4_path: Option<AsPath> = None;
    let mut as4_aggregator: Option<Aggregator> = None;
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        d.any = true;
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            // RFC 7606 §4: fewer than three octets left is treat-as-withdraw.
            d.treat_as_withdraw = true;
            break;
        };
        let len = if flags & FLAG_EXT_LEN != 0 {
            r.u16().map(usize::from)
        } else {
            r.u8().map(usize::from)
        };
        let Some(value) = len.and_then(|l| r.take(l)) else {
            // The attribute overruns the section: the NLRI can still be
            // located, so the UPDATE is treated as a withdraw (§4).
            d.treat_as_withdraw = true;
            break;
        };
        let idx = usize::from(code);
        if seen[idx] {
            if code == MP_REACH || code == MP_UNREACH {
                return Err(DecodeError::MalformedAttributeList {
                    reason: "duplicate MP_REACH/MP_UNREACH",
                });
            }
            // §3(g): keep the first, discard the rest.
            continue;
        }
        seen[idx] = true;
        // The low four bits are unused: ignore them (RFC 4271 §4.3).
        let flags = flags & !FLAG_EXT_LEN & 0xf0;
        match expected_flags(code) {
            None if flags & FLAG_OPTIONAL == 0 => {
                return Err(DecodeError::UnrecognizedWellKnown { code });
            }
            None => {
                d.attrs.unknown.push(RawAttr {
                    flags,
                    code,
                    value: value.to_vec(),
                });
                continue;
            }
            Some(want) if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != want => {
                if code == MP_REACH || code == MP_UNREACH {
                    return Err(DecodeError::MalformedMp {
                        reason: "attribute flags",
                    });
                }
                d.treat_as_withdraw = true;
                continue;
            }
            Some(_) => {}
        }
        let mut v = Reader::new(value);
        let exact4 = |v: &mut Reader<'_>| if value.len() == 4 { v.u32() } else { None };
        match code {
            ORIGIN => match value {
                [0] => d.attrs.origin = Origin::Igp,
                [1] => d.attrs.origin = Origin::Egp,
                [2] => d.attrs.origin = Origin::Incomplete,
                _ => d.treat_as_withdraw = true,
            },
            AS_PATH => match decode_as_path(value, ctx.four_octet_as) {
                Some(p) => d.attrs.as_path = p,
                None => d.treat_as_withdraw = true,
            },
            NEXT_HOP => match exact4(&mut v) {
                Some(a) => d.attrs.next_hop = Some(Ipv4Addr::from(a)),
                None => d.treat_as_withdraw = true,
            },
            MED => match exact4(&mut v) {
                Some(m) => d.attrs.med = Some(m),
                None => d.treat_as_withdraw = true,
            },
            LOCAL_PREF => match exact4(&mut v) {
                Some(m) => d.attrs.local_pref = Some(m),
                None => d.treat_as_withdraw = true,
            },
            // §7.6: a non-empty ATOMIC_AGGREGATE is discarded.
            ATOMIC_AGGREGATE => d.attrs.atomic_aggregate = value.is_empty(),
            // §7.7: a malformed AGGREGATOR is discarded.
            AGGREGATOR => d.attrs.aggregator = decode_aggregator(value, ctx.four_octet_as),
            COMMUNITIES => {
                if value.is_empty() || value.len() % 4 != 0 {
                    d.treat_as_withdraw = true;
                } else {
                    d.attrs.communities = value
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            // RFC 8092 §6: a length that is not a non-zero multiple of 12
            // is treat-as-withdraw.
            LARGE_COMMUNITY => {
                if value.is_empty() || value.len() % 12 != 0 {
                    d.treat_as_withdraw = true;
                } else {
                    d.attrs.large_communities = value
                        .chunks_exact(12)
                        .map(|c| {
                            let w =
                                |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            LargeCommunity {
                                global: w(0),
                                local1: w(4),
                                local2: w(8),
                            }
                        })
                        .collect();
                }
            }
            ORIGINATOR_ID => match exact4(&mut v) {
                Some(a) => d.attrs.originator_id = Some(Ipv4Addr::from(a)),
                None => d.treat_as_withdraw = true,
            },
            CLUSTER_LIST => {
                if value.is_empty() || value.len() % 4 != 0 {
                    d.treat_as_withdraw = true;
                } else {
                    d.attrs.cluster_list = value
                        .chunks_exact(4)
                        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                        .collect();
                }
            }
            MP_REACH => d.mp_reach = MpReach::decode(value)?,
            MP_UNREACH => d.mp_unreach = MpUnreach::decode(value)?,
            // §7.9 (RFC 6793 §6): malformed AS4_* attributes are discarded;
            // a 4-octet speaker ignores them entirely.
            AS4_PATH if !ctx.four_octet_as => as4_path = decode_as_path(value, true),
            AS4_AGGREGATOR if !ctx.four_octet_as => {
                as4_aggregator = decode_aggregator(value, true);
            }
            _ => {}
        }
    }
    // Attributes go out in ascending type code order, so keep unknown ones
    // that way too: decode(encode(x)) == x.
    d.attrs.unknown.sort_by_key(|u| u.code);
    d.has_origin = seen[usize::from(ORIGIN)];
    d.has_as_path = seen[usize::from(AS_PATH)];
    if let Some(as4) = as4_path {
        d.attrs.as_path = merge_as4_path(&d.attrs.as_path, as4);
    }
    if let (Some(agg), Some(as4)) = (d.attrs.aggregator, as4_aggregator) {
        // RFC 6793 §4.2.3: AS4_AGGREGATOR counts only if AGGREGATOR says AS_TRANS.
        if agg.asn == u32::from(AS_TRANS) {
            d.attrs.aggregator = Some(as4);
        }
    }
    Ok(d)
}

fn decode_aggregator(value: &[u8], four: bool) -> Option<Aggregator> {
    let mut v = Reader::new(value);
    let asn = match (four, value.len()) {
        (true, 8) => v.u32()?,
        (false, 6) => u32::from(v.u16()?),
        _ => return None,
    };
    Some(Aggregator {
        asn,
        address: v.ipv4()?,
    })
}

fn decode_as_path(value: &[u8], four: bool) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let ty = r.u8()?;
        let count = r.u8()?;
        // §7.2: a zero-length segment is malformed.
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(if four { r.u32()? } else { u32::from(r.u16()?) });
        }
        segments.push(match ty {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            _ => return None,
        });
    }
    Some(AsPath { segments })
}

/// RFC 6793 §4.2.3: keep the leading ASes of AS_PATH that AS4_PATH does not
/// cover, then AS4_PATH; ignore AS4_PATH if it is longer than AS_PATH.
fn merge_as4_path(as_path: &AsPath, as4: AsPath) -> AsPath {
    let (n, n4) = (as_path.len(), as4.len());
    if n < n4 {
        return as_path.clone();
    }
    let mut keep = n - n4;
    let mut segments = Vec::new();
    for s in &as_path.segments {
        if keep == 0 {
            break;
        }
        match s {
            AsSegment::Set(v) => {
                segments.push(AsSegment::Set(v.clone()));
                keep -= 1;
            }
            AsSegment::Sequence(v) => {
                let take = keep.min(v.len());
                segments.push(AsSegment::Sequence(v[..take].to_vec()));
                keep -= take;
            }
        }
    }
    segments.extend(as4.segments);
    AsPath { segments }
}

/// Appends one attribute, choosing the length encoding.
pub(crate) fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push((flags | FLAG_EXT_LEN) & !0x0f);
        out.push(code);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        out.push(flags & !FLAG_EXT_LEN & !0x0f);
        out.push(code);
        out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    }
    out.extend_from_slice(value);
}

fn encode_as_path(path: &AsPath, four: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for seg in &path.segments {
        let (ty, asns) = match seg {
            AsSegment::Set(a) => (1u8, a),
            AsSegment::Sequence(a) => (2u8, a),
        };
        // Segments longer than 255 are split, which keeps their meaning for
        // sequences (sets that large do not occur in practice).
        for chunk in asns.chunks(255) {
            v.push(ty);
            v.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            for asn in chunk {
                if four {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let two = u16::try_from(*asn).unwrap_or(AS_TRANS);
                    v.extend_from_slice(&two.to_be_bytes());
                }
            }
        }
    }
    v
}

impl PathAttrs {
    /// Encodes every attribute as (type code, bytes), so that the UPDATE
    /// encoder can merge MP attributes in and sort by type code.
    pub(crate) fn encode_pieces(&self, ctx: &Ctx, out: &mut Vec<(u8, Vec<u8>)>) {
        let mut put = |flags: u8, code: u8, value: &[u8]| {
            let mut b = Vec::with_capacity(value.len() + 4);
            put_attr(&mut b, flags, code, value);
            out.push((code, b));
        };
        let four = ctx.four_octet_as;
        put(FLAG_TRANSITIVE, ORIGIN, &[self.origin as u8]);
        put(
            FLAG_TRANSITIVE,
            AS_PATH,
            &encode_as_path(&self.as_path, four),
        );
        if let Some(nh) = self.next_hop {
            put(FLAG_TRANSITIVE, NEXT_HOP, &nh.octets());
        }
        if let Some(med) = self.med {
            put(FLAG_OPTIONAL, MED, &med.to_be_bytes());
        }
        if let Some(lp) = self.local_pref {
            put(FLAG_TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes());
        }
        if self.atomic_aggregate {
            put(FLAG_TRANSITIVE, ATOMIC_AGGREGATE, &[]);
        }
        if let Some(agg) = self.aggregator {
            let mut v = Vec::with_capacity(8);
            if four {
                v.extend_from_slice(&agg.asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(agg.asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            v.extend_from_slice(&agg.address.octets());
            put(FLAG_OPTIONAL | FLAG_TRANSITIVE, AGGREGATOR, &v);
            if !four && agg.asn > u32::from(u16::MAX) {
                let mut v4 = agg.asn.to_be_bytes().to_vec();
                v4.extend_from_slice(&agg.address.octets());
                put(FLAG_OPTIONAL | FLAG_TRANSITIVE, AS4_AGGREGATOR, &v4);
            }
        }
        if !self.communities.is_empty() {
            let v: Vec<u8> = self
                .communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put(FLAG_OPTIONAL | FLAG_TRANSITIVE, COMMUNITIES, &v);
        }
        if let Some(id) = self.originator_id {
            put(FLAG_OPTIONAL, ORIGINATOR_ID, &id.octets());
        }
        if !self.cluster_list.is_empty() {
            let v: Vec<u8> = self.cluster_list.iter().flat_map(|c| c.octets()).collect();
            put(FLAG_OPTIONAL, CLUSTER_LIST, &v);
        }
        if !self.large_communities.is_empty() {
            let v: Vec<u8> = self
                .large_communities
                .iter()
                .flat_map(|c| {
                    let mut b = [0u8; 12];
                    b[..4].copy_from_slice(&c.global.to_be_bytes());
                    b[4..8].copy_from_slice(&c.local1.to_be_bytes());
                    b[8..].copy_from_slice(&c.local2.to_be_bytes());
                    b
                })
                .collect();
            put(FLAG_OPTIONAL | FLAG_TRANSITIVE, LARGE_COMMUNITY, &v);
        }
        // A 2-octet peer needs AS4_PATH to learn the real ASes behind AS_TRANS.
        if !four
            && self.as_path.segments.iter().any(|s| match s {
                AsSegment::Set(v) | AsSegment::Sequence(v) => {
                    v.iter().any(|a| *a > u32::from(u16::MAX))
                }
            })
        {
            put(
                FLAG_OPTIONAL | FLAG_TRANSITIVE,
                AS4_PATH,
                &encode_as_path(&self.as_path, true),
            );
        }
        for raw in &self.unknown {
            put(raw.flags, raw.code, &raw.value);
        }
    }
}
