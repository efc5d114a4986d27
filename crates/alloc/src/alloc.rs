//! The allocator. Each node claims blocks with one transaction and hands out
//! addresses inside them; with no free block left it borrows from other
//! nodes' blocks. Every reservation is one compare-and-create transaction
//! that writes the address key and the owner record together, so a crash at
//! any point leaves both or neither, and GC can always find what is held.
//!
//! Keys, under `/weft/v1/ipam/<network>/`:
//! - `blocks/<block>`: the node that claimed the block
//! - `nodes/<node>/<block>`: the node's index of its blocks
//! - `ips/<addr>`: a reservation; value: who holds it (container, ifname, node)
//! - `owners/<container>/<ifname>`: the attachment's addresses and node
//!
//! `<addr>` and `<block>` are hex, so keys sort like addresses and a block's
//! reservations are one key range.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_cni::error::{self, Error, Result};

use crate::config::IpamConfig;
use crate::hints::Hints;
use crate::keys::{addr_of_ip_key, parse_block_key, ready_key, Keys};
use crate::pick::{Pick, Search};
use crate::space::Range;
use weft_store::store_err;
use weft_store::{Compare, Kv, Read, Store, Write};

use weft_cni::error::ADDRESS_UNAVAILABLE;

/// Gives up after this many lost races in one call; the runtime may retry.
pub(crate) const MAX_ATTEMPTS: usize = 200;
/// How long an ADD waits for this host's agent to put back the node's
/// reservations after a wipe (it takes 25-175 ms in the tests) before it
/// allocates without that promise; at most half its etcd timeout.
pub const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    /// The container's network namespace as the runtime named it: the
    /// node's reconciler keeps a reservation whose namespace still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub node: String,
    pub ips: Vec<IpAddr>,
}

/// An address handed out, with the range that says its prefix and gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub ip: IpAddr,
    pub range: Range,
}

impl Allocated {
    pub fn cidr(&self) -> IpNet {
        IpNet::new(self.ip, self.range.subnet.prefix_len()).unwrap_or_else(|_| IpNet::from(self.ip))
    }
}

/// A small xorshift generator: retries pick a random free address so that
/// racing allocators spread out instead of colliding again.
pub(crate) struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        Rng((t as u64) ^ ((std::process::id() as u64) << 32) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(crate) fn next_u128(&mut self) -> u128 {
        ((self.next() as u128) << 64) | self.next() as u128
    }
}

pub struct Allocator<'a, S: Store> {
    pub(crate) cfg: &'a IpamConfig,
    pub(crate) store: &'a mut S,
    pub(crate) keys: Keys,
    pub(crate) rng: Rng,
    /// Recorded with each reservation (CNI_NETNS).
    pub netns: Option<String>,
    /// This host's agent runs: a reservation also needs [`ready_key`], so
    /// none is made between a wipe of etcd and the agent's repair.
    pub wait_ready: bool,
}

/// What the first read found, without cached blocks.
enum Start {
    /// The attachment already holds these (a repeated ADD).
    Held(Vec<Allocated>),
    /// The node's blocks.
    Blocks(Vec<IpNet>),
}

impl<'a, S: Store> Allocator<'a, S> {
    pub fn new(cfg: &'a IpamConfig, store: &'a mut S) -> Self {
        Allocator {
            cfg,
            keys: Keys::new(&cfg.network),
            store,
            rng: Rng::new(),
            netns: None,
            wait_ready: false,
        }
    }

    pub(crate) fn prefix_for(&self, set: usize) -> u8 {
        if self.cfg.range_sets[set][0].is_v6() {
            self.cfg.block_v6
        } else {
            self.cfg.block_v4
        }
    }

    fn range_of(&self, ip: IpAddr) -> Option<(usize, &Range)> {
        self.cfg
            .range_sets
            .iter()
            .enumerate()
            .find_map(|(i, set)| set.iter().find(|r| r.subnet.contains(&ip)).map(|r| (i, r)))
    }

    fn allocated(&self, ips: &[IpAddr]) -> Vec<Allocated> {
        ips.iter()
            .filter_map(|ip| {
                Some(Allocated {
                    ip: *ip,
                    range: self.range_of(*ip)?.1.clone(),
                })
            })
            .collect()
    }

