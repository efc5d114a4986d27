//! `weftctl ipam repair`, also run by the agent when it (re-)registers:
//! after etcd was wiped or restored, the reservations of this host's live
//! attachments are put back from what the host itself knows (each port's
//! external_ids name the container, its ifname and its namespace; the
//! namespace holds the addresses), with the blocks they sit in, so a new
//! ADD elsewhere is not handed an address a running container has.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;
use weft_alloc::alloc::Allocator;
use weft_alloc::hints::MemHints;
use weft_alloc::keys::Keys;
use weft_host::ids;
use weft_host::link::Netlink;
use weft_host::ovs::Ovs;
use weft_store::{Compare, Store, Write};

use crate::conf::{cni, Loaded};

/// What repair did with one attachment.
#[derive(Debug)]
pub struct Repaired {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// "restored", "present", or why it could not be.
    pub outcome: String,
}

/// Addresses the container's interface carries, link-local ones aside.
fn addresses_in(nl: &Netlink, netns: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let ns = std::fs::File::open(netns)?;
    let c = nl.enter(&ns, false).map_err(cni)?;
    let Some(link) = nl.link(&c.handle, ifname).map_err(cni)? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .addresses(&c.handle, link.index)
        .map_err(cni)?
        .into_iter()
        .map(|n| n.addr())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect())
}

pub fn run(l: &Loaded) -> Result<Vec<Repaired>> {
    let Some(mut ovs) = Ovs::connect_if_running(&l.weft.ovsdb_socket).map_err(cni)? else {
        return Ok(Vec::new());
    };
    let nl = Netlink::new().map_err(cni)?;
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for p in ovs.weft_ports().map_err(cni)? {
        let (Some(net), Some(cid), Some(ifname), Some(netns)) = (
            p.id(ids::NETWORK),
            p.id(ids::CONTAINER_ID),
            p.id(ids::IFNAME),
            p.id(ids::NETNS),
        ) else {
            continue;
        };
        if !done.insert((net.to_string(), cid.to_string(), ifname.to_string())) {
            continue;
        }
        let Ok(cfg) = l.ipam(Some(net)) else {
            continue;
        };
        let mut r = Repaired {
            network: net.into(),
            container_id: cid.into(),
            ifname: ifname.into(),
            ips: Vec::new(),
            outcome: String::new(),
        };
        match addresses_in(&nl, netns, ifname) {
            Ok(ips) => r.ips = ips,
            Err(e) => {
                r.outcome = format!("namespace {netns} unreadable: {e:#}");
                out.push(r);
                continue;
            }
        }
        // Only addresses of this network's ranges (a chained plugin may
        // have added others).
        let mine: Vec<IpAddr> = r
            .ips
            .iter()
            .copied()
            .filter(|ip| {
                cfg.range_sets
                    .iter()
                    .flatten()
                    .any(|range| range.subnet.contains(ip))
            })
            .collect();
        if mine.is_empty() {
            r.outcome = "no address of this network on the interface".into();
            out.push(r);
            continue;
        }
        let mut store = weft_store::etcd::EtcdStore::connect(&cfg.etcd).map_err(cni)?;
        let keys = Keys::new(net);
        let had = store
            .read(&[weft_store::Read::Key(keys.owner(cid, ifname))])
            .map_err(|e| anyhow::anyhow!("{e}"))?[0]
            .kvs
            .len();
        // The blocks first, so no node claims them in between.
        for ip in &mine {
            let Some(block) = cfg
                .range_sets
                .iter()
                .flatten()
                .find(|range| range.subnet.contains(ip))
                .and_then(|range| {
                    range.block_of(
                        *ip,
                        if ip.is_ipv6() {
                            cfg.block_v6
                        } else {
                            cfg.block_v4
                        },
                    )
                })
            else {
                continue;
            };
            store
                .txn(
                    &[Compare::Absent(keys.block(&block))],
                    &[
                        Write::Put(keys.block(&block), cfg.node.as_bytes().to_vec()),
                        Write::Put(keys.node_block(&cfg.node, &block), Vec::new()),
                    ],
                    &[],
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut alloc = Allocator::new(&cfg, &mut store);
        alloc.netns = Some(netns.to_string());
        r.outcome = match alloc.add(cid, ifname, &mine, &mut MemHints::default()) {
            Ok(_) if had > 0 => "present".into(),
            Ok(_) => "restored".into(),
            Err(e) => format!("conflict: {} (code {})", e.msg, e.code),
        };
        out.push(r);
    }
    Ok(out)
}

/// `weftctl ipam repair`: Ok(false) when an address is held by another
/// attachment (the operator must choose which keeps it).
pub fn cli(l: &Loaded, json: bool) -> Result<bool> {
    let done = run(l)?;
    let mut t =
        crate::table::Table::new(&["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "OUTCOME"]);
    let mut doc = Vec::new();
    for r in &done {
        let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
        t.row(vec![
            r.network.clone(),
            r.container_id.clone(),
            r.ifname.clone(),
            ips.join(","),
            r.outcome.clone(),
        ]);
        doc.push(
            serde_json::json!({"network": r.network, "containerID": r.container_id,
            "ifname": r.ifname, "ips": ips, "outcome": r.outcome}),
        );
    }
    let restored = done.iter().filter(|r| r.outcome == "restored").count();
    crate::table::emit(
        json,
        &serde_json::json!(doc),
        Some(format!("ipam repair: {restored} reservations restored")),
        &t,
    );
    Ok(!done.iter().any(|r| r.outcome.starts_with("conflict")))
}
