//! Keeping the registry's VNIs and the VLANs already on this host's bridge in
//! agreement, so a wiped or restored etcd can never give two networks one
//! VLAN. The bridge is the other source of truth: a port tagged T for
//! network N says N held VNI T when the port was made.
//!
//! - ADD, for a network the registry has no record of, takes the VNI its
//!   ports here already carry when no other network holds it, else one the
//!   registry reserved for it, else the lowest VNI neither the registry nor
//!   this bridge uses ([`choose`]).
//! - `weftctl agent` re-reserves the VNIs of networks on its bridge that the
//!   registry lacks, and moves a network whose VNI another network now holds
//!   to a fresh one ([`plan`]); its ports follow (`weftctl agent`'s VLAN pass).
//!
//! Pure: callers read etcd and OVS.

use std::collections::{BTreeMap, HashMap, HashSet};

use weft_store::ReadResult;

use crate::ovs::FoundPort;
use crate::vlan::{self, MAX_VNI};

/// vni -> network, from a read of the `vnis/` prefix.
pub fn owners(used: &ReadResult) -> HashMap<u32, String> {
    used.kvs
        .iter()
        .filter_map(|kv| {
            let vni = kv.key.rsplit('/').next()?.parse().ok()?;
            Some((vni, String::from_utf8_lossy(&kv.value).into_owned()))
        })
        .collect()
}

/// network -> VNI its overlay ports on this bridge carry (the most common
/// tag, should some have been moved by hand).
pub fn on_bridge(ports: &[FoundPort]) -> HashMap<String, u32> {
    let mut counts: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for p in ports {
        if let (Some(net), Some(t)) = (vlan::network_of(p), p.tag) {
            if (1..=MAX_VNI).contains(&t) {
                *counts.entry((net.to_string(), t)).or_default() += 1;
            }
        }
    }
    let mut best: HashMap<String, (u32, usize)> = HashMap::new();
    for ((net, t), n) in counts {
        let e = best.entry(net).or_insert((t, n));
        if n > e.1 {
            *e = (t, n);
        }
    }
    best.into_iter().map(|(net, (t, _))| (net, t)).collect()
}

fn lowest_free(owners: &HashMap<u32, String>, also_taken: &HashSet<u32>) -> Option<u32> {
    (1..=MAX_VNI).find(|v| !owners.contains_key(v) && !also_taken.contains(v))
}

/// The VNI for `net`, which has no network record, and whether the registry
/// already reserves it for `net`. None: every VNI is taken.
pub fn choose(
    net: &str,
    local: &HashMap<String, u32>,
    owners: &HashMap<u32, String>,
) -> Option<(u32, bool)> {
    let mine = |v: u32| owners.get(&v).map(String::as_str) == Some(net);
    if let Some(&t) = local.get(net) {
        if mine(t) {
            return Some((t, true));
        }
        if !owners.contains_key(&t) {
            return Some((t, false));
        }
    }
    if let Some((&v, _)) = owners.iter().filter(|(_, n)| *n == net).min() {
        return Some((v, true));
    }
    let others: HashSet<u32> = local
        .iter()
        .filter(|(n, _)| *n != net)
        .map(|(_, t)| *t)
        .collect();
    lowest_free(owners, &others).map(|v| (v, false))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Reserve `vni` for `net` again: its ports here carry it.
    Reserve { net: String, vni: u32 },
    /// Another network holds `from` now: reserve `to` for `net` and move its
    /// ports there.
    Rehome { net: String, from: u32, to: u32 },
}

