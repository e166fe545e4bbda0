//! The file store around [`IpamState`]: one JSON document per network,
//! changed only under an exclusive `flock`, so that the many short-lived CNI
//! processes of one node (and the agent) never hand out an address twice.
//!
//! Files, in `<dataDir>/ipam/` (created with mode 0700):
//!
//! - `<network>.json`: the state (mode 0600), one line of JSON (shown
//!   indented here; `hostIface`, `namespace`, `name` are optional, unknown
//!   fields are ignored so an older binary can read a newer file):
//!
//!   ```json
//!   {"bootId": "6f1c…",
//!    "cursors": {"10.244.1.0/26": "10.244.1.3", "fd00:10:244:1::/122": "fd00:10:244:1::3"},
//!    "attachments": [
//!      {"containerId": "0123…", "ifname": "eth0",
//!       "ips": ["10.244.1.3", "fd00:10:244:1::3"],
//!       "hostIface": "tab5f0c2e1a9b3d", "namespace": "default", "name": "web-0"}]}
//!   ```
//!
//!   `cursors` holds, per block, the address handed out last (next-fit).
//!   Keyed by attachment rather than by address so that a dual-stack pod's
//!   details are stored once: every CNI invocation parses and rewrites the
//!   file, and its size is most of the cost.
//! - `<network>.lock`: the lock file; never deleted, because deleting a
//!   `flock`ed file lets two processes lock two different inodes.
//! - `<network>.boot`: the boot ID of the last boot that saved the state.
//! - `<name>.tmp.<pid>.<n>`: a write in progress, or left by a killed
//!   writer; removed by the next writer, which holds the lock, so no temp
//!   file can belong to a live writer.
//!
//! # Durability: no fsync, on purpose
//!
//! Measured on the development machine: one `fdatasync` costs about 4 ms,
//! and temp + fsync + rename + directory fsync about 12 ms, while the whole
//! pod ADD budget is about 3 ms. And it would buy nothing: every allocation
//! belongs to a network namespace that dies with the kernel, so after a crash
//! of the machine the allocations are worthless anyway. What must hold is:
//!
//! 1. A process killed at any instant (`kill -9`) leaves the old or the new
//!    state, never a mix: the state is written to a temp file and renamed
//!    over the old one, and within one boot the page cache makes the rename
//!    atomic for every reader.
//! 2. After a reboot the old allocations are discarded: the state records
//!    the boot ID (`/proc/sys/kernel/random/boot_id`); a state from another
//!    boot is emptied on load and the caller is told ([`Discarded`]).
//! 3. A state file that does not parse is an error ([`StoreError::Corrupt`]),
//!    never silently reset, since within a boot that could hand out an
//!    address twice. One exception, because without fsync a power cut may
//!    leave an empty or garbled file: the `.boot` marker is written
//!    (atomically) before the first save of each boot, so if it names
//!    another boot, nothing was saved during this boot and the unreadable
//!    file can only hold allocations of a dead kernel; it is then discarded.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::atomic::{is_temp_of, write_atomic};
use super::state::{IpamError, IpamState};

/// How long `transact` and `read` wait for the lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval while the lock is held by someone else: a blocking `flock`
/// cannot be given a timeout without signals.
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Where the kernel publishes the ID of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The state names pods and containers: root only.
const STATE_MODE: u32 = 0o600;

/// Options for [`IpamStore::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long to wait for the lock before [`StoreError::LockTimeout`].
    pub lock_timeout: Duration,
    /// The current boot ID; `None` reads it from the kernel (tests set it).
    pub boot_id: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            boot_id: None,
        }
    }
}

/// The IPAM state of one network on this node, on disk.
#[derive(Debug)]
pub struct IpamStore {
    dir: PathBuf,
    state_path: PathBuf,
    lock_path: PathBuf,
    marker_path: PathBuf,
    lock_timeout: Duration,
    boot_id: String,
}

/// What a transaction returned, and what loading the state had to throw away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome<T> {
    /// The closure's result.
    pub value: T,
    /// Set when the persisted state was from an earlier boot; worth a log line.
    pub discarded: Option<Discarded>,
}

