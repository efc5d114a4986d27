//! The parts of a network config every plugin shares: name, version, type,
//! prevResult, runtimeConfig, args and the GC list. Plugin-specific keys stay
//! in `raw` for the plugin to deserialize into its own type.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::env::Mac;
use crate::error::{Error, Result};
use crate::result::CniResult;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<CniResult>,
    /// Static addresses from runtimeConfig `ips` and `args.cni.ips`.
    pub requested_ips: Vec<IpAddr>,
    pub requested_mac: Option<Mac>,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub raw: Value,
}

/// Network names become OVS external_ids and etcd keys, so keep them tame.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NetConf {
    pub fn parse(bytes: &[u8], cni_version: String) -> Result<Self> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::decode("network config on stdin is not valid JSON").with_details(e)
        })?;
        if !raw.is_object() {
            return Err(Error::decode(
                "network config on stdin is not a JSON object",
            ));
        }
        let name = str_field(&raw, "name")?;
        if !valid_network_name(&name) {
            return Err(Error::config(format!(
                "name {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            )));
        }
        let plugin_type = str_field(&raw, "type")?;
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v).map_err(|e| {
                Error::decode(format!("prevResult: {}", e.msg)).with_details(e.details)
            })?),
        };

        let mut requested_ips = Vec::new();
        let mut ip_lists = vec![
            raw.pointer("/runtimeConfig/ips"),
            raw.pointer("/args/cni/ips"),
        ];
        for list in ip_lists.drain(..).flatten() {
            let items = list
                .as_array()
                .ok_or_else(|| Error::config("runtimeConfig.ips / args.cni.ips must be a list"))?;
            for item in items {
                requested_ips.push(parse_ip_item(item)?);
            }
        }
        let requested_mac = match raw
            .pointer("/runtimeConfig/mac")
            .or(raw.pointer("/args/cni/mac"))
        {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                Some(Mac::parse(s).filter(Mac::is_unicast).ok_or_else(|| {
                    Error::config(format!(
                        "runtimeConfig.mac {s:?} is not a unicast MAC address"
                    ))
                })?)
            }
            Some(_) => return Err(Error::config("runtimeConfig.mac must be a string")),
        };
        let valid_attachments = match raw.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                Error::config("cni.dev/valid-attachments is malformed").with_details(e)
            })?),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            prev_result,
            requested_ips,
            requested_mac,
            valid_attachments,
            raw,
        })
    }
}

fn str_field(raw: &Value, key: &str) -> Result<String> {
    match raw.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(Error::config(format!("{key} is required"))),
        Some(_) => Err(Error::config(format!("{key} must be a string"))),
    }
}

/// runtimeConfig ips are CIDRs ("10.0.0.5/24"); bare addresses are accepted too.
fn parse_ip_item(item: &Value) -> Result<IpAddr> {
    let s = item
        .as_str()
        .ok_or_else(|| Error::config("runtimeConfig.ips entries must be strings"))?;
    let addr = s.split('/').next().unwrap_or(s);
    addr.parse().map_err(|_| {
        Error::config(format!(
            "runtimeConfig.ips entry {s:?} is not an IP address"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_fields_and_runtime_config() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"blue","type":"weft",
                 "runtimeConfig":{"ips":["10.0.0.9/24"],"mac":"0a:00:00:00:00:09"},
                 "args":{"cni":{"ips":["fd00::9"]}},
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
            "1.0.0".into(),
        )
        .unwrap();
        assert_eq!(c.requested_ips.len(), 2);
        assert_eq!(c.requested_mac.unwrap().to_string(), "0a:00:00:00:00:09");
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn bad_configs_have_codes() {
        assert_eq!(NetConf::parse(b"{", "1.0.0".into()).unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[]", "1.0.0".into()).unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"type":"weft"}"#, "1.0.0".into())
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"name":"a b","type":"weft"}"#, "1.0.0".into())
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(
                br#"{"name":"n","type":"weft","runtimeConfig":{"mac":"zz"}}"#,
                "1.0.0".into()
            )
            .unwrap_err()
            .code,
            7
        );
        assert_eq!(
            NetConf::parse(
                br#"{"name":"n","type":"weft","prevResult":{"ips":5}}"#,
                "1.0.0".into()
            )
            .unwrap_err()
            .code,
            6
        );
    }
}