/// What the agent does for networks on its bridge: `records` are those the
/// registry has a network record for, with the VNI it names (settled; the
/// VLAN pass moves stray ports onto it, and it is reserved again when its
/// `vnis/` key went while the record stayed: a wipe seen half-way).
pub fn plan(
    local: &HashMap<String, u32>,
    records: &HashMap<String, u32>,
    owners: &HashMap<u32, String>,
) -> Vec<Fix> {
    let mut owners = owners.clone();
    let mut sorted: Vec<(&String, &u32)> = local.iter().collect();
    sorted.sort();
    let all_local: HashSet<u32> = local.values().copied().collect();
    let mut fixes = Vec::new();
    for (net, &t) in sorted {
        if let Some(&v) = records.get(net) {
            if let std::collections::hash_map::Entry::Vacant(e) = owners.entry(v) {
                e.insert(net.clone());
                fixes.push(Fix::Reserve {
                    net: net.clone(),
                    vni: v,
                });
            }
            continue;
        }
        match owners.get(&t) {
            Some(o) if o == net => {}
            None => {
                owners.insert(t, net.clone());
                fixes.push(Fix::Reserve {
                    net: net.clone(),
                    vni: t,
                });
            }
            Some(_) => {
                let to = owners
                    .iter()
                    .filter(|(_, n)| *n == net)
                    .map(|(v, _)| *v)
                    .min()
                    .or_else(|| lowest_free(&owners, &all_local));
                if let Some(to) = to {
                    owners.insert(to, net.clone());
                    fixes.push(Fix::Rehome {
                        net: net.clone(),
                        from: t,
                        to,
                    });
                }
            }
        }
    }
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Clone>(pairs: &[(&str, V)]) -> HashMap<String, V> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn own(pairs: &[(u32, &str)]) -> HashMap<u32, String> {
        pairs.iter().map(|(v, n)| (*v, n.to_string())).collect()
    }

    #[test]
    fn after_a_wipe_a_network_keeps_its_vni_and_others_step_around_it() {
        let local = map(&[("blue", 1u32), ("red", 2)]);
        let empty = HashMap::new();
        assert_eq!(choose("blue", &local, &empty), Some((1, false)));
        // green is new: neither 1 nor 2, which ports here still carry.
        assert_eq!(choose("green", &local, &empty), Some((3, false)));
    }

    #[test]
    fn a_reservation_is_used_and_a_taken_tag_is_left_alone() {
        let local = map(&[("blue", 1u32)]);
        assert_eq!(
            choose("blue", &local, &own(&[(1, "blue")])),
            Some((1, true))
        );
        // 1 went to red in a restore; blue was re-homed to 5 by an agent.
        assert_eq!(
            choose("blue", &local, &own(&[(1, "red"), (5, "blue")])),
            Some((5, true))
        );
        assert_eq!(
            choose("blue", &local, &own(&[(1, "red")])),
            Some((2, false))
        );
    }

    #[test]
    fn the_agent_reserves_what_is_missing_and_rehomes_what_clashes() {
        let local = map(&[("blue", 1u32), ("red", 2), ("old", 3)]);
        let records = map(&[("old", 3u32)]);
        let fixes = plan(&local, &records, &own(&[(2, "green"), (3, "old")]));
        assert_eq!(
            fixes,
            vec![
                Fix::Reserve {
                    net: "blue".into(),
                    vni: 1
                },
                Fix::Rehome {
                    net: "red".into(),
                    from: 2,
                    to: 4
                },
            ]
        );
        // Run again once applied: nothing left to do.
        let after = own(&[(1, "blue"), (2, "green"), (3, "old"), (4, "red")]);
        let moved = map(&[("blue", 1u32), ("red", 4), ("old", 3)]);
        assert!(plan(&moved, &records, &after).is_empty());
    }

    #[test]
    fn a_record_whose_vni_key_went_gets_it_back() {
        // The wipe deleted networks/, the agent restored blue's record,
        // then the wipe deleted vnis/.
        let local = map(&[("blue", 1u32)]);
        let fixes = plan(&local, &map(&[("blue", 1u32)]), &HashMap::new());
        assert_eq!(
            fixes,
            vec![Fix::Reserve {
                net: "blue".into(),
                vni: 1
            }]
        );
        assert!(plan(&local, &map(&[("blue", 1u32)]), &own(&[(1, "blue")])).is_empty());
    }

    #[test]
    fn on_bridge_takes_the_common_tag_and_ignores_local_vlans() {
        let port = |name: &str, net: &str, tag: u32| FoundPort {
            uuid: name.into(),
            name: name.into(),
            external_ids: vec![("weft.network".into(), net.into())],
            tag: Some(tag),
        };
        let ports = [
            port("a", "blue", 7),
            port("b", "blue", 7),
            port("c", "blue", 9),
            port("d", "local", 4000),
        ];
        assert_eq!(on_bridge(&ports), map(&[("blue", 7u32)]));
    }
}
