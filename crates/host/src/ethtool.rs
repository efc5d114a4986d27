//! Turning TX checksum offload off on the container's end of the veth.
//!
//! The userspace (netdev) datapath takes packets off the veth with AF_PACKET
//! and does not finish partial checksums, so TCP from the container breaks
//! unless the container computes them itself. The legacy SIOCETHTOOL ioctl
//! is the smallest stable interface for one feature bit; no maintained crate
//! wraps setting it.

use std::os::fd::{AsRawFd, OwnedFd};

use weft_cni::error::{self, Error, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    // struct ifreq's union is 24 bytes on 64-bit targets.
    _pad: [u8; 16],
}

/// A datagram socket: the handle ethtool ioctls go through. Its namespace
/// decides which interfaces the ioctls see.
pub fn socket() -> Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::new(error::NETLINK_FAILURE, "cannot open ioctl socket").with_details(e))
}

pub fn disable_tx_checksum(sock: &OwnedFd, ifname: &str) -> Result<()> {
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: std::ptr::from_mut(&mut value).cast(),
        _pad: [0; 16],
    };
    for (dst, src) in req
        .name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: req and value live across the call; the kernel reads IFNAMSIZ
    // bytes of name and one ethtool_value through data.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc != 0 {
        return Err(Error::new(
            error::NETLINK_FAILURE,
            format!("cannot turn off TX checksum offload on {ifname}"),
        )
        .with_details(std::io::Error::last_os_error()));
    }
    Ok(())
}
