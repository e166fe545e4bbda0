//! Atomic file replacement: the one helper every writer in the workspace
//! uses (IPAM state, blocks file, endpoint records, agent status, CNI
//! settings, installed files).
//!
//! A reader must see either the old or the new content, whatever instant a
//! writer is killed at: the content goes to a temporary file in the same
//! directory (so the rename cannot cross file systems) and is renamed over
//! the target. There is deliberately no fsync: see the store's module doc.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temp files of threads of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Marks temp names: `<file name>.tmp.<pid>.<n>`.
const TMP_INFIX: &str = ".tmp.";

/// Replaces `path` with `bytes`; the new file gets `mode` (less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, mode, false)
}

/// Like [`write_atomic`], and durable: the content is on disk before the
/// rename, the rename on disk before returning, and the mode is exactly
/// `mode` (for files that must survive a power loss whole, such as an
/// installed plugin binary that kubelet would exec).
pub fn write_atomic_durable(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, mode, true)
}

fn write(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        // Not create_new: a killed writer's temp may carry our pid and counter
        // (a container's agent is often pid 1 every time), and must not block us.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            file.sync_all()?;
        }
        drop(file);
        // Replacing a running binary by rename is fine (its inode lives on
        // until the last exec ends); writing into it would fail (ETXTBSY).
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: a leftover temp is harmless and cleaned up later.
        let _ = fs::remove_file(&tmp);
    } else if durable
        && let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // The rename itself durable; failing here changes nothing visible.
        let _ = d.sync_all();
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{TMP_INFIX}{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// True when `candidate` is a temp file name that `write_atomic` makes for
/// `file_name`. Strict (`<file_name>.tmp.<digits>.<digits>`), so that it can
/// never match another network's state file, whose names may contain dots.
pub fn is_temp_of(candidate: &str, file_name: &str) -> bool {
    let Some(rest) = candidate
        .strip_prefix(file_name)
        .and_then(|r| r.strip_prefix(TMP_INFIX))
    else {
        return false;
    };
    let mut parts = rest.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_match_only_their_own_file() {
        assert!(is_temp_of("net.json.tmp.12.0", "net.json"));
        assert!(!is_temp_of("net.json.tmp.12", "net.json"));
        assert!(!is_temp_of("net.json.tmp.12.x", "net.json"));
        assert!(!is_temp_of("net.json.tmp.1.2.3", "net.json"));
        // The state file of a network called `net.json.tmp.1`.
        assert!(!is_temp_of("net.json.tmp.1.json", "net.json"));
        assert!(!is_temp_of("other.json.tmp.1.2", "net.json"));
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }
}
