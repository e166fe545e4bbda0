//! The BGP-4 wire format: pure functions from bytes to values and back, no
//! I/O. One module per message; attributes have their own module.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                           Marker                              |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

pub mod attribute;
pub mod error;
pub mod notification;
pub mod open;
pub mod update;

pub use attribute::{AsPath, AsSegment, LargeCommunity, Origin, PathAttrs, RawAttr};
pub use error::DecodeError;
pub use notification::{Notification, RouteRefresh};
pub use open::{Capability, GrFamily, Open};
pub use update::{MpReach, MpUnreach, Update};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 19;
/// Largest message without RFC 8654 extended messages.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// AS_TRANS (RFC 6793), put in the 2-octet "My AS" field for large ASes.
pub const AS_TRANS: u16 = 23456;

/// Address Family Identifier.
pub type Afi = u16;
/// Subsequent Address Family Identifier.
pub type Safi = u8;
/// AFI for IPv4.
pub const AFI_IPV4: Afi = 1;
/// AFI for IPv6.
pub const AFI_IPV6: Afi = 2;
/// SAFI for unicast.
pub const SAFI_UNICAST: Safi = 1;

/// The address families this speaker routes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    /// IPv4 unicast.
    #[serde(rename = "ipv4")]
    Ipv4Unicast,
    /// IPv6 unicast.
    #[serde(rename = "ipv6")]
    Ipv6Unicast,
}

impl Family {
    /// Both families, in a fixed order.
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    /// The family for an AFI/SAFI pair, if we route it.
    pub fn from_afi_safi(afi: Afi, safi: Safi) -> Option<Self> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Self::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Self::Ipv6Unicast),
            _ => None,
        }
    }

    /// The AFI/SAFI pair.
    pub fn afi_safi(self) -> (Afi, Safi) {
        match self {
            Self::Ipv4Unicast => (AFI_IPV4, SAFI_UNICAST),
            Self::Ipv6Unicast => (AFI_IPV6, SAFI_UNICAST),
        }
    }

    /// The family of a prefix.
    pub fn of(prefix: &ipnet::IpNet) -> Self {
        match prefix {
            ipnet::IpNet::V4(_) => Self::Ipv4Unicast,
            ipnet::IpNet::V6(_) => Self::Ipv6Unicast,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipv4Unicast => "ipv4-unicast",
            Self::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// What the session negotiated that changes how bytes are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides sent the 4-octet AS capability: AS numbers in AS_PATH and
    /// AGGREGATOR are 4 octets.
    pub four_octet_as: bool,
}

impl Default for Ctx {
    fn default() -> Self {
        Self {
            four_octet_as: true,
        }
    }
}

/// A BGP message.
#[expect(
    clippy::large_enum_variant,
    reason = "messages are short-lived; boxing UPDATE would cost an allocation per message"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5).
    RouteRefresh(RouteRefresh),
}

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;
const TYPE_ROUTE_REFRESH: u8 = 5;

/// Returns the length of the first complete message in `buf`, `Ok(None)` if
/// more bytes are needed, or an error if the header is invalid. Used to cut a
/// TCP stream into messages.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError::BadMarker);
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]);
    if usize::from(len) < HEADER_LEN || usize::from(len) > MAX_MESSAGE_LEN {
        return Err(DecodeError::BadLength { len });
    }
    Ok((buf.len() >= usize::from(len)).then_some(usize::from(len)))
}

impl Message {
    /// Decodes one whole message (header included). `buf` must hold exactly
    /// one message.
    pub fn decode(buf: &[u8], ctx: &Ctx) -> Result<Self, DecodeError> {
        let len = match frame_len(buf)? {
            Some(len) => len,
            None if buf.len() < HEADER_LEN => {
                return Err(DecodeError::Truncated {
                    need: HEADER_LEN,
                    have: buf.len(),
                });
            }
            None => {
                return Err(DecodeError::Truncated {
                    need: usize::from(u16::from_be_bytes([buf[16], buf[17]])),
                    have: buf.len(),
                });
            }
        };
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        if len != buf.len() {
            return Err(DecodeError::BadLength { len: len16 });
        }
        let body = &buf[HEADER_LEN..];
        let bad_len = DecodeError::BadLength { len: len16 };
        match buf[18] {
            TYPE_OPEN => {
                if len < 29 {
                    return Err(bad_len);
                }
                Open::decode(body).map(Self::Open)
            }
            TYPE_UPDATE => {
                if len < 23 {
                    return Err(bad_len);
                }
                Update::decode(body, ctx).map(Self::Update)
            }
            TYPE_NOTIFICATION => {
                if len < 21 {
                    return Err(bad_len);
                }
                Notification::decode(body).map(Self::Notification)
            }
            TYPE_KEEPALIVE => {
                if len != HEADER_LEN {
                    return Err(bad_len);
                }
                Ok(Self::Keepalive)
            }
            TYPE_ROUTE_REFRESH => RouteRefresh::decode(body).map(Self::RouteRefresh),
            ty => Err(DecodeError::BadType { ty }),
        }
    }

    /// Encodes the message, header included. An UPDATE too large for one
    /// message is the caller's to split (see [`update::encode_announce`]).
    pub fn encode(&self, ctx: &Ctx) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0xff; 16]);
        out.extend_from_slice(&[0, 0]);
        match self {
            Self::Open(m) => {
                out.push(TYPE_OPEN);
                m.encode_body(&mut out);
            }
            Self::Update(m) => {
                out.push(TYPE_UPDATE);
                m.encode_body(&mut out, ctx);
            }
            Self::Notification(m) => {
                out.push(TYPE_NOTIFICATION);
                m.encode_body(&mut out);
            }
            Self::Keepalive => out.push(TYPE_KEEPALIVE),
            Self::RouteRefresh(m) => {
                out.push(TYPE_ROUTE_REFRESH);
                m.encode_body(&mut out);
            }
        }
        set_length(&mut out);
        out
    }
}

/// Writes the total length into the header of an encoded message.
pub(crate) fn set_length(out: &mut [u8]) {
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX).to_be_bytes();
    if out.len() >= HEADER_LEN {
        out[16] = len[0];
        out[17] = len[1];
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked and returns
/// `None` past the end, so a short buffer can never panic.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn ipv4(&mut self) -> Option<std::net::Ipv4Addr> {
        self.u32().map(std::net::Ipv4Addr::from)
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests;
