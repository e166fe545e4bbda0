//! Sysctls under `/proc/sys`, which follow the calling thread's network
//! namespace: call these from a thread inside the namespace to change.

use std::path::PathBuf;

/// A sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    /// The `/proc/sys` path.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

fn path_of(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl such as `net/ipv4/ip_forward` (slashes; dots are accepted
/// only where the key has no interface name containing a dot).
pub fn read(key: &str) -> Result<String, SysctlError> {
    let path = path_of_slash(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError { path, source })
}

/// Writes a sysctl given with slashes (`net/ipv4/conf/tab0/proxy_arp`).
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    let path = path_of_slash(key);
    std::fs::write(&path, value).map_err(|source| SysctlError { path, source })
}

/// Writes a sysctl only when its value differs, so that repeated calls do
/// not generate netlink notifications or races with other writers.
pub fn ensure(key: &str, value: &str) -> Result<(), SysctlError> {
    if read(key)? == value {
        return Ok(());
    }
    write(key, value)
}

fn path_of_slash(key: &str) -> PathBuf {
    if key.contains('/') {
        PathBuf::from("/proc/sys").join(key)
    } else {
        path_of(key)
    }
}
