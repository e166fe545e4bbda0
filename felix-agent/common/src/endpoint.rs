//! Endpoint records: what the CNI plugin wired for one attachment, written
//! under `<runDir>/endpoints/` for the agent to read. `runDir` is a tmpfs
//! (`/run/tabby`), so records vanish at reboot together with the pods.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::atomic::{is_temp_of, write_atomic};
use crate::naming::HostIface;

/// One pod interface wired by tabby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    /// The CNI network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`, the interface inside the pod.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`, when the runtime gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`, when the runtime gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's network namespace path.
    pub netns: String,
    /// Host-side interface name; a record naming anything but a tabby
    /// workload interface does not parse.
    pub host_iface: HostIface,
    /// Host-side interface index, to tell a stale record from a new link
    /// that reuses the name.
    pub host_ifindex: u32,
    /// The pod interface's MAC address.
    pub mac: String,
    /// The pod's addresses, as host prefixes (/32, /128).
    pub ips: Vec<IpNet>,
    /// When the plugin wrote the record (milliseconds since the Unix
    /// epoch): of two records claiming one interface or address, the older
    /// wins. Absent in records of older plugins (the file's mtime is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
}

/// One file of the record directory as read, for the agent to judge: the
/// record's admission depends on the file's name and age, not only on its
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFile {
    /// The file's name (`<containerID>_<ifname>.json`).
    pub file_name: String,
    /// The file's mtime (milliseconds since the Unix epoch), when known.
    pub modified_ms: Option<u64>,
    /// The record, or why it does not parse.
    pub record: Result<EndpointRecord, String>,
}

/// The file name of an attachment's record.
pub fn record_file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}_{ifname}.json")
}

/// Errors reading or writing endpoint records.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Filesystem error.
    #[error("endpoint record {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record that does not parse.
    #[error("endpoint record {path} is not valid: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// The directory of endpoint records.
#[derive(Debug, Clone)]
pub struct EndpointStore {
    dir: PathBuf,
}

impl EndpointStore {
    /// The store under `run_dir` (records live in `run_dir/endpoints`).
    pub fn new(run_dir: &Path) -> Self {
        EndpointStore {
            dir: run_dir.join("endpoints"),
        }
    }

    /// The directory holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one attachment. Container IDs and interface names are
    /// validated by the plugin, so neither contains a `/`.
    pub fn path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(record_file_name(container_id, ifname))
    }

    /// Writes a record atomically (temporary file, then rename).
    pub fn write(&self, rec: &EndpointRecord) -> Result<(), EndpointError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| EndpointError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.path_of(&rec.container_id, &rec.ifname);
        let body = serde_json::to_vec_pretty(rec).map_err(|e| EndpointError::Corrupt {
            path: path.clone(),
            source: e,
        })?;
        write_atomic(&path, &body, 0o644).map_err(|source| EndpointError::Io { path, source })
    }

    /// Reads one record; `None` when there is none.
    pub fn read(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<EndpointRecord>, EndpointError> {
        let path = self.path_of(container_id, ifname);
        read_record(&path)
    }

    /// Removes one record; a record already gone is success.
    /// Also removes the temporary file a writer killed mid-write left for
    /// this attachment.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), EndpointError> {
        let path = self.path_of(container_id, ifname);
        let file_name = record_file_name(container_id, ifname);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if is_temp_of(&entry.file_name().to_string_lossy(), &file_name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(EndpointError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every record, skipping temporary files. A record that cannot be
    /// parsed is returned as an error next to the good ones, so one bad
    /// file never hides the others.
    pub fn list(&self) -> Result<Vec<Result<EndpointRecord, EndpointError>>, EndpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(EndpointError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| EndpointError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match read_record(&entry.path()) {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// Every record file with its name and mtime, skipping temporary files;
    /// a file that does not parse is listed with the reason.
    pub fn list_files(&self) -> Result<Vec<RecordFile>, EndpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(EndpointError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| EndpointError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.ends_with(".json") {
                continue;
            }
            let modified_ms = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok());
            let record = match read_record(&entry.path()) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => continue,
                Err(e) => Err(e.to_string()),
            };
            out.push(RecordFile {
                file_name,
                modified_ms,
                record,
            });
        }
        Ok(out)
    }
}

fn read_record(path: &Path) -> Result<Option<EndpointRecord>, EndpointError> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EndpointError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|source| EndpointError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cid: &str) -> EndpointRecord {
        EndpointRecord {
            network: "k8s".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web".into()),
            netns: "/var/run/netns/x".into(),
            host_iface: HostIface::parse("tab0123456789ab").unwrap(),
            host_ifindex: 7,
            mac: "02:00:00:00:00:01".into(),
            ips: vec!["10.0.0.5/32".parse().unwrap()],
            created_ms: None,
        }
    }

    #[test]
    fn write_read_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        store.write(&rec("a")).unwrap();
        store.write(&rec("b")).unwrap();
        assert_eq!(store.read("a", "eth0").unwrap(), Some(rec("a")));
        assert_eq!(store.list().unwrap().len(), 2);
        // A writer killed between creating its temporary file and the rename.
        std::fs::write(store.dir().join("a_eth0.json.tmp.4242.0"), b"{partial").unwrap();
        store.remove("a", "eth0").unwrap();
        store.remove("a", "eth0").unwrap();
        assert!(!store.dir().join("a_eth0.json.tmp.4242.0").exists());
        assert_eq!(store.read("a", "eth0").unwrap(), None);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_record_is_reported_without_hiding_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::new(dir.path());
        store.write(&rec("good")).unwrap();
        std::fs::write(store.path_of("bad", "eth0"), b"{not json").unwrap();
        std::fs::write(store.dir().join(".x.tmp.1"), b"partial").unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 1);
    }
}
