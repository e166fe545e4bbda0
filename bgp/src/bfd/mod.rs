//! BFD, Bidirectional Forwarding Detection (RFC 5880, single hop over UDP
//! as RFC 5881 says, asynchronous mode; no echo, no authentication, no
//! demand mode of our own): sub-second detection that the path to a BGP
//! peer is gone.
//!
//! ```text
//! packet.rs   the Control packet, pure: decode (every §6.8.6 check) / encode
//! session.rs  one session's state machine, sans-IO: Event in, Action out
//! driver.rs   tokio: UDP 3784 (IPv4, IPv6), TTL 255 both ways, timers,
//!             demultiplexing; Up/Down notices for the speaker
//! ```
//!
//! The speaker ([`crate::speaker`]) runs one session per peer whose
//! [`crate::config::PeerConfig::bfd`] is set: the BGP session may only come
//! up while BFD is Up, and BFD going Down takes it down at once (NOTIFICATION
//! Cease/BFD Down, routes withdrawn from the RIB and the kernel).

pub mod driver;
pub mod packet;
pub mod session;

use std::num::NonZeroU8;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use driver::{BfdError, BfdHandle, Notice, SessionStatus};
pub use packet::{ControlPacket, Diag, State};
pub use session::{Session, SessionConfig};

/// Smallest interval we accept, in milliseconds (FRR's minimum as well).
pub const MIN_INTERVAL_MS: u32 = 10;
/// Largest interval we accept, in milliseconds.
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// A peer's BFD settings (the `bfd` table of a peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdConfig {
    /// Desired Min TX Interval once Up, in milliseconds.
    #[serde(default = "default_interval")]
    pub min_tx_ms: u32,
    /// Required Min RX Interval, in milliseconds.
    #[serde(default = "default_interval")]
    pub min_rx_ms: u32,
    /// Detect Mult: packets missed before the session is declared down.
    #[serde(default = "default_multiplier")]
    pub multiplier: u8,
}

impl Default for BfdConfig {
    fn default() -> Self {
        Self {
            min_tx_ms: default_interval(),
            min_rx_ms: default_interval(),
            multiplier: default_multiplier(),
        }
    }
}

fn default_interval() -> u32 {
    300
}

fn default_multiplier() -> u8 {
    3
}

impl BfdConfig {
    /// The session configuration, or what is wrong (naming the key).
    pub fn session_config(&self) -> Result<SessionConfig, String> {
        for (key, v) in [("min_tx_ms", self.min_tx_ms), ("min_rx_ms", self.min_rx_ms)] {
            if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&v) {
                return Err(format!(
                    "bfd.{key} = {v}: must be {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS} ms"
                ));
            }
        }
        let detect_mult = NonZeroU8::new(self.multiplier)
            .ok_or_else(|| "bfd.multiplier must be at least 1".to_string())?;
        Ok(SessionConfig {
            desired_min_tx: Duration::from_millis(u64::from(self.min_tx_ms)),
            required_min_rx: Duration::from_millis(u64::from(self.min_rx_ms)),
            detect_mult,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_300_ms_both_ways_and_a_multiplier_of_3() {
        let c = BfdConfig::default().session_config().unwrap();
        assert_eq!(c.desired_min_tx, Duration::from_millis(300));
        assert_eq!(c.required_min_rx, Duration::from_millis(300));
        assert_eq!(c.detect_mult.get(), 3);
    }

    #[test]
    fn intervals_out_of_range_and_a_zero_multiplier_are_refused_by_key() {
        let bad = |c: BfdConfig| c.session_config().unwrap_err();
        assert!(
            bad(BfdConfig {
                min_tx_ms: 5,
                ..Default::default()
            })
            .contains("bfd.min_tx_ms")
        );
        assert!(
            bad(BfdConfig {
                min_rx_ms: 60_001,
                ..Default::default()
            })
            .contains("bfd.min_rx_ms")
        );
        assert!(
            bad(BfdConfig {
                multiplier: 0,
                ..Default::default()
            })
            .contains("bfd.multiplier")
        );
    }
}
