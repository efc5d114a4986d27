//! The full cycle on one host, for every cniVersion weft speaks: ADD two
//! containers, ping between them through OVS, CHECK, DEL, nothing left.

use weft_harness::runtime::weft_network;
use weft_harness::{require_root, Attach, Container, Host};

fn assert_clean(host: &Host, network: &str) {
    assert_eq!(host.weft_links().unwrap(), Vec::<String>::new(), "veths left on the host");
    assert_eq!(host.ovs.ports().unwrap(), vec![], "OVS ports left");
    assert_eq!(host.ipam_reservations(network), Vec::<String>::new(), "IPAM reservations left");
}

#[test]
fn add_ping_check_del_every_version() {
    require_root();
    let host = Host::new("life").unwrap();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let net = weft_network(&host, "life", version, &format!("10.{}.0.0/24", 60 + i));
        let a = Container::new(&format!("a{i}")).unwrap();
        let b = Container::new(&format!("b{i}")).unwrap();
        let ra = net.add(&host, &a, "eth0", &Attach::default()).unwrap().expect("ADD a");
        let rb = net.add(&host, &b, "eth0", &Attach::default()).unwrap().expect("ADD b");
        assert_eq!(ra["cniVersion"], *version);
        assert_eq!(ra["ips"][0].get("version").is_some(), version.starts_with('0'), "{version}: {ra}");
        assert_eq!(ra["interfaces"][1]["sandbox"], a.path().display().to_string());

        let ip_b = rb["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        assert!(a.netns.ping(&ip_b), "{version}: a cannot ping b at {ip_b}");

        if *version != "0.3.0" && *version != "0.3.1" {
            let out = net.check(&host, &a, "eth0", &ra).unwrap();
            assert!(out.success, "{version}: CHECK failed: {}", out.stdout);
        }
        for (c, r) in [(&a, &ra), (&b, &rb)] {
            let out = net.del(&host, &c.id, Some(c.path()), "eth0", Some(r)).unwrap();
            assert!(out.success, "{version}: DEL failed: {}", out.stdout);
        }
        assert_clean(&host, "life");
    }
}
