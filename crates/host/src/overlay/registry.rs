//! Who is in the cluster, in etcd: hosts, networks with their VNIs, and which
//! hosts have containers on which network.
//!
//! Keys (all under `/weft/v1/`):
//! - `nodes/<node>`: `{"ip": underlay address}`; the agent holds it with a lease
//! - `networks/<net>`: `{"vni", "tunnel", "port"}`, written once, on first use
//! - `vnis/<vni>`: the network that owns the VNI, so two cannot share one
//! - `members/<net>/<node>`: the node has (had) containers on the network
//!
//! A joining host writes what is missing in one compare-guarded transaction;
//! in the steady state an ADD costs one read.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_cni::{Error, Result};
use weft_store::store_err;
use weft_store::{Compare, Read, ReadResult, Store, Write};

use super::config::{Overlay, TunnelKind, MAX_VNI};
use super::vnis;

pub const ROOT: &str = "/weft/v1/";

pub fn node_key(node: &str) -> String {
    format!("{ROOT}nodes/{node}")
}
pub fn nodes_prefix() -> String {
    format!("{ROOT}nodes/")
}
/// When the node's agent last said it was alive (unix seconds, no lease):
/// what `weftctl gc` measures a missing node's absence from.
pub fn seen_key(node: &str) -> String {
    format!("{ROOT}seen/{node}")
}
pub fn seen_prefix() -> String {
    format!("{ROOT}seen/")
}

/// An agent that has not written `seen/` for this long (it does every
/// 30 s) is taken for gone.
pub const AGENT_SILENCE: std::time::Duration = std::time::Duration::from_secs(90);

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
pub fn network_key(net: &str) -> String {
    format!("{ROOT}networks/{net}")
}
pub fn networks_prefix() -> String {
    format!("{ROOT}networks/")
}
pub fn vni_key(vni: u32) -> String {
    format!("{ROOT}vnis/{vni}")
}
pub fn vnis_prefix() -> String {
    format!("{ROOT}vnis/")
}
pub fn member_key(net: &str, node: &str) -> String {
    format!("{ROOT}members/{net}/{node}")
}
pub fn members_prefix(net: &str) -> String {
    format!("{ROOT}members/{net}/")
}
pub fn all_members_prefix() -> String {
    format!("{ROOT}members/")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(skip)]
    pub name: String,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub vni: u32,
    pub tunnel: TunnelKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What a host needs to build its side of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub network: NetworkRecord,
    /// Other live nodes with containers on the network, by name.
    pub peers: Vec<NodeRecord>,
    /// This host's agent spoke lately, so it removes tunnels to peers that
    /// left (see `tunnels::Prune`). [`view`] is the agent's own read: true.
    pub agent_alive: bool,
}

fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

pub fn decode_nodes(r: &ReadResult) -> Vec<NodeRecord> {
    r.kvs
        .iter()
        .filter_map(|kv| {
            let mut n: NodeRecord = serde_json::from_slice(&kv.value).ok()?;
            n.name = last_segment(&kv.key).to_string();
            Some(n)
        })
        .collect()
}

fn decode_network(r: &ReadResult) -> Option<NetworkRecord> {
    r.kvs
        .first()
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
}

/// Live peers: members of the network that are also registered nodes.
fn peers(members: &ReadResult, nodes: &[NodeRecord], me: &str) -> Vec<NodeRecord> {
    let names: std::collections::HashSet<&str> =
        members.kvs.iter().map(|kv| last_segment(&kv.key)).collect();
    nodes
        .iter()
        .filter(|n| n.name != me && names.contains(n.name.as_str()))
        .cloned()
        .collect()
}

/// The config must agree with what the cluster already settled on; a
/// mismatch means hosts would build tunnels that cannot talk.
fn check_agrees(net: &str, rec: &NetworkRecord, o: &Overlay) -> Result<()> {
    if let Some(v) = o.vni {
        if v != rec.vni {
            return Err(Error::config(format!(
                "vni {v}: network {net} already has VNI {} in etcd",
                rec.vni
            )));
        }
    }
    if o.tunnel != rec.tunnel || o.port != rec.port {
        return Err(Error::config(format!(
            "tunnel.type {}/port {:?} differs from the {}/port {:?} network {net} uses in etcd",
            o.tunnel.as_str(),
            o.port,
            rec.tunnel.as_str(),
            rec.port
        )));
    }
    Ok(())
}

