#![allow(clippy::unwrap_used, clippy::panic)]
//! weft-ipam against a real etcd started by the harness, reached over the
//! simulated underlay.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_harness::etcd::Etcd;
use weft_harness::fabric::Fabric;
use weft_harness::ipamtest::{decode_b64, ipam_cmd, ipam_conf, outcomes, owners, reservations};
use weft_harness::runtime::{addr_of_key, first_address, plugin_bin, weft_ipam_network};
use weft_harness::{require_root, Attach, Container, Host};

/// These tests start hundreds of plugin processes and measure timeouts; run
/// side by side on a small machine they would mostly measure each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn full_cycle_through_weft_on_two_hosts() {
    require_root();
    let _serial = serial();
    let fabric = Fabric::new("ipc").unwrap();
    let etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let a = Host::new("ipa").unwrap();
    let b = Host::new("ipb").unwrap();
    fabric.attach(&a.netns).unwrap();
    fabric.attach(&b.netns).unwrap();
    let net_a = weft_ipam_network(&a, "shared", "1.1.0", "10.90.0.0/24", &etcd.endpoints());
    let net_b = weft_ipam_network(&b, "shared", "1.1.0", "10.90.0.0/24", &etcd.endpoints());

    let cs: Vec<Container> = (0..3)
        .map(|i| Container::new(&format!("ic{i}")).unwrap())
        .collect();
    let r0 = net_a
        .add(&a, &cs[0], "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let r1 = net_a
        .add(&a, &cs[1], "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let r2 = net_b
        .add(&b, &cs[2], "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let ips: HashSet<String> = [&r0, &r1, &r2]
        .iter()
        .map(|r| first_address(r).unwrap())
        .collect();
    assert_eq!(ips.len(), 3, "one address plan across hosts: {ips:?}");
    assert!(cs[0].netns.ping(&first_address(&r1).unwrap()));
    assert!(net_a.check(&a, &cs[0], "eth0", &r0).unwrap().success);
    let held = reservations(&etcd, &fabric, "shared");
    assert_eq!(held.len(), 3, "{held:?} vs {ips:?}");

    // weftctl shows the same, from host a, over the underlay.
    let conf_file = a.dir.path.join("shared.conflist");
    std::fs::write(&conf_file, net_a.conflist.to_string()).unwrap();
    let weftctl = plugin_bin("weftctl").unwrap();
    let out = a
        .netns
        .ok(&[
            &weftctl.to_string_lossy(),
            "ips",
            "--conf",
            &conf_file.to_string_lossy(),
            "--json",
        ])
        .unwrap();
    let listed: Value = serde_json::from_str(&out).unwrap();
    let rows = listed["allocations"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{listed}");
    for (c, node) in [(&cs[0], "ipa"), (&cs[1], "ipa"), (&cs[2], "ipb")] {
        assert!(
            rows.iter().any(|r| r["containerID"] == c.id.as_str()
                && r["node"] == node
                && r["ifname"] == "eth0"),
            "{listed}"
        );
    }
    assert!(!listed["blocks"].as_array().unwrap().is_empty());
    let table = a
        .netns
        .ok(&[
            &weftctl.to_string_lossy(),
            "ips",
            "--conf",
            &conf_file.to_string_lossy(),
        ])
        .unwrap();
    assert!(
        table.contains("ADDRESS") && table.contains(&cs[2].id),
        "{table}"
    );

    let again = net_a.add(&a, &cs[0], "eth0", &Attach::default()).unwrap();
    // A second ADD of the same attachment fails in weft (its veth exists) but
    // must not take a second address.
    assert!(again.is_err());
    assert_eq!(reservations(&etcd, &fabric, "shared").len(), 3);

    for (net, h, c, r) in [
        (&net_a, &a, &cs[0], &r0),
        (&net_a, &a, &cs[1], &r1),
        (&net_b, &b, &cs[2], &r2),
    ] {
        assert!(
            net.del(h, &c.id, Some(c.path()), "eth0", Some(r))
                .unwrap()
                .success
        );
    }
    assert_eq!(reservations(&etcd, &fabric, "shared"), vec![]);
    assert_eq!(owners(&etcd, &fabric, "shared"), 0);
    assert_eq!(
        a.ovs.ports().unwrap().len() + b.ovs.ports().unwrap().len(),
        0
    );
}

#[test]
fn etcd_down_is_code_11_in_time_and_reserves_nothing() {
    require_root();
    let _serial = serial();
    let fabric = Fabric::new("down").unwrap();
    let mut etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let dir = etcd.dir.path.clone();
    let conf = ipam_conf("down", "10.101.0.0/24", "n0", &etcd.endpoints(), &dir);
    let run = |cmd: &str, cid: &str| {
        let started = Instant::now();
        let out = ipam_cmd(&fabric.netns, cmd, cid, &conf)
            .wait_with_output()
            .unwrap();
        (
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            out.status.success(),
            started.elapsed(),
        )
    };
    assert!(run("ADD", "kept").1);

    // A frozen etcd: connections open, nothing answers. Code 11 within timeoutMs (2 s) plus a margin.
    let pid = std::fs::read_to_string(dir.join("m0.pid"))
        .unwrap()
        .trim()
        .parse::<i32>()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let (doc, ok, took) = run("ADD", "frozen");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(!ok && doc["code"] == 11, "{doc}");
    assert!(took < Duration::from_millis(2000 + 1000), "took {took:?}");

    // A stopped etcd: refused at once.
    etcd.stop_member(0);
    let (doc, ok, took) = run("ADD", "stopped");
    assert!(!ok && doc["code"] == 11, "{doc}");
    assert!(took < Duration::from_millis(3000), "took {took:?}");
    let (doc, ok, _) = run("DEL", "kept");
    assert!(!ok && doc["code"] == 11, "DEL while etcd is down: {doc}");
    let out = ipam_cmd(&fabric.netns, "STATUS", "", &conf)
        .wait_with_output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(doc["code"], 50, "STATUS while etcd is down: {doc}");

    etcd.start_member(&fabric.netns, 0).unwrap();
    etcd.wait_serving(0).unwrap();
    // Nothing reached the stopped etcd. A request in flight when etcd froze
    // may still commit when it thaws, after we answered 11: it carries its
    // owner record, so the runtime's retry gets that same address back (and
    // its cleanup DEL or GC releases it).
    let held = reservations(&etcd, &fabric, "down");
    let holders: Vec<&str> = held
        .iter()
        .map(|(_, h)| h["containerID"].as_str().unwrap_or("?"))
        .collect();
    assert!(holders.contains(&"kept"), "{holders:?}");
    assert!(
        !holders.contains(&"stopped"),
        "the ADD against a stopped etcd reserved something: {holders:?}"
    );
    assert!(
        holders.iter().all(|h| *h == "kept" || *h == "frozen"),
        "{holders:?}"
    );
    eprintln!("after the thaw, reservations are held by {holders:?}");
    if let Some((key, _)) = held.iter().find(|(_, h)| h["containerID"] == "frozen") {
        let (doc, ok, _) = run("ADD", "frozen");
        assert!(ok, "{doc}");
        let ip = addr_of_key(key).unwrap().to_string();
        assert_eq!(
            doc["ips"][0]["address"].as_str().unwrap().split('/').next(),
            Some(ip.as_str()),
            "the retry gets the late reservation back"
        );
        assert!(run("DEL", "frozen").1);
    }
    assert!(run("DEL", "kept").1, "DEL succeeds once etcd is back");

    // GC reclaims what an ADD whose caller died left behind.
    assert!(run("ADD", "orphan").1);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = ipam_cmd(&fabric.netns, "GC", "", &gc)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(reservations(&etcd, &fabric, "down"), vec![]);
}

/// The id of the member that leads, as its index in `etcd.members`.
#[test]
fn leader_killed_during_concurrent_adds() {
    require_root();
    let _serial = serial();
    let fabric = Fabric::new("fail").unwrap();
    let mut etcd = Etcd::start(&fabric.netns, 3, None).unwrap();
    let dir = etcd.dir.path.clone();
    let mut running = Vec::new();
    for node in 0..4 {
        // Failover under 240 starting processes on a small machine can take
        // seconds; the budget says how long an ADD may wait for it.
        let mut conf = ipam_conf(
            "fail",
            "10.102.0.0/22",
            &format!("n{node}"),
            &etcd.endpoints(),
            &dir,
        );
        conf["ipam"]["etcd"]["timeoutMs"] = json!(5000);
        for c in 0..60 {
            running.push(ipam_cmd(
                &fabric.netns,
                "ADD",
                &format!("n{node}-c{c}"),
                &conf,
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(150));
    let killed = etcd.leader(&fabric.netns).unwrap();
    etcd.kill_member(killed);

    let (granted, codes) = outcomes(running);
    eprintln!(
        "killed member {killed}; granted {}, code 11 for {}",
        granted.len(),
        codes.len()
    );
    assert!(
        codes.iter().all(|c| *c == 11),
        "every failure must be 11: {codes:?}"
    );
    let unique: HashSet<&String> = granted.iter().collect();
    assert_eq!(
        unique.len(),
        granted.len(),
        "an address was handed out twice"
    );

    // Every reservation has its owner record and every owner record its
    // reservations; what was granted is among them. (An ADD that got 11 may
    // still have committed: GC finds it through its owner record.)
    let held = reservations(&etcd, &fabric, "fail");
    let out = etcd
        .ctl(
            &fabric.netns,
            &[
                "get",
                "--prefix",
                "/weft/v1/ipam/fail/owners/",
                "-w",
                "json",
            ],
        )
        .unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    let owner_ips: HashSet<String> = doc["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|kv| {
            let rec: Value =
                serde_json::from_slice(&decode_b64(kv["value"].as_str().unwrap())).unwrap();
            rec["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let held_ips: HashSet<String> = held
        .iter()
        .map(|(k, _)| addr_of_key(k).unwrap().to_string())
        .collect();
    assert_eq!(
        held_ips, owner_ips,
        "reservations and owner records must match one to one"
    );
    for ip in &granted {
        assert!(
            held_ips.contains(ip),
            "{ip} was granted but is not reserved"
        );
    }
}

/// Static addresses reach weft-ipam through weft both ways runtimes send
/// them: podman's CNI_ARGS IP= and kubelet-style runtimeConfig ips.
#[test]
fn static_addresses_through_weft() {
    require_root();
    let _serial = serial();
    let fabric = Fabric::new("stat").unwrap();
    let etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let h = Host::new("sth").unwrap();
    fabric.attach(&h.netns).unwrap();
    let mut net = weft_ipam_network(&h, "static", "1.1.0", "10.104.0.0/24", &etcd.endpoints());
    net.conflist["plugins"][0]["capabilities"] = json!({"ips": true});

    let podman = Container::new("sp").unwrap();
    let args = Attach {
        args: Some("IgnoreUnknown=1;IP=10.104.0.77"),
        ..Default::default()
    };
    let r = net.add(&h, &podman, "eth0", &args).unwrap().unwrap();
    assert_eq!(r["ips"][0]["address"], "10.104.0.77/24");

    let kube = Container::new("sk").unwrap();
    let rc = Attach {
        runtime_config: Some(json!({"ips": ["10.104.0.78/24"]})),
        ..Default::default()
    };
    let r2 = net.add(&h, &kube, "eth0", &rc).unwrap().unwrap();
    assert_eq!(r2["ips"][0]["address"], "10.104.0.78/24");
    assert!(podman.netns.ping("10.104.0.78"));

    // Someone else asking for a held address is told who holds it, and weft
    // leaves nothing behind.
    let late = Container::new("sl").unwrap();
    let taken = Attach {
        args: Some("IgnoreUnknown=1;IP=10.104.0.77"),
        ..Default::default()
    };
    let err = net.add(&h, &late, "eth0", &taken).unwrap().unwrap_err();
    assert_eq!(err.code(), Some(110), "{}", err.stdout);
    assert!(
        err.stdout.contains(&podman.id),
        "the error names the holder: {}",
        err.stdout
    );
    assert_eq!(h.weft_links().unwrap().len(), 2);
    assert_eq!(reservations(&etcd, &fabric, "static").len(), 2);
}

/// Runs one plugin process to its end: its answer and its peak memory (KiB).
fn answer_and_peak(mut child: std::process::Child) -> (Value, i64) {
    use std::io::Read;
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    // SAFETY: plain wait4 on our own child, with zeroed out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (serde_json::from_slice(&out).unwrap(), usage.ru_maxrss)
}

/// IPv6 at any block size, on a real etcd: /64 blocks of a /48 from two
/// nodes at once, and a /120 run to its last address. Allocation never
/// walks a block, so a /64 block costs the memory a /120 does.
#[test]
fn ipv6_64_blocks_and_a_full_120_on_real_etcd() {
    require_root();
    let _serial = serial();
    let fabric = Fabric::new("ip6").unwrap();
    let etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let dir = &etcd.dir.path;
    let conf = |net: &str, subnet: &str, node: &str, block: u8| {
        let mut c = ipam_conf(net, subnet, node, &etcd.endpoints(), dir);
        c["ipam"]["blockSizeV6"] = json!(block);
        c
    };
    let mut running = Vec::new();
    for node in ["n0", "n1"] {
        let c = conf("wide", "fd00:50::/48", node, 64);
        for i in 0..20 {
            running.push(ipam_cmd(&fabric.netns, "ADD", &format!("{node}-c{i}"), &c));
        }
    }
    let (granted, codes) = outcomes(running);
    assert!(codes.is_empty(), "refused: {codes:?}");
    let unique: HashSet<&String> = granted.iter().collect();
    assert_eq!(unique.len(), 40, "{granted:?}");
    assert_eq!(reservations(&etcd, &fabric, "wide").len(), 40);
    // Twenty first ADDs at once on a node may each claim a block; what
    // matters is that the nodes' blocks never overlap.
    let block_of = |ip: &String| {
        let s = ip.parse::<std::net::Ipv6Addr>().unwrap().segments();
        format!("{:x}:{:x}:{:x}:{:x}", s[0], s[1], s[2], s[3])
    };
    let n0: HashSet<String> = granted[..20].iter().map(block_of).collect();
    let n1: HashSet<String> = granted[20..].iter().map(block_of).collect();
    assert!(n0.is_disjoint(&n1), "{n0:?} {n1:?}");

    // A /120 (254 usable: the subnet's own address and the gateway ::1
    // are never handed out), filled by two nodes, then one more.
    let mut running = Vec::new();
    for i in 0..254 {
        let c = conf("tight", "fd00:51::/120", ["n0", "n1"][i % 2], 120);
        running.push(ipam_cmd(&fabric.netns, "ADD", &format!("t{i}"), &c));
        if running.len() == 50 {
            let (ok, codes) = outcomes(std::mem::take(&mut running));
            assert!(codes.is_empty(), "refused: {codes:?} after {ok:?}");
        }
    }
    let (_, codes) = outcomes(running);
    assert!(codes.is_empty(), "refused: {codes:?}");
    assert_eq!(reservations(&etcd, &fabric, "tight").len(), 254);
    let (full, _) = answer_and_peak(ipam_cmd(
        &fabric.netns,
        "ADD",
        "one-too-many",
        &conf("tight", "fd00:51::/120", "n0", 120),
    ));
    assert_eq!(full["code"], 111, "{full}");

    let (a, peak_64) = answer_and_peak(ipam_cmd(
        &fabric.netns,
        "ADD",
        "m64",
        &conf("wide", "fd00:50::/48", "n2", 64),
    ));
    let (b, peak_120) = answer_and_peak(ipam_cmd(
        &fabric.netns,
        "ADD",
        "m120",
        &conf("small", "fd00:52::/112", "n2", 120),
    ));
    assert!(a["ips"].is_array() && b["ips"].is_array(), "{a} {b}");
    eprintln!("peak memory of one ADD: /64 blocks {peak_64} KiB, /120 blocks {peak_120} KiB");
    assert!(
        peak_64 < peak_120 + 1024,
        "a /64 block cost {peak_64} KiB against {peak_120} KiB for a /120"
    );
}
