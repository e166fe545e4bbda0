//! `tabby-agent install-cni`: what the DaemonSet's init container runs on
//! every node before the agent starts. It copies the `tabby` plugin into the
//! runtime's CNI bin directory and writes `10-tabby.conflist` into its
//! configuration directory.
//!
//! Both files are written to a temporary name in the same directory and
//! renamed into place: kubelet (through the runtime) may exec the plugin or
//! read the configuration at any moment, and must see the old file or the
//! new one, never half of one. A file that already has the wanted content is
//! not rewritten, so a restarted init container changes nothing (the runtime
//! watches the directory and reloads on every write). Other files in either
//! directory are never touched: other networks' configurations and plugins
//! are not ours.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The conflist's file name: `10-` sorts it before most other networks,
/// since runtimes use the first configuration in lexical order.
pub const CONFLIST_NAME: &str = "10-tabby.conflist";

/// The name the plugin is installed under, which is the conflist's `type`.
pub const PLUGIN_NAME: &str = "tabby";

/// The CNI version of the conflist: the newest that the Debian reference
/// plugins (1.1.x, for `portmap`) accept as well as tabby.
pub const CNI_VERSION: &str = "1.0.0";

/// What the installer needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    /// The plugin binary to install (in the image).
    pub plugin: PathBuf,
    /// The runtime's CNI bin directory on the host.
    pub cni_bin_dir: PathBuf,
    /// The runtime's CNI configuration directory on the host.
    pub cni_conf_dir: PathBuf,
    /// The agent's run directory: endpoint records and `agent.sock`.
    pub run_dir: PathBuf,
    /// The plugin's data directory: IPAM state and the blocks file.
    pub data_dir: PathBuf,
    /// The pods' MTU; the plugin detects the uplink's when absent.
    pub mtu: Option<u32>,
    /// The conflist's network name.
    pub network_name: String,
    /// Chain the reference `portmap` plugin after tabby (hostPort support).
    pub portmap: bool,
}

/// Errors of the installer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A setting is unusable; nothing was written.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written or renamed into place.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration could not be encoded.
    #[error("cannot encode the conflist: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written (it was missing or different).
    Written,
    /// Already had the wanted content; left alone.
    Unchanged,
}

/// What an installation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The installed plugin's path.
    pub plugin_path: PathBuf,
    /// What happened to it.
    pub plugin: Outcome,
    /// The conflist's path.
    pub conflist_path: PathBuf,
    /// What happened to it.
    pub conflist: Outcome,
}

