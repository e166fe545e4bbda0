//! The pure allocator: the persisted IPAM document and the operations on it,
//! without any I/O, so that every rule can be tested exhaustively.
//!
//! Addresses are handled as `u128` offsets so that a block of any size (an
//! IPv4 `/0` or an IPv6 `/0`) costs only as much as the allocations inside it:
//! a free address is found by walking the ordered map of allocations from the
//! block's cursor, never by listing the block.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize, Serializer};

/// What owns an allocation: one interface of one container (CNI's unique key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`, the interface name inside the pod.
    pub ifname: String,
}

impl AttachmentKey {
    /// Builds a key from a container ID and a pod-side interface name.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Informational details stored with an allocation, for operators and leak reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerMeta {
    /// The host-side veth name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_iface: Option<String>,
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name (`K8S_POD_NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What one attachment holds: its addresses and the details given at allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The allocated addresses, IPv4 first; at most one per family.
    pub ips: Vec<IpAddr>,
    /// Details for humans; never compared.
    pub meta: OwnerMeta,
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The caller gave no block at all: the node has no pod CIDR yet.
    #[error("no address blocks configured for this node")]
    NoBlocks,
    /// Every usable address of one family is taken; nothing was allocated.
    #[error("no free {family} address left in {}", BlockList(blocks))]
    Exhausted {
        /// The family that ran out.
        family: IpFamily,
        /// The blocks of that family that were searched, in order.
        blocks: Vec<IpNet>,
    },
}

/// Formats blocks as `a, b, c` for error messages.
struct BlockList<'a>(&'a [IpNet]);

impl fmt::Display for BlockList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, block) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{block}")?;
        }
        Ok(())
    }
}

/// How full one block is, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockUsage {
    /// The block (host bits cleared).
    pub block: IpNet,
    /// Allocated addresses inside the block.
    pub used: usize,
    /// Addresses that can be handed out (reserved ones excluded), saturating at `u128::MAX`.
    pub capacity: u128,
}

/// The persisted IPAM document of one network on one node.
///
/// Fields stay private so that every change goes through the methods that
/// keep the invariant: an address has at most one owner, and an attachment
/// holds at most one address per family. The on-disk format is described in
/// [`super::store`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "StateDoc")]
pub struct IpamState {
    /// The kernel boot this state belongs to; allocations die with their boot.
    boot_id: String,
    /// The attachments and what they hold.
    attachments: BTreeMap<AttachmentKey, Attachment>,
    /// Every allocated address: an index of `attachments`, not persisted.
    /// Ordered, so a free address is found by walking a range.
    used: BTreeSet<IpAddr>,
    /// Per block, the address handed out last: the next search starts after it,
    /// so a released address is not reused at once (next-fit).
    cursors: BTreeMap<IpNet, IpAddr>,
    /// Bumped by every change, so the store saves only what changed without
    /// keeping a copy to compare with. Not persisted, not compared.
    revision: u64,
    /// While the store records a transaction: the keys whose attachment may
    /// have changed, so that it can journal only those. Not persisted, not
    /// compared; `None` when not recording.
    touched: Option<BTreeSet<AttachmentKey>>,
}

impl PartialEq for IpamState {
    fn eq(&self, other: &Self) -> bool {
        self.boot_id == other.boot_id
            && self.attachments == other.attachments
            && self.cursors == other.cursors
    }
}

impl Eq for IpamState {}

impl IpamState {
    /// An empty state for the given boot.
    pub fn new(boot_id: impl Into<String>) -> Self {
        Self {
            boot_id: boot_id.into(),
            ..Self::default()
        }
    }

    /// The boot this state was written in.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Number of allocated addresses.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// True when no address is allocated.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Every attachment holding addresses, in key order.
    pub fn attachments(&self) -> impl Iterator<Item = (&AttachmentKey, &Attachment)> {
        self.attachments.iter()
    }

    /// Every allocated address with its owner, in key order.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &AttachmentKey)> {
        self.attachments
            .iter()
            .flat_map(|(key, a)| a.ips.iter().map(move |ip| (*ip, key)))
    }

    /// The owner of one address (a linear scan: for operators, not the hot path).
    pub fn owner(&self, addr: IpAddr) -> Option<(&AttachmentKey, &Attachment)> {
        if !self.used.contains(&addr) {
            return None;
        }
        self.attachments.iter().find(|(_, a)| a.ips.contains(&addr))
    }

    /// The address handed out last in `block`, where the next search starts.
    pub fn cursor(&self, block: IpNet) -> Option<IpAddr> {
        self.cursors.get(&block.trunc()).copied()
    }

    /// The addresses held by `key`, IPv4 first.
    pub fn lookup(&self, key: &AttachmentKey) -> Vec<IpAddr> {
        self.attachments
            .get(key)
            .map(|a| a.ips.clone())
            .unwrap_or_default()
    }

    /// Gives `key` one address per family present in `blocks` (as /32 and
    /// /128 host prefixes, IPv4 first), or the addresses it already holds.
    ///
    /// All or nothing: when one family is exhausted nothing is allocated.
    /// Blocks of a family are tried in the given order.
    pub fn allocate(
        &mut self,
        key: &AttachmentKey,
        blocks: &[IpNet],
        meta: OwnerMeta,
    ) -> Result<Vec<IpNet>, IpamError> {
        // A retried ADD must get the same addresses, whatever the blocks are now.
        if let Some(held) = self.attachments.get(key) {
            return Ok(held.ips.iter().copied().map(IpNet::from).collect());
        }
        if blocks.is_empty() {
            return Err(IpamError::NoBlocks);
        }
        // Pick every address before recording any, so that failure leaves no trace.
        let mut picks = Vec::with_capacity(2);
        for family in [IpFamily::V4, IpFamily::V6] {
            let family_blocks: Vec<IpNet> = blocks
                .iter()
                .filter(|b| IpFamily::of_net(b) == family)
                .map(IpNet::trunc)
                .collect();
            if family_blocks.is_empty() {
                continue;
            }
            let pick = family_blocks
                .iter()
                .find_map(|block| self.free_in(*block).map(|addr| (*block, addr)));
            match pick {
                Some(pick) => picks.push(pick),
                None => {
                    return Err(IpamError::Exhausted {
                        family,
                        blocks: family_blocks,
                    });
                }
            }
        }
        // Cursors of blocks the node no longer uses would only accumulate.
        self.cursors
            .retain(|block, _| blocks.iter().any(|b| b.trunc() == *block));
        let mut ips = Vec::with_capacity(picks.len());
        for (block, addr) in picks {
            self.used.insert(addr);
            self.cursors.insert(block, addr);
            ips.push(addr);
        }
        let out = ips.iter().copied().map(IpNet::from).collect();
        self.attachments
            .insert(key.clone(), Attachment { ips, meta });
        self.touch(key);
        self.revision += 1;
        Ok(out)
    }

    /// Releases every address of `key`; an unknown key releases nothing.
    pub fn release(&mut self, key: &AttachmentKey) -> Vec<IpAddr> {
        let Some(attachment) = self.attachments.remove(key) else {
            return Vec::new();
        };
        for ip in &attachment.ips {
            self.used.remove(ip);
        }
        self.touch(key);
        self.revision += 1;
        attachment.ips
    }

    /// Releases every allocation whose key is not in `valid` (CNI GC) and
    /// returns what was released.
    pub fn retain(&mut self, valid: &HashSet<AttachmentKey>) -> Vec<(AttachmentKey, IpAddr)> {
        let mut released = Vec::new();
        self.attachments.retain(|key, a| {
            let keep = valid.contains(key);
            if !keep {
                released.extend(a.ips.iter().map(|ip| (key.clone(), *ip)));
            }
            keep
        });
        for (key, ip) in &released {
            self.used.remove(ip);
            self.touch(key);
        }
        if !released.is_empty() {
            self.revision += 1;
        }
        released
    }

    /// Drops every allocation and cursor and adopts `boot_id`; returns how many
    /// addresses were dropped. Used when the state outlived its kernel.
    pub(crate) fn reset_for_boot(&mut self, boot_id: &str) -> usize {
        let dropped = self.used.len();
        let revision = self.revision + 1;
        *self = Self::new(boot_id);
        self.revision = revision;
        dropped
    }

    /// Changes whenever the state changes.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// Starts recording which attachments change, for [`Self::take_changes`].
    pub(crate) fn record_changes(&mut self) {
        self.touched = Some(BTreeSet::new());
    }

    /// The keys whose attachment may have changed since
    /// [`Self::record_changes`] (a key may be listed and yet be back to its
    /// old value), and stops recording. `None` when the state was not
    /// recording, e.g. because it was replaced by another one.
    pub(crate) fn take_changes(&mut self) -> Option<BTreeSet<AttachmentKey>> {
        self.touched.take()
    }

    fn touch(&mut self, key: &AttachmentKey) {
        if let Some(touched) = &mut self.touched {
            touched.insert(key.clone());
        }
    }

    /// The attachment of `key`, details included.
    pub(crate) fn attachment(&self, key: &AttachmentKey) -> Option<&Attachment> {
        self.attachments.get(key)
    }

    /// Every cursor, by block.
    pub(crate) fn cursor_map(&self) -> &BTreeMap<IpNet, IpAddr> {
        &self.cursors
    }

    /// Replaces every cursor (replaying a journal).
    pub(crate) fn set_cursor_map(&mut self, cursors: BTreeMap<IpNet, IpAddr>) {
        if self.cursors != cursors {
            self.cursors = cursors;
            self.revision += 1;
        }
    }

    /// Adds an attachment as stored (replaying a journal), refusing one that
    /// would break the invariant: `key` must be absent and its addresses free.
    /// An attachment without addresses is dropped, as on load.
    pub(crate) fn insert_attachment(
        &mut self,
        key: AttachmentKey,
        mut attachment: Attachment,
    ) -> Result<(), StateDocError> {
        if attachment.ips.is_empty() {
            return Ok(());
        }
        for (i, ip) in attachment.ips.iter().enumerate() {
            if self.used.contains(ip) || attachment.ips[..i].contains(ip) {
                // Error path only: find who had it first.
                let first = self
                    .owner(*ip)
                    .map_or_else(|| key.clone(), |(k, _)| k.clone());
                return Err(StateDocError::SharedAddress {
                    addr: *ip,
                    first,
                    second: key,
                });
            }
        }
        self.touch(&key);
        match self.attachments.entry(key) {
            Entry::Occupied(e) => Err(StateDocError::DuplicateAttachment {
                key: e.key().clone(),
            }),
            Entry::Vacant(e) => {
                attachment.ips.sort();
                self.used.extend(attachment.ips.iter().copied());
                e.insert(attachment);
                self.revision += 1;
                Ok(())
            }
        }
    }

    /// How full each block is.
    pub fn usage(&self, blocks: &[IpNet]) -> Vec<BlockUsage> {
        blocks
            .iter()
            .map(|block| {
                let block = block.trunc();
                let range = Usable::of(block);
                BlockUsage {
                    block,
                    used: self.used.range(range.lo_addr()..=range.hi_addr()).count(),
                    capacity: range.capacity(),
                }
            })
            .collect()
    }

    /// The first free address of `block` after its cursor, wrapping around.
    fn free_in(&self, block: IpNet) -> Option<IpAddr> {
        let range = Usable::of(block);
        let start = match self.cursors.get(&block) {
            Some(cursor) if range.contains(*cursor) => {
                let last = range.offset(*cursor);
                if last == range.hi { range.lo } else { last + 1 }
            }
            _ => range.lo,
        };
        let found = self.first_free(&range, start, range.hi).or_else(|| {
            // Wrap: the part before the cursor, if there is one.
            (start > range.lo)
                .then(|| self.first_free(&range, range.lo, start - 1))
                .flatten()
        })?;
        Some(range.addr(found))
    }

    /// The lowest free value in `from..=to` (inside `range`), walking only the
    /// allocations in that interval.
    fn first_free(&self, range: &Usable, from: u128, to: u128) -> Option<u128> {
        let mut candidate = from;
        for ip in self
            .used
            .range(range.addr(from)..=range.addr(to))
            .map(|ip| range.offset(*ip))
        {
            if ip != candidate {
                // Allocations are ordered and >= candidate, so there is a gap.
                break;
            }
            if candidate == to {
                return None;
            }
            candidate += 1;
        }
        Some(candidate)
    }
}

/// The state as stored on disk (format documented in the store module).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateDoc {
    /// The store's, not the state's: see [`Snapshot`].
    #[serde(default)]
    journal_gen: u64,
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    cursors: BTreeMap<IpNet, IpAddr>,
    #[serde(default)]
    attachments: Vec<AttachmentDoc>,
}

/// One entry of [`StateDoc::attachments`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachmentDoc {
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
    #[serde(default)]
    host_iface: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl AttachmentDoc {
    /// The key, and the attachment with its addresses as stored.
    pub(crate) fn into_parts(self) -> (AttachmentKey, Attachment) {
        let key = AttachmentKey {
            container_id: self.container_id,
            ifname: self.ifname,
        };
        let meta = OwnerMeta {
            host_iface: self.host_iface,
            namespace: self.namespace,
            name: self.name,
        };
        (
            key,
            Attachment {
                ips: self.ips,
                meta,
            },
        )
    }
}

/// [`StateDoc`] borrowed from an [`IpamState`], to save without copying.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateDocRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    journal_gen: Option<u64>,
    boot_id: &'a str,
    cursors: &'a BTreeMap<IpNet, IpAddr>,
    attachments: AttachmentsRef<'a>,
}

struct AttachmentsRef<'a>(&'a BTreeMap<AttachmentKey, Attachment>);

/// [`AttachmentDoc`] borrowed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachmentDocRef<'a> {
    container_id: &'a str,
    ifname: &'a str,
    ips: &'a [IpAddr],
    #[serde(skip_serializing_if = "Option::is_none")]
    host_iface: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> AttachmentDocRef<'a> {
    /// One attachment as stored.
    pub(crate) fn new(key: &'a AttachmentKey, a: &'a Attachment) -> Self {
        Self {
            container_id: &key.container_id,
            ifname: &key.ifname,
            ips: &a.ips,
            host_iface: a.meta.host_iface.as_deref(),
            namespace: a.meta.namespace.as_deref(),
            name: a.meta.name.as_deref(),
        }
    }
}

impl Serialize for AttachmentsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(key, a)| AttachmentDocRef::new(key, a)))
    }
}

impl Serialize for IpamState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateDocRef {
            journal_gen: None,
            boot_id: &self.boot_id,
            cursors: &self.cursors,
            attachments: AttachmentsRef(&self.attachments),
        }
        .serialize(serializer)
    }
}

/// The document as the store keeps it: the state plus the generation of the
/// journal that continues it (0 when absent, as in files of older versions).
/// Parsed in one pass, unlike a `#[serde(flatten)]` wrapper, which would
/// buffer the whole document first.
#[derive(Debug, Deserialize)]
#[serde(try_from = "StateDoc")]
pub(crate) struct Snapshot {
    /// The state.
    pub(crate) state: IpamState,
    /// The store's journal generation.
    pub(crate) journal_gen: u64,
}

impl TryFrom<StateDoc> for Snapshot {
    type Error = StateDocError;

    fn try_from(doc: StateDoc) -> Result<Self, Self::Error> {
        let journal_gen = doc.journal_gen;
        Ok(Self {
            state: IpamState::try_from(doc)?,
            journal_gen,
        })
    }
}

/// [`Snapshot`] borrowed, to save without copying.
pub(crate) struct SnapshotRef<'a> {
    /// The state.
    pub(crate) state: &'a IpamState,
    /// The store's journal generation.
    pub(crate) journal_gen: u64,
}

impl Serialize for SnapshotRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateDocRef {
            journal_gen: Some(self.journal_gen),
            boot_id: &self.state.boot_id,
            cursors: &self.state.cursors,
            attachments: AttachmentsRef(&self.state.attachments),
        }
        .serialize(serializer)
    }
}

