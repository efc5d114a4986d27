//! etcd members run by the harness inside the fabric namespace: one for most
//! tests, three for the failover test.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{self, Resource, Token};
use crate::fabric::FABRIC_IP;
use crate::host::ScratchDir;
use crate::netns::Netns;

pub struct Member {
    pub name: String,
    pub client_url: String,
    client_port: u16,
    args: Vec<String>,
    proc: Option<(Child, Token)>,
}

/// A set of etcd members on the fabric's address, different ports.
pub struct Etcd {
    pub members: Vec<Member>,
    pub dir: ScratchDir,
    netns_name: String,
    netns_path: PathBuf,
    /// (ca, cert, key) for etcdctl when the cluster requires client certificates.
    pub ctl_tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Extra flags for TLS: server cert, key, and the CA clients must chain to.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Etcd {
    /// Starts `n` members in `fabric`'s namespace and waits until they serve.
    pub fn start(fabric: &Netns, n: usize, tls: Option<&ServerTls>) -> Result<Self> {
        let dir = ScratchDir::in_memory("etcd")?;
        // Each fabric is a namespace of its own, so fixed ports never clash.
        let scheme = if tls.is_some() { "https" } else { "http" };
        let peers: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://{FABRIC_IP}:{}", 2380 + 100 * i as u16),
                )
            })
            .collect();
        let initial = peers
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (name, peer)) in peers.iter().enumerate() {
            let client_port = 2379 + 100 * i as u16;
            let client_url = format!("{scheme}://{FABRIC_IP}:{client_port}");
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path.join(name).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--log-level=error".into(),
                // Quick elections, so the failover test does not wait long.
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
            ];
            if let Some(t) = tls {
                args.push(format!("--cert-file={}", t.cert.display()));
                args.push(format!("--key-file={}", t.key.display()));
                args.push(format!("--trusted-ca-file={}", t.ca.display()));
                args.push("--client-cert-auth".into());
            }
            members.push(Member {
                name: name.clone(),
                client_url,
                client_port,
                args,
                proc: None,
            });
        }
        let mut etcd = Etcd {
            members,
            dir,
            netns_name: fabric.name.clone(),
            netns_path: fabric.path.clone(),
            ctl_tls: None,
        };
        for i in 0..n {
            etcd.start_member(fabric, i)?;
        }
        for i in 0..n {
            etcd.wait_serving(i)?;
        }
        Ok(etcd)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn start_member(&mut self, fabric: &Netns, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::File::create(self.dir.path.join(format!("{}.log", m.name)))?;
        let making = cleanup::making();
        let child = fabric
            .command("etcd")?
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (is etcd-server installed?)")?;
        std::fs::write(
            self.dir.path.join(format!("{}.pid", m.name)),
            child.id().to_string(),
        )?;
        let token = cleanup::register(Resource::Process(child.id() as i32));
        drop(making);
        m.proc = Some((child, token));
        Ok(())
    }

    /// Stops member `i` (SIGTERM, then SIGKILL); its data stays for a restart.
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].proc = None;
    }

    /// The index of the member that leads now.
    pub fn leader(&self, fabric: &Netns) -> Result<usize> {
        let out = self.ctl(fabric, &["endpoint", "status", "-w", "json"])?;
        let doc: serde_json::Value = serde_json::from_str(&out)?;
        let list = doc.as_array().context("endpoint status is not a list")?;
        let leader_id = list
            .first()
            .and_then(|m| m["Status"]["leader"].as_u64())
            .context("no leader in endpoint status")?;
        let endpoint = list
            .iter()
            .find(|m| m["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
            .and_then(|m| m["Endpoint"].as_str())
            .context("the leader answered no status")?;
        self.members
            .iter()
            .position(|m| m.client_url == endpoint)
            .context("the leader is not one of ours")
    }

    /// Kills member `i` at once, as a crash would.
    pub fn kill_member(&mut self, i: usize) {
        if let Some((child, _token)) = self.members[i].proc.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Waits until member `i` accepts TCP connections on its client port.
    pub fn wait_serving(&self, i: usize) -> Result<()> {
        let port = self.members[i].client_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        let ns = std::fs::File::open(&self.netns_path)?;
        loop {
            // Probe from inside the fabric namespace, on a thread we own.
            let ok = std::thread::scope(|s| {
                s.spawn(|| {
                    use std::os::fd::AsFd;
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                        && TcpStream::connect((FABRIC_IP, port)).is_ok()
                })
                .join()
                .unwrap_or(false)
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} in {} did not start serving",
                    self.members[i].name,
                    self.netns_name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcdctl` against this cluster, run inside the fabric namespace.
    /// The keys under `prefix`, through etcdctl.
    pub fn keys(&self, fabric: &Netns, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .ctl(fabric, &["get", "--prefix", prefix, "--keys-only"])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    pub fn ctl(&self, fabric: &Netns, args: &[&str]) -> Result<String> {
        let mut cmd = fabric.command("etcdctl")?;
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")));
        if let Some((ca, cert, key)) = &self.ctl_tls {
            cmd.arg(format!("--cacert={}", ca.display()))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        let out = cmd.args(args).output().context("running etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}
