//! Choosing the next attempt's addresses: within the node's blocks after
//! the hint, else a block etcd says is ours or a free one to claim, else an
//! address borrowed from another node's block; and what a lost race teaches.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_cni::error::{Error, Result, ADDRESS_UNAVAILABLE, POOL_EXHAUSTED};
use weft_store::{store_err, Read, Store};

use crate::alloc::{Allocator, Holder};
use crate::hints::Hints;
use crate::keys::{addr_of_ip_key, parse_block_key};
use crate::space::{from_u128, to_u128};

/// How many free addresses a lost race samples from a block to pick among.
const SAMPLE: usize = 16;

/// Where one range set's address will come from in the next attempt.
#[derive(Debug, Clone)]
pub(crate) enum Pick {
    Static(IpAddr),
    /// Inside a block we hold (the transaction checks we still do).
    Own(IpAddr, IpNet),
    /// Inside another node's block.
    Borrowed(IpAddr, IpNet),
    /// Inside a free block, claimed by the same transaction.
    Claim(IpAddr, IpNet),
}

impl Pick {
    pub(crate) fn ip(&self) -> IpAddr {
        match self {
            Pick::Static(ip) | Pick::Own(ip, _) | Pick::Borrowed(ip, _) | Pick::Claim(ip, _) => *ip,
        }
    }
    pub(crate) fn block(&self) -> Option<&IpNet> {
        match self {
            Pick::Own(_, b) | Pick::Borrowed(_, b) | Pick::Claim(_, b) => Some(b),
            Pick::Static(_) => None,
        }
    }
    /// A block this pick's transaction proves ours when it commits.
    pub(crate) fn ours(&self) -> Option<&IpNet> {
        match self {
            Pick::Own(_, b) | Pick::Claim(_, b) => Some(b),
            _ => None,
        }
    }
}

/// One ADD's search, per range set, across attempts.
pub(crate) struct Search {
    /// The blocks this node holds.
    pub(crate) own: Vec<Vec<IpNet>>,
    /// Addresses known taken, learnt from failed attempts.
    pub(crate) taken: Vec<HashSet<IpAddr>>,
    /// Free addresses sampled from a block after a lost race, to pick among.
    pub(crate) free_known: Vec<Vec<(IpAddr, IpNet)>>,
}

/// Where a range set's next block comes from.
pub(crate) enum Chosen {
    /// etcd's index has it as ours; the cache had lost it.
    Ours(IpNet),
    /// Nobody holds it; the reservation claims it.
    Free(IpNet),
}

