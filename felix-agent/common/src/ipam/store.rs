//! The file store around [`IpamState`]: per network, a snapshot and an
//! append-only journal, changed only under an exclusive `flock`, so that the
//! many short-lived CNI processes of one node (and the agent) never hand out
//! an address twice.
//!
//! Every pod ADD and DEL runs one transaction in a fresh process, so a
//! transaction must be cheap: rewriting the whole state each time (a temp
//! file and a rename, ~130 µs for the rename alone on ext4) cost more than
//! all the rest. A transaction therefore appends one line describing its
//! changes to the journal, with a single `write(2)`, and the whole state is
//! rewritten only when the journal has grown (compaction). What remains is
//! reading: parsing the snapshot, about 1 µs per attachment, and the
//! journal, which compaction keeps short.
//!
//! # Files
//!
//! In `<dataDir>/ipam/` (created with mode 0700 when the lock file cannot
//! be opened because the directory is missing), all of mode 0600:
//!
//! - `<network>.json`, the snapshot: the state at the last compaction, one
//!   line of JSON (shown indented here; `hostIface`, `namespace`, `name` are
//!   optional, unknown fields are ignored so an older binary can read a newer
//!   file):
//!
//!   ```json
//!   {"journalGen": 7,
//!    "bootId": "6f1c…",
//!    "cursors": {"10.244.1.0/26": "10.244.1.3", "fd00:10:244:1::/122": "fd00:10:244:1::3"},
//!    "attachments": [
//!      {"containerId": "0123…", "ifname": "eth0",
//!       "ips": ["10.244.1.3", "fd00:10:244:1::3"],
//!       "hostIface": "tab5f0c2e1a9b3d", "namespace": "default", "name": "web-0"}]}
//!   ```
//!
//!   `cursors` holds, per block, the address handed out last (next-fit).
//!   Keyed by attachment rather than by address so that a dual-stack pod's
//!   details are stored once. `journalGen` names the journal that continues
//!   this snapshot; a file without it (written before the journal existed)
//!   is generation 0, which has no journal and is compacted by the first
//!   change.
//! - `<network>.journal.<gen>`: the transactions committed since the
//!   snapshot of generation `<gen>`, one line each, `<crc32c hex> <json>\n`;
//!   the JSON holds the attachments put and removed and the cursors when they
//!   changed (format in `journal.rs`). Journals of other generations than the
//!   snapshot's are leftovers of an interrupted compaction: ignored, and
//!   removed by the next compaction.
//! - `<network>.lock`: the lock file; never deleted, because deleting a
//!   `flock`ed file lets two processes lock two different inodes.
//! - `<network>.boot`: the boot ID of the last boot that saved the state.
//! - `<name>.tmp.<pid>.<n>`: a snapshot or marker write in progress, or left
//!   by a killed writer; removed by the next compaction, which holds the
//!   lock, so no temp file can belong to a live writer.
//!
//! # Operations
//!
//! Loading (both [`IpamStore::transact`], under the exclusive lock, and
//! [`IpamStore::read`], under a shared one) reads the snapshot, then replays
//! the journal of its generation line by line. A missing journal is an empty
//! one: compaction does not create it, the first append does.
//!
//! A transaction runs its closure on the loaded state, which records the
//! attachments it touches. If the closure fails or changes nothing, nothing
//! is written. Otherwise the changes are encoded as one line (the current
//! value of every touched attachment, and the cursor map if it changed) and
//! appended to the journal with one `write(2)` on an `O_APPEND` descriptor.
//! The hot path is thus: open the lock file, `flock`, open and read the
//! snapshot, open and read the journal, one `write`, unlock; no `mkdir`, no
//! `stat` of a path, no directory listing.
//!
//! Compaction replaces the append when the journal would exceed
//! `MAX_JOURNAL_RECORDS` lines or `MAX_JOURNAL_BYTES`, when the state
//! loaded was not this boot's (another boot, unreadable, missing, or
//! generation 0), or when the changes could not be recorded. Under the
//! exclusive lock it: lists the directory, removing temp files and journals
//! of every generation but the current `G`; writes the snapshot with
//! generation `G' = 1 + max(G, every journal generation seen)` to a temp
//! file and renames it over `<network>.json`; deletes journal `G`. Taking
//! the maximum guarantees that journal `G'` does not exist yet, even when a
//! snapshot went missing (an operator removed it) and generations restart.
//!
//! # Crashes: no fsync, on purpose
//!
//! Measured on the development machine: one `fdatasync` costs about 4 ms,
//! and temp + fsync + rename + directory fsync about 12 ms, while our whole
//! share of a pod ADD is about 1 ms. And it would buy nothing: every allocation
//! belongs to a network namespace that dies with the kernel, so after a crash
//! of the machine the allocations are worthless anyway. What must hold is:
//!
//! 1. A process killed at any instant (`kill -9`) leaves a state that loads
//!    and that holds either all or none of each transaction:
//!    - killed during its append: the `write` copies a prefix of the line
//!      into the page cache, and the newline is the line's last byte, so a
//!      torn line is the journal's last and has no newline. Its writer never
//!      returned, so nobody was given what it allocated: loading ignores it,
//!      and the next append first truncates it away. Only the last line may
//!      be damaged (torn, or failing its checksum); damage followed by more
//!      lines cannot come from a kill and is [`StoreError::Corrupt`]. An
//!      append that fails or writes short is truncated away at once and
//!      reported as [`StoreError::Write`].
//!    - killed during compaction, before the rename: a temp file is left,
//!      ignored, and removed by the next compaction; snapshot `G` and
//!      journal `G` still hold the state.
//!    - after the rename, before journal `G` is deleted: snapshot `G'` holds
//!      everything and names journal `G'`; journal `G` is ignored and removed
//!      by the next compaction.
//!
//!    Within one boot the page cache makes every `write` and rename visible
//!    to every later reader, whether or not it reached the disk.
//! 2. After a reboot the old allocations are discarded: the snapshot records
//!    the boot ID (`/proc/sys/kernel/random/boot_id`); a state from another
//!    boot is emptied on load, the caller is told ([`Discarded`]; the count
//!    replays that boot's journal as far as it reads), and the next
//!    transaction compacts, whatever its closure did.
//! 3. A snapshot that does not parse, or a journal damaged other than in
//!    its last line, is an error ([`StoreError::Corrupt`]), never silently
//!    reset, since within a boot that could hand out an address twice. One
//!    exception, because without fsync a power cut may leave an empty or
//!    garbled snapshot: the `.boot` marker is written (atomically) before the
//!    first save of each boot, which is always a compaction, so if it names
//!    another boot, nothing was saved during this boot and the unreadable
//!    snapshot can only hold allocations of a dead kernel; it is then
//!    discarded (with every journal). A journal is only replayed onto a
//!    snapshot of this boot, so garbage a power cut left in it is never
//!    read as this boot's state.
//!
//! Binaries from before the journal read only the snapshot: one must not run
//! against a store that a journaling binary has written during the same boot.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::Error as _;

