//! Network namespaces the harness owns: simulated hosts and containers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::cleanup::{self, Resource, Token};

pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    _token: Token,
}

impl Netns {
    /// The link holding IPv4 or IPv6 address `ip`: (name, MAC).
    pub fn link_with_address(&self, ip: &str) -> Result<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["ip", "-j", "addr"])?)?;
        let l = v
            .as_array()
            .and_then(|links| {
                links.iter().find(|l| {
                    l["addr_info"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x["local"] == ip))
                })
            })
            .with_context(|| format!("no link has {ip}"))?;
        let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
        Ok((field("ifname"), field("address")))
    }

    /// A permanent neighbour entry: `ip` is at `mac`, on-link through `dev`.
    pub fn static_neighbour(&self, dev: &str, ip: &str, mac: &str) -> Result<()> {
        self.ok(&["ip", "route", "replace", &format!("{ip}/32"), "dev", dev])?;
        self.ok(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    pub fn new(label: &str) -> Result<Self> {
        let name = cleanup::name(label);
        let making = cleanup::making();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("running ip netns add")?;
        if !st.success() {
            bail!("ip netns add {name} failed");
        }
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            _token: cleanup::register(Resource::Netns(name.clone())),
            name,
        };
        drop(making);
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside this namespace (setns between fork and exec).
    pub fn command(&self, program: &str) -> Result<Command> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls between fork and exec; the fd
        // stays open because the closure owns the File.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let (prog, rest) = argv.split_first().context("empty argv")?;
        self.command(prog)?
            .args(rest)
            .output()
            .with_context(|| format!("running {argv:?} in {}", self.name))
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Link names in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ok(&["ip", "-j", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}
