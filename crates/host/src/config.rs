//! weft's own config keys, validated into [`Config`] before any side effect.

use std::path::PathBuf;

use serde_json::Value;
use weft_cni::config::NetConf;
use weft_cni::env::valid_ifname;
use weft_cni::{Error, Result};

use crate::overlay::config::Overlay;

pub const DEFAULT_BRIDGE: &str = "br-weft";
pub const DEFAULT_OVSDB_SOCKET: &str = "/run/openvswitch/db.sock";
/// On one host (no `etcd`): leaves room for VXLAN over a 1500-byte link, so
/// the same containers fit once the network spans hosts.
pub const DEFAULT_MTU: u32 = 1450;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// `system` where the openvswitch kernel module is loaded, `netdev` elsewhere.
    Auto,
    System,
    Netdev,
}

impl Datapath {
    /// The datapath to create a bridge with.
    pub fn resolve(self, module_loaded: impl FnOnce() -> bool) -> DatapathType {
        match self {
            Datapath::System => DatapathType::System,
            Datapath::Netdev => DatapathType::Netdev,
            Datapath::Auto if module_loaded() => DatapathType::System,
            Datapath::Auto => DatapathType::Netdev,
        }
    }
}

/// The datapath a bridge runs on: OVSDB's `datapath_type`. weft makes
/// only these two; OVS's own default (an empty value) and any other type
/// are the kernel's as far as weft is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathType {
    System,
    Netdev,
}

impl DatapathType {
    pub fn from_ovsdb(datapath_type: &str) -> Self {
        if datapath_type == "netdev" {
            DatapathType::Netdev
        } else {
            DatapathType::System
        }
    }

    pub fn as_ovsdb(self) -> &'static str {
        match self {
            DatapathType::System => "system",
            DatapathType::Netdev => "netdev",
        }
    }
}

impl std::fmt::Display for DatapathType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_ovsdb())
    }
}

/// Is the openvswitch kernel module loaded? Asked of sysfs, which the kernel
/// populates for built-in and loaded modules alike.
pub fn kernel_datapath_available() -> bool {
    std::path::Path::new("/sys/module/openvswitch").exists()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub network: String,
    pub bridge: String,
    pub ovsdb_socket: PathBuf,
    pub datapath: Datapath,
    /// None: derived from the underlay (see [`crate::overlay::mtu`]).
    pub mtu: Option<u32>,
    pub overlay: Option<Overlay>,
    /// Serve the IPAM gateway address on this host's bridge.
    pub gateway: bool,
    /// Masquerade traffic leaving the network through the host.
    pub ip_masq: bool,
    /// Let containers reach every address of the host (not only their own
    /// gateway's) and the underlay's subnet.
    pub host_access: bool,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub ipam_type: String,
    /// The whole stdin config, handed to the IPAM plugin as the spec says.
    pub raw: Value,
}

fn opt_str<'a>(raw: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::config(format!("{key} must be a string"))),
    }
}

