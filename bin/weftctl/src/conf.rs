//! Reading the host's weft conflist: the same file the runtime hands weft,
//! so weftctl talks to the same etcd, OVS and bridge.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use weft_alloc::config::IpamConfig;
use weft_cni::config::NetConf;
use weft_host::config::Config;
use weft_host::overlay::config::Overlay;
use weft_store::etcd::EtcdStore;

#[derive(Clone)]
pub struct Loaded {
    pub weft: Config,
    /// The weft plugin's config as weft itself would get it.
    pub plugin: Value,
}

pub fn cni(e: weft_cni::Error) -> anyhow::Error {
    anyhow!("{} (CNI code {})", e.msg, e.code)
}

pub fn load(path: &Path) -> Result<Loaded> {
    let raw: Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let plugins = raw["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![raw.clone()]);
    let mut plugin = plugins
        .into_iter()
        .find(|p| p["type"] == "weft")
        .with_context(|| format!("no weft plugin in {}", path.display()))?;
    plugin["name"] = raw["name"].clone();
    if plugin.get("cniVersion").is_none() {
        plugin["cniVersion"] = raw["cniVersion"].clone();
    }
    let version = plugin["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let conf = NetConf::parse(plugin.to_string().as_bytes(), version).map_err(cni)?;
    let weft = Config::from_netconf(&conf).map_err(cni)?;
    Ok(Loaded { weft, plugin })
}

impl Loaded {
    pub fn overlay(&self) -> Result<&Overlay> {
        self.weft
            .overlay
            .as_ref()
            .context("this network has no etcd section: it is single-host, with no registry")
    }

    pub fn store(&self) -> Result<EtcdStore> {
        EtcdStore::connect(&self.overlay()?.etcd).map_err(cni)
    }

    /// weft-ipam's config for `network` (the conflist's own when None),
    /// falling back to weft's etcd and node name as weft-ipam does.
    pub fn ipam(&self, network: Option<&str>) -> Result<IpamConfig> {
        let ipam = &self.plugin["ipam"];
        if ipam["type"] != "weft-ipam" {
            bail!("this network's IPAM is {}, not weft-ipam", ipam["type"]);
        }
        let ipam = weft_alloc::config::inherited(ipam, &self.plugin);
        let net = network.unwrap_or(&self.weft.network);
        IpamConfig::parse(net, &ipam, &weft_store::hostname()).map_err(cni)
    }
}
