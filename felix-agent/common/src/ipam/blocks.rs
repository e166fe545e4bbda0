//! The blocks file: the pod address blocks this node holds, written by the
//! agent and read by the CNI plugin when its config has no `ipam.subnets`.
//!
//! Location: `<dataDir>/blocks.json` ([`blocks_path`]). Format, one JSON
//! object with a single field, unknown fields rejected:
//!
//! ```json
//! {"blocks": ["10.244.1.0/26", "fd00:10:244:1::/122"]}
//! ```
//!
//! - `blocks`: CIDRs in the order the allocator should use them (per
//!   family, the first block with free space wins). Host bits must be zero.
//!   Either family may be absent; an empty list means "no blocks yet".
//!
//! The agent replaces the file atomically (temp file in the same directory,
//! then rename), so the plugin never sees half a file. Changing the blocks
//! never invalidates existing allocations: they stay until released.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;

/// The blocks file's name inside the data directory.
pub const BLOCKS_FILE_NAME: &str = "blocks.json";

/// Operators may read the blocks; only root writes them.
const BLOCKS_MODE: u32 = 0o644;

/// `<data_dir>/blocks.json`.
pub fn blocks_path(data_dir: &Path) -> PathBuf {
    data_dir.join(BLOCKS_FILE_NAME)
}

/// The on-disk document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocksFile {
    blocks: Vec<IpNet>,
}

/// Why the blocks file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    /// The file does not exist: the agent has not assigned blocks yet.
    #[error("blocks file {} does not exist (has the agent assigned this node's pod blocks?)", path.display())]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read blocks file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid blocks document.
    #[error("cannot parse blocks file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A block has host bits set, e.g. `10.244.1.5/26`: probably a typo.
    #[error("block {block} in {} has host bits set (did you mean {}?)", path.display(), block.trunc())]
    HostBits {
        /// The file.
        path: PathBuf,
        /// The offending block.
        block: IpNet,
    },
    /// The file could not be written.
    #[error("cannot write blocks file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Reads the node's blocks; [`BlocksError::Missing`] when there is no file.
pub fn read_blocks(path: &Path) -> Result<Vec<IpNet>, BlocksError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BlocksError::Missing {
            path: path.to_owned(),
        },
        _ => BlocksError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    let file: BlocksFile = serde_json::from_slice(&bytes).map_err(|source| BlocksError::Parse {
        path: path.to_owned(),
        source,
    })?;
    check_host_bits(path, &file.blocks)?;
    Ok(file.blocks)
}

/// Replaces the blocks file atomically.
pub fn write_blocks(path: &Path, blocks: &[IpNet]) -> Result<(), BlocksError> {
    check_host_bits(path, blocks)?;
    let write_err = |source| BlocksError::Write {
        path: path.to_owned(),
        source,
    };
    let mut bytes = serde_json::to_vec(&BlocksFile {
        blocks: blocks.to_vec(),
    })
    .map_err(|e| write_err(io::Error::from(e)))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, BLOCKS_MODE).map_err(write_err)
}

fn check_host_bits(path: &Path, blocks: &[IpNet]) -> Result<(), BlocksError> {
    match blocks.iter().find(|b| b.trunc() != **b) {
        Some(block) => Err(BlocksError::HostBits {
            path: path.to_owned(),
            block: *block,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn documented_example_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = blocks_path(dir.path());
        fs::write(
            &path,
            r#"{"blocks": ["10.244.1.0/26", "fd00:10:244:1::/122"]}"#,
        )
        .unwrap();
        assert_eq!(
            read_blocks(&path).unwrap(),
            vec![net("10.244.1.0/26"), net("fd00:10:244:1::/122")]
        );
    }

    #[test]
    fn write_then_read_round_trips_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = blocks_path(dir.path());
        let blocks = vec![net("fd00::/122"), net("10.0.0.0/26"), net("10.0.1.0/26")];
        write_blocks(&path, &blocks).unwrap();
        assert_eq!(read_blocks(&path).unwrap(), blocks);
        write_blocks(&path, &[]).unwrap();
        assert!(read_blocks(&path).unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(BLOCKS_FILE_NAME)]);
    }

    #[test]
    fn missing_file_is_distinct_from_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = blocks_path(dir.path());
        assert!(matches!(
            read_blocks(&path),
            Err(BlocksError::Missing { .. })
        ));
        fs::write(&path, "{").unwrap();
        assert!(matches!(read_blocks(&path), Err(BlocksError::Parse { .. })));
    }

    #[test]
    fn unknown_fields_and_bad_cidrs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = blocks_path(dir.path());
        for bad in [
            r#"{"blocks": [], "extra": 1}"#,
            r#"{"blocks": ["10.0.0.0/33"]}"#,
            r#"{"blocks": ["10.0.0.0"]}"#,
            r#"{}"#,
        ] {
            fs::write(&path, bad).unwrap();
            assert!(
                matches!(read_blocks(&path), Err(BlocksError::Parse { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_bits_are_rejected_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let path = blocks_path(dir.path());
        fs::write(&path, r#"{"blocks": ["10.244.1.5/26"]}"#).unwrap();
        let err = read_blocks(&path).unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.244.1.0/26"),
            "{err}"
        );
        assert!(matches!(
            write_blocks(&path, &[net("10.244.1.5/26")]),
            Err(BlocksError::HostBits { .. })
        ));
    }
}