use super::state::{IpamError, IpamState, Snapshot, SnapshotRef};
use crate::atomic::{is_temp_of, write_atomic};

mod journal;

/// How long `transact` and `read` wait for the lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval while the lock is held by someone else: a blocking `flock`
/// cannot be given a timeout without signals.
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Where the kernel publishes the ID of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The state names pods and containers: root only.
const STATE_MODE: u32 = 0o600;

/// Compact rather than let the journal grow past this many lines.
///
/// Every load replays the whole journal, at about the cost of parsing 1.5
/// attachments of the snapshot per line (measured), while a compaction costs
/// about one old-style full rewrite, `C`. With `T` lines per generation a
/// transaction pays on average `T/2` lines plus `C/T`, least at `T` around
/// `sqrt(2C / line)`: 20 to 40 lines for 1 to 250 pods on the development
/// machine, where 256 lines made a transaction 3 to 6 times slower.
const MAX_JOURNAL_RECORDS: usize = 32;

/// Compact rather than let the journal grow past this many bytes: 32
/// allocation lines take about 10 KiB; a large GC line compacts at once.
const MAX_JOURNAL_BYTES: usize = 16 * 1024;

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
    network: String,
    state_path: PathBuf,
    lock_path: PathBuf,
    marker_path: PathBuf,
    lock_timeout: Duration,
    boot_id: String,
    /// [`MAX_JOURNAL_RECORDS`], lowered by tests.
    max_journal_records: usize,
    /// [`MAX_JOURNAL_BYTES`], lowered by tests.
    max_journal_bytes: usize,
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
    /// The store directory could not be created (reported by `transact`
    /// or `read`, which create it when it is missing).
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
    /// The snapshot or journal exists but could not be read.
    #[error("cannot read IPAM state {}", path.display())]
    Read {
        /// The snapshot or journal.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The snapshot does not parse, or the journal is damaged before its
    /// last line, and may hold live allocations of this boot.
    #[error(
        "IPAM state {} is corrupt; refusing to reset it since that could hand out an address twice \
         (if no pod of this boot uses it, remove the file)",
        path.display()
    )]
    Corrupt {
        /// The snapshot or journal.
        path: PathBuf,
        /// The JSON error, with line and column, or the journal line at fault.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot, journal or marker could not be written.
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
    origin: Origin,
}

