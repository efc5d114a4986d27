//! Allocator tests on the in-memory store: no root, no etcd.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::config::IpamConfig;
use crate::hints::MemHints;
use crate::keys::Keys;
use weft_cni::error::{POOL_EXHAUSTED, RESERVATION_MISMATCH};
use weft_store::{Epoch, MemStore, ReadResult, StoreError, TxnResult};

fn cfg(node: &str, ipam: serde_json::Value) -> IpamConfig {
    let mut v = ipam;
    v["etcd"] = json!({"endpoints": ["http://127.0.0.1:2379"]});
    v["nodeName"] = json!(node);
    IpamConfig::parse("net", &v, "vm").unwrap()
}

fn v4(subnet: &str) -> serde_json::Value {
    json!({"ranges": [[{"subnet": subnet}]]})
}

fn add(c: &IpamConfig, s: &mut MemStore, cid: &str) -> Result<Vec<Allocated>> {
    Allocator::new(c, s).add(cid, "eth0", &[], &mut MemHints::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn first_add_claims_a_block_and_skips_network_and_gateway() {
    let c = cfg("a", v4("10.1.0.0/24"));
    // With only the first block free the choice is forced (a node picks
    // randomly among the first free blocks, so racing nodes spread out).
    let mut s = MemStore::default();
    for other in ["4-0a010040-26", "4-0a010080-26", "4-0a0100c0-26"] {
        s.txn(
            &[],
            &[Write::Put(
                format!("/weft/v1/ipam/net/blocks/{other}"),
                b"b".to_vec(),
            )],
            &[],
        )
        .unwrap();
    }
    let got = add(&c, &mut s, "c1").unwrap();
    assert_eq!(
        got[0].ip,
        ip("10.1.0.2"),
        "network .0 and gateway .1 are skipped"
    );
    assert_eq!(got[0].cidr().to_string(), "10.1.0.2/24");
    assert_eq!(got[0].range.gateway, Some(ip("10.1.0.1")));
    assert!(s
        .data
        .contains_key("/weft/v1/ipam/net/blocks/4-0a010000-26"));
    assert!(s
        .data
        .contains_key("/weft/v1/ipam/net/nodes/a/4-0a010000-26"));
    assert!(s.data.contains_key("/weft/v1/ipam/net/owners/c1/eth0"));
}

#[test]
fn common_case_is_one_round_trip_with_hints_and_two_without() {
    let c = cfg("a", v4("10.1.0.0/24"));
    let mut s = MemStore::default();
    let mut hints = MemHints::default();
    Allocator::new(&c, &mut s)
        .add("c0", "eth0", &[], &mut hints)
        .unwrap();
    let before = s.round_trips();
    for i in 1..20 {
        Allocator::new(&c, &mut s)
            .add(&format!("c{i}"), "eth0", &[], &mut hints)
            .unwrap();
    }
    assert_eq!(
        s.round_trips() - before,
        19,
        "cached blocks and a good hint: one transaction"
    );
    let before = s.round_trips();
    let mut no_cache = MemHints {
        last: hints.last.clone(),
        ..Default::default()
    };
    Allocator::new(&c, &mut s)
        .add("fresh", "eth0", &[], &mut no_cache)
        .unwrap();
    assert_eq!(
        s.round_trips() - before,
        2,
        "read the node's blocks, then reserve"
    );
    // A repeated ADD on the cached path is answered by the failed compare.
    let again = Allocator::new(&c, &mut s)
        .add("c3", "eth0", &[], &mut hints)
        .unwrap();
    let fresh = Allocator::new(&c, &mut s)
        .add("c3", "eth0", &[], &mut MemHints::default())
        .unwrap();
    assert_eq!(again, fresh);
}

#[test]
fn the_first_add_of_a_new_node_claims_its_block_in_the_reservation() {
    let c = cfg("a", v4("10.1.0.0/24"));
    let mut s = MemStore::default();
    let mut hints = MemHints::default();
    add_with(&c, &mut s, "c0", &mut hints);
    assert_eq!(
        s.round_trips(),
        3,
        "owner and index, free blocks, claim with reservation"
    );
    assert_eq!(hints.blocks().unwrap().len(), 1);
    assert!(hints.epoch().is_some());
    // A rival claims the chosen block between our read and our commit:
    // we choose again and still end in one block of our own.
    let mut r = Racy {
        inner: MemStore::default(),
        rival: cfg("b", v4("10.1.0.0/26")),
        n: 0,
    };
    let ours = cfg("a", v4("10.1.0.0/25"));
    let got = Allocator::new(&ours, &mut r)
        .add("c1", "eth0", &[], &mut MemHints::default())
        .unwrap();
    let blocks: Vec<&String> = r
        .inner
        .data
        .keys()
        .filter(|k| k.contains("/blocks/"))
        .collect();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert!("10.1.0.64/26"
        .parse::<IpNet>()
        .unwrap()
        .contains(&got[0].ip));
}

#[test]
fn a_cache_from_another_epoch_keeps_only_what_a_commit_proves() {
    let c = cfg("a", v4("10.70.0.0/16"));
    let held: IpNet = "10.70.0.0/26".parse().unwrap();
    let gone: IpNet = "10.70.9.0/26".parse().unwrap();
    for (cluster, revision, why) in [
        (99, 1, "another cluster"),
        (0, 1_000_000, "a restored snapshot"),
    ] {
        let mut s = MemStore::default();
        s.txn(
            &[],
            &[
                Write::Put(
                    "/weft/v1/ipam/net/blocks/4-0a460000-26".into(),
                    b"a".to_vec(),
                ),
                Write::Put("/weft/v1/ipam/net/nodes/a/4-0a460000-26".into(), Vec::new()),
            ],
            &[],
        )
        .unwrap();
        let mut hints = MemHints {
            blocks: Some(vec![held, gone]),
            epoch: Some(Epoch { cluster, revision }),
            ..Default::default()
        };
        let before = s.round_trips();
        let got = add_with(&c, &mut s, "c0", &mut hints);
        assert!(held.contains(&got[0].ip), "{why}");
        assert_eq!(s.round_trips() - before, 1, "{why}");
        assert_eq!(
            hints.blocks().unwrap(),
            vec![held],
            "{why}: unproven blocks dropped"
        );
        assert_eq!(hints.epoch().unwrap().cluster, 0, "{why}");
    }
    // The same epoch: the cache is kept whole.
    let mut s = MemStore::default();
    let mut hints = MemHints::default();
    add_with(&c, &mut s, "c0", &mut hints);
    let mut more = hints.blocks().unwrap();
    more.push(gone);
    hints.set_blocks(more.clone());
    add_with(&c, &mut s, "c1", &mut hints);
    assert_eq!(hints.blocks().unwrap(), more);
}

#[test]
fn a_stale_block_cache_is_caught_by_the_compare() {
    let c = cfg("a", v4("10.1.0.0/24"));
    let mut s = MemStore::default();
    let mut hints = MemHints::default();
    // The cache names a block that node b holds in etcd.
    let b_block: IpNet = "10.1.0.64/26".parse().unwrap();
    s.txn(
        &[],
        &[Write::Put(
            "/weft/v1/ipam/net/blocks/4-0a010040-26".into(),
            b"b".to_vec(),
        )],
        &[],
    )
    .unwrap();
    hints.set_blocks(vec![b_block]);
    let got = Allocator::new(&c, &mut s)
        .add("c1", "eth0", &[], &mut hints)
        .unwrap();
    assert!(
        !b_block.contains(&got[0].ip),
        "must not allocate in b's block: {}",
        got[0].ip
    );
    assert!(
        !hints.blocks().unwrap().contains(&b_block),
        "the stale block left the cache"
    );
}

#[test]
fn repeated_add_returns_the_same_addresses() {
    let c = cfg(
        "a",
        json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}),
    );
    let mut s = MemStore::default();
    let first = add(&c, &mut s, "c1").unwrap();
    let again = add(&c, &mut s, "c1").unwrap();
    assert_eq!(first, again);
    assert_eq!(first.len(), 2, "dual-stack: one address per range set");
    assert!(first[0].ip.is_ipv4() && first[1].ip.is_ipv6());
    assert_eq!(Allocator::new(&c, &mut s).list().unwrap().len(), 2);
}

