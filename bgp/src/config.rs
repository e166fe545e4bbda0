//! Speaker configuration: one value for the library API and the TOML file
//! of the standalone binary (serde, unknown keys refused, defaults filled).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::packet::Family;
use crate::policy::{PeerPolicy, PrefixCommunities};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("parsing {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: toml::de::Error,
    },
    /// A semantic problem.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The speaker's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS number.
    pub asn: u32,
    /// Addresses to accept BGP connections on; empty to accept none.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Proposed hold time in seconds.
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Seconds between connection attempts.
    #[serde(default = "default_connect_retry")]
    pub connect_retry: u64,
    /// Seconds to wait before restarting a session after an error.
    #[serde(default = "default_idle_hold")]
    pub idle_hold: u64,
    /// Route reflector cluster ID (defaults to the router ID).
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// LOCAL_PREF given to routes that carry none.
    #[serde(default = "default_local_pref")]
    pub local_pref: u32,
    /// Install every equally good next hop (ECMP).
    #[serde(default = "yes")]
    pub multipath: bool,
    /// Our IPv6 next hop for IPv6 routes sent over IPv4 sessions.
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Prefixes this speaker originates.
    #[serde(default)]
    pub announce: Vec<IpNet>,
    /// Communities attached to the prefixes we originate, by CIDR.
    #[serde(default)]
    pub communities: Vec<PrefixCommunities>,
    /// Graceful restart (RFC 4724).
    #[serde(default)]
    pub graceful_restart: GracefulRestart,
    /// Kernel route installation (standalone binary).
    #[serde(default)]
    pub fib: Fib,
    /// Unix socket serving `tabby-bgp status` (standalone binary).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Peers.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// Graceful restart settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestart {
    /// Advertise the capability and act as helper and restarting speaker.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Restart time we advertise, in seconds (at most 4095); also how long,
    /// after our own start, we wait for End-of-RIB before dropping leftover
    /// kernel routes.
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
    /// Seconds to keep a restarted peer's stale routes once its session is
    /// back, if End-of-RIB never comes.
    #[serde(default = "default_stale_time")]
    pub stale_time: u64,
    /// We are restarting (R and F bits set). The binary sets this when it
    /// finds its own routes in the kernel at start.
    #[serde(default)]
    pub restarting: bool,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        Self {
            enabled: true,
            restart_time: default_restart_time(),
            stale_time: default_stale_time(),
            restarting: false,
        }
    }
}

/// Kernel route installation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fib {
    /// Install best routes into the kernel.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `rtm_protocol` marking our routes; only routes with it are touched.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// Routing table.
    #[serde(default = "default_table")]
    pub table: u32,
    /// Metric of our routes; a route of another owner with the same prefix
    /// and metric is never replaced.
    #[serde(default = "default_metric")]
    pub metric: u32,
}

impl Default for Fib {
    fn default() -> Self {
        Self {
            enabled: true,
            protocol: default_protocol(),
            table: default_table(),
            metric: default_metric(),
        }
    }
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS (equal to ours for iBGP).
    pub asn: u32,
    /// TCP port to connect to.
    #[serde(default = "default_port")]
    pub port: u16,
    /// TCP MD5 password (RFC 2385).
    #[serde(default)]
    pub password: Option<String>,
    /// This peer is our route reflector client.
    #[serde(default)]
    pub rr_client: bool,
    /// Never connect; wait for the peer to connect.
    #[serde(default)]
    pub passive: bool,
    /// Advertise ourselves as next hop also to this iBGP peer.
    #[serde(default)]
    pub next_hop_self: bool,
    /// Hold time for this peer (defaults to the global one).
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// Local address to connect from.
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// Families to negotiate.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Send our link-local IPv6 address next to the global next hop
    /// (RFC 2545) on this eBGP session. Off by default: FRR without zebra
    /// cannot use it and resets the session.
    #[serde(default)]
    pub link_local_next_hop: bool,
    /// Send this peer only our own prefixes, never routes learned from
    /// other peers (a node towards an upstream router).
    #[serde(default)]
    pub export_local_only: bool,
    /// BFD with this peer (RFC 5880/5881); `None`: no BFD. With BFD the
    /// session comes up only while BFD is Up and goes down when BFD does.
    #[serde(default)]
    pub bfd: Option<crate::bfd::BfdConfig>,
    /// Import and export policy (library only; the binary accepts all).
    /// Changing it does not restart the session.
    #[serde(skip)]
    pub policy: PeerPolicy,
}

impl PeerConfig {
    /// A peer with defaults for everything but address and AS.
    pub fn new(address: IpAddr, asn: u32) -> Self {
        Self {
            address,
            asn,
            port: default_port(),
            password: None,
            rr_client: false,
            passive: false,
            next_hop_self: false,
            hold_time: None,
            local_address: None,
            families: default_families(),
            link_local_next_hop: false,
            export_local_only: false,
            bfd: None,
            policy: PeerPolicy::default(),
        }
    }

