//! Node-local IPAM: the CNI plugin allocates pod addresses inside this node's
//! blocks without any API round trip.
//!
//! - [`state`]: the pure allocator ([`IpamState`]), no I/O, property-tested.
//! - [`store`]: per network, a locked snapshot plus an append-only journal ([`IpamStore`]), safe against
//!   concurrent plugin runs and `kill -9`, reset on reboot.
//! - [`blocks`]: the blocks file the agent writes and the plugin reads.

pub mod blocks;
pub mod state;
pub mod store;

pub use blocks::{BLOCKS_FILE_NAME, BlocksError, blocks_path, read_blocks, write_blocks};
pub use state::{Attachment, AttachmentKey, BlockUsage, IpFamily, IpamError, IpamState, OwnerMeta};
pub use store::{
    DEFAULT_LOCK_TIMEOUT, Discarded, IpamStore, StoreError, StoreOptions, StoreOutcome,
};
