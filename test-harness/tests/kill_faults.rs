#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]
//! kill -9 at random points of ADD (and, one trial in four, of DEL), each
//! followed by the runtime's DEL or by nothing at all (the container just
//! goes away), as containerd 1.6 and kubelet do: they never send CNI GC.
//! Then only the agent's node-local reconciler runs. In a binary of its
//! own: 200 trials of process kills should not share the machine.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_harness::cluster::{start_agent_with, Cluster};
use weft_harness::runtime::{first_address, Call};
use weft_harness::{cleanup, require_root, Attach, Container};

const TRIALS: usize = 200;
const OWNERS: &str = "/weft/v1/ipam/blue/owners/";

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the trials left on h0: reservations, OVS ports and host veths that
/// belong to no bystander.
#[derive(Debug, Default, PartialEq)]
struct Left {
    reservations: usize,
    ports: usize,
    veths: usize,
}

fn left(c: &Cluster, bystanders: &[String], bystander_ports: &[String]) -> Left {
    let out = c
        .etcd
        .ctl(
            &c.fabric.netns,
            &[
                "get",
                "--prefix",
                "/weft/v1/ipam/blue/ips/",
                "--print-value-only",
            ],
        )
        .unwrap();
    let me = c.hosts[0].label.as_str();
    let reservations = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|h| h["node"] == me)
        .filter(|h| !bystanders.iter().any(|b| h["containerID"] == b.as_str()))
        .count();
    let ports = c.hosts[0]
        .ovs
        .ports()
        .unwrap()
        .iter()
        .filter(|(name, ids)| {
            ids.to_string().contains("weft.container_id") && !bystander_ports.contains(name)
        })
        .count();
    let veths = c.hosts[0]
        .weft_links()
        .unwrap()
        .iter()
        .filter(|l| !bystander_ports.contains(l))
        .count();
    Left {
        reservations,
        ports,
        veths,
    }
}

#[test]
fn kill_9_during_add_or_del_leaves_nothing_once_the_agent_reconciles() {
    require_root();
    cleanup::init();
    let c = Cluster::new("kill", 2).unwrap();
    let net = |h| c.network(h, "blue", "10.240.0.0/16", json!({}));
    let _a0 = start_agent_with(&c.hosts[0], &net(0), 5, &["--orphan-grace", "1s"]).unwrap();
    let _a1 = c.start_agent(1, &net(1), 5).unwrap();
    let n0 = net(0);
    let host = &c.hosts[0];

    let by: Vec<Container> = (0..2)
        .map(|i| Container::new(&format!("kby{i}")).unwrap())
        .collect();
    let mut by_ips = Vec::new();
    for (i, b) in by.iter().enumerate() {
        let r = net(i)
            .add(&c.hosts[i], b, "eth0", &Attach::default())
            .unwrap()
            .unwrap();
        by_ips.push(first_address(&r).unwrap());
    }
    let by_ids: Vec<String> = by.iter().map(|b| b.id.clone()).collect();
    let by_ports = host.weft_links().unwrap();
    assert!(by[0].netns.ping(&by_ips[1]));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let (mut add_kills, mut del_kills, mut followed, mut abandoned) = (0, 0, 0, 0);
    let mut after_del = Vec::new();
    for i in 0..TRIALS {
        let ct = Container::new(&format!("kt{i}")).unwrap();
        let call = |command| Call {
            command,
            container_id: &ct.id,
            netns: Some(ct.path()),
            ifname: "eth0",
            args: None,
        };
        let (what, within_ms) = if rng.below(4) == 0 {
            n0.add(host, &ct, "eth0", &Attach::default())
                .unwrap()
                .unwrap();
            del_kills += 1;
            ("DEL", 12)
        } else {
            add_kills += 1;
            ("ADD", 40)
        };
        let mut child = n0.spawn_first(host, &call(what)).unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(within_ms * 1000)));
        let _ = child.kill();
        let _ = child.wait();
        if rng.below(2) == 0 {
            // The runtime's DEL, retried as a runtime retries code 11.
            let mut tries = 0;
            loop {
                let out = n0.del(host, &ct.id, Some(ct.path()), "eth0", None).unwrap();
                tries += 1;
                if out.success {
                    break;
                }
                assert!(tries < 5, "DEL after a killed {what}: {}", out.stdout);
                std::thread::sleep(Duration::from_millis(200));
            }
            followed += 1;
            // What this trial left: this container's own keys and ports.
            let l = {
                let owners = c.etcd.keys(&c.fabric.netns, OWNERS).unwrap();
                owners.iter().filter(|k| k.contains(&ct.id)).count()
                    + host
                        .ovs
                        .ports()
                        .unwrap()
                        .iter()
                        .filter(|(_, ids)| ids.to_string().contains(&ct.id))
                        .count()
            };
            if l > 0 {
                after_del.push(format!("trial {i} (killed {what}): {l} left after DEL"));
            }
        } else {
            abandoned += 1;
        }
        drop(ct);
    }
    let after = left(&c, &by_ids, &by_ports);
    println!(
        "{TRIALS} trials: {add_kills} kills during ADD, {del_kills} during DEL; \
         {followed} followed by the runtime's DEL, {abandoned} abandoned"
    );
    println!(
        "after DEL: {after:?}; trials with a complete DEL that left something: {}",
        after_del.len()
    );
    assert!(after_del.is_empty(), "{}", after_del.join("\n"));

    let t0 = Instant::now();
    let mut now = left(&c, &by_ids, &by_ports);
    while now != Left::default() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
        now = left(&c, &by_ids, &by_ports);
    }
    println!(
        "after reconciling (agent only, orphan grace 1 s): {now:?}, {:.1} s after the last trial",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(now, Left::default());
    // Bystanders kept their addresses and reach each other across hosts.
    assert!(by[0].netns.ping(&by_ips[1]) && by[1].netns.ping(&by_ips[0]));
    let held = c.etcd.keys(&c.fabric.netns, OWNERS).unwrap();
    for id in &by_ids {
        assert!(
            held.iter().any(|k| k.contains(id.as_str())),
            "bystander {id} lost its address"
        );
    }
}