/// Registers `me` and its membership of `net` where missing, settles the
/// network's VNI, and returns the view. One read when all is in place.
pub fn join(store: &mut impl Store, net: &str, o: &Overlay, me: &NodeRecord) -> Result<View> {
    join_with(store, net, o, me, HashMap::new)
}

/// [`join`], where a network without a record takes its VNI with regard to
/// the VLANs this host's bridge already carries: `on_bridge` gives them
/// (network -> tag), and is only asked on that rare path (see [`vnis`]).
pub fn join_with(
    store: &mut impl Store,
    net: &str,
    o: &Overlay,
    me: &NodeRecord,
    mut on_bridge: impl FnMut() -> HashMap<String, u32>,
) -> Result<View> {
    for _ in 0..8 {
        let r = store
            .read(&[
                Read::Key(network_key(net)),
                Read::Key(member_key(net, &me.name)),
                Read::prefix(&members_prefix(net)),
                Read::prefix(&nodes_prefix()),
                Read::Key(seen_key(&me.name)),
            ])
            .map_err(store_err)?;
        let agent_alive = r[4]
            .kvs
            .first()
            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok())
            .is_some_and(|t| unix_now().saturating_sub(t) < AGENT_SILENCE.as_secs());
        let network = decode_network(&r[0]);
        let nodes = decode_nodes(&r[3]);
        let mut compares = Vec::new();
        let mut writes = Vec::new();

        let network = match network {
            Some(rec) => {
                check_agrees(net, &rec, o)?;
                rec
            }
            None => new_network(store, net, o, &mut on_bridge, &mut compares, &mut writes)?,
        };
        register(me, &nodes, &r[3], agent_alive, &mut compares, &mut writes);
        if r[1].kvs.is_empty() {
            compares.push(Compare::Absent(member_key(net, &me.name)));
            writes.push(Write::Put(member_key(net, &me.name), Vec::new()));
        }
        let view = View {
            network,
            peers: peers(&r[2], &nodes, &me.name),
            agent_alive,
        };
        if writes.is_empty() {
            return Ok(view);
        }
        // Someone else wrote first: look again.
        if store
            .txn(&compares, &writes, &[])
            .map_err(store_err)?
            .succeeded
        {
            return Ok(view);
        }
    }
    Err(Error::new(
        weft_cni::error::TRY_AGAIN_LATER,
        "etcd registry kept changing under us; try again",
    ))
}

/// A network without a record: its VNI (the configured one, or one neither
/// the registry nor this bridge uses), written with the record in the same
/// transaction as the caller's other writes.
fn new_network(
    store: &mut impl Store,
    net: &str,
    o: &Overlay,
    on_bridge: &mut impl FnMut() -> HashMap<String, u32>,
    compares: &mut Vec<Compare>,
    writes: &mut Vec<Write>,
) -> Result<NetworkRecord> {
    let used = store
        .read(&[Read::prefix(&vnis_prefix())])
        .map_err(store_err)?;
    let owners = vnis::owners(&used[0]);
    let (vni, reserved) = match o.vni {
        Some(v) => match owners.get(&v) {
            Some(holder) if holder != net => {
                return Err(Error::config(format!(
                    "vni {v} is already used by network {holder}"
                )))
            }
            held => (v, held.is_some()),
        },
        None => vnis::choose(net, &on_bridge(), &owners).ok_or_else(|| {
            Error::new(
                weft_cni::error::POOL_EXHAUSTED,
                format!("all {MAX_VNI} VNIs are taken"),
            )
        })?,
    };
    let rec = NetworkRecord {
        vni,
        tunnel: o.tunnel,
        port: o.port,
    };
    compares.push(Compare::Absent(network_key(net)));
    writes.push(Write::Put(network_key(net), to_vec(&rec)));
    if reserved {
        // An agent re-reserved it for this network after a wipe.
        compares.push(Compare::ValueIs(vni_key(vni), net.as_bytes().to_vec()));
    } else {
        compares.push(Compare::Absent(vni_key(vni)));
        writes.push(Write::Put(vni_key(vni), net.as_bytes().to_vec()));
    }
    Ok(rec)
}

