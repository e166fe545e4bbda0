//! Network namespaces.
//!
//! `setns(2)` moves only the calling thread, so the guard that enters a
//! namespace is `!Send`: it must be dropped (and the original namespace
//! restored) on the thread that entered. The original namespace is taken
//! from `/proc/thread-self/ns/net`, not `/proc/self`, because in a
//! multi-threaded process the main thread may be elsewhere.

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Errors entering or opening a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened (usually: it does not exist).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace")]
    NotNetNs {
        /// The offending path.
        path: PathBuf,
    },
    /// `setns(2)` failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace being entered.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

impl NetNsError {
    /// True when the namespace simply does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetNsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x` or `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetNsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetNsError::Open {
            path: path.clone(),
            source,
        })?;
        // A bind-mounted netns and /proc/*/ns/net are both nsfs files; anything
        // else (a regular file, a directory) would make setns fail with EINVAL
        // later, with a worse message.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| NetNsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetNsError::NotNetNs { path });
        }
        Ok(NetNs { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// True when both handles name the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (
            nix::sys::stat::fstat(&self.file),
            nix::sys::stat::fstat(&other.file),
        ) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, for `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NetNsGuard, NetNsError> {
        let original = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetNsGuard {
            original,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on a fresh OS thread inside this namespace, so that the
    /// caller's thread (perhaps a tokio worker) never changes namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetNsError::Enter {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Restores the thread's original namespace when dropped.
#[derive(Debug)]
#[must_use = "the namespace is left as soon as the guard is dropped"]
pub struct NetNsGuard {
    original: NetNs,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Staying in the wrong namespace would make every later kernel
            // call of this thread act on the wrong node: there is no safe
            // way to continue.
            tracing::error!(error = %e, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}
