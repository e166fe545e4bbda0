//! Which endpoint records the agent believes: a pure decision over the
//! record files as read (name, mtime, content) and the node's links.
//!
//! A record in `<run-dir>/endpoints/` is written by the CNI plugin, but
//! anything that can write there can write a record, and a record decides
//! what nftables and the routing table get. So a record is admitted only if:
//! - it parses, with a host interface that is a tabby workload interface
//!   name ([`HostIface`]: prefix + hex, 15 bytes);
//! - its file is named `<containerID>_<ifname>.json` after its own content;
//! - that interface exists on the node with the recorded ifindex (a stale
//!   record of a deleted veth, or one naming a veth it did not create, no);
//! - no older record claims the same interface or one of its addresses.
//!   Age is the record's `createdMs`, else the file's mtime; ties go to the
//!   smaller container ID. So the outcome never depends on directory order.
//!
//! A refused record never reaches a dataplane or a route; the agent logs it
//! and counts it in `tabby_endpoints_refused_total{reason}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tabby_common::endpoint::{EndpointRecord, RecordFile, record_file_name};
use tabby_common::naming::HostIface;

/// The node's links: name -> ifindex.
pub type Links = BTreeMap<String, u32>;

/// The record files and the node's links, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// Every record file (temporary files excluded).
    pub records: Vec<RecordFile>,
    /// The node's links.
    pub links: Links,
}

/// Why a record was refused (the `reason` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The record does not parse (including a bad host interface name).
    Unparseable,
    /// The file name does not match the record's container ID and ifname.
    FileName,
    /// The host interface does not exist on the node.
    NoInterface,
    /// The host interface exists with another ifindex.
    IfindexMismatch,
    /// An older record claims the same host interface.
    InterfaceConflict,
    /// An older record claims one of the same addresses.
    AddressConflict,
}

impl RefusalReason {
    /// Every reason, for metrics that list each label.
    pub const ALL: [RefusalReason; 6] = [
        RefusalReason::Unparseable,
        RefusalReason::FileName,
        RefusalReason::NoInterface,
        RefusalReason::IfindexMismatch,
        RefusalReason::InterfaceConflict,
        RefusalReason::AddressConflict,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unparseable => "unparseable",
            RefusalReason::FileName => "file_name",
            RefusalReason::NoInterface => "no_interface",
            RefusalReason::IfindexMismatch => "ifindex_mismatch",
            RefusalReason::InterfaceConflict => "interface_conflict",
            RefusalReason::AddressConflict => "address_conflict",
        }
    }
}

/// A refused record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint record {file_name} refused ({}): {detail}", reason.as_str())]
pub struct Refusal {
    /// The record's file name.
    pub file_name: String,
    /// Why.
    pub reason: RefusalReason,
    /// What exactly, for the log.
    pub detail: String,
}

/// The outcome of admission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Admitted records by host interface.
    pub endpoints: BTreeMap<HostIface, EndpointRecord>,
    /// Refused records, by file name.
    pub refused: BTreeMap<String, Refusal>,
}

/// Decides which records to believe (see the module documentation).
pub fn admit<'a>(records: impl IntoIterator<Item = &'a RecordFile>, links: &Links) -> Admitted {
    let mut refused = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    let mut refuse = |file: &RecordFile, reason, detail: String| {
        refused.insert(
            file.file_name.clone(),
            Refusal {
                file_name: file.file_name.clone(),
                reason,
                detail,
            },
        );
    };
    let mut candidates: Vec<(&RecordFile, &EndpointRecord)> = Vec::new();
    for file in records {
        let rec = match &file.record {
            Ok(r) => r,
            Err(e) => {
                refuse(file, RefusalReason::Unparseable, e.clone());
                continue;
            }
        };
        let expected = record_file_name(&rec.container_id, &rec.ifname);
        if file.file_name != expected {
            refuse(
                file,
                RefusalReason::FileName,
                format!("the record is for {expected}"),
            );
            continue;
        }
        match links.get(rec.host_iface.as_str()) {
            None => {
                refuse(
                    file,
                    RefusalReason::NoInterface,
                    format!("no interface {} on the node", rec.host_iface),
                );
                continue;
            }
            Some(index) if *index != rec.host_ifindex => {
                refuse(
                    file,
                    RefusalReason::IfindexMismatch,
                    format!(
                        "{} has ifindex {index}, the record says {}",
                        rec.host_iface, rec.host_ifindex
                    ),
                );
                continue;
            }
            Some(_) => {}
        }
        candidates.push((file, rec));
    }
    // Oldest first: the first to claim an interface or address keeps it.
    candidates.sort_by(|(fa, a), (fb, b)| {
        age(fa, a)
            .cmp(&age(fb, b))
            .then_with(|| a.container_id.cmp(&b.container_id))
            .then_with(|| fa.file_name.cmp(&fb.file_name))
    });
    let mut owner_of_addr: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut owner_of_iface: BTreeMap<&HostIface, &str> = BTreeMap::new();
    for (file, rec) in candidates {
        if let Some(owner) = owner_of_iface.get(&rec.host_iface) {
            refuse(
                file,
                RefusalReason::InterfaceConflict,
                format!("{} is claimed by the older {owner}", rec.host_iface),
            );
            continue;
        }
        let addrs: BTreeSet<IpAddr> = rec.ips.iter().map(|n| n.addr()).collect();
        if let Some((ip, owner)) = addrs
            .iter()
            .find_map(|ip| owner_of_addr.get(ip).map(|o| (ip, *o)))
        {
            refuse(
                file,
                RefusalReason::AddressConflict,
                format!("{ip} is claimed by the older {owner}"),
            );
            continue;
        }
        owner_of_iface.insert(&rec.host_iface, &file.file_name);
        for ip in addrs {
            owner_of_addr.insert(ip, &file.file_name);
        }
        endpoints.insert(rec.host_iface.clone(), rec.clone());
    }
    Admitted { endpoints, refused }
}

/// A record's age key: its creation time, else its file's mtime; a record
/// with neither (just handed over the socket) is the newest.
fn age(file: &RecordFile, rec: &EndpointRecord) -> u64 {
    rec.created_ms.or(file.modified_ms).unwrap_or(u64::MAX)
}
