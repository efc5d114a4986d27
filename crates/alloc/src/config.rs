//! weft-ipam's config, validated before anything talks to etcd. Every error
//! is code 7 and names the field, e.g. `ipam.ranges[0][1].gateway`.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;
use weft_cni::result::{Dns, Route};
use weft_cni::{Error, Result};

use crate::space::{to_u128, Range};
use weft_store::config::{parse_etcd, Etcd};

pub const DEFAULT_BLOCK_V4: u8 = 26;
pub const DEFAULT_BLOCK_V6: u8 = 122;

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: String,
    /// One address is handed out from each set (dual-stack: one v4, one v6).
    pub range_sets: Vec<Vec<Range>>,
    pub exclude: Vec<IpNet>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub block_v4: u8,
    pub block_v6: u8,
    pub node: String,
    pub etcd: Etcd,
    /// Where the node keeps its allocation hints (never the source of truth).
    pub data_dir: PathBuf,
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft/ipam";

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::config(format!("ipam.{field} {why}"))
}

fn opt_str<'a>(v: &'a Value, key: &str, field: &str) -> Result<Option<&'a str>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn parse_ip(s: &str, field: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| bad(field, format!("{s:?} is not an IP address")))
}

fn parse_range(v: &Value, field: &str) -> Result<Range> {
    let subnet_s = opt_str(v, "subnet", &format!("{field}.subnet"))?
        .ok_or_else(|| bad(&format!("{field}.subnet"), "is required"))?;
    let subnet: IpNet = subnet_s.parse().map_err(|_| {
        bad(
            &format!("{field}.subnet"),
            format!("{subnet_s:?} is not a CIDR"),
        )
    })?;
    let subnet = subnet.trunc();
    let v6 = subnet.addr().is_ipv6();
    if subnet.prefix_len() >= if v6 { 127 } else { 31 } {
        return Err(bad(
            &format!("{field}.subnet"),
            format!("{subnet} is too small to hold containers"),
        ));
    }
    let within = |ip: IpAddr, name: &str| -> Result<IpAddr> {
        if !subnet.contains(&ip) {
            return Err(bad(
                &format!("{field}.{name}"),
                format!("{ip} is outside subnet {subnet}"),
            ));
        }
        Ok(ip)
    };
    let net_first = to_u128(subnet.network());
    let default_start = crate::space::from_u128(net_first + 1, v6);
    let default_end = {
        let last = to_u128(subnet.broadcast());
        crate::space::from_u128(if v6 { last } else { last - 1 }, v6)
    };
    let start = match opt_str(v, "rangeStart", &format!("{field}.rangeStart"))? {
        Some(s) => within(parse_ip(s, &format!("{field}.rangeStart"))?, "rangeStart")?,
        None => default_start,
    };
    let end = match opt_str(v, "rangeEnd", &format!("{field}.rangeEnd"))? {
        Some(s) => within(parse_ip(s, &format!("{field}.rangeEnd"))?, "rangeEnd")?,
        None => default_end,
    };
    if to_u128(start) > to_u128(end) {
        return Err(bad(
            field,
            format!("rangeStart {start} is after rangeEnd {end}"),
        ));
    }
    // Like host-local: the first address is the gateway unless one is named.
    let gateway = match opt_str(v, "gateway", &format!("{field}.gateway"))? {
        Some(s) => within(parse_ip(s, &format!("{field}.gateway"))?, "gateway")?,
        None => default_start,
    };
    Ok(Range {
        subnet,
        start,
        end,
        gateway: Some(gateway),
    })
}

fn parse_ranges(v: Option<&Value>) -> Result<Vec<Vec<Range>>> {
    let sets = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad("ranges", "is required: a list of range sets"))?;
    if sets.is_empty() {
        return Err(bad("ranges", "must hold at least one range set"));
    }
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let items = set.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
            bad(
                &format!("ranges[{i}]"),
                "must be a non-empty list of ranges",
            )
        })?;
        let mut ranges = Vec::new();
        for (j, item) in items.iter().enumerate() {
            ranges.push(parse_range(item, &format!("ranges[{i}][{j}]"))?);
        }
        if ranges.iter().any(|r| r.is_v6() != ranges[0].is_v6()) {
            return Err(bad(
                &format!("ranges[{i}]"),
                "mixes IPv4 and IPv6; use one set per family",
            ));
        }
        out.push(ranges);
    }
    let flat: Vec<(String, &Range)> = out
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.iter()
                .enumerate()
                .map(move |(j, r)| (format!("ranges[{i}][{j}]"), r))
        })
        .collect();
    for (a, (na, ra)) in flat.iter().enumerate() {
        for (nb, rb) in &flat[a + 1..] {
            if ra.overlaps(rb) {
                return Err(bad(na, format!("overlaps ipam.{nb}")));
            }
        }
    }
    Ok(out)
}

