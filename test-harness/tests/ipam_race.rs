#![allow(clippy::unwrap_used, clippy::panic)]
//! 8 simulated nodes x 100 concurrent ADDs into one /22. In a test binary of
//! its own: 800 plugin processes at once are the whole load a 2-core machine
//! can take, and nothing else should run beside them.

use std::collections::HashSet;

use serde_json::json;
use weft_harness::etcd::Etcd;
use weft_harness::fabric::Fabric;
use weft_harness::ipamtest::{ipam_cmd, ipam_conf, outcomes, owners, reservations};
use weft_harness::require_root;
use weft_harness::runtime::addr_of_key;

#[test]
fn eight_nodes_times_hundred_concurrent_adds_never_duplicate() {
    require_root();
    let fabric = Fabric::new("race").unwrap();
    let etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let dir = &etcd.dir.path;
    let mut running = Vec::new();
    for node in 0..8 {
        // 800 processes at once on a small machine: a budget to match.
        let mut conf = ipam_conf(
            "race",
            "10.100.0.0/22",
            &format!("n{node}"),
            &etcd.endpoints(),
            dir,
        );
        conf["ipam"]["etcd"]["timeoutMs"] = json!(10000);
        for c in 0..100 {
            running.push(ipam_cmd(
                &fabric.netns,
                "ADD",
                &format!("n{node}-c{c}"),
                &conf,
            ));
        }
    }
    let (granted, codes) = outcomes(running);
    let unique: HashSet<&String> = granted.iter().collect();
    assert_eq!(
        unique.len(),
        granted.len(),
        "an address was handed out twice"
    );
    let held = reservations(&etcd, &fabric, "race");
    // Everything granted is held, and nothing is held without its owner
    // record. (An ADD that answered 11 may have committed: it is owned.)
    let held_ips: HashSet<String> = held
        .iter()
        .filter_map(|(k, _)| addr_of_key(k))
        .map(|ip| ip.to_string())
        .collect();
    for ip in &granted {
        assert!(
            held_ips.contains(ip),
            "{ip} was granted but is not reserved"
        );
    }
    assert_eq!(
        owners(&etcd, &fabric, "race"),
        held.len(),
        "a reservation without its owner record"
    );
    eprintln!(
        "granted {}, refused {} with codes {:?}",
        granted.len(),
        codes.len(),
        codes.iter().collect::<HashSet<_>>()
    );
    // The bar: every ADD succeeds or returns a CNI error, and the
    // only error a full-but-roomy pool and a live etcd may give is "try
    // again later". (Alone on the machine, all 800 are granted.)
    assert!(
        codes.iter().all(|c| *c == 11),
        "refusals other than 11: {codes:?}"
    );
    assert_eq!(granted.len() + codes.len(), 800);
}