#[test]
fn addresses_are_unique_and_the_pool_runs_dry_with_a_clear_error() {
    // A /27: .0 network, .1 gateway, .31 broadcast, .5-.6 excluded: 27 left.
    let c = cfg(
        "a",
        json!({"ranges": [[{"subnet": "10.2.0.0/27"}]], "exclude": ["10.2.0.5/32", "10.2.0.6"]}),
    );
    let mut s = MemStore::default();
    let mut seen = HashSet::new();
    for i in 0..27 {
        let got = add(&c, &mut s, &format!("c{i}")).unwrap();
        assert!(seen.insert(got[0].ip), "duplicate {}", got[0].ip);
    }
    for bad in ["10.2.0.0", "10.2.0.1", "10.2.0.31", "10.2.0.5", "10.2.0.6"] {
        assert!(!seen.contains(&ip(bad)), "{bad} handed out");
    }
    let e = add(&c, &mut s, "one-too-many").unwrap_err();
    assert_eq!(e.code, POOL_EXHAUSTED);
    assert!(
        e.msg.contains("network net") && e.msg.contains("10.2.0.1-10.2.0.30"),
        "{}",
        e.msg
    );
    assert_eq!(Allocator::new(&c, &mut s).status().unwrap_err().code, 50);
}

#[test]
fn released_addresses_come_back_and_del_is_idempotent() {
    let c = cfg("a", v4("10.3.0.0/29"));
    let mut s = MemStore::default();
    let mut held = Vec::new();
    while let Ok(got) = add(&c, &mut s, &format!("c{}", held.len())) {
        held.push(got[0].ip);
    }
    assert_eq!(held.len(), 5);
    assert!(Allocator::new(&c, &mut s).del("c2", "eth0").unwrap());
    assert!(
        !Allocator::new(&c, &mut s).del("c2", "eth0").unwrap(),
        "second DEL finds nothing"
    );
    assert_eq!(add(&c, &mut s, "new").unwrap()[0].ip, held[2]);
}

