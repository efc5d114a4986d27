//! A private Open vSwitch per simulated host: its own ovsdb-server and
//! ovs-vswitchd, run dir and socket; ovs-vswitchd lives in the host's netns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{self, Resource, Token};
use crate::netns::Netns;

pub struct Ovs {
    pub dir: PathBuf,
    pub db_sock: PathBuf,
    // Dropped in this order: the switch before its database.
    vswitchd: Option<(Child, Token)>,
    ovsdb: Option<(Child, Token)>,
}

/// Whether the openvswitch module is loaded, the test weft's `"datapath":
/// "auto"` makes: the simulated hosts then run the kernel datapath.
pub fn kernel_datapath() -> bool {
    Path::new("/sys/module/openvswitch").exists()
}

fn ovs_env(cmd: &mut Command, dir: &Path) {
    for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
        cmd.env(var, dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
}

use std::os::unix::process::CommandExt;

fn wait_for(path: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{what} did not create {} in time", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Ovs {
    /// The VLAN tags of network `net`'s container ports.
    pub fn network_tags(&self, net: &str) -> Result<Vec<u32>> {
        Ok(self
            .vsctl(&[
                "--bare",
                "--columns=tag",
                "find",
                "Port",
                &format!("external_ids:weft.network={net}"),
            ])?
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect())
    }

    pub fn start(dir: &Path, host: &Netns) -> Result<Self> {
        let db = dir.join("conf.db");
        let st = Command::new("ovsdb-tool")
            .args([
                "create",
                &db.to_string_lossy(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ])
            .status()
            .context("ovsdb-tool (is openvswitch-switch installed?)")?;
        if !st.success() {
            bail!("ovsdb-tool create failed");
        }
        let db_sock = dir.join("db.sock");
        let mut ovs = Ovs {
            dir: dir.to_path_buf(),
            db_sock,
            vswitchd: None,
            ovsdb: None,
        };
        ovs.start_ovsdb()?;
        ovs.vsctl(&["--no-wait", "init"])?;

        let mut cmd = host.command("ovs-vswitchd")?;
        ovs_env(&mut cmd, dir);
        let d = dir.to_string_lossy();
        cmd.args([
            format!("unix:{}", ovs.db_sock.display()),
            format!("--pidfile={d}/ovs-vswitchd.pid"),
            format!("--unixctl={d}/ovs-vswitchd.ctl"),
            format!("--log-file={d}/ovs-vswitchd.log"),
            "--no-chdir".into(),
        ]);
        let making = cleanup::making();
        let child = cmd.spawn().context("starting ovs-vswitchd")?;
        let token = cleanup::register(Resource::Process(child.id() as i32));
        drop(making);
        ovs.vswitchd = Some((child, token));
        wait_for(&dir.join("ovs-vswitchd.ctl"), "ovs-vswitchd")?;
        Ok(ovs)
    }

    fn start_ovsdb(&mut self) -> Result<()> {
        let d = self.dir.to_string_lossy().to_string();
        let mut cmd = Command::new("ovsdb-server");
        ovs_env(&mut cmd, &self.dir);
        cmd.args([
            format!("{d}/conf.db"),
            format!("--remote=punix:{}", self.db_sock.display()),
            format!("--pidfile={d}/ovsdb-server.pid"),
            format!("--unixctl={d}/ovsdb-server.ctl"),
            format!("--log-file={d}/ovsdb-server.log"),
            "--no-chdir".into(),
        ]);
        let making = cleanup::making();
        let child = cmd.spawn().context("starting ovsdb-server")?;
        let token = cleanup::register(Resource::Process(child.id() as i32));
        drop(making);
        self.ovsdb = Some((child, token));
        wait_for(&self.db_sock, "ovsdb-server")?;
        // The file appears at bind(), a moment before listen(): wait for both.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.db_sock).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "ovsdb-server does not accept connections on {}",
                    self.db_sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops ovsdb-server (and so makes the socket unreachable), for STATUS tests.
    pub fn stop_ovsdb(&mut self) {
        self.ovsdb = None;
        let _ = std::fs::remove_file(&self.db_sock);
    }

    /// Brings ovsdb-server back on the same database.
    pub fn restart_ovsdb(&mut self) -> Result<()> {
        if self.ovsdb.is_none() {
            self.start_ovsdb()?;
        }
        Ok(())
    }

    /// `ovs-vsctl` against this instance: for the harness and tests only,
    /// weft itself speaks OVSDB directly.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.db_sock.display()))
            .args(args)
            .output()
            .context("running ovs-vsctl")?;
        if !out.status.success() {
            bail!(
                "ovs-vsctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// (ovs-vswitchd, ovsdb-server) process ids, for memory figures.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.vswitchd.as_ref().map(|(c, _)| c.id()),
            self.ovsdb.as_ref().map(|(c, _)| c.id()),
        )
    }

    /// `ovs-appctl ARGS` against this instance's ovs-vswitchd.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ovs-appctl")
            .arg(format!(
                "--target={}",
                self.dir.join("ovs-vswitchd.ctl").display()
            ))
            .args(args)
            .output()
            .context("running ovs-appctl")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// What to look at when traffic through this switch fails: its datapath
    /// flows, tunnel neighbours and listeners, and the end of its log.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for cmd in [
            &["dpctl/dump-flows"][..],
            &["tnl/arp/show"],
            &["tnl/ports/show"],
            &["ovs/route/show"],
        ] {
            s += &format!("--- ovs-appctl {}\n", cmd.join(" "));
            s += &self.appctl(cmd).unwrap_or_else(|e| e.to_string());
            s += "\n";
        }
        let log = std::fs::read_to_string(self.dir.join("ovs-vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        s += "--- ovs-vswitchd.log (end)\n";
        s += &lines[lines.len().saturating_sub(20)..].join("\n");
        s
    }

    /// (port name, external_ids) of every port except bridges' own.
    pub fn ports(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let out = self.vsctl(&[
            "--format=json",
            "--columns=name,external_ids",
            "list",
            "Port",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let bridges: Vec<String> = self
            .vsctl(&["list-br"])?
            .lines()
            .map(String::from)
            .collect();
        Ok(v["data"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| Some((r[0].as_str()?.to_string(), r[1].clone())))
                    .filter(|(n, _)| !bridges.contains(n))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // Explicit so the switch stops before the database, whatever the field order.
        self.vswitchd = None;
        self.ovsdb = None;
    }
}
