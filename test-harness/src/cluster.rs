//! Several simulated hosts joined by the fabric, with etcd, as weft's
//! multi-host tests and demo need them.
//!
//! With OVS's userspace datapath (this machine's: no openvswitch module)
//! each host's underlay address sits on an OVS internal port
//! (`br-underlay`, netdev) with the fabric veth as its uplink: userspace
//! tunnels route and resolve neighbours through OVS bridges only, as on a
//! DPDK host. With the kernel datapath (in `weft-harness vm`'s guest) it
//! stays on the fabric veth.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cleanup::{self, Resource, Token};
use crate::etcd::Etcd;
use crate::fabric::Fabric;
use crate::host::Host;
use crate::runtime::{plugin_bin, Attach, Network};

pub const UNDERLAY_BRIDGE: &str = "br-underlay";
/// The host's end of its fabric veth, the underlay bridge's uplink.
pub const UNDERLAY_PORT: &str = crate::fabric::HOST_END;

/// `weftctl agent` running on a host; stopped (SIGTERM, so it gives up its
/// lease) when dropped.
pub struct Agent {
    child: Option<(Child, Token)>,
    log: PathBuf,
}

impl Agent {
    /// What it has logged (shared with earlier agents of its host).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|(c, _)| c.id())
    }

    /// Stops it the way a crash would: no lease revocation.
    pub fn kill(&mut self) {
        if let Some((mut c, _t)) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some((c, _t)) = self.child.take() {
            cleanup::stop_pid(c.id() as i32);
        }
    }
}

/// Writes `net`'s conflist into `host`'s dir, for weftctl.
pub fn write_conf(host: &Host, net: &Network) -> Result<PathBuf> {
    let path = host.dir.path.join(format!("{}.conflist", net.name()));
    std::fs::write(&path, serde_json::to_vec_pretty(&net.conflist)?)?;
    Ok(path)
}

/// Runs `weftctl ARGS --conf <net's conflist>` on `host`.
pub fn weftctl(host: &Host, net: &Network, args: &[&str]) -> Result<std::process::Output> {
    let conf = write_conf(host, net)?;
    host.netns
        .command(&plugin_bin("weftctl")?.to_string_lossy())?
        .args(args)
        .arg("--conf")
        .arg(&conf)
        .output()
        .context("running weftctl")
}

/// Starts `weftctl agent` for `net` on `host`, logging to its dir.
pub fn start_agent(host: &Host, net: &Network, ttl: u32) -> Result<Agent> {
    start_agent_with(host, net, ttl, &[])
}