#[test]
fn nodes_get_their_own_blocks_then_borrow() {
    // Two /26 blocks in a /25; three nodes.
    let a = cfg("a", v4("10.4.0.0/25"));
    let b = cfg("b", v4("10.4.0.0/25"));
    let z = cfg("z", v4("10.4.0.0/25"));
    let mut s = MemStore::default();
    let ia = add(&a, &mut s, "a1").unwrap()[0].ip;
    let ib = add(&b, &mut s, "b1").unwrap()[0].ip;
    let block = |ip: IpAddr| IpNet::new(ip, 26).unwrap().trunc();
    assert_ne!(block(ia), block(ib), "each node claims its own block");
    // z finds no free block and borrows from a or b; its record says z.
    let iz = add(&z, &mut s, "z1").unwrap()[0].ip;
    assert!(iz != ia && iz != ib);
    let list = Allocator::new(&z, &mut s).list().unwrap();
    assert!(list.iter().any(|(ip, h)| *ip == iz && h.node == "z"));
    // GC on z only touches z's reservations.
    assert_eq!(Allocator::new(&z, &mut s).gc(&[]).unwrap(), 1);
    assert_eq!(Allocator::new(&z, &mut s).list().unwrap().len(), 2);
}

#[test]
fn static_requests_get_exactly_that_address_or_name_the_holder() {
    let c = cfg("a", v4("10.5.0.0/24"));
    let mut s = MemStore::default();
    let mut h = MemHints::default();
    let got = Allocator::new(&c, &mut s)
        .add("web", "eth0", &[ip("10.5.0.50")], &mut h)
        .unwrap();
    assert_eq!(got[0].ip, ip("10.5.0.50"));
    let e = Allocator::new(&c, &mut s)
        .add("other", "eth0", &[ip("10.5.0.50")], &mut h)
        .unwrap_err();
    assert_eq!(e.code, ADDRESS_UNAVAILABLE);
    assert!(
        e.msg.contains("container web ifname eth0 on node a"),
        "{}",
        e.msg
    );
    // The gateway is never automatic but may be asked for.
    let gw = Allocator::new(&c, &mut s)
        .add("router", "eth0", &[ip("10.5.0.1")], &mut h)
        .unwrap();
    assert_eq!(gw[0].ip, ip("10.5.0.1"));
    for bad in ["10.5.0.0", "10.5.0.255", "10.9.0.1"] {
        let e = Allocator::new(&c, &mut s)
            .add("x", "eth0", &[ip(bad)], &mut h)
            .unwrap_err();
        assert_eq!(e.code, ADDRESS_UNAVAILABLE, "{bad}");
    }
    assert!(
        s.data.keys().all(|k| !k.contains("owners/x/")),
        "failed requests reserve nothing"
    );
}

