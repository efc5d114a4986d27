#![allow(clippy::print_stdout)]
//! The README's demo: three simulated hosts, two networks, containers on
//! each; who reaches whom across hosts; a fourth host joining late and
//! leaving; then clean-up, with a check that nothing is left anywhere.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use weft_harness::cluster::{reach_matrix, render_matrix, Agent, Cluster, Placed, UNDERLAY_PORT};

const NETS: [(&str, &str); 2] = [("blue", "10.250.0.0/16"), ("red", "10.251.0.0/16")];
/// The agents' lease: short, so a host that leaves is seen to leave.
const LEASE_S: u32 = 2;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Prints `weftctl ARGS` as run on `host`, indented.
fn weftctl(c: &Cluster, host: usize, args: &[&str]) -> Result<String> {
    let conf = c.network(host, NETS[0].0, NETS[0].1, json!({}));
    let out = c.weftctl(host, &conf, args)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("h{host}$ weftctl {}", args.join(" "));
    for line in text.lines() {
        println!("    {line}");
    }
    if !out.status.success() {
        bail!(
            "weftctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The matrix, printed, and an error if any cell is not what isolation
/// promises: same network reachable, other network not.
fn show_matrix(placed: &[Placed]) -> Result<()> {
    let m = reach_matrix(placed)?;
    println!("{}", render_matrix(placed, &m));
    let mut wrong = Vec::new();
    for (i, a) in placed.iter().enumerate() {
        for (j, b) in placed.iter().enumerate() {
            if i != j && m[i][j] != (a.net == b.net) {
                wrong.push(format!("{} -> {}", a.label(), b.label()));
            }
        }
    }
    if !wrong.is_empty() {
        bail!("unexpected reachability: {}", wrong.join(", "));
    }
    println!("Every cell as expected: same network reachable across hosts, other network never.\n");
    Ok(())
}

fn place(c: &Cluster, host: usize, (net, subnet): (&str, &str)) -> Result<Placed> {
    // On-link for all of 10/8: a frame leaking between networks would be
    // answered, so "no" in the matrix is the overlay's isolation alone.
    let p = c.place(host, net, subnet, &json!({}), true)?;
    println!(
        "  ADD on h{host}: container {:<22} network {net:<4}  eth0 {:<14} ({})",
        p.c.id,
        p.ip,
        ms(p.add_time)
    );
    Ok(p)
}

pub fn run() -> Result<()> {
    weft_harness::require_root();
    println!("== weft demo: containers on three hosts, two isolated networks ==\n");
    let mut c = Cluster::new("demo", 3)?;
    introduce(&c)?;
    let agents = start_agents(&c)?;
    let mut placed = place_everywhere(&c)?;
    join_and_leave(&mut c, &mut placed)?;
    let left = clean_up(&c, placed, agents)?;
    println!(
        "  Left behind: {}",
        if left.is_empty() {
            "nothing (no ports, veths, registrations or addresses)".to_string()
        } else {
            left.join("; ")
        }
    );
    println!("Tearing down the simulated hosts, etcd and the underlay...");
    drop(c);
    println!("Done.");
    if !left.is_empty() {
        bail!("something was left behind");
    }
    Ok(())
}

/// The simulated hosts, and the conflist every host uses.
fn introduce(c: &Cluster) -> Result<()> {
    println!(
        "Simulated: an underlay (namespace {}, 172.31.0.0/24) with etcd at {},",
        c.fabric.netns.name,
        c.etcd.endpoints()[0]
    );
    for (i, h) in c.hosts.iter().enumerate() {
        println!(
            "  h{i}: namespace {} with its own ovsdb-server and ovs-vswitchd, underlay {}",
            h.netns.name, c.underlay_ips[i]
        );
    }

    let conf = c.network(0, NETS[0].0, NETS[0].1, json!({}));
    let mut shown = conf.conflist.clone();
    if let Some(p) = shown["plugins"][0].as_object_mut() {
        for k in ["ovsdbSocket", "logFile", "logLevel", "node"] {
            p.remove(k);
        }
        p["ipam"].as_object_mut().map(|m| m.remove("dataDir"));
    }
    println!(
        "\nEvery host uses the same conflist; this is blue's (red differs in name and subnet):"
    );
    println!("{}", serde_json::to_string_pretty(&shown)?);
    println!(
        "(The harness adds only the OVS socket, node name and log file per host, because its\n\
         hosts share one filesystem and hostname. Real hosts need none of them.)\n"
    );
    Ok(())
}

fn start_agents(c: &Cluster) -> Result<Vec<Agent>> {
    println!(
        "Starting `weftctl agent` on each host (etcd lease {LEASE_S} s, watches the registry):"
    );
    let mut agents = Vec::new();
    for h in 0..3 {
        let conf = c.network(h, NETS[0].0, NETS[0].1, json!({}));
        agents.push(c.start_agent(h, &conf, LEASE_S)?);
        println!("  h{h}: agent pid {}", agents[h].pid().unwrap_or(0));
    }
    Ok(agents)
}

/// A blue and a red container on every host, then who reaches whom.
fn place_everywhere(c: &Cluster) -> Result<Vec<Placed>> {
    println!(
        "\nA blue and a red container on every host (weft and weft-ipam exec'd as a runtime does):"
    );
    let mut placed = Vec::new();
    for h in 0..3 {
        for net in NETS {
            placed.push(place(c, h, net)?);
        }
    }
    for h in 0..3 {
        c.wait_tunnels(h, 4, Duration::from_secs(5))?;
    }
    println!();
    weftctl(c, 0, &["nodes"])?;
    weftctl(c, 0, &["networks"])?;
    weftctl(c, 0, &["tunnels"])?;

    println!("\nWho reaches whom (ping from row to column, all at once):");
    show_matrix(&placed)?;
    Ok(placed)
}

/// A fourth host joins with a container, then leaves.
fn join_and_leave(c: &mut Cluster, placed: &mut Vec<Placed>) -> Result<()> {
    println!(
        "A fourth host joins: it starts its agent and its first container, nothing else changes."
    );
    let late = c.add_host()?;
    let conf = c.network(late, NETS[0].0, NETS[0].1, json!({}));
    let late_agent = c.start_agent(late, &conf, LEASE_S)?;
    let newcomer = place(c, late, NETS[0])?;
    let took = c.wait_tunnels(0, 5, Duration::from_secs(5))?;
    println!(
        "  h0 had a tunnel to h{late} {} after h{late}'s ADD returned (its agent saw the registry change)",
        ms(took)
    );
    placed.push(newcomer);
    show_matrix(placed)?;

    println!(
        "h{late} leaves: its container is deleted and its agent stopped (which gives up its lease)."
    );
    let gone = placed.pop().context("the newcomer")?;
    c.remove(&gone)?;
    drop(gone);
    let start = Instant::now();
    drop(late_agent);
    c.wait_tunnels(0, 4, Duration::from_secs(5))?;
    println!(
        "  h0 dropped its tunnel to h{late} {} after the agent was told to stop",
        ms(start.elapsed())
    );
    println!("  `weftctl cleanup` then removes what weft made on h{late}:");
    weftctl(c, late, &["cleanup"])?;
    println!();
    Ok(())
}

/// DEL every container, stop the agents, `weftctl cleanup` on every host;
/// returns what is left anywhere (nothing, when all went well).
fn clean_up(c: &Cluster, placed: Vec<Placed>, agents: Vec<Agent>) -> Result<Vec<String>> {
    println!(
        "Clean-up: DEL every container, stop the agents, then `weftctl cleanup` on every host."
    );
    for p in &placed {
        c.remove(p)?;
    }
    let conts = placed.len();
    drop(placed);
    println!("  {conts} containers deleted");
    drop(agents);
    for h in 0..3 {
        let conf = c.network(h, NETS[0].0, NETS[0].1, json!({}));
        let out = c.weftctl(h, &conf, &["cleanup", "--json"])?;
        if !out.status.success() {
            bail!("cleanup on h{h}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        println!(
            "  h{h}: weftctl cleanup: {} items removed or released",
            v.as_array().map_or(0, Vec::len)
        );
    }
    let mut left = Vec::new();
    for (i, h) in c.hosts.iter().enumerate() {
        let ports = h
            .ovs
            .ports()?
            .iter()
            .filter(|(name, _)| name != UNDERLAY_PORT)
            .count();
        let links = h.weft_links()?.len();
        if ports + links > 0 {
            left.push(format!("h{i}: {ports} OVS ports, {links} veths"));
        }
    }
    // The registry and IPAM are the cluster's: asked from h0.
    let conf = c.network(0, NETS[0].0, NETS[0].1, json!({}));
    let nodes = c.weftctl(0, &conf, &["nodes", "--json"])?;
    let nodes: Value = serde_json::from_slice(&nodes.stdout).unwrap_or(Value::Null);
    let n = nodes.as_array().map_or(0, Vec::len);
    if n > 0 {
        left.push(format!("{n} nodes still registered"));
    }
    for (net, _) in NETS {
        let ips = c.weftctl(0, &conf, &["ips", net, "--json"])?;
        let ips: Value = serde_json::from_slice(&ips.stdout).unwrap_or(Value::Null);
        let a = ips["allocations"].as_array().map_or(0, Vec::len);
        if a > 0 {
            left.push(format!("{a} addresses still held in {net}"));
        }
    }
    Ok(left)
}
