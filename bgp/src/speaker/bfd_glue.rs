//! The speaker's side of BFD: a peer with `bfd` gets a BFD session, and
//! the session's Up/Down notices start and stop its BGP session (RFC 5882
//! §4.3). Kept apart from the rest of the driver so that BFD stays one
//! block to read.

use std::net::IpAddr;

use tracing::warn;

use super::{BfdStatus, Core};
use crate::bfd::{self, BfdHandle, Notice};
use crate::fsm::Event;

impl Core {
    /// Starts the BFD session of a peer that wants one (and the driver with
    /// the first); false when the peer has no BFD. The BGP session then
    /// waits for BFD Up.
    pub(super) fn start_bfd(&mut self, addr: IpAddr) -> bool {
        let Some(p) = self.peers.iter().find(|(a, _)| *a == addr).map(|(_, p)| p) else {
            return false;
        };
        let Some(cfg) = p.cfg.bfd.and_then(|b| b.session_config().ok()) else {
            return false;
        };
        let local = p.cfg.local_address;
        if self.bfd.is_none()
            && let Some(tx) = self.bfd_notices.clone()
        {
            match BfdHandle::start(tx) {
                Ok(h) => self.bfd = Some(h),
                Err(e) => warn!(error = %e, "cannot start BFD"),
            }
        }
        let started = self
            .bfd
            .as_ref()
            .is_some_and(|b| b.add(addr, local, cfg).is_ok());
        if let Some(p) = self.peer_mut(addr) {
            p.bfd = Some(BfdStatus {
                state: bfd::State::Down,
                diag: bfd::Diag::None,
            });
            p.last_error = Some(if started {
                "waiting for BFD to come Up".into()
            } else {
                "BFD could not start (see the log): the session stays down".into()
            });
        }
        true
    }

    /// BFD Up lets the BGP session start; BFD Down takes it down at once,
    /// like a Hold Timer expiry (RFC 5882 §4.3), its routes withdrawn.
    pub(super) fn bfd_notice(&mut self, n: Notice) {
        match n {
            Notice::Up(addr) => {
                let Some(p) = self.peer_mut(addr) else {
                    return;
                };
                let Some(st) = p.bfd.as_mut() else {
                    return;
                };
                st.state = bfd::State::Up;
                self.fsm_event(addr, Event::ManualStart);
            }
            Notice::Down {
                peer,
                diag,
                remote_admin_down,
            } => {
                let Some(p) = self.peer_mut(peer) else {
                    return;
                };
                let Some(st) = p.bfd.as_mut() else {
                    return;
                };
                *st = BfdStatus {
                    state: if remote_admin_down {
                        bfd::State::AdminDown
                    } else {
                        bfd::State::Down
                    },
                    diag,
                };
                // RFC 5882 §3.2: a peer that says AdminDown stopped BFD on
                // purpose (a restart, say); that is no path failure.
                if !remote_admin_down {
                    warn!(%peer, %diag, "BFD down: taking the BGP session down");
                    self.fsm_event(peer, Event::BfdDown);
                }
            }
        }
    }
}
