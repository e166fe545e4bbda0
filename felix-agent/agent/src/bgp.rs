//! The agent's BGP: the embedded `tabby-bgp` speaker announces this node's
//! blocks and learns the other nodes' (iBGP full mesh built from the Node
//! objects, next hop = the other node, no encapsulation); a dedicated thread
//! installs what it learns as kernel routes with protocol 151.
//!
//! Import and export policy per neighbour comes from [`crate::bgp_policy`];
//! here the node's connected subnets are added to it (read from the kernel
//! each time the intent is applied), and learned routes go into the kernel
//! with tabby's metric, never over a route of another owner.
//!
//! Graceful restart: when the agent starts and finds its own BGP routes
//! still in the kernel (it was restarted), it says so in its OPEN; peers
//! keep its routes, and the leftovers are kept until the speaker has
//! re-converged, then swept.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use tabby_bgp::bfd::BfdConfig;
use tabby_bgp::config::{Config, PeerConfig};
use tabby_bgp::fib::FibInstaller;
use tabby_bgp::policy::{PeerPolicy, PrefixCommunities};
use tabby_bgp::speaker::{RibEvent, Speaker, SpeakerHandle};
use tabby_common::naming::RTPROT_TABBY_BGP;
use tabby_crds::password::Password;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

/// The AS of every node until a BGPConfiguration says otherwise.
pub const DEFAULT_ASN: u32 = 64512;

/// Errors starting BGP.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// The kernel route installer could not start.
    #[error("BGP route installer: {0}")]
    Fib(String),
    /// The speaker could not start.
    #[error("BGP speaker: {0}")]
    Speaker(String),
}

/// One BGP neighbour the agent wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIntent {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its AS.
    pub asn: u32,
    /// TCP port to connect to.
    pub port: u16,
    /// TCP MD5 password (never printed: `Debug` shows `<redacted>`).
    pub password: Option<Password>,
    /// A route reflector client of this node.
    pub rr_client: bool,
    /// Another node of the mesh (else an external peer from a BGPPeer).
    pub mesh: bool,
    /// What it may send us and be sent (the driver adds the node's
    /// connected subnets to an external peer's protected ranges).
    pub policy: PeerPolicy,
    /// BFD on this session (`BGPPeer.spec.bfd`, or
    /// `BGPConfiguration.spec.nodeToNodeMeshBFD` for the mesh).
    pub bfd: Option<BfdConfig>,
}

/// The speaker's BFD settings from a `bfd` / `nodeToNodeMeshBFD` object,
/// defaults filled in; an error names the field (`field` is its path).
pub fn bfd_config(field: &str, spec: &tabby_crds::BFDSpec) -> Result<BfdConfig, String> {
    let d = BfdConfig::default();
    let c = BfdConfig {
        min_tx_ms: spec.min_tx_ms.unwrap_or(d.min_tx_ms),
        min_rx_ms: spec.min_rx_ms.unwrap_or(d.min_rx_ms),
        multiplier: spec.multiplier.unwrap_or(d.multiplier),
    };
    let range = tabby_bgp::bfd::MIN_INTERVAL_MS..=tabby_bgp::bfd::MAX_INTERVAL_MS;
    for (key, v) in [("minTxMs", c.min_tx_ms), ("minRxMs", c.min_rx_ms)] {
        if !range.contains(&v) {
            return Err(format!(
                "{field}.{key} = {v}: must be {}..={} (milliseconds)",
                range.start(),
                range.end()
            ));
        }
    }
    if c.multiplier == 0 {
        return Err(format!("{field}.multiplier must be at least 1"));
    }
    Ok(c)
}

/// What the agent wants BGP to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BgpIntent {
    /// This node's AS.
    pub asn: u32,
    /// Prefixes to announce (this node's blocks).
    pub announce: Vec<IpNet>,
    /// Neighbours: the other nodes (full mesh) and external peers.
    pub peers: Vec<PeerIntent>,
    /// Communities for the announced prefixes, by CIDR.
    pub communities: Vec<PrefixCommunities>,
}

fn peer_configs(peers: &[PeerIntent], connected: &[IpNet]) -> Vec<PeerConfig> {
    peers
        .iter()
        .map(|p| {
            let mut c = PeerConfig::new(p.address, p.asn);
            c.port = p.port;
            c.password = p.password.as_ref().map(|p| p.expose().to_string());
            c.rr_client = p.rr_client;
            // Upstream routers get this node's blocks only: the other
            // nodes announce their own, and a node must never become the
            // path to another node's pods. Clients of a node acting as
            // route reflector get the reflected routes, as they asked.
            c.export_local_only = !p.mesh && !p.rr_client;
            c.bfd = p.bfd;
            c.policy = crate::bgp_policy::with_connected(&p.policy, connected);
            c
        })
        .collect()
}

/// A running speaker and its route installer.
pub struct Bgp {
    handle: SpeakerHandle,
    applied: BgpIntent,
    /// The peer configurations last given to the speaker.
    applied_peers: Vec<PeerConfig>,
}