/// A stored state that breaks the allocator's invariant: never written by
/// this code, so the file was edited or damaged, and it is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateDocError {
    #[error("address {addr} is held by both {first} and {second}")]
    SharedAddress {
        addr: IpAddr,
        first: AttachmentKey,
        second: AttachmentKey,
    },
    #[error("attachment {key} is listed twice")]
    DuplicateAttachment { key: AttachmentKey },
}

impl TryFrom<StateDoc> for IpamState {
    type Error = StateDocError;

    fn try_from(doc: StateDoc) -> Result<Self, Self::Error> {
        let mut state = Self {
            boot_id: doc.boot_id,
            cursors: doc.cursors,
            ..Self::default()
        };
        for entry in doc.attachments {
            let (key, attachment) = entry.into_parts();
            state.insert_attachment(key, attachment)?;
        }
        state.revision = 0;
        Ok(state)
    }
}

/// The usable addresses of a block as an inclusive `u128` interval.
struct Usable {
    family: IpFamily,
    lo: u128,
    hi: u128,
}

impl Usable {
    /// Excludes the reserved addresses: the IPv4 network and broadcast
    /// addresses when the block has room for them (prefix <= 30; /31 and /32
    /// are point-to-point and host routes, RFC 3021), and the IPv6
    /// subnet-router anycast address (prefix <= 126).
    fn of(block: IpNet) -> Self {
        match block {
            IpNet::V4(net) => {
                let (lo, hi) = v4_bounds(&net);
                if net.prefix_len() <= 30 {
                    Self {
                        family: IpFamily::V4,
                        lo: lo + 1,
                        hi: hi - 1,
                    }
                } else {
                    Self {
                        family: IpFamily::V4,
                        lo,
                        hi,
                    }
                }
            }
            IpNet::V6(net) => {
                let (lo, hi) = v6_bounds(&net);
                if net.prefix_len() <= 126 {
                    Self {
                        family: IpFamily::V6,
                        lo: lo + 1,
                        hi,
                    }
                } else {
                    Self {
                        family: IpFamily::V6,
                        lo,
                        hi,
                    }
                }
            }
        }
    }

    fn capacity(&self) -> u128 {
        (self.hi - self.lo).saturating_add(1)
    }

    fn contains(&self, addr: IpAddr) -> bool {
        IpFamily::of_addr(&addr) == self.family && (self.lo..=self.hi).contains(&self.offset(addr))
    }

    /// The address as a number; only meaningful for addresses of `self.family`.
    fn offset(&self, addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The address of a number inside the interval (so it fits the family).
    fn addr(&self, value: u128) -> IpAddr {
        match self.family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }

    fn lo_addr(&self) -> IpAddr {
        self.addr(self.lo)
    }

    fn hi_addr(&self) -> IpAddr {
        self.addr(self.hi)
    }
}

fn v4_bounds(net: &Ipv4Net) -> (u128, u128) {
    (
        u128::from(u32::from(net.network())),
        u128::from(u32::from(net.broadcast())),
    )
}

fn v6_bounds(net: &Ipv6Net) -> (u128, u128) {
    (u128::from(net.network()), u128::from(net.broadcast()))
}

#[cfg(test)]
mod tests;