    /// Blocks of set `set` in `claimed` (keys of `blocks/` or `nodes/<n>/`).
    pub(crate) fn blocks_of_set(&self, set: usize, kvs: &[Kv]) -> Vec<IpNet> {
        let blocks: Vec<IpNet> = kvs
            .iter()
            .filter_map(|kv| parse_block_key(&kv.key))
            .collect();
        self.in_set(set, &blocks)
    }

    pub(crate) fn in_set(&self, set: usize, blocks: &[IpNet]) -> Vec<IpNet> {
        blocks
            .iter()
            .copied()
            .filter(|b| {
                self.cfg.range_sets[set]
                    .iter()
                    .any(|r| r.subnet.contains(&b.network()))
            })
            .collect()
    }

    /// ADD: the attachment's addresses, one per range set; the same ones
    /// again when it already holds some. Each attempt picks an address per
    /// set, then reserves them all in one transaction (claiming a free block
    /// in the same one); a lost race teaches the next attempt what is taken.
    pub fn add(
        &mut self,
        cid: &str,
        ifname: &str,
        requested: &[IpAddr],
        hints: &mut dyn Hints,
    ) -> Result<Vec<Allocated>> {
        let owner_key = self.keys.owner(cid, ifname);
        // With the node's blocks cached, the reservation is the first and
        // usually the only round trip: its compares check that the owner is
        // new and the block still ours, and a failure reads back what changed.
        // A cache from another epoch (etcd replaced or restored, or a file
        // from before epochs were saved) is suspect as a whole: what a
        // commit does not prove ours is dropped, what a failure reads
        // replaces it.
        let cached_epoch = hints.epoch();
        let mut from_cache = hints.blocks().is_some();
        let known = match hints.blocks() {
            Some(blocks) => blocks,
            None => match self.first_read(&owner_key)? {
                Start::Held(addresses) => return Ok(addresses),
                Start::Blocks(blocks) => blocks,
            },
        };
        let statics = self.statics(requested)?;
        let mut search = self.search(known);
        for _ in 0..MAX_ATTEMPTS {
            let Some(picks) = self.pick(&statics, &mut search, hints)? else {
                continue;
            };
            let attempt = self.try_reserve(cid, ifname, &owner_key, &picks)?;
            let now = self.store.epoch();
            let stale =
                from_cache && now.is_some_and(|n| cached_epoch.is_none_or(|c| !n.follows(&c)));
            if let Some(n) = now {
                hints.set_epoch(n);
            }
            match attempt {
                Attempt::Done => return Ok(self.reserved(&picks, &mut search, stale, hints)),
                Attempt::AlreadyHeld(kv) => return self.existing(&kv),
                Attempt::NotReady => self.wait_until_ready()?,
                Attempt::Lost {
                    used,
                    lost_blocks,
                    index,
                } => {
                    if stale || !lost_blocks.is_empty() {
                        from_cache = false;
                        // One stale block means the cache is not to be
                        // trusted: etcd's index replaces all of it, and the
                        // cache is saved clean whatever happens next.
                        for (set, o) in search.own.iter_mut().enumerate() {
                            *o = self.in_set(set, &index);
                            o.retain(|b| !lost_blocks.contains(b));
                        }
                        hints.set_blocks(search.own.iter().flatten().copied().collect());
                    }
                    self.learn(&picks, &used, &lost_blocks, &index, &mut search)?;
                }
            }
        }
        Err(Error::new(
            error::TRY_AGAIN_LATER,
            format!(
                "too much contention allocating in network {}",
                self.cfg.network
            ),
        ))
    }

    /// Without cached blocks: the attachment's owner record (a repeated ADD
    /// gets what it holds) and the node's blocks, in one read.
    fn first_read(&mut self, owner_key: &str) -> Result<Start> {
        let node = self.cfg.node.clone();
        let first = self
            .store
            .read(&[
                Read::Key(owner_key.to_string()),
                Read::prefix(&self.keys.node_blocks(&node)),
            ])
            .map_err(store_err)?;
        if let Some(kv) = first[0].kvs.first() {
            return self.existing(kv).map(Start::Held);
        }
        Ok(Start::Blocks(
            first[1]
                .kvs
                .iter()
                .filter_map(|kv| parse_block_key(&kv.key))
                .collect(),
        ))
    }

