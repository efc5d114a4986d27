//! CNI results: one internal shape (the 1.x one), read from any version we speak,
//! written in the version the caller negotiated.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Added in 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// mtu, advmss, priority, table and scope were added in 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any version from 0.3.0 on; `ips[].version` is ignored
    /// because the address says the family.
    pub fn from_value(v: &Value) -> Result<Self> {
        serde_json::from_value(v.clone())
            .map_err(|e| Error::decode("result is not a CNI result").with_details(e))
    }

    /// The result in `version`'s shape, `cniVersion` included.
    pub fn to_json(&self, version: &str) -> Value {
        let v = Version::parse(version).unwrap_or(Version(1, 0, 0));
        let mut doc = serde_json::to_value(self).unwrap_or_default();
        if !v.has_1_1_fields() {
            if let Some(ifaces) = doc["interfaces"].as_array_mut() {
                ifaces
                    .iter_mut()
                    .for_each(|i| strip(i, &["mtu", "socketPath", "pciID"]));
            }
            if let Some(routes) = doc["routes"].as_array_mut() {
                routes
                    .iter_mut()
                    .for_each(|r| strip(r, &["mtu", "advmss", "priority", "table", "scope"]));
            }
        }
        if v.legacy_ips() {
            if let Some(ips) = doc["ips"].as_array_mut() {
                for (ip, parsed) in ips.iter_mut().zip(&self.ips) {
                    let family = if parsed.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    ip["version"] = family.into();
                }
            }
        }
        doc["cniVersion"] = version.into();
        doc
    }
}

fn strip(obj: &mut Value, keys: &[&str]) {
    if let Some(map) = obj.as_object_mut() {
        keys.iter().for_each(|k| {
            map.remove(*k);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1450),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    address: "10.0.0.5/24".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.0.1".parse().unwrap()),
                mtu: None,
                advmss: None,
                priority: None,
                table: Some(100),
                scope: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn legacy_versions_carry_ip_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let doc = sample().to_json(v);
            assert_eq!(doc["ips"][0]["version"], "4", "{v}");
            assert_eq!(doc["ips"][1]["version"], "6", "{v}");
            assert_eq!(doc["cniVersion"], v);
            assert!(doc["interfaces"][0].get("mtu").is_none());
            assert!(doc["routes"][0].get("table").is_none());
        }
    }

    #[test]
    fn v1_results_have_no_ip_version_and_1_1_keeps_new_fields() {
        let doc = sample().to_json("1.0.0");
        assert!(doc["ips"][0].get("version").is_none());
        assert!(doc["interfaces"][0].get("mtu").is_none());
        let doc = sample().to_json("1.1.0");
        assert_eq!(doc["interfaces"][0]["mtu"], 1450);
        assert_eq!(doc["routes"][0]["table"], 100);
        assert!(doc.get("dns").is_none());
    }

    #[test]
    fn reads_legacy_results() {
        let r = CniResult::from_value(&json!({
            "cniVersion": "0.3.1",
            "ips": [{"version": "4", "address": "10.1.2.3/16", "gateway": "10.1.0.1"}],
            "dns": {}
        }))
        .unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert!(CniResult::from_value(&json!({"ips": [{"address": "nope"}]})).is_err());
    }

    #[test]
    fn round_trip_every_version() {
        for v in crate::version::SUPPORTED {
            let back = CniResult::from_value(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
        }
    }
}
