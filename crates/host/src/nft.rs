//! nftables, the two ways weft uses it: `nft -f` to replace a table as a
//! whole, and one netlink question (NFT_MSG_GETCHAIN, about 20 µs, no exec)
//! to learn whether a chain is there, which is how every ADD checks the
//! host's tables cheaply.

use std::io::Write as _;
use std::process::{Command, Stdio};

use weft_cni::error::{self, Error, Result};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
/// The multicast group nftables announces every ruleset change on.
pub const NFNLGRP_NFTABLES: u32 = 7;

fn nft_err(msg: impl Into<String>) -> Error {
    Error::new(error::GATEWAY_FAILURE, msg)
}

/// Feeds a script to `nft -f -`.
pub fn run(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| nft_err("cannot run nft (install nftables)").with_details(e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| nft_err("cannot feed nft").with_details(e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| nft_err("nft failed").with_details(e))?;
    if !out.status.success() {
        return Err(nft_err("nft refused weft's rules")
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// The lines that remove `inet <table>` whether or not it exists: the empty
/// `table` line makes the `delete` safe.
pub fn drop_table(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

/// Removes `inet <table>`; a missing one is fine.
pub fn remove_table(table: &str) -> Result<()> {
    run(&drop_table(table))
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

/// NFT_MSG_GETCHAIN for `inet <table>` chain `<chain>`: answered with the
/// chain and an ack, or with ENOENT.
pub fn get_chain_request(table: &str, chain: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_CHAIN_TABLE, &cstr(table));
    attr(&mut attrs, NFTA_CHAIN_NAME, &cstr(chain));
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

fn set_timeout(fd: std::os::fd::RawFd, secs: libc::time_t) {
    let timeout = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// Sends `request` and waits for its ack: Err(errno) when refused.
fn ask(request: &[u8]) -> std::result::Result<(), i32> {
    use std::os::fd::AsRawFd;
    let os = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let sock = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(os)?;
    // An answer that never comes must not hang ADD.
    set_timeout(sock.as_raw_fd(), 2);
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

/// Whether `inet <table>` has a chain named `chain`; must run on a thread
/// in the netns whose ruleset is meant.
pub fn chain_exists(table: &str, chain: &str) -> Result<bool> {
    match ask(&get_chain_request(table, chain)) {
        Ok(()) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(errno) => Err(Error::new(
            error::NETLINK_FAILURE,
            format!("cannot ask nftables about inet {table}"),
        )
        .with_details(std::io::Error::from_raw_os_error(errno))),
    }
}

/// A socket that receives a message whenever anyone changes the ruleset;
/// `recv` on it blocks until then (for `weftctl agent`).
pub fn watch_ruleset() -> std::io::Result<netlink_sys::Socket> {
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    sock.bind(&netlink_sys::SocketAddr::new(0, 0))?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    Ok(sock)
}

/// A host-wide lock held while a table is rebuilt from what OVS has, so two
/// writers cannot each install a view that misses the other's gateway.
pub struct Lock {
    _held: weft_cni::files::Lock,
}

impl Lock {
    pub fn take(path: &std::path::Path) -> Result<Lock> {
        weft_cni::files::lock(path)
            .map(|held| Lock { _held: held })
            .map_err(|e| {
                Error::new(error::IO_FAILURE, format!("cannot lock {}", path.display()))
                    .with_details(e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_chain_request_names_table_and_chain() {
        let b = get_chain_request("weft-hostends", "in");
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a04);
        assert_eq!(b[16], NFPROTO_INET);
        let has = |n: &[u8]| b.windows(n.len()).any(|w| w == n);
        assert!(has(b"weft-hostends\0") && has(b"in\0"));
    }

    #[test]
    fn drop_table_is_safe_when_missing() {
        assert_eq!(drop_table("x"), "table inet x {}\ndelete table inet x\n");
    }
}
