//! Deleting a veth pair without waiting for the kernel's memory reclamation.
//!
//! Deleting a network device runs, inside the `RTM_DELLINK` request, first
//! the unregistration proper under the RTNL lock (the device leaves the
//! namespace's lists, `NETDEV_UNREGISTER` flushes its routes, neighbours,
//! addresses, qdiscs, filters and sysctls, `RTM_DELLINK` is broadcast, its
//! sysfs entries go), and then, after the lock is released,
//! `netdev_run_todo()`: an `rcu_barrier()` and a wait for the last
//! references before the memory is freed. Measured here (perf, off-CPU
//! stacks of the plugin): the first part ~0.1-2 ms, the `rcu_barrier()`
//! ~14-20 ms, the whole of a DEL's kernel time. No request can skip it, and
//! a thread of the plugin cannot wait it out for us: a process exits only
//! when every thread has left the kernel.
//!
//! So a forked helper sends the request, and the plugin returns as soon as
//! the kernel broadcasts `RTM_DELLINK` for the end that is unregistered
//! last. From then on nothing of the pair is visible to anyone: not by
//! name, not by index, no route, neighbour, address, filter or sysctl; the
//! names are free (and a new device can only be registered under the RTNL
//! lock, after the helper's unregistration has finished, sysfs included).
//! What the helper still waits for is invisible reclamation, the same work
//! the kernel defers to a workqueue when a whole network namespace is
//! deleted. The helper's standard streams are `/dev/null`, so a runtime
//! reading the plugin's output sees EOF when the plugin exits; the helper
//! exits by itself once the request returns (it cannot be interrupted
//! before, and killing it afterwards changes nothing).
//!
//! Whenever the broadcast cannot be relied on (events lost to a full
//! socket buffer, a peer elsewhere than expected), the plugin waits for
//! the helper's own answer instead, which is exactly the synchronous
//! behaviour.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::netlink::{Netlink, NetlinkError};

/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;

/// Link notifications of the namespace the socket was opened in.
#[derive(Debug)]
pub struct LinkEvents {
    socket: Socket,
}

fn sock_err(op: &str) -> impl Fn(std::io::Error) -> NetlinkError + '_ {
    move |source| NetlinkError::Socket {
        op: op.to_string(),
        source,
    }
}

impl LinkEvents {
    /// Subscribes to `RTNLGRP_LINK` in the calling thread's namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let op = "subscribe to link events";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err(op))?;
        socket.bind_auto().map_err(sock_err(op))?;
        socket.add_membership(RTNLGRP_LINK).map_err(sock_err(op))?;
        socket.set_non_blocking(true).map_err(sock_err(op))?;
        Ok(LinkEvents { socket })
    }

    /// Reads what is queued; `Ok(true)` when it announced the deletion of
    /// link `index`, `Err` when events were lost (`ENOBUFS`).
    fn saw_deleted(&mut self, index: u32) -> Result<bool, std::io::Error> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            let mut offset = 0;
            while offset < buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                else {
                    break;
                };
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) = msg.payload
                    && l.header.index == index
                {
                    return Ok(true);
                }
            }
        }
    }
}

/// True when the calling process has a single thread: `fork` copies only
/// the calling thread, so the helper may only run code that no other
/// thread could have left half-done (a lock held in the allocator, say).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() == 1)
        .unwrap_or(false)
}

/// Deletes link `index` of `pod`'s namespace (one end of a veth pair) and
/// returns once `events`, opened in the peer's namespace before the call,
/// has announced the deletion of the peer, `peer_index`; the rest of the
/// kernel's work finishes in a helper process (see the module doc). Falls
/// back to a plain synchronous delete when the process is not
/// single-threaded or cannot fork. A link already gone is success.
pub fn delete_veth_detached(
    mut pod: Netlink,
    index: u32,
    events: &mut LinkEvents,
    peer_index: u32,
    timeout: Duration,
) -> Result<(), NetlinkError> {
    let op = format!("delete link {index}");
    if !single_threaded() {
        return pod.delete_link(index);
    }
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(sock_err(&op))?;
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sock_err(&op)(e.into()))?;
    // SAFETY: the process has one thread (checked above), so the child is
    // a complete copy of a consistent process: no lock can be held by a
    // thread that does not exist in it, and it may allocate. It touches
    // only its own copies of the descriptors and leaves with `_exit`,
    // never returning into the caller's code.
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Err(_) => pod.delete_link(index),
        Ok(ForkResult::Child) => {
            drop(rx);
            let _ = nix::unistd::dup2_stdin(&devnull);
            let _ = nix::unistd::dup2_stdout(&devnull);
            let _ = nix::unistd::dup2_stderr(&devnull);
            let errno = match pod.delete_link(index) {
                Ok(()) => 0i32,
                Err(e) => e.errno().unwrap_or(libc::EIO),
            };
            let _ = nix::unistd::write(&tx, &errno.to_ne_bytes());
            // SAFETY: `_exit` ends the process at once, without running
            // atexit handlers or flushing stdio buffers that are copies of
            // the parent's.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(0)
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(tx);
            drop(pod);
            wait_unlisted(&op, events, peer_index, rx, child, timeout)
        }
    }
}

/// The parent's side: the peer's `RTM_DELLINK`, or the helper's answer,
/// whichever comes first.
fn wait_unlisted(
    op: &str,
    events: &mut LinkEvents,
    peer_index: u32,
    rx: OwnedFd,
    child: Pid,
    timeout: Duration,
) -> Result<(), NetlinkError> {
    let deadline = Instant::now() + timeout;
    let mut watch_events = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetlinkError::Kernel {
                op: op.to_string(),
                errno: libc::ETIMEDOUT,
            });
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let (ev_ready, rx_ready) = {
            let mut fds = vec![PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
            if watch_events {
                fds.push(PollFd::new(events.socket.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sock_err(op)(e.into())),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (fds.get(1).is_some_and(ready), ready(&fds[0]))
        };
        if ev_ready {
            match events.saw_deleted(peer_index) {
                // Unlisted: the helper finishes the reclamation alone.
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Events were dropped; the helper's answer is all we have.
                Err(_) => watch_events = false,
            }
        }
        if rx_ready {
            let mut answer = [0u8; 4];
            let n = nix::unistd::read(&rx, &mut answer).unwrap_or(0);
            // The helper is exiting; reap it rather than leave it to init.
            let _ = waitpid(child, None);
            if n != 4 {
                return Err(NetlinkError::Kernel {
                    op: format!("{op}: the helper process died"),
                    errno: libc::EIO,
                });
            }
            return match i32::from_ne_bytes(answer) {
                0 => Ok(()),
                errno => {
                    let e = NetlinkError::Kernel {
                        op: op.to_string(),
                        errno,
                    };
                    if e.is_not_found() { Ok(()) } else { Err(e) }
                }
            };
        }
    }
}
