#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]
//! Hostile containers against other networks and the host: two single-host
//! networks on one bridge must share no L2, and a container behind a gateway
//! reaches its own gateway's address and nothing else of the host or of the
//! other network. Every probe carries a unique payload and is judged where
//! it would land (sockets and packet sockets in the target namespace), not
//! by the sender's exit code.

use std::time::Duration;

use serde_json::{json, Value};
use weft_harness::cluster;
use weft_harness::netns::Netns;
use weft_harness::probe::{listen_all, probe};
use weft_harness::rawsock;
use weft_harness::runtime::{self, weft_network, Call, Network};
use weft_harness::{require_root, Attach, Container, Host};

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn port_tag(host: &Host, port: &str) -> Option<u32> {
    host.ovs
        .vsctl(&["get", "Port", port, "tag"])
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn with_gateway(host: &Host, name: &str, subnet: &str, gw: &str, masq: bool) -> Network {
    let mut n = weft_network(host, name, "1.0.0", subnet);
    n.conflist["plugins"][0]["gateway"] = json!(true);
    n.conflist["plugins"][0]["ipMasq"] = json!(masq);
    n.conflist["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": subnet, "gateway": gw}]]);
    n
}

fn attach(net: &Network, host: &Host, c: &Container) -> Value {
    net.add(host, c, "eth0", &Attach::default())
        .unwrap()
        .unwrap_or_else(|o| panic!("ADD refused: {} {}", o.stdout, o.stderr))
}

