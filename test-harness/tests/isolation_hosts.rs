#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]
//! The adversarial suite across three simulated hosts: two overlay networks
//! with gateways on one bridge (one masquerading), a third overlay network
//! on a second bridge with another tunnel type and no gateway, and a
//! single-host network. One container of each network in turn tries every
//! way out: UDP, TCP and ICMP to every other container, every gateway,
//! every host's underlay address and etcd; ARP for host addresses and other
//! gateways; a static neighbour naming another network's gateway MAC;
//! 802.1Q frames tagged with every VLAN in use, and a flood; ff02::1. Each
//! probe is judged where it would land; the only doors are the attacker's
//! own network and its own gateway.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_harness::cluster::{Cluster, Placed};
use weft_harness::netns::Netns;
use weft_harness::probe::{listen_all, probe};
use weft_harness::rawsock;
use weft_harness::{cleanup, require_root, Attach, Container};

struct Member<'a> {
    net: &'static str,
    host: usize,
    ns: &'a Netns,
    ip: String,
    gateway: Option<&'static str>,
}

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn link_with(ns: &Netns, ip: &str) -> (String, String) {
    ns.link_with_address(ip).unwrap()
}

fn vlan_of(c: &Cluster, h: usize, net: &str) -> u16 {
    c.hosts[h].ovs.network_tags(net).unwrap()[0] as u16
}

#[derive(Default)]
struct Tally {
    probes: usize,
    leaks: Vec<String>,
    allowed: usize,
    paths: usize,
    missed: Vec<String>,
}

impl Tally {
    fn path(&mut self, reached: bool, what: impl FnOnce() -> String) {
        self.paths += 1;
        if reached {
            self.allowed += 1;
        } else {
            self.missed.push(what());
        }
    }
}