impl InstallConfig {
    /// Refuses settings the plugin would reject (code 7) at pod start,
    /// when the mistake is much harder to see.
    pub fn validate(&self) -> Result<(), InstallError> {
        for (flag, path) in [
            ("--plugin", &self.plugin),
            ("--cni-bin-dir", &self.cni_bin_dir),
            ("--cni-conf-dir", &self.cni_conf_dir),
            ("--run-dir", &self.run_dir),
            ("--data-dir", &self.data_dir),
        ] {
            if !path.is_absolute() {
                return Err(InstallError::Invalid(format!(
                    "{flag} {} must be an absolute path",
                    path.display()
                )));
            }
            if path.to_str().is_none() {
                return Err(InstallError::Invalid(format!(
                    "{flag} {} is not UTF-8 (the conflist is JSON)",
                    path.display()
                )));
            }
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(InstallError::Invalid(format!(
                "--mtu {mtu} is out of range (68..=65535)"
            )));
        }
        if self.network_name.is_empty()
            || !self
                .network_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            // The runtime uses the name in file paths (IPAM state, cache).
            return Err(InstallError::Invalid(format!(
                "--network-name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.network_name
            )));
        }
        Ok(())
    }

    /// The agent's socket, as the plugin must be told.
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// The conflist: tabby first, with only the keys the plugin accepts,
    /// then `portmap` unless disabled.
    pub fn conflist(&self) -> Value {
        let mut tabby = json!({
            "type": PLUGIN_NAME,
            "agentSocket": self.agent_socket(),
            "dataDir": self.data_dir,
            "runDir": self.run_dir,
            // No subnets: the blocks come from the file the agent writes
            // from this node's podCIDRs.
            "ipam": {"type": "tabby-ipam"},
            // The runtime then passes the pod's bandwidth annotations to
            // tabby too: a pod with egress shaping gets its source guard on
            // TCX, where the bandwidth plugin's ingress qdisc still fits.
            "capabilities": {"bandwidth": true},
        });
        if let (Some(mtu), Some(obj)) = (self.mtu, tabby.as_object_mut()) {
            obj.insert("mtu".into(), json!(mtu));
        }
        let mut plugins = vec![tabby];
        if self.portmap {
            plugins.push(json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
                // Masquerade hairpin traffic (a pod reaching its own
                // hostPort through the node address).
                "snat": true,
            }));
        }
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.network_name,
            "plugins": plugins,
        })
    }

    /// The conflist as written: pretty JSON and a final newline, the same
    /// bytes for the same settings (keys are sorted).
    pub fn conflist_bytes(&self) -> Result<Vec<u8>, InstallError> {
        let mut bytes = serde_json::to_vec_pretty(&self.conflist())?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Installs the plugin and the conflist.
pub fn install(cfg: &InstallConfig) -> Result<Report, InstallError> {
    cfg.validate()?;
    let conflist = cfg.conflist_bytes()?;
    let plugin = fs::read(&cfg.plugin).map_err(|source| InstallError::Read {
        path: cfg.plugin.clone(),
        source,
    })?;
    // The plugin first: a conflist naming a plugin that is not there yet
    // would fail every pod start in between.
    let plugin_path = cfg.cni_bin_dir.join(PLUGIN_NAME);
    let plugin_outcome = write_atomically(&plugin_path, &plugin, 0o755)?;
    let conflist_path = cfg.cni_conf_dir.join(CONFLIST_NAME);
    let conflist_outcome = write_atomically(&conflist_path, &conflist, 0o644)?;
    Ok(Report {
        plugin_path,
        plugin: plugin_outcome,
        conflist_path,
        conflist: conflist_outcome,
    })
}

/// Writes `content` to `path` with `mode` through a temporary file and a
/// rename, unless `path` already holds exactly that content and mode.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<Outcome, InstallError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Write { path, source }
    };
    if let Ok(meta) = fs::metadata(path)
        && meta.is_file()
        && meta.len() == content.len() as u64
        && meta.permissions().mode() & 0o7777 == mode
    {
        match fs::read(path) {
            Ok(have) if have == content => return Ok(Outcome::Unchanged),
            Ok(_) => {}
            Err(source) => {
                return Err(InstallError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    // Durable: after a power loss the name must not point at an empty
    // plugin that kubelet would exec. The temporary name
    // (`<name>.tmp.<pid>.<n>`) is one no runtime loads as a configuration
    // (they read `.conf`, `.conflist` and `.json`) and kubelet never execs.
    tabby_common::atomic::write_atomic_durable(path, content, mode).map_err(write_err(path))?;
    Ok(Outcome::Written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn cfg() -> InstallConfig {
        InstallConfig {
            plugin: "/usr/local/bin/tabby".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            run_dir: "/run/tabby".into(),
            data_dir: "/var/lib/tabby".into(),
            mtu: None,
            network_name: "tabby".into(),
            portmap: true,
        }
    }

    #[test]
    fn the_conflist_chains_tabby_with_the_agent_socket_then_portmap() {
        assert_eq!(
            cfg().conflist(),
            json!({
                "cniVersion": "1.0.0",
                "name": "tabby",
                "plugins": [
                    {
                        "type": "tabby",
                        "agentSocket": "/run/tabby/agent.sock",
                        "dataDir": "/var/lib/tabby",
                        "runDir": "/run/tabby",
                        "ipam": {"type": "tabby-ipam"},
                        "capabilities": {"bandwidth": true}
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
                ]
            })
        );
    }

    #[test]
    fn mtu_is_written_only_when_set_and_portmap_can_be_left_out() {
        let mut c = cfg();
        c.mtu = Some(1400);
        c.portmap = false;
        let v = c.conflist();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(v["plugins"][0]["mtu"], 1400);
        assert!(cfg().conflist()["plugins"][0].get("mtu").is_none());
    }

    #[test]
    fn the_same_settings_give_the_same_bytes() {
        let a = cfg().conflist_bytes().unwrap();
        assert_eq!(a, cfg().conflist_bytes().unwrap());
        assert!(a.ends_with(b"}\n"));
    }

    #[test]
    fn settings_the_plugin_would_reject_are_refused() {
        let mut c = cfg();
        c.run_dir = "run/tabby".into();
        assert!(matches!(c.validate(), Err(InstallError::Invalid(m)) if m.contains("--run-dir")));
        let mut c = cfg();
        c.mtu = Some(67);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.network_name = "a/b".into();
        assert!(c.validate().is_err());
        assert!(cfg().validate().is_ok());
    }

    #[test]
    fn write_atomically_writes_once_then_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/f");
        assert_eq!(
            write_atomically(&path, b"one", 0o644).unwrap(),
            Outcome::Written
        );
        assert_eq!(
            write_atomically(&path, b"one", 0o644).unwrap(),
            Outcome::Unchanged
        );
        // Same content, other mode: rewritten, so a plugin always ends up executable.
        assert_eq!(
            write_atomically(&path, b"one", 0o755).unwrap(),
            Outcome::Written
        );
        assert_eq!(
            write_atomically(&path, b"two", 0o755).unwrap(),
            Outcome::Written
        );
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"], "no temporary file left behind");
    }
}
