//! Deleting a link without making the CNI caller wait for the kernel's
//! `rcu_barrier()`.
//!
//! Unregistering a netdevice has two halves: under rtnl the link is unlisted
//! (its name and index are free and RTM_DELLINK goes out), then, after rtnl
//! is released, `netdev_run_todo` waits in `rcu_barrier()` before freeing it.
//! The second half costs 10-20 ms here and changes nothing anyone can see, but
//! it runs inside the deleting task's sendmsg. So a forked child sends the
//! request and sits out the barrier, while we return as soon as the link is
//! unlisted; the child exits on its own when the kernel is done.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{fork, ForkResult};
use rtnetlink::Handle;
use weft_cni::error::{self, Error, Result};

use crate::link::Netlink;

/// A raw rtnetlink socket; open it in the namespace whose links it deletes.
pub fn socket() -> Result<Socket> {
    let fail = |e: std::io::Error| {
        Error::new(error::NETLINK_FAILURE, "cannot open netlink socket").with_details(e)
    };
    let mut s = Socket::new(NETLINK_ROUTE).map_err(fail)?;
    s.bind_auto().map_err(fail)?;
    s.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
    Ok(s)
}

fn dellink_request(index: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelLink(link)),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Runs in the forked child: only async-signal-safe calls until `_exit`.
fn child(sock: RawFd, request: &[u8], devnull: RawFd, report: RawFd) -> ! {
    // SAFETY: plain syscalls on fds and buffers set up before the fork.
    unsafe {
        detach(devnull, sock, report);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut code: i32 = 0;
        if libc::send(sock, request.as_ptr().cast(), request.len(), 0) < 0 {
            code = -*libc::__errno_location();
        } else {
            let mut ack = [0u8; 512];
            let n = libc::recv(sock, ack.as_mut_ptr().cast(), ack.len(), 0);
            // nlmsgerr: a 16-byte nlmsghdr, then the (negative) errno.
            if n >= 20 {
                code = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
            }
        }
        libc::write(report, std::ptr::from_ref(&code).cast(), 4);
        libc::_exit(0)
    }
}

/// Cuts a forked child loose from what the runtime waits on: stdio goes to
/// `devnull` (the runtime reads our stdout until EOF), and every other fd
/// but `a` and `b` is closed (a delegate's stdin pipe, say, would keep its
/// peer waiting for EOF until the child exits). Async-signal-safe.
pub(crate) unsafe fn detach(devnull: RawFd, a: RawFd, b: RawFd) {
    // SAFETY: dup2 and close on fds; async-signal-safe.
    unsafe {
        libc::dup2(devnull, 0);
        libc::dup2(devnull, 1);
        libc::dup2(devnull, 2);
        close_all_but(a, b);
    }
}

/// Closes every fd above stdio except `a` and `b`; async-signal-safe.
unsafe fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    let ranges = [
        (3u32, lo.wrapping_sub(1)),
        (lo + 1, hi.wrapping_sub(1)),
        (hi + 1, u32::MAX),
    ];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: closing fds is async-signal-safe; close_range needs Linux 5.9.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        if rc != 0 {
            for fd in first..=last.min(4096) {
                // SAFETY: as above.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

/// Deletes the link `name` seen through `h`/`sock`; returns once it is
/// unlisted. Ok(false) when there was no such link.
pub fn delete(nl: &Netlink, h: &Handle, sock: &Socket, name: &str) -> Result<bool> {
    let Some(info) = nl.link(h, name)? else {
        return Ok(false);
    };
    let request = dellink_request(info.index);
    let devnull = std::fs::File::open("/dev/null")
        .map_err(|e| Error::unexpected("cannot open /dev/null").with_details(e))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| Error::unexpected("pipe").with_details(e))?;

    // SAFETY: the child only makes async-signal-safe calls (see `child`).
    let forked = unsafe { fork() }.map_err(|e| Error::unexpected("fork").with_details(e))?;
    let ForkResult::Parent { child: pid } = forked else {
        child(
            sock.as_raw_fd(),
            &request,
            devnull.as_raw_fd(),
            wr.as_raw_fd(),
        );
    };
    drop(wr);

    let started = Instant::now();
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&rd),
            PollFlags::POLLIN,
        )];
        let ready = poll(&mut fds, PollTimeout::from(1u8)).unwrap_or(0);
        if ready > 0 {
            // The child finished first: the request failed fast, or the barrier was quick.
            let mut code = [0u8; 4];
            let n = nix::unistd::read(&rd, &mut code).unwrap_or(0);
            let _ = nix::sys::wait::waitpid(pid, None);
            let code = if n == 4 {
                -i32::from_ne_bytes(code)
            } else {
                libc::EIO
            };
            return match code {
                0 => Ok(true),
                libc::ENODEV => Ok(false),
                errno => Err(Error::new(
                    error::NETLINK_FAILURE,
                    format!("cannot delete link {name}"),
                )
                .with_details(std::io::Error::from_raw_os_error(errno))),
            };
        }
        if nl.link_by_index(h, info.index)?.is_none() {
            // Unlisted; the child is left to finish the kernel's cleanup alone.
            return Ok(true);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(Error::new(
                error::NETLINK_FAILURE,
                format!("deleting link {name} did not finish"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dellink_request_is_well_formed() {
        let buf = dellink_request(42);
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(len, buf.len());
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), libc::RTM_DELLINK);
        assert_eq!(
            u16::from_ne_bytes([buf[6], buf[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        // ifinfomsg.ifi_index sits after family, pad and type: offset 16 + 4.
        assert_eq!(i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]), 42);
    }
}