/// This node's registration, unless it is already right or is the agent's
/// to write.
fn register(
    me: &NodeRecord,
    nodes: &[NodeRecord],
    node_kvs: &ReadResult,
    agent_alive: bool,
    compares: &mut Vec<Compare>,
    writes: &mut Vec<Write>,
) {
    match nodes.iter().find(|n| n.name == me.name) {
        Some(n) if n.ip == me.ip => {}
        Some(n) => {
            let (rev, lease) = node_kvs
                .kvs
                .iter()
                .find(|kv| last_segment(&kv.key) == n.name)
                .map_or((0, 0), |kv| (kv.mod_revision, kv.lease));
            // A new underlay address under the agent's lease, not
            // outside it: a registration without a lease would outlive
            // the host.
            compares.push(Compare::ModRevision(node_key(&me.name), rev));
            writes.push(Write::PutLeased(node_key(&me.name), to_vec(me), lease));
        }
        // This host's agent spoke lately: registration is its job, under
        // its lease (it is between sessions, or its lease just lapsed).
        // A registration written here would have no lease and outlive
        // the host.
        None if agent_alive => {}
        // No agent here: the registration lasts until `weftctl cleanup`
        // or `weftctl gc --forget-node`.
        None => {
            compares.push(Compare::Absent(node_key(&me.name)));
            writes.push(Write::Put(node_key(&me.name), to_vec(me)));
        }
    }
}

/// The view of `net` without writing anything: for the agent and weftctl.
pub fn view(store: &mut impl Store, net: &str, me: &str) -> Result<Option<View>> {
    let r = store
        .read(&[
            Read::Key(network_key(net)),
            Read::prefix(&members_prefix(net)),
            Read::prefix(&nodes_prefix()),
        ])
        .map_err(store_err)?;
    let Some(network) = decode_network(&r[0]) else {
        return Ok(None);
    };
    Ok(Some(View {
        network,
        peers: peers(&r[1], &decode_nodes(&r[2]), me),
        agent_alive: true,
    }))
}

/// (network, node) of every membership in a read of [`all_members_prefix`].
pub fn decode_members(r: &ReadResult) -> Vec<(String, String)> {
    let prefix = all_members_prefix();
    r.kvs
        .iter()
        .filter_map(|kv| {
            let (net, node) = kv.key.strip_prefix(&prefix)?.rsplit_once('/')?;
            Some((net.to_string(), node.to_string()))
        })
        .collect()
}

/// Networks `node` is a member of.
pub fn networks_of(store: &mut impl Store, node: &str) -> Result<Vec<String>> {
    let r = store
        .read(&[Read::prefix(&all_members_prefix())])
        .map_err(store_err)?;
    Ok(decode_members(&r[0])
        .into_iter()
        .filter(|(_, n)| n == node)
        .map(|(net, _)| net)
        .collect())
}

