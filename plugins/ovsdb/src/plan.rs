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
pub fn create_bridge(
    bridge: &str,
    datapath_type: &str,
    external_ids: &[(&str, &str)],
) -> Vec<Value> {
    vec![
        json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
               "row": {"name": bridge, "type": "internal"}}),
        json!({"op": "insert", "table": "Port", "uuid-name": "port",
               "row": {"name": bridge, "interfaces": named("iface")}}),
        json!({"op": "insert", "table": "Bridge", "uuid-name": "br",
               "row": {"name": bridge, "ports": named("port"), "datapath_type": datapath_type,
                       "external_ids": map(external_ids.iter().copied())}}),
        json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["bridges", "insert", ["set", [named("br")]]]]}),
    ]
}

/// Index of the select in [`add_port`] whose rows carry the bridge's datapath_type.
pub const ADD_PORT_BRIDGE_SELECT: usize = 1;

/// Adds an ordinary (system) port to an existing bridge. The leading `wait`
/// fails the whole transaction when the bridge is missing, so the caller can
/// create it and retry without a separate look-up on the common path.
pub fn add_port(bridge: &str, port: &str, external_ids: &[(&str, &str)]) -> Vec<Value> {
    vec![
        json!({"op": "wait", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["name"],
               "until": "==", "rows": [{"name": bridge}], "timeout": 0}),
        json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["datapath_type"]}),
        json!({"op": "insert", "table": "Interface", "uuid-name": "iface", "row": {"name": port}}),
        json!({"op": "insert", "table": "Port", "uuid-name": "port",
               "row": {"name": port, "interfaces": named("iface"), "external_ids": map(external_ids.iter().copied())}}),
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
               "mutations": [["ports", "insert", ["set", [named("port")]]]]}),
    ]
}

/// Ports whose external_ids include every pair given.
pub fn find_ports(external_ids: &[(&str, &str)]) -> Vec<Value> {
    vec![json!({"op": "select", "table": "Port",
                "where": [["external_ids", "includes", map(external_ids.iter().copied())]],
                "columns": ["_uuid", "name", "external_ids"]})]
}

/// The port named `name`, if any.
pub fn find_port_by_name(name: &str) -> Vec<Value> {
    vec![
        json!({"op": "select", "table": "Port", "where": [["name", "==", name]],
                "columns": ["_uuid", "name", "external_ids"]}),
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

/// A no-op that proves the server answers and the schema is the one we know.
pub fn ping() -> Vec<Value> {
    vec![json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]})]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_port_guards_on_bridge_and_tags_port() {
        let ops = add_port("br-weft", "wft0123", &[("weft.network", "blue")]);
        assert_eq!(ops[0]["op"], "wait");
        assert_eq!(ops[0]["timeout"], 0);
        assert_eq!(ops[ADD_PORT_BRIDGE_SELECT]["op"], "select");
        assert_eq!(
            ops[3]["row"]["external_ids"],
            json!(["map", [["weft.network", "blue"]]])
        );
        assert_eq!(
            ops[4]["mutations"][0][2],
            json!(["set", [["named-uuid", "port"]]])
        );
    }

    #[test]
    fn create_bridge_links_root_row() {
        let ops = create_bridge("br0", "netdev", &[]);
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
