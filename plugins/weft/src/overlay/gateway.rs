//! The network's gateway on this host: an internal OVS port on the network's
//! VLAN with the IPAM gateway address and a MAC derived from the network
//! name, so every host answers for the same address with the same MAC.
//!
//! The port is `protected` like the tunnels, so nothing it sends or receives
//! crosses a tunnel: each host's containers talk to their own host's gateway.
//! An nftables table per network keeps networks from reaching each other
//! through the host and, with `ipMasq`, masquerades what leaves it.

use std::io::Write as _;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use weft_cni::error::{self, Error, Result};
use weft_cni::result::IpConfig;
use weft_ovsdb::plan::PortSpec;

use crate::link::Netlink;
use crate::names;
use crate::ovs::Ovs;

pub const GATEWAY_FOR: &str = "weft.gateway_for";

pub struct Gateway<'a> {
    pub network: &'a str,
    pub bridge: &'a str,
    pub tag: Option<u32>,
    pub mtu: u32,
    pub ip_masq: bool,
}

pub fn port_spec(g: &Gateway) -> PortSpec {
    PortSpec {
        name: names::gateway_port(g.network),
        kind: "internal".into(),
        tag: g.tag,
        protected: true,
        mac: Some(names::gateway_mac(g.network)),
        mtu: Some(g.mtu),
        external_ids: vec![(GATEWAY_FOR.into(), g.network.into())],
        ..Default::default()
    }
}

/// The gateway addresses (with the subnet's prefix) IPAM handed out with.
pub fn addresses(ips: &[IpConfig]) -> Vec<IpNet> {
    ips.iter()
        .filter_map(|ip| IpNet::new(ip.gateway?, ip.address.prefix_len()).ok())
        .collect()
}

/// The nftables table for one network's gateway, replaced as a whole so a
/// rerun is idempotent: the empty `table` line makes the `delete` safe when
/// it did not exist yet.
pub fn nft_script(port: &str, subnets: &[IpNet], ip_masq: bool) -> String {
    let table = format!("inet {port}");
    let mut s = format!("table {table} {{}}\ndelete table {table}\ntable {table} {{\n");
    s += "  chain forward {\n    type filter hook forward priority 0; policy accept;\n";
    s += &format!("    iifname \"{port}\" oifname \"wgw*\" oifname != \"{port}\" drop\n  }}\n");
    if ip_masq {
        s += "  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n";
        for n in subnets {
            let fam = if n.addr().is_ipv4() { "ip" } else { "ip6" };
            let n = n.trunc();
            s += &format!(
                "    {fam} saddr {n} {fam} daddr != {n} oifname != \"{port}\" masquerade\n"
            );
        }
        s += "  }\n";
    }
    s += "}\n";
    s
}

fn gw_err(msg: impl Into<String>) -> Error {
    Error::new(error::GATEWAY_FAILURE, msg)
}

/// Feeds a script to `nft -f -`.
pub(crate) fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| gw_err("cannot run nft (install nftables)").with_details(e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| gw_err("cannot feed nft").with_details(e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| gw_err("nft failed").with_details(e))?;
    if !out.status.success() {
        return Err(gw_err("nft refused the gateway rules")
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// Removes a network's nftables table; a missing one is fine.
pub fn remove_rules(port: &str) -> Result<()> {
    nft(&format!(
        "table inet {port} {{}}\ndelete table inet {port}\n"
    ))
}

fn enable_forwarding(v6: bool) -> Result<()> {
    let path = if v6 {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    } else {
        "/proc/sys/net/ipv4/ip_forward"
    };
    std::fs::write(path, "1").map_err(|e| gw_err(format!("cannot write {path}")).with_details(e))
}

/// Makes sure the gateway exists with its addresses. `exists` says whether
/// OVS already had the port (learned in the attach transaction); with the
/// port and its addresses in place this costs one netlink query.
pub fn ensure(
    nl: &Netlink,
    ovs: &mut Ovs,
    g: &Gateway,
    exists: bool,
    ips: &[IpConfig],
) -> Result<()> {
    let want = addresses(ips);
    if want.is_empty() {
        return Err(Error::config(
            "gateway: true needs IPAM to return a gateway (set it in the IPAM range)",
        ));
    }
    let spec = port_spec(g);
    if !exists {
        // Losing the race to another ADD is fine: the port is then there.
        ovs.change_ports(g.bridge, std::slice::from_ref(&spec), &[])?;
    }
    let link = nl
        .link(nl.host(), &spec.name)?
        .ok_or_else(|| gw_err(format!("{} did not appear on the host", spec.name)))?;
    let have = nl.addresses(nl.host(), link.index)?;
    let missing: Vec<IpNet> = want.iter().filter(|a| !have.contains(a)).copied().collect();
    if exists && missing.is_empty() && link.up {
        return Ok(());
    }
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
    nft(&nft_script(&spec.name, &want, g.ip_masq))?;
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
        };
        let s = port_spec(&g);
        assert_eq!(s.kind, "internal");
        assert!(s.protected);
        assert_eq!(s.tag, Some(3));
        assert_eq!(s.mac, port_spec(&g).mac);
        let other = Gateway {
            network: "red",
            ..g
        };
        assert_ne!(s.mac, port_spec(&other).mac);
        assert_ne!(s.name, port_spec(&other).name);
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

    #[test]
    fn nft_isolates_always_and_masquerades_on_request() {
        let nets = [
            "10.244.0.1/16".parse().unwrap(),
            "fd00::1/64".parse().unwrap(),
        ];
        let plain = nft_script("wgw1", &nets, false);
        assert!(plain.starts_with("table inet wgw1 {}\ndelete table inet wgw1\n"));
        assert!(plain.contains("iifname \"wgw1\" oifname \"wgw*\" oifname != \"wgw1\" drop"));
        assert!(!plain.contains("masquerade"));
        let masq = nft_script("wgw1", &nets, true);
        assert!(masq.contains("ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16"));
        assert!(masq.contains("ip6 saddr fd00::/64"));
    }
}
