//! The host end of a container's veth must be a wire into OVS and nothing
//! else: not an interface of the host that answers ARP, holds IPv6
//! addresses, or routes and delivers what a container sends to it.
//!
//! On the kernel (`system`) datapath this holds by construction: the device
//! is an OVS vport, whose rx handler takes every frame before the IP stack
//! sees it. On the userspace (`netdev`) datapath, ovs-vswitchd reads the
//! device with a packet socket and the kernel still processes every frame,
//! so weft shuts each door itself:
//! - ARP: the peer is created with IFF_NOARP, so the kernel neither answers
//!   nor sends ARP on it (both datapaths);
//! - IPv6: `disable_ipv6` before the link comes up, so it never gets a
//!   link-local address and drops what arrives (both datapaths);
//! - everything else (IPv4 to host addresses, routed traffic, broadcasts to
//!   host sockets): one nftables rule for the whole host, `iifname "wft*"
//!   drop` at prerouting (table `inet weft-hostends`). It runs in the IP
//!   stack, which on the netdev datapath is the only other reader of those
//!   frames: ovs-vswitchd's packet socket has them already. On the kernel
//!   datapath the IP stack never sees them, so the rule matches nothing.
//!
//! Why one rule by name and not something per device: ovs-vswitchd deletes a
//! port's ingress qdisc when it first configures its policing, which raced
//! with ADD in testing (so no tc filter), and a `netdev`-family chain per
//! device cost ~0.2 ms of ADD and an RCU grace period (~6 ms) to delete.
//! ADD only asks the kernel whether the chain is there (one netlink
//! request, no exec) and runs `nft` when it is not: after boot, or after
//! someone flushed the ruleset.

use std::io::ErrorKind;

use weft_cni::error::{self, Error, Result};

/// The table and chain that keep the IP stack off every host end.
pub const TABLE: &str = "weft-hostends";
const CHAIN: &str = "in";

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;

/// Turns IPv6 off on a host link; must run on a thread in the host's netns.
pub fn disable_ipv6(name: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has no such file, and nothing to turn off.
        Err(e)
            if e.kind() == ErrorKind::NotFound
                && !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err(e) => Err(hostend_err(format!("cannot turn IPv6 off on {name}")).with_details(e)),
    }
}

fn hostend_err(msg: impl Into<String>) -> Error {
    Error::new(error::NETLINK_FAILURE, msg)
}

/// The whole table, replaced as one: the empty `table` line makes the
/// `delete` safe when it is not there. Priority -300 runs it before
/// conntrack, so a container's packets create no state either.
pub fn script() -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  \
         chain {CHAIN} {{\n    type filter hook prerouting priority -300; policy accept;\n    \
         iifname \"{prefix}*\" drop\n  }}\n}}\n",
        prefix = crate::names::HOST_VETH_PREFIX
    )
}

fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// NFT_MSG_GETCHAIN for our chain: answered with the chain and an ack, or
/// with ENOENT.
pub fn get_chain_request() -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_CHAIN_TABLE, &cstr(TABLE));
    attr(&mut attrs, NFTA_CHAIN_NAME, &cstr(CHAIN));
    let len = 16 + 4 + attrs.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id.
    buf.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    buf.extend_from_slice(&attrs);
    buf
}

/// Sends `request` and waits for its ack: Err(errno) when refused.
fn ask(request: &[u8]) -> std::result::Result<(), i32> {
    use std::os::fd::AsRawFd;
    let os = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let sock = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(os)?;
    // An answer that never comes must not hang ADD.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    sock.send(request, 0).map_err(os)?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0).map_err(os)?;
        let mut off = 0;
        while off + 16 <= n {
            let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            let len = u32::from_ne_bytes(word(off)) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 || off + len > n {
                return Err(libc::EPROTO);
            }
            if kind == NLMSG_ERROR && len >= 20 {
                return match i32::from_ne_bytes(word(off + 16)) {
                    0 => Ok(()),
                    code => Err(-code),
                };
            }
            off += len.next_multiple_of(4);
        }
    }
}

/// Whether the host-end rule is in place (for `weftctl doctor`).
pub fn input_drop_present() -> Result<bool> {
    match ask(&get_chain_request()) {
        Ok(()) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(errno) => Err(hostend_err("cannot ask nftables for the host-end rule")
            .with_details(std::io::Error::from_raw_os_error(errno))),
    }
}

/// Removes the host-end rule (for `weftctl cleanup`); a missing one is fine.
pub fn remove_input_drop() -> Result<()> {
    crate::overlay::gateway::nft(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
}

/// Makes sure the host's IP stack drops what arrives on host ends; must run
/// on a thread in the host's netns. One netlink question when the rule is
/// there (every ADD but the first after boot or a flush).
pub fn ensure_input_drop() -> Result<()> {
    if input_drop_present()? {
        return Ok(());
    }
    crate::overlay::gateway::nft(&script()).map_err(|e| {
        Error::new(
            e.code,
            format!(
                "cannot install the nftables rule that keeps containers off this host's IP stack \
                 (netdev datapath): {}",
                e.msg
            ),
        )
        .with_details(&e.details)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_drops_by_host_end_prefix_before_conntrack() {
        let s = script();
        assert!(s.contains("table inet weft-hostends {"));
        assert!(s.contains("hook prerouting priority -300; policy accept;"));
        assert!(s.contains("iifname \"wft*\" drop"));
        assert!(s.starts_with("table inet weft-hostends {}\ndelete table"));
    }

    #[test]
    fn get_chain_request_names_table_and_chain() {
        let b = get_chain_request();
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a04);
        assert_eq!(b[16], NFPROTO_INET);
        let has = |n: &[u8]| b.windows(n.len()).any(|w| w == n);
        assert!(has(b"weft-hostends\0") && has(b"in\0"));
    }
}
