//! The keys weft-ipam keeps in etcd (the schema is in `alloc.rs`'s header),
//! and the two that tie it to this host's agent.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_store::Read;

use crate::space::{addr_key, block_key, from_u128};

/// The key that says this node's reservations are all in etcd: its agent
/// writes it, under its lease, after each repair (`weftctl agent`). A wiped
/// or restored etcd lacks it until the agent has put back what its running
/// containers hold.
pub fn ready_key(node: &str) -> String {
    format!("/weft/v1/ipam-ready/{node}")
}

/// Where a host's agent holds its lock for as long as it runs, in IPAM's
/// data dir: an ADD that finds it held waits for [`ready_key`].
pub fn agent_lock(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("agent.lock")
}

pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(network: &str) -> Self {
        Keys {
            base: format!("/weft/v1/ipam/{network}/"),
        }
    }
    pub fn owner(&self, cid: &str, ifname: &str) -> String {
        format!("{}owners/{cid}/{ifname}", self.base)
    }
    pub fn owners(&self) -> String {
        format!("{}owners/", self.base)
    }
    pub fn ip(&self, ip: IpAddr) -> String {
        format!("{}ips/{}", self.base, addr_key(ip))
    }
    pub fn ips(&self) -> String {
        format!("{}ips/", self.base)
    }
    /// Every reservation inside `block`.
    pub fn ips_in(&self, block: &IpNet) -> Read {
        Read::Range {
            start: self.ip(block.network()),
            end: format!("{}\0", self.ip(block.broadcast())),
        }
    }
    pub fn block(&self, b: &IpNet) -> String {
        format!("{}blocks/{}", self.base, block_key(b))
    }
    pub fn blocks(&self) -> String {
        format!("{}blocks/", self.base)
    }
    pub fn node_blocks(&self, node: &str) -> String {
        format!("{}nodes/{node}/", self.base)
    }
    pub fn node_block(&self, node: &str, b: &IpNet) -> String {
        format!("{}{}", self.node_blocks(node), block_key(b))
    }
}

/// Reads a block back from the tail of its key ("4-0a000000-26").
pub fn parse_block_key(key: &str) -> Option<IpNet> {
    let tail = key.rsplit('/').next()?;
    let mut parts = tail.split('-');
    let (family, hex, prefix) = (parts.next()?, parts.next()?, parts.next()?);
    let v = u128::from_str_radix(hex, 16).ok()?;
    IpNet::new(from_u128(v, family == "6"), prefix.parse().ok()?).ok()
}

pub(crate) fn addr_of_ip_key(key: &str) -> Option<IpAddr> {
    let tail = key.rsplit('/').next()?;
    let (family, hex) = tail.split_once('-')?;
    Some(from_u128(
        u128::from_str_radix(hex, 16).ok()?,
        family == "6",
    ))
}
