//! The BFD Control packet (RFC 5880 §4.1), pure: [`ControlPacket::decode`]
//! checks every field that §6.8.6 says must be checked before a packet may
//! touch a session, [`ControlPacket::encode`] writes the 24 bytes we send.
//!
//! No authentication (we never set the A bit and refuse packets that do, as
//! §6.8.6 requires of a session without authentication), no echo.

use std::num::{NonZeroU8, NonZeroU32};

/// Length of a Control packet without an authentication section.
pub const LEN: usize = 24;
/// Minimum length when the A bit is set (the authentication section
/// carries at least its type and length).
const LEN_AUTH: usize = 26;

/// Session states as carried in the Sta field (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// 0: administratively held down.
    AdminDown,
    /// 1: down.
    Down,
    /// 2: the remote is heard, waiting for it to hear us.
    Init,
    /// 3: both sides hear each other.
    Up,
}

impl State {
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::AdminDown => 0,
            Self::Down => 1,
            Self::Init => 2,
            Self::Up => 3,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Diagnostic codes (RFC 5880 §4.1): why the sender last left Up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Diag {
    /// 0: No Diagnostic.
    None,
    /// 1: Control Detection Time Expired.
    DetectionTimeExpired,
    /// 2: Echo Function Failed.
    EchoFailed,
    /// 3: Neighbor Signaled Session Down.
    NeighborDown,
    /// 4: Forwarding Plane Reset.
    ForwardingReset,
    /// 5: Path Down.
    PathDown,
    /// 6: Concatenated Path Down.
    ConcatenatedPathDown,
    /// 7: Administratively Down.
    AdminDown,
    /// 8: Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// 9-31: reserved; kept so that a packet re-encodes as received.
    Reserved(u8),
}

impl Diag {
    fn from_bits(b: u8) -> Self {
        match b & 0x1f {
            0 => Self::None,
            1 => Self::DetectionTimeExpired,
            2 => Self::EchoFailed,
            3 => Self::NeighborDown,
            4 => Self::ForwardingReset,
            5 => Self::PathDown,
            6 => Self::ConcatenatedPathDown,
            7 => Self::AdminDown,
            8 => Self::ReverseConcatenatedPathDown,
            n => Self::Reserved(n),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::DetectionTimeExpired => 1,
            Self::EchoFailed => 2,
            Self::NeighborDown => 3,
            Self::ForwardingReset => 4,
            Self::PathDown => 5,
            Self::ConcatenatedPathDown => 6,
            Self::AdminDown => 7,
            Self::ReverseConcatenatedPathDown => 8,
            Self::Reserved(n) => n & 0x1f,
        }
    }
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "no diagnostic",
            Self::DetectionTimeExpired => "control detection time expired",
            Self::EchoFailed => "echo function failed",
            Self::NeighborDown => "neighbor signaled session down",
            Self::ForwardingReset => "forwarding plane reset",
            Self::PathDown => "path down",
            Self::ConcatenatedPathDown => "concatenated path down",
            Self::AdminDown => "administratively down",
            Self::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Self::Reserved(n) => return write!(f, "reserved diagnostic {n}"),
        })
    }
}

/// Why a received packet is discarded (RFC 5880 §6.8.6). The packet never
/// reaches a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the smallest Control packet.
    #[error("truncated BFD packet: {len} bytes, need {LEN}")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The Vers field is not 1.
    #[error("BFD version {version}, expected 1")]
    BadVersion {
        /// The Vers field.
        version: u8,
    },
    /// The Length field is below the minimum (24, or 26 with the A bit).
    #[error("BFD length field {length} below the minimum {min}")]
    LengthTooSmall {
        /// The Length field.
        length: u8,
        /// The minimum for the A bit received.
        min: usize,
    },
    /// The Length field is more than the bytes received.
    #[error("BFD length field {length} exceeds the {len} bytes received")]
    LengthExceedsPayload {
        /// The Length field.
        length: u8,
        /// Bytes received.
        len: usize,
    },
    /// Detect Mult is zero.
    #[error("BFD detect multiplier is zero")]
    ZeroDetectMult,
    /// The Multipoint bit is set.
    #[error("BFD multipoint bit set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("BFD My Discriminator is zero")]
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while the sender is Init or Up.
    #[error("BFD Your Discriminator is zero in state {state}")]
    ZeroYourDiscriminator {
        /// The sender's state.
        state: State,
    },
    /// The A bit is set; we use no authentication, so §6.8.6 says discard.
    #[error("BFD packet is authenticated (we use no authentication)")]
    Authenticated,
    /// Poll and Final both set (RFC 5880 §6.5: never in one packet).
    #[error("BFD Poll and Final bits both set")]
    PollAndFinal,
}