    /// The requested addresses, by range set: each in a range, allowed as a
    /// static address there, and at most one per set.
    fn statics(&self, requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
        let mut statics: Vec<Option<IpAddr>> = vec![None; self.cfg.range_sets.len()];
        for ip in requested {
            let (set, range) = self.range_of(*ip).ok_or_else(|| {
                Error::new(
                    ADDRESS_UNAVAILABLE,
                    format!("{ip} is in no range of network {}", self.cfg.network),
                )
            })?;
            if !range.static_allowed(*ip, &self.cfg.exclude) {
                return Err(Error::new(
                    ADDRESS_UNAVAILABLE,
                    format!(
                        "{ip} is reserved or excluded in network {}",
                        self.cfg.network
                    ),
                ));
            }
            if statics[set].replace(*ip).is_some() {
                return Err(Error::new(
                    ADDRESS_UNAVAILABLE,
                    format!("two addresses requested from one range set ({ip})"),
                ));
            }
        }
        Ok(statics)
    }

    /// After a committed reservation: the hints remember where each search
    /// ended and which blocks are ours (only those the commit proved, when
    /// the cache was stale).
    fn reserved(
        &self,
        picks: &[Pick],
        s: &mut Search,
        stale: bool,
        hints: &mut dyn Hints,
    ) -> Vec<Allocated> {
        for (set, p) in picks.iter().enumerate() {
            if !matches!(p, Pick::Static(_)) {
                hints.set(set, p.ip());
            }
            if let Pick::Claim(_, b) = p {
                tracing::info!(block = %b, node = %self.cfg.node, "claimed block");
                s.own[set].push(*b);
            }
        }
        if stale {
            let proven: Vec<IpNet> = picks.iter().filter_map(Pick::ours).copied().collect();
            for o in s.own.iter_mut() {
                o.retain(|b| proven.contains(b));
            }
        }
        hints.set_blocks(s.own.iter().flatten().copied().collect());
        self.allocated(&picks.iter().map(Pick::ip).collect::<Vec<_>>())
    }

    fn existing(&self, kv: &Kv) -> Result<Vec<Allocated>> {
        let rec: OwnerRecord = serde_json::from_slice(&kv.value).map_err(|e| {
            Error::unexpected(format!("corrupt owner record at {}", kv.key)).with_details(e)
        })?;
        Ok(self.allocated(&rec.ips))
    }

