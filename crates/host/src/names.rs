//! Names weft derives, so DEL, CHECK and GC can find things without a cache.

use sha2::{Digest, Sha256};

fn short_hash(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    let hex: String = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}{hex}")
}

/// The tunnel port to `peer` for `network`: "wtn" + 12 hex digits.
pub fn tunnel_port(network: &str, peer: &str) -> String {
    short_hash("wtn", &[network, peer])
}

/// The network's gateway port on this host: "wgw" + 12 hex digits.
pub fn gateway_port(network: &str) -> String {
    short_hash("wgw", &[network])
}

/// The gateway's MAC, the same on every host: locally administered, unicast.
pub fn gateway_mac(network: &str) -> String {
    let d = Sha256::new()
        .chain_update("weft-gateway")
        .chain_update(network)
        .finalize();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

/// What every host end's name starts with (and nothing else of ours does:
/// the host-end nftables rule matches it).
pub const HOST_VETH_PREFIX: &str = "wft";

/// Host end of the veth: "wft" + 12 hex digits of a hash of container id and
/// ifname, 15 bytes, the kernel's limit. Deterministic, so DEL finds it again.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    short_hash(HOST_VETH_PREFIX, &[container_id, ifname])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_is_stable_short_and_distinct() {
        let a = host_veth("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth("abc", "eth0"));
        assert_ne!(a, host_veth("abc", "eth1"));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(host_veth("ab", "ceth0"), a);
        assert!(weft_cni::env::valid_ifname(&a).is_ok());
    }
}
