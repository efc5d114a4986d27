//! A simulated host (netns + private OVS + scratch dir) and containers on it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cleanup::{self, Resource, Token};
use crate::netns::Netns;
use crate::ovs::Ovs;

/// A directory under the system temp dir, removed on every exit path.
pub struct ScratchDir {
    pub path: PathBuf,
    _token: Token,
}

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// In memory (/dev/shm) where there is one: for etcd, whose fsyncs on a
    /// busy VM disk stall for seconds and turn tests into disk benchmarks.
    pub fn in_memory(label: &str) -> Result<Self> {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            Self::new_in(shm, label)
        } else {
            Self::new(label)
        }
    }

    fn new_in(base: &Path, label: &str) -> Result<Self> {
        let _making = cleanup::making();
        let path = tempfile::Builder::new()
            .prefix(&format!("weft-harness-{}-{label}-", std::process::id()))
            .tempdir_in(base)
            .context("creating scratch dir")?
            .keep();
        Ok(ScratchDir {
            _token: cleanup::register(Resource::Dir(path.clone())),
            path,
        })
    }
}

pub struct Host {
    pub label: String,
    // Drop order matters: OVS processes, then the namespace, then the files.
    pub ovs: Ovs,
    pub netns: Netns,
    pub dir: ScratchDir,
}

impl Host {
    pub fn new(label: &str) -> Result<Self> {
        let dir = ScratchDir::new(label)?;
        let netns = Netns::new(label)?;
        let ovs = Ovs::start(&dir.path, &netns)?;
        Ok(Host {
            label: label.to_string(),
            ovs,
            netns,
            dir,
        })
    }

    pub fn db_sock(&self) -> &Path {
        &self.ovs.db_sock
    }

    /// Where host-local keeps this host's reservations (one dir per host, so
    /// simulated hosts do not share /var/lib/cni).
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path.join("ipam")
    }

    /// Addresses host-local holds for `network` on this host.
    pub fn ipam_reservations(&self, network: &str) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(network))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The veths weft made on this host (host ends are named wft + hash).
    pub fn weft_links(&self) -> Result<Vec<String>> {
        Ok(self
            .netns
            .links()?
            .into_iter()
            .filter(|l| l.starts_with("wft"))
            .collect())
    }
}

pub struct Container {
    pub id: String,
    pub netns: Netns,
}

impl Container {
    pub fn new(label: &str) -> Result<Self> {
        let netns = Netns::new(label)?;
        let id = format!("{}-{:08x}", label, rand_u32());
        Ok(Container { id, netns })
    }

    pub fn path(&self) -> &Path {
        &self.netns.path
    }

    /// IPv4 address of `ifname`, if it has one.
    pub fn ipv4(&self, ifname: &str) -> Option<String> {
        let out = self
            .netns
            .ok(&["ip", "-j", "-4", "addr", "show", "dev", ifname])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v[0]["addr_info"][0]["local"].as_str().map(String::from)
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u32::from_le_bytes(b)
}
