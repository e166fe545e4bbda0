//! TCP MD5 signatures (RFC 2385) on BGP sockets.
//!
//! nix 0.31 does not wrap `TCP_MD5SIG` and libc has no `struct tcp_md5sig`,
//! so the struct is declared here and set with one `setsockopt` call. Keys
//! are per peer address: set one on a listening socket for every peer that
//! may connect, and on a connecting socket for the peer it connects to,
//! before `connect`.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Longest key the kernel accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// Why a key could not be set.
#[derive(Debug, thiserror::Error)]
pub enum Md5Error {
    /// The key is longer than the kernel allows.
    #[error("TCP MD5 key for {peer} is {len} bytes, the kernel allows at most {MAX_KEY_LEN}")]
    KeyTooLong {
        /// Peer the key was for.
        peer: IpAddr,
        /// Its length.
        len: usize,
    },
    /// The kernel refused the option.
    #[error("setsockopt(TCP_MD5SIG) for {peer}")]
    Setsockopt {
        /// Peer the key was for.
        peer: IpAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `struct tcp_md5sig` from `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

fn storage_for(peer: IpAddr) -> libc::sockaddr_storage {
    let mut out = zeroed_storage();
    match peer {
        IpAddr::V4(a) => {
            out.ss_family = libc::AF_INET as libc::sa_family_t;
            // sockaddr_in: family (2), port (2), addr (4).
            storage_bytes_mut(&mut out)[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.ss_family = libc::AF_INET6 as libc::sa_family_t;
            // sockaddr_in6: family (2), port (2), flowinfo (4), addr (16).
            storage_bytes_mut(&mut out)[8..24].copy_from_slice(&a.octets());
        }
    }
    out
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // sockaddr_storage is plain old data; an all-zero value is valid.
    #[allow(unsafe_code)]
    // SAFETY: sockaddr_storage contains only integers and padding, for which
    // the all-zero bit pattern is a valid value.
    unsafe {
        std::mem::zeroed()
    }
}

fn storage_bytes_mut(ss: &mut libc::sockaddr_storage) -> &mut [u8] {
    #[allow(unsafe_code)]
    // SAFETY: the pointer comes from a live &mut sockaddr_storage and the
    // length is its size; u8 has no alignment or validity requirements, and
    // the returned slice borrows `ss` mutably so nothing else aliases it.
    unsafe {
        std::slice::from_raw_parts_mut(
            (ss as *mut libc::sockaddr_storage).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_storage>(),
        )
    }
}

/// Sets (or, with an empty key, removes) the TCP MD5 key used with `peer`
/// on socket `fd`.
pub fn set_tcp_md5(fd: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> Result<(), Md5Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Md5Error::KeyTooLong {
            peer,
            len: key.len(),
        });
    }
    let mut sig = TcpMd5Sig {
        addr: storage_for(peer),
        flags: 0,
        prefixlen: 0,
        keylen: u16::try_from(key.len()).unwrap_or(0),
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    let len = libc::socklen_t::try_from(std::mem::size_of::<TcpMd5Sig>()).unwrap_or(0);
    #[allow(unsafe_code)]
    // SAFETY: `fd` is a valid open descriptor for the duration of the
    // borrow; `sig` is a fully initialised repr(C) struct matching the
    // kernel's `struct tcp_md5sig`, and `len` is its exact size, so the
    // kernel reads only memory we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast::<libc::c_void>(),
            len,
        )
    };
    if rc != 0 {
        return Err(Md5Error::Setsockopt {
            peer,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_struct_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn a_key_can_be_set_and_removed_on_a_tcp_socket() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&sock);
        set_tcp_md5(fd, "127.0.0.2".parse().unwrap(), b"secret").unwrap();
        set_tcp_md5(fd, "127.0.0.2".parse().unwrap(), b"").unwrap();
        set_tcp_md5(fd, "::1".parse().unwrap(), b"secret").unwrap_err();
        let err = set_tcp_md5(fd, "127.0.0.2".parse().unwrap(), &[0; 81]).unwrap_err();
        assert!(matches!(err, Md5Error::KeyTooLong { .. }));
    }
}
