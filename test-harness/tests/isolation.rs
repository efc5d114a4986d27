#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]
//! A hostile container against the host end of its own veth (netdev
//! datapath, what this machine runs): it must not be an interface of the
//! host. Every probe is judged where it would land — a socket on the host,
//! a socket behind the host's routing table, a packet socket in the
//! container for ARP replies — never by the sender's exit code.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use weft_harness::netns::Netns;
use weft_harness::rawsock;
use weft_harness::runtime::weft_network;
use weft_harness::{require_root, Attach, Container, Host};

const PORT: u16 = 9999;

/// Collects every datagram that reaches `0.0.0.0:PORT` in `ns` for `window`.
fn listen_udp(ns: &Netns, window: Duration) -> std::thread::JoinHandle<Result<Vec<String>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = rawsock::in_netns(ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push(format!(
                    "{} from {from}",
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
        }
        Ok(got)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    h
}

fn mac_of(ns: &Netns, link: &str) -> String {
    let v: Value =
        serde_json::from_str(&ns.ok(&["ip", "-j", "link", "show", "dev", link]).unwrap()).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

#[test]
fn host_end_is_a_wire_into_ovs_not_a_host_interface() {
    require_root();
    weft_harness::cleanup::init();
    let host = Host::new("iso").unwrap();
    let net = weft_network(&host, "blue", "1.0.0", "10.50.0.0/24");
    let (a, b) = (
        Container::new("isoa").unwrap(),
        Container::new("isob").unwrap(),
    );
    for c in [&a, &b] {
        net.add(&host, c, "eth0", &Attach::default())
            .unwrap()
            .unwrap_or_else(|o| panic!("ADD refused: {}", o.stdout));
    }
    let a_ip = a.ipv4("eth0").unwrap();
    let b_ip = b.ipv4("eth0").unwrap();
    assert!(a.netns.ping(&b_ip), "same network must still work");

    // Things on the host a container has no business reaching: an address
    // of the host's own, and a network behind the host's routing table.
    let h = &host.netns;
    h.ok(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])
        .unwrap();
    let far = Netns::new("isofar").unwrap();
    h.ok(&[
        "ip", "link", "add", "wtsfar", "type", "veth", "peer", "name", "eth0", "netns", &far.name,
    ])
    .unwrap();
    h.ok(&["ip", "addr", "add", "198.51.100.1/24", "dev", "wtsfar"])
        .unwrap();
    h.ok(&["ip", "link", "set", "wtsfar", "up"]).unwrap();
    far.ok(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"])
        .unwrap();
    far.ok(&["ip", "link", "set", "eth0", "up"]).unwrap();
    far.ok(&["ip", "route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    // procps (sysctl) is not among the packages dev.sh installs.
    h.ok(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .unwrap();

    let ends = host.weft_links().unwrap();
    assert_eq!(ends.len(), 2);
    let mut probes = 0;
    let mut leaks = Vec::new();

    // 1. ARP for the host's address: no host end may answer.
    let replies = rawsock::count_arp_replies(
        &a.netns,
        "eth0",
        octets("192.0.2.1"),
        Duration::from_millis(800),
    );
    for _ in 0..3 {
        rawsock::send_arp(&a.netns, "eth0", octets(&a_ip), octets("192.0.2.1")).unwrap();
        probes += 1;
    }
    let n = replies.join().unwrap().unwrap();
    if n != 0 {
        leaks.push(format!("{n} ARP replies for the host's 192.0.2.1"));
    }

    // 2. Static neighbour entries pointing at each host end's MAC, then UDP
    //    to the host's address and to the network behind it.
    let on_host = listen_udp(h, Duration::from_millis(1500));
    let behind = listen_udp(&far, Duration::from_millis(1500));
    for end in &ends {
        let mac = mac_of(h, end);
        for dst in ["192.0.2.1", "198.51.100.2"] {
            a.netns.static_neighbour("eth0", dst, &mac).unwrap();
            let payload = format!("weft-leak-{end}-{dst}");
            let _ = a.netns.exec(&[
                "bash",
                "-c",
                &format!("echo {payload} > /dev/udp/{dst}/{PORT}"),
            ]);
            probes += 1;
        }
    }
    for (what, got) in [
        ("the host", on_host.join().unwrap().unwrap()),
        ("behind the host", behind.join().unwrap().unwrap()),
    ] {
        for g in got {
            leaks.push(format!("UDP reached {what}: {g}"));
        }
    }

    // 3. IPv6: host ends carry no address at all, so nothing answers on
    //    them; ff02::1 is answered by the other container only.
    for end in &ends {
        let v6 = h
            .ok(&["ip", "-6", "-o", "addr", "show", "dev", end])
            .unwrap();
        probes += 1;
        if !v6.trim().is_empty() {
            leaks.push(format!("{end} has IPv6 addresses: {}", v6.trim()));
        }
    }
    let b_ll = b
        .netns
        .ok(&[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ])
        .unwrap();
    let ping = a
        .netns
        .exec(&[
            "ping",
            "-6",
            "-n",
            "-c",
            "3",
            "-i",
            "0.3",
            "-w",
            "3",
            "ff02::1%eth0",
        ])
        .unwrap();
    probes += 1;
    for line in String::from_utf8_lossy(&ping.stdout).lines() {
        let Some(from) = line
            .split(" from ")
            .nth(1)
            .and_then(|r| r.split('%').next())
        else {
            continue;
        };
        let own = a
            .netns
            .ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
        if !b_ll.contains(from) && !own.contains(from) {
            leaks.push(format!(
                "ff02::1 answered by {from}, not a container of the network"
            ));
        }
    }

    let found = leaks.len();
    if found != 0 {
        for end in &ends {
            leaks.push(format!(
                "{end}: {}\n{}",
                h.ok(&["ip", "-d", "link", "show", "dev", end])
                    .unwrap_or_default(),
                h.ok(&["tc", "-s", "filter", "show", "dev", end, "ingress"])
                    .unwrap_or_default()
            ));
        }
        leaks.push(h.ok(&["ip", "-s", "link"]).unwrap_or_default());
        leaks.push(
            host.ovs
                .appctl(&["fdb/show", "br-weft"])
                .unwrap_or_default(),
        );
    }
    println!("host-end probes tried: {probes}, leaks found: {found}");
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    // The door that must stay open: containers still reach each other.
    assert!(b.netns.ping(&a_ip));
    h.ok(&["ip", "link", "del", "wtsfar"]).unwrap();

    // One rule for all host ends, put back by the next ADD when flushed.
    let rule = |h: &Netns| {
        h.ok(&["nft", "list", "table", "inet", "weft-hostends"])
            .unwrap_or_default()
            .contains("iifname \"wft*\" drop")
    };
    if weft_harness::ovs::kernel_datapath() {
        // A kernel vport's frames never reach the IP stack: the probes
        // above found nothing without the rule, and weft makes none.
        assert!(
            !rule(h),
            "the host-end rule is for the netdev datapath only"
        );
        return;
    }
    assert!(rule(h));
    h.ok(&["nft", "flush", "ruleset"]).unwrap();
    let c = Container::new("isoc").unwrap();
    net.add(&host, &c, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    assert!(rule(h), "the next ADD did not put the host-end rule back");
}
