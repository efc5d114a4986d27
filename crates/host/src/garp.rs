//! On overlay networks, a gratuitous ARP from the container once its
//! address is set, as any host sends when it takes an address. weft-ipam
//! hands a released address out again, possibly on another host of the same
//! L2 segment; peers that still map it to the earlier holder's MAC then
//! correct the entry at once instead of after their neighbour entry expires
//! (up to a minute of silence).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::unistd::ForkResult;

use weft_cni::{error, Error, Result};

use crate::forked;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The frame: an ARP request for our own address (sender = target), which
/// every Linux peer applies to an entry it already has.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&ip.octets());
    f
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Peers' tunnels back to this host may still be in the making (an agent
/// builds them tens of milliseconds after our ADD returns), so a forked
/// child repeats the announcement at these delays after the first.
const AGAIN_AFTER_MS: [u64; 4] = [25, 100, 400, 1500];

/// A packet socket for [`announce`]; it sends in the namespace it is made in.
pub fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(
            Error::new(error::NETLINK_FAILURE, "cannot open a packet socket")
                .with_details(std::io::Error::last_os_error()),
        );
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one gratuitous ARP per address out of `ifindex` through `sock`
/// (see [`socket`]), and repeats them later (see above).
///
/// Closing a packet socket waits for an RCU grace period (10-20 ms here), so
/// the socket's last reference goes to a forked child, which also sends the
/// repeats: the runtime never waits for either.
pub fn announce(sock: OwnedFd, ifindex: u32, mac: [u8; 6], ips: &[Ipv4Addr]) -> Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    let frames: Vec<[u8; 42]> = ips.iter().map(|ip| frame(mac, *ip)).collect();
    if !send_all(sock.as_raw_fd(), &to, &frames) {
        return Err(
            Error::new(error::NETLINK_FAILURE, "cannot send a gratuitous ARP")
                .with_details(std::io::Error::last_os_error()),
        );
    }
    hand_over(sock, &to, &frames)
}

/// Async-signal-safe: also runs in the forked child.
fn send_all(sock: RawFd, to: &libc::sockaddr_ll, frames: &[[u8; 42]]) -> bool {
    frames.iter().all(|f| {
        // SAFETY: the buffer and address outlive the call; lengths match them.
        let n = unsafe {
            libc::sendto(
                sock,
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::from_ref(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        n >= 0
    })
}

/// Forks a child that sends `frames` again at [`AGAIN_AFTER_MS`] (none:
/// no repeats) and closes the socket only after we have closed our copy, so
/// the grace period of the last close is the child's.
fn hand_over(sock: OwnedFd, to: &libc::sockaddr_ll, frames: &[[u8; 42]]) -> Result<()> {
    let (devnull, rd, wr) = forked::prepare()?;
    let (fd, null, ours_closed) = (sock.as_raw_fd(), devnull.as_raw_fd(), rd.as_raw_fd());
    // SAFETY: the child makes only async-signal-safe calls, on fds and
    // buffers set up before the fork, then _exits.
    match unsafe { forked::fork() }? {
        ForkResult::Parent { .. } => {
            // Socket first, then the pipe: the child's read ends after both.
            drop(sock);
            drop(wr);
            Ok(())
        }
        ForkResult::Child => unsafe {
            forked::detach(null, fd, ours_closed);
            let mut before = 0;
            // Nothing to repeat: only the socket's last close is left to do.
            let repeats = if frames.is_empty() {
                &[][..]
            } else {
                &AGAIN_AFTER_MS[..]
            };
            for &ms in repeats {
                let wait = libc::timespec {
                    tv_sec: ((ms - before) / 1000) as libc::time_t,
                    tv_nsec: (((ms - before) % 1000) * 1_000_000) as libc::c_long,
                };
                libc::nanosleep(&wait, std::ptr::null_mut());
                before = ms;
                // The container may be gone already; then there is no one to tell.
                if !send_all(fd, to, frames) {
                    break;
                }
            }
            let mut byte = 0u8;
            while libc::read(ours_closed, std::ptr::from_mut(&mut byte).cast(), 1) > 0 {}
            libc::_exit(0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_an_arp_request_for_our_own_address() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = frame(mac, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[10, 1, 2, 3], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &[10, 1, 2, 3], "target IP = sender IP");
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
