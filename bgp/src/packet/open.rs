//! OPEN message and capabilities (RFC 4271 §4.2, RFC 5492).

use std::net::Ipv4Addr;

use super::error::DecodeError;
use super::{AS_TRANS, Afi, Family, Reader, Safi};

/// An OPEN message.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+
/// |    Version    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     My Autonomous System      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Hold Time           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         BGP Identifier                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Opt Parm Len  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |             Optional Parameters (variable)                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet "My Autonomous System" field (AS_TRANS for large ASes).
    pub my_as: u16,
    /// Proposed hold time in seconds (0 or at least 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Capabilities, in the order received.
    pub capabilities: Vec<Capability>,
}

/// One family in a graceful restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrFamily {
    /// AFI.
    pub afi: Afi,
    /// SAFI.
    pub safi: Safi,
    /// Forwarding state was preserved across the restart (F bit).
    pub forwarding: bool,
}

/// A capability (RFC 5492).
///
/// ```text
/// +------------------------------+
/// | Capability Code (1 octet)    |
/// +------------------------------+
/// | Capability Length (1 octet)  |
/// +------------------------------+
/// | Capability Value (variable)  |
/// +------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (RFC 4760), code 1.
    Multiprotocol {
        /// AFI.
        afi: Afi,
        /// SAFI.
        safi: Safi,
    },
    /// Route refresh (RFC 2918), code 2.
    RouteRefresh,
    /// Enhanced route refresh (RFC 7313), code 70.
    EnhancedRouteRefresh,
    /// Graceful restart (RFC 4724), code 64.
    GracefulRestart {
        /// R bit: the sender has restarted.
        restart_state: bool,
        /// N bit (RFC 8538): graceful restart also applies to NOTIFICATIONs.
        notification: bool,
        /// Restart time in seconds (12 bits).
        restart_time: u16,
        /// Families whose routes are preserved.
        families: Vec<GrFamily>,
    },
    /// 4-octet AS numbers (RFC 6793), code 65.
    FourOctetAs {
        /// The sender's real AS.
        asn: u32,
    },
    /// Anything else, kept as bytes.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

const PARAM_CAPABILITIES: u8 = 2;
const CAP_MP: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GR: u8 = 64;
const CAP_AS4: u8 = 65;
const CAP_ENHANCED_RR: u8 = 70;