    fn try_reserve(
        &mut self,
        cid: &str,
        ifname: &str,
        owner_key: &str,
        picks: &[Pick],
    ) -> Result<Attempt> {
        let node = &self.cfg.node;
        let holder = serde_json::to_vec(&Holder {
            container_id: cid.into(),
            ifname: ifname.into(),
            node: node.clone(),
            netns: self.netns.clone(),
        })
        .map_err(|e| Error::unexpected("encoding holder").with_details(e))?;
        let record = serde_json::to_vec(&OwnerRecord {
            node: node.clone(),
            ips: picks.iter().map(Pick::ip).collect(),
        })
        .map_err(|e| Error::unexpected("encoding owner record").with_details(e))?;
        let mut compares = vec![Compare::Absent(owner_key.to_string())];
        let mut writes = vec![Write::Put(owner_key.to_string(), record)];
        let mut on_failure = vec![Read::Key(owner_key.to_string())];
        for p in picks {
            let key = self.keys.ip(p.ip());
            compares.push(Compare::Absent(key.clone()));
            writes.push(Write::Put(key.clone(), holder.clone()));
            on_failure.push(Read::Key(key));
            match p {
                Pick::Own(_, b) => {
                    compares.push(Compare::ValueIs(
                        self.keys.block(b),
                        node.as_bytes().to_vec(),
                    ));
                    on_failure.push(Read::Key(self.keys.block(b)));
                }
                Pick::Claim(_, b) => {
                    compares.push(Compare::Absent(self.keys.block(b)));
                    writes.push(Write::Put(self.keys.block(b), node.as_bytes().to_vec()));
                    writes.push(Write::Put(self.keys.node_block(node, b), Vec::new()));
                    on_failure.push(Read::Key(self.keys.block(b)));
                }
                Pick::Static(_) | Pick::Borrowed(..) => {}
            }
            if let Some(b) = p.block() {
                on_failure.push(self.keys.ips_in(b));
            }
        }
        // When a cached block is gone, the whole cache may be stale (etcd
        // restored, the network made anew): its truth comes back in the
        // same round trip.
        on_failure.push(Read::prefix(&self.keys.node_blocks(node)));
        if self.wait_ready {
            compares.push(Compare::Present(ready_key(node)));
            on_failure.push(Read::Key(ready_key(node)));
        }
        let r = self
            .store
            .txn(&compares, &writes, &on_failure)
            .map_err(store_err)?;
        if r.succeeded {
            return Ok(Attempt::Done);
        }
        if let Some(kv) = r.reads.first().and_then(|x| x.kvs.first()) {
            return Ok(Attempt::AlreadyHeld(kv.clone()));
        }
        let short = || Error::unexpected("etcd answered fewer reads than asked");
        let mut reads = &r.reads[1..];
        if self.wait_ready {
            let (ready, rest) = reads.split_last().ok_or_else(short)?;
            if ready.kvs.is_empty() {
                return Ok(Attempt::NotReady);
            }
            reads = rest;
        }
        let mut used = Vec::new();
        let mut lost_blocks = Vec::new();
        let (index_read, reads) = reads.split_last().ok_or_else(short)?;
        let index: Vec<IpNet> = index_read
            .kvs
            .iter()
            .filter_map(|kv| parse_block_key(&kv.key))
            .collect();
        // A block of ours whose key is absent is lost as surely as one
        // another node holds.
        for p in picks {
            if let Pick::Own(_, b) = p {
                let key = self.keys.block(b);
                if !reads.iter().any(|rr| rr.kvs.iter().any(|kv| kv.key == key)) {
                    lost_blocks.push(*b);
                }
            }
        }
        for rr in reads {
            for kv in &rr.kvs {
                if let Some(b) = kv
                    .key
                    .contains("/blocks/")
                    .then(|| parse_block_key(&kv.key))
                    .flatten()
                {
                    let cached = picks
                        .iter()
                        .any(|p| matches!(p, Pick::Own(_, ob) if *ob == b));
                    if cached && kv.value != node.as_bytes() {
                        lost_blocks.push(b);
                    }
                } else if let (Some(ip), Ok(h)) = (
                    addr_of_ip_key(&kv.key),
                    serde_json::from_slice::<Holder>(&kv.value),
                ) {
                    used.push((ip, h));
                }
            }
        }
        Ok(Attempt::Lost {
            used,
            lost_blocks,
            index,
        })
    }

    /// Polls for [`ready_key`] up to [`READY_WAIT`]; past that the agent is
    /// stuck or gone, and the ADD goes on without waiting again.
    fn wait_until_ready(&mut self) -> Result<()> {
        let key = ready_key(&self.cfg.node);
        // Within the ADD's etcd budget, which also has the allocation to pay.
        let budget = std::time::Duration::from_millis(self.cfg.etcd.timeout_ms / 2);
        let until = std::time::Instant::now() + READY_WAIT.min(budget);
        tracing::info!(node = %self.cfg.node, "waiting for this host's agent to restore its reservations");
        while std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let r = self
                .store
                .read(&[Read::Key(key.clone())])
                .map_err(store_err)?;
            if r.first().is_some_and(|r| !r.kvs.is_empty()) {
                return Ok(());
            }
        }
        tracing::warn!(node = %self.cfg.node, wait = ?READY_WAIT,
            "this host's agent did not restore its reservations in time; allocating without it");
        self.wait_ready = false;
        Ok(())
    }
}

enum Attempt {
    Done,
    AlreadyHeld(Kv),
    /// This host's agent has not put back the node's reservations yet.
    NotReady,
    Lost {
        used: Vec<(IpAddr, Holder)>,
        lost_blocks: Vec<IpNet>,
        /// The node's index of its blocks as etcd has it, read when a
        /// cached block turned out not to be ours.
        index: Vec<IpNet>,
    },
}

#[cfg(test)]
#[path = "alloc_tests.rs"]
mod tests;
