//! `weftctl gc` and `weftctl cleanup`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use weft_alloc::alloc::Allocator;
use weft_host::ids;
use weft_host::ids::GATEWAY_FOR;
use weft_host::link::Netlink;
use weft_host::overlay::registry;
use weft_host::ovs::Ovs;
use weft_store::{Compare, Read, Store, Write};

use crate::conf::{cni, Loaded};
use crate::table::{emit, Table};

struct Report {
    t: Table,
    doc: Vec<serde_json::Value>,
}

impl Report {
    fn new() -> Self {
        Report {
            t: Table::new(&["ACTION", "WHAT", "DETAIL"]),
            doc: Vec::new(),
        }
    }
    fn add(&mut self, action: &str, what: &str, detail: String) {
        self.t.row(vec![action.into(), what.into(), detail.clone()]);
        self.doc
            .push(json!({"action": action, "what": what, "detail": detail}));
    }
    fn emit(self, json: bool, heading: String) {
        emit(json, &json!(self.doc), Some(heading), &self.t);
    }
}

/// Releases `node`'s reservations on `net` (all of them, or those whose
/// attachment is in `only`).
fn release(
    l: &Loaded,
    net: &str,
    node: &str,
    only: Option<&BTreeSet<(String, String)>>,
    r: &mut Report,
) -> Result<()> {
    let Ok(cfg) = l.ipam(Some(net)) else {
        return Ok(());
    };
    let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
    let mut alloc = Allocator::new(&cfg, &mut store);
    let held = alloc.list().map_err(cni)?;
    let mut done = BTreeSet::new();
    for (ip, h) in held {
        let key = (h.container_id.clone(), h.ifname.clone());
        if h.node != node || only.is_some_and(|o| !o.contains(&key)) || !done.insert(key) {
            continue;
        }
        alloc.del(&h.container_id, &h.ifname).map_err(cni)?;
        r.add(
            "released",
            "address",
            format!("{ip} on {net} ({}, node {node})", h.container_id),
        );
    }
    Ok(())
}

/// Ports here whose veth is gone (a container that vanished without a DEL:
/// its namespace took the veth with it), and their addresses.
fn collect_vanished(l: &Loaded, ovs: &mut Ovs, r: &mut Report) -> Result<()> {
    let nl = Netlink::new().map_err(cni)?;
    let mut stale = Vec::new();
    for p in ovs.weft_ports().map_err(cni)? {
        if p.id(ids::CONTAINER_ID).is_some() && nl.link(nl.host(), &p.name).map_err(cni)?.is_none()
        {
            stale.push(p);
        }
    }
    ovs.remove(&stale).map_err(cni)?;
    let me = l.weft.overlay.as_ref().map(|o| o.node.clone());
    for p in &stale {
        let (net, cid, ifname) = (
            p.id(ids::NETWORK).unwrap_or_default(),
            p.id(ids::CONTAINER_ID).unwrap_or_default(),
            p.id(ids::IFNAME).unwrap_or_default(),
        );
        r.add(
            "removed",
            "port",
            format!("{} ({cid} {ifname} on {net})", p.name),
        );
        if let Some(me) = &me {
            let only = BTreeSet::from([(cid.to_string(), ifname.to_string())]);
            release(l, net, me, Some(&only), r)?;
        }
    }
    Ok(())
}

/// The node-local reconciler the agent runs, for runtimes that never send
/// CNI GC (containerd 1.6, kubelet): this node's reservations whose
/// attachment is not alive here (no OVS port, and the namespace the runtime
/// named is gone) are released once they have been so for `grace`. Only
/// this node's: another node's are its own agent's business.
#[derive(Default)]
pub struct Orphans {
    since: HashMap<(String, String, String), Instant>,
    empty_since: HashMap<(String, ipnet::IpNet), Instant>,
}

