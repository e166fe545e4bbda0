//! NOTIFICATION (RFC 4271 §4.5) and ROUTE-REFRESH (RFC 2918, RFC 7313).

use super::error::DecodeError;
use super::{Afi, Safi};

/// A NOTIFICATION message.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Error code    | Error subcode |   Data (variable)             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A NOTIFICATION without data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match body {
            [code, subcode, data @ ..] => Ok(Self {
                code: *code,
                subcode: *subcode,
                data: data.to_vec(),
            }),
            _ => Err(DecodeError::MalformedNotification),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data);
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {} subcode {}", self.code, self.subcode)
    }
}

/// A ROUTE-REFRESH message; `subtype` is 0 (request), 1 (BoRR) or 2 (EoRR)
/// with enhanced route refresh (RFC 7313).
///
/// ```text
///  0       7      15      23      31
/// +-------+-------+-------+-------+
/// |      AFI      | Subtype | SAFI|
/// +-------+-------+-------+-------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRefresh {
    /// Address family.
    pub afi: Afi,
    /// Message subtype (RFC 7313); 0 for a plain request.
    pub subtype: u8,
    /// Subsequent address family.
    pub safi: Safi,
}

impl RouteRefresh {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match body {
            [a0, a1, subtype, safi] => Ok(Self {
                afi: u16::from_be_bytes([*a0, *a1]),
                subtype: *subtype,
                safi: *safi,
            }),
            _ => Err(DecodeError::MalformedRouteRefresh),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.afi.to_be_bytes());
        out.push(self.subtype);
        out.push(self.safi);
    }
}
