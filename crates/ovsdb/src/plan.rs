//! The OVSDB operations weft applies, as pure functions.

use serde_json::{json, Value};

use crate::map;

fn named(id: &str) -> Value {
    json!(["named-uuid", id])
}

fn uuid_set(uuids: &[String]) -> Value {
    let items: Vec<Value> = uuids.iter().map(|u| json!(["uuid", u])).collect();
    json!(["set", items])
}

/// Creates `bridge` with its internal port and hooks it to the root row.
/// The Bridge name is unique in the schema, so a racing creator makes this
/// transaction fail rather than produce two bridges.
/// `port_tag` puts the bridge's own port on a VLAN, so it is not a trunk.
pub fn create_bridge(
    bridge: &str,
    datapath_type: &str,
    external_ids: &[(&str, &str)],
    port_tag: Option<u32>,
) -> Vec<Value> {
    let mut port = json!({"name": bridge, "interfaces": named("iface")});
    if let Some(t) = port_tag {
        port["tag"] = json!(t);
    }
    vec![
        json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
               "row": {"name": bridge, "type": "internal"}}),
        json!({"op": "insert", "table": "Port", "uuid-name": "port", "row": port}),
        json!({"op": "insert", "table": "Bridge", "uuid-name": "br",
               "row": {"name": bridge, "ports": named("port"), "datapath_type": datapath_type,
                       "external_ids": map(external_ids.iter().copied())}}),
        json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["bridges", "insert", ["set", [named("br")]]]]}),
    ]
}

/// Index of the select in [`add_port`] whose rows carry the bridge's datapath_type.
pub const ADD_PORT_BRIDGE_SELECT: usize = 1;
/// Index of the first of the extra selects [`add_port`] appends.
pub const ADD_PORT_EXTRA: usize = 5;

/// A port to insert: a system port by default, or an internal or tunnel
/// interface, as an access port on `tag` when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    /// Interface type: "" (system), "internal", "vxlan", "geneve", "gre".
    pub kind: String,
    pub options: Vec<(String, String)>,
    pub tag: Option<u32>,
    /// OVS's split horizon: NORMAL never forwards between protected ports.
    pub protected: bool,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub external_ids: Vec<(String, String)>,
}

fn pairs(v: &[(String, String)]) -> Value {
    map(v.iter().map(|(k, x)| (k.as_str(), x.as_str())))
}

/// The Interface and Port inserts for `spec`, named `i{n}`/`p{n}`.
fn insert_port(spec: &PortSpec, n: usize) -> [Value; 2] {
    let mut iface = json!({"name": spec.name});
    if !spec.kind.is_empty() {
        iface["type"] = json!(spec.kind);
    }
    if !spec.options.is_empty() {
        iface["options"] = pairs(&spec.options);
    }
    if let Some(mac) = &spec.mac {
        iface["mac"] = json!(mac);
    }
    if let Some(mtu) = spec.mtu {
        iface["mtu_request"] = json!(mtu);
    }
    let mut port = json!({"name": spec.name, "interfaces": named(&format!("i{n}")),
                          "external_ids": pairs(&spec.external_ids)});
    if let Some(tag) = spec.tag {
        port["tag"] = json!(tag);
    }
    if spec.protected {
        port["protected"] = json!(true);
    }
    [
        json!({"op": "insert", "table": "Interface", "uuid-name": format!("i{n}"), "row": iface}),
        json!({"op": "insert", "table": "Port", "uuid-name": format!("p{n}"), "row": port}),
    ]
}

/// Adds a port to an existing bridge. The leading `wait` fails the whole
/// transaction when the bridge is missing, so the caller can create it and
/// retry without a separate look-up on the common path. `extra` operations
/// (selects) ride along from index [`ADD_PORT_EXTRA`], saving round trips.
pub fn add_port(bridge: &str, port: &PortSpec, extra: &[Value]) -> Vec<Value> {
    let [iface, row] = insert_port(port, 0);
    let mut ops = vec![
        json!({"op": "wait", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["name"],
               "until": "==", "rows": [{"name": bridge}], "timeout": 0}),
        json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["datapath_type"]}),
        iface,
        row,
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
               "mutations": [["ports", "insert", ["set", [named("p0")]]]]}),
    ];
    ops.extend_from_slice(extra);
    ops
}