    /// Whether `other` describes the same session (everything but the
    /// policy, which can change under a running session).
    pub fn same_session(&self, other: &PeerConfig) -> bool {
        let strip = |c: &PeerConfig| PeerConfig {
            policy: PeerPolicy::default(),
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

impl Config {
    /// A configuration with defaults for everything but identity.
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        Self {
            router_id,
            asn,
            listen: default_listen(),
            hold_time: default_hold_time(),
            connect_retry: default_connect_retry(),
            idle_hold: default_idle_hold(),
            cluster_id: None,
            local_pref: default_local_pref(),
            multipath: true,
            next_hop_v6: None,
            announce: Vec::new(),
            communities: Vec::new(),
            graceful_restart: GracefulRestart::default(),
            fib: Fib::default(),
            control_socket: None,
            peers: Vec::new(),
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.router_id.is_unspecified() {
            return Err(ConfigError::Invalid("router_id must not be 0.0.0.0".into()));
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(ConfigError::Invalid(
                "hold_time must be 0 or at least 3".into(),
            ));
        }
        if self.graceful_restart.restart_time > 4095 {
            return Err(ConfigError::Invalid(
                "graceful_restart.restart_time is at most 4095".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if !seen.insert(p.address) {
                return Err(ConfigError::Invalid(format!(
                    "peer {} listed twice",
                    p.address
                )));
            }
            if let Some(b) = &p.bfd {
                b.session_config()
                    .map_err(|e| ConfigError::Invalid(format!("peer {}: {e}", p.address)))?;
            }
            if p.password.as_ref().is_some_and(|k| k.len() > 80) {
                return Err(ConfigError::Invalid(format!(
                    "peer {}: password longer than 80 bytes",
                    p.address
                )));
            }
        }
        Ok(())
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 179))]
}
fn default_hold_time() -> u16 {
    90
}
fn default_connect_retry() -> u64 {
    5
}
fn default_idle_hold() -> u64 {
    1
}
fn default_local_pref() -> u32 {
    100
}
fn default_restart_time() -> u16 {
    120
}
fn default_stale_time() -> u64 {
    360
}
fn default_protocol() -> u8 {
    151
}
fn default_table() -> u32 {
    254
}
fn default_metric() -> u32 {
    crate::fib::DEFAULT_METRIC
}
fn default_port() -> u16 {
    179
}
fn default_families() -> Vec<Family> {
    Family::ALL.to_vec()
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_file_parses_with_defaults_filled_in() {
        let cfg = Config::from_toml(
            r#"
            router_id = "10.0.0.1"
            asn = 65001
            listen = ["0.0.0.0:1179"]
            announce = ["10.1.0.0/26", "fd00:1::/64"]
            control_socket = "/run/tabby-bgp.sock"
            [fib]
            protocol = 151
            [[peers]]
            address = "10.0.0.2"
            asn = 65002
            password = "s3cret"
            [[peers]]
            address = "10.0.0.3"
            asn = 65001
            rr_client = true
            passive = true
            families = ["ipv4"]
            "#,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(cfg.hold_time, 90);
        assert!(cfg.graceful_restart.enabled);
        assert_eq!(cfg.peers[0].port, 179);
        assert_eq!(cfg.peers[0].families, Family::ALL.to_vec());
        assert_eq!(cfg.peers[1].families, vec![Family::Ipv4Unicast]);
        assert!(cfg.peers[1].rr_client);
        assert_eq!(cfg.announce.len(), 2);
    }

    #[test]
    fn a_peer_bfd_table_fills_defaults_and_checks_its_values() {
        let path = std::path::Path::new("t.toml");
        let base =
            "router_id = \"10.0.0.1\"\nasn = 1\n[[peers]]\naddress = \"10.0.0.2\"\nasn = 2\n";
        let cfg =
            Config::from_toml(&format!("{base}[peers.bfd]\nmin_rx_ms = 200\n"), path).unwrap();
        assert_eq!(
            cfg.peers[0].bfd,
            Some(crate::bfd::BfdConfig {
                min_tx_ms: 300,
                min_rx_ms: 200,
                multiplier: 3
            })
        );
        assert_eq!(Config::from_toml(base, path).unwrap().peers[0].bfd, None);
        let err =
            Config::from_toml(&format!("{base}[peers.bfd]\nmultiplier = 0\n"), path).unwrap_err();
        assert!(err.to_string().contains("bfd.multiplier"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml(
            "router_id = \"10.0.0.1\"\nasn = 1\nrouterid = 3\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
    }

    #[test]
    fn a_peer_listed_twice_is_refused() {
        let err = Config::from_toml(
            "router_id = \"10.0.0.1\"\nasn = 1\n[[peers]]\naddress = \"10.0.0.2\"\nasn = 2\n[[peers]]\naddress = \"10.0.0.2\"\nasn = 2\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)));
    }
}
