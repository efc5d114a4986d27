//! The allocator's upkeep: DEL, GC, CHECK, STATUS and listings. The
//! reservation path is in `alloc.rs`.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_cni::error::{self, Error, Result, RESERVATION_MISMATCH};
use weft_store::{store_err, Compare, Kv, Read, Store, Write};

use crate::alloc::{Allocator, Holder, OwnerRecord, MAX_ATTEMPTS};
use crate::keys::{addr_of_ip_key, parse_block_key};

impl<S: Store> Allocator<'_, S> {
    /// DEL: releases the attachment's addresses; missing is success.
    pub fn del(&mut self, cid: &str, ifname: &str) -> Result<bool> {
        let owner_key = self.keys.owner(cid, ifname);
        for _ in 0..MAX_ATTEMPTS {
            let r = self
                .store
                .read(&[Read::Key(owner_key.clone())])
                .map_err(store_err)?;
            let Some(kv) = r[0].kvs.first() else {
                return Ok(false);
            };
            if self.release(kv)? {
                return Ok(true);
            }
        }
        Err(Error::new(
            error::TRY_AGAIN_LATER,
            "owner record kept changing during DEL",
        ))
    }

    /// Deletes an owner record and its addresses if it is unchanged.
    fn release(&mut self, owner: &Kv) -> Result<bool> {
        let rec: OwnerRecord = serde_json::from_slice(&owner.value).map_err(|e| {
            Error::unexpected(format!("corrupt owner record at {}", owner.key)).with_details(e)
        })?;
        let mut writes = vec![Write::Delete(owner.key.clone())];
        writes.extend(rec.ips.iter().map(|ip| Write::Delete(self.keys.ip(*ip))));
        let r = self
            .store
            .txn(
                &[Compare::ModRevision(owner.key.clone(), owner.mod_revision)],
                &writes,
                &[],
            )
            .map_err(store_err)?;
        Ok(r.succeeded)
    }

    /// GC: releases this node's reservations whose attachment is not in `valid`.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Result<usize> {
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        let owners_prefix = self.keys.owners();
        let all = self
            .store
            .read(&[Read::prefix(&owners_prefix), Read::prefix(&self.keys.ips())])
            .map_err(store_err)?;
        let mut released = 0;
        let mut owned_ips: HashSet<IpAddr> = HashSet::new();
        for kv in &all[0].kvs {
            let Ok(rec) = serde_json::from_slice::<OwnerRecord>(&kv.value) else {
                continue;
            };
            let attachment = kv
                .key
                .strip_prefix(&owners_prefix)
                .and_then(|t| t.split_once('/'));
            if rec.node == self.cfg.node && attachment.is_some_and(|a| !keep.contains(&a)) {
                if self.release(kv)? {
                    released += 1;
                }
            } else {
                owned_ips.extend(rec.ips);
            }
        }
        // Reservations without an owner record cannot come from our
        // transactions; clear any of this node's all the same.
        for kv in &all[1].kvs {
            let (Some(ip), Ok(h)) = (
                addr_of_ip_key(&kv.key),
                serde_json::from_slice::<Holder>(&kv.value),
            ) else {
                continue;
            };
            if h.node == self.cfg.node
                && !owned_ips.contains(&ip)
                && !keep.contains(&(h.container_id.as_str(), h.ifname.as_str()))
            {
                let r = self.store.txn(
                    &[Compare::ValueIs(kv.key.clone(), kv.value.clone())],
                    &[Write::Delete(kv.key.clone())],
                    &[],
                );
                if r.map_err(store_err)?.succeeded {
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    /// CHECK: `ips` must all be reserved for this attachment.
    pub fn check(&mut self, cid: &str, ifname: &str, ips: &[IpAddr]) -> Result<()> {
        let mut reads = vec![Read::Key(self.keys.owner(cid, ifname))];
        reads.extend(ips.iter().map(|ip| Read::Key(self.keys.ip(*ip))));
        let r = self.store.read(&reads).map_err(store_err)?;
        if r[0].kvs.is_empty() {
            return Err(Error::new(
                RESERVATION_MISMATCH,
                format!("no reservation for container {cid} ifname {ifname}"),
            ));
        }
        for (ip, rr) in ips.iter().zip(&r[1..]) {
            let holder = rr
                .kvs
                .first()
                .and_then(|kv| serde_json::from_slice::<Holder>(&kv.value).ok());
            match holder {
                Some(h) if h.container_id == cid && h.ifname == ifname => {}
                Some(h) => {
                    return Err(Error::new(
                        RESERVATION_MISMATCH,
                        format!(
                            "{ip} is held by container {} ifname {}",
                            h.container_id, h.ifname
                        ),
                    ))
                }
                None => {
                    return Err(Error::new(
                        RESERVATION_MISMATCH,
                        format!("{ip} is not reserved"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// STATUS: reachable, and every range set has an address left.
    pub fn status(&mut self) -> Result<()> {
        let mut reads = Vec::new();
        for set in &self.cfg.range_sets {
            for r in set {
                reads.push(Read::Count {
                    start: self.keys.ip(r.start),
                    end: format!("{}\0", self.keys.ip(r.end)),
                });
            }
        }
        let counts = self.store.read(&reads).map_err(|e| {
            Error::new(
                error::NOT_AVAILABLE,
                format!("etcd is unavailable: {}", e.msg),
            )
        })?;
        let mut counts = counts.iter().map(|c| c.count as u128);
        for (i, set) in self.cfg.range_sets.iter().enumerate() {
            let mut any_free = false;
            for r in set {
                let used = counts.next().unwrap_or(0);
                if r.usable_count(&self.cfg.exclude) > used {
                    any_free = true;
                }
            }
            if !any_free {
                return Err(Error::new(error::NOT_AVAILABLE, self.exhausted(i).msg));
            }
        }
        Ok(())
    }

    /// Every claimed block of the network and its node, for `weftctl ips`.
    pub fn blocks(&mut self) -> Result<Vec<(IpNet, String)>> {
        let all = self
            .store
            .read(&[Read::prefix(&self.keys.blocks())])
            .map_err(store_err)?;
        Ok(all[0]
            .kvs
            .iter()
            .filter_map(|kv| {
                Some((
                    parse_block_key(&kv.key)?,
                    String::from_utf8_lossy(&kv.value).to_string(),
                ))
            })
            .collect())
    }

    /// Every reservation of the network, for `weftctl ips`.
    pub fn list(&mut self) -> Result<Vec<(IpAddr, Holder)>> {
        let all = self
            .store
            .read(&[Read::prefix(&self.keys.ips())])
            .map_err(store_err)?;
        Ok(all[0]
            .kvs
            .iter()
            .filter_map(|kv| {
                Some((
                    addr_of_ip_key(&kv.key)?,
                    serde_json::from_slice::<Holder>(&kv.value).ok()?,
                ))
            })
            .collect())
    }

    /// `node`'s blocks, from its index.
    fn index_of(&mut self, node: &str) -> Result<Vec<IpNet>> {
        let index = self
            .store
            .read(&[Read::prefix(&self.keys.node_blocks(node))])
            .map_err(store_err)?;
        Ok(index[0]
            .kvs
            .iter()
            .filter_map(|kv| parse_block_key(&kv.key))
            .collect())
    }

    /// `node`'s blocks (from its index) with no reservation inside.
    pub fn empty_blocks_of(&mut self, node: &str) -> Result<Vec<IpNet>> {
        let blocks = self.index_of(node)?;
        if blocks.is_empty() {
            return Ok(blocks);
        }
        let counts: Vec<Read> = blocks
            .iter()
            .map(|b| match self.keys.ips_in(b) {
                Read::Range { start, end } => Read::Count { start, end },
                other => other,
            })
            .collect();
        let counts = self.store.read(&counts).map_err(store_err)?;
        Ok(blocks
            .into_iter()
            .zip(counts)
            .filter(|(_, c)| c.count == 0)
            .map(|(b, _)| b)
            .collect())
    }

    /// Gives `block` back to the pool if `node` still holds it. An ADD
    /// racing this cannot duplicate an address: every reservation also
    /// requires its address key absent. At worst it reserves in a block
    /// nobody holds, which its owner record still covers.
    pub fn release_block(&mut self, node: &str, block: &IpNet) -> Result<bool> {
        let r = self
            .store
            .txn(
                &[Compare::ValueIs(
                    self.keys.block(block),
                    node.as_bytes().to_vec(),
                )],
                &[
                    Write::Delete(self.keys.block(block)),
                    Write::Delete(self.keys.node_block(node, block)),
                ],
                &[],
            )
            .map_err(store_err)?;
        if r.succeeded {
            tracing::info!(block = %block, node = %node, "released block");
        }
        Ok(r.succeeded)
    }

    /// Every block `node` holds (for a node that is gone for good).
    pub fn release_blocks_of(&mut self, node: &str) -> Result<usize> {
        let blocks = self.index_of(node)?;
        let mut n = 0;
        for b in &blocks {
            if self.release_block(node, b)? {
                n += 1;
            } else {
                // Someone else holds it now: only our index entry goes.
                self.store
                    .txn(&[], &[Write::Delete(self.keys.node_block(node, b))], &[])
                    .map_err(store_err)?;
            }
        }
        Ok(n)
    }
}
