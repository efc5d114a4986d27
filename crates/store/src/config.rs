//! The `etcd` object of weft's and weft-ipam's configs. Every error is code 7
//! and names the field as the user wrote it (`ipam.etcd.tls.cert`).

use std::path::PathBuf;

use serde_json::Value;
use weft_cni::{Error, Result};

pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub timeout_ms: u64,
    pub tls: Option<Tls>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The `etcd` object, shared by weft-ipam (`ipam.etcd`) and weft (`etcd`);
/// `prefix` is where it sits, so errors name the field as the user wrote it.
pub fn parse_etcd(v: Option<&Value>, prefix: &str) -> Result<Etcd> {
    let bad = |field: &str, why: String| Error::config(format!("{prefix}{field} {why}"));
    let opt_str = |v: &Value, key: &str, field: &str| -> Result<Option<String>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(field, "must be a string".into())),
        }
    };
    let v = v
        .filter(|v| v.is_object())
        .ok_or_else(|| bad("etcd", "is required (at least etcd.endpoints)".into()))?;
    let endpoints: Vec<String> = v
        .get("endpoints")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("etcd.endpoints", "must be a non-empty list of URLs".into()))?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let s = e.as_str().unwrap_or_default();
            if s.starts_with("http://") || s.starts_with("https://") {
                Ok(s.to_string())
            } else {
                Err(bad(
                    &format!("etcd.endpoints[{i}]"),
                    format!("{e} must be an http:// or https:// URL"),
                ))
            }
        })
        .collect::<Result<_>>()?;
    let timeout_ms = match v.get("timeoutMs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(t) => t
            .as_u64()
            .filter(|t| (1..=60_000).contains(t))
            .ok_or_else(|| bad("etcd.timeoutMs", format!("{t} must be from 1 to 60000")))?,
    };
    let path = |obj: &Value, key: &str, field: &str| -> Result<Option<PathBuf>> {
        Ok(opt_str(obj, key, field)?.map(PathBuf::from))
    };
    let tls = match v.get("tls") {
        None | Some(Value::Null) => None,
        Some(t) if t.is_object() => {
            let tls = Tls {
                ca: path(t, "ca", "etcd.tls.ca")?,
                cert: path(t, "cert", "etcd.tls.cert")?,
                key: path(t, "key", "etcd.tls.key")?,
            };
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(bad(
                    "etcd.tls",
                    "needs both cert and key, or neither".into(),
                ));
            }
            Some(tls)
        }
        Some(_) => return Err(bad("etcd.tls", "must be an object".into())),
    };
    let username = opt_str(v, "username", "etcd.username")?;
    let password_file = path(v, "passwordFile", "etcd.passwordFile")?;
    if username.is_some() != password_file.is_some() {
        return Err(bad(
            "etcd",
            "needs both username and passwordFile, or neither".into(),
        ));
    }
    let over_http = match v.get("allowPasswordOverHttp") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "etcd.allowPasswordOverHttp",
                "must be true or false".into(),
            ))
        }
    };
    // etcd's auth sends the password in the clear over http://, to anyone
    // who can watch the underlay.
    if let (Some(_), Some(plain), false) = (
        &password_file,
        endpoints.iter().find(|e| e.starts_with("http://")),
        over_http,
    ) {
        return Err(bad(
            "etcd.passwordFile",
            format!(
                "would be sent in the clear to {plain}: use https:// endpoints (etcd.tls), \
                 or set etcd.allowPasswordOverHttp to accept that"
            ),
        ));
    }
    Ok(Etcd {
        endpoints,
        timeout_ms,
        tls,
        username,
        password_file,
    })
}
