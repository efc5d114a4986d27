//! The network's gateway on this host: an internal OVS port on the network's
//! VLAN with the IPAM gateway address and a MAC derived from the network
//! name, so every host answers for the same address with the same MAC.
//!
//! The port is `protected` like the tunnels, so nothing it sends or receives
//! crosses a tunnel: each host's containers talk to their own host's gateway.
//! The port's external_ids record what the host firewall needs to know of it
//! ([`crate::firewall`]), which is in place before the port has an address.

use ipnet::IpNet;
use weft_cni::error::{self, Error, Result};
use weft_cni::result::IpConfig;
use weft_ovsdb::plan::PortSpec;

use crate::firewall::{self, GatewayRules};
use crate::ids::GATEWAY_FOR;
use crate::link::Netlink;
use crate::names;
use crate::ovs::{FoundPort, Ovs};

pub struct Gateway<'a> {
    pub network: &'a str,
    pub bridge: &'a str,
    pub tag: Option<u32>,
    pub mtu: u32,
    pub ip_masq: bool,
    pub host_access: bool,
    /// The underlay's subnets (overlay networks only).
    pub underlay: Vec<IpNet>,
}

/// The firewall's view of this gateway, for addresses `want`.
pub fn rules(g: &Gateway, want: &[IpNet]) -> GatewayRules {
    GatewayRules {
        port: names::gateway_port(g.network),
        addresses: want.to_vec(),
        ip_masq: g.ip_masq,
        host_access: g.host_access,
        underlay: g.underlay.clone(),
    }
}

fn external_ids(g: &Gateway, r: &GatewayRules) -> Vec<(String, String)> {
    let mut ids = vec![(GATEWAY_FOR.to_string(), g.network.to_string())];
    ids.extend(r.to_ids());
    ids
}

pub fn port_spec(g: &Gateway, r: &GatewayRules) -> PortSpec {
    PortSpec {
        name: names::gateway_port(g.network),
        kind: "internal".into(),
        tag: g.tag,
        protected: true,
        mac: Some(names::gateway_mac(g.network)),
        mtu: Some(g.mtu),
        external_ids: external_ids(g, r),
        ..Default::default()
    }
}

/// The gateway addresses (with the subnet's prefix) IPAM handed out with.
pub fn addresses(ips: &[IpConfig]) -> Vec<IpNet> {
    ips.iter()
        .filter_map(|ip| IpNet::new(ip.gateway?, ip.address.prefix_len()).ok())
        .collect()
}

fn gw_err(msg: impl Into<String>) -> Error {
    Error::new(error::GATEWAY_FAILURE, msg)
}

/// Only the gateway's own address is answered for on its port: Linux would
/// otherwise answer ARP for any of the host's addresses on any interface.
pub fn restrict_arp(port: &str) -> Result<()> {
    for (knob, value) in [
        ("arp_ignore", "1"),
        ("arp_filter", "1"),
        ("arp_announce", "2"),
    ] {
        let path = format!("/proc/sys/net/ipv4/conf/{port}/{knob}");
        std::fs::write(&path, value)
            .map_err(|e| gw_err(format!("cannot write {path}")).with_details(e))?;
    }
    Ok(())
}

fn enable_forwarding(v6: bool) -> Result<()> {
    let path = if v6 {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    } else {
        "/proc/sys/net/ipv4/ip_forward"
    };
    std::fs::write(path, "1").map_err(|e| gw_err(format!("cannot write {path}")).with_details(e))
}

/// Makes sure the gateway exists with its addresses, behind the firewall.
/// `found` is its port as the attach transaction saw it and `known` every
/// gateway it saw. Order matters: the port records its rules, the table is
/// in place, and only then does the port get an address and forwarding.
/// With all in place this costs two netlink questions.
pub fn ensure(
    nl: &Netlink,
    ovs: &mut Ovs,
    g: &Gateway,
    found: Option<&FoundPort>,
    known: &[GatewayRules],
    ips: &[IpConfig],
) -> Result<()> {
    let want = addresses(ips);
    if want.is_empty() {
        return Err(Error::config(
            "gateway: true needs IPAM to return a gateway (set it in the IPAM range)",
        ));
    }
    let r = rules(g, &want);
    let spec = port_spec(g, &r);
    match found {
        // Losing the race to another ADD is fine: the port is then there.
        None => {
            ovs.change_ports(g.bridge, std::slice::from_ref(&spec), &[])?;
        }
        // A changed ipMasq or hostAccess, or a port an older weft made.
        Some(p)
            if !spec
                .external_ids
                .iter()
                .all(|kv| p.external_ids.contains(kv)) =>
        {
            ovs.set_external_ids(&spec.name, &spec.external_ids)?;
        }
        Some(_) => {}
    }
    // A tag changed by hand (or by an older weft) would put the gateway in
    // another network.
    if let (Some(p), Some(t)) = (found, g.tag) {
        if p.tag != Some(t) {
            tracing::warn!(port = %spec.name, have = ?p.tag, want = t, "gateway on the wrong VLAN; moving it");
            ovs.set_port_tag(&spec.name, t)?;
        }
    }
    firewall::ensure(ovs, known, &r)?;
    let link = nl
        .link(nl.host(), &spec.name)?
        .ok_or_else(|| gw_err(format!("{} did not appear on the host", spec.name)))?;
    let have = nl.addresses(nl.host(), link.index)?;
    let missing: Vec<IpNet> = want.iter().filter(|a| !have.contains(a)).copied().collect();
    if found.is_some() && missing.is_empty() && link.up {
        return Ok(());
    }
    restrict_arp(&spec.name)?;
    nl.set_up(nl.host(), link.index)?;
    for a in missing {
        if let Err(e) = nl.add_address(nl.host(), link.index, a) {
            // Another ADD may have added it a moment ago.
            if !nl.addresses(nl.host(), link.index)?.contains(&a) {
                return Err(e);
            }
        }
    }
    for v6 in [false, true] {
        if want.iter().any(|a| a.addr().is_ipv6() == v6) {
            enable_forwarding(v6)?;
        }
    }
    tracing::info!(port = %spec.name, addresses = ?want, "gateway set up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_protected_internal_with_stable_mac() {
        let g = Gateway {
            network: "blue",
            bridge: "br",
            tag: Some(3),
            mtu: 1450,
            ip_masq: false,
            host_access: false,
            underlay: vec![],
        };
        let s = port_spec(&g, &rules(&g, &[]));
        assert_eq!(s.kind, "internal");
        assert!(s.protected);
        assert_eq!(s.tag, Some(3));
        assert_eq!(s.mac, port_spec(&g, &rules(&g, &[])).mac);
        assert!(s
            .external_ids
            .contains(&(crate::ids::KIND.into(), crate::ids::GATEWAY.into())));
        let other = Gateway {
            network: "red",
            ..g
        };
        let o = port_spec(&other, &rules(&other, &[]));
        assert_ne!(s.mac, o.mac);
        assert_ne!(s.name, o.name);
    }

    #[test]
    fn addresses_take_the_subnet_prefix() {
        let ip = IpConfig {
            address: "10.244.1.7/16".parse().unwrap(),
            gateway: Some("10.244.0.1".parse().unwrap()),
            interface: None,
        };
        assert_eq!(
            addresses(&[ip]),
            vec!["10.244.0.1/16".parse::<IpNet>().unwrap()]
        );
    }
}
