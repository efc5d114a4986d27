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

/// Attaches a container to `net` on `host`; with `onlink`, the container
/// also gets an on-link route for all of 10/8, so a frame that leaked
/// between networks would be answered: isolation is then L2's doing alone.
fn place(c: &Cluster, host: usize, net: &str, subnet: &str, extra: &Value, onlink: bool) -> Placed {
    let n = c.network(host, net, subnet, extra.clone());
    let ctr = Container::new(&format!("c{host}{net}")).unwrap();
    let r = n
        .add(&c.hosts[host], &ctr, "eth0", &Attach::default())
        .unwrap();
    let r = r.unwrap_or_else(|o| panic!("ADD {net} on h{host}: {} {}", o.stdout, o.stderr));
    let ip = weft_harness::runtime::first_address(&r).unwrap();
    if onlink {
        ctr.netns
            .ok(&["ip", "route", "add", "10.0.0.0/8", "dev", "eth0"])
            .unwrap();
    }
    Placed {
        host,
        net: net.into(),
        ip,
        c: ctr,
    }
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