impl Orphans {
    /// One pass; returns how many reservations it released. This node's
    /// blocks that have held no reservation for `block_grace` go back to
    /// the pool too.
    pub fn pass(&mut self, l: &Loaded, grace: Duration, block_grace: Duration) -> Result<usize> {
        let Some(o) = &l.weft.overlay else {
            return Ok(0);
        };
        // Without OVS nothing tells what is alive: release nothing.
        let Some(mut ovs) = Ovs::connect_if_running(&l.weft.ovsdb_socket).map_err(cni)? else {
            return Ok(0);
        };
        let mut r = Report::new();
        collect_vanished(l, &mut ovs, &mut r)?;
        let ports = ovs.weft_ports().map_err(cni)?;
        let live: BTreeSet<(String, String, String)> = ports
            .iter()
            .filter_map(|p| {
                Some((
                    p.id(ids::NETWORK)?.to_string(),
                    p.id(ids::CONTAINER_ID)?.to_string(),
                    p.id(ids::IFNAME)?.to_string(),
                ))
            })
            .collect();
        let mut nets: BTreeSet<String> = live.iter().map(|(n, _, _)| n.clone()).collect();
        nets.insert(l.weft.network.clone());
        let mut store = l.store()?;
        nets.extend(registry::networks_of(&mut store, &o.node).map_err(cni)?);
        let mut orphaned = BTreeSet::new();
        let mut released = 0;
        let mut held_anywhere = BTreeSet::new();
        let mut ipam_nets = BTreeSet::new();
        for net in &nets {
            let Ok(cfg) = l.ipam(Some(net)) else {
                continue;
            };
            let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
            let held = Allocator::new(&cfg, &mut store).list().map_err(cni)?;
            ipam_nets.insert(net.clone());
            let mut seen = BTreeSet::new();
            for (_, h) in &held {
                held_anywhere.insert((net.clone(), h.container_id.clone(), h.ifname.clone()));
            }
            for (_, h) in held {
                let key = (net.clone(), h.container_id.clone(), h.ifname.clone());
                if h.node != o.node || live.contains(&key) || !seen.insert(key.clone()) {
                    continue;
                }
                if h.netns.as_deref().is_some_and(|ns| Path::new(ns).exists()) {
                    continue;
                }
                orphaned.insert(key.clone());
                let first = *self.since.entry(key.clone()).or_insert_with(Instant::now);
                if first.elapsed() < grace {
                    continue;
                }
                // Under the attachment's turn, so an ADD or DEL of it on
                // this node is not running meanwhile, and an ADD that
                // started before this gives up instead of reserving.
                let turn = weft_cni::turns::path(&cfg.data_dir, net, &h.container_id, &h.ifname);
                let Ok(_turn) = weft_cni::turns::Turn::for_del(&turn, Duration::from_secs(1))
                else {
                    continue;
                };
                let attached = ovs.weft_ports().map_err(cni)?.iter().any(|p| {
                    p.id(ids::CONTAINER_ID) == Some(h.container_id.as_str())
                        && p.id(ids::IFNAME) == Some(h.ifname.as_str())
                });
                if attached {
                    continue;
                }
                store.renew();
                if Allocator::new(&cfg, &mut store)
                    .del(&h.container_id, &h.ifname)
                    .map_err(cni)?
                {
                    tracing::warn!(network = %net, container = %h.container_id, ifname = %h.ifname,
                        "released a reservation with no live attachment on this node");
                    released += 1;
                }
            }
        }
        self.since.retain(|k, _| orphaned.contains(k));
        let mut empty = BTreeSet::new();
        for net in &ipam_nets {
            let Ok(cfg) = l.ipam(Some(net)) else {
                continue;
            };
            let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
            let mut alloc = Allocator::new(&cfg, &mut store);
            for b in alloc.empty_blocks_of(&o.node).map_err(cni)? {
                let key = (net.clone(), b);
                let first = *self
                    .empty_since
                    .entry(key.clone())
                    .or_insert_with(Instant::now);
                empty.insert(key);
                if first.elapsed() >= block_grace
                    && alloc.release_block(&o.node, &b).map_err(cni)?
                {
                    tracing::info!(network = %net, block = %b, "released a block empty for the grace period");
                }
            }
        }
        self.empty_since.retain(|k, _| empty.contains(k));
        // A live attachment with no reservation: etcd lost it (wiped or
        // restored under us). Put it back before anyone is handed it.
        if live
            .iter()
            .any(|k| ipam_nets.contains(&k.0) && !held_anywhere.contains(k))
        {
            for r in crate::repair::run(l)?
                .iter()
                .filter(|r| r.outcome != "present")
            {
                tracing::warn!(network = %r.network, container = %r.container_id,
                    ifname = %r.ifname, ips = ?r.ips, outcome = %r.outcome, "reservation repair");
            }
        }
        let vanished = r.doc.iter().filter(|d| d["action"] == "released").count();
        Ok(released + vanished)
    }
}

