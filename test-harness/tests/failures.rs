#![allow(clippy::unwrap_used, clippy::panic)]
//! ADD that fails half-way leaves nothing behind; DEL in all the shapes
//! runtimes send it; GC and STATUS.

use serde_json::json;
use weft_harness::runtime::{weft_network, weft_plugin, Network};
use weft_harness::{require_root, Attach, Container, Host};

fn assert_only(host: &Host, network: &str, links: usize, ports: usize, reservations: usize) {
    assert_eq!(host.weft_links().unwrap().len(), links, "host veths");
    assert_eq!(host.ovs.ports().unwrap().len(), ports, "OVS ports");
    assert_eq!(
        host.ipam_reservations(network).len(),
        reservations,
        "IPAM reservations: {:?}",
        host.ipam_reservations(network)
    );
}

fn container_links(c: &Container) -> Vec<String> {
    c.netns
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l != "lo")
        .collect()
}

#[test]
fn ipam_failure_half_way_leaves_nothing() {
    require_root();
    let host = Host::new("fipam").unwrap();
    // A /30 has one address host-local will hand out: the second ADD runs dry.
    let net = weft_network(&host, "tiny", "1.0.0", "10.70.0.0/30");
    let a = Container::new("fa").unwrap();
    let b = Container::new("fb").unwrap();
    net.add(&host, &a, "eth0", &Attach::default())
        .unwrap()
        .expect("first ADD");
    let err = net
        .add(&host, &b, "eth0", &Attach::default())
        .unwrap()
        .expect_err("second ADD must fail");
    assert!(err.code().is_some(), "error JSON expected: {}", err.stdout);
    assert_eq!(container_links(&b), Vec::<String>::new());
    assert_only(&host, "tiny", 1, 1, 1);
}

#[test]
fn address_failure_half_way_leaves_nothing() {
    require_root();
    let host = Host::new("fmtu").unwrap();
    // IPv6 is off on links under 1280 bytes, so the address step fails after
    // the veth, the OVS port and the IPAM reservation all exist.
    let mut plugin = weft_plugin(&host, "fd00:71::/64");
    plugin["mtu"] = json!(1000);
    let net =
        Network::new(json!({"cniVersion": "1.0.0", "name": "v6", "plugins": [plugin]})).unwrap();
    let c = Container::new("fm").unwrap();
    let err = net
        .add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .expect_err("ADD must fail");
    assert_eq!(err.code(), Some(103), "{}", err.stdout);
    assert_eq!(container_links(&c), Vec::<String>::new());
    assert_only(&host, "v6", 0, 0, 0);
}

#[test]
fn taken_ifname_leaves_nothing() {
    require_root();
    let host = Host::new("fif").unwrap();
    let net = weft_network(&host, "taken", "1.0.0", "10.72.0.0/24");
    let c = Container::new("fi").unwrap();
    c.netns
        .ok(&["ip", "link", "add", "eth0", "type", "bridge"])
        .unwrap();
    let err = net
        .add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .expect_err("ADD must fail");
    assert_eq!(err.code(), Some(104), "{}", err.stdout);
    assert_eq!(
        container_links(&c),
        vec!["eth0".to_string()],
        "the existing eth0 stays, nothing else"
    );
    assert_only(&host, "taken", 0, 0, 0);
}

