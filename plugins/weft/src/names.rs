//! Names weft derives, so DEL, CHECK and GC can find things without a cache.

use sha2::{Digest, Sha256};

/// Host end of the veth: "wft" + 12 hex digits of a hash of container id and
/// ifname, 15 bytes, the kernel's limit. Deterministic, so DEL finds it again.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::new()
        .chain_update(container_id)
        .chain_update([0u8])
        .chain_update(ifname)
        .finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("wft{hex}")
}

/// external_ids keys on the OVS port.
pub mod ids {
    pub const NETWORK: &str = "weft.network";
    pub const CONTAINER_ID: &str = "weft.container_id";
    pub const IFNAME: &str = "weft.ifname";
    pub const NETNS: &str = "weft.netns";
    pub const POD_NAME: &str = "weft.k8s_pod_name";
    pub const POD_NAMESPACE: &str = "weft.k8s_pod_namespace";
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
