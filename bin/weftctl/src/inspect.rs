//! Read-only views: nodes, networks, addresses, this host's tunnels.

use std::collections::BTreeMap;

use anyhow::Result;
use etcd_client::GetOptions;
use serde_json::{json, Value};
use weft_alloc::alloc::Allocator;
use weft_host::overlay::registry::{self, NetworkRecord};
use weft_host::ovs::Ovs;
use weft_store::{Read, Store};

use crate::conf::{cni, Loaded};
use crate::table::{emit, Table};

fn last(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// network -> member node names.
fn members(store: &mut impl Store) -> Result<BTreeMap<String, Vec<String>>> {
    let r = store
        .read(&[Read::prefix(&registry::all_members_prefix())])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (net, node) in registry::decode_members(&r[0]) {
        out.entry(net).or_default().push(node);
    }
    Ok(out)
}

pub fn nodes(l: &Loaded, json: bool) -> Result<()> {
    let mut store = l.store()?;
    let members = members(&mut store)?;
    let mut client = store.client();
    let resp = store.block_on(client.get(
        registry::nodes_prefix(),
        Some(GetOptions::new().with_prefix()),
    ))?;
    let me = &l.overlay()?.node;
    let mut t = Table::new(&["NODE", "UNDERLAY", "HELD BY", "NETWORKS"]);
    let mut doc = Vec::new();
    for kv in resp.kvs() {
        let name = last(kv.key_str().unwrap_or_default()).to_string();
        let rec: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
        let nets: Vec<&String> = members
            .iter()
            .filter(|(_, ns)| ns.contains(&name))
            .map(|(n, _)| n)
            .collect();
        // With a lease the agent keeps the node alive; without, an ADD
        // registered it and it stays until removed.
        let held = if kv.lease() != 0 {
            "agent lease"
        } else {
            "plugin (no lease)"
        };
        let shown = if &name == me {
            format!("{name} (this host)")
        } else {
            name.clone()
        };
        t.row(vec![
            shown,
            rec["ip"].as_str().unwrap_or("?").into(),
            held.into(),
            nets.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
        doc.push(json!({"name": name, "ip": rec["ip"], "lease": kv.lease(), "networks": nets}));
    }
    emit(
        json,
        &json!(doc),
        Some(format!("{} nodes registered", doc.len())),
        &t,
    );
    Ok(())
}

pub fn networks(l: &Loaded, json: bool) -> Result<()> {
    let mut store = l.store()?;
    let members = members(&mut store)?;
    let r = store
        .read(&[Read::prefix(&registry::networks_prefix())])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut t = Table::new(&["NETWORK", "VNI", "TUNNEL", "PORT", "HOSTS"]);
    let mut doc = Vec::new();
    for kv in &r[0].kvs {
        let name = last(&kv.key).to_string();
        let Ok(rec) = serde_json::from_slice::<NetworkRecord>(&kv.value) else {
            continue;
        };
        let hosts = members.get(&name).cloned().unwrap_or_default();
        t.row(vec![
            name.clone(),
            rec.vni.to_string(),
            rec.tunnel.as_str().into(),
            rec.port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            hosts.join(","),
        ]);
        doc.push(json!({"name": name, "vni": rec.vni, "tunnel": rec.tunnel.as_str(), "port": rec.port, "hosts": hosts}));
    }
    emit(
        json,
        &json!(doc),
        Some(format!("{} networks", doc.len())),
        &t,
    );
    Ok(())
}

pub fn ips(l: &Loaded, network: Option<&str>, json: bool) -> Result<()> {
    let cfg = l.ipam(network)?;
    let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
    let mut alloc = Allocator::new(&cfg, &mut store);
    let mut blocks = alloc.blocks().map_err(cni)?;
    let mut held = alloc.list().map_err(cni)?;
    blocks.sort();
    held.sort_by_key(|(ip, _)| *ip);
    let mut t = Table::new(&["ADDRESS", "NODE", "CONTAINER", "IFNAME"]);
    for (ip, h) in &held {
        t.row(vec![
            ip.to_string(),
            h.node.clone(),
            h.container_id.clone(),
            h.ifname.clone(),
        ]);
    }
    let doc = json!({
        "network": cfg.network,
        "blocks": blocks.iter().map(|(b, n)| json!({"block": b, "node": n})).collect::<Vec<_>>(),
        "allocations": held.iter().map(|(ip, h)| json!({"address": ip, "node": h.node, "containerID": h.container_id, "ifname": h.ifname})).collect::<Vec<_>>(),
    });
    let blocks_line: Vec<String> = blocks.iter().map(|(b, n)| format!("{b} ({n})")).collect();
    let heading = format!(
        "network {}: {} addresses in use; blocks: {}",
        cfg.network,
        held.len(),
        blocks_line.join(", ")
    );
    emit(json, &doc, Some(heading), &t);
    Ok(())
}

pub fn tunnels(l: &Loaded, json: bool) -> Result<()> {
    let mut ovs = Ovs::connect(&l.weft.ovsdb_socket).map_err(cni)?;
    let mut t = Table::new(&["PORT", "NETWORK", "PEER", "TYPE/REMOTE/PORT/VNI"]);
    let mut doc = Vec::new();
    for p in ovs.weft_ports().map_err(cni)? {
        let Some(net) = p.id(weft_host::ids::TUNNEL_FOR) else {
            continue;
        };
        let peer = p.id(weft_host::ids::PEER).unwrap_or("?");
        let spec = p.id(weft_host::ids::SPEC).unwrap_or("?");
        t.row(vec![p.name.clone(), net.into(), peer.into(), spec.into()]);
        doc.push(json!({"port": p.name, "network": net, "peer": peer, "spec": spec}));
    }
    emit(
        json,
        &json!(doc),
        Some(format!("{} tunnel ports on this host", doc.len())),
        &t,
    );
    Ok(())
}