impl Config {
    pub fn from_netconf(conf: &NetConf) -> Result<Self> {
        let raw = &conf.raw;
        let bridge = opt_str(raw, "bridge")?
            .unwrap_or(DEFAULT_BRIDGE)
            .to_string();
        valid_ifname(&bridge).map_err(|why| Error::config(format!("bridge {bridge:?} {why}")))?;

        let ovsdb_socket =
            PathBuf::from(opt_str(raw, "ovsdbSocket")?.unwrap_or(DEFAULT_OVSDB_SOCKET));
        if !ovsdb_socket.is_absolute() {
            return Err(Error::config(format!(
                "ovsdbSocket {} must be an absolute path",
                ovsdb_socket.display()
            )));
        }

        let datapath = match opt_str(raw, "datapath")?.unwrap_or("auto") {
            "auto" => Datapath::Auto,
            "system" => Datapath::System,
            "netdev" => Datapath::Netdev,
            other => {
                return Err(Error::config(format!(
                    "datapath {other:?} must be one of auto, system, netdev"
                )))
            }
        };

        let mtu = match raw.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|m| (68..=65535).contains(m))
                    .map(|m| m as u32)
                    .ok_or_else(|| {
                        Error::config(format!("mtu {v} must be a whole number from 68 to 65535"))
                    })?,
            ),
        };
        let flag = |key: &str| -> Result<bool> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(Error::config(format!("{key} must be true or false"))),
            }
        };
        let gateway = flag("gateway")?;
        let ip_masq = flag("ipMasq")?;
        if ip_masq && !gateway {
            return Err(Error::config(
                "ipMasq needs gateway: true (traffic leaves through the host's gateway)",
            ));
        }
        let host_access = flag("hostAccess")?;
        if host_access && !gateway {
            return Err(Error::config(
                "hostAccess needs gateway: true (the host is reached through the gateway)",
            ));
        }
        let overlay = Overlay::parse(raw, &weft_store::hostname())?;

        let log_file = opt_str(raw, "logFile")?.map(PathBuf::from);
        let log_level = opt_str(raw, "logLevel")?.map(String::from);

        let ipam = match raw.get("ipam") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => {
                return Err(Error::config(
                    "ipam is required (for example {\"type\": \"host-local\", ...})",
                ))
            }
            Some(_) => return Err(Error::config("ipam must be an object")),
        };
        let ipam_type = match ipam.get("type") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Error::config("ipam.type is required and must be a string")),
        };

        Ok(Config {
            network: conf.name.clone(),
            bridge,
            ovsdb_socket,
            datapath,
            mtu,
            overlay,
            gateway,
            ip_masq,
            host_access,
            log_file,
            log_level,
            ipam_type,
            raw: raw.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(extra: Value) -> Result<Config> {
        let mut doc = json!({"cniVersion": "1.0.0", "name": "blue", "type": "weft",
                             "ipam": {"type": "host-local"}});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let conf = NetConf::parse(doc.to_string().as_bytes(), "1.0.0".into())?;
        Config::from_netconf(&conf)
    }

    #[test]
    fn defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.bridge, "br-weft");
        assert_eq!(c.mtu, None);
        assert!(c.overlay.is_none() && !c.gateway && !c.ip_masq && !c.host_access);
        assert_eq!(c.datapath, Datapath::Auto);
        assert_eq!(c.ipam_type, "host-local");
    }

    #[test]
    fn bad_values_are_code_7_and_name_the_field() {
        for (extra, field) in [
            (json!({"mtu": 67}), "mtu"),
            (json!({"mtu": 70000}), "mtu"),
            (json!({"mtu": "1500"}), "mtu"),
            (json!({"datapath": "dpdk"}), "datapath"),
            (json!({"bridge": "a-very-long-bridge-name"}), "bridge"),
            (json!({"bridge": 5}), "bridge"),
            (json!({"ovsdbSocket": "relative.sock"}), "ovsdbSocket"),
            (json!({"ipam": null}), "ipam"),
            (json!({"ipam": {}}), "ipam.type"),
            (json!({"ipam": "host-local"}), "ipam"),
            (json!({"gateway": "yes"}), "gateway"),
            (json!({"ipMasq": true}), "ipMasq"),
            (json!({"hostAccess": true}), "hostAccess"),
            (json!({"gateway": true, "hostAccess": 1}), "hostAccess"),
            (json!({"tunnel": {"type": "gre"}}), "tunnel"),
            (json!({"etcd": {"endpoints": ["x"]}}), "etcd.endpoints[0]"),
        ] {
            let e = parse(extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(e.msg.contains(field), "{extra}: {}", e.msg);
        }
    }

    #[test]
    fn datapath_auto_follows_module() {
        assert_eq!(Datapath::Auto.resolve(|| true), DatapathType::System);
        assert_eq!(Datapath::Auto.resolve(|| false), DatapathType::Netdev);
        assert_eq!(Datapath::Netdev.resolve(|| true), DatapathType::Netdev);
        for t in [DatapathType::System, DatapathType::Netdev] {
            assert_eq!(DatapathType::from_ovsdb(t.as_ovsdb()), t);
        }
        assert_eq!(DatapathType::from_ovsdb(""), DatapathType::System);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped multi-host examples are valid weft configs.
    #[test]
    fn multi_host_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/multi-host");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let mut plugin = raw["plugins"][0].clone();
            plugin["name"] = raw["name"].clone();
            plugin["cniVersion"] = raw["cniVersion"].clone();
            let conf = NetConf::parse(plugin.to_string().as_bytes(), "1.0.0".into()).unwrap();
            let cfg = Config::from_netconf(&conf).unwrap();
            assert!(cfg.overlay.is_some(), "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 2);
    }
}
