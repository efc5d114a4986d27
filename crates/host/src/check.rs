//! CHECK: the container's interface, addresses, routes and MTU, the host end
//! and the OVS port, all as ADD left them according to prevResult.

use weft_cni::delegate;
use weft_cni::error::{self, Error, Result};
use weft_cni::skel::Context;
use weft_cni::Command;

use crate::config::Config;
use crate::ids;
use crate::link::Netlink;
use crate::names;
use crate::netns;
use crate::overlay::registry;
use crate::ovs::Ovs;

fn mismatch(msg: impl Into<String>) -> Error {
    Error::new(error::CHECK_MISMATCH, msg)
}

/// The port is an access port of its network's VLAN: the VNI in the
/// registry, or the tag the bridge records for a single-host network.
fn check_vlan(cfg: &Config, ovs: &mut Ovs, port: &str) -> Result<()> {
    let want = match &cfg.overlay {
        None => ovs
            .local_vlans(&cfg.bridge)?
            .into_iter()
            .find(|(n, _)| *n == cfg.network)
            .map(|(_, t)| t),
        Some(o) => {
            let mut store = weft_store::etcd::EtcdStore::connect(&o.etcd)?;
            registry::view(&mut store, &cfg.network, &o.node)?.map(|v| v.network.vni)
        }
    };
    let have = ovs
        .port_tags(&[port])?
        .into_iter()
        .next()
        .and_then(|p| p.tag);
    match (want, have) {
        (Some(w), Some(h)) if w == h => Ok(()),
        (None, _) => Err(mismatch(format!(
            "network {} has no VLAN on record for bridge {}",
            cfg.network, cfg.bridge
        ))),
        (Some(w), h) => Err(mismatch(format!(
            "OVS port {port} is on VLAN {}, network {} is on {w}",
            h.map_or("none (a trunk)".to_string(), |t| t.to_string()),
            cfg.network
        ))),
    }
}

pub fn check(ctx: &Context, cfg: &Config) -> Result<()> {
    let prev = ctx
        .conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::config("CHECK needs prevResult"))?;
    let (cid, ifname) = (ctx.env.container_id(), ctx.env.ifname());
    let host_name = names::host_veth(cid, ifname);
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;
    let netns_path = ctx
        .env
        .netns
        .as_ref()
        .ok_or_else(|| Error::env("CNI_NETNS is required for CHECK"))?;

    let nl = Netlink::new()?;
    let cont = nl.enter(&netns::open(netns_path)?, false)?;
    let link = nl
        .link(&cont.handle, ifname)?
        .ok_or_else(|| mismatch(format!("{ifname} is missing from the container")))?;
    let want_mtu = crate::overlay::effective_mtu(cfg, &nl)?;
    if link.mtu != want_mtu {
        return Err(mismatch(format!(
            "{ifname} has MTU {}, config says {want_mtu}",
            link.mtu
        )));
    }
    if !link.up {
        return Err(mismatch(format!("{ifname} is down")));
    }
    let own_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    if let Some(want) = own_index.and_then(|i| prev.interfaces[i].mac.as_deref()) {
        if link.mac.as_deref().map(str::to_ascii_lowercase) != Some(want.to_ascii_lowercase()) {
            return Err(mismatch(format!(
                "{ifname} has MAC {:?}, prevResult says {want}",
                link.mac
            )));
        }
    }
    let have = nl.addresses(&cont.handle, link.index)?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == own_index)
    {
        if !have.contains(&ip.address) {
            return Err(mismatch(format!("{ifname} lacks address {}", ip.address)));
        }
    }
    let routes = nl.routes(&cont.handle, link.index)?;
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|(dst, gw)| *dst == r.dst && (r.gw.is_none() || *gw == r.gw))
        {
            return Err(mismatch(format!("route to {} is missing", r.dst)));
        }
    }

    let host = nl
        .link(nl.host(), &host_name)?
        .ok_or_else(|| mismatch(format!("host end {host_name} is missing")))?;
    if !host.up {
        return Err(mismatch(format!("host end {host_name} is down")));
    }
    let mut ovs = Ovs::connect(&cfg.ovsdb_socket)?;
    let port = ovs
        .find_by_name(&host_name)?
        .ok_or_else(|| mismatch(format!("OVS port {host_name} is missing")))?;
    if port.id(ids::CONTAINER_ID) != Some(cid) || port.id(ids::IFNAME) != Some(ifname) {
        return Err(mismatch(format!(
            "OVS port {host_name} belongs to another attachment"
        )));
    }
    if !ovs.bridge_has_port(&cfg.bridge, &port.uuid)? {
        return Err(mismatch(format!(
            "OVS port {host_name} is not on bridge {}",
            cfg.bridge
        )));
    }
    ovs.port_healthy(&host_name)?;
    check_vlan(cfg, &mut ovs, &host_name)?;

    delegate::exec(&ipam_bin, Command::Check, &cfg.raw)?;
    Ok(())
}
