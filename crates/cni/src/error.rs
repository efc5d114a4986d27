//! The one error type every weft binary reports, and the CNI codes it maps to.
//!
//! Codes below 100 are the spec's (those weft reports); codes from 100 up are
//! ours. Every code defined here has exactly one row in the README's error
//! table (a test below checks). Errors that come back from a delegated plugin keep
//! their code, message and details unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_AVAILABLE: u32 = 50;

/// OVSDB refused a transaction or could not be spoken to mid-operation.
pub const OVSDB_FAILURE: u32 = 100;
/// ovs-vswitchd did not apply a change, or reported the port unusable.
pub const OVS_PORT_FAILURE: u32 = 101;
/// The plugin named by `ipam.type` (or another delegate) is not in CNI_PATH.
pub const PLUGIN_NOT_FOUND: u32 = 102;
/// A netlink request on the host or in the container failed.
pub const NETLINK_FAILURE: u32 = 103;
/// CNI_IFNAME already exists in the container's namespace.
pub const IFNAME_TAKEN: u32 = 104;
/// The container's namespace could not be entered.
pub const NETNS_FAILURE: u32 = 105;
/// CHECK found the container's interface or the OVS port not as ADD left it.
pub const CHECK_MISMATCH: u32 = 106;
/// A delegated plugin crashed or printed something that is not CNI JSON.
pub const DELEGATE_FAILURE: u32 = 107;
/// The network's gateway (its address, or the nftables rules for NAT and
/// isolation) could not be set up on the host.
pub const GATEWAY_FAILURE: u32 = 108;
/// weft: the network's VLAN on this bridge carries another network's ports.
pub const VLAN_CONFLICT: u32 = 109;
/// A requested address nobody may have, or that is outside every range.
pub const ADDRESS_UNAVAILABLE: u32 = 110;
/// No free address is left in a range set (or no VNI is left for a network).
pub const POOL_EXHAUSTED: u32 = 111;
/// etcd refused our credentials or certificates.
pub const STORE_AUTH: u32 = 112;
/// CHECK: the reservation is missing or held by someone else.
pub const RESERVATION_MISMATCH: u32 = 113;
/// Something we did not expect; the message says what.
pub const UNEXPECTED: u32 = 999;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(INVALID_ENV, msg)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(INVALID_CONFIG, msg)
    }

    pub fn version(msg: impl Into<String>) -> Self {
        Self::new(INCOMPATIBLE_VERSION, msg)
    }

    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(DECODE_FAILURE, msg)
    }

    pub fn unexpected(msg: impl Into<String>) -> Self {
        Self::new(UNEXPECTED, msg)
    }

    /// The error document the spec asks for, in the version the caller negotiated.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            doc["details"] = self.details.clone().into();
        }
        doc
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_has_one_row_per_code_in_order() {
        let defined: Vec<u32> = include_str!("error.rs")
            .lines()
            .filter_map(|l| {
                let v = l.strip_prefix("pub const ")?.split_once(": u32 = ")?.1;
                v.strip_suffix(';')?.parse().ok()
            })
            .collect();
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap();
        let rows: Vec<u32> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let mut want = defined.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(want.len(), defined.len(), "a code is defined twice");
        assert_eq!(rows, want, "the README's error table, one row per code");
    }

    #[test]
    fn error_json_has_spec_fields_and_omits_empty_details() {
        let doc = Error::config("bad mtu").to_json("1.0.0");
        assert_eq!(doc["code"], 7);
        assert_eq!(doc["msg"], "bad mtu");
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert!(doc.get("details").is_none());
        let doc = Error::unexpected("x").with_details("y").to_json("1.1.0");
        assert_eq!(doc["details"], "y");
    }
}