/// Where a member node that `gc` looks at stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Presence {
    /// Registered: its agent holds a lease, or it runs without one.
    Live,
    /// Missing, and nothing says since when: the clock starts now.
    FirstMissed,
    /// Missing for this many seconds, less than the grace period.
    Missing(u64),
    /// Missing for this many seconds, longer than the grace period.
    Gone(u64),
}

/// `seen`: when its agent last wrote that it was alive, or when a gc first
/// found it missing (unix seconds). Clocks are assumed within a minute of
/// each other; the grace period is minutes.
pub fn presence(live: bool, seen: Option<u64>, now: u64, grace: Duration) -> Presence {
    if live {
        return Presence::Live;
    }
    match seen {
        None => Presence::FirstMissed,
        Some(t) => {
            let away = now.saturating_sub(t);
            if away > grace.as_secs() {
                Presence::Gone(away)
            } else {
                Presence::Missing(away)
            }
        }
    }
}

pub use weft_host::overlay::registry::unix_now;

/// Attachments on this host whose veth is gone (a container that vanished
/// without a DEL), and reservations of nodes that have been gone longer than
/// `grace` or that the operator names in `forget`. Ok(false) when a named
/// node could not be forgotten.
pub fn gc(l: &Loaded, grace: Duration, forget: &[String], json: bool) -> Result<bool> {
    let mut r = Report::new();
    let mut ovs = Ovs::connect(&l.weft.ovsdb_socket).map_err(cni)?;
    collect_vanished(l, &mut ovs, &mut r)?;
    let mut ok = true;
    if l.weft.overlay.is_some() {
        let mut store = l.store()?;
        let got = store
            .read(&[
                Read::prefix(&registry::all_members_prefix()),
                Read::prefix(&registry::nodes_prefix()),
                Read::prefix(&registry::seen_prefix()),
            ])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let live: BTreeSet<String> = registry::decode_nodes(&got[1])
            .into_iter()
            .map(|n| n.name)
            .collect();
        let seen: BTreeMap<String, u64> = got[2]
            .kvs
            .iter()
            .filter_map(|kv| {
                let node = kv.key.rsplit('/').next()?.to_string();
                Some((node, std::str::from_utf8(&kv.value).ok()?.parse().ok()?))
            })
            .collect();
        let mut nets_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (net, node) in registry::decode_members(&got[0]) {
            nets_of.entry(node).or_default().push(net);
        }
        for name in forget {
            if live.contains(name) {
                r.add(
                    "refused",
                    "node",
                    format!("{name} is registered: stop its agent (or let its lease lapse) first"),
                );
                ok = false;
            } else if !nets_of.contains_key(name) {
                r.add(
                    "refused",
                    "node",
                    format!("{name} is a member of no network"),
                );
                ok = false;
            }
        }
        let now = unix_now();
        for (node, nets) in &nets_of {
            let forced = forget.contains(node) && !live.contains(node);
            let verdict = presence(live.contains(node), seen.get(node).copied(), now, grace);
            match (&verdict, forced) {
                (Presence::Live, _) => continue,
                (Presence::Gone(_), _) | (_, true) => {}
                (Presence::FirstMissed, false) => {
                    store
                        .txn(
                            &[Compare::Absent(registry::seen_key(node))],
                            &[Write::Put(
                                registry::seen_key(node),
                                now.to_string().into_bytes(),
                            )],
                            &[],
                        )
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    r.add(
                        "kept",
                        "node",
                        format!(
                            "{node} is missing; its addresses go after {}",
                            humantime::format_duration(grace)
                        ),
                    );
                    continue;
                }
                (Presence::Missing(away), false) => {
                    r.add(
                        "kept",
                        "node",
                        format!(
                            "{node} missing for {}s; its addresses go after {}",
                            away,
                            humantime::format_duration(grace)
                        ),
                    );
                    continue;
                }
            }
            for net in nets {
                release(l, net, node, None, &mut r)?;
                if let Ok(cfg) = l.ipam(Some(net)) {
                    let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
                    let n = Allocator::new(&cfg, &mut store)
                        .release_blocks_of(node)
                        .map_err(cni)?;
                    if n > 0 {
                        r.add("released", "blocks", format!("{n} of {node} on {net}"));
                    }
                }
            }
            // Gone for good: its memberships and its clock go too, so peers
            // and later runs stop counting it. It comes back as a new node.
            let mut writes: Vec<Write> = nets
                .iter()
                .map(|n| Write::Delete(registry::member_key(n, node)))
                .collect();
            writes.push(Write::Delete(registry::seen_key(node)));
            store
                .txn(&[Compare::Absent(registry::node_key(node))], &writes, &[])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let why = match verdict {
                Presence::Gone(away) => format!("gone for {away}s"),
                _ => "named with --forget-node".to_string(),
            };
            r.add("forgot", "node", format!("{node} ({why})"));
        }
    }
    let n = r
        .doc
        .iter()
        .filter(|d| d["action"] != "kept" && d["action"] != "refused")
        .count();
    r.emit(json, format!("gc: {n} things collected"));
    Ok(ok)
}

