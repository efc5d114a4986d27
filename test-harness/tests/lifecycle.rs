#![allow(clippy::unwrap_used, clippy::panic)]
//! The full cycle on one host, for every cniVersion weft speaks: ADD two
//! containers, ping between them through OVS, CHECK, DEL, nothing left.

use weft_harness::runtime::{first_address, weft_network};
use weft_harness::{require_root, Attach, Container, Host};

fn assert_clean(host: &Host, network: &str) {
    assert_eq!(
        host.weft_links().unwrap(),
        Vec::<String>::new(),
        "veths left on the host"
    );
    assert_eq!(host.ovs.ports().unwrap(), vec![], "OVS ports left");
    assert_eq!(
        host.ipam_reservations(network),
        Vec::<String>::new(),
        "IPAM reservations left"
    );
}

#[test]
fn add_ping_check_del_every_version() {
    require_root();
    let host = Host::new("life").unwrap();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let net = weft_network(&host, "life", version, &format!("10.{}.0.0/24", 60 + i));
        let a = Container::new(&format!("a{i}")).unwrap();
        let b = Container::new(&format!("b{i}")).unwrap();
        let ra = net
            .add(&host, &a, "eth0", &Attach::default())
            .unwrap()
            .expect("ADD a");
        let rb = net
            .add(&host, &b, "eth0", &Attach::default())
            .unwrap()
            .expect("ADD b");
        assert_eq!(ra["cniVersion"], *version);
        assert_eq!(
            ra["ips"][0].get("version").is_some(),
            version.starts_with('0'),
            "{version}: {ra}"
        );
        assert_eq!(
            ra["interfaces"][1]["sandbox"],
            a.path().display().to_string()
        );

        let ip_b = first_address(&rb).unwrap();
        assert!(a.netns.ping(&ip_b), "{version}: a cannot ping b at {ip_b}");
        // "datapath": "auto" (the default) picks the kernel's where the
        // openvswitch module is loaded (weft-harness vm's guest), netdev
        // elsewhere.
        let dp = host
            .ovs
            .vsctl(&["get", "bridge", "br-weft", "datapath_type"])
            .unwrap();
        let want = if weft_harness::ovs::kernel_datapath() {
            "system"
        } else {
            "netdev"
        };
        assert_eq!(dp.trim().trim_matches('"'), want);

        if *version != "0.3.0" && *version != "0.3.1" {
            let out = net.check(&host, &a, "eth0", &ra).unwrap();
            assert!(out.success, "{version}: CHECK failed: {}", out.stdout);
        }
        for (c, r) in [(&a, &ra), (&b, &rb)] {
            let out = net
                .del(&host, &c.id, Some(c.path()), "eth0", Some(r))
                .unwrap();
            assert!(out.success, "{version}: DEL failed: {}", out.stdout);
        }
        assert_clean(&host, "life");
    }
}

/// podman sends static IP and MAC in CNI_ARGS; kubelet-style runtimes send
/// them as runtimeConfig. Both must land on the interface.
#[test]
fn static_ip_and_mac_from_cni_args_and_runtime_config() {
    require_root();
    let host = Host::new("static").unwrap();
    let mut net = weft_network(&host, "static", "1.0.0", "10.80.0.0/24");
    net.conflist["plugins"][0]["capabilities"] = serde_json::json!({"ips": true, "mac": true});

    let podman = Container::new("sp").unwrap();
    let args = "IgnoreUnknown=1;IP=10.80.0.50;MAC=0a:58:0a:50:00:32;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop";
    let r = net
        .add(
            &host,
            &podman,
            "eth0",
            &Attach {
                args: Some(args),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(r["ips"][0]["address"], "10.80.0.50/24");
    assert_eq!(r["interfaces"][1]["mac"], "0a:58:0a:50:00:32");
    assert_eq!(podman.ipv4("eth0").as_deref(), Some("10.80.0.50"));
    let ports = host.ovs.ports().unwrap();
    let ids = ports[0].1.to_string();
    assert!(
        ids.contains("web") && ids.contains("shop"),
        "pod name/namespace in external_ids: {ids}"
    );

    let kube = Container::new("sk").unwrap();
    let rc = serde_json::json!({"ips": ["10.80.0.51/24"], "mac": "0a:58:0a:50:00:33"});
    let r = net
        .add(
            &host,
            &kube,
            "eth0",
            &Attach {
                runtime_config: Some(rc),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(r["ips"][0]["address"], "10.80.0.51/24");
    assert_eq!(r["interfaces"][1]["mac"], "0a:58:0a:50:00:33");
    assert!(podman.netns.ping("10.80.0.51"));
}

/// conf/10-weft.conflist as shipped, pointed at the simulated host's OVS.
#[test]
fn conf_example_works() {
    require_root();
    let host = Host::new("conf").unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-weft.conflist");
    let mut conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let plugin = &mut conflist["plugins"][0];
    plugin["ovsdbSocket"] = host.db_sock().display().to_string().into();
    plugin["logFile"] = host.dir.path.join("weft.log").display().to_string().into();
    plugin["ipam"]["dataDir"] = host.ipam_dir().display().to_string().into();
    let net = weft_harness::Network::new(conflist).unwrap();
    assert_eq!(
        net.version, "1.1.0",
        "cniVersions picks the highest common version"
    );
    let a = Container::new("ca").unwrap();
    let b = Container::new("cb").unwrap();
    let ra = net
        .add(&host, &a, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let rb = net
        .add(&host, &b, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(a.netns.ping(&first_address(&rb).unwrap()));
    assert!(net.check(&host, &a, "eth0", &ra).unwrap().success);
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        assert!(
            net.del(&host, &c.id, Some(c.path()), "eth0", Some(r))
                .unwrap()
                .success
        );
    }
    assert_clean(&host, "blue");
    assert!(
        std::fs::read_to_string(host.dir.path.join("weft.log"))
            .unwrap()
            .contains("attached"),
        "logFile is written"
    );
}
