//! `weft-ipam`: the CNI IPAM plugin. See the README for its config keys.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use weft_alloc::alloc::Allocator;
use weft_alloc::config::IpamConfig;
use weft_alloc::hints::Hints;
use weft_cni::result::{CniResult, IpConfig};
use weft_cni::skel::{Context, Plugin};
use weft_cni::turns::Turn;
use weft_cni::{Error, Result};
use weft_store::etcd::EtcdStore;
use weft_store::{Epoch, Store};

struct WeftIpam;

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
    let ipam = weft_alloc::config::inherited(ipam, raw);
    let cfg = IpamConfig::parse(&ctx.conf.name, &ipam, &weft_store::hostname())?;
    let started = std::time::Instant::now();
    let store = EtcdStore::connect(&cfg.etcd)?;
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "connected to etcd"
    );
    Ok((cfg, store))
}

fn turn_path(cfg: &IpamConfig, ctx: &Context) -> PathBuf {
    weft_cni::turns::path(
        &cfg.data_dir,
        &cfg.network,
        ctx.env.container_id(),
        ctx.env.ifname(),
    )
}

/// Waiting for the attachment's turn spends the etcd budget: the store's
/// deadline started when it connected.
fn turn_budget(cfg: &IpamConfig) -> std::time::Duration {
    std::time::Duration::from_millis(cfg.etcd.timeout_ms)
}

/// The node's last handed-out address per range set and its blocks, in a
/// small file: only where to start, since every reservation is checked by
/// etcd. Several weft-ipam processes of one node share it: each saves what
/// it learnt (blocks gained, blocks proven lost) onto what is there now,
/// under a lock, so one never drops a block another just claimed.
struct FileHints {
    path: PathBuf,
    map: Saved,
    loaded: Vec<IpNet>,
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Saved {
    last: HashMap<usize, IpAddr>,
    blocks: Option<Vec<IpNet>>,
    /// The etcd the blocks were confirmed in; absent in files written
    /// before epochs were kept, which are then trusted no further than
    /// each commit proves.
    #[serde(default)]
    epoch: Option<Epoch>,
}

impl Saved {
    fn read(path: &std::path::Path) -> Saved {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

impl FileHints {
    fn load(cfg: &IpamConfig) -> Self {
        FileHints::at(
            cfg.data_dir
                .join(&cfg.network)
                .join(format!("hints-{}.json", cfg.node)),
        )
    }

    fn at(path: PathBuf) -> Self {
        let map = Saved::read(&path);
        let loaded = map.blocks.clone().unwrap_or_default();
        FileHints { path, map, loaded }
    }

    fn save(&self) {
        let Some(mine) = &self.map.blocks else {
            return;
        };
        let lock_path = self.path.with_extension("lock");
        let _lock = match weft_cni::files::lock(&lock_path) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot lock the allocation hints");
                return;
            }
        };
        let now = Saved::read(&self.path);
        let dropped: Vec<&IpNet> = self.loaded.iter().filter(|b| !mine.contains(b)).collect();
        let mut blocks: Vec<IpNet> = now.blocks.clone().unwrap_or_default();
        blocks.extend(mine.iter().filter(|b| !self.loaded.contains(b)));
        blocks.retain(|b| !dropped.contains(&b));
        let mut seen = std::collections::HashSet::new();
        blocks.retain(|b| seen.insert(*b));
        // The later of the two epochs: a sibling may have heard from etcd
        // after us.
        let epoch = match (now.epoch, self.map.epoch) {
            (Some(theirs), Some(ours)) if theirs.follows(&ours) => Some(theirs),
            (theirs, ours) => ours.or(theirs),
        };
        let merged = Saved {
            last: self.map.last.clone(),
            blocks: Some(blocks),
            epoch,
        };
        // Which addresses a host hands out is nobody else's business.
        let bytes = serde_json::to_vec(&merged).unwrap_or_default();
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
    fn blocks(&self) -> Option<Vec<IpNet>> {
        self.map.blocks.clone()
    }
    fn set_blocks(&mut self, blocks: Vec<IpNet>) {
        self.map.blocks = Some(blocks);
    }
    fn epoch(&self) -> Option<Epoch> {
        self.map.epoch
    }
    fn set_epoch(&mut self, epoch: Epoch) {
        self.map.epoch = Some(epoch);
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
        // Held to the end, so a DEL of this attachment waits for us.
        let _turn = Turn::for_add(&turn_path(&cfg, ctx), turn_budget(&cfg))?;
        let mut hints = FileHints::load(&cfg);
        let started = std::time::Instant::now();
        let mut alloc = Allocator::new(&cfg, &mut store);
        alloc.netns = ctx.env.netns.as_ref().map(|p| p.display().to_string());
        alloc.wait_ready =
            weft_cni::files::held_elsewhere(&weft_alloc::keys::agent_lock(&cfg.data_dir));
        let got = alloc.add(
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
        let _turn = Turn::for_del(&turn_path(&cfg, ctx), turn_budget(&cfg))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_processes_never_drop_each_others_blocks() {
        let dir = std::env::temp_dir().join(format!("weft-hints-{}", std::process::id()));
        let path = dir.join("net/hints-a.json");
        let b = |s: &str| s.parse::<IpNet>().unwrap();
        let mut first = FileHints::at(path.clone());
        first.set_blocks(vec![b("10.0.0.0/26")]);
        first.save();
        // Two processes load the same file; one claims a block, the other
        // learns that the first block is gone and claims another.
        let mut one = FileHints::at(path.clone());
        let mut two = FileHints::at(path.clone());
        one.set_blocks(vec![b("10.0.0.0/26"), b("10.0.0.64/26")]);
        two.set_blocks(vec![b("10.0.0.128/26")]);
        one.set_epoch(Epoch {
            cluster: 7,
            revision: 20,
        });
        two.set_epoch(Epoch {
            cluster: 7,
            revision: 10,
        });
        one.save();
        two.save();
        let saved = Saved::read(&path);
        assert_eq!(
            saved.blocks.unwrap(),
            vec![b("10.0.0.64/26"), b("10.0.0.128/26")],
            "the gone block dropped, both new ones kept"
        );
        assert_eq!(saved.epoch.unwrap().revision, 20, "the later epoch wins");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
