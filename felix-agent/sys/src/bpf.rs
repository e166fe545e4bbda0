//! The few `bpf(2)` commands tabby uses, with no loader library: load a
//! SCHED_CLS program from instructions, attach it to a device's TCX hook,
//! list what is attached there, and run a program over a crafted packet.
//!
//! Every command goes through [`sys_bpf`], the one unsafe call. Attribute
//! structs are the kernel's `union bpf_attr` members, `#[repr(C)]` with
//! explicit padding fields (the kernel refuses a non-zero byte past the
//! command's last field, and implicit padding may hold anything), zeroed
//! past the fields set; the size passed is the struct's, which the kernel
//! accepts for any prefix of the union whose tail is zero.
//!
//! A program attached with `BPF_PROG_ATTACH` (not a BPF link) belongs to
//! the device from then on: the loader's descriptor can be closed, nothing
//! is pinned, and the program goes away with the device.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: u32 = 5;
/// `BPF_PROG_ATTACH`.
const BPF_PROG_ATTACH: u32 = 8;
/// `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: u32 = 10;
/// `BPF_PROG_GET_FD_BY_ID`.
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
/// `BPF_PROG_QUERY`.
const BPF_PROG_QUERY: u32 = 16;

/// `BPF_PROG_TYPE_SCHED_CLS`: a tc/TCX program over an `__sk_buff`.
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS` (`enum bpf_attach_type`, Linux 6.6).
pub const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_F_BEFORE`: with no relative program, attach at the front.
pub const BPF_F_BEFORE: u32 = 1 << 3;
/// `BPF_OBJ_NAME_LEN`.
pub const OBJ_NAME_LEN: usize = 16;

/// A `bpf(2)` command failed.
#[derive(Debug, thiserror::Error)]
#[error("bpf {op}: {}{}", std::io::Error::from_raw_os_error(*errno), if log.is_empty() { String::new() } else { format!("\nverifier log:\n{log}") })]
pub struct BpfError {
    /// The command, e.g. "prog load".
    pub op: &'static str,
    /// The positive errno.
    pub errno: i32,
    /// The verifier's log, for a refused load.
    pub log: String,
}

impl BpfError {
    fn new(op: &'static str, errno: i32) -> Self {
        BpfError {
            op,
            errno,
            log: String::new(),
        }
    }
}

