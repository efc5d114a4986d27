//! The underlay: a namespace with a bridge that every simulated host joins
//! through a veth, and where etcd runs. Addresses are 172.31.0.0/24, used
//! only inside namespaces the harness creates.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use crate::netns::Netns;

pub const FABRIC_IP: &str = "172.31.0.1";
/// The name of each host's end of its veth into the fabric.
pub const HOST_END: &str = "underlay0";
const FABRIC_MAC: &str = "02:77:66:00:00:01";
const PREFIX: u8 = 24;

pub struct Fabric {
    pub netns: Netns,
    next: AtomicU32,
    mtu: u32,
}

impl Fabric {
    pub fn new(label: &str) -> Result<Self> {
        Self::with_mtu(label, 1500)
    }

    /// An underlay whose links all have `mtu` (9000: jumbo frames).
    pub fn with_mtu(label: &str, mtu: u32) -> Result<Self> {
        let netns = Netns::new(&format!("{label}-fab"))?;
        // A fixed address: a Linux bridge otherwise takes its ports' lowest
        // MAC, so a host joining later can change it under the others' ARP
        // entries and cut them off from etcd until those expire.
        netns.ok(&[
            "ip", "link", "add", "fab0", "address", FABRIC_MAC, "type", "bridge",
        ])?;
        netns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{FABRIC_IP}/{PREFIX}"),
            "dev",
            "fab0",
        ])?;
        netns.ok(&["ip", "link", "set", "fab0", "up"])?;
        Ok(Fabric {
            netns,
            next: AtomicU32::new(10),
            mtu,
        })
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Plugs `ns` into the underlay as `underlay0` and returns its address.
    pub fn attach(&self, ns: &Netns) -> Result<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ip = format!("172.31.0.{n}");
        let (outer, inner) = (format!("fab{n}"), HOST_END);
        self.netns.ok(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", &ns.name,
        ])?;
        let mtu = self.mtu.to_string();
        self.netns.ok(&["ip", "link", "set", &outer, "mtu", &mtu])?;
        ns.ok(&["ip", "link", "set", inner, "mtu", &mtu])?;
        self.netns
            .ok(&["ip", "link", "set", &outer, "master", "fab0", "up"])?;
        // Complete checksums toward the host: a host whose underlay is in
        // OVS's userspace datapath cannot fill them in (as with real NICs
        // feeding a DPDK host, which compute them in hardware). The kernel
        // datapath can.
        if !crate::ovs::kernel_datapath() {
            self.netns.ok(&["ethtool", "-K", &outer, "tx", "off"])?;
        }
        ns.ok(&["ip", "addr", "add", &format!("{ip}/{PREFIX}"), "dev", inner])?;
        ns.ok(&["ip", "link", "set", inner, "up"])?;
        Ok(ip)
    }
}
