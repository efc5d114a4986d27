//! `weft`: the CNI plugin binary. See the README for its config keys.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

use weft_cni::result::CniResult;
use weft_cni::skel::{Context, Plugin};
use weft_cni::Result;
use weft_host::config::Config;
use weft_host::{add, check, del, gc, STARTED};

struct Weft;

fn setup(ctx: &Context) -> Result<Config> {
    let cfg = Config::from_netconf(&ctx.conf)?;
    weft_cni::logging::init(cfg.log_file.as_deref(), cfg.log_level.as_deref());
    Ok(cfg)
}

impl Plugin for Weft {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        add::add(ctx, &setup(ctx)?)
    }
    fn del(&self, ctx: &Context) -> Result<()> {
        del::del(ctx, &setup(ctx)?)
    }
    fn check(&self, ctx: &Context) -> Result<()> {
        check::check(ctx, &setup(ctx)?)
    }
    fn status(&self, ctx: &Context) -> Result<()> {
        gc::status(ctx, &setup(ctx)?)
    }
    fn gc(&self, ctx: &Context) -> Result<()> {
        gc::gc(ctx, &setup(ctx)?)
    }
}

fn main() -> std::process::ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    weft_cni::skel::main(
        &Weft,
        &weft_cni::about!(
            "CNI plugin: veth into the container, Open vSwitch bridge, tunnels to peer hosts"
        ),
    )
}