#[test]
fn check_and_gc() {
    let c = cfg("a", v4("10.6.0.0/24"));
    let mut s = MemStore::default();
    let a = add(&c, &mut s, "keep").unwrap()[0].ip;
    let b = add(&c, &mut s, "stale").unwrap()[0].ip;
    Allocator::new(&c, &mut s)
        .check("keep", "eth0", &[a])
        .unwrap();
    assert_eq!(
        Allocator::new(&c, &mut s)
            .check("keep", "eth0", &[b])
            .unwrap_err()
            .code,
        RESERVATION_MISMATCH
    );
    assert_eq!(
        Allocator::new(&c, &mut s)
            .check("gone", "eth0", &[a])
            .unwrap_err()
            .code,
        RESERVATION_MISMATCH
    );
    let released = Allocator::new(&c, &mut s)
        .gc(&[("keep".into(), "eth0".into())])
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(Allocator::new(&c, &mut s).list().unwrap().len(), 1);
    assert!(Allocator::new(&c, &mut s)
        .check("stale", "eth0", &[b])
        .is_err());
}

#[test]
fn an_unreachable_store_is_code_11_and_reserves_nothing() {
    let c = cfg("a", v4("10.7.0.0/24"));
    let mut s = MemStore::default();
    s.down = true;
    assert_eq!(add(&c, &mut s, "c1").unwrap_err().code, 11);
    assert_eq!(
        Allocator::new(&c, &mut s)
            .del("c1", "eth0")
            .unwrap_err()
            .code,
        11
    );
    assert_eq!(Allocator::new(&c, &mut s).status().unwrap_err().code, 50);
    s.down = false;
    assert!(s.data.is_empty());
}

/// Lets a rival node allocate between our read and our transaction, every
/// time: the worst interleaving for us.
struct Racy {
    inner: MemStore,
    rival: IpamConfig,
    n: usize,
}

impl Store for Racy {
    fn read(&mut self, reads: &[Read]) -> Result<Vec<ReadResult>, StoreError> {
        self.inner.read(reads)
    }
    fn txn(&mut self, c: &[Compare], w: &[Write], f: &[Read]) -> Result<TxnResult, StoreError> {
        if w.iter()
            .any(|w| matches!(w, Write::Put(k, _) if k.contains("/owners/")))
            && self.n < 40
        {
            self.n += 1;
            let rival = self.rival.clone();
            let _ = Allocator::new(&rival, &mut self.inner).add(
                &format!("rival{}", self.n),
                "eth0",
                &[],
                &mut MemHints::default(),
            );
        }
        self.inner.txn(c, w, f)
    }
    fn round_trips(&self) -> u64 {
        self.inner.round_trips()
    }
}