/// Adds several ports to `bridge` and removes others, in one transaction.
/// Each insert is guarded by a `wait` for its name to be free, so two
/// processes reconciling at once cannot create the same port twice.
pub fn change_ports(bridge: &str, add: &[PortSpec], remove: &[String]) -> Vec<Value> {
    let mut ops = Vec::new();
    for (n, spec) in add.iter().enumerate() {
        ops.push(
            json!({"op": "wait", "table": "Port", "where": [["name", "==", spec.name]],
                        "columns": ["name"], "until": "==", "rows": [], "timeout": 0}),
        );
        ops.extend(insert_port(spec, n));
    }
    if !add.is_empty() {
        let new: Vec<Value> = (0..add.len()).map(|n| named(&format!("p{n}"))).collect();
        ops.push(
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                        "mutations": [["ports", "insert", ["set", new]]]}),
        );
    }
    if !remove.is_empty() {
        ops.extend(remove_ports(remove));
    }
    ops
}

/// Ports whose external_ids include every pair given.
pub fn find_ports(external_ids: &[(&str, &str)]) -> Vec<Value> {
    vec![json!({"op": "select", "table": "Port",
                "where": [["external_ids", "includes", map(external_ids.iter().copied())]],
                "columns": ["_uuid", "name", "external_ids", "tag"]})]
}

/// Every port with external_ids. OVSDB has no "has key" condition, so
/// callers looking for a key whatever its value filter these.
pub fn ports_with_ids() -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Port", "where": [["external_ids", "!=", ["map", []]]],
                "columns": ["_uuid", "name", "external_ids"]}),
    ]
}

/// The port named `name`, if any.
pub fn find_port_by_name(name: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Port", "where": [["name", "==", name]],
                "columns": ["_uuid", "name", "external_ids", "tag"]}),
    ]
}

/// Sets the given external_ids of the port named `name`, keeping the rest.
pub fn set_port_ids(name: &str, ids: &[(String, String)]) -> Vec<Value> {
    let keys: Vec<Value> = ids.iter().map(|(k, _)| json!(k)).collect();
    vec![
        json!({"op": "mutate", "table": "Port", "where": [["name", "==", name]],
               "mutations": [["external_ids", "delete", ["set", keys]]]}),
        json!({"op": "mutate", "table": "Port", "where": [["name", "==", name]],
               "mutations": [["external_ids", "insert", pairs(ids)]]}),
    ]
}

/// A bridge's external_ids.
pub fn bridge_ids(bridge: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]],
                "columns": ["external_ids"]}),
    ]
}

/// Adds `key=value` to a bridge's external_ids, only if they are still
/// exactly `seen`: two processes claiming at once cannot both succeed.
pub fn claim_bridge_id(
    bridge: &str,
    seen: &[(String, String)],
    key: &str,
    value: &str,
) -> Vec<Value> {
    vec![
        json!({"op": "wait", "table": "Bridge", "where": [["name", "==", bridge]],
               "columns": ["external_ids"], "until": "==",
               "rows": [{"external_ids": pairs(seen)}], "timeout": 0}),
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
               "mutations": [["external_ids", "insert", map([(key, value)])]]}),
    ]
}

/// Fails the transaction it rides in unless the bridge's external_ids
/// still hold `key=value`.
pub fn expect_bridge_id(bridge: &str, key: &str, value: &str) -> Vec<Value> {
    vec![json!({"op": "wait", "table": "Bridge",
                "where": [["name", "==", bridge], ["external_ids", "includes", map([(key, value)])]],
                "columns": ["name"], "until": "==", "rows": [{"name": bridge}], "timeout": 0})]
}

/// Removes keys from a bridge's external_ids.
pub fn remove_bridge_ids(bridge: &str, keys: &[String]) -> Vec<Value> {
    let keys: Vec<Value> = keys.iter().map(|k| json!(k)).collect();
    vec![
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                "mutations": [["external_ids", "delete", ["set", keys]]]}),
    ]
}

/// The VLAN tags of ports, by name (all of them when `names` is empty).
pub fn port_tags(names: &[&str]) -> Vec<Value> {
    let cond = if names.is_empty() {
        json!([])
    } else {
        let set: Vec<Value> = names.iter().map(|n| json!(n)).collect();
        json!([["name", "includes", ["set", set]]])
    };
    vec![json!({"op": "select", "table": "Port", "where": cond,
                "columns": ["_uuid", "name", "tag", "external_ids"]})]
}

/// Ports on VLAN `tag` whose external_ids include none of `mine`: on a
/// VLAN one network owns, normally none.
pub fn strangers_on_vlan(tag: u32, mine: &[(&str, &str)]) -> Vec<Value> {
    let mut cond = vec![json!(["tag", "==", tag])];
    for (k, v) in mine {
        cond.push(json!(["external_ids", "excludes", map([(*k, *v)])]));
    }
    vec![json!({"op": "select", "table": "Port", "where": cond,
                "columns": ["_uuid", "name", "external_ids", "tag"]})]
}

