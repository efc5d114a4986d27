//! The host's firewall for weft's gateways: one nftables table, `inet
//! weft-gateways`, for every gateway on the host, always replaced as a whole
//! from what the gateways' OVS ports record (their external_ids), so ADD,
//! `weftctl agent` and `weftctl doctor` all derive the same table.
//!
//! What it allows, and nothing else from a gateway port:
//! - forward: within a network; out of the host when the network has
//!   `ipMasq` (but not to the underlay's subnet unless `hostAccess`); replies;
//!   and connections a DNAT opened (portmap's published ports). Never from one
//!   weft network into another. A gateway the table does not know yet is
//!   shut, not open: the last rules drop every `wgw*` port.
//! - input: the gateway's own addresses (`fib daddr . iif type local`: the
//!   address must be on the port the packet came in on), IPv6 neighbour
//!   discovery, replies to the host's own connections; every host address
//!   only with `hostAccess`.
//!
//! The table carries an empty chain named after a hash of its rules. ADD
//! asks the kernel for that one chain (netlink, ~20 µs): present means the
//! table is exactly what these gateways need; absent (never installed, a
//! `nft flush ruleset`, a gateway changed) means rebuild it.

use std::fmt::Write as _;
use std::path::Path;

use ipnet::IpNet;
use weft_cni::error::Result;

use crate::ovs::{FoundPort, Ovs};
use crate::{ids, nft};

pub const TABLE: &str = "weft-gateways";
/// Held while the table is rebuilt (see [`nft::Lock`]).
pub const LOCK: &str = "/run/weft/nftables.lock";

/// One gateway's part of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRules {
    pub port: String,
    /// The gateway's addresses with their subnet's prefix.
    pub addresses: Vec<IpNet>,
    pub ip_masq: bool,
    pub host_access: bool,
    /// The underlay's subnets, kept from a network's containers unless
    /// `hostAccess`: etcd and the other hosts live there.
    pub underlay: Vec<IpNet>,
}

