//! DEL: best effort and idempotent. A missing netns, link, port or reservation
//! is success; every step runs even when an earlier one failed, IPAM DEL always.

use weft_cni::delegate;
use weft_cni::error::{Error, Result};
use weft_cni::skel::Context;
use weft_cni::Command;

use crate::config::Config;
use crate::link::Netlink;
use crate::names;
use crate::ovs::Ovs;
use crate::{fastdel, netns};

pub fn del(ctx: &Context, cfg: &Config) -> Result<()> {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1000.0, "{what}");
    let host_name = names::host_veth(ctx.env.container_id(), ctx.env.ifname());
    // A missing IPAM plugin must not stop us removing the port and the veth;
    // its error is reported after everything else has been tried.
    let pending = delegate::find(&cfg.ipam_type, &ctx.env.path)
        .and_then(|bin| delegate::spawn(&bin, Command::Del, &cfg.raw));

    // The kernel's veth teardown and ovs-vswitchd's port teardown each take
    // ~10 ms and do not depend on each other, so they overlap.
    let (ovs_result, link_result) = std::thread::scope(|s| {
        let links = s.spawn(|| remove_links(ctx, &host_name));
        let ovs = detach_port(cfg, &host_name);
        phase("ovs detached");
        let links = links
            .join()
            .unwrap_or_else(|_| Err(Error::unexpected("link removal thread panicked")));
        (ovs, links)
    });
    phase("links removed");
    let ipam_result = pending.and_then(|p| p.wait()).map(|_| ());
    phase("ipam done");

    let errors: Vec<Error> = [ovs_result, link_result, ipam_result]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    for e in &errors {
        tracing::warn!(error = %e, "DEL step failed");
    }
    match errors.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Without ovsdb-server there is no port to remove now; GC finds it if it comes back.
fn detach_port(cfg: &Config, host_name: &str) -> Result<()> {
    if let Some(mut ovs) = Ovs::connect_if_running(&cfg.ovsdb_socket)? {
        ovs.detach(host_name)?;
    }
    Ok(())
}

fn remove_links(ctx: &Context, host_name: &str) -> Result<()> {
    let nl = Netlink::new()?;
    if let Some(path) = &ctx.env.netns {
        // The namespace may be gone already: then so is the pair.
        if let Ok(ns) = netns::open(path) {
            let cont = nl.enter(&ns, false)?;
            // Deleting either end takes the pair down in one go.
            if nl.delete_unwaited(&cont.handle, &cont.raw, ctx.env.ifname())? {
                return Ok(());
            }
        }
    }
    // Catches a pair whose container end is unreachable (no CNI_NETNS given).
    nl.delete_unwaited(nl.host(), &fastdel::socket()?, host_name)?;
    Ok(())
}