#[test]
fn single_host_networks_on_one_bridge_share_no_l2() {
    require_root();
    weft_harness::cleanup::init();
    let host = Host::new("isol2").unwrap();
    let blue = weft_network(&host, "blue", "1.0.0", "10.51.0.0/24");
    let red = weft_network(&host, "red", "1.0.0", "10.52.0.0/24");
    let (a, b, r) = (
        Container::new("isol2a").unwrap(),
        Container::new("isol2b").unwrap(),
        Container::new("isol2r").unwrap(),
    );
    let prev_a = attach(&blue, &host, &a);
    attach(&blue, &host, &b);
    attach(&red, &host, &r);

    // Every port is an access port; the two networks' VLANs differ.
    let tags: Vec<(String, Option<u32>)> = host
        .weft_links()
        .unwrap()
        .into_iter()
        .map(|p| (p.clone(), port_tag(&host, &p)))
        .collect();
    assert!(
        tags.iter()
            .all(|(_, t)| t.is_some_and(|t| (4000..=4094).contains(&t))),
        "{tags:?}"
    );
    let mut distinct: Vec<u32> = tags.iter().filter_map(|(_, t)| *t).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "{tags:?}");
    assert_eq!(
        port_tag(&host, "br-weft"),
        Some(4095),
        "the bridge port is parked"
    );
    let red_tag = host
        .ovs
        .vsctl(&["get", "Bridge", "br-weft", "external_ids:\"weft.vlan.red\""])
        .unwrap()
        .trim()
        .trim_matches('"')
        .parse::<u16>()
        .unwrap();

    let (mut probes, mut leaks, mut allowed) = (0, Vec::new(), 0);
    // Frames from a blue container: untagged broadcast (blue only), and
    // 802.1Q frames tagged with red's VLAN and a spread of others.
    let at_r = rawsock::collect_marked(&r.netns, "eth0", b"weftl2", Duration::from_millis(1200));
    let at_b = rawsock::collect_marked(&b.netns, "eth0", b"weftl2", Duration::from_millis(1200));
    let src = [0x02, 0x77, 0x00, 0x00, 0x00, 0x0a];
    let mut frames = vec![rawsock::probe_frame(src, None, b"weftl2-untagged")];
    for v in [red_tag, 0, 1, 4000, 4001, 4002, 4094, 4095] {
        frames.push(rawsock::probe_frame(
            src,
            Some(v),
            format!("weftl2-vlan{v}").as_bytes(),
        ));
    }
    probes += frames.len();
    rawsock::send_frames(&a.netns, "eth0", frames).unwrap();
    // And from the red container, an untagged flood of its own.
    let at_a = rawsock::collect_marked(&a.netns, "eth0", b"weftl2r", Duration::from_millis(800));
    rawsock::send_frames(
        &r.netns,
        "eth0",
        vec![rawsock::probe_frame(src, None, b"weftl2r-flood")],
    )
    .unwrap();
    probes += 1;
    for g in at_r.join().unwrap().unwrap() {
        leaks.push(format!("red container received {g}"));
    }
    for g in at_a.join().unwrap().unwrap() {
        leaks.push(format!("blue container received {g}"));
    }
    let seen_b = at_b.join().unwrap().unwrap();
    // Tagged frames on an access port are dropped, whatever the tag (0 is
    // "priority only", which OVS treats as untagged).
    for g in &seen_b {
        if g.starts_with("weftl2-vlan") && g != "weftl2-vlan0" {
            leaks.push(format!("a tagged frame reached the same network: {g}"));
        }
    }
    if seen_b.iter().any(|g| g == "weftl2-untagged") {
        allowed += 1;
    }
    // Same network still talks at L3.
    let a_ip = a.ipv4("eth0").unwrap();
    let b_at = listen_all(&b.netns, Duration::from_millis(1500));
    probe(&a.netns, &b.ipv4("eth0").unwrap(), 1);
    let r_at = listen_all(&r.netns, Duration::from_millis(1500));
    probe(&a.netns, &r.ipv4("eth0").unwrap(), 2);
    probes += 2;
    let got_b = b_at.join().unwrap().unwrap();
    if got_b.len() == 3 {
        allowed += 1;
    }
    for g in r_at.join().unwrap().unwrap() {
        leaks.push(format!("red container reached: {g}"));
    }
    println!(
        "single-host L2 probes tried: {probes}, leaks found: {}, allowed paths reached: {allowed}/2",
        leaks.len()
    );
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    assert_eq!(allowed, 2, "blue saw {got_b:?}");

    // CHECK verifies the tag: put a blue port on red's VLAN by hand.
    assert!(blue.check(&host, &a, "eth0", &prev_a).unwrap().success);
    let a_port = names_for(&host, &a_ip);
    host.ovs
        .vsctl(&["set", "Port", &a_port, &format!("tag={red_tag}")])
        .unwrap();
    let out = blue.check(&host, &a, "eth0", &prev_a).unwrap();
    assert!(!out.success);
    assert_eq!(out.code(), Some(106), "{}", out.stdout);
    assert!(out.stdout.contains("VLAN"), "{}", out.stdout);
    // doctor names it, and the agent moves it back.
    let d = cluster::weftctl(&host, &blue, &["doctor"]).unwrap();
    assert!(!d.status.success());
    assert!(
        String::from_utf8_lossy(&d.stdout).contains(&a_port),
        "{}",
        String::from_utf8_lossy(&d.stdout)
    );
    let blue_tag = port_tag(&host, &names_for(&host, &b.ipv4("eth0").unwrap()));
    {
        let _agent = cluster::start_agent(&host, &blue, 10).unwrap();
        wait_for("the agent's VLAN repair", Duration::from_secs(5), || {
            port_tag(&host, &a_port) == blue_tag
        });
    }
    assert!(blue.check(&host, &a, "eth0", &prev_a).unwrap().success);
    assert!(cluster::weftctl(&host, &blue, &["doctor"])
        .unwrap()
        .status
        .success());
}

