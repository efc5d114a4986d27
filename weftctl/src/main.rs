//! `weftctl`: weft's admin CLI. So far `ips`: a network's blocks and
//! allocations as etcd holds them.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use weft_ipam::alloc::Allocator;
use weft_ipam::config::IpamConfig;
use weft_ipam::etcd::EtcdStore;

#[derive(Parser)]
#[command(about = "weft's admin CLI")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lists a network's blocks and allocations: address, node, container, ifname.
    Ips {
        /// The network's conflist (its weft-ipam section says where etcd is).
        #[arg(long, default_value = "/etc/cni/net.d/10-weft.conflist")]
        conf: PathBuf,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// The network name and the weft-ipam config of a conflist (or single config).
fn ipam_section(conf: &Value) -> Result<(String, Value)> {
    let name = conf["name"]
        .as_str()
        .context("config has no name")?
        .to_string();
    let plugins = conf["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![conf.clone()]);
    let ipam = plugins
        .iter()
        .map(|p| &p["ipam"])
        .find(|i| i["type"] == "weft-ipam")
        .cloned()
        .context("no plugin in this config uses weft-ipam")?;
    Ok((name, ipam))
}

fn ips(conf: &PathBuf, as_json: bool) -> Result<()> {
    let raw: Value = serde_json::from_slice(
        &std::fs::read(conf).with_context(|| format!("reading {}", conf.display()))?,
    )?;
    let (network, ipam) = ipam_section(&raw)?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cfg = IpamConfig::parse(&network, &ipam, hostname.trim())
        .map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    let mut store = EtcdStore::connect(&cfg.etcd).map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    let mut alloc = Allocator::new(&cfg, &mut store);
    let mut blocks = alloc.blocks().map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    let mut held = alloc.list().map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    blocks.sort();
    held.sort_by_key(|(ip, _)| *ip);
    if as_json {
        let doc = json!({
            "network": network,
            "blocks": blocks.iter().map(|(b, n)| json!({"block": b, "node": n})).collect::<Vec<_>>(),
            "allocations": held.iter().map(|(ip, h)| json!({"address": ip, "node": h.node, "containerID": h.container_id, "ifname": h.ifname})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "network {network}: {} blocks, {} addresses in use\n",
        blocks.len(),
        held.len()
    );
    println!("{:<28} NODE", "BLOCK");
    for (b, n) in &blocks {
        println!("{:<28} {n}", b.to_string());
    }
    println!(
        "\n{:<28} {:<16} {:<40} IFNAME",
        "ADDRESS", "NODE", "CONTAINER"
    );
    for (ip, h) in &held {
        println!(
            "{:<28} {:<16} {:<40} {}",
            ip.to_string(),
            h.node,
            h.container_id,
            h.ifname
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ips { conf, json } => ips(&conf, json),
    }
    .or_else(|e| bail!("weftctl: {e:#}"))
}
