//! Decode errors and how each one is answered on the wire (RFC 4271 §6,
//! RFC 7606).

use super::notification::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Cease subcodes (RFC 4486).
pub mod cease {
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Administrative Reset.
    pub const ADMIN_RESET: u8 = 4;
    /// Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Connection Collision Resolution.
    pub const COLLISION: u8 = 7;
    /// BFD Down (RFC 9384).
    pub const BFD_DOWN: u8 = 10;
}

/// Why a message could not be accepted. Every variant maps to the
/// NOTIFICATION that must be sent before the session is reset; errors that
/// RFC 7606 downgrades to treat-as-withdraw or attribute-discard never reach
/// this type (see [`super::update::Update::treat_as_withdraw`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 16-byte marker is not all ones.
    #[error("connection not synchronized: bad marker")]
    BadMarker,
    /// Length field out of range for the message type.
    #[error("bad message length {len}")]
    BadLength {
        /// The length field as received.
        len: u16,
    },
    /// Unknown message type.
    #[error("bad message type {ty}")]
    BadType {
        /// The type octet as received.
        ty: u8,
    },
    /// The buffer is shorter than the length field says.
    #[error("truncated message: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header announces.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// OPEN version is not 4.
    #[error("unsupported BGP version {version}")]
    UnsupportedVersion {
        /// Version received.
        version: u8,
    },
    /// OPEN peer AS does not match the configuration.
    #[error("bad peer AS {asn}")]
    BadPeerAs {
        /// AS received.
        asn: u32,
    },
    /// OPEN BGP identifier is zero or equal to ours.
    #[error("bad BGP identifier {id}")]
    BadBgpId {
        /// Identifier received.
        id: std::net::Ipv4Addr,
    },
    /// OPEN hold time 1 or 2 seconds.
    #[error("unacceptable hold time {hold_time}")]
    UnacceptableHoldTime {
        /// Hold time received.
        hold_time: u16,
    },
    /// Unsupported optional parameter in OPEN.
    #[error("unsupported optional parameter {param}")]
    UnsupportedOptionalParameter {
        /// The parameter type.
        param: u8,
    },
    /// OPEN body is structurally broken.
    #[error("malformed OPEN: {reason}")]
    MalformedOpen {
        /// What was wrong.
        reason: &'static str,
    },
    /// Withdrawn/attribute lengths inconsistent with the message (RFC 7606 §5.3 session reset).
    #[error("malformed attribute list: {reason}")]
    MalformedAttributeList {
        /// What was wrong.
        reason: &'static str,
    },
    /// A well-known attribute we do not recognise.
    #[error("unrecognized well-known attribute {code}")]
    UnrecognizedWellKnown {
        /// Attribute type code.
        code: u8,
    },
    /// NLRI or withdrawn routes field cannot be parsed (session reset per RFC 7606 §5.3).
    #[error("invalid network field: {reason}")]
    InvalidNetworkField {
        /// What was wrong.
        reason: &'static str,
    },
    /// MP_REACH/MP_UNREACH cannot be parsed (RFC 7606 §7.11: session reset).
    #[error("malformed MP attribute: {reason}")]
    MalformedMp {
        /// What was wrong.
        reason: &'static str,
    },
    /// NOTIFICATION shorter than its fixed part.
    #[error("malformed NOTIFICATION")]
    MalformedNotification,
    /// ROUTE-REFRESH with a wrong length.
    #[error("malformed ROUTE-REFRESH")]
    MalformedRouteRefresh,
}

impl DecodeError {
    /// The NOTIFICATION (code, subcode, data) this error must be answered with.
    pub fn to_notification(&self) -> Notification {
        let (code, subcode, data): (u8, u8, Vec<u8>) = match self {
            Self::BadMarker => (code::HEADER, 1, vec![]),
            Self::BadLength { len } => (code::HEADER, 2, len.to_be_bytes().to_vec()),
            Self::Truncated { need, .. } => {
                let len = u16::try_from(*need).unwrap_or(u16::MAX);
                (code::HEADER, 2, len.to_be_bytes().to_vec())
            }
            Self::BadType { ty } => (code::HEADER, 3, vec![*ty]),
            // RFC 4271 §6.2: data is the largest version we support.
            Self::UnsupportedVersion { .. } => (code::OPEN, 1, 4u16.to_be_bytes().to_vec()),
            Self::BadPeerAs { .. } => (code::OPEN, 2, vec![]),
            Self::BadBgpId { .. } => (code::OPEN, 3, vec![]),
            Self::UnsupportedOptionalParameter { .. } => (code::OPEN, 4, vec![]),
            Self::UnacceptableHoldTime { .. } => (code::OPEN, 6, vec![]),
            Self::MalformedOpen { .. } => (code::OPEN, 0, vec![]),
            Self::MalformedAttributeList { .. } => (code::UPDATE, 1, vec![]),
            Self::UnrecognizedWellKnown { code: c } => (code::UPDATE, 2, vec![*c]),
            Self::InvalidNetworkField { .. } => (code::UPDATE, 10, vec![]),
            Self::MalformedMp { .. } => (code::UPDATE, 9, vec![]),
            Self::MalformedNotification => (code::HEADER, 2, vec![]),
            Self::MalformedRouteRefresh => (code::ROUTE_REFRESH, 1, vec![]),
        };
        Notification {
            code,
            subcode,
            data,
        }
    }
}

impl From<DecodeError> for Notification {
    fn from(e: DecodeError) -> Self {
        e.to_notification()
    }
}

impl From<&DecodeError> for Notification {
    fn from(e: &DecodeError) -> Self {
        e.to_notification()
    }
}
