#![allow(clippy::unwrap_used, clippy::panic)]
//! Bulk TCP between containers. In a test binary of its own so the userspace
//! datapath forwarding flat out never shares the CPU with other tests.

use weft_harness::runtime::{first_address, weft_network};
use weft_harness::{require_root, Attach, Container, Host};

/// With the netdev datapath TCP only works if the container computes its own
/// checksums; a transfer proves weft turned offload off.
#[test]
fn tcp_transfer_between_containers() {
    require_root();
    let host = Host::new("tcp").unwrap();
    let net = weft_network(&host, "tcp", "1.0.0", "10.79.0.0/24");
    let a = Container::new("ta").unwrap();
    let b = Container::new("tb").unwrap();
    net.add(&host, &a, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let rb = net
        .add(&host, &b, "eth0", &Attach::default())
        .unwrap()
        .unwrap();
    let ip_b = first_address(&rb).unwrap();
    let mut server = b
        .netns
        .command("iperf3")
        .unwrap()
        .args(["-s", "-1", "-B", &ip_b])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = a
        .netns
        .exec(&["timeout", "30", "iperf3", "-c", &ip_b, "-n", "20M", "-J"])
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The client's "received" figure is sampled before the server drains, so
    // check what was sent; a broken checksum path stalls the stream instead.
    let sent = doc["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received = doc["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        sent >= 20 * 1024 * 1024 && received > 0,
        "sent {sent}, received {received}"
    );
}
