#![allow(clippy::print_stdout)]
//! Multi-host benchmarks, each printed beside its reference from the same
//! run: TCP across hosts through the overlay against host to host over the
//! same underlay; how soon a peer reaches a new host's container; and a
//! 12-host cluster's size, setup time and OVS memory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{ms, reference_plugin, stats};
use weft_harness::cluster::{Agent, Cluster, Placed, UNDERLAY_PORT};
use weft_harness::host::Container;
use weft_harness::netns::Netns;
use weft_harness::runtime::{Attach, Network};

const NET: (&str, &str) = ("blue", "10.250.0.0/16");

pub struct Options {
    /// iperf3 seconds per measurement, and how many alternating rounds.
    pub seconds: u32,
    pub rounds: usize,
    pub joins: usize,
    pub hosts: usize,
    pub per_host: usize,
    /// Only the cross-host TCP figure.
    pub throughput_only: bool,
}

pub fn run(o: &Options) -> Result<()> {
    weft_harness::require_root();
    throughput(o.seconds, o.rounds)?;
    if o.throughput_only {
        return Ok(());
    }
    convergence(o.joins)?;
    scale(o.hosts, o.per_host)
}

fn conf(c: &Cluster, host: usize) -> Network {
    c.network(host, NET.0, NET.1, json!({}))
}

/// Agents (lease `ttl` s) on h0 and h1, a container on each, and the
/// tunnel between them up.
fn two_hosts(c: &Cluster, ttl: u32) -> Result<([Agent; 2], Placed, Placed)> {
    let agents = [
        c.start_agent(0, &conf(c, 0), ttl)?,
        c.start_agent(1, &conf(c, 1), ttl)?,
    ];
    let a = c.place(0, NET.0, NET.1, &json!({}), false)?;
    let b = c.place(1, NET.0, NET.1, &json!({}), false)?;
    c.wait_tunnels(0, 1, Duration::from_secs(5))?;
    Ok((agents, a, b))
}