#[test]
fn lost_races_never_duplicate() {
    // Both nodes on one block-sized subnet, so every pick can collide.
    let ours = cfg("a", v4("10.8.0.0/26"));
    let mut s = Racy {
        inner: MemStore::default(),
        rival: cfg("a", v4("10.8.0.0/26")),
        n: 0,
    };
    let mut mine = Vec::new();
    for i in 0..15 {
        mine.push(
            Allocator::new(&ours, &mut s)
                .add(&format!("c{i}"), "eth0", &[], &mut MemHints::default())
                .unwrap()[0]
                .ip,
        );
    }
    let all = Allocator::new(&ours, &mut s.inner).list().unwrap();
    let unique: HashSet<IpAddr> = all.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(unique.len(), all.len(), "an address is held twice");
    assert_eq!(all.len(), 15 + s.n);
    for ip in mine {
        assert!(all
            .iter()
            .any(|(i, h)| *i == ip && h.container_id.starts_with('c')));
    }
}

#[test]
fn keys_round_trip() {
    let b: IpNet = "10.244.0.64/26".parse().unwrap();
    let keys = Keys::new("n");
    assert_eq!(parse_block_key(&keys.block(&b)), Some(b));
    let v6: IpNet = "fd00::40/122".parse().unwrap();
    assert_eq!(parse_block_key(&keys.node_block("a", &v6)), Some(v6));
    assert_eq!(
        addr_of_ip_key(&keys.ip(ip("10.244.0.70"))),
        Some(ip("10.244.0.70"))
    );
}

#[test]
fn stale_duplicated_hints_never_fail_an_add_and_are_cleaned_at_once() {
    let c = cfg("a", v4("10.50.0.0/16"));
    // A fresh etcd, and a cache from an earlier one: the same block several
    // times, and blocks etcd has never heard of.
    let mut s = MemStore::default();
    let stale: IpNet = "10.50.0.192/26".parse().unwrap();
    let mut hints = MemHints::default();
    hints.set_blocks(vec![
        stale,
        stale,
        "10.50.2.0/26".parse().unwrap(),
        stale,
        "10.50.9.64/26".parse().unwrap(),
    ]);
    let mut trips = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..12 {
        let before = s.round_trips();
        let got = Allocator::new(&c, &mut s)
            .add(&format!("c{i}"), "eth0", &[], &mut hints)
            .unwrap_or_else(|e| panic!("ADD {i}: {}", e.msg));
        trips.push(s.round_trips() - before);
        assert!(seen.insert(got[0].ip), "{} handed out twice", got[0].ip);
        let cached = hints.blocks().unwrap();
        let mut dedup = cached.clone();
        dedup.dedup();
        assert_eq!(cached, dedup, "duplicates left in the cache");
        assert!(
            !cached.contains(&stale)
                || s.data
                    .contains_key("/weft/v1/ipam/net/blocks/4-0a3200c0-26"),
            "a stale block stayed in the cache: {cached:?}"
        );
    }
    // The first ADD: the refused reservation (which also reads the node's
    // index), the read that chooses a free block, the reservation that
    // claims it. Then one each.
    assert!(trips[0] <= 3, "{trips:?}");
    assert!(trips[1..].iter().all(|t| *t == 1), "{trips:?}");
    eprintln!("round trips per ADD with stale hints: {trips:?}");
}