/// Puts the port named `name` on VLAN `tag`.
pub fn set_port_tag(name: &str, tag: u32) -> Vec<Value> {
    vec![
        json!({"op": "update", "table": "Port", "where": [["name", "==", name]],
                "row": {"tag": tag}}),
    ]
}

/// A bridge's ports and datapath type.
pub fn bridge(bridge: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]],
                "columns": ["ports", "datapath_type"]}),
    ]
}

/// Detaches ports from whichever bridge holds them; OVSDB then drops the
/// unreferenced Port and Interface rows itself.
pub fn remove_ports(uuids: &[String]) -> Vec<Value> {
    vec![json!({"op": "mutate", "table": "Bridge", "where": [],
                "mutations": [["ports", "delete", uuid_set(uuids)]]})]
}

/// The interface state ovs-vswitchd reports once it applied a change.
pub fn interface_state(port: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Interface", "where": [["name", "==", port]], "columns": ["ofport", "error"]}),
    ]
}

/// The type and bridge-facing facts of the interface named `name`.
pub fn interface_type(name: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Interface", "where": [["name", "==", name]], "columns": ["type"]}),
    ]
}

/// `bridge`, if its external_ids include `marker` (the one its creator set).
pub fn own_bridge(bridge: &str, marker: (&str, &str)) -> Vec<Value> {
    vec![json!({"op": "select", "table": "Bridge",
                "where": [["name", "==", bridge], ["external_ids", "includes", map([marker])]],
                "columns": ["_uuid"]})]
}

/// Unhooks a bridge from the root row; OVSDB garbage-collects it and its ports.
pub fn delete_bridge(uuid: &str) -> Vec<Value> {
    vec![json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                "mutations": [["bridges", "delete", ["set", [["uuid", uuid]]]]]})]
}

/// A no-op that proves the server answers and the schema is the one we know.
pub fn ping() -> Vec<Value> {
    vec![json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]})]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_port_guards_on_bridge_and_tags_port() {
        let spec = PortSpec {
            name: "wft0123".into(),
            tag: Some(7),
            external_ids: vec![("owner".into(), "blue".into())],
            ..Default::default()
        };
        let ops = add_port("br-weft", &spec, &[ping()[0].clone()]);
        assert_eq!(ops[0]["op"], "wait");
        assert_eq!(ops[0]["timeout"], 0);
        assert_eq!(ops[ADD_PORT_BRIDGE_SELECT]["op"], "select");
        assert_eq!(
            ops[3]["row"]["external_ids"],
            json!(["map", [["owner", "blue"]]])
        );
        assert_eq!(ops[3]["row"]["tag"], 7);
        assert_eq!(
            ops[4]["mutations"][0][2],
            json!(["set", [["named-uuid", "p0"]]])
        );
        assert_eq!(ops[ADD_PORT_EXTRA]["table"], "Open_vSwitch");
    }

    #[test]
    fn change_ports_guards_each_name_and_links_all() {
        let t = |n: &str| PortSpec {
            name: n.into(),
            kind: "vxlan".into(),
            options: vec![("remote_ip".into(), "10.0.0.2".into())],
            tag: Some(5),
            protected: true,
            ..Default::default()
        };
        let ops = change_ports("br", &[t("a"), t("b")], &["u1".into()]);
        assert_eq!(ops[0]["op"], "wait");
        assert_eq!(ops[0]["rows"], json!([]));
        assert_eq!(ops[1]["row"]["type"], "vxlan");
        assert_eq!(ops[2]["row"]["protected"], true);
        assert_eq!(
            ops[6]["mutations"][0][2],
            json!(["set", [["named-uuid", "p0"], ["named-uuid", "p1"]]])
        );
        assert_eq!(ops[7]["mutations"][0][1], "delete");
        assert!(change_ports("br", &[], &[]).is_empty());
    }

    #[test]
    fn create_bridge_links_root_row() {
        let ops = create_bridge("br0", "netdev", &[], None);
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[2]["row"]["datapath_type"], "netdev");
        assert_eq!(ops[3]["table"], "Open_vSwitch");
    }

    #[test]
    fn remove_ports_uses_uuid_set() {
        let ops = remove_ports(&["a".into(), "b".into()]);
        assert_eq!(
            ops[0]["mutations"][0][2],
            json!(["set", [["uuid", "a"], ["uuid", "b"]]])
        );
    }

    #[test]
    fn map_round_trip() {
        let m = map([("a", "1"), ("b", "2")]);
        assert_eq!(
            crate::read_map(&m),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(crate::read_uuid(&json!(["uuid", "x"])), Some("x"));
    }
}
