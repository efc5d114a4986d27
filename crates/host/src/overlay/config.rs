//! The multi-host keys of weft's config: `etcd`, `tunnel`, `vni`, `node`.
//! Without `etcd`, weft runs on one host and none of this applies.

use std::net::IpAddr;

use serde_json::Value;
use weft_cni::env::valid_ifname;
use weft_cni::{Error, Result};
use weft_store::config::{parse_etcd, Etcd};

/// VNIs double as the network's VLAN tag on every host's bridge, so they
/// live in the VLAN range.
pub use crate::vlan::MAX_VNI;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    Vxlan,
    Geneve,
    Gre,
}

impl TunnelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
            TunnelKind::Gre => "gre",
        }
    }

    /// Bytes of encapsulation over an IPv4 underlay: outer IP, UDP or GRE
    /// header with key, the tunnel header and the inner Ethernet header.
    pub fn overhead(self, ipv6_underlay: bool) -> u32 {
        let base = match self {
            TunnelKind::Vxlan | TunnelKind::Geneve => 50,
            TunnelKind::Gre => 42,
        };
        base + if ipv6_underlay { 20 } else { 0 }
    }

    pub fn default_port(self) -> Option<u16> {
        match self {
            TunnelKind::Vxlan => Some(4789),
            TunnelKind::Geneve => Some(6081),
            TunnelKind::Gre => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub etcd: Etcd,
    pub tunnel: TunnelKind,
    /// UDP port for VXLAN and Geneve; None for GRE.
    pub port: Option<u16>,
    /// A fixed VNI; None means etcd allocates one on first use.
    pub vni: Option<u32>,
    pub node: String,
    pub underlay_interface: Option<String>,
    pub underlay_ip: Option<IpAddr>,
}

fn str_field<'a>(v: &'a Value, key: &str, field: &str) -> Result<Option<&'a str>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::config(format!("{field} must be a string"))),
    }
}