#[test]
fn a_block_the_cache_lost_is_used_before_claiming_another() {
    let c = cfg("a", v4("10.60.0.0/16"));
    let mut s = MemStore::default();
    let mut first = MemHints::default();
    add_with(&c, &mut s, "c0", &mut first);
    let ours = first.blocks().unwrap();
    assert_eq!(ours.len(), 1);
    // Another weft-ipam on this node saved an empty cache over ours.
    let mut forgot = MemHints {
        blocks: Some(Vec::new()),
        ..Default::default()
    };
    let got = add_with(&c, &mut s, "c1", &mut forgot);
    assert!(
        ours[0].contains(&got[0].ip),
        "{} is not in {}",
        got[0].ip,
        ours[0]
    );
    let claimed = s.data.keys().filter(|k| k.contains("/blocks/")).count();
    assert_eq!(claimed, 1, "a second block was claimed");
}

fn add_with(c: &IpamConfig, s: &mut MemStore, cid: &str, h: &mut MemHints) -> Vec<Allocated> {
    Allocator::new(c, s).add(cid, "eth0", &[], h).unwrap()
}

#[test]
fn ipv6_64_blocks_in_a_48_are_allocated_and_raced_over_without_walking_them() {
    // With enumeration this would try to list 2^64 addresses per block.
    let net = json!({"ranges": [[{"subnet": "fd00:1::/48"}]], "blockSizeV6": 64});
    let (a, b) = (cfg("a", net.clone()), cfg("b", net.clone()));
    let mut s = Racy {
        inner: MemStore::default(),
        rival: cfg("a", net),
        n: 0,
    };
    let mut hints = MemHints::default();
    let mut got = Vec::new();
    for i in 0..30 {
        got.push(add_with(&a, &mut s.inner, &format!("a{i}"), &mut hints)[0].ip);
    }
    // Every reservation loses a race to a rival on the same block: the
    // retry samples the /64 for free addresses.
    for i in 0..10 {
        got.push(
            Allocator::new(&a, &mut s)
                .add(&format!("r{i}"), "eth0", &[], &mut MemHints::default())
                .unwrap()[0]
                .ip,
        );
    }
    for i in 0..10 {
        got.push(add(&b, &mut s.inner, &format!("b{i}")).unwrap()[0].ip);
    }
    let all = Allocator::new(&a, &mut s.inner).list().unwrap();
    let unique: HashSet<IpAddr> = all.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(unique.len(), all.len(), "an address is held twice");
    assert_eq!(all.len(), 50 + s.n);
    let block_of = |ip: &IpAddr| IpNet::new(*ip, 64).unwrap().trunc();
    let a_blocks: HashSet<IpNet> = got[..40].iter().map(block_of).collect();
    let b_blocks: HashSet<IpNet> = got[40..].iter().map(block_of).collect();
    assert_eq!(
        a_blocks.len(),
        1,
        "node a stays in its one /64: {a_blocks:?}"
    );
    assert!(a_blocks.is_disjoint(&b_blocks));
}

#[test]
fn a_nearly_full_ipv6_120_hands_out_its_last_addresses_then_runs_dry() {
    // fd00:2::/120 is one block of 256; the subnet's own address and the
    // default gateway ::1 are never handed out, so 254 are usable. A
    // rival on the same node takes one address before each of our
    // reservations.
    let net = json!({"ranges": [[{"subnet": "fd00:2::/120"}]], "blockSizeV6": 120});
    let ours = cfg("a", net.clone());
    let mut s = Racy {
        inner: MemStore::default(),
        rival: cfg("a", net),
        n: 0,
    };
    for i in 0..200 {
        add_with(
            &ours,
            &mut s.inner,
            &format!("pre{i}"),
            &mut MemHints::default(),
        );
    }
    let mut mine = 0;
    loop {
        match Allocator::new(&ours, &mut s).add(
            &format!("c{mine}"),
            "eth0",
            &[],
            &mut MemHints::default(),
        ) {
            Ok(_) => mine += 1,
            Err(e) => {
                assert_eq!(e.code, POOL_EXHAUSTED, "{}", e.msg);
                break;
            }
        }
    }
    let all = Allocator::new(&ours, &mut s.inner).list().unwrap();
    let unique: HashSet<IpAddr> = all.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(unique.len(), all.len(), "an address is held twice");
    assert_eq!(all.len(), 254, "every usable address is held once");
    // (The rival's attempts include ones that found the pool full.)
    let rivals = all
        .iter()
        .filter(|(_, h)| h.container_id.starts_with("rival"))
        .count();
    assert_eq!(200 + mine + rivals, 254);
    assert!(!unique.contains(&ip("fd00:2::")) && !unique.contains(&ip("fd00:2::1")));
}

