//! DEL: best effort and idempotent. A missing netns, link, port or reservation
//! is success; every step runs even when an earlier one failed, IPAM DEL always.

use weft_cni::delegate;
use weft_cni::error::{Error, Result};
use weft_cni::skel::Context;
use weft_cni::Command;

use crate::config::Config;
use crate::link::Netlink;
use crate::names;
use crate::netns;
use crate::ovs::Ovs;

pub fn del(ctx: &Context, cfg: &Config) -> Result<()> {
    let host_name = names::host_veth(ctx.env.container_id(), ctx.env.ifname());
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;
    let pending = delegate::spawn(&ipam_bin, Command::Del, &cfg.raw)?;
    let mut errors: Vec<Error> = Vec::new();

    // Without ovsdb-server there is no port to remove now; GC finds it if it comes back.
    match Ovs::connect_if_running(&cfg.ovsdb_socket) {
        Ok(Some(mut ovs)) => {
            if let Err(e) = ovs.detach(&host_name) {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }

    if let Err(e) = remove_links(ctx, &host_name) {
        errors.push(e);
    }
    if let Err(e) = pending.wait() {
        errors.push(e);
    }
    for e in &errors {
        tracing::warn!(error = %e, "DEL step failed");
    }
    match errors.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

fn remove_links(ctx: &Context, host_name: &str) -> Result<()> {
    let nl = Netlink::new()?;
    if let Some(path) = &ctx.env.netns {
        // The namespace may be gone already: then so is the pair.
        if let Ok(ns) = netns::open(path) {
            let cont = nl.enter(&ns)?;
            nl.delete(&cont.handle, ctx.env.ifname())?;
        }
    }
    // Catches a pair whose container end is unreachable (no CNI_NETNS given).
    nl.delete(nl.host(), host_name)?;
    Ok(())
}