/// Everything weft made on this host: ports, veths, the bridge it created,
/// gateway rules, and (unless kept) its registration and addresses.
pub fn cleanup(l: &Loaded, keep_registration: bool, json: bool) -> Result<()> {
    let mut r = Report::new();
    let nl = Netlink::new().map_err(cni)?;
    if let Some(mut ovs) = Ovs::connect_if_running(&l.weft.ovsdb_socket).map_err(cni)? {
        let ports = ovs.weft_ports().map_err(cni)?;
        ovs.remove(&ports).map_err(cni)?;
        for p in &ports {
            let kind = if p.id(weft_host::ids::TUNNEL_FOR).is_some() {
                "tunnel"
            } else if p.id(GATEWAY_FOR).is_some() {
                "gateway"
            } else {
                nl.delete(nl.host(), &p.name).map_err(cni)?;
                "attachment"
            };
            r.add("removed", kind, p.name.clone());
        }
        if ovs.remove_own_bridge(&l.weft.bridge).map_err(cni)? {
            r.add("removed", "bridge", l.weft.bridge.clone());
        }
        if weft_host::nft::chain_exists(weft_host::firewall::TABLE, "forward").unwrap_or(false) {
            weft_host::firewall::remove().map_err(cni)?;
            r.add(
                "removed",
                "nftables",
                format!("inet {}", weft_host::firewall::TABLE),
            );
        }
        if weft_host::hostend::input_drop_present().unwrap_or(false) {
            weft_host::hostend::remove_input_drop().map_err(cni)?;
            r.add(
                "removed",
                "nftables",
                format!("inet {}", weft_host::hostend::TABLE),
            );
        }
    }
    if let (Some(o), false) = (&l.weft.overlay, keep_registration) {
        let mut store = l.store()?;
        let nets = registry::networks_of(&mut store, &o.node).map_err(cni)?;
        for net in &nets {
            release(l, net, &o.node, None, &mut r)?;
        }
        let mut writes = vec![
            Write::Delete(registry::node_key(&o.node)),
            Write::Delete(registry::seen_key(&o.node)),
        ];
        writes.extend(
            nets.iter()
                .map(|n| Write::Delete(registry::member_key(n, &o.node))),
        );
        store
            .txn(&[], &writes, &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        r.add(
            "removed",
            "registration",
            format!("node {} and its {} memberships", o.node, nets.len()),
        );
    }
    let n = r.doc.len();
    r.emit(json, format!("cleanup: {n} things removed"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_is_gone_only_after_the_grace_period() {
        let grace = Duration::from_secs(600);
        assert_eq!(presence(true, None, 1000, grace), Presence::Live);
        assert_eq!(presence(true, Some(1), 100_000, grace), Presence::Live);
        assert_eq!(presence(false, None, 1000, grace), Presence::FirstMissed);
        assert_eq!(
            presence(false, Some(1000), 1600, grace),
            Presence::Missing(600)
        );
        assert_eq!(
            presence(false, Some(1000), 1601, grace),
            Presence::Gone(601)
        );
        // A clock behind the writer's is never "gone".
        assert_eq!(
            presence(false, Some(2000), 1000, grace),
            Presence::Missing(0)
        );
    }
}