/// The host end whose container has `ip` (by the port's external_ids).
fn names_for(host: &Host, ip: &str) -> String {
    for p in host.weft_links().unwrap() {
        let ns = host
            .ovs
            .vsctl(&["get", "Port", &p, "external_ids:\"weft.netns\""])
            .unwrap();
        let ns = ns.trim().trim_matches('"');
        let out = std::process::Command::new("nsenter")
            .args([&format!("--net={ns}"), "ip", "-4", "-o", "addr"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/")) {
            return p;
        }
    }
    panic!("no port for {ip}");
}

fn table(host: &Host) -> String {
    host.netns
        .ok(&["nft", "list", "table", "inet", "weft-gateways"])
        .unwrap_or_default()
}

fn wait_for(what: &str, within: Duration, f: impl FnMut() -> bool) -> Duration {
    weft_harness::wait_for(what, within, Duration::from_millis(50), f)
}

#[test]
fn gateways_open_only_their_own_address_and_the_firewall_stays() {
    require_root();
    weft_harness::cleanup::init();
    let host = Host::new("isogw").unwrap();
    let h = &host.netns;
    let blue = with_gateway(&host, "blue", "10.61.0.0/24", "10.61.0.1", false);
    let red = with_gateway(&host, "red", "10.62.0.0/24", "10.62.0.1", false);
    let (a, a2, r) = (
        Container::new("isogwa").unwrap(),
        Container::new("isogwb").unwrap(),
        Container::new("isogwr").unwrap(),
    );
    attach(&blue, &host, &a);
    attach(&blue, &host, &a2);
    attach(&red, &host, &r);
    h.ok(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])
        .unwrap();
    let (a2_ip, r_ip) = (a2.ipv4("eth0").unwrap(), r.ipv4("eth0").unwrap());
    assert!(a.netns.ping("10.61.0.1"), "a container pings its gateway");

    let (mut probes, mut leaks, mut allowed, mut paths) = (0, Vec::new(), 0, 0);
    // ARP: the blue container asks for every other host address. The
    // asker is an unused address: the frames come from a made-up MAC, which
    // the gateway would otherwise learn for the container's own address.
    for (target, may) in [
        ("10.61.0.1", true),
        ("10.62.0.1", false),
        ("192.0.2.1", false),
    ] {
        let replies = rawsock::count_arp_replies(
            &a.netns,
            "eth0",
            octets(target),
            Duration::from_millis(600),
        );
        rawsock::send_arp(&a.netns, "eth0", octets("10.61.0.250"), octets(target)).unwrap();
        probes += 1;
        let n = replies.join().unwrap().unwrap();
        match (may, n) {
            (true, n) => {
                paths += 1;
                allowed += usize::from(n > 0);
            }
            (false, 0) => {}
            (false, n) => leaks.push(format!("{n} ARP replies for {target}")),
        }
    }
    // UDP, TCP and ICMP to every gateway, a host address, and both
    // networks' containers, judged where each would arrive.
    let on_host = listen_all(h, Duration::from_millis(12000));
    let on_r = listen_all(&r.netns, Duration::from_millis(12000));
    let on_a2 = listen_all(&a2.netns, Duration::from_millis(12000));
    for (i, dst) in ["10.61.0.1", "10.62.0.1", "192.0.2.1", &r_ip, &a2_ip]
        .into_iter()
        .enumerate()
    {
        probe(&a.netns, dst, i as u8 + 10);
        probes += 3;
    }
    // A static neighbour: red's container behind red's gateway MAC.
    let red_mac = mac_with_address(h, "10.62.0.1");
    a.netns.static_neighbour("eth0", &r_ip, &red_mac).unwrap();
    probe(&a.netns, &r_ip, 20);
    probes += 3;
    a.netns
        .ok(&["ip", "route", "del", &format!("{r_ip}/32")])
        .unwrap();
    let host_got = on_host.join().unwrap().unwrap();
    // UDP and TCP payloads name their destination, ICMP is reported by it.
    let to_own = |g: &String| g.contains("weft-probe-10-10.61.0.1") || g.ends_with("to 10.61.0.1");
    for g in host_got.iter().filter(|g| !to_own(g)) {
        leaks.push(format!("host received {g}"));
    }
    let own = host_got.iter().filter(|g| to_own(g)).count();
    paths += 1;
    allowed += usize::from(own == 3);
    for g in on_r.join().unwrap().unwrap() {
        leaks.push(format!("red container received {g}"));
    }
    let same = on_a2.join().unwrap().unwrap();
    paths += 1;
    allowed += usize::from(same.len() == 3);
    println!(
        "gateway probes tried: {probes}, leaks found: {}, allowed paths reached: {allowed}/{paths}",
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "leaks:\n{}\nruleset:\n{}",
        leaks.join("\n"),
        table(&host)
    );
    assert_eq!(
        allowed, paths,
        "own gateway: {host_got:?}, same network: {same:?}"
    );

    // The firewall: one table, rebuilt by the agent within moments of a
    // flush and by the next ADD; doctor says when it is missing.
    // Containers of the steps below live to the end, so no veth vanishes
    // while the last step counts them.
    let mut kept = Vec::new();
    assert!(table(&host).contains("chain forward"));
    let doctor = |host: &Host| cluster::weftctl(host, &blue, &["doctor"]).unwrap();
    assert!(
        doctor(&host).status.success(),
        "{}",
        String::from_utf8_lossy(&doctor(&host).stdout)
    );
    h.ok(&["nft", "flush", "ruleset"]).unwrap();
    let d = doctor(&host);
    assert!(
        !d.status.success(),
        "{}",
        String::from_utf8_lossy(&d.stdout)
    );
    assert!(String::from_utf8_lossy(&d.stdout).contains("gateway firewall"));
    {
        let _agent = cluster::start_agent(&host, &blue, 10).unwrap();
        let took = wait_for("the agent's repair", Duration::from_secs(5), || {
            table(&host).contains("chain forward")
        });
        // Flushed again while it runs: it hears of it at once.
        h.ok(&["nft", "flush", "ruleset"]).unwrap();
        let again = wait_for("the agent's second repair", Duration::from_secs(5), || {
            // The host-end rule is the netdev datapath's only.
            table(&host).contains("chain forward")
                && (weft_harness::ovs::kernel_datapath()
                    || h.ok(&["nft", "list", "table", "inet", "weft-hostends"])
                        .is_ok())
        });
        println!("agent put the firewall back in {took:?} at start, {again:?} after a flush");
    }
    assert!(doctor(&host).status.success());
    h.ok(&["nft", "flush", "ruleset"]).unwrap();
    attach(&blue, &host, keep(&mut kept, "isogwc"));
    assert!(
        table(&host).contains("chain forward"),
        "the next ADD rebuilt it"
    );

    // A gateway moved to another VLAN by hand is moved back by the next ADD.
    let blue_gw = link_with_address(h, "10.61.0.1");
    let blue_tag = port_tag(&host, &blue_gw).unwrap();
    let red_gw = link_with_address(h, "10.62.0.1");
    host.ovs
        .vsctl(&[
            "set",
            "Port",
            &blue_gw,
            &format!("tag={}", port_tag(&host, &red_gw).unwrap()),
        ])
        .unwrap();
    attach(&blue, &host, keep(&mut kept, "isogwh"));
    assert_eq!(port_tag(&host, &blue_gw), Some(blue_tag));

    // ipMasq follows the config on the next ADD, both ways.
    let masq = with_gateway(&host, "blue", "10.61.0.0/24", "10.61.0.1", true);
    attach(&masq, &host, keep(&mut kept, "isogwd"));
    assert!(
        table(&host).contains("ip saddr 10.61.0.0/24"),
        "{}",
        table(&host)
    );
    attach(&blue, &host, keep(&mut kept, "isogwe"));
    assert!(!table(&host).contains("masquerade"), "{}", table(&host));

    // nft missing at one ADD: a clear error and nothing half-made; the next
    // ADD, with nft, puts the table back.
    h.ok(&["nft", "flush", "ruleset"]).unwrap();
    let before = host.weft_links().unwrap().len();
    let c = Container::new("isogwf").unwrap();
    let mut conf = blue.conflist["plugins"][0].clone();
    conf["name"] = json!("blue");
    conf["cniVersion"] = json!("1.0.0");
    let call = Call {
        command: "ADD",
        container_id: &c.id,
        netns: Some(c.path()),
        ifname: "eth0",
        args: None,
    };
    let mut env = call.env();
    env.push(("PATH", "/nonexistent".to_string()));
    let out = runtime::exec_raw(
        h,
        &runtime::plugin_bin("weft").unwrap(),
        &env,
        conf.to_string().as_bytes(),
    )
    .unwrap();
    assert!(!out.success);
    assert_eq!(out.code(), Some(108), "{}", out.stdout);
    assert!(out.stdout.contains("nft"), "{}", out.stdout);
    assert_eq!(
        host.weft_links().unwrap().len(),
        before,
        "a veth was left behind"
    );
    attach(&blue, &host, &c);
    assert!(table(&host).contains("chain forward"));
    assert!(!a.netns.ping(&r_ip), "blue reached red after the repairs");
}

/// The MAC of the link in `ns` that holds `ip`.
fn mac_with_address(ns: &Netns, ip: &str) -> String {
    ns.link_with_address(ip).unwrap().1
}

/// The name of the link in `ns` that holds `ip`.
fn link_with_address(ns: &Netns, ip: &str) -> String {
    ns.link_with_address(ip).unwrap().0
}

fn keep<'a>(kept: &'a mut Vec<Container>, label: &str) -> &'a Container {
    kept.push(Container::new(label).unwrap());
    kept.last().unwrap()
}