/// One attacker's round.
fn round(c: &Cluster, members: &[Member], a: usize, t: &mut Tally) {
    let me = &members[a];
    let window = Duration::from_millis(10000);
    // Listeners: every other container, every host, the fabric (etcd).
    let mut listeners = Vec::new();
    for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != a) {
        listeners.push((
            format!("{} on h{}", m.net, m.host),
            i,
            listen_all(m.ns, window),
        ));
    }
    let mut hosts = Vec::new();
    for (h, host) in c.hosts.iter().enumerate() {
        hosts.push((h, listen_all(&host.netns, window)));
    }
    let fabric = listen_all(&c.fabric.netns, window);

    let mut targets: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a)
        .map(|(_, m)| m.ip.clone())
        .collect();
    targets.extend(c.underlay_ips.iter().cloned());
    targets.push(weft_harness::fabric::FABRIC_IP.to_string());
    let mut gateways: Vec<&str> = members.iter().filter_map(|m| m.gateway).collect();
    gateways.sort();
    gateways.dedup();
    targets.extend(gateways.iter().map(|g| g.to_string()));
    std::thread::scope(|s| {
        for (i, dst) in targets.iter().enumerate() {
            s.spawn(move || probe(me.ns, dst, i as u8));
        }
    });
    t.probes += targets.len() * 3;

    // ARP for every host address and every other network's gateway.
    let asker = {
        let o = octets(&me.ip);
        [o[0], o[1], 255, 250]
    };
    let arp_targets: Vec<String> = c
        .underlay_ips
        .iter()
        .cloned()
        .chain([weft_harness::fabric::FABRIC_IP.to_string()])
        .chain(
            gateways
                .iter()
                .filter(|g| Some(**g) != me.gateway)
                .map(|g| g.to_string()),
        )
        .collect();
    for target in &arp_targets {
        let replies =
            rawsock::count_arp_replies(me.ns, "eth0", octets(target), Duration::from_millis(400));
        rawsock::send_arp(me.ns, "eth0", asker, octets(target)).unwrap();
        t.probes += 1;
        let n = replies.join().unwrap().unwrap();
        if n > 0 {
            t.leaks
                .push(format!("{}: {n} ARP replies for {target}", me.net));
        }
    }

    // 802.1Q frames tagged with every VLAN on this host, and a flood.
    let mut tags: Vec<u16> = members
        .iter()
        .filter(|m| m.host == me.host)
        .map(|m| vlan_of(c, m.host, m.net))
        .collect();
    tags.extend([0, 4095]);
    let frames_at: Vec<_> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a)
        .map(|(i, m)| {
            (
                i,
                rawsock::collect_marked(m.ns, "eth0", b"weftadv", Duration::from_millis(1200)),
            )
        })
        .collect();
    let src = [0x02, 0x77, 0x00, 0x00, 0x00, 0x0b];
    let mut frames = vec![rawsock::probe_frame(src, None, b"weftadv-flood")];
    frames.extend(
        tags.iter()
            .map(|v| rawsock::probe_frame(src, Some(*v), format!("weftadv-vlan{v}").as_bytes())),
    );
    t.probes += frames.len();
    rawsock::send_frames(me.ns, "eth0", frames).unwrap();
    for (i, got) in frames_at {
        let m = &members[i];
        let got = got.join().unwrap().unwrap();
        if m.net == me.net {
            t.path(got.iter().any(|g| g == "weftadv-flood"), || {
                format!("{}: the flood to h{}: {got:?}", me.net, m.host)
            });
            for g in got
                .iter()
                .filter(|g| g.starts_with("weftadv-vlan") && *g != "weftadv-vlan0")
            {
                t.leaks.push(format!(
                    "{}: a tagged frame reached {} on h{}: {g}",
                    me.net, m.net, m.host
                ));
            }
        } else {
            for g in got {
                t.leaks.push(format!(
                    "{}: {} on h{} received the frame {g}",
                    me.net, m.net, m.host
                ));
            }
        }
    }

    // A static neighbour: another network's container on this host behind
    // its gateway's MAC.
    for m in members
        .iter()
        .filter(|m| m.host == me.host && m.net != me.net)
    {
        let Some(gw) = m.gateway else { continue };
        let (_, mac) = link_with(&c.hosts[me.host].netns, gw);
        // What arrives is caught by the round's listener in that namespace.
        me.ns.static_neighbour("eth0", &m.ip, &mac).unwrap();
        probe(me.ns, &m.ip, 200);
        t.probes += 3;
        me.ns
            .ok(&["ip", "route", "del", &format!("{}/32", m.ip)])
            .unwrap();
        me.ns
            .ok(&["ip", "neigh", "del", &m.ip, "dev", "eth0"])
            .unwrap();
    }

    // IPv6: ff02::1 answered by the network's own containers and gateway only.
    let mut mine: Vec<String> = members
        .iter()
        .filter(|m| m.net == me.net)
        .map(|m| {
            m.ns.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"])
                .unwrap()
        })
        .collect();
    if let Some(gw) = me.gateway {
        let (port, _) = link_with(&c.hosts[me.host].netns, gw);
        mine.push(
            c.hosts[me.host]
                .netns
                .ok(&["ip", "-6", "-o", "addr", "show", "dev", &port])
                .unwrap(),
        );
    }
    let ping = me
        .ns
        .exec(&[
            "ping",
            "-6",
            "-n",
            "-c",
            "2",
            "-i",
            "0.3",
            "-w",
            &(2 * weft_harness::time_scale()).to_string(),
            "ff02::1%eth0",
        ])
        .unwrap();
    t.probes += 1;
    for line in String::from_utf8_lossy(&ping.stdout).lines() {
        let Some(rest) = line.split(" from ").nth(1) else {
            continue;
        };
        let addr = rest
            .split('%')
            .next()
            .unwrap_or_default()
            .trim_end_matches(':');
        if !mine.iter().any(|a| a.contains(addr)) {
            t.leaks
                .push(format!("{}: ff02::1 answered by {addr}", me.net));
        }
    }

    // Judge the listeners.
    for (what, i, l) in listeners {
        let got = l.join().unwrap().unwrap();
        if members[i].net == me.net {
            t.path(got.len() >= 3, || format!("{}: {what} got {got:?}", me.net));
        } else {
            for g in got {
                t.leaks.push(format!("{}: {what} received {g}", me.net));
            }
        }
    }
    for (h, l) in hosts {
        let got = l.join().unwrap().unwrap();
        let own = |g: &String| {
            me.gateway.is_some_and(|gw| {
                h == me.host
                    && (g.contains(&format!("-{gw} from")) || g.ends_with(&format!("to {gw}")))
            })
        };
        if me.gateway.is_some() && h == me.host {
            t.path(got.iter().filter(|g| own(g)).count() == 3, || {
                format!("{}: its gateway on h{h} got {got:?}", me.net)
            });
        }
        for g in got.iter().filter(|g| !own(g)) {
            t.leaks.push(format!("{}: host h{h} received {g}", me.net));
        }
    }
    for g in fabric.join().unwrap().unwrap() {
        t.leaks
            .push(format!("{}: the fabric (etcd) received {g}", me.net));
    }
}

