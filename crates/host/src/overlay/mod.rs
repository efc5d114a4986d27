//! Multi-host: the registry in etcd, tunnels to every peer, the underlay
//! address, VNIs. Everything here is a no-op for a config without `etcd`.

pub mod config;
pub mod registry;
pub mod tunnels;
pub mod underlay;
pub mod vnis;

use std::collections::HashMap;

use weft_cni::Result;
use weft_store::etcd::EtcdStore;

use crate::config::{Config, DEFAULT_MTU};
use crate::link::Netlink;
use crate::ovs::Ovs;
use registry::{NodeRecord, View};
use underlay::Underlay;

/// The container MTU: `mtu` when set, else the underlay's minus the
/// tunnel's overhead, else (one host) [`DEFAULT_MTU`].
pub fn mtu(cfg: &Config, underlay: Option<&Underlay>) -> u32 {
    match (cfg.mtu, &cfg.overlay, underlay) {
        (Some(m), _, _) => m,
        (None, Some(o), Some(u)) => u.mtu.saturating_sub(o.tunnel.overhead(u.ip.is_ipv6())),
        _ => DEFAULT_MTU,
    }
}

/// The config's MTU, detecting the underlay when it depends on it.
pub fn effective_mtu(cfg: &Config, nl: &Netlink) -> Result<u32> {
    match (&cfg.overlay, cfg.mtu) {
        (Some(o), None) => Ok(mtu(cfg, Some(&underlay::detect(nl, o)?))),
        _ => Ok(mtu(cfg, None)),
    }
}

/// Registers this host and its membership of the network where missing and
/// returns the network's VNI and live peers.
pub fn join(cfg: &Config, o: &config::Overlay, u: &Underlay) -> Result<View> {
    let mut store = EtcdStore::connect(&o.etcd)?;
    let me = NodeRecord {
        name: o.node.clone(),
        ip: u.ip,
    };
    // Only asked for a network the registry has no record of.
    let on_bridge = || match Ovs::connect(&cfg.ovsdb_socket).and_then(|mut ovs| ovs.port_tags(&[]))
    {
        Ok(ports) => vnis::on_bridge(&ports),
        Err(e) => {
            tracing::warn!(error = %e.msg, "cannot read this bridge's VLANs; choosing a VNI without them");
            HashMap::new()
        }
    };
    registry::join_with(&mut store, &cfg.network, o, &me, on_bridge)
}

/// Brings the network's tunnel ports in line with `view`, given the ones
/// OVS has. Returns how many ports changed.
pub fn reconcile(
    ovs: &mut Ovs,
    bridge: &str,
    net: &str,
    view: &View,
    existing: &[tunnels::Existing],
    prune: tunnels::Prune,
) -> Result<usize> {
    let want = tunnels::desired(net, &view.network, &view.peers);
    let mut plan = tunnels::plan_pruning(&want, existing, prune);
    for _ in 0..3 {
        if plan.is_empty() {
            return Ok(0);
        }
        let n = plan.add.len() + plan.remove.len();
        if ovs.change_ports(bridge, &plan.add, &plan.remove)? {
            prime_neighbours(&plan.add);
            tracing::info!(
                network = net,
                added = plan.add.len(),
                removed = plan.remove.len(),
                "tunnels reconciled"
            );
            return Ok(n);
        }
        // Another process changed the same ports first; plan again from what
        // is there now, but remove only ports `existing` had: one made since
        // may serve a peer newer than this view.
        plan = tunnels::plan_pruning(&want, &ovs.tunnel_ports(net)?, prune);
        plan.remove
            .retain(|uuid| existing.iter().any(|e| &e.uuid == uuid));
    }
    Ok(0)
}

/// Port 9 (discard): nothing answers but an ICMP error.
const DISCARD_PORT: u16 = 9;

/// OVS's userspace datapath drops a tunnel packet whose peer's underlay MAC
/// it has not resolved yet (the kernel datapath queues it instead), and an
/// ARP that is dropped is only retried a second later. One datagram to each
/// new peer makes this host resolve it now; OVS learns the answer from the
/// reply it forwards, so the first packet on a new path is not lost.
fn prime_neighbours(added: &[weft_ovsdb::plan::PortSpec]) {
    let peers = added
        .iter()
        .filter_map(|p| p.options.iter().find(|(k, _)| k == "remote_ip"))
        .filter_map(|(_, v)| v.parse::<std::net::IpAddr>().ok());
    let (mut v4, mut v6) = (None, None);
    for ip in peers {
        let (sock, any) = if ip.is_ipv6() {
            (&mut v6, "[::]:0")
        } else {
            (&mut v4, "0.0.0.0:0")
        };
        if sock.is_none() {
            *sock = std::net::UdpSocket::bind(any).ok();
        }
        if let Some(s) = sock {
            let _ = s.send_to(b"weft", (ip, DISCARD_PORT));
        }
    }
}