impl Overlay {
    /// None when the config has no `etcd`: a single-host network.
    pub fn parse(raw: &Value, hostname: &str) -> Result<Option<Self>> {
        if matches!(raw.get("etcd"), None | Some(Value::Null)) {
            for key in ["tunnel", "vni", "node"] {
                if !matches!(raw.get(key), None | Some(Value::Null)) {
                    return Err(Error::config(format!(
                        "{key} needs etcd: hosts find each other through it"
                    )));
                }
            }
            return Ok(None);
        }
        let etcd = parse_etcd(raw.get("etcd"), "")?;

        let empty = Value::Object(Default::default());
        let tunnel_v = match raw.get("tunnel") {
            None | Some(Value::Null) => &empty,
            Some(t) if t.is_object() => t,
            Some(_) => return Err(Error::config("tunnel must be an object")),
        };
        let tunnel = match str_field(tunnel_v, "type", "tunnel.type")?.unwrap_or("vxlan") {
            "vxlan" => TunnelKind::Vxlan,
            "geneve" => TunnelKind::Geneve,
            "gre" => TunnelKind::Gre,
            other => {
                return Err(Error::config(format!(
                    "tunnel.type {other:?} must be one of vxlan, geneve, gre"
                )))
            }
        };
        let port = match tunnel_v.get("port") {
            None | Some(Value::Null) => tunnel.default_port(),
            Some(_) if tunnel == TunnelKind::Gre => {
                return Err(Error::config("tunnel.port does not apply to gre"))
            }
            Some(p) => Some(
                p.as_u64()
                    .filter(|p| (1..=65535).contains(p))
                    .map(|p| p as u16)
                    .ok_or_else(|| {
                        Error::config(format!("tunnel.port {p} must be from 1 to 65535"))
                    })?,
            ),
        };
        let vni = match raw.get("vni") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|v| (1..=MAX_VNI as u64).contains(v))
                    .map(|v| v as u32)
                    .ok_or_else(|| {
                        Error::config(format!(
                            "vni {v} must be from 1 to {MAX_VNI} (it is also the network's VLAN tag on each host)"
                        ))
                    })?,
            ),
        };

        let node_v = match raw.get("node") {
            None | Some(Value::Null) => &empty,
            Some(n) if n.is_object() => n,
            Some(_) => return Err(Error::config("node must be an object")),
        };
        let node = str_field(node_v, "name", "node.name")?
            .unwrap_or(hostname)
            .to_string();
        if !weft_cni::config::valid_network_name(&node) {
            return Err(Error::config(format!(
                "node.name {node:?} must hold only letters, digits, '_', '.' and '-'"
            )));
        }
        let underlay_interface =
            str_field(node_v, "underlayInterface", "node.underlayInterface")?.map(String::from);
        if let Some(i) = &underlay_interface {
            valid_ifname(i)
                .map_err(|why| Error::config(format!("node.underlayInterface {i:?} {why}")))?;
        }
        let underlay_ip = str_field(node_v, "underlayIP", "node.underlayIP")?
            .map(|s| {
                s.parse::<IpAddr>().map_err(|_| {
                    Error::config(format!("node.underlayIP {s:?} is not an IP address"))
                })
            })
            .transpose()?;
        if underlay_ip.is_some() && underlay_interface.is_some() {
            return Err(Error::config(
                "node: give underlayInterface or underlayIP, not both",
            ));
        }
        Ok(Some(Overlay {
            etcd,
            tunnel,
            port,
            vni,
            node,
            underlay_interface,
            underlay_ip,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(extra: Value) -> Result<Option<Overlay>> {
        let mut doc = json!({"etcd": {"endpoints": ["http://10.0.0.1:2379"]}});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        Overlay::parse(&doc, "h1")
    }

    #[test]
    fn defaults() {
        let o = parse(json!({})).unwrap().unwrap();
        assert_eq!(o.tunnel, TunnelKind::Vxlan);
        assert_eq!(o.port, Some(4789));
        assert_eq!(o.vni, None);
        assert_eq!(o.node, "h1");
        let g = parse(json!({"tunnel": {"type": "geneve"}}))
            .unwrap()
            .unwrap();
        assert_eq!(g.port, Some(6081));
        let gre = parse(json!({"tunnel": {"type": "gre"}})).unwrap().unwrap();
        assert_eq!(gre.port, None);
    }

    #[test]
    fn no_etcd_is_single_host_unless_overlay_keys_given() {
        assert_eq!(Overlay::parse(&json!({}), "h").unwrap(), None);
        let e = Overlay::parse(&json!({"vni": 5}), "h").unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("vni"));
    }

    #[test]
    fn overheads() {
        assert_eq!(1500 - TunnelKind::Vxlan.overhead(false), 1450);
        assert_eq!(1500 - TunnelKind::Geneve.overhead(true), 1430);
        assert_eq!(1500 - TunnelKind::Gre.overhead(false), 1458);
    }

    #[test]
    fn bad_values_are_code_7_and_name_the_field() {
        for (extra, field) in [
            (json!({"etcd": {"endpoints": []}}), "etcd.endpoints"),
            (json!({"tunnel": {"type": "ipip"}}), "tunnel.type"),
            (json!({"tunnel": "vxlan"}), "tunnel"),
            (json!({"tunnel": {"port": 0}}), "tunnel.port"),
            (json!({"tunnel": {"type": "gre", "port": 1}}), "tunnel.port"),
            (json!({"vni": 0}), "vni"),
            (json!({"vni": 5000}), "vni"),
            (json!({"vni": 4095}), "vni"),
            (json!({"vni": "7"}), "vni"),
            (json!({"node": {"name": "a/b"}}), "node.name"),
            (json!({"node": {"underlayIP": "x"}}), "node.underlayIP"),
            (
                json!({"node": {"underlayInterface": "much-too-long-name"}}),
                "node.underlayInterface",
            ),
            (
                json!({"node": {"underlayIP": "10.0.0.1", "underlayInterface": "eth0"}}),
                "node",
            ),
        ] {
            let e = parse(extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(e.msg.contains(field), "{extra}: {}", e.msg);
        }
    }
}
