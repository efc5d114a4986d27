//! `weftctl gc` and `weftctl cleanup`.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::json;
use weft::link::Netlink;
use weft::names::ids;
use weft::overlay::gateway::GATEWAY_FOR;
use weft::overlay::registry;
use weft::overlay::tunnels;
use weft::ovs::Ovs;
use weft_ipam::alloc::Allocator;
use weft_ipam::store::{Read, Store, Write};

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
    let mut store = weft_ipam::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
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

/// Attachments on this host whose veth is gone (a container that vanished
/// without a DEL), and reservations of nodes that left the registry.
pub fn gc(l: &Loaded, json: bool) -> Result<()> {
    let mut r = Report::new();
    let mut ovs = Ovs::connect(&l.weft.ovsdb_socket).map_err(cni)?;
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
            release(l, net, me, Some(&only), &mut r)?;
        }
    }
    if l.weft.overlay.is_some() {
        let mut store = l.store()?;
        let got = store
            .read(&[
                Read::prefix(&registry::all_members_prefix()),
                Read::prefix(&registry::nodes_prefix()),
            ])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let live: BTreeSet<String> = registry::decode_nodes(&got[1])
            .into_iter()
            .map(|n| n.name)
            .collect();
        for (net, node) in registry::decode_members(&got[0]) {
            if !live.contains(&node) {
                release(l, &net, &node, None, &mut r)?;
            }
        }
    }
    let n = r.doc.len();
    r.emit(json, format!("gc: {n} things collected"));
    Ok(())
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
            let kind = if p.id(tunnels::ids::TUNNEL_FOR).is_some() {
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
        if weft::nft::chain_exists(weft::firewall::TABLE, "forward").unwrap_or(false) {
            weft::firewall::remove().map_err(cni)?;
            r.add(
                "removed",
                "nftables",
                format!("inet {}", weft::firewall::TABLE),
            );
        }
        if weft::hostend::input_drop_present().unwrap_or(false) {
            weft::hostend::remove_input_drop().map_err(cni)?;
            r.add(
                "removed",
                "nftables",
                format!("inet {}", weft::hostend::TABLE),
            );
        }
    }
    if let (Some(o), false) = (&l.weft.overlay, keep_registration) {
        let mut store = l.store()?;
        let nets = registry::networks_of(&mut store, &o.node).map_err(cni)?;
        for net in &nets {
            release(l, net, &o.node, None, &mut r)?;
        }
        let mut writes = vec![Write::Delete(registry::node_key(&o.node))];
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
