#![allow(clippy::print_stdout)]
//! The README's demo: two containers on one simulated host, plugged into Open
//! vSwitch by weft, pinging each other; then DEL and a check that nothing is left.

use anyhow::{bail, Result};
use serde_json::json;

use crate::host::{Container, Host};
use crate::runtime::{weft_plugin, Attach, Network};

fn addr(result: &serde_json::Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

pub fn run() -> Result<()> {
    crate::require_root();
    println!("== weft demo: two containers on one host, switched by Open vSwitch ==\n");
    let host = Host::new("demo")?;
    println!(
        "Simulated host: network namespace {} with its own ovsdb-server and ovs-vswitchd",
        host.netns.name
    );
    println!(
        "  (OVS socket {}, datapath chosen automatically)\n",
        host.db_sock().display()
    );

    let mut plugin = weft_plugin(&host, "10.244.0.0/24");
    plugin.as_object_mut().map(|m| m.remove("logLevel"));
    let net = Network::new(json!({"cniVersion": "1.1.0", "name": "blue", "plugins": [plugin]}))?;
    println!("Network config (what you would put in /etc/cni/net.d/10-blue.conflist):");
    println!("{}\n", serde_json::to_string_pretty(&net.conflist)?);

    let red = Container::new("red")?;
    let green = Container::new("green")?;
    let mut results = Vec::new();
    for (label, c) in [("red", &red), ("green", &green)] {
        let (r, took) = net.add_timed(&host, c, "eth0", &Attach::default())?;
        let r = match r {
            Ok(r) => r,
            Err(out) => bail!("ADD {label} failed: {}", out.stdout),
        };
        println!(
            "ADD {label:<5} container {}  ->  eth0 {}  mac {}  host port {} on br-weft   ({:.1} ms)",
            c.id,
            addr(&r),
            r["interfaces"][1]["mac"].as_str().unwrap_or("?"),
            r["interfaces"][0]["name"].as_str().unwrap_or("?"),
            took.as_secs_f64() * 1000.0
        );
        results.push(r);
    }

    println!("\nOVS now has these ports on br-weft (found again by their external_ids):");
    for (name, ids) in host.ovs.ports()? {
        let ids = crate::runtime::flatten_ids(&ids);
        println!(
            "  {name}  container={}  ifname={}",
            ids.get("weft.container_id").map_or("?", |s| s),
            ids.get("weft.ifname").map_or("?", |s| s)
        );
    }

    for ((from, c), to) in [("red", &red), ("green", &green)]
        .into_iter()
        .zip([&results[1], &results[0]])
    {
        let target = crate::runtime::first_address(to).unwrap_or_default();
        println!("\n{from}$ ping -c 3 {target}");
        let out = c.netns.exec(&["ping", "-c", "3", "-i", "0.2", &target])?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!("{from} cannot reach {target}");
        }
    }

    let check = net.check(&host, &red, "eth0", &results[0])?;
    println!(
        "\nCHECK red: {}",
        if check.success {
            "ok".to_string()
        } else {
            check.stdout.clone()
        }
    );

    for (label, c, r) in [("red", &red, &results[0]), ("green", &green, &results[1])] {
        let out = net.del(&host, &c.id, Some(c.path()), "eth0", Some(r))?;
        println!(
            "DEL {label}: {}",
            if out.success { "ok" } else { out.stdout.trim() }
        );
    }
    let (links, ports, ips) = (
        host.weft_links()?.len(),
        host.ovs.ports()?.len(),
        host.ipam_reservations("blue").len(),
    );
    println!("\nLeft behind on the host: {links} veths, {ports} OVS ports, {ips} IP reservations");
    println!("Tearing down the simulated host (namespaces, OVS processes, temp dirs)...");
    drop((red, green, host));
    println!("Done.");
    if links + ports + ips > 0 {
        bail!("something was left behind");
    }
    Ok(())
}