/// How the loaded state relates to the files.
enum Origin {
    /// No snapshot: the state is empty, and only a change needs writing.
    Missing,
    /// The snapshot is of this boot; `state` is it plus its journal.
    Current {
        /// The snapshot's journal generation.
        generation: u64,
        /// The journal as read.
        journal: JournalTail,
    },
    /// The state on disk was thrown away (another boot, or unreadable): the
    /// next transaction writes over it even if its closure changes nothing.
    Discarded {
        /// The snapshot's journal generation; 0 when unknown.
        generation: u64,
    },
}

/// The journal of the loaded snapshot, as far as it was read.
#[derive(Default)]
struct JournalTail {
    /// Open for appending (transactions only); `None` when it does not exist.
    file: Option<File>,
    /// Its length when read.
    len: usize,
    /// The length of its valid lines: the rest is a torn line.
    valid_len: usize,
    /// How many valid lines.
    records: usize,
}

impl IpamStore {
    /// Opens the store of `network` under `data_dir`, with the default lock
    /// timeout and the kernel's boot ID. Reads the boot ID and nothing else: the
    /// directory is created by the first transaction that needs it.
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
        Ok(Self {
            state_path: dir.join(format!("{network}.json")),
            lock_path: dir.join(format!("{network}.lock")),
            marker_path: dir.join(format!("{network}.boot")),
            dir,
            network: network.to_owned(),
            lock_timeout: options.lock_timeout,
            boot_id,
            max_journal_records: MAX_JOURNAL_RECORDS,
            max_journal_bytes: MAX_JOURNAL_BYTES,
        })
    }

    /// The snapshot file, `<dataDir>/ipam/<network>.json`.
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
    /// `f` changed it (one journal line, or a compaction). When `f` fails
    /// nothing is written.
    pub fn transact<T>(
        &self,
        f: impl FnOnce(&mut IpamState) -> Result<T, IpamError>,
    ) -> Result<StoreOutcome<T>, StoreError> {
        let _lock = self.lock(FlockArg::LockExclusiveNonblock)?;
        let Loaded {
            mut state,
            discarded,
            origin,
        } = self.load(true)?;
        let revision = state.revision();
        let cursors = state.cursor_map().clone();
        state.record_changes();
        let value = f(&mut state)?;
        let changed = state.revision() != revision;
        let touched = state.take_changes();
        match origin {
            Origin::Missing | Origin::Current { .. } if !changed => {}
            Origin::Current {
                generation,
                journal,
            } => match touched {
                // Generation 0 has no journal: the snapshot predates it.
                Some(touched) if generation > 0 && state.boot_id() == self.boot_id => {
                    let line =
                        journal::encode_line(&state, &touched, *state.cursor_map() != cursors)
                            .map_err(|e| StoreError::Write {
                                path: self.journal_path(generation),
                                source: io::Error::from(e),
                            })?;
                    if journal.records < self.max_journal_records
                        && journal.valid_len + line.len() <= self.max_journal_bytes
                    {
                        self.append(generation, journal, &line)?;
                    } else {
                        self.compact(&state, generation, false)?;
                    }
                }
                _ => self.compact(&state, generation, false)?,
            },
            // The first save of this boot: the marker goes first.
            Origin::Missing => self.compact(&state, 0, true)?,
            // Saved even if `f` changed nothing, so that the files stop
            // claiming addresses for a dead boot.
            Origin::Discarded { generation } => self.compact(&state, generation, true)?,
        }
        Ok(StoreOutcome { value, discarded })
    }

    /// The current state, read under a shared lock; allocations of an earlier
    /// boot are left out (no file is changed).
    pub fn read(&self) -> Result<IpamState, StoreError> {
        let _lock = self.lock(FlockArg::LockSharedNonblock)?;
        Ok(self.load(false)?.state)
    }

    /// Takes the lock, polling, on a fresh open file description: `flock`
    /// locks belong to the description, so reusing one across threads would
    /// let two threads of one process hold the "exclusive" lock together.
    fn lock(&self, arg: FlockArg) -> Result<Flock<File>, StoreError> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(STATE_MODE)
                .open(&self.lock_path)
        };
        let opened = match open() {
            // The first use of this data directory.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(|source| StoreError::CreateDir {
                        path: self.dir.clone(),
                        source,
                    })?;
                open()
            }
            other => other,
        };
        let mut file = opened.map_err(|source| StoreError::OpenLock {
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

    /// Loads the snapshot and its journal and applies the boot rules of the
    /// module doc. `for_write` keeps the journal open for appending.
    fn load(&self, for_write: bool) -> Result<Loaded, StoreError> {
        let bytes = match fs::read(&self.state_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded {
                    state: IpamState::new(self.boot_id.as_str()),
                    discarded: None,
                    origin: Origin::Missing,
                });
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.state_path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(Snapshot {
                mut state,
                journal_gen: generation,
            }) if state.boot_id() == self.boot_id => {
                let journal = if generation == 0 {
                    JournalTail::default()
                } else {
                    self.replay(generation, &mut state, for_write)?
                };
                Ok(Loaded {
                    state,
                    discarded: None,
                    origin: Origin::Current {
                        generation,
                        journal,
                    },
                })
            }
            Ok(Snapshot {
                mut state,
                journal_gen: generation,
            }) => {
                if generation > 0 {
                    // Only to count what is dropped: as far as it replays.
                    let path = self.journal_path(generation);
                    if let Ok(bytes) = fs::read(path) {
                        let _ = journal::replay(&bytes, &mut state);
                    }
                }
                let previous_boot_id = state.boot_id().to_owned();
                let allocations = state.reset_for_boot(&self.boot_id);
                Ok(Loaded {
                    state,
                    discarded: Some(Discarded::StaleBoot {
                        previous_boot_id,
                        allocations,
                    }),
                    origin: Origin::Discarded { generation },
                })
            }
            Err(source) => match self.read_marker() {
                Some(previous_boot_id) if previous_boot_id != self.boot_id => Ok(Loaded {
                    state: IpamState::new(self.boot_id.as_str()),
                    discarded: Some(Discarded::UnreadableFromEarlierBoot { previous_boot_id }),
                    origin: Origin::Discarded { generation: 0 },
                }),
                _ => Err(StoreError::Corrupt {
                    path: self.state_path.clone(),
                    source,
                }),
            },
        }
    }

    /// Replays journal `generation` onto `state` (the snapshot of that
    /// generation); a missing journal is empty.
    fn replay(
        &self,
        generation: u64,
        state: &mut IpamState,
        for_write: bool,
    ) -> Result<JournalTail, StoreError> {
        let path = self.journal_path(generation);
        let opened = if for_write {
            OpenOptions::new().read(true).append(true).open(&path)
        } else {
            File::open(&path)
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JournalTail::default()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let mut bytes = Vec::new();
        if let Err(source) = file.read_to_end(&mut bytes) {
            return Err(StoreError::Read { path, source });
        }
        match journal::replay(&bytes, state) {
            Ok(replayed) => Ok(JournalTail {
                file: for_write.then_some(file),
                len: bytes.len(),
                valid_len: replayed.valid_len,
                records: replayed.records,
            }),
            Err(e) => Err(StoreError::Corrupt {
                path,
                source: serde_json::Error::custom(e),
            }),
        }
    }

    /// Appends one line to journal `generation`, first cutting off a torn
    /// line a killed writer left.
    fn append(&self, generation: u64, journal: JournalTail, line: &[u8]) -> Result<(), StoreError> {
        let path = self.journal_path(generation);
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut file = match journal.file {
            Some(file) => {
                if journal.valid_len < journal.len {
                    file.set_len(journal.valid_len as u64).map_err(write_err)?;
                }
                file
            }
            // Absent when loaded, under the same lock: nobody made it since.
            None => OpenOptions::new()
                .append(true)
                .create(true)
                .mode(STATE_MODE)
                .open(&path)
                .map_err(write_err)?,
        };
        // One `write`, so that a kill leaves at most a torn last line.
        match file.write(line) {
            Ok(n) if n == line.len() => Ok(()),
            result => {
                // Best effort: a partial line left behind is a torn last
                // line, ignored on load and cut off by the next append.
                let _ = file.set_len(journal.valid_len as u64);
                Err(write_err(result.err().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::WriteZero, "short write to the journal")
                })))
            }
        }
    }

    /// Writes `state` as the snapshot of a new generation and drops the
    /// journals; see the module doc for the order and why it is safe.
    /// `first_of_boot` writes the boot marker first.
    fn compact(
        &self,
        state: &IpamState,
        generation: u64,
        first_of_boot: bool,
    ) -> Result<(), StoreError> {
        let mut newest = generation;
        let listed = self.remove_leftovers(generation, &mut newest);
        let next = newest.saturating_add(1);
        if !listed {
            // Could not see which generations exist: make sure the new one
            // starts empty.
            let path = self.journal_path(next);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::Write { path, source: e });
                }
                _ => {}
            }
        }
        if first_of_boot {
            // So that a marker naming another boot proves nothing was saved
            // during this one.
            self.write(&self.marker_path, format!("{}\n", self.boot_id).as_bytes())?;
        }
        let mut bytes = serde_json::to_vec(&SnapshotRef {
            state,
            journal_gen: next,
        })
        .map_err(|e| StoreError::Write {
            path: self.state_path.clone(),
            source: io::Error::from(e),
        })?;
        bytes.push(b'\n');
        self.write(&self.state_path, &bytes)?;
        // Best effort: if it stays, it is ignored and removed next time.
        let _ = fs::remove_file(self.journal_path(generation));
        Ok(())
    }

    /// Removes temp files of killed writers and journals of every generation
    /// but `keep`, and raises `newest` to the highest generation seen. Only
    /// called under the exclusive lock, when no writer of this network can be
    /// alive. Returns false when the directory could not be listed; other
    /// failures are ignored: a leftover file is harmless.
    fn remove_leftovers(&self, keep: u64, newest: &mut u64) -> bool {
        let (Some(state_name), Some(marker_name)) = (
            self.state_path.file_name().and_then(|n| n.to_str()),
            self.marker_path.file_name().and_then(|n| n.to_str()),
        ) else {
            return false;
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        let journal_prefix = format!("{}.journal.", self.network);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_of(name, state_name) || is_temp_of(name, marker_name) {
                let _ = fs::remove_file(entry.path());
            } else if let Some(generation) = name
                .strip_prefix(&journal_prefix)
                .filter(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|g| g.parse::<u64>().ok())
            {
                *newest = (*newest).max(generation);
                if generation != keep {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        true
    }

    /// `<dataDir>/ipam/<network>.journal.<generation>`.
    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir
            .join(format!("{}.journal.{generation}", self.network))
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
