//! Multi-host: three (or four) simulated hosts on the fabric, each with its
//! own OVS, etcd in the fabric, weft and weft-ipam exec'd as a runtime would.

#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use weft_harness::cluster::{reach_matrix, render_matrix, Cluster, Placed};
use weft_harness::{cleanup, require_root, Attach, Container};

/// One multi-host test at a time: each runs a cluster of OVS instances, and
/// two at once on two cores turn timing into noise.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    cleanup::init();
    require_root();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const NETS: [(&str, &str); 2] = [("blue", "10.250.0.0/16"), ("red", "10.251.0.0/16")];

fn place(c: &Cluster, host: usize, net: &str, subnet: &str, extra: &Value, onlink: bool) -> Placed {
    c.place(host, net, subnet, extra, onlink)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn expect_matrix(placed: &[Placed]) {
    let m = reach_matrix(placed).unwrap();
    println!("{}", render_matrix(placed, &m));
    for (i, a) in placed.iter().enumerate() {
        for (j, b) in placed.iter().enumerate() {
            if i != j {
                assert_eq!(m[i][j], a.net == b.net, "{} -> {}", a.label(), b.label());
            }
        }
    }
}

fn matrix_for(kind: &str) {
    let _g = serial();
    let c = Cluster::new(&format!("mx{kind}"), 3).unwrap();
    let extra = json!({"tunnel": {"type": kind}});
    let agents: Vec<_> = (0..3)
        .map(|h| {
            c.start_agent(h, &c.network(h, "blue", NETS[0].1, extra.clone()), 2)
                .unwrap()
        })
        .collect();
    let mut placed = Vec::new();
    for h in 0..3 {
        for (net, subnet) in NETS {
            placed.push(place(&c, h, net, subnet, &extra, true));
        }
    }
    // Two peers on each of two networks.
    for h in 0..3 {
        c.wait_tunnels(h, 4, Duration::from_secs(5)).unwrap();
    }
    expect_matrix(&placed);
    drop(agents);
}

#[test]
fn matrix_vxlan() {
    matrix_for("vxlan");
}

#[test]
fn matrix_geneve() {
    matrix_for("geneve");
}

#[test]
fn matrix_gre() {
    matrix_for("gre");
}

#[test]
fn tcp_50mb_across_hosts_with_default_mtu() {
    let _g = serial();
    let c = Cluster::new("tcp", 2).unwrap();
    let a = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let b = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    // h0 joined before h1 existed; an agent-less cluster learns at the next
    // ADD on h0, so attach one more there.
    let _nudge = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let link: Value =
        serde_json::from_str(&b.c.netns.ok(&["ip", "-j", "link", "show", "eth0"]).unwrap())
            .unwrap();
    assert_eq!(link[0]["mtu"], 1450, "1500-byte underlay minus VXLAN's 50");
    let mut server =
        b.c.netns
            .command("iperf3")
            .unwrap()
            .args(["-s", "-1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out =
        a.c.netns
            .exec(&["timeout", "60", "iperf3", "-c", &b.ip, "-n", "52M", "-J"])
            .unwrap();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes >= 50e6, "received {bytes}");
    println!(
        "{bytes} bytes at {:.0} Mbit/s",
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap()
            / 1e6
    );
}

#[test]
fn late_host_without_agent_is_reached_after_peers_next_add() {
    let _g = serial();
    let mut c = Cluster::new("latep", 2).unwrap();
    let a = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let b = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    c.add_host().unwrap();
    let late = place(&c, 2, "blue", NETS[0].1, &json!({}), false);
    // The newcomer built its tunnels at its ADD; the others learn at theirs.
    assert_eq!(c.tunnels(2).unwrap().len(), 2);
    let _n0 = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let _n1 = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    let why = Cluster::diagnose;
    for p in [&a, &b] {
        assert!(
            p.c.netns.ping(&late.ip),
            "{} -> late host\n{}",
            p.label(),
            why(&c)
        );
        assert!(
            late.c.netns.ping(&p.ip),
            "late host -> {}\n{}",
            p.label(),
            why(&c)
        );
    }
}

/// An address released on one host and handed out again on another: a peer
/// that still maps it to the old MAC must learn the new one from the
/// container's gratuitous ARP, not after its neighbour entry expires.
#[test]
fn reused_address_on_another_host_is_reached_at_once() {
    let _g = serial();
    let c = Cluster::new("reuse", 3).unwrap();
    let _agents: Vec<_> = (0..3)
        .map(|h| {
            c.start_agent(h, &c.network(h, "blue", NETS[0].1, json!({})), 2)
                .unwrap()
        })
        .collect();
    let p0 = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let ip = "10.250.200.7";
    let args = format!("IgnoreUnknown=1;IP={ip}");
    let with_ip = Attach {
        args: Some(&args),
        ..Attach::default()
    };
    let old = c
        .place_with(1, "blue", NETS[0].1, &json!({}), false, &with_ip)
        .unwrap();
    assert_eq!(old.ip, ip);
    assert!(p0.c.netns.ping(ip), "before the move");
    c.remove(&old).unwrap();
    drop(old);
    let new = c
        .place_with(2, "blue", NETS[0].1, &json!({}), false, &with_ip)
        .unwrap();
    assert_eq!(new.ip, ip);
    // p0's entry for the address still holds the old MAC and is fresh.
    let reached =
        p0.c.netns
            .exec(&["ping", "-n", "-q", "-c", "1", "-w", "2", "-i", "0.02", ip])
            .unwrap();
    assert!(
        reached.status.success(),
        "the new holder was not reached within 2 s; p0's neighbours: {}",
        p0.c.netns.ok(&["ip", "neigh"]).unwrap_or_default()
    );
}

#[test]
fn late_host_with_agent_joins_and_leaves_within_a_second() {
    let _g = serial();
    let mut c = Cluster::new("latea", 2).unwrap();
    let conf = |c: &Cluster, h| c.network(h, "blue", NETS[0].1, json!({}));
    let _a0 = c.start_agent(0, &conf(&c, 0), 2).unwrap();
    let _a1 = c.start_agent(1, &conf(&c, 1), 2).unwrap();
    let a = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let _b = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    c.wait_tunnels(0, 1, Duration::from_secs(2)).unwrap();

    c.add_host().unwrap();
    let mut a2 = c.start_agent(2, &conf(&c, 2), 2).unwrap();
    let late = place(&c, 2, "blue", NETS[0].1, &json!({}), false);
    let took = c.wait_tunnels(0, 2, Duration::from_secs(1)).unwrap();
    println!("h0 had its tunnel to the new host {took:?} after the new host's ADD");
    assert!(a.c.netns.ping(&late.ip));

    // A clean stop gives up the lease: peers drop the tunnel at once.
    drop(std::mem::replace(
        &mut a2,
        weft_harness::cluster::spawn_agent(&c.hosts[2], &conf(&c, 2), 2, &[]).unwrap(),
    ));
    c.wait_tunnels(0, 2, Duration::from_secs(2)).unwrap();
    a2.kill();
    // A crash: the lease (2 s) runs out, then peers drop the tunnel.
    let gone = c.wait_tunnels(0, 1, Duration::from_secs(5)).unwrap();
    println!("after a crash, h0 dropped the tunnel in {gone:?} (lease 2 s)");
    c.wait_tunnels(1, 1, Duration::from_secs(2)).unwrap();
    // Its addresses stay while it may come back: gc keeps them for the
    // grace period (10 minutes by default), counted from the agent's last
    // word, and an ADD elsewhere cannot be handed them.
    let gc = |args: &[&str]| {
        let out = c.weftctl(0, &conf(&c, 0), args).unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let held_by_h2 = || {
        let ips = c.weftctl(0, &conf(&c, 0), &["ips", "--json"]).unwrap();
        let v: Value = serde_json::from_slice(&ips.stdout).unwrap();
        v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["node"] == c.hosts[2].label.as_str() && a["address"] == late.ip.as_str())
            .count()
    };
    let actions = |v: &Value, what: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == what)
            .count()
    };
    let (code, v) = gc(&["gc", "--json"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(actions(&v, "released"), 0, "{v}");
    assert!(v.to_string().contains(&c.hosts[2].label), "{v}");
    assert_eq!(held_by_h2(), 1);
    let mut ask = weft_harness::ipamtest::ipam_conf(
        "blue",
        NETS[0].1,
        &c.hosts[0].label,
        &c.etcd.endpoints(),
        &c.hosts[0].dir.path,
    );
    ask["runtimeConfig"] = json!({"ips": [format!("{}/16", late.ip)]});
    let (_, codes) = weft_harness::ipamtest::outcomes(vec![weft_harness::ipamtest::ipam_cmd(
        &c.hosts[0].netns,
        "ADD",
        "wants-h2s-address",
        &ask,
    )]);
    assert_eq!(codes, vec![110], "the address is still held");
    // A live host cannot be forgotten by name.
    let (code, v) = gc(&["gc", "--json", "--forget-node", &c.hosts[1].label]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(actions(&v, "refused"), 1, "{v}");
    // Past the grace period (1 s here), it is gone: addresses released,
    // memberships forgotten.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, v) = gc(&["gc", "--json", "--node-grace", "1s"]);
    assert_eq!(code, Some(0), "{v}");
    // Its one address, and its one block back to the pool.
    assert_eq!(actions(&v, "released"), 2, "{v}");
    assert!(v.to_string().contains("\"what\":\"blocks\""), "{v}");
    assert_eq!(actions(&v, "forgot"), 1, "{v}");
    assert_eq!(held_by_h2(), 0);
    let (_, v) = gc(&["gc", "--json", "--node-grace", "1s"]);
    assert_eq!(actions(&v, "released") + actions(&v, "forgot"), 0, "{v}");
}

/// ovsdb-server stopped for 8 s under a 5 s lease: the agent's reconcile
/// blocks on it, but its keepalive runs apart, so the host stays registered
/// and its peers keep their tunnels to it.
#[test]
fn an_agent_keeps_its_registration_through_an_8s_stop_of_ovsdb_server() {
    let _g = serial();
    let c = Cluster::new("stall", 2).unwrap();
    let conf = |c: &Cluster, h| c.network(h, "blue", NETS[0].1, json!({}));
    let _a0 = c.start_agent(0, &conf(&c, 0), 5).unwrap();
    let _a1 = c.start_agent(1, &conf(&c, 1), 5).unwrap();
    let a = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let b = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    c.wait_tunnels(0, 1, Duration::from_secs(2)).unwrap();
    c.wait_tunnels(1, 1, Duration::from_secs(2)).unwrap();

    let node_key = format!("/weft/v1/nodes/{}", c.hosts[0].label);
    let stopped = weft_harness::Stopped::new(c.hosts[0].ovs.pids().1.unwrap()).unwrap();
    // A registry change wakes h0's agent into a reconcile that waits on
    // the stopped ovsdb-server.
    c.etcd
        .ctl(&c.fabric.netns, &["put", "/weft/v1/members/blue/ghost", ""])
        .unwrap();
    let (mut polls, mut missing, mut tunnel_gone) = (0, 0, 0);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        let v = c
            .etcd
            .ctl(&c.fabric.netns, &["get", &node_key, "--print-value-only"])
            .unwrap();
        polls += 1;
        missing += usize::from(v.trim().is_empty());
        tunnel_gone += usize::from(c.tunnels(1).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(stopped);
    println!("8 s of stopped ovsdb-server: {polls} polls, registration missing in {missing}, h1's tunnel missing in {tunnel_gone}");
    assert_eq!(missing, 0, "the registration lapsed");
    assert_eq!(tunnel_gone, 0, "h1 dropped its tunnel to h0");
    c.etcd
        .ctl(&c.fabric.netns, &["del", "/weft/v1/members/blue/ghost"])
        .unwrap();
    assert!(a.c.netns.ping(&b.ip));
}

/// The agent's load follows registry changes only: IPAM's writes (every
/// reservation in the cluster) and the alive-clocks never wake it, and a
/// burst of registry writes is one reconcile, not one per write.
#[test]
fn an_agent_sleeps_through_ipam_writes_and_reconciles_a_burst_once() {
    let _g = serial();
    let c = Cluster::new("quiet", 2).unwrap();
    let _a0 = c
        .start_agent(0, &c.network(0, "blue", NETS[0].1, json!({})), 2)
        .unwrap();
    let _p = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let log = c.hosts[0].dir.path.join("agent.log");
    // (reconciles, events) the registry has caused so far.
    let woken = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("registry changed; reconciled"))
            .collect();
        let events: usize = lines
            .iter()
            .filter_map(|l| {
                l.split("events=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        (lines.len(), events)
    };
    // Whatever the placement itself caused, settled.
    std::thread::sleep(Duration::from_millis(400));
    let before = woken();
    let puts = |prefix: &str, n: usize| {
        std::thread::scope(|s| {
            for i in 0..n {
                let key = format!("{prefix}{i}");
                let c = &c;
                s.spawn(move || c.etcd.ctl(&c.fabric.netns, &["put", &key, "x"]).unwrap());
            }
        });
    };
    puts("/weft/v1/ipam/blue/ips/test-", 20);
    puts("/weft/v1/seen/ghost-", 5);
    std::thread::sleep(Duration::from_millis(400));
    let after_ipam = woken();
    // Ten hosts' memberships at once, as a burst of joins.
    puts("/weft/v1/members/blue/ghost-", 10);
    std::thread::sleep(Duration::from_millis(600));
    let after_burst = woken();
    println!(
        "25 IPAM and alive-clock writes: {} reconciles; a burst of 10 registry writes: {} reconciles for {} events",
        after_ipam.0 - before.0,
        after_burst.0 - after_ipam.0,
        after_burst.1 - after_ipam.1
    );
    assert_eq!(after_ipam, before, "IPAM writes woke the agent");
    assert_eq!(after_burst.1 - after_ipam.1, 10);
    assert!(
        after_burst.0 - after_ipam.0 <= 2,
        "{after_burst:?} {after_ipam:?}"
    );
}

/// A host's first ADD on a network runs while its agent, woken by the
/// peer that joined the network just before, reconciles from a registry
/// read that predates the ADD: the agent must not take the ADD's new
/// tunnel for one of a network this host has left, and the ADD must not
/// fail because of it.
#[test]
fn an_add_racing_its_own_agent_keeps_its_tunnels() {
    let _g = serial();
    let c = Cluster::new("race", 2).unwrap();
    let _agents: Vec<_> = (0..2)
        .map(|h| {
            c.start_agent(h, &c.network(h, "blue", NETS[0].1, json!({})), 2)
                .unwrap()
        })
        .collect();
    const ROUNDS: usize = 24;
    let (mut failed, mut short) = (Vec::new(), 0);
    let mut pairs = Vec::new();
    for i in 0..ROUNDS {
        let (net, subnet) = (format!("n{i}"), format!("10.{}.0.0/16", 100 + i));
        let a = place(&c, 0, &net, &subnet, &json!({}), false);
        // h0's membership wakes h1's agent 100 ms after its write (the
        // burst window): start h1's ADD at points across that window.
        std::thread::sleep(Duration::from_millis((i as u64 * 37) % 90));
        match c.place(1, &net, &subnet, &json!({}), false) {
            Ok(b) => {
                short += usize::from(c.tunnels(1).unwrap().len() < i + 1);
                pairs.push((a, b));
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    println!(
        "{ROUNDS} first ADDs racing their agent: {} failed, {short} returned without their tunnel",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(short, 0);
    for h in 0..2 {
        c.wait_tunnels(h, ROUNDS, Duration::from_secs(3)).unwrap();
    }
    for (a, b) in &pairs {
        assert!(a.c.netns.ping(&b.ip), "{} -> {}", a.label(), b.label());
    }
}

/// etcd wiped with containers running: the agents register again, put
/// back the reservations of their live attachments (and their blocks) and
/// the tunnels come back; new ADDs are never handed a running container's
/// address. Then, with no agents, `weftctl ipam repair` does the same.
#[test]
fn a_wiped_etcd_gets_live_reservations_back_before_new_adds() {
    let _g = serial();
    let c = Cluster::new("wipe", 2).unwrap();
    let conf = |c: &Cluster, h| c.network(h, "blue", NETS[0].1, json!({}));
    let owners = |c: &Cluster| {
        c.etcd
            .keys(&c.fabric.netns, "/weft/v1/ipam/blue/owners/")
            .unwrap()
            .len()
    };
    let wipe = |c: &Cluster| {
        c.etcd
            .ctl(&c.fabric.netns, &["del", "--prefix", "/weft/"])
            .unwrap();
    };
    let mut placed = Vec::new();
    {
        let _a0 = c.start_agent(0, &conf(&c, 0), 2).unwrap();
        let a1 = c.start_agent(1, &conf(&c, 1), 2).unwrap();
        placed.push(place(&c, 0, "blue", NETS[0].1, &json!({}), false));
        placed.push(place(&c, 1, "blue", NETS[0].1, &json!({}), false));
        assert_eq!(owners(&c), 2);
        for h in 0..2 {
            c.wait_tunnels(h, 1, Duration::from_secs(2)).unwrap();
        }
        // Each host hears of the wipe and registers again on its own
        // time, h1 half a second late (its agent stalled); meanwhile
        // neither takes the other for gone, and an ADD on h1 waits for
        // h1's agent to put back what its container holds.
        let mut tunnel_gone = 0;
        let (early, waited, served_while_stalled) = std::thread::scope(|s| {
            let slow = weft_harness::Stopped::new(a1.pid().unwrap()).unwrap();
            wipe(&c);
            let add = s.spawn(|| {
                let t0 = std::time::Instant::now();
                let p = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
                (p, t0.elapsed())
            });
            // Polled beside, so a slow poll never stretches the stall.
            let polls = s.spawn(|| {
                let (t0, mut gone) = (std::time::Instant::now(), 0);
                while t0.elapsed() < Duration::from_millis(500) {
                    gone += usize::from(c.tunnels(0).unwrap().is_empty());
                    std::thread::sleep(Duration::from_millis(20));
                }
                gone
            });
            std::thread::sleep(Duration::from_millis(500));
            let served = add.is_finished();
            drop(slow);
            tunnel_gone += polls.join().unwrap();
            let (p, waited) = add.join().unwrap();
            (p, waited, served)
        });
        println!(
            "an ADD on h1 just after the wipe took {waited:?} (h1's agent stalled 500 ms); it got {}",
            early.ip
        );
        assert!(
            !served_while_stalled,
            "an ADD was served before its host's agent restored the reservations"
        );
        placed.push(early);
        let took = weft_harness::wait_for(
            "the reservations' restore",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                tunnel_gone += (0..2).filter(|&h| c.tunnels(h).unwrap().is_empty()).count();
                owners(&c) >= 3
            },
        );
        println!("after a wipe, the 2 reservations restored and the new one in {took:?}");
        for _ in 0..50 {
            tunnel_gone += (0..2).filter(|&h| c.tunnels(h).unwrap().is_empty()).count();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tunnel_gone, 0, "a tunnel dropped after the wipe");
        let record = || {
            c.etcd
                .ctl(
                    &c.fabric.netns,
                    &["get", "/weft/v1/networks/blue", "--print-value-only"],
                )
                .unwrap()
        };
        weft_harness::wait_for(
            "the network record's return",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || !record().trim().is_empty(),
        );
        assert!(placed[0].c.netns.ping(&placed[1].ip));
        for h in [0, 1, 1, 0] {
            placed.push(place(&c, h, "blue", NETS[0].1, &json!({}), false));
        }
    }
    let ips: std::collections::HashSet<&String> = placed.iter().map(|p| &p.ip).collect();
    assert_eq!(ips.len(), placed.len(), "an address handed out twice");
    assert_eq!(owners(&c), placed.len());

    // No agents now: the operator repairs by hand.
    wipe(&c);
    assert_eq!(owners(&c), 0);
    for h in 0..2 {
        let out = c
            .weftctl(h, &conf(&c, h), &["ipam", "repair", "--json"])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v.as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "restored"),
            "{v}"
        );
    }
    assert_eq!(owners(&c), placed.len());
    let again = c
        .weftctl(0, &conf(&c, 0), &["ipam", "repair", "--json"])
        .unwrap();
    let v: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "present"),
        "{v}"
    );
    // New ADDs after the repair get other addresses.
    let more = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    assert!(
        !ips.contains(&more.ip),
        "{} was a running container's",
        more.ip
    );
}

/// A 3-member etcd whose leader is killed: the agents' leases and
/// registrations carry on (a broken keepalive starts a new session, whose
/// registration replaces the old one), and peers keep their tunnels.
#[test]
fn agents_stay_registered_when_the_etcd_leader_is_killed() {
    let _g = serial();
    let mut c = Cluster::with_etcd_members("lead", 2, 3).unwrap();
    let conf = |c: &Cluster, h| c.network(h, "blue", NETS[0].1, json!({}));
    let _a0 = c.start_agent(0, &conf(&c, 0), 5).unwrap();
    let _a1 = c.start_agent(1, &conf(&c, 1), 5).unwrap();
    let a = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    let b = place(&c, 1, "blue", NETS[0].1, &json!({}), false);
    c.wait_tunnels(0, 1, Duration::from_secs(2)).unwrap();
    let killed = c.etcd.leader(&c.fabric.netns).unwrap();
    c.etcd.kill_member(killed);
    let (mut polls, mut missing, mut tunnels_gone, mut unanswered) = (0, 0, 0, 0);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        polls += 1;
        // etcdctl itself may find no leader for a moment: that says
        // nothing of the registrations.
        match c.etcd.keys(&c.fabric.netns, "/weft/v1/nodes/") {
            Ok(nodes) => missing += 2 - nodes.len().min(2),
            Err(_) => unanswered += 1,
        }
        tunnels_gone += usize::from(c.tunnels(0).unwrap().is_empty())
            + usize::from(c.tunnels(1).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "leader (member {killed}) killed: {polls} polls in 8 s ({unanswered} unanswered by etcd), registrations missing {missing}, tunnels missing {tunnels_gone}"
    );
    assert_eq!(missing, 0, "a registration lapsed");
    assert_eq!(tunnels_gone, 0, "a peer dropped its tunnel");
    assert!(a.c.netns.ping(&b.ip));
}

/// A block that has held no reservation for the grace period goes back to
/// the pool (the agent, `--block-grace 1s` here); the node's next ADD
/// claims one again.
#[test]
fn an_empty_block_goes_back_to_the_pool() {
    let _g = serial();
    let c = Cluster::new("blk", 1).unwrap();
    let net = c.network(0, "blue", NETS[0].1, json!({}));
    let _a =
        weft_harness::cluster::start_agent_with(&c.hosts[0], &net, 2, &["--block-grace", "1s"])
            .unwrap();
    let blocks = || {
        c.etcd
            .keys(&c.fabric.netns, "/weft/v1/ipam/blue/blocks/")
            .unwrap()
            .len()
    };
    let p = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    assert_eq!(blocks(), 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(blocks(), 1, "a block in use stays");
    let out = net
        .del(&c.hosts[0], &p.c.id, Some(p.c.path()), "eth0", None)
        .unwrap();
    assert!(out.success, "{}", out.stdout);
    let took = weft_harness::wait_for(
        "the empty block's release",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || blocks() == 0,
    );
    println!("the empty block went back {took:?} after the DEL (grace 1 s)");
    let again = place(&c, 0, "blue", NETS[0].1, &json!({}), false);
    assert_eq!(blocks(), 1);
    assert!(!again.ip.is_empty());
}

#[test]
fn one_broadcast_reaches_every_other_host_exactly_once() {
    let _g = serial();
    let c = Cluster::new("bcast", 4).unwrap();
    let conf = |h| c.network(h, "blue", NETS[0].1, json!({}));
    let _agents: Vec<_> = (0..4)
        .map(|h| c.start_agent(h, &conf(h), 2).unwrap())
        .collect();
    let placed: Vec<_> = (0..4)
        .map(|h| place(&c, h, "blue", NETS[0].1, &json!({}), false))
        .collect();
    for h in 0..4 {
        c.wait_tunnels(h, 3, Duration::from_secs(3)).unwrap();
    }
    // OVS's userspace tunnels drop the first packet to a peer whose underlay
    // MAC they have not resolved yet; the mesh is what is under test here.
    for p in &placed[1..] {
        assert!(placed[0].c.netns.ping(&p.ip));
    }
    let target = [10, 250, 255, 254];
    let counters: Vec<_> = placed[1..]
        .iter()
        .map(|p| {
            weft_harness::rawsock::count_arp(&p.c.netns, "eth0", target, Duration::from_secs(2))
        })
        .collect();
    weft_harness::rawsock::send_arp(&placed[0].c.netns, "eth0", [10, 250, 0, 200], target).unwrap();
    let counts: Vec<usize> = counters
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    println!("copies received on h1..h3: {counts:?}");
    assert_eq!(counts, vec![1, 1, 1]);
}

#[test]
fn fixed_vni_shared_by_two_networks_is_code_7() {
    let _g = serial();
    let c = Cluster::new("vni", 1).unwrap();
    let _a = place(&c, 0, "blue", NETS[0].1, &json!({"vni": 77}), false);
    let n = c.network(0, "red", NETS[1].1, json!({"vni": 77}));
    let ctr = Container::new("vnired").unwrap();
    let out = n
        .add(&c.hosts[0], &ctr, "eth0", &Attach::default())
        .unwrap()
        .unwrap_err();
    assert_eq!(out.code(), Some(7), "{}", out.stdout);
    assert!(out.stdout.contains("blue"), "{}", out.stdout);
    // Nothing half-made: no veth left for the refused container.
    assert!(c.hosts[0].weft_links().unwrap().len() == 1);
}

#[test]
fn gateway_host_route_portmap_and_nat() {
    let _g = serial();
    let c = Cluster::new("gw", 2).unwrap();
    let gw = |net: &str, subnet: &str, gwip: &str, h| {
        let mut n = c.network(h, net, subnet, json!({"gateway": true, "ipMasq": true}));
        n.conflist["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": subnet, "gateway": gwip}]]);
        n.conflist["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        n
    };
    let blue = gw("blue", "10.252.0.0/16", "10.252.0.1", 0);
    let ctr = Container::new("gwc").unwrap();
    let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let r = blue
        .add(
            &c.hosts[0],
            &ctr,
            "eth0",
            &Attach {
                runtime_config: Some(rc),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap_or_else(|o| panic!("{} {}", o.stdout, o.stderr));
    let ip = weft_harness::runtime::first_address(&r).unwrap();
    let host_ip = &c.underlay_ips[0];
    assert!(ctr.netns.ping("10.252.0.1"), "container -> gateway");
    assert!(c.hosts[0].netns.ping(&ip), "host -> container");
    // Without hostAccess the host's other addresses and the underlay's
    // subnet (etcd, the other hosts) are shut.
    assert!(
        !ctr.netns.ping(host_ip),
        "container -> its host's underlay address"
    );
    assert!(
        !ctr.netns.ping(weft_harness::fabric::FABRIC_IP),
        "container -> the underlay's subnet"
    );
    // Somewhere beyond the underlay, which has no route to 10.252/16: only
    // masquerading gets an answer.
    c.fabric
        .netns
        .ok(&["ip", "addr", "add", "203.0.113.1/32", "dev", "lo"])
        .unwrap();
    c.hosts[0]
        .netns
        .ok(&[
            "ip",
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            weft_harness::fabric::FABRIC_IP,
        ])
        .unwrap();
    assert!(ctr.netns.ping("203.0.113.1"), "outbound NAT");

    // A second host serves the same gateway address with the same MAC.
    let blue1 = gw("blue", "10.252.0.0/16", "10.252.0.1", 1);
    let ctr1 = Container::new("gwc1").unwrap();
    blue1
        .add(&c.hosts[1], &ctr1, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(ctr1.netns.ping("10.252.0.1"));
    let mac = |h: usize| {
        let v: Value =
            serde_json::from_str(&c.hosts[h].netns.ok(&["ip", "-j", "link", "show"]).unwrap())
                .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"].as_str().unwrap_or("").starts_with("wgw"))
            .map(|l| l["address"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(mac(0), mac(1));

    // portmap publishes container port 80 on the host's port 8080.
    let listener = weft_harness::rawsock::in_netns(&ctr.netns, || {
        let l = std::net::TcpListener::bind("0.0.0.0:80")?;
        let (mut s, _) = l.accept()?;
        std::io::Write::write_all(&mut s, b"hello from the container")?;
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let target = format!("{host_ip}:8080");
    let got = weft_harness::rawsock::in_netns(&c.hosts[0].netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&target.parse()?, Duration::from_secs(3))?;
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut s, &mut buf)?;
        Ok(buf)
    })
    .join()
    .unwrap()
    .unwrap();
    listener.join().unwrap().unwrap();
    assert_eq!(got, "hello from the container");

    // Another network's gateway on the same host does not route to blue.
    let green = gw("green", "10.253.0.0/16", "10.253.0.1", 0);
    let g = Container::new("gwg").unwrap();
    green
        .add(&c.hosts[0], &g, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(g.netns.ping("10.253.0.1"));
    assert!(!g.netns.ping(&ip), "green reached blue through the host");
    assert!(!g.netns.ping("10.252.0.1"), "green reached blue's gateway");

    // hostAccess opens the host and the underlay, on the next ADD.
    let mut open = gw("blue", "10.252.0.0/16", "10.252.0.1", 0);
    open.conflist["plugins"][0]["hostAccess"] = json!(true);
    let ctr2 = Container::new("gwc2").unwrap();
    open.add(&c.hosts[0], &ctr2, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(ctr.netns.ping(host_ip), "hostAccess: container -> its host");
    assert!(
        ctr.netns.ping(weft_harness::fabric::FABRIC_IP),
        "hostAccess: container -> the underlay"
    );
    assert!(!g.netns.ping(host_ip), "green has no hostAccess");
}

/// The VLAN tags of `net`'s container ports on `host`.
fn net_tags(c: &Cluster, host: usize, net: &str) -> Vec<u32> {
    c.hosts[host].ovs.network_tags(net).unwrap()
}

/// Removes the registry (not IPAM's keys): what a wiped or fresh etcd has.
/// One prefix at a time, a moment apart: an agent sees the wipe half-way
/// (as in an emulated guest, where each etcdctl takes that long).
fn wipe_registry(c: &Cluster) {
    for p in ["networks", "vnis", "members", "nodes"] {
        c.etcd
            .ctl(
                &c.fabric.netns,
                &["del", "--prefix", &format!("/weft/v1/{p}/")],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn etcd_get(c: &Cluster, key: &str) -> String {
    c.etcd
        .ctl(&c.fabric.netns, &["get", "--print-value-only", key])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_wiped_or_restored_registry_never_puts_two_networks_on_one_vlan() {
    let _g = serial();
    let c = Cluster::new("vni", 2).unwrap();
    let net = |name: &str, subnet: &str, h| c.network(h, name, subnet, json!({}));
    let add = |n: &weft_harness::runtime::Network, h: usize, label: &str| {
        let ctr = Container::new(label).unwrap();
        let r = n
            .add(&c.hosts[h], &ctr, "eth0", &Attach::default())
            .unwrap();
        (ctr, r)
    };
    let blue = net("blue", "10.240.0.0/16", 0);
    let (_b1, r) = add(&blue, 0, "vnib1");
    r.unwrap();
    let blue_vni = net_tags(&c, 0, "blue")[0];

    // Without an agent: the first network after the wipe steps around the
    // VLAN host 0's bridge carries, and blue gets its own VNI back.
    wipe_registry(&c);
    let red = net("red", "10.241.0.0/16", 0);
    let (_r1, r) = add(&red, 0, "vnir1");
    r.unwrap();
    let red_vni = net_tags(&c, 0, "red")[0];
    assert_ne!(red_vni, blue_vni, "red was given blue's VNI");
    let (_b2, r) = add(&blue, 0, "vnib2");
    r.unwrap();
    assert_eq!(net_tags(&c, 0, "blue"), vec![blue_vni, blue_vni]);
    assert_eq!(etcd_get(&c, &format!("/weft/v1/vnis/{blue_vni}")), "blue");

    // With the agent: it re-reserves what its bridge carries as soon as the
    // wipe happens, so a network first seen on host 1 steps around both.
    let agent = c.start_agent(0, &blue, 5).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    wipe_registry(&c);
    let t0 = std::time::Instant::now();
    while etcd_get(&c, &format!("/weft/v1/vnis/{blue_vni}")) != "blue"
        || etcd_get(&c, &format!("/weft/v1/vnis/{red_vni}")) != "red"
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5) * weft_harness::time_scale(),
            "the agent did not re-reserve the VNIs; its log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    println!("agent re-reserved host 0's VNIs {took:?} after the wipe");
    let green = net("green", "10.242.0.0/16", 1);
    let (_g1, r) = add(&green, 1, "vnig1");
    r.unwrap();
    let green_vni = net_tags(&c, 1, "green")[0];
    assert!(
        ![blue_vni, red_vni].contains(&green_vni),
        "green got {green_vni}"
    );

    // A tunnel put on another VLAN by hand (host 1 runs no agent): doctor
    // names it, and the next ADD there moves it back.
    let blue1 = net("blue", "10.240.0.0/16", 1);
    let (_b4, r) = add(&blue1, 1, "vnib4");
    r.unwrap();
    let h1 = &c.hosts[1].ovs;
    let tunnel = h1
        .vsctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Port",
            "external_ids:weft.tunnel_for=blue",
        ])
        .unwrap()
        .trim()
        .to_string();
    assert!(!tunnel.is_empty());
    h1.vsctl(&["set", "Port", &tunnel, &format!("tag={green_vni}")])
        .unwrap();
    let d = c.weftctl(1, &blue1, &["doctor"]).unwrap();
    assert!(!d.status.success());
    assert!(
        String::from_utf8_lossy(&d.stdout).contains(&tunnel),
        "{}",
        String::from_utf8_lossy(&d.stdout)
    );
    let (_b5, r) = add(&blue1, 1, "vnib5");
    r.unwrap();
    let tag = h1.vsctl(&["get", "Port", &tunnel, "tag"]).unwrap();
    assert_eq!(
        tag.trim(),
        blue_vni.to_string(),
        "the ADD did not move the tunnel back"
    );

    // A restore that hands blue's VNI to another network: with no agent,
    // ADD of that network on host 0 refuses (109) rather than share blue's
    // VLAN; the agent moves blue to a VNI of its own, and then both work.
    drop(agent);
    wipe_registry(&c);
    let purple = net("purple", "10.243.0.0/16", 0);
    c.etcd
        .ctl(
            &c.fabric.netns,
            &["put", &format!("/weft/v1/vnis/{blue_vni}"), "purple"],
        )
        .unwrap();
    c.etcd
        .ctl(
            &c.fabric.netns,
            &[
                "put",
                "/weft/v1/networks/purple",
                &format!("{{\"vni\":{blue_vni},\"tunnel\":\"vxlan\",\"port\":4789}}"),
            ],
        )
        .unwrap();
    let (_p0, r) = add(&purple, 0, "vnip0");
    let o = r.unwrap_err();
    assert_eq!(o.code(), Some(109), "{}", o.stdout);
    assert!(o.stdout.contains("blue"), "{}", o.stdout);
    let _agent = c.start_agent(0, &blue, 5).unwrap();
    let t0 = std::time::Instant::now();
    while net_tags(&c, 0, "blue").contains(&blue_vni) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the agent did not move blue"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "agent moved blue off the restored VNI in {:?}",
        t0.elapsed()
    );
    let (purple_ok, r) = add(&purple, 0, "vnip1");
    r.unwrap();
    let moved = net_tags(&c, 0, "blue");
    assert!(
        moved.iter().all(|t| *t != blue_vni),
        "blue still on {blue_vni}: {moved:?}"
    );
    assert_eq!(net_tags(&c, 0, "purple"), vec![blue_vni]);
    let (_b3, r) = add(&blue, 0, "vnib3");
    r.unwrap();
    let now = net_tags(&c, 0, "blue");
    assert!(now.iter().all(|t| *t == moved[0]), "{now:?}");
    drop(purple_ok);
}