impl Open {
    /// An OPEN for `asn`, using AS_TRANS in the 2-octet field when needed.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Self {
        Self {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's AS: the 4-octet capability if present, else "My AS".
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// The AS in the 4-octet AS capability, if sent.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs { asn } => Some(*asn),
            _ => None,
        })
    }

    /// Families announced with the multiprotocol capability; IPv4 unicast
    /// alone when none is sent (RFC 4760 §8).
    pub fn families(&self) -> Vec<Family> {
        let mut any = false;
        let mut out = Vec::new();
        for c in &self.capabilities {
            if let Capability::Multiprotocol { afi, safi } = c {
                any = true;
                if let Some(f) = Family::from_afi_safi(*afi, *safi)
                    && !out.contains(&f)
                {
                    out.push(f);
                }
            }
        }
        if !any {
            out.push(Family::Ipv4Unicast);
        }
        out
    }

    /// Whether the sender supports route refresh.
    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    /// The graceful restart capability, if sent.
    pub fn graceful_restart(&self) -> Option<&Capability> {
        self.capabilities
            .iter()
            .find(|c| matches!(c, Capability::GracefulRestart { .. }))
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let short = DecodeError::MalformedOpen {
            reason: "short fixed part",
        };
        let mut r = Reader::new(body);
        let version = r.u8().ok_or(short.clone())?;
        if version != 4 {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let my_as = r.u16().ok_or(short.clone())?;
        let hold_time = r.u16().ok_or(short.clone())?;
        let bgp_id = r.ipv4().ok_or(short.clone())?;
        let opt_len = r.u8().ok_or(short)?;
        if usize::from(opt_len) != r.remaining() {
            return Err(DecodeError::MalformedOpen {
                reason: "optional parameters length mismatch",
            });
        }
        let mut capabilities = Vec::new();
        while !r.is_empty() {
            let bad = DecodeError::MalformedOpen {
                reason: "truncated optional parameter",
            };
            let ty = r.u8().ok_or(bad.clone())?;
            let len = r.u8().ok_or(bad.clone())?;
            let value = r.take(usize::from(len)).ok_or(bad)?;
            if ty != PARAM_CAPABILITIES {
                return Err(DecodeError::UnsupportedOptionalParameter { param: ty });
            }
            decode_capabilities(value, &mut capabilities)?;
        }
        Ok(Self {
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(4);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let mut caps = Vec::new();
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        let mut params = Vec::new();
        if caps.len() <= 255 {
            // All capabilities in one parameter, as BIRD sends them.
            if !caps.is_empty() {
                params.push(PARAM_CAPABILITIES);
                params.push(u8::try_from(caps.len()).unwrap_or(u8::MAX));
                params.extend_from_slice(&caps);
            }
        } else {
            // Too many for one parameter: one parameter per capability.
            for c in &self.capabilities {
                let mut one = Vec::new();
                c.encode(&mut one);
                params.push(PARAM_CAPABILITIES);
                params.push(u8::try_from(one.len()).unwrap_or(u8::MAX));
                params.extend_from_slice(&one);
            }
        }
        out.push(u8::try_from(params.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&params);
    }
}

fn decode_capabilities(buf: &[u8], out: &mut Vec<Capability>) -> Result<(), DecodeError> {
    let bad = DecodeError::MalformedOpen {
        reason: "malformed capability",
    };
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let code = r.u8().ok_or(bad.clone())?;
        let len = r.u8().ok_or(bad.clone())?;
        let value = r.take(usize::from(len)).ok_or(bad.clone())?;
        let mut v = Reader::new(value);
        let cap = match (code, len) {
            (CAP_MP, 4) => {
                let afi = v.u16().ok_or(bad.clone())?;
                let _reserved = v.u8();
                let safi = v.u8().ok_or(bad.clone())?;
                Capability::Multiprotocol { afi, safi }
            }
            (CAP_ROUTE_REFRESH, 0) => Capability::RouteRefresh,
            (CAP_ENHANCED_RR, 0) => Capability::EnhancedRouteRefresh,
            (CAP_AS4, 4) => Capability::FourOctetAs {
                asn: v.u32().ok_or(bad.clone())?,
            },
            (CAP_GR, l) if l >= 2 && (l - 2) % 4 == 0 => {
                let head = v.u16().ok_or(bad.clone())?;
                let mut families = Vec::new();
                while !v.is_empty() {
                    let afi = v.u16().ok_or(bad.clone())?;
                    let safi = v.u8().ok_or(bad.clone())?;
                    let flags = v.u8().ok_or(bad.clone())?;
                    families.push(GrFamily {
                        afi,
                        safi,
                        forwarding: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart {
                    restart_state: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                }
            }
            // A known code with a wrong length is kept as unknown rather than
            // refusing the session: the capability is then simply not used.
            _ => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        };
        out.push(cap);
    }
    Ok(())
}

impl Capability {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&[CAP_MP, 4]);
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(0);
                out.push(*safi);
            }
            Self::RouteRefresh => out.extend_from_slice(&[CAP_ROUTE_REFRESH, 0]),
            Self::EnhancedRouteRefresh => out.extend_from_slice(&[CAP_ENHANCED_RR, 0]),
            Self::FourOctetAs { asn } => {
                out.extend_from_slice(&[CAP_AS4, 4]);
                out.extend_from_slice(&asn.to_be_bytes());
            }
            Self::GracefulRestart {
                restart_state,
                notification,
                restart_time,
                families,
            } => {
                out.push(CAP_GR);
                out.push(u8::try_from(2 + 4 * families.len()).unwrap_or(u8::MAX));
                let mut head = restart_time & 0x0fff;
                if *restart_state {
                    head |= 0x8000;
                }
                if *notification {
                    head |= 0x4000;
                }
                out.extend_from_slice(&head.to_be_bytes());
                for f in families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.push(f.safi);
                    out.push(if f.forwarding { 0x80 } else { 0 });
                }
            }
            Self::Unknown { code, value } => {
                out.push(*code);
                out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(value);
            }
        }
    }
}