fn member<'a>(net: &'static str, pl: &'a Placed, gateway: Option<&'static str>) -> Member<'a> {
    Member {
        net,
        host: pl.host,
        ns: &pl.c.netns,
        ip: pl.ip.clone(),
        gateway,
    }
}

#[test]
fn a_hostile_container_on_three_hosts_reaches_only_its_own_network() {
    cleanup::init();
    require_root();
    let c = Cluster::new("adv", 3).unwrap();
    let with_gw = |h: usize, subnet: &str, gw: &str, extra: Value| {
        let mut e = json!({"gateway": true,
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": subnet, "gateway": gw}]],
                     "dataDir": c.hosts[h].ipam_dir()}});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let place = |h: usize, net: &str, subnet: &str, extra: &Value| -> Placed {
        c.place(h, net, subnet, extra, false)
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let blue: Vec<Placed> = (0..3)
        .map(|h| {
            place(
                h,
                "blue",
                "10.230.0.0/16",
                &with_gw(h, "10.230.0.0/16", "10.230.0.1", json!({})),
            )
        })
        .collect();
    let red: Vec<Placed> = (0..2)
        .map(|h| {
            place(
                h,
                "red",
                "10.231.0.0/16",
                &with_gw(h, "10.231.0.0/16", "10.231.0.1", json!({"ipMasq": true})),
            )
        })
        .collect();
    // green's tunnels on host 0 come from its own ADDs (the agent keeps the
    // tunnels of its conflist's bridge only): a second one after host 2's.
    let green: Vec<Placed> = [0, 2, 0]
        .into_iter()
        .map(|h| {
            place(
                h,
                "green",
                "10.232.0.0/16",
                &json!({"bridge": "br-two", "tunnel": {"type": "geneve"}}),
            )
        })
        .collect();
    let local_net =
        weft_harness::runtime::weft_network(&c.hosts[1], "local", "1.0.0", "10.233.0.0/24");
    let local = Container::new("advl").unwrap();
    local_net
        .add(&c.hosts[1], &local, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    // Agents build the tunnels back to the hosts that joined later.
    let _agents: Vec<_> = (0..3)
        .map(|h| c.start_agent(h, &blue[h].conf, 5).unwrap())
        .collect();
    let t0 = Instant::now();
    while !(blue[0].c.netns.ping(&blue[1].ip)
        && blue[0].c.netns.ping(&blue[2].ip)
        && red[0].c.netns.ping(&red[1].ip)
        && green[0].c.netns.ping(&green[1].ip))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the networks do not work across hosts\n{}",
            c.diagnose()
        );
    }

    let mut members: Vec<Member> = Vec::new();
    members.extend(blue.iter().map(|p| member("blue", p, Some("10.230.0.1"))));
    members.extend(red.iter().map(|p| member("red", p, Some("10.231.0.1"))));
    members.extend(green.iter().map(|p| member("green", p, None)));
    members.push(Member {
        net: "local",
        host: 1,
        ns: &local.netns,
        ip: local.ipv4("eth0").unwrap(),
        gateway: None,
    });

    // One attacker per network, on different hosts.
    let mut t = Tally::default();
    for a in [0, 4, 6, 8] {
        round(&c, &members, a, &mut t);
    }
    println!(
        "3-host adversarial probes tried: {}, leaks found: {}, allowed paths reached: {}/{}",
        t.probes,
        t.leaks.len(),
        t.allowed,
        t.paths
    );
    assert!(
        t.leaks.is_empty(),
        "leaks:\n{}\n{}",
        t.leaks.join("\n"),
        c.diagnose()
    );
    assert_eq!(t.allowed, t.paths, "missed:\n{}", t.missed.join("\n"));
}
