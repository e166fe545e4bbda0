//! The journal's line format, pure: encoding a transaction's changes as one
//! line and replaying lines onto a state. The files and the rules about when
//! a line may be ignored are described in [`super`].
//!
//! A line is `<crc> <json>\n`: `<crc>` is the CRC-32C (Castagnoli) of the
//! JSON bytes as 8 lowercase hex digits, and `<json>` is one object without
//! a newline (serde_json escapes newlines in strings):
//!
//! ```json
//! {"put": [{"containerId": "0123…", "ifname": "eth0",
//!           "ips": ["10.244.1.3", "fd00:10:244:1::3"],
//!           "hostIface": "tab5f0c2e1a9b3d", "namespace": "default", "name": "web-0"}],
//!  "remove": [{"containerId": "4567…", "ifname": "eth0"}],
//!  "cursors": {"10.244.1.0/26": "10.244.1.3", "fd00:10:244:1::/122": "fd00:10:244:1::3"}}
//! ```
//!
//! Every member is optional. Applying a record first removes every key named
//! in `put` or `remove`, then inserts the `put` attachments as given, then,
//! when `cursors` is present, replaces the whole cursor map (it holds one
//! entry per block, so a few dozen bytes). Removing first makes the order of
//! the entries irrelevant: a transaction may move an address from one
//! attachment to another.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ipam::state::{Attachment, AttachmentDoc, AttachmentDocRef, AttachmentKey, IpamState};

/// `<8 hex digits> `.
const PREFIX_LEN: usize = 9;

/// One transaction's changes, as written. The attachments are written as
/// in the snapshot.
#[derive(Serialize)]
struct RecordRef<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    put: Vec<AttachmentDocRef<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remove: Vec<&'a AttachmentKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursors: Option<&'a BTreeMap<IpNet, IpAddr>>,
}

/// One transaction's changes, as read. Unknown members are ignored, like
/// unknown fields of the snapshot.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    put: Vec<AttachmentDoc>,
    #[serde(default)]
    remove: Vec<AttachmentKey>,
    #[serde(default)]
    cursors: Option<BTreeMap<IpNet, IpAddr>>,
}

/// Encodes, as one journal line, what turns the state before a transaction
/// into `state`: the current value of every key in `touched` (a put, or a
/// remove when the key is gone), and the cursors when they changed.
pub(super) fn encode_line(
    state: &IpamState,
    touched: &BTreeSet<AttachmentKey>,
    cursors_changed: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut record = RecordRef {
        put: Vec::new(),
        remove: Vec::new(),
        cursors: cursors_changed.then(|| state.cursor_map()),
    };
    for key in touched {
        match state.attachment(key) {
            Some(a) => record.put.push(AttachmentDocRef::new(key, a)),
            None => record.remove.push(key),
        }
    }
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"00000000 ");
    serde_json::to_writer(&mut line, &record)?;
    let crc = crc32c(&line[PREFIX_LEN..]);
    line[..8].copy_from_slice(format!("{crc:08x}").as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// What replaying a journal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Applied records.
    pub(super) records: usize,
    /// The length of the applied lines: anything after is a torn tail.
    pub(super) valid_len: usize,
}

/// A journal that cannot be replayed.
#[derive(Debug)]
pub(super) struct ReplayError {
    /// 1-based line number.
    pub(super) line: usize,
    /// What is wrong with it.
    pub(super) reason: String,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal line {}: {}", self.line, self.reason)
    }
}

/// Why one line does not verify.
enum LineError {
    /// Not `<8 hex> <json>`, or the checksum differs: torn or damaged bytes.
    Damaged(&'static str),
    /// The checksum matches but the record does not apply: never written by
    /// this code (or by a newer one with another meaning), so never ignored.
    Invalid(String),
}

/// Applies every line of `bytes` to `state`, in order.
///
/// The last line may be torn (no newline) or fail its checksum: its writer
/// was killed in its `write`, so it was never acknowledged; it is skipped
/// and reported through `valid_len`. Damage anywhere else, or a line whose
/// checksum matches but that does not apply, is an error. On error `state`
/// is partly replayed and must be thrown away.
pub(super) fn replay(bytes: &[u8], state: &mut IpamState) -> Result<Replayed, ReplayError> {
    let mut replayed = Replayed {
        records: 0,
        valid_len: 0,
    };
    let mut rest = bytes;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let (line, next, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        let result = if complete {
            apply_line(line, state)
        } else {
            Err(LineError::Damaged("torn: no newline"))
        };
        match result {
            Ok(()) => {
                replayed.records += 1;
                replayed.valid_len = bytes.len() - next.len();
            }
            Err(LineError::Damaged(_)) if next.is_empty() => return Ok(replayed),
            Err(LineError::Damaged(reason)) => {
                return Err(ReplayError {
                    line: line_no,
                    reason: format!("{reason}, and followed by more lines"),
                });
            }
            Err(LineError::Invalid(reason)) => {
                return Err(ReplayError {
                    line: line_no,
                    reason,
                });
            }
        }
        rest = next;
    }
    Ok(replayed)
}

fn apply_line(line: &[u8], state: &mut IpamState) -> Result<(), LineError> {
    if line.len() < PREFIX_LEN || line[8] != b' ' {
        return Err(LineError::Damaged("not `<crc> <json>`"));
    }
    let (crc, json) = (&line[..8], &line[PREFIX_LEN..]);
    let crc = std::str::from_utf8(crc)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or(LineError::Damaged("checksum is not hex"))?;
    if crc != crc32c(json) {
        return Err(LineError::Damaged("checksum mismatch"));
    }
    let record: Record =
        serde_json::from_slice(json).map_err(|e| LineError::Invalid(e.to_string()))?;
    let puts: Vec<(AttachmentKey, Attachment)> = record
        .put
        .into_iter()
        .map(AttachmentDoc::into_parts)
        .collect();
    for key in record.remove.iter().chain(puts.iter().map(|(key, _)| key)) {
        state.release(key);
    }
    for (key, attachment) in puts {
        state
            .insert_attachment(key, attachment)
            .map_err(|e| LineError::Invalid(e.to_string()))?;
    }
    if let Some(cursors) = record.cursors {
        state.set_cursor_map(cursors);
    }
    Ok(())
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as in iSCSI and
/// ext4; slicing-by-8, since every load checks every line.
pub(super) fn crc32c(bytes: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// `[0]` is the byte-at-a-time table; `[k][i]` is the CRC of byte `i`
/// followed by `k` zero bytes.
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

#[cfg(test)]
mod tests;
