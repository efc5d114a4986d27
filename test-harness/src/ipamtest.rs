//! Helpers for tests that run weft-ipam against the harness's etcd.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};

use crate::etcd::Etcd;
use crate::fabric::Fabric;
use crate::runtime::{first_address, spawn_ipam};

/// Reservations of `network` in etcd: (address key, holder JSON).
pub fn reservations(etcd: &Etcd, fabric: &Fabric, network: &str) -> Vec<(String, Value)> {
    let out = etcd
        .ctl(
            &fabric.netns,
            &[
                "get",
                "--prefix",
                &format!("/weft/v1/ipam/{network}/ips/"),
                "-w",
                "json",
            ],
        )
        .unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    let b64 = |v: &Value| {
        String::from_utf8(decode_b64(v.as_str().unwrap_or_default())).unwrap_or_default()
    };
    doc["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        b64(&kv["key"]),
                        serde_json::from_str(&b64(&kv["value"])).unwrap_or(Value::Null),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn owners(etcd: &Etcd, fabric: &Fabric, network: &str) -> usize {
    let out = etcd
        .ctl(
            &fabric.netns,
            &[
                "get",
                "--prefix",
                &format!("/weft/v1/ipam/{network}/owners/"),
                "--keys-only",
                "-w",
                "json",
            ],
        )
        .unwrap();
    serde_json::from_str::<Value>(&out).unwrap()["count"]
        .as_u64()
        .unwrap_or(0) as usize
}

pub fn decode_b64(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = ABC.iter().position(|x| *x == c) else {
            continue;
        };
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

pub fn ipam_cmd(
    ns: &crate::netns::Netns,
    cmd: &str,
    cid: &str,
    conf: &Value,
) -> std::process::Child {
    spawn_ipam(ns, cmd, cid, conf).unwrap()
}

/// Waits for every plugin run: the addresses granted (no prefix) and the
/// codes of the refusals. Every answer must be CNI JSON with a code.
pub fn outcomes(running: Vec<std::process::Child>) -> (Vec<String>, Vec<u64>) {
    let mut granted = Vec::new();
    let mut codes = Vec::new();
    for child in running {
        let out = child.wait_with_output().unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&out.stdout)));
        if out.status.success() {
            granted.push(first_address(&doc).unwrap());
        } else {
            codes.push(
                doc["code"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("error without code: {doc}")),
            );
            if codes.len() <= 3 {
                eprintln!("refused: {doc}");
            }
        }
    }
    (granted, codes)
}

pub fn ipam_conf(
    network: &str,
    subnet: &str,
    node: &str,
    endpoints: &[String],
    dir: &std::path::Path,
) -> Value {
    json!({"cniVersion": "1.1.0", "name": network, "type": "weft-ipam",
           "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": subnet}]], "nodeName": node,
                    "dataDir": dir, "etcd": {"endpoints": endpoints, "timeoutMs": 2000}}})
}