#[test]
fn del_twice_without_netns_and_after_netns_gone() {
    require_root();
    let host = Host::new("fdel").unwrap();
    let net = weft_network(&host, "dels", "1.0.0", "10.73.0.0/24");

    // containerd: DEL with netns and prevResult, then again with neither.
    let a = Container::new("da").unwrap();
    let r = net
        .add(&host, &a, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(
        net.del(&host, &a.id, Some(a.path()), "eth0", Some(&r))
            .unwrap()
            .success
    );
    assert!(
        net.del(&host, &a.id, None, "eth0", None).unwrap().success,
        "second DEL"
    );
    assert_only(&host, "dels", 0, 0, 0);

    // DEL with empty CNI_NETNS and no prevResult as the only DEL.
    let b = Container::new("db").unwrap();
    net.add(&host, &b, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let out = net.del(&host, &b.id, None, "eth0", None).unwrap();
    assert!(out.success, "{}", out.stdout);
    assert_only(&host, "dels", 0, 0, 0);
    assert_eq!(
        container_links(&b),
        Vec::<String>::new(),
        "host end deleted, so the pair is gone"
    );

    // DEL after the namespace was deleted.
    let c = Container::new("dc").unwrap();
    let r = net
        .add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let (id, path) = (c.id.clone(), c.path().to_path_buf());
    drop(c);
    let out = net.del(&host, &id, Some(&path), "eth0", Some(&r)).unwrap();
    assert!(out.success, "{}", out.stdout);
    assert_only(&host, "dels", 0, 0, 0);
}

#[test]
fn gc_removes_exactly_the_stale_ports() {
    require_root();
    let host = Host::new("fgc").unwrap();
    let net = weft_network(&host, "gc", "1.1.0", "10.74.0.0/24");
    let other = weft_network(&host, "gc-other", "1.1.0", "10.75.0.0/24");
    let cs: Vec<Container> = (0..3)
        .map(|i| Container::new(&format!("g{i}")).unwrap())
        .collect();
    for c in &cs {
        net.add(&host, c, "eth0", &Attach::default())
            .unwrap()
            .unwrap();
    }
    // A port of another network must survive this network's GC.
    let o = Container::new("go").unwrap();
    other
        .add(&host, &o, "eth0", &Attach::default())
        .unwrap()
        .unwrap();

    let out = net.gc(&host, &[(&cs[0].id, "eth0")]).unwrap();
    assert!(out.success, "{}", out.stdout);
    let ports = host.ovs.ports().unwrap();
    let owners: Vec<String> = ports.iter().map(|(_, ids)| ids.to_string()).collect();
    assert_eq!(ports.len(), 2, "{owners:?}");
    assert!(owners.iter().any(|o| o.contains(&cs[0].id)));
    assert!(
        owners.iter().any(|ids| ids.contains(&o.id)),
        "the other network's port must survive"
    );
    assert_eq!(host.weft_links().unwrap().len(), 2);
    for c in &cs[1..] {
        assert_eq!(
            container_links(c),
            Vec::<String>::new(),
            "{} still has its veth",
            c.id
        );
    }
}

#[test]
fn status_is_50_when_ovs_is_down() {
    require_root();
    let mut host = Host::new("fst").unwrap();
    let net = weft_network(&host, "st", "1.1.0", "10.76.0.0/24");
    let ok = net.status(&host).unwrap();
    assert!(ok.success, "{}", ok.stdout);
    host.ovs.stop_ovsdb();
    let down = net.status(&host).unwrap();
    assert_eq!(down.code(), Some(50), "{}", down.stdout);
    host.ovs.restart_ovsdb().unwrap();
    assert!(net.status(&host).unwrap().success);
}

#[test]
fn check_reports_drift() {
    require_root();
    let host = Host::new("fchk").unwrap();
    let net = weft_network(&host, "chk", "1.0.0", "10.81.0.0/24");
    let c = Container::new("ck").unwrap();
    let r = net
        .add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(net.check(&host, &c, "eth0", &r).unwrap().success);

    c.netns
        .ok(&["ip", "link", "set", "eth0", "mtu", "1400"])
        .unwrap();
    assert_eq!(
        net.check(&host, &c, "eth0", &r).unwrap().code(),
        Some(106),
        "MTU drift"
    );
    c.netns
        .ok(&["ip", "link", "set", "eth0", "mtu", "1450"])
        .unwrap();

    c.netns.ok(&["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    assert_eq!(
        net.check(&host, &c, "eth0", &r).unwrap().code(),
        Some(106),
        "address drift"
    );
    let addr = r["ips"][0]["address"].as_str().unwrap();
    c.netns
        .ok(&["ip", "addr", "add", addr, "dev", "eth0"])
        .unwrap();
    c.netns
        .ok(&["ip", "route", "add", "default", "via", "10.81.0.1"])
        .unwrap();
    assert!(
        net.check(&host, &c, "eth0", &r).unwrap().success,
        "restored"
    );

    let port = r["interfaces"][0]["name"].as_str().unwrap();
    host.ovs.vsctl(&["del-port", "br-weft", port]).unwrap();
    assert_eq!(
        net.check(&host, &c, "eth0", &r).unwrap().code(),
        Some(106),
        "OVS port gone"
    );
    assert!(
        net.del(&host, &c.id, Some(c.path()), "eth0", Some(&r))
            .unwrap()
            .success
    );
}

/// DEL is best effort: a missing IPAM plugin is reported, but the port and
/// the veth go anyway; the runtime's retry with a working config releases
/// the address.
#[test]
fn del_removes_port_and_veth_even_when_ipam_is_missing() {
    require_root();
    let host = Host::new("fnoipam").unwrap();
    let net = weft_network(&host, "noipam", "1.0.0", "10.82.0.0/24");
    let c = Container::new("ni").unwrap();
    let r = net
        .add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .unwrap();

    let mut broken = net.clone();
    broken.conflist["plugins"][0]["ipam"]["type"] = json!("no-such-ipam");
    let out = broken
        .del(&host, &c.id, Some(c.path()), "eth0", Some(&r))
        .unwrap();
    assert_eq!(out.code(), Some(102), "{}", out.stdout);
    assert_only(&host, "noipam", 0, 0, 1);

    assert!(
        net.del(&host, &c.id, Some(c.path()), "eth0", Some(&r))
            .unwrap()
            .success
    );
    assert_only(&host, "noipam", 0, 0, 0);
}
