//! What a node remembers between ADDs to save round trips: never the truth,
//! only where to start.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_store::Epoch;

/// Where the next automatic address search starts, per range set: a hint
/// kept on the node (like host-local's last_reserved_ip), never trusted.
/// It also caches the node's blocks, which saves the read that would find
/// them: the reservation's own compare says whether we still hold a block.
pub trait Hints {
    fn get(&self, set: usize) -> Option<IpAddr>;
    fn set(&mut self, set: usize, ip: IpAddr);
    fn blocks(&self) -> Option<Vec<IpNet>>;
    fn set_blocks(&mut self, blocks: Vec<IpNet>);
    /// The etcd epoch the cached blocks were last confirmed under.
    fn epoch(&self) -> Option<Epoch>;
    fn set_epoch(&mut self, epoch: Epoch);
}

#[derive(Debug, Default)]
pub struct MemHints {
    pub last: std::collections::HashMap<usize, IpAddr>,
    pub blocks: Option<Vec<IpNet>>,
    pub epoch: Option<Epoch>,
}

impl Hints for MemHints {
    fn get(&self, set: usize) -> Option<IpAddr> {
        self.last.get(&set).copied()
    }
    fn set(&mut self, set: usize, ip: IpAddr) {
        self.last.insert(set, ip);
    }
    fn blocks(&self) -> Option<Vec<IpNet>> {
        self.blocks.clone()
    }
    fn set_blocks(&mut self, blocks: Vec<IpNet>) {
        self.blocks = Some(blocks);
    }
    fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }
    fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = Some(epoch);
    }
}