impl std::fmt::Debug for Bgp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bgp")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl Bgp {
    /// Starts the speaker with `router_id` (the node's IPv4 address),
    /// listening on `port`, and the installer thread.
    /// Peers and announcements are part of the first configuration: a
    /// restarting speaker must know its peers before it decides it has
    /// re-converged and sweeps the routes it kept.
    pub async fn start(
        router_id: Ipv4Addr,
        port: u16,
        intent: &BgpIntent,
    ) -> Result<Bgp, BgpError> {
        // The installer owns a netlink socket, so it lives on one thread;
        // it first reports whether routes of a previous run are there.
        let (left_tx, left_rx) = oneshot::channel::<Result<usize, String>>();
        let (sub_tx, sub_rx) = oneshot::channel::<tokio::sync::mpsc::Receiver<RibEvent>>();
        std::thread::Builder::new()
            .name("bgp-fib".into())
            .spawn(move || {
                let mut fib = match FibInstaller::new(RTPROT_TABBY_BGP, 254) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = left_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = left_tx.send(Ok(fib.leftovers()));
                let Ok(mut rx) = sub_rx.blocking_recv() else {
                    return;
                };
                while let Some(ev) = rx.blocking_recv() {
                    let res = match ev {
                        RibEvent::Routes(changes) => fib.apply(&changes).map(|_| ()),
                        RibEvent::Synced => fib.sweep_leftovers().map(|_| ()),
                    };
                    if let Err(e) = res {
                        error!(error = %e, "installing BGP routes");
                    }
                }
            })
            .map_err(|e| BgpError::Fib(e.to_string()))?;
        let leftovers = left_rx
            .await
            .map_err(|_| BgpError::Fib("installer thread ended".into()))?
            .map_err(BgpError::Fib)?;

        let asn = intent.asn;
        let mut cfg = Config::new(router_id, asn);
        cfg.listen = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)];
        cfg.graceful_restart.restarting = leftovers > 0;
        cfg.announce = intent.announce.clone();
        cfg.communities = intent.communities.clone();
        let connected = tabby_bgp::iface::connected();
        cfg.peers = peer_configs(&intent.peers, &connected);
        let applied_peers = cfg.peers.clone();
        let handle = Speaker::start(cfg)
            .await
            .map_err(|e| BgpError::Speaker(e.to_string()))?;
        let rx = handle
            .subscribe_routes()
            .map_err(|e| BgpError::Speaker(e.to_string()))?;
        sub_tx
            .send(rx)
            .map_err(|_| BgpError::Fib("installer thread ended".into()))?;
        info!(%router_id, asn, port, restarting = leftovers > 0, leftovers, "BGP speaker started");
        Ok(Bgp {
            handle,
            applied: intent.clone(),
            applied_peers,
        })
    }

    /// The AS the speaker runs in (changing it needs a new speaker).
    pub fn asn(&self) -> u32 {
        self.applied.asn
    }

    /// Brings peers and announcements to `intent` (no-op when unchanged).
    pub async fn apply(&mut self, intent: &BgpIntent) {
        if intent.announce != self.applied.announce {
            match self.handle.set_announced(intent.announce.clone()) {
                Ok(()) => info!(announce = ?intent.announce, "BGP announcements"),
                Err(e) => {
                    warn!(error = %e, "setting BGP announcements");
                    return;
                }
            }
        }
        if intent.communities != self.applied.communities {
            if let Err(e) = self.handle.set_communities(intent.communities.clone()) {
                warn!(error = %e, "setting BGP communities");
                return;
            }
            info!(communities = ?intent.communities, "BGP communities");
        }
        // The connected subnets are part of the policy: read them again
        // (interfaces and addresses change under a running agent).
        let configs = peer_configs(&intent.peers, &tabby_bgp::iface::connected());
        if configs != self.applied_peers {
            let addrs: Vec<IpAddr> = intent.peers.iter().map(|p| p.address).collect();
            match self.handle.set_peers(configs.clone()).await {
                Ok(()) => info!(peers = ?addrs, "BGP peers"),
                Err(e) => {
                    warn!(error = %e, "setting BGP peers");
                    return;
                }
            }
            self.applied_peers = configs;
        }
        self.applied = intent.clone();
    }

    /// Stops without a NOTIFICATION, so peers keep our routes (graceful
    /// restart) while the agent is away.
    pub async fn stop(&self) {
        let _ = self.handle.shutdown(true).await;
    }

    /// Stops with a NOTIFICATION: peers drop our routes at once (the AS
    /// changed, the old sessions are wrong).
    pub async fn stop_hard(&self) {
        let _ = self.handle.shutdown(false).await;
    }

    /// Operational state as JSON, for tools.
    pub async fn status_json(&self) -> Option<serde_json::Value> {
        let s = self.handle.status().await.ok()?;
        serde_json::to_value(&s).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bfd_object_means_the_defaults_and_bad_values_are_refused_by_field() {
        let spec = |tx, rx, m| tabby_crds::BFDSpec {
            min_tx_ms: tx,
            min_rx_ms: rx,
            multiplier: m,
        };
        assert_eq!(
            bfd_config("spec.bfd", &spec(None, None, None)),
            Ok(BfdConfig::default())
        );
        assert_eq!(
            bfd_config("spec.bfd", &spec(Some(100), None, Some(5))),
            Ok(BfdConfig {
                min_tx_ms: 100,
                min_rx_ms: 300,
                multiplier: 5
            })
        );
        let e = bfd_config("spec.nodeToNodeMeshBFD", &spec(None, Some(1), None)).unwrap_err();
        assert!(e.starts_with("spec.nodeToNodeMeshBFD.minRxMs = 1"), "{e}");
        let e = bfd_config("spec.bfd", &spec(None, None, Some(0))).unwrap_err();
        assert!(e.contains("spec.bfd.multiplier"), "{e}");
    }
}