pub fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_store::MemStore;

    fn overlay(extra: serde_json::Value) -> Overlay {
        let mut doc = json!({"etcd": {"endpoints": ["http://10.0.0.1:2379"]}});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        Overlay::parse(&doc, "h").unwrap().unwrap()
    }

    fn node(name: &str, ip: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn first_join_allocates_vni_and_registers_then_reads_only() {
        let mut s = MemStore::default();
        let o = overlay(json!({}));
        let a = join(&mut s, "blue", &o, &node("a", "10.0.0.2")).unwrap();
        assert_eq!(a.network.vni, 1);
        assert!(a.peers.is_empty());
        let red = join(&mut s, "red", &o, &node("a", "10.0.0.2")).unwrap();
        assert_eq!(red.network.vni, 2);
        let b = join(&mut s, "blue", &o, &node("b", "10.0.0.3")).unwrap();
        assert_eq!(b.network.vni, 1);
        assert_eq!(b.peers, vec![node("a", "10.0.0.2")]);
        // Steady state: one read.
        let before = s.round_trips();
        let a2 = join(&mut s, "blue", &o, &node("a", "10.0.0.2")).unwrap();
        assert_eq!(s.round_trips() - before, 1);
        assert_eq!(a2.peers, vec![node("b", "10.0.0.3")]);
    }

    #[test]
    fn fixed_vni_clash_is_code_7_naming_the_holder() {
        let mut s = MemStore::default();
        let o = overlay(json!({"vni": 42}));
        assert_eq!(
            join(&mut s, "blue", &o, &node("a", "10.0.0.2"))
                .unwrap()
                .network
                .vni,
            42
        );
        let e = join(&mut s, "red", &o, &node("a", "10.0.0.2")).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("blue"), "{}", e.msg);
        // An automatic VNI steps around the fixed one.
        let auto = overlay(json!({}));
        s.data.insert(vni_key(1), (b"x".to_vec(), 1));
        assert_eq!(
            join(&mut s, "green", &auto, &node("a", "10.0.0.2"))
                .unwrap()
                .network
                .vni,
            2
        );
    }

    #[test]
    fn config_disagreeing_with_cluster_is_code_7() {
        let mut s = MemStore::default();
        join(&mut s, "blue", &overlay(json!({})), &node("a", "10.0.0.2")).unwrap();
        for extra in [
            json!({"vni": 9}),
            json!({"tunnel": {"type": "gre"}}),
            json!({"tunnel": {"port": 1}}),
        ] {
            let e = join(
                &mut s,
                "blue",
                &overlay(extra.clone()),
                &node("b", "10.0.0.3"),
            )
            .unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
        }
    }

    #[test]
    fn unregistered_members_are_not_peers_and_moved_nodes_update() {
        let mut s = MemStore::default();
        let o = overlay(json!({}));
        join(&mut s, "blue", &o, &node("a", "10.0.0.2")).unwrap();
        join(&mut s, "blue", &o, &node("b", "10.0.0.3")).unwrap();
        // b's registration goes (its lease expired); its membership stays.
        s.data.remove(&node_key("b"));
        assert!(join(&mut s, "blue", &o, &node("a", "10.0.0.2"))
            .unwrap()
            .peers
            .is_empty());
        // b comes back on another address.
        join(&mut s, "blue", &o, &node("b", "10.0.0.9")).unwrap();
        let v = view(&mut s, "blue", "a").unwrap().unwrap();
        assert_eq!(v.peers, vec![node("b", "10.0.0.9")]);
        assert_eq!(networks_of(&mut s, "b").unwrap(), vec!["blue".to_string()]);
    }

    #[test]
    fn a_moved_node_keeps_its_agents_lease() {
        let mut s = MemStore::default();
        let o = overlay(json!({}));
        s.txn(
            &[],
            &[Write::PutLeased(
                node_key("a"),
                to_vec(&node("a", "10.0.0.2")),
                42,
            )],
            &[],
        )
        .unwrap();
        join(&mut s, "blue", &o, &node("a", "10.0.0.7")).unwrap();
        assert_eq!(s.leases.get(&node_key("a")), Some(&42));
        let v = view(&mut s, "blue", "b").unwrap().unwrap();
        assert_eq!(v.peers, vec![node("a", "10.0.0.7")]);
    }

    #[test]
    fn a_host_whose_agent_spoke_lately_is_registered_only_by_its_agent() {
        let mut s = MemStore::default();
        let o = overlay(json!({}));
        let said = |s: &mut MemStore, t: u64| {
            s.txn(
                &[],
                &[Write::Put(seen_key("a"), t.to_string().into_bytes())],
                &[],
            )
            .unwrap();
        };
        said(&mut s, unix_now());
        join(&mut s, "blue", &o, &node("a", "10.0.0.2")).unwrap();
        assert!(
            !s.data.contains_key(&node_key("a")),
            "no lease-less registration"
        );
        assert!(s.data.contains_key(&member_key("blue", "a")));
        // An agent silent for long is gone: the host registers itself.
        said(&mut s, unix_now() - AGENT_SILENCE.as_secs() - 1);
        join(&mut s, "blue", &o, &node("a", "10.0.0.2")).unwrap();
        assert!(s.data.contains_key(&node_key("a")));
    }

    #[test]
    fn etcd_down_is_code_11() {
        let mut s = MemStore::default();
        s.down = true;
        let e = join(&mut s, "blue", &overlay(json!({})), &node("a", "10.0.0.2")).unwrap_err();
        assert_eq!(e.code, 11);
    }
}
