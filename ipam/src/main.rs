//! `weft-ipam`: the CNI IPAM plugin. See the README for its config keys.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use weft_cni::result::{CniResult, IpConfig};
use weft_cni::skel::{Context, Plugin};
use weft_cni::{Error, Result};
use weft_ipam::alloc::{Allocator, Hints};
use weft_ipam::config::IpamConfig;
use weft_ipam::etcd::EtcdStore;
use weft_ipam::store::Store;

struct WeftIpam;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn setup(ctx: &Context) -> Result<(IpamConfig, EtcdStore)> {
    let raw = &ctx.conf.raw;
    let ipam = raw
        .get("ipam")
        .ok_or_else(|| Error::config("ipam is required"))?;
    let log_file = ipam
        .get("logFile")
        .or(raw.get("logFile"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    let log_level = ipam
        .get("logLevel")
        .or(raw.get("logLevel"))
        .and_then(|v| v.as_str());
    weft_cni::logging::init(log_file.as_deref(), log_level);
    // Under weft, the network's own `etcd` and `node.name` serve IPAM too,
    // so a conflist says where etcd is once.
    let mut ipam = ipam.clone();
    if let Some(obj) = ipam.as_object_mut() {
        if !obj.contains_key("etcd") {
            if let Some(etcd) = raw.get("etcd") {
                obj.insert("etcd".into(), etcd.clone());
            }
        }
        if !obj.contains_key("nodeName") {
            if let Some(name) = raw.get("node").and_then(|n| n.get("name")) {
                obj.insert("nodeName".into(), name.clone());
            }
        }
    }
    let cfg = IpamConfig::parse(&ctx.conf.name, &ipam, &hostname())?;
    let started = std::time::Instant::now();
    let store = EtcdStore::connect(&cfg.etcd)?;
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "connected to etcd"
    );
    Ok((cfg, store))
}

/// The node's last handed-out address per range set and its blocks, in a
/// small file: only where to start, since every reservation is checked by
/// etcd, so losing it or racing on it is harmless.
struct FileHints {
    path: PathBuf,
    map: Saved,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    last: HashMap<usize, IpAddr>,
    blocks: Option<Vec<ipnet::IpNet>>,
}

impl FileHints {
    fn load(cfg: &IpamConfig) -> Self {
        let path = cfg
            .data_dir
            .join(&cfg.network)
            .join(format!("hints-{}.json", cfg.node));
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHints { path, map }
    }

    fn save(&self) {
        // Which addresses a host hands out is nobody else's business.
        let bytes = serde_json::to_vec(&self.map).unwrap_or_default();
        if let Err(e) = weft_cni::files::write_private(&self.path, &bytes) {
            tracing::debug!(error = %e, "cannot save allocation hint");
        }
    }
}

impl Hints for FileHints {
    fn get(&self, set: usize) -> Option<IpAddr> {
        self.map.last.get(&set).copied()
    }
    fn set(&mut self, set: usize, ip: IpAddr) {
        self.map.last.insert(set, ip);
    }
    fn blocks(&self) -> Option<Vec<ipnet::IpNet>> {
        self.map.blocks.clone()
    }
    fn set_blocks(&mut self, blocks: Vec<ipnet::IpNet>) {
        self.map.blocks = Some(blocks);
    }
}

impl Plugin for WeftIpam {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        let (cfg, mut store) = setup(ctx)?;
        let mut requested: Vec<IpAddr> = ctx.conf.requested_ips.clone();
        requested.extend(
            ctx.env
                .args
                .ips
                .iter()
                .filter(|ip| !ctx.conf.requested_ips.contains(ip)),
        );
        let mut hints = FileHints::load(&cfg);
        let started = std::time::Instant::now();
        let got = Allocator::new(&cfg, &mut store).add(
            ctx.env.container_id(),
            ctx.env.ifname(),
            &requested,
            &mut hints,
        );
        // Also after a failure: a cache found stale has been cleaned.
        hints.save();
        let got = got?;
        tracing::debug!(
            round_trips = store.round_trips(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "allocated"
        );
        Ok(CniResult {
            interfaces: Vec::new(),
            ips: got
                .iter()
                .map(|a| IpConfig {
                    address: a.cidr(),
                    gateway: a.range.gateway,
                    interface: None,
                })
                .collect(),
            routes: cfg.routes.clone(),
            dns: cfg.dns.clone(),
        })
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        let (cfg, mut store) = setup(ctx)?;
        Allocator::new(&cfg, &mut store).del(ctx.env.container_id(), ctx.env.ifname())?;
        Ok(())
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        let prev = ctx
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| Error::config("CHECK needs prevResult"))?;
        let (cfg, mut store) = setup(ctx)?;
        let ips: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
        Allocator::new(&cfg, &mut store).check(ctx.env.container_id(), ctx.env.ifname(), &ips)
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        let (cfg, mut store) = setup(ctx).map_err(|e| match e.code {
            weft_cni::error::TRY_AGAIN_LATER => Error::new(weft_cni::error::NOT_AVAILABLE, e.msg),
            _ => e,
        })?;
        Allocator::new(&cfg, &mut store).status()
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        let valid = ctx
            .conf
            .valid_attachments
            .as_ref()
            .ok_or_else(|| Error::config("GC needs cni.dev/valid-attachments"))?;
        let (cfg, mut store) = setup(ctx)?;
        let keep: Vec<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let released = Allocator::new(&cfg, &mut store).gc(&keep)?;
        tracing::info!(released, network = %cfg.network, node = %cfg.node, "GC");
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    weft_cni::skel::main(
        &WeftIpam,
        &weft_cni::about!("CNI IPAM plugin: one address plan for every host, kept in etcd"),
    )
}