impl<S: Store> Allocator<'_, S> {
    /// The first free address of `block` at or after `from`, over every
    /// range of the set.
    pub(crate) fn next_free(
        &self,
        set: usize,
        block: &IpNet,
        from: IpAddr,
        skip: &HashSet<IpAddr>,
    ) -> Option<IpAddr> {
        self.cfg.range_sets[set]
            .iter()
            .filter_map(|r| r.next_free_in(block, from, &self.cfg.exclude, skip))
            .min_by_key(|ip| to_u128(*ip))
    }

    /// Up to `SAMPLE` distinct free addresses of `block`, each the first
    /// free one after a random point: racing allocators spread over the
    /// block, and the cost does not grow with the block's size.
    pub(crate) fn sample_free(
        &mut self,
        set: usize,
        block: &IpNet,
        skip: &HashSet<IpAddr>,
    ) -> Vec<IpAddr> {
        let (lo, hi) = (to_u128(block.network()), to_u128(block.broadcast()));
        let span = (hi - lo).checked_add(1);
        let mut out: Vec<IpAddr> = Vec::new();
        for _ in 0..SAMPLE {
            let r = self.rng.next_u128();
            let at = from_u128(lo + span.map_or(r, |n| r % n), block.network().is_ipv6());
            let Some(ip) = self
                .next_free(set, block, at, skip)
                .or_else(|| self.next_free(set, block, block.network(), skip))
            else {
                break;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }

    pub(crate) fn first_free_after(
        &self,
        set: usize,
        blocks: &[IpNet],
        hint: Option<IpAddr>,
        skip: &HashSet<IpAddr>,
    ) -> Option<(IpAddr, IpNet)> {
        // Start just after the hint when it lies in one of our blocks, so
        // sequential allocations on a node rarely collide.
        let start = hint.and_then(|h| blocks.iter().position(|b| b.contains(&h)).map(|i| (i, h)));
        let order: Vec<usize> = match start {
            Some((i, _)) => (i..blocks.len()).chain(0..i).collect(),
            None => (0..blocks.len()).collect(),
        };
        for i in order {
            let block = blocks[i];
            let after_hint = start
                .filter(|(si, _)| *si == i)
                .and_then(|(_, h)| to_u128(h).checked_add(1))
                .map(|v| from_u128(v, block.network().is_ipv6()))
                .and_then(|from| self.next_free(set, &block, from, skip));
            if let Some(ip) =
                after_hint.or_else(|| self.next_free(set, &block, block.network(), skip))
            {
                return Some((ip, block));
            }
        }
        None
    }

    pub(crate) fn search(&self, mut known: Vec<IpNet>) -> Search {
        known.sort();
        known.dedup();
        let sets = self.cfg.range_sets.len();
        Search {
            own: (0..sets).map(|s| self.in_set(s, &known)).collect(),
            taken: vec![HashSet::new(); sets],
            free_known: vec![Vec::new(); sets],
        }
    }

    /// The next attempt's address for every range set; None when a block
    /// just chosen has no free address after all (the next attempt looks
    /// again).
    pub(crate) fn pick(
        &mut self,
        statics: &[Option<IpAddr>],
        s: &mut Search,
        hints: &dyn Hints,
    ) -> Result<Option<Vec<Pick>>> {
        // Every set is looked at even when one has no pick: what the look
        // learns (a block chosen, addresses to borrow) serves the next attempt.
        let mut picks = Vec::with_capacity(statics.len());
        for (set, requested) in statics.iter().enumerate() {
            let pick = if let Some(ip) = requested {
                Pick::Static(*ip)
            } else if !s.free_known[set].is_empty() {
                let at = self.rng.below(s.free_known[set].len());
                let (ip, block) = s.free_known[set].swap_remove(at);
                if s.own[set].contains(&block) {
                    Pick::Own(ip, block)
                } else {
                    Pick::Borrowed(ip, block)
                }
            } else if let Some((ip, block)) =
                self.first_free_after(set, &s.own[set], hints.get(set), &s.taken[set])
            {
                Pick::Own(ip, block)
            } else {
                match self.choose_block(set, &s.own[set])? {
                    Some(Chosen::Ours(block)) => {
                        s.own[set].push(block);
                        let first = self.first_free_after(set, &[block], None, &s.taken[set]);
                        picks.push(first.map(|(ip, b)| Pick::Own(ip, b)));
                        continue;
                    }
                    Some(Chosen::Free(block)) => {
                        let first = self.first_free_after(set, &[block], None, &s.taken[set]);
                        picks.push(first.map(|(ip, b)| Pick::Claim(ip, b)));
                        continue;
                    }
                    None => {
                        s.free_known[set] = self.borrowable(set, &s.taken[set])?;
                        if s.free_known[set].is_empty() {
                            return Err(self.exhausted(set));
                        }
                        let at = self.rng.below(s.free_known[set].len());
                        let (ip, block) = s.free_known[set].swap_remove(at);
                        Pick::Borrowed(ip, block)
                    }
                }
            };
            picks.push(Some(pick));
        }
        Ok(picks.into_iter().collect())
    }

    /// After a lost race: what the failed transaction read back says is
    /// taken, and which blocks are ours; a requested address someone holds
    /// is the caller's error.
    pub(crate) fn learn(
        &mut self,
        picks: &[Pick],
        used: &[(IpAddr, Holder)],
        lost_blocks: &[IpNet],
        index: &[IpNet],
        s: &mut Search,
    ) -> Result<()> {
        for (set, p) in picks.iter().enumerate() {
            if let Pick::Static(ip) = p {
                if let Some(holder) = used.iter().find_map(|(ip2, h)| (ip2 == ip).then_some(h)) {
                    return Err(Error::new(
                        ADDRESS_UNAVAILABLE,
                        format!(
                            "{ip} is held by container {} ifname {} on node {}",
                            holder.container_id, holder.ifname, holder.node
                        ),
                    ));
                }
                continue;
            }
            let block = p.block().copied();
            if let Pick::Claim(ip, b) = p {
                // Ours now if a sibling process on this node claimed it
                // first (the index says so); otherwise another node won it:
                // choose again.
                if index.contains(b) && !s.own[set].contains(b) {
                    s.own[set].push(*b);
                }
                if !s.own[set].contains(b) {
                    s.taken[set].insert(*ip);
                    continue;
                }
            }
            if let Some(b) = block.filter(|b| lost_blocks.contains(b)) {
                // Not ours after all (a stale cache): forget it, and do not
                // fall back to borrowing from it.
                s.own[set].retain(|x| *x != b);
                continue;
            }
            let in_block: HashSet<IpAddr> = used
                .iter()
                .map(|(ip, _)| *ip)
                .filter(|ip| block.is_some_and(|b| b.contains(ip)))
                .collect();
            s.taken[set].extend(in_block.iter().copied());
            s.taken[set].insert(p.ip());
            if let Some(b) = block {
                let free = self.sample_free(set, &b, &s.taken[set]);
                s.free_known[set] = free.into_iter().map(|ip| (ip, b)).collect();
            }
        }
        Ok(())
    }

    /// The block to take the next address of `set` from: one of ours the
    /// cache lacks, else a free one for the reservation to claim; None when
    /// none is left. One read.
    pub(crate) fn choose_block(&mut self, set: usize, own: &[IpNet]) -> Result<Option<Chosen>> {
        let node = self.cfg.node.clone();
        let prefix = self.prefix_for(set);
        let r = self
            .store
            .read(&[
                Read::prefix(&self.keys.blocks()),
                Read::prefix(&self.keys.node_blocks(&node)),
            ])
            .map_err(store_err)?;
        // Ours in etcd but not in the cache (another weft-ipam on this
        // node claimed it, or the cache was dropped): use it first.
        let forgotten = self
            .blocks_of_set(set, &r[1].kvs)
            .into_iter()
            .find(|b| !own.contains(b));
        if let Some(b) = forgotten {
            return Ok(Some(Chosen::Ours(b)));
        }
        let claimed: HashSet<IpNet> = r[0]
            .kvs
            .iter()
            .filter_map(|kv| parse_block_key(&kv.key))
            .collect();
        // Several of the first free blocks, so racing nodes tend to differ.
        let none = HashSet::new();
        let mut free: Vec<IpNet> = Vec::new();
        for r in &self.cfg.range_sets[set] {
            for b in r.blocks(prefix) {
                if free.len() >= 8 {
                    break;
                }
                if !claimed.contains(&b)
                    && !free.contains(&b)
                    && r.next_free_in(&b, b.network(), &self.cfg.exclude, &none)
                        .is_some()
                {
                    free.push(b);
                }
            }
        }
        if free.is_empty() {
            return Ok(None);
        }
        Ok(Some(Chosen::Free(free[self.rng.below(free.len())])))
    }

    /// Free addresses in other nodes' blocks of `set`.
    pub(crate) fn borrowable(
        &mut self,
        set: usize,
        taken: &HashSet<IpAddr>,
    ) -> Result<Vec<(IpAddr, IpNet)>> {
        let claimed = self
            .store
            .read(&[Read::prefix(&self.keys.blocks())])
            .map_err(store_err)?;
        let blocks = self.blocks_of_set(set, &claimed[0].kvs);
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        for i in order {
            let block = blocks[i];
            let used = self
                .store
                .read(&[self.keys.ips_in(&block)])
                .map_err(store_err)?;
            let mut used: HashSet<IpAddr> = used[0]
                .kvs
                .iter()
                .filter_map(|kv| addr_of_ip_key(&kv.key))
                .collect();
            used.extend(taken.iter().copied());
            let free = self.sample_free(set, &block, &used);
            if !free.is_empty() {
                return Ok(free.into_iter().map(|ip| (ip, block)).collect());
            }
        }
        Ok(Vec::new())
    }

    pub(crate) fn exhausted(&self, set: usize) -> Error {
        let ranges: Vec<String> = self.cfg.range_sets[set]
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        Error::new(
            POOL_EXHAUSTED,
            format!(
                "network {} has no free address left in range set {set} ({})",
                self.cfg.network,
                ranges.join(", ")
            ),
        )
    }
}
