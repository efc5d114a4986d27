//! GC and STATUS.

use std::collections::HashSet;

use weft_cni::delegate;
use weft_cni::error::{self, Error, Result};
use weft_cni::skel::Context;
use weft_cni::Command;

use crate::config::Config;
use crate::ids;
use crate::link::Netlink;
use crate::ovs::Ovs;

/// Removes this network's ports whose attachment the runtime no longer knows.
pub fn gc(ctx: &Context, cfg: &Config) -> Result<()> {
    // Without the list we cannot tell live from stale, and removing everything
    // would cut every container off.
    let valid = ctx
        .conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| Error::config("GC needs cni.dev/valid-attachments"))?;
    let keep: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;

    let mut ovs = Ovs::connect(&cfg.ovsdb_socket)?;
    let stale: Vec<_> = ovs
        .find_tagged(&[(ids::NETWORK, &cfg.network)])?
        .into_iter()
        .filter(|p| {
            let key = (
                p.id(ids::CONTAINER_ID).unwrap_or(""),
                p.id(ids::IFNAME).unwrap_or(""),
            );
            !keep.contains(&key)
        })
        .collect();
    ovs.remove(&stale)?;
    let nl = Netlink::new()?;
    for p in &stale {
        nl.delete(nl.host(), &p.name)?;
        tracing::info!(port = %p.name, container = p.id(ids::CONTAINER_ID).unwrap_or("?"), "collected stale port");
    }
    // A single-host network with nothing left on the bridge gives up its
    // VLAN; a later ADD claims one again (ADD guards against this race).
    if cfg.overlay.is_none()
        && ovs.find_tagged(&[(ids::NETWORK, &cfg.network)])?.is_empty()
        && ovs
            .find_by_name(&crate::names::gateway_port(&cfg.network))?
            .is_none()
    {
        ovs.forget_local_vlan(&cfg.bridge, &cfg.network)?;
        crate::vlan::forget_hint(&cfg.bridge, &cfg.network);
    }
    delegate::exec_if_supported(&ipam_bin, Command::Gc, &cfg.raw)?;
    Ok(())
}

/// Ready when OVSDB answers and the IPAM plugin says it is ready.
pub fn status(ctx: &Context, cfg: &Config) -> Result<()> {
    let not_ready = |e: Error| {
        Error::new(
            error::NOT_AVAILABLE,
            format!(
                "Open vSwitch is not available at {}",
                cfg.ovsdb_socket.display()
            ),
        )
        .with_details(e.msg)
    };
    Ovs::connect(&cfg.ovsdb_socket)
        .and_then(|mut o| o.ping())
        .map_err(not_ready)?;
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;
    delegate::exec_if_supported(&ipam_bin, Command::Status, &cfg.raw)?;
    Ok(())
}
