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

const KEY_PREFIX: &str = "weft.vlan.";

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
    fn a_full_bridge_has_no_tag_and_a_bad_record_is_ignored() {
        let full: Vec<(String, String)> = LOCAL
            .map(|t| (key(&format!("n{t}")), t.to_string()))
            .collect();
        assert_eq!(pick(&full), None);
        assert_eq!(lookup(&ids(&[("weft.vlan.x", "7")]), "x"), None);
    }
}