fn parse_block(v: Option<&Value>, field: &str, default: u8, max: u8) -> Result<u8> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|b| (8..=max as u64).contains(b))
            .map(|b| b as u8)
            .ok_or_else(|| {
                bad(
                    field,
                    format!("{v} must be a prefix length from 8 to {max}"),
                )
            }),
    }
}

/// The `ipam` section as weft-ipam reads it under weft: the network's own
/// `etcd` and `node.name` serve IPAM too, unless `ipam` sets its own, so a
/// conflist says where etcd is once. `plugin` is the whole plugin config.
pub fn inherited(ipam: &Value, plugin: &Value) -> Value {
    let mut ipam = ipam.clone();
    if let Some(obj) = ipam.as_object_mut() {
        if !obj.contains_key("etcd") {
            if let Some(etcd) = plugin.get("etcd") {
                obj.insert("etcd".into(), etcd.clone());
            }
        }
        if !obj.contains_key("nodeName") {
            if let Some(name) = plugin.get("node").and_then(|n| n.get("name")) {
                obj.insert("nodeName".into(), name.clone());
            }
        }
    }
    ipam
}

impl IpamConfig {
    /// `hostname` is the default node name; passed in so this stays pure.
    pub fn parse(network: &str, ipam: &Value, hostname: &str) -> Result<Self> {
        if !ipam.is_object() {
            return Err(Error::config("ipam must be an object"));
        }
        let range_sets = parse_ranges(ipam.get("ranges"))?;
        let exclude = match ipam.get("exclude") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let s = e.as_str().unwrap_or_default();
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map(|n| n.trunc())
                        .map_err(|_| {
                            bad(
                                &format!("exclude[{i}]"),
                                format!("{e} is not a CIDR or address"),
                            )
                        })
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("exclude", "must be a list of CIDRs")),
        };
        for (i, set) in range_sets.iter().enumerate() {
            for (j, r) in set.iter().enumerate() {
                if !r.has_usable(&exclude) {
                    return Err(bad(
                        &format!("ranges[{i}][{j}]"),
                        "has no address left to hand out",
                    ));
                }
            }
        }
        let routes: Vec<Route> = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(r) => serde_json::from_value(r.clone())
                .map_err(|e| bad("routes", format!("is malformed: {e}")))?,
        };
        let dns: Dns = match ipam.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(d) => serde_json::from_value(d.clone())
                .map_err(|e| bad("dns", format!("is malformed: {e}")))?,
        };
        let block_v4 = parse_block(ipam.get("blockSize"), "blockSize", DEFAULT_BLOCK_V4, 32)?;
        let block_v6 = parse_block(
            ipam.get("blockSizeV6"),
            "blockSizeV6",
            DEFAULT_BLOCK_V6,
            128,
        )?;
        let node = opt_str(ipam, "nodeName", "nodeName")?
            .unwrap_or(hostname)
            .to_string();
        if !weft_cni::config::valid_network_name(&node) {
            return Err(bad(
                "nodeName",
                format!("{node:?} must hold only letters, digits, '_', '.' and '-'"),
            ));
        }
        let etcd = parse_etcd(ipam.get("etcd"), "ipam.")?;
        let data_dir =
            PathBuf::from(opt_str(ipam, "dataDir", "dataDir")?.unwrap_or(DEFAULT_DATA_DIR));
        // The runtime's working directory is nobody's promise.
        if !data_dir.is_absolute() {
            return Err(bad(
                "dataDir",
                format!("{} must be an absolute path", data_dir.display()),
            ));
        }
        Ok(IpamConfig {
            network: network.to_string(),
            range_sets,
            exclude,
            routes,
            dns,
            block_v4,
            block_v6,
            node,
            etcd,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ipam_inherits_etcd_and_node_name_unless_it_sets_its_own() {
        let plugin = json!({"etcd": {"endpoints": ["http://a:2379"]}, "node": {"name": "n1"}});
        let got = inherited(&json!({"type": "weft-ipam"}), &plugin);
        assert_eq!(got["etcd"], plugin["etcd"]);
        assert_eq!(got["nodeName"], "n1");
        let own = json!({"etcd": {"endpoints": ["http://b:2379"]}, "nodeName": "n2"});
        assert_eq!(inherited(&own, &plugin), own);
        assert_eq!(inherited(&json!({}), &json!({})), json!({}));
    }

    fn issue_example() -> Value {
        json!({"type": "weft-ipam",
               "ranges": [[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.255.200", "gateway": "10.244.0.1"}],
                          [{"subnet": "fd00:244::/64"}]],
               "exclude": ["10.244.7.0/24"], "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.244.0.2"]},
               "blockSize": 26, "nodeName": "host-a",
               "etcd": {"endpoints": ["https://127.0.0.1:2379"], "timeoutMs": 2000,
                        "tls": {"ca": "/etc/weft/ca.pem", "cert": "/etc/weft/client.pem", "key": "/etc/weft/client-key.pem"},
                        "username": "weft", "passwordFile": "/etc/weft/etcd-password"}})
    }

    #[test]
    fn the_issue_example_parses() {
        let c = IpamConfig::parse("blue", &issue_example(), "vm").unwrap();
        assert_eq!(c.range_sets.len(), 2);
        assert_eq!(
            c.range_sets[1][0].gateway,
            Some("fd00:244::1".parse().unwrap())
        );
        assert_eq!(c.node, "host-a");
        assert_eq!(c.block_v4, 26);
        assert_eq!(c.block_v6, 122);
        assert_eq!(c.exclude.len(), 1);
        assert_eq!(c.etcd.username.as_deref(), Some("weft"));
    }

    #[test]
    fn node_name_defaults_to_hostname() {
        let mut v = issue_example();
        v.as_object_mut().unwrap().remove("nodeName");
        assert_eq!(IpamConfig::parse("blue", &v, "vm").unwrap().node, "vm");
    }

    #[test]
    fn bad_configs_are_code_7_naming_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"ranges": null}), "ipam.ranges"),
            (json!({"ranges": []}), "ipam.ranges"),
            (json!({"ranges": [[]]}), "ipam.ranges[0]"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
                "ipam.ranges[0][0].subnet",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.1.0.1"}]]}),
                "ipam.ranges[0][0].gateway",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]]}),
                "ipam.ranges[0][0]",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.9"}]]}),
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]}),
                "overlaps ipam.ranges[1][0]",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "ipam.ranges[0]",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/30", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"}]]}),
                "no address left",
            ),
            (json!({"exclude": ["10.244.0.0/16"]}), "no address left"),
            (json!({"exclude": ["nope"]}), "ipam.exclude[0]"),
            (json!({"blockSize": 40}), "ipam.blockSize"),
            (json!({"nodeName": "bad name"}), "ipam.nodeName"),
            (json!({"etcd": null}), "ipam.etcd"),
            (json!({"etcd": {"endpoints": []}}), "ipam.etcd.endpoints"),
            (
                json!({"etcd": {"endpoints": ["127.0.0.1:2379"]}}),
                "ipam.etcd.endpoints[0]",
            ),
            (
                json!({"etcd": {"endpoints": ["http://x:1"], "timeoutMs": 0}}),
                "ipam.etcd.timeoutMs",
            ),
            (
                json!({"etcd": {"endpoints": ["http://x:1"], "tls": {"cert": "/a"}}}),
                "ipam.etcd.tls",
            ),
            (
                json!({"etcd": {"endpoints": ["http://x:1"], "username": "u"}}),
                "passwordFile",
            ),
            (json!({"routes": [{"dst": "nope"}]}), "ipam.routes"),
            (
                json!({"etcd": {"endpoints": ["https://a:1", "http://x:1"], "username": "u", "passwordFile": "/p"}}),
                "ipam.etcd.passwordFile",
            ),
            (
                json!({"etcd": {"endpoints": ["http://x:1"], "allowPasswordOverHttp": "yes"}}),
                "ipam.etcd.allowPasswordOverHttp",
            ),
            (json!({"dataDir": "var/lib/weft"}), "ipam.dataDir"),
        ];
        for (patch, field) in cases {
            let mut v = issue_example();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = IpamConfig::parse("blue", &v, "vm").unwrap_err();
            assert_eq!(e.code, 7, "{patch}");
            assert!(e.msg.contains(field), "{patch}: {}", e.msg);
        }
    }
}
