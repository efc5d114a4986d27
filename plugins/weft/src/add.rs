//! ADD: veth into the container, host end onto the bridge, addresses from IPAM.
//!
//! IPAM runs as a child process while we build the link and the port, so its
//! exec cost overlaps ours. Every step pushes its inverse on the undo stack;
//! any failure unwinds them in reverse and reports the original error.

use std::cell::RefCell;

use weft_cni::delegate::{self, Pending};
use weft_cni::error::{self, Error, Result};
use weft_cni::result::{CniResult, Interface, IpConfig};
use weft_cni::skel::Context;
use weft_cni::Command;

use crate::config::{kernel_datapath_available, Config};
use crate::link::Netlink;
use crate::names::{self, ids};
use crate::ovs::Ovs;
use crate::undo::Undo;
use crate::{ethtool, netns};

pub fn add(ctx: &Context, cfg: &Config) -> Result<CniResult> {
    let (cid, ifname) = (ctx.env.container_id(), ctx.env.ifname());
    let netns_path = ctx.env.netns.as_ref().ok_or_else(|| Error::env("CNI_NETNS is required for ADD"))?;
    let host_name = names::host_veth(cid, ifname);
    let mac = ctx.conf.requested_mac.or(ctx.env.args.mac);
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;

    // Everything that can be checked without changing anything comes first.
    let container_ns = netns::open(netns_path)?;
    let host_ns = netns::current()?;
    let nl = Netlink::new()?;
    let cont = nl.enter(&container_ns)?;
    let ovs = RefCell::new(Ovs::connect(&cfg.ovsdb_socket)?);

    let pending: RefCell<Option<Pending>> = RefCell::new(Some(delegate::spawn(&ipam_bin, Command::Add, &cfg.raw)?));
    // Declared after everything its steps borrow, so it is dropped (and run) first.
    let mut undo = Undo::new();
    undo.push("ipam", || {
        if let Some(p) = pending.borrow_mut().take() {
            let _ = p.wait();
        }
        delegate::exec(&ipam_bin, Command::Del, &cfg.raw).map(|_| ()).map_err(|e| e.to_string())
    });

    nl.create_veth(&cont, ifname, &host_name, cfg.mtu, mac.map(|m| m.0))?;
    // Deleting the container end removes the pair wherever the peer lives.
    undo.push("veth", || nl.delete(&cont.handle, ifname).map(|_| ()).map_err(|e| e.to_string()));
    nl.move_peer(&cont, &host_name, &host_ns, cfg.mtu)?;
    let host_link = nl
        .link(nl.host(), &host_name)?
        .ok_or_else(|| Error::new(error::NETLINK_FAILURE, format!("{host_name} vanished after the move")))?;
    nl.set_up(nl.host(), host_link.index)?;

    let netns_str = netns_path.display().to_string();
    let mut tags: Vec<(&str, &str)> =
        vec![(ids::NETWORK, &cfg.network), (ids::CONTAINER_ID, cid), (ids::IFNAME, ifname), (ids::NETNS, &netns_str)];
    if let Some(pod) = &ctx.env.args.k8s_pod_name {
        tags.push((ids::POD_NAME, pod));
    }
    if let Some(ns) = &ctx.env.args.k8s_pod_namespace {
        tags.push((ids::POD_NAMESPACE, ns));
    }
    let wanted_dp = cfg.datapath.resolve(kernel_datapath_available);
    let datapath = ovs.borrow_mut().attach(&cfg.bridge, wanted_dp, &host_name, &tags);
    undo.push("ovs port", || ovs.borrow_mut().detach(&host_name).map(|_| ()).map_err(|e| e.to_string()));
    let datapath = datapath?;
    if datapath == "netdev" {
        ethtool::disable_tx_checksum(&cont.ioctl, ifname)?;
    }

    let ipam_out = pending.borrow_mut().take().map(Pending::wait).transpose()?.flatten();
    let ipam = CniResult::from_value(
        &ipam_out.ok_or_else(|| Error::new(error::DELEGATE_FAILURE, format!("{} returned no result", cfg.ipam_type)))?,
    )?;
    if ipam.ips.is_empty() {
        return Err(Error::new(error::DELEGATE_FAILURE, format!("{} returned no addresses", cfg.ipam_type)));
    }

    let link = nl
        .link(&cont.handle, ifname)?
        .ok_or_else(|| Error::new(error::NETLINK_FAILURE, format!("{ifname} vanished from the container")))?;
    for ip in &ipam.ips {
        nl.add_address(&cont.handle, link.index, ip.address)?;
    }
    nl.set_up(&cont.handle, link.index)?;
    for route in &ipam.routes {
        // A route without a gateway goes through the gateway of its family, as
        // the reference plugins do; with none, it is on-link.
        let gw = route.gw.or_else(|| {
            ipam.ips.iter().filter(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4()).find_map(|ip| ip.gateway)
        });
        nl.add_route(&cont.handle, link.index, route, gw)?;
    }

    let result = CniResult {
        interfaces: vec![
            Interface { name: host_name.clone(), mac: host_link.mac.clone(), ..Default::default() },
            Interface { name: ifname.to_string(), mac: link.mac.clone(), mtu: Some(cfg.mtu), sandbox: Some(netns_str.clone()) },
        ],
        ips: ipam.ips.iter().map(|ip| IpConfig { interface: Some(1), ..ip.clone() }).collect(),
        routes: ipam.routes.clone(),
        dns: ipam.dns.clone(),
    };
    undo.commit();
    tracing::info!(container = cid, ifname, port = %host_name, bridge = %cfg.bridge, "attached");
    Ok(result)
}
