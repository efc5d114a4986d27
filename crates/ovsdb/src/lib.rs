//! Speaking to ovsdb-server over its unix socket (RFC 7047 JSON-RPC), and the
//! operation plans weft applies. Plans are pure functions returning OVSDB
//! operations, so they are tested without a server; [`Client`] applies them.
//!
//! Written here rather than taken from crates.io: the one OVSDB crate there
//! (`ovsdb` 0.0.x) is an early, async-only codegen project, and what weft
//! needs is a few hundred lines: transact, and wait for ovs-vswitchd.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

mod client;
pub mod plan;

pub use client::{Client, OvsError, OvsErrorKind, PendingRead, PendingTxn};

/// `["map", [[k, v], ...]]` from pairs, the wire form of an OVSDB map.
pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> serde_json::Value {
    let items: Vec<serde_json::Value> = pairs
        .into_iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect();
    serde_json::json!(["map", items])
}

/// Reads an OVSDB map column back into pairs.
pub fn read_map(v: &serde_json::Value) -> Vec<(String, String)> {
    v.get(1)
        .and_then(|items| items.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|kv| {
                    Some((
                        kv.get(0)?.as_str()?.to_string(),
                        kv.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The uuid string inside `["uuid", "..."]`.
pub fn read_uuid(v: &serde_json::Value) -> Option<&str> {
    (v.get(0)?.as_str()? == "uuid")
        .then(|| v.get(1)?.as_str())
        .flatten()
}

/// Whether a select's result has any row.
pub fn has_rows(select_result: &serde_json::Value) -> bool {
    select_result["rows"]
        .as_array()
        .is_some_and(|rows| !rows.is_empty())
}