/// A BFD Control packet (RFC 5880 §4.1). Intervals are in microseconds, as
/// on the wire.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       My Discriminator                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                      Your Discriminator                       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Desired Min TX Interval                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                   Required Min RX Interval                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                 Required Min Echo RX Interval                 |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   (Auth Type  |   Auth Len    |  Authentication Data...)      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The version (1), the Length (24), the A and M bits (0) are implied: a
/// packet with other values never decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    /// Diag: why the sender last left Up.
    pub diag: Diag,
    /// Sta: the sender's state.
    pub state: State,
    /// P: the sender asks for verification of a parameter change.
    pub poll: bool,
    /// F: the answer to a Poll.
    pub final_: bool,
    /// C: the sender's BFD does not share fate with its control plane.
    pub cpi: bool,
    /// D: the sender wants Demand mode (we never set it).
    pub demand: bool,
    /// Detect Mult: the sender's detection time multiplier.
    pub detect_mult: NonZeroU8,
    /// My Discriminator: the sender's id for the session.
    pub my_disc: NonZeroU32,
    /// Your Discriminator: the receiver's id, 0 while unknown.
    pub your_disc: u32,
    /// Desired Min TX Interval (µs).
    pub desired_min_tx: u32,
    /// Required Min RX Interval (µs); 0: send me nothing.
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval (µs); we send 0 (no echo).
    pub required_min_echo_rx: u32,
}

const P: u8 = 0x20;
const F: u8 = 0x10;
const C: u8 = 0x08;
const A: u8 = 0x04;
const D: u8 = 0x02;
const M: u8 = 0x01;

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}

impl ControlPacket {
    /// Decodes and validates one UDP payload. Bytes beyond the Length field
    /// (padding) are ignored.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let (Some(&b0), Some(&b1), Some(&mult), Some(&length)) =
            (b.first(), b.get(1), b.get(2), b.get(3))
        else {
            return Err(DecodeError::Truncated { len: b.len() });
        };
        let version = b0 >> 5;
        if version != 1 {
            return Err(DecodeError::BadVersion { version });
        }
        let min = if b1 & A != 0 { LEN_AUTH } else { LEN };
        if usize::from(length) < min {
            return Err(DecodeError::LengthTooSmall { length, min });
        }
        if usize::from(length) > b.len() {
            return Err(DecodeError::LengthExceedsPayload {
                length,
                len: b.len(),
            });
        }
        let detect_mult = NonZeroU8::new(mult).ok_or(DecodeError::ZeroDetectMult)?;
        if b1 & M != 0 {
            return Err(DecodeError::Multipoint);
        }
        let my_disc = NonZeroU32::new(be32(b, 4)).ok_or(DecodeError::ZeroMyDiscriminator)?;
        let your_disc = be32(b, 8);
        let state = State::from_bits(b1 >> 6);
        if your_disc == 0 && matches!(state, State::Init | State::Up) {
            return Err(DecodeError::ZeroYourDiscriminator { state });
        }
        if b1 & A != 0 {
            return Err(DecodeError::Authenticated);
        }
        if b1 & P != 0 && b1 & F != 0 {
            return Err(DecodeError::PollAndFinal);
        }
        Ok(Self {
            diag: Diag::from_bits(b0),
            state,
            poll: b1 & P != 0,
            final_: b1 & F != 0,
            cpi: b1 & C != 0,
            demand: b1 & D != 0,
            detect_mult,
            my_disc,
            your_disc,
            desired_min_tx: be32(b, 12),
            required_min_rx: be32(b, 16),
            required_min_echo_rx: be32(b, 20),
        })
    }

    /// The 24 bytes on the wire.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | self.diag.bits();
        b[1] = (self.state.bits() << 6)
            | if self.poll { P } else { 0 }
            | if self.final_ { F } else { 0 }
            | if self.cpi { C } else { 0 }
            | if self.demand { D } else { 0 };
        b[2] = self.detect_mult.get();
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.get().to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests;