/// The one unsafe call: `bpf(cmd, attr, size_of(attr))`.
fn sys_bpf<T>(op: &'static str, cmd: u32, attr: &mut T) -> Result<i64, BpfError> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `attr` is an exclusively borrowed, initialised `#[repr(C)]`
    // struct laid out as the `union bpf_attr` member for `cmd`, valid for
    // reads and writes of `size` bytes for the duration of the call; every
    // pointer stored in it refers to a buffer the caller keeps alive, with
    // the length stored next to it. The kernel writes only within `size`.
    #[allow(unsafe_code)]
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            size as libc::c_long,
        )
    };
    if ret < 0 {
        Err(BpfError::new(
            op,
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(ret)
    }
}

fn fd_of(op: &'static str, ret: i64) -> Result<OwnedFd, BpfError> {
    let fd = i32::try_from(ret).map_err(|_| BpfError::new(op, libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that
    // nothing else owns; `OwnedFd` takes sole ownership and closes it.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a program (instructions as `struct bpf_insn` bytes). A refused
/// load is retried once with the verifier's log, which the error carries.
pub fn prog_load(
    prog_type: u32,
    insns: &[u8],
    name: &str,
    license: &str,
) -> Result<OwnedFd, BpfError> {
    let op = "prog load";
    let insn_cnt = u32::try_from(insns.len() / 8).map_err(|_| BpfError::new(op, libc::E2BIG))?;
    let mut lic = license.as_bytes().to_vec();
    lic.push(0);
    let mut prog_name = [0u8; OBJ_NAME_LEN];
    for (d, s) in prog_name
        .iter_mut()
        .zip(name.bytes().take(OBJ_NAME_LEN - 1))
    {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: ptr(insns.as_ptr()),
        license: ptr(lic.as_ptr()),
        prog_name,
        ..Default::default()
    };
    match sys_bpf(op, BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd_of(op, fd),
        Err(e) if e.errno == libc::EACCES || e.errno == libc::EINVAL => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = ptr(log.as_mut_ptr());
            let again = sys_bpf(op, BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            match again {
                Ok(fd) => fd_of(op, fd),
                Err(mut e) => {
                    e.log = String::from_utf8_lossy(&log[..end]).into_owned();
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    }
}

#[repr(C, align(8))]
#[derive(Default)]
struct ProgAttachAttr {
    target: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative: u32,
    expected_revision: u64,
}

/// Attaches `prog` to `ifindex` at `attach_type` (a TCX hook) with
/// `flags` (e.g. [`BPF_F_BEFORE`]: first in line). The device keeps the
/// program; `prog` may be closed afterwards.
pub fn prog_attach_tcx(
    prog: &OwnedFd,
    ifindex: u32,
    attach_type: u32,
    flags: u32,
) -> Result<(), BpfError> {
    let mut attr = ProgAttachAttr {
        target: ifindex,
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        attach_flags: flags,
        ..Default::default()
    };
    sys_bpf("prog attach", BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    // A descriptor is never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

#[repr(C, align(8))]
#[derive(Default)]
struct ProgQueryAttr {
    target: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The ids of the programs attached to `ifindex` at `attach_type`, in the
/// order they run (at most 64 are listed).
pub fn prog_query(ifindex: u32, attach_type: u32) -> Result<Vec<u32>, BpfError> {
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQueryAttr {
        target: ifindex,
        attach_type,
        prog_ids: ptr(ids.as_mut_ptr()),
        count: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf("prog query", BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.count as usize);
    Ok(ids)
}

#[repr(C, align(8))]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
    // Explicit: the kernel refuses a non-zero tail, and implicit padding
    // is not guaranteed to be zero.
    _pad: u32,
}

#[repr(C, align(8))]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The part of `struct bpf_prog_info` tabby reads.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; OBJ_NAME_LEN],
}

/// What the kernel says about a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgSummary {
    /// `bpf_prog_info.type`.
    pub prog_type: u32,
    /// The name given at load.
    pub name: String,
    /// The kernel's tag: the first 8 bytes of the SHA-1 of the loaded
    /// instructions.
    pub tag: [u8; 8],
}

/// Type, name and tag of the program with id `id`.
pub fn prog_summary(id: u32) -> Result<ProgSummary, BpfError> {
    let mut get = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    let fd = fd_of(
        "prog get fd by id",
        sys_bpf("prog get fd by id", BPF_PROG_GET_FD_BY_ID, &mut get)?,
    )?;
    prog_info(&fd)
}

/// Type, name and tag of the loaded program `fd`.
pub fn prog_info(fd: &OwnedFd) -> Result<ProgSummary, BpfError> {
    let mut info = ProgInfo::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: fd_u32(fd),
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: ptr(&mut info as *mut ProgInfo),
    };
    sys_bpf("obj get info by fd", BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let end = info
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(OBJ_NAME_LEN);
    Ok(ProgSummary {
        prog_type: info.prog_type,
        name: String::from_utf8_lossy(&info.name[..end]).into_owned(),
        tag: info.tag,
    })
}

#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs `prog` once over `frame` (an Ethernet frame, as a SCHED_CLS
/// program sees it) and returns its return value.
pub fn prog_test_run(prog: &OwnedFd, frame: &[u8]) -> Result<i32, BpfError> {
    let op = "prog test run";
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: u32::try_from(frame.len()).map_err(|_| BpfError::new(op, libc::E2BIG))?,
        data_size_out: out.len() as u32,
        data_in: ptr(frame.as_ptr()),
        data_out: ptr(out.as_mut_ptr()),
        repeat: 1,
        ..Default::default()
    };
    sys_bpf(op, BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval as i32)
}