#[test]
fn an_empty_block_goes_back_and_its_node_claims_another_cleanly() {
    let c = cfg("a", v4("10.80.0.0/24"));
    let mut s = MemStore::default();
    let mut hints = MemHints::default();
    add_with(&c, &mut s, "c0", &mut hints);
    let first = hints.blocks().unwrap()[0];
    assert!(Allocator::new(&c, &mut s)
        .empty_blocks_of("a")
        .unwrap()
        .is_empty());
    assert!(Allocator::new(&c, &mut s).del("c0", "eth0").unwrap());
    assert_eq!(
        Allocator::new(&c, &mut s).empty_blocks_of("a").unwrap(),
        vec![first]
    );
    // Another node's claim is not ours to release.
    assert!(!Allocator::new(&c, &mut s)
        .release_block("b", &first)
        .unwrap());
    assert!(Allocator::new(&c, &mut s)
        .release_block("a", &first)
        .unwrap());
    assert!(!s
        .data
        .keys()
        .any(|k| k.contains("/blocks/") || k.contains("/nodes/")));
    // The cache still names the released block: the next ADD finds out in
    // its first round trip and claims a block again, in at most 3.
    let before = s.round_trips();
    add_with(&c, &mut s, "c1", &mut hints);
    assert!(
        s.round_trips() - before <= 3,
        "{}",
        s.round_trips() - before
    );
    assert_eq!(hints.blocks().unwrap().len(), 1);
    assert_eq!(s.data.keys().filter(|k| k.contains("/blocks/")).count(), 1);
    // A node gone for good gives every block back.
    let b = cfg("b", v4("10.80.0.0/24"));
    add(&b, &mut s, "b0").unwrap();
    Allocator::new(&b, &mut s).del("b0", "eth0").unwrap();
    assert_eq!(
        Allocator::new(&b, &mut s).release_blocks_of("b").unwrap(),
        1
    );
    assert!(!s.data.keys().any(|k| k.contains("/nodes/b/")));
}

#[test]
fn with_an_agent_an_add_needs_the_ready_key_and_waits_only_so_long_without_it() {
    let c = cfg("a", v4("10.1.0.0/24"));
    let mut s = MemStore::default();
    let ready = |s: &mut MemStore| {
        s.txn(&[], &[Write::Put(ready_key("a"), Vec::new())], &[])
            .unwrap();
    };
    ready(&mut s);
    let mut a = Allocator::new(&c, &mut s);
    a.wait_ready = true;
    a.add("c1", "eth0", &[], &mut MemHints::default()).unwrap();

    // A wipe: the key is gone with everything else. The ADD waits for it,
    // then goes on without it.
    let mut s = MemStore::default();
    let t0 = std::time::Instant::now();
    let mut a = Allocator::new(&c, &mut s);
    a.wait_ready = true;
    a.add("c2", "eth0", &[], &mut MemHints::default()).unwrap();
    let waited = t0.elapsed();
    // At most half the etcd timeout, which the allocation also needs.
    let bound = READY_WAIT.min(std::time::Duration::from_millis(c.etcd.timeout_ms / 2));
    assert!(waited >= bound, "{waited:?}");
    assert!(waited < bound * 2, "{waited:?}");
    assert!(!s.data.contains_key(&ready_key("a")));
}
