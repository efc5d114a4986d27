//! VLAN tags on a bridge. Every port weft makes is an access port of
//! exactly one VLAN (an OVS port with no tag would be a trunk of all of
//! them), and networks that share a bridge never share a VLAN:
//! - overlay networks use their VNI, 1 to [`MAX_VNI`], the same on every
//!   host (the registry in etcd hands them out);
//! - single-host networks get one of [`LOCAL`] per bridge, recorded in the
//!   bridge's external_ids as `weft.vlan.<network>`, where ADD, CHECK and GC
//!   find it again;
//! - the bridge's own internal port sits on [`PARKED`], which nothing else
//!   uses, so it hears no network.

use std::ops::RangeInclusive;

/// The highest VNI an overlay network can have.
pub const MAX_VNI: u32 = 3999;
/// The tags for single-host networks, disjoint from every VNI.
pub const LOCAL: RangeInclusive<u32> = 4000..=4094;
/// The bridge port's tag: a VLAN no network is on.
pub const PARKED: u32 = 4095;

use crate::ids::VLAN_PREFIX as KEY_PREFIX;
/// Where ADD remembers a single-host network's tag between runs, to skip a
/// round trip to ovsdb-server. Only a hint: the attach transaction checks
/// the bridge's record atomically and a stale hint costs one retry.
const HINTS: &str = "/run/weft/vlans";

fn hint_path(bridge: &str, network: &str) -> std::path::PathBuf {
    // Both are safe as path parts: an interface name and a CNI network name.
    std::path::Path::new(HINTS).join(bridge).join(network)
}

/// The tag ADD last found for `network` on `bridge`, if it remembers one.
pub fn read_hint(bridge: &str, network: &str) -> Option<u32> {
    std::fs::read_to_string(hint_path(bridge, network))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|t| LOCAL.contains(t))
}

/// Remembers `tag`; best effort (root-only, like all weft writes).
pub fn write_hint(bridge: &str, network: &str, tag: u32) {
    let _ = weft_cni::files::write_private(&hint_path(bridge, network), tag.to_string().as_bytes());
}

pub fn forget_hint(bridge: &str, network: &str) {
    let _ = std::fs::remove_file(hint_path(bridge, network));
}

/// The bridge external_ids key that records `network`'s tag.
pub fn key(network: &str) -> String {
    format!("{KEY_PREFIX}{network}")
}

/// `network`'s tag among a bridge's external_ids, if it has one.
pub fn lookup(ids: &[(String, String)], network: &str) -> Option<u32> {
    let k = key(network);
    ids.iter()
        .find(|(x, _)| *x == k)
        .and_then(|(_, v)| v.parse().ok())
        .filter(|t| LOCAL.contains(t))
}

/// The lowest local tag no network on the bridge holds.
pub fn pick(ids: &[(String, String)]) -> Option<u32> {
    let taken: Vec<u32> = ids
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX))
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    LOCAL.clone().find(|t| !taken.contains(t))
}

/// The networks a bridge records tags for.
pub fn networks(ids: &[(String, String)]) -> Vec<(String, u32)> {
    ids.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(KEY_PREFIX)?.to_string(), v.parse().ok()?)))
        .collect()
}

/// The network a weft port serves: an attachment's, a tunnel's, a gateway's.
pub fn network_of(p: &crate::ovs::FoundPort) -> Option<&str> {
    p.id(crate::ids::NETWORK)
        .or_else(|| p.id(crate::ids::TUNNEL_FOR))
        .or_else(|| p.id(crate::ids::GATEWAY_FOR))
}

/// Ports not on their network's VLAN, with the tag each should have;
/// `want` gives a network's VLAN, None when it is not known here.
pub fn misplaced(
    ports: &[crate::ovs::FoundPort],
    want: impl Fn(&str) -> Option<u32>,
) -> Vec<(String, u32)> {
    ports
        .iter()
        .filter_map(|p| {
            let w = want(network_of(p)?)?;
            (p.tag != Some(w)).then(|| (p.name.clone(), w))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn local_tags_never_meet_vnis_or_the_parked_port() {
        assert!(MAX_VNI < *LOCAL.start());
        assert!(*LOCAL.end() < PARKED);
    }

    #[test]
    fn pick_takes_the_lowest_free_and_lookup_finds_it() {
        assert_eq!(pick(&[]), Some(4000));
        let have = ids(&[
            ("weft.bridge", "true"),
            ("weft.vlan.blue", "4000"),
            ("weft.vlan.red", "4002"),
        ]);
        assert_eq!(pick(&have), Some(4001));
        assert_eq!(lookup(&have, "red"), Some(4002));
        assert_eq!(lookup(&have, "green"), None);
        assert_eq!(networks(&have).len(), 2);
    }

    #[test]
    fn misplaced_finds_wrong_and_missing_tags_of_known_networks() {
        let port = |name: &str, key: &str, net: &str, tag: Option<u32>| crate::ovs::FoundPort {
            uuid: name.into(),
            name: name.into(),
            external_ids: vec![(key.into(), net.into())],
            tag,
        };
        let ports = [
            port("ok", "weft.network", "blue", Some(7)),
            port("moved", "weft.network", "blue", Some(8)),
            port("trunk", "weft.tunnel_for", "blue", None),
            port("gw", "weft.gateway_for", "red", Some(1)),
            port("stranger", "weft.network", "green", Some(3)),
        ];
        let want = |n: &str| match n {
            "blue" => Some(7),
            "red" => Some(2),
            _ => None,
        };
        assert_eq!(
            misplaced(&ports, want),
            vec![("moved".into(), 7), ("trunk".into(), 7), ("gw".into(), 2)]
        );
    }

    #[test]
    fn a_full_bridge_has_no_tag_and_a_bad_record_is_ignored() {
        let full: Vec<(String, String)> = LOCAL
            .map(|t| (key(&format!("n{t}")), t.to_string()))
            .collect();
        assert_eq!(pick(&full), None);
        assert_eq!(lookup(&ids(&[("weft.vlan.x", "7")]), "x"), None);
    }
}