/// `start_agent` with more arguments (`--orphan-grace 1s`). With `etcd`,
/// returns once the agent has registered and made its first reconcile, so
/// a test's next step never races its start (slow in an emulated guest).
pub fn start_agent_with(host: &Host, net: &Network, ttl: u32, extra: &[&str]) -> Result<Agent> {
    let log = host.dir.path.join("agent.log");
    // The log is shared with earlier agents of this host.
    let starts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("initial reconcile")
            .count()
    };
    let before = starts();
    let mut agent = spawn_agent(host, net, ttl, extra)?;
    if net.conflist["plugins"][0].get("etcd").is_none() {
        return Ok(agent);
    }
    let within = Duration::from_secs(10) * crate::time_scale();
    let t0 = Instant::now();
    loop {
        if starts() > before {
            return Ok(agent);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let exited = agent
            .child
            .as_mut()
            .is_none_or(|(c, _)| c.try_wait().ok().flatten().is_some());
        if exited || t0.elapsed() > within {
            bail!("weftctl agent did not make its first reconcile within {within:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts an agent without waiting for it: one that has to wait for
/// another agent of the same host to stop first.
pub fn spawn_agent(host: &Host, net: &Network, ttl: u32, extra: &[&str]) -> Result<Agent> {
    let conf = write_conf(host, net)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.dir.path.join("agent.log"))?;
    let making = cleanup::making();
    let child = host
        .netns
        .command(&plugin_bin("weftctl")?.to_string_lossy())?
        .args(["agent", "--ttl", &ttl.to_string()])
        .args(extra)
        .arg("--conf")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting weftctl agent")?;
    let token = cleanup::register(Resource::Process(child.id() as i32));
    drop(making);
    // For the start-up sweep, should this run be killed outright.
    let pidfile = host.dir.path.join(format!("agent-{}.pid", child.id()));
    std::fs::write(pidfile, child.id().to_string())?;
    Ok(Agent {
        child: Some((child, token)),
        log: host.dir.path.join("agent.log"),
    })
}

pub struct Cluster {
    pub label: String,
    // Drop order: hosts (their OVS), then etcd, then the fabric.
    pub hosts: Vec<Host>,
    pub underlay_ips: Vec<String>,
    pub etcd: Etcd,
    pub fabric: Fabric,
}

impl Cluster {
    pub fn new(label: &str, hosts: usize) -> Result<Self> {
        Self::with_underlay_mtu(label, hosts, 1500)
    }

    /// A cluster whose underlay links have `mtu`.
    pub fn with_underlay_mtu(label: &str, hosts: usize, mtu: u32) -> Result<Self> {
        Self::build(label, hosts, mtu, 1)
    }

    /// A cluster whose etcd has `members` members (3 where failover matters).
    pub fn with_etcd_members(label: &str, hosts: usize, members: usize) -> Result<Self> {
        Self::build(label, hosts, 1500, members)
    }

    fn build(label: &str, hosts: usize, mtu: u32, members: usize) -> Result<Self> {
        let fabric = Fabric::with_mtu(label, mtu)?;
        let etcd = Etcd::start(&fabric.netns, members, None)?;
        let mut c = Cluster {
            label: label.to_string(),
            hosts: Vec::new(),
            underlay_ips: Vec::new(),
            etcd,
            fabric,
        };
        for _ in 0..hosts {
            c.add_host()?;
        }
        Ok(c)
    }

    /// A new host on the fabric; returns its index.
    pub fn add_host(&mut self) -> Result<usize> {
        let i = self.hosts.len();
        let host = Host::new(&format!("{}-h{i}", self.label))?;
        let ip = self.fabric.attach(&host.netns)?;
        if crate::ovs::kernel_datapath() {
            // The kernel routes and resolves the tunnels' packets itself:
            // the address stays on the fabric veth, as on any host with a
            // plain NIC.
            self.hosts.push(host);
            self.underlay_ips.push(ip);
            return Ok(i);
        }
        // Move the address from the veth onto an OVS internal port.
        host.ovs.vsctl(&[
            "add-br",
            UNDERLAY_BRIDGE,
            "--",
            "set",
            "bridge",
            UNDERLAY_BRIDGE,
            "datapath_type=netdev",
            "--",
            "add-port",
            UNDERLAY_BRIDGE,
            UNDERLAY_PORT,
            "--",
            "set",
            "interface",
            UNDERLAY_BRIDGE,
            // Asked for, not left to OVS, which sizes an internal port to
            // its bridge's other ports only at some later reconfiguration.
            &format!("mtu_request={}", self.fabric.mtu()),
        ])?;
        host.netns
            .ok(&["ip", "addr", "flush", "dev", UNDERLAY_PORT])?;
        host.netns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        host.netns
            .ok(&["ip", "link", "set", UNDERLAY_BRIDGE, "up"])?;
        // The userspace datapath passes the kernel's TCP segments on with
        // checksums still to fill in; the host's own traffic (etcd) needs
        // them filled, as on any netdev host.
        host.netns
            .ok(&["ethtool", "-K", UNDERLAY_BRIDGE, "tx", "off"])?;
        self.hosts.push(host);
        self.underlay_ips.push(ip);
        Ok(i)
    }

    /// Takes the newest host off the fabric and tears it down (its OVS, its
    /// namespace and with it its end of the fabric veth).
    pub fn remove_last_host(&mut self) {
        self.underlay_ips.pop();
        self.hosts.pop();
    }

    /// The conflist every host uses for network `name`. Only the OVS socket
    /// and the data dir differ, because simulated hosts share one filesystem,
    /// and the node name, because they share one hostname.
    pub fn network(&self, host: usize, name: &str, subnet: &str, extra: Value) -> Network {
        let h = &self.hosts[host];
        let mut weft = json!({
            "type": "weft", "ovsdbSocket": h.db_sock(), "logLevel": "info",
            "logFile": h.dir.path.join("weft.log"),
            "etcd": {"endpoints": self.etcd.endpoints(), "timeoutMs": 3000 * crate::time_scale()},
            "node": {"name": h.label},
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": h.ipam_dir()}
        });
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                weft[k] = v.clone();
            }
        }
        Network {
            conflist: json!({"cniVersion": "1.0.0", "name": name, "plugins": [weft]}),
            version: "1.0.0".into(),
        }
    }

    /// Writes `net`'s conflist into the host's dir, for weftctl.
    pub fn write_conf(&self, host: usize, net: &Network) -> Result<PathBuf> {
        write_conf(&self.hosts[host], net)
    }

    /// Runs `weftctl ARGS --conf <net's conflist>` on `host`.
    pub fn weftctl(
        &self,
        host: usize,
        net: &Network,
        args: &[&str],
    ) -> Result<std::process::Output> {
        weftctl(&self.hosts[host], net, args)
    }

    pub fn start_agent(&self, host: usize, net: &Network, ttl: u32) -> Result<Agent> {
        start_agent(&self.hosts[host], net, ttl)
    }

    /// Everything worth reading when traffic across the cluster fails: the
    /// fabric's neighbours and forwarding table, then each host's switch.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for cmd in [
            &["ip", "neigh"][..],
            &["bridge", "fdb", "show", "br", "fab0"],
            &["ip", "-s", "link"],
        ] {
            s += &format!("--- fabric: {}\n", cmd.join(" "));
            match self.fabric.netns.exec(cmd) {
                Ok(o) => s += &String::from_utf8_lossy(&o.stdout),
                Err(e) => s += &e.to_string(),
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            s += &format!("=== h{i} ({})\n", self.underlay_ips[i]);
            if let Ok(o) = h.netns.exec(&["ip", "neigh"]) {
                s += &format!("--- ip neigh\n{}", String::from_utf8_lossy(&o.stdout));
            }
            s += &h.ovs.diagnose();
            s += "\n";
        }
        s
    }

    /// Tunnel ports on `host`, by name.
    pub fn tunnels(&self, host: usize) -> Result<Vec<String>> {
        Ok(self.hosts[host]
            .ovs
            .ports()?
            .into_iter()
            .filter(|(name, _)| name.starts_with("wtn"))
            .map(|(name, _)| name)
            .collect())
    }

    /// Waits until `host` has `n` tunnel ports.
    pub fn wait_tunnels(&self, host: usize, n: usize, within: Duration) -> Result<Duration> {
        let within = within * crate::time_scale();
        let start = Instant::now();
        loop {
            let have = self.tunnels(host)?.len();
            if have == n {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("host {host} has {have} tunnels, not {n}, after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A container attached to a network on a host, as the matrix needs it.
pub struct Placed {
    pub host: usize,
    pub net: String,
    pub ip: String,
    pub c: crate::host::Container,
    /// The conflist it was added with and the ADD result, for DEL.
    pub conf: Network,
    pub result: Value,
    /// ADD as the runtime saw it: fork to exit of the plugins.
    pub add_time: Duration,
}

impl Placed {
    pub fn label(&self) -> String {
        format!("h{}/{}", self.host, self.net)
    }
}

impl Cluster {
    /// Starts a container on `host` and ADDs it to `net` as a runtime would.
    /// With `onlink`, the container also gets an on-link route for all of
    /// 10/8, so a frame that leaked between networks would be answered:
    /// isolation is then L2's doing alone. A refused ADD is an error that
    /// carries weft's log and the cluster's state.
    pub fn place(
        &self,
        host: usize,
        net: &str,
        subnet: &str,
        extra: &Value,
        onlink: bool,
    ) -> Result<Placed> {
        self.place_with(host, net, subnet, extra, onlink, &Attach::default())
    }

    /// [`Cluster::place`] with CNI_ARGS or runtime config.
    pub fn place_with(
        &self,
        host: usize,
        net: &str,
        subnet: &str,
        extra: &Value,
        onlink: bool,
        attach: &Attach,
    ) -> Result<Placed> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let conf = self.network(host, net, subnet, extra.clone());
        let k = N.fetch_add(1, Ordering::Relaxed);
        let c = crate::host::Container::new(&format!("c{host}{net}{k}"))?;
        let (added, add_time) = conf.add_timed(&self.hosts[host], &c, "eth0", attach)?;
        let result = match added {
            Ok(r) => r,
            Err(o) => {
                let log = std::fs::read_to_string(self.hosts[host].dir.path.join("weft.log"))
                    .unwrap_or_default();
                let log: Vec<&str> = log.lines().collect();
                bail!(
                    "ADD {net} on h{host}: {} {}\nweft.log (end):\n{}\nping fabric: {}\n{}",
                    o.stdout,
                    o.stderr,
                    log[log.len().saturating_sub(8)..].join("\n"),
                    self.hosts[host].netns.ping(crate::fabric::FABRIC_IP),
                    self.diagnose()
                )
            }
        };
        let ip = crate::runtime::first_address(&result).context("ADD result has no address")?;
        if onlink {
            c.netns
                .ok(&["ip", "route", "add", "10.0.0.0/8", "dev", "eth0"])?;
        }
        Ok(Placed {
            host,
            net: net.into(),
            ip,
            c,
            conf,
            result,
            add_time,
        })
    }

    /// DELs a placed container as a runtime would.
    pub fn remove(&self, p: &Placed) -> Result<()> {
        let out = p.conf.del(
            &self.hosts[p.host],
            &p.c.id,
            Some(p.c.path()),
            "eth0",
            Some(&p.result),
        )?;
        if !out.success {
            bail!("DEL {} on h{}: {}", p.net, p.host, out.stdout.trim());
        }
        Ok(())
    }
}

/// Who reaches whom: `[i][j]` is whether `placed[i]` gets an answer from
/// `placed[j]`'s address. All pings run at once, each given 3 s.
pub fn reach_matrix(placed: &[Placed]) -> Result<Vec<Vec<bool>>> {
    let mut running = Vec::new();
    for (i, a) in placed.iter().enumerate() {
        for (j, b) in placed.iter().enumerate() {
            if i == j {
                continue;
            }
            let child =
                a.c.netns
                    .command("ping")?
                    .args(["-c", "1", "-w", "3", "-i", "0.2", &b.ip])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
            running.push((i, j, child));
        }
    }
    let mut m = vec![vec![true; placed.len()]; placed.len()];
    for (i, j, mut child) in running {
        m[i][j] = child.wait()?.success();
    }
    Ok(m)
}

/// The matrix as text: a row per source, a column per destination.
pub fn render_matrix(placed: &[Placed], m: &[Vec<bool>]) -> String {
    let labels: Vec<String> = placed.iter().map(Placed::label).collect();
    let w = labels.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut s = format!("{:w$}", "from\\to");
    for l in &labels {
        s += &format!(" {l:>w$}");
    }
    s += "\n";
    for (i, l) in labels.iter().enumerate() {
        s += &format!("{l:w$}");
        for (j, ok) in m[i].iter().enumerate() {
            let cell = if i == j {
                "-"
            } else if *ok {
                "yes"
            } else {
                "no"
            };
            s += &format!(" {cell:>w$}");
        }
        s += "\n";
    }
    s
}
