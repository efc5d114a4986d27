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

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::ForkResult;
use weft_cni::error::{self, Error, Result};

use crate::forked::{self, detach};

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

/// A deletion whose request a forked child is sending.
pub struct Pending {
    pid: nix::unistd::Pid,
    done: OwnedFd,
}

/// Forks the child that deletes link `index` through `sock` and sits out
/// the kernel's barrier; [`Pending::finished`] says when it has answered.
pub fn start(sock: &Socket, index: u32) -> Result<Pending> {
    let request = dellink_request(index);
    let (devnull, rd, wr) = forked::prepare()?;
    // SAFETY: the child only makes async-signal-safe calls (see `child`).
    let ForkResult::Parent { child: pid } = (unsafe { forked::fork() })? else {
        child(
            sock.as_raw_fd(),
            &request,
            devnull.as_raw_fd(),
            wr.as_raw_fd(),
        );
    };
    drop(wr);
    Ok(Pending { pid, done: rd })
}

impl Pending {
    /// Waits up to a millisecond for the child's answer: None while it has
    /// none (the request is in the kernel), else whether the link was there
    /// (Ok(false): ENODEV), or the errno the kernel refused with.
    pub fn finished(&self) -> Option<std::result::Result<bool, i32>> {
        let mut fds = [PollFd::new(self.done.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1u8)).unwrap_or(0) == 0 {
            return None;
        }
        let mut code = [0u8; 4];
        let n = nix::unistd::read(&self.done, &mut code).unwrap_or(0);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        let code = if n == 4 {
            -i32::from_ne_bytes(code)
        } else {
            libc::EIO
        };
        Some(match code {
            0 => Ok(true),
            libc::ENODEV => Ok(false),
            errno => Err(errno),
        })
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