/// State thrown away on load because it belongs to an earlier boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discarded {
    /// The state was saved during another boot; its allocations died with that kernel.
    StaleBoot {
        /// The boot the state was saved in.
        previous_boot_id: String,
        /// How many addresses were dropped.
        allocations: usize,
    },
    /// The state file did not parse, but the `.boot` marker shows it was last
    /// saved during another boot (e.g. a power cut emptied it).
    UnreadableFromEarlierBoot {
        /// The boot named by the marker.
        previous_boot_id: String,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The network name breaks the CNI rule `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
    #[error("invalid network name {network:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")]
    InvalidNetwork {
        /// The rejected name.
        network: String,
    },
    /// The current boot ID could not be read.
    #[error("cannot read the boot ID from {}", path.display())]
    BootId {
        /// The file read.
        path: PathBuf,
        /// The I/O error (`InvalidData` when empty).
        #[source]
        source: io::Error,
    },
    /// The store directory could not be created.
    #[error("cannot create IPAM directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The lock file could not be opened.
    #[error("cannot open IPAM lock file {}", path.display())]
    OpenLock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `flock` failed for another reason than contention.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Another process held the lock for too long; try again later (CNI code 11).
    #[error("timed out after {timeout:?} waiting for the IPAM lock {}", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// The state file exists but could not be read.
    #[error("cannot read IPAM state {}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The state file does not parse and may hold live allocations of this boot.
    #[error(
        "IPAM state {} is corrupt; refusing to reset it since that could hand out an address twice \
         (if no pod of this boot uses it, remove the file)",
        path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The state or marker could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The transaction's own error; the state was left unchanged.
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// The state as loaded, with what is needed to decide what to write.
struct Loaded {
    state: IpamState,
    discarded: Option<Discarded>,
    /// The file parsed and is of this boot: `state` equals the file (and a
    /// save of this boot already wrote the marker).
    current: bool,
    /// No file: `state` (empty) equals what is persisted.
    missing: bool,
}

impl IpamStore {
    /// Opens (creating directories) the store of `network` under `data_dir`,
    /// with the default lock timeout and the kernel's boot ID.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, StoreError> {
        Self::open_with(data_dir, network, StoreOptions::default())
    }

    /// Like [`IpamStore::open`] with explicit options.
    pub fn open_with(
        data_dir: &Path,
        network: &str,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        if !is_valid_network_name(network) {
            return Err(StoreError::InvalidNetwork {
                network: network.to_owned(),
            });
        }
        let boot_id = match options.boot_id {
            Some(id) => id,
            None => read_boot_id(Path::new(BOOT_ID_PATH))?,
        };
        let dir = data_dir.join("ipam");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        Ok(Self {
            state_path: dir.join(format!("{network}.json")),
            lock_path: dir.join(format!("{network}.lock")),
            marker_path: dir.join(format!("{network}.boot")),
            dir,
            lock_timeout: options.lock_timeout,
            boot_id,
        })
    }

    /// The state file, `<dataDir>/ipam/<network>.json`.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The lock file, `<dataDir>/ipam/<network>.lock`.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The boot marker, `<dataDir>/ipam/<network>.boot`.
    pub fn marker_path(&self) -> &Path {
        &self.marker_path
    }

    /// The boot ID this store considers current.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Runs `f` on the state under the exclusive lock and saves the state if
    /// `f` changed it. When `f` fails nothing is written.
    pub fn transact<T>(
        &self,
        f: impl FnOnce(&mut IpamState) -> Result<T, IpamError>,
    ) -> Result<StoreOutcome<T>, StoreError> {
        let _lock = self.lock(FlockArg::LockExclusiveNonblock)?;
        self.remove_stale_temps();
        let Loaded {
            mut state,
            discarded,
            current,
            missing,
        } = self.load()?;
        let revision = state.revision();
        let value = f(&mut state)?;
        // A discarded state is saved even if `f` changed nothing, so that the
        // file stops claiming addresses for a dead boot.
        if state.revision() != revision || !(current || missing) {
            if !current {
                // Before the first save of this boot, so that a marker naming
                // another boot proves nothing was saved during this one.
                self.write(&self.marker_path, format!("{}\n", self.boot_id).as_bytes())?;
            }
            let mut bytes = serde_json::to_vec(&state).map_err(|e| StoreError::Write {
                path: self.state_path.clone(),
                source: io::Error::from(e),
            })?;
            bytes.push(b'\n');
            self.write(&self.state_path, &bytes)?;
        }
        Ok(StoreOutcome { value, discarded })
    }

    /// The current state, read under a shared lock; allocations of an earlier
    /// boot are left out (the file is not changed).
    pub fn read(&self) -> Result<IpamState, StoreError> {
        let _lock = self.lock(FlockArg::LockSharedNonblock)?;
        Ok(self.load()?.state)
    }

    /// Takes the lock, polling, on a fresh open file description: `flock`
    /// locks belong to the description, so reusing one across threads would
    /// let two threads of one process hold the "exclusive" lock together.
    fn lock(&self, arg: FlockArg) -> Result<Flock<File>, StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(STATE_MODE)
            .open(&self.lock_path)
            .map_err(|source| StoreError::OpenLock {
                path: self.lock_path.clone(),
                source,
            })?;
        let deadline = Instant::now() + self.lock_timeout;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::LockTimeout {
                            path: self.lock_path.clone(),
                            timeout: self.lock_timeout,
                        });
                    }
                    file = f;
                    thread::sleep(LOCK_POLL);
                }
                Err((_, source)) => {
                    return Err(StoreError::Lock {
                        path: self.lock_path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Loads the state and applies the boot rules of the module doc.
    fn load(&self) -> Result<Loaded, StoreError> {
        let bytes = match fs::read(&self.state_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded {
                    state: IpamState::new(self.boot_id.as_str()),
                    discarded: None,
                    current: false,
                    missing: true,
                });
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.state_path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<IpamState>(&bytes) {
            Ok(state) if state.boot_id() == self.boot_id => Ok(Loaded {
                state,
                discarded: None,
                current: true,
                missing: false,
            }),
            Ok(mut state) => {
                let previous_boot_id = state.boot_id().to_owned();
                let allocations = state.reset_for_boot(&self.boot_id);
                Ok(Loaded {
                    state,
                    discarded: Some(Discarded::StaleBoot {
                        previous_boot_id,
                        allocations,
                    }),
                    current: false,
                    missing: false,
                })
            }
            Err(source) => match self.read_marker() {
                Some(previous_boot_id) if previous_boot_id != self.boot_id => Ok(Loaded {
                    state: IpamState::new(self.boot_id.as_str()),
                    discarded: Some(Discarded::UnreadableFromEarlierBoot { previous_boot_id }),
                    current: false,
                    missing: false,
                }),
                _ => Err(StoreError::Corrupt {
                    path: self.state_path.clone(),
                    source,
                }),
            },
        }
    }

    /// The boot named by the marker; `None` when absent or unreadable, which
    /// proves nothing.
    fn read_marker(&self) -> Option<String> {
        let text = fs::read_to_string(&self.marker_path).ok()?;
        let id = text.trim();
        (!id.is_empty()).then(|| id.to_owned())
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomic(path, bytes, STATE_MODE).map_err(|source| StoreError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Removes temp files of killed writers. Only called under the exclusive
    /// lock, when no writer of this network can be alive. Failures are
    /// ignored: a leftover temp file is harmless.
    fn remove_stale_temps(&self) {
        let (Some(state_name), Some(marker_name)) = (
            self.state_path.file_name().and_then(|n| n.to_str()),
            self.marker_path.file_name().and_then(|n| n.to_str()),
        ) else {
            return;
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_of(name, state_name) || is_temp_of(name, marker_name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The CNI spec's network name rule, which also keeps the name inside the
/// store directory (no `/`, cannot be `.` or `..`).
fn is_valid_network_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn read_boot_id(path: &Path) -> Result<String, StoreError> {
    let err = |source| StoreError::BootId {
        path: path.to_owned(),
        source,
    };
    let text = fs::read_to_string(path).map_err(err)?;
    let id = text.trim();
    if id.is_empty() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty boot ID",
        )));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests;