fn join_nets(nets: &[IpNet]) -> String {
    nets.iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn split_nets(s: Option<&str>) -> Vec<IpNet> {
    s.unwrap_or_default()
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl GatewayRules {
    /// The external_ids that record these rules on the gateway's port.
    pub fn to_ids(&self) -> Vec<(String, String)> {
        vec![
            (ids::KIND.into(), ids::GATEWAY.into()),
            (ids::ADDRESSES.into(), join_nets(&self.addresses)),
            (ids::IP_MASQ.into(), self.ip_masq.to_string()),
            (ids::HOST_ACCESS.into(), self.host_access.to_string()),
            (ids::UNDERLAY.into(), join_nets(&self.underlay)),
        ]
    }

    pub fn from_port(p: &FoundPort) -> Self {
        GatewayRules {
            port: p.name.clone(),
            addresses: split_nets(p.id(ids::ADDRESSES)),
            ip_masq: p.id(ids::IP_MASQ) == Some("true"),
            host_access: p.id(ids::HOST_ACCESS) == Some("true"),
            underlay: split_nets(p.id(ids::UNDERLAY)),
        }
    }
}

fn fam(n: &IpNet) -> &'static str {
    if n.addr().is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The rules for `gws`, without the marker chain. Sorted, so the same
/// gateways give the same text whatever order OVS listed them in.
fn body(gws: &[GatewayRules]) -> String {
    let mut gws = gws.to_vec();
    gws.sort_by(|a, b| a.port.cmp(&b.port));
    gws.dedup_by(|a, b| a.port == b.port);
    let mut s = String::new();
    s += "  chain forward {\n    type filter hook forward priority 0; policy accept;\n";
    s += "    ct status dnat accept\n";
    for g in &gws {
        let p = &g.port;
        let _ = writeln!(s, "    iifname \"{p}\" oifname \"{p}\" accept");
        if g.ip_masq {
            if !g.host_access {
                for u in &g.underlay {
                    let _ = writeln!(s, "    iifname \"{p}\" {} daddr {} drop", fam(u), u.trunc());
                }
            }
            let _ = writeln!(s, "    iifname \"{p}\" oifname != \"wgw*\" accept");
        }
        let _ = writeln!(s, "    oifname \"{p}\" ct state established,related accept");
    }
    s += "    iifname \"wgw*\" drop\n    oifname \"wgw*\" drop\n  }\n";
    s += "  chain input {\n    type filter hook input priority 0; policy accept;\n";
    s += "    iifname != \"wgw*\" accept\n    ct state established,related accept\n";
    s += "    fib daddr . iif type local accept\n";
    s += "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n";
    let open: Vec<String> = gws
        .iter()
        .filter(|g| g.host_access)
        .map(|g| format!("\"{}\"", g.port))
        .collect();
    if !open.is_empty() {
        let _ = writeln!(s, "    iifname {{ {} }} accept", open.join(", "));
    }
    s += "    drop\n  }\n";
    let masq: Vec<&GatewayRules> = gws.iter().filter(|g| g.ip_masq).collect();
    if !masq.is_empty() {
        s += "  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n";
        for g in masq {
            for n in &g.addresses {
                let (f, n) = (fam(n), n.trunc());
                let _ = writeln!(
                    s,
                    "    {f} saddr {n} {f} daddr != {n} oifname != \"{}\" masquerade",
                    g.port
                );
            }
        }
        s += "  }\n";
    }
    s
}

/// FNV-1a: stable across builds, so weft and weftctl of one release agree.
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The name of the empty chain that says which rules the table holds.
pub fn marker(gws: &[GatewayRules]) -> String {
    format!("v{:016x}", fnv64(&body(gws)))
}

/// The whole table for `gws`, replacing any earlier one; it also removes the
/// per-network tables (`inet wgw…`) earlier weft versions made.
pub fn script(gws: &[GatewayRules]) -> String {
    let mut s = String::new();
    for g in gws {
        s += &nft::drop_table(&g.port);
    }
    s += &nft::drop_table(TABLE);
    let _ = write!(
        s,
        "table inet {TABLE} {{\n  chain {} {{\n  }}\n{}}}\n",
        marker(gws),
        body(gws)
    );
    s
}

/// Is the table there with exactly the rules `gws` need?
pub fn current(gws: &[GatewayRules]) -> Result<bool> {
    nft::chain_exists(TABLE, &marker(gws))
}

/// Every gateway OVS has on this host, as rules.
pub fn from_ovs(ovs: &mut Ovs) -> Result<Vec<GatewayRules>> {
    Ok(ovs
        .find_tagged(&[(ids::KIND, ids::GATEWAY)])?
        .iter()
        .map(GatewayRules::from_port)
        .collect())
}

/// Makes the table match the gateways OVS records, under the lock so two
/// writers cannot each install a view without the other's gateway. True
/// when it had to be (re)installed.
pub fn sync(ovs: &mut Ovs) -> Result<bool> {
    let _lock = nft::Lock::take(Path::new(LOCK))?;
    let gws = from_ovs(ovs)?;
    if gws.is_empty() || current(&gws)? {
        return Ok(false);
    }
    nft::run(&script(&gws))?;
    tracing::info!(gateways = gws.len(), "gateway firewall installed");
    Ok(true)
}

/// For ADD: `known` are the gateways the attach transaction saw, with this
/// network's as it must be now. The common case costs one netlink question;
/// otherwise [`sync`] rebuilds from OVS, which has this gateway's row.
pub fn ensure(ovs: &mut Ovs, known: &[GatewayRules], own: &GatewayRules) -> Result<()> {
    let mut gws: Vec<GatewayRules> = known
        .iter()
        .filter(|g| g.port != own.port)
        .cloned()
        .collect();
    gws.push(own.clone());
    if current(&gws)? {
        return Ok(());
    }
    sync(ovs)?;
    Ok(())
}

/// Removes the table (for `weftctl cleanup`).
pub fn remove() -> Result<()> {
    nft::remove_table(TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(port: &str, masq: bool, open: bool) -> GatewayRules {
        GatewayRules {
            port: port.into(),
            addresses: vec![
                "10.50.0.1/16".parse().unwrap(),
                "fd00::1/64".parse().unwrap(),
            ],
            ip_masq: masq,
            host_access: open,
            underlay: vec!["192.168.7.2/24".parse().unwrap()],
        }
    }

    #[test]
    fn networks_never_forward_into_each_other() {
        let s = script(&[gw("wgwa", false, false), gw("wgwb", true, false)]);
        assert!(s.contains("iifname \"wgwa\" oifname \"wgwa\" accept"));
        // Only a masquerading network goes out, and never into a wgw port.
        assert!(!s.contains("iifname \"wgwa\" oifname != \"wgw*\" accept"));
        assert!(s.contains("iifname \"wgwb\" oifname != \"wgw*\" accept"));
        assert!(s.contains("iifname \"wgwb\" ip daddr 192.168.7.0/24 drop"));
        let tail = s.find("iifname \"wgw*\" drop").unwrap();
        assert!(
            s.find("oifname \"wgwb\" ct state established,related accept")
                .unwrap()
                < tail
        );
        assert!(s.contains(
            "ip saddr 10.50.0.0/16 ip daddr != 10.50.0.0/16 oifname != \"wgwb\" masquerade"
        ));
        assert!(!s.contains("oifname != \"wgwa\" masquerade"));
    }

    #[test]
    fn host_access_opens_input_and_the_underlay() {
        let shut = script(&[gw("wgwa", true, false)]);
        assert!(!shut.contains("iifname { \"wgwa\" } accept"));
        assert!(shut.contains("fib daddr . iif type local accept\n"));
        let open = script(&[gw("wgwa", true, true)]);
        assert!(open.contains("iifname { \"wgwa\" } accept"));
        assert!(!open.contains("192.168.7.0/24 drop"));
    }

    #[test]
    fn marker_follows_the_rules_not_the_order() {
        let (a, b) = (gw("wgwa", false, false), gw("wgwb", true, false));
        assert_eq!(
            marker(&[a.clone(), b.clone()]),
            marker(&[b.clone(), a.clone()])
        );
        assert_ne!(marker(std::slice::from_ref(&a)), marker(&[a.clone(), b]));
        let mut masq = a.clone();
        masq.ip_masq = true;
        assert_ne!(marker(&[a]), marker(&[masq]));
    }

    #[test]
    fn ids_round_trip() {
        let g = gw("wgwa", true, false);
        let p = FoundPort {
            uuid: "u".into(),
            name: "wgwa".into(),
            external_ids: g.to_ids(),
            tag: None,
        };
        assert_eq!(GatewayRules::from_port(&p), g);
    }

    #[test]
    fn script_replaces_old_per_network_tables_and_itself() {
        let s = script(&[gw("wgwa", false, false)]);
        assert!(s.starts_with("table inet wgwa {}\ndelete table inet wgwa\n"));
        assert!(
            s.contains("delete table inet weft-gateways\ntable inet weft-gateways {\n  chain v")
        );
    }
}