/// One iperf3 run from `client` to a server on `server` at `ip`; bits/s.
fn iperf(server: &Netns, client: &Netns, ip: &str, seconds: u32) -> Result<f64> {
    let mut s = server
        .command("iperf3")?
        .args(["-s", "-1", "-B", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec(&[
        "timeout",
        &(seconds + 20).to_string(),
        "iperf3",
        "-c",
        ip,
        "-t",
        &seconds.to_string(),
        "-O",
        "1",
        "-J",
    ]);
    let _ = s.kill();
    let _ = s.wait();
    let out = out?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    match v["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(bps) if out.status.success() => Ok(bps),
        _ => bail!(
            "iperf3 to {ip} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Container to container across two hosts (VXLAN, default MTU) against
/// host to host between the same two hosts' underlay addresses, in
/// alternating rounds so machine noise hits both alike; over a standard and
/// a jumbo-frame underlay.
fn throughput(seconds: u32, rounds: usize) -> Result<()> {
    eprintln!(
        "bench: TCP across hosts, {rounds} rounds of {seconds} s each side, per underlay MTU"
    );
    println!("| TCP, one stream, h0 -> h1 | underlay MTU | container MTU | median Mbit/s | every round | ratio |");
    println!("|---|---|---|---|---|---|");
    for underlay_mtu in [1500, 9000] {
        throughput_over(underlay_mtu, seconds, rounds)?;
    }
    let datapath = if weft_harness::ovs::kernel_datapath() {
        "kernel datapath (system). In weft-harness vm's guest under TCG the CPU is emulated: \
         compare the ratios only, never the Mbit/s"
    } else {
        "userspace datapath (netdev)"
    };
    println!("\niperf3 -t {seconds} -O 1 (first second omitted), rounds alternate; both paths cross both hosts' OVS {datapath}.\n");
    Ok(())
}

fn throughput_over(underlay_mtu: u32, seconds: u32, rounds: usize) -> Result<()> {
    let c = Cluster::with_underlay_mtu("btput", 2, underlay_mtu)?;
    let (_agents, a, b) = two_hosts(&c, 5)?;
    if !a.c.netns.ping(&b.ip) || !c.hosts[0].netns.ping(&c.underlay_ips[1]) {
        bail!("no path between the hosts before measuring");
    }
    // Not /sys: a namespace made with `ip netns` shows the creator's sysfs.
    let link: Value = serde_json::from_str(&a.c.netns.ok(&["ip", "-j", "link", "show", "eth0"])?)?;
    let mtu = link[0]["mtu"].to_string();
    let (mut overlay, mut underlay) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        overlay.push(iperf(&b.c.netns, &a.c.netns, &b.ip, seconds)?);
        underlay.push(iperf(
            &c.hosts[1].netns,
            &c.hosts[0].netns,
            &c.underlay_ips[1],
            seconds,
        )?);
    }
    let (o, u) = (median(overlay.clone()), median(underlay.clone()));
    let all = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| container to container (weft, VXLAN) | {underlay_mtu} | {mtu} | {:.0} | {} | {:.2}x |",
        o / 1e6,
        all(&overlay),
        o / u
    );
    println!(
        "| host to host, same underlay (reference) | {underlay_mtu} | - | {:.0} | {} | 1.00x |",
        u / 1e6,
        all(&underlay)
    );
    Ok(())
}

/// Waits until `host`'s registry entry is there (the agent has registered).
fn wait_registered(c: &Cluster, host: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = c.weftctl(host, &conf(c, host), &["nodes", "--json"])?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let me = &c.hosts[host].label;
        if v.as_array()
            .is_some_and(|a| a.iter().any(|n| n["name"] == me.as_str()))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("h{host}'s agent did not register");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `from` gets an answer from `p` within 5 s, pinging every 10 ms;
/// it returns at the first answer, so callers time it.
fn reached(from: &Placed, p: &Placed) -> Result<bool> {
    Ok(from
        .c
        .netns
        .command("ping")?
        .args(["-n", "-q", "-c", "1", "-w", "5", "-i", "0.01", &p.ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

/// A host joins `joins` times (each a fresh host with its own OVS, so no
/// neighbour or flow state is left from the previous one): its agent
/// registers, then a container starts there; measured from the start of that
/// ADD, which is when the host enters the network, to the moment a
/// container on an existing host first gets an answer from the new one.
/// The reference beside it is the same ping between two containers that
/// were already up.
fn convergence(joins: usize) -> Result<()> {
    let mut c = Cluster::new("bjoin", 2)?;
    let (_agents, p0, p1) = two_hosts(&c, 2)?;
    eprintln!("bench: join convergence, {joins} hosts joining one after another");
    let (mut added, mut reach, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for _ in 0..joins {
        let h = c.add_host()?;
        let agent = c.start_agent(h, &conf(&c, h), 2)?;
        wait_registered(&c, h)?;
        let p = c.place(h, NET.0, NET.1, &json!({}), false)?;
        // Counted from the start of the ADD (not of making the container).
        let returned = Instant::now();
        added.push(p.add_time);
        if reached(&p0, &p)? {
            reach.push(p.add_time + returned.elapsed());
        } else {
            failed += 1;
        }
        // The reference: two containers that already know each other.
        let t = Instant::now();
        if reached(&p0, &p1)? {
            base.push(t.elapsed());
        }
        c.remove(&p)?;
        drop(p);
        drop(agent);
        let out = c.weftctl(h, &conf(&c, h), &["cleanup", "--json"])?;
        if !out.status.success() {
            bail!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
        c.remove_last_host();
        c.wait_tunnels(0, 1, Duration::from_secs(5))?;
    }
    if reach.is_empty() {
        bail!("no join converged");
    }
    let row = |what: &str, v: &mut Vec<Duration>| {
        let s = stats(v);
        println!(
            "| {what} | {} | {} | {} | {} |",
            ms(s.median),
            ms(s.p95),
            ms(s.p99),
            ms(s.max)
        );
    };
    println!("| join convergence, {joins} joins | median | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    row("new host's ADD returned", &mut added);
    row("peer's container reaches the new container", &mut reach);
    row(
        "reference: the same ping between containers already up",
        &mut base,
    );
    println!(
        "\nFrom the start of the new host's first ADD (agents on every host, lease 2 s); \
         pings every 10 ms from when the ADD returns. Joins that never converged within 5 s: {failed}.\n"
    );
    Ok(())
}

fn rss_kib(pid: Option<u32>) -> u64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (ovs-vswitchd, ovsdb-server) RSS in MiB, averaged over the hosts.
fn ovs_rss(c: &Cluster) -> (f64, f64) {
    let n = c.hosts.len() as f64;
    let (v, d) = c.hosts.iter().fold((0, 0), |(v, d), h| {
        let (pv, pd) = h.ovs.pids();
        (v + rss_kib(pv), d + rss_kib(pd))
    });
    (v as f64 / n / 1024.0, d as f64 / n / 1024.0)
}

/// `hosts` hosts with `per_host` containers each on one network, agents on
/// every host; beside weft's ADD, the reference bridge + host-local ADD on
/// the same hosts in the same rounds.
fn scale(hosts: usize, per_host: usize) -> Result<()> {
    eprintln!("bench: scale, {hosts} hosts x {per_host} containers");
    let t = Instant::now();
    let c = Cluster::new("bscale", hosts)?;
    let hosts_up = t.elapsed();
    let idle = ovs_rss(&c);
    let agents = (0..hosts)
        .map(|h| c.start_agent(h, &conf(&c, h), 5))
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let mut placed = Vec::new();
    let (mut adds, mut ref_adds) = (Vec::new(), Vec::new());
    let probe = Container::new("bscale-ref")?;
    for _round in 0..per_host {
        for h in 0..hosts {
            let p = c.place(h, NET.0, NET.1, &json!({}), false)?;
            adds.push(p.add_time);
            placed.push(p);
        }
        // One reference ADD (and DEL) per round, on a host taking turns.
        let h = placed.len() / hosts % hosts;
        let mut plugin = reference_plugin(&c.hosts[h], "10.91.0.0/16");
        plugin.as_object_mut().map(|m| m.remove("logLevel"));
        let net =
            Network::new(json!({"cniVersion": "1.0.0", "name": "bref", "plugins": [plugin]}))?;
        let (r, took) = net.add_timed(&c.hosts[h], &probe, "eth0", &Attach::default())?;
        let r = r.map_err(|o| anyhow::anyhow!("reference ADD: {}", o.stdout))?;
        ref_adds.push(took);
        net.del(&c.hosts[h], &probe.id, Some(probe.path()), "eth0", Some(&r))?;
    }
    let all_added = t.elapsed();
    for h in 0..hosts {
        c.wait_tunnels(h, hosts - 1, Duration::from_secs(10))?;
    }
    let meshed = t.elapsed();
    // One container per host, reached from h0's first.
    let mut unreached = Vec::new();
    for p in placed.iter().skip(1).take(hosts - 1) {
        if !reached(&placed[0], p)? {
            unreached.push(p.label());
        }
    }
    let loaded = ovs_rss(&c);
    let agent_rss =
        agents.iter().map(|a| rss_kib(a.pid())).sum::<u64>() as f64 / hosts as f64 / 1024.0;
    let (mut tunnels, mut ports) = (Vec::new(), Vec::new());
    for h in 0..hosts {
        tunnels.push(c.tunnels(h)?.len());
        ports.push(
            c.hosts[h]
                .ovs
                .ports()?
                .iter()
                .filter(|(n, _)| n != UNDERLAY_PORT)
                .count(),
        );
    }
    let range = |v: &[usize]| {
        let (lo, hi) = (v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    let (a, r) = (stats(&mut adds), stats(&mut ref_adds));
    println!("| scale: {hosts} hosts x {per_host} containers, one network | value |");
    println!("|---|---|");
    println!(
        "| tunnel ports per host | {} (expected {}) |",
        range(&tunnels),
        hosts - 1
    );
    println!(
        "| weft's OVS ports per host (containers + tunnels) | {} |",
        range(&ports)
    );
    println!(
        "| start {hosts} hosts (netns, ovsdb-server, ovs-vswitchd, underlay) | {:.1} s |",
        hosts_up.as_secs_f64()
    );
    println!(
        "| {} ADDs, one after another | {:.1} s |",
        adds.len(),
        all_added.as_secs_f64()
    );
    println!(
        "| until every host has every tunnel | {:.1} s |",
        meshed.as_secs_f64()
    );
    println!(
        "| ADD median / p95 (weft + weft-ipam, overlay) | {} / {} ({:.2}x the reference median) |",
        ms(a.median),
        ms(a.p95),
        a.median.as_secs_f64() / r.median.as_secs_f64()
    );
    println!(
        "| ADD median / p95, reference bridge + host-local, same hosts, {} runs | {} / {} |",
        ref_adds.len(),
        ms(r.median),
        ms(r.p95)
    );
    println!(
        "| ovs-vswitchd RSS per host, idle -> loaded | {:.1} -> {:.1} MiB |",
        idle.0, loaded.0
    );
    println!(
        "| ovsdb-server RSS per host, idle -> loaded | {:.1} -> {:.1} MiB |",
        idle.1, loaded.1
    );
    println!("| weftctl agent RSS per host | {agent_rss:.1} MiB |");
    println!(
        "| h0 reaches a container on every other host | {} |",
        if unreached.is_empty() {
            "yes".to_string()
        } else {
            format!("no: {}", unreached.join(", "))
        }
    );
    println!("\nIdle: each host's OVS with only its underlay bridge, before any ADD.\n");
    drop(placed);
    drop(agents);
    Ok(())
}
