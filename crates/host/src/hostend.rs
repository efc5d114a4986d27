//! The host end of a container's veth must be a wire into OVS and nothing
//! else: not an interface of the host that answers ARP, holds IPv6
//! addresses, or routes and delivers what a container sends to it.
//!
//! On the kernel (`system`) datapath this holds by construction: the device
//! is an OVS vport, whose rx handler takes every frame before the IP stack
//! sees it. On the userspace (`netdev`) datapath, ovs-vswitchd reads the
//! device with a packet socket and the kernel still processes every frame,
//! so weft shuts each door itself:
//! - ARP: the peer is created with IFF_NOARP, so the kernel neither answers
//!   nor sends ARP on it (both datapaths);
//! - IPv6: `disable_ipv6` before the link comes up, so it never gets a
//!   link-local address and drops what arrives (both datapaths);
//! - everything else (IPv4 to host addresses, routed traffic, broadcasts to
//!   host sockets): one nftables rule for the whole host, `iifname "wft*"
//!   drop` at prerouting (table `inet weft-hostends`). It runs in the IP
//!   stack, which on the netdev datapath is the only other reader of those
//!   frames: ovs-vswitchd's packet socket has them already. On the kernel
//!   datapath the IP stack never sees them, so the rule matches nothing.
//!
//! Why one rule by name and not something per device: ovs-vswitchd deletes a
//! port's ingress qdisc when it first configures its policing, which raced
//! with ADD in testing (so no tc filter), and a `netdev`-family chain per
//! device cost ~0.2 ms of ADD and an RCU grace period (~6 ms) to delete.
//! ADD only asks the kernel whether the chain is there (one netlink
//! request, no exec) and runs `nft` when it is not: after boot, or after
//! someone flushed the ruleset.

use std::io::ErrorKind;

use weft_cni::error::{self, Error, Result};

/// The table and chain that keep the IP stack off every host end.
pub const TABLE: &str = "weft-hostends";
const CHAIN: &str = "in";

/// Turns IPv6 off on a host link; must run on a thread in the host's netns.
pub fn disable_ipv6(name: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has no such file, and nothing to turn off.
        Err(e)
            if e.kind() == ErrorKind::NotFound
                && !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err(e) => Err(hostend_err(format!("cannot turn IPv6 off on {name}")).with_details(e)),
    }
}

fn hostend_err(msg: impl Into<String>) -> Error {
    Error::new(error::NETLINK_FAILURE, msg)
}

/// The whole table, replaced as one: the empty `table` line makes the
/// `delete` safe when it is not there. Priority -300 runs it before
/// conntrack, so a container's packets create no state either.
pub fn script() -> String {
    format!(
        "{drop}table inet {TABLE} {{\n  \
         chain {CHAIN} {{\n    type filter hook prerouting priority -300; policy accept;\n    \
         iifname \"{prefix}*\" drop\n  }}\n}}\n",
        drop = crate::nft::drop_table(TABLE),
        prefix = crate::names::HOST_VETH_PREFIX
    )
}

/// Whether the host-end rule is in place (for `weftctl doctor`).
pub fn input_drop_present() -> Result<bool> {
    crate::nft::chain_exists(TABLE, CHAIN)
}

/// Removes the host-end rule (for `weftctl cleanup`); a missing one is fine.
pub fn remove_input_drop() -> Result<()> {
    crate::nft::remove_table(TABLE)
}

/// Makes sure the host's IP stack drops what arrives on host ends; must run
/// on a thread in the host's netns. One netlink question when the rule is
/// there (every ADD but the first after boot or a flush).
pub fn ensure_input_drop() -> Result<()> {
    if input_drop_present()? {
        return Ok(());
    }
    crate::nft::run(&script()).map_err(|e| {
        Error::new(
            e.code,
            format!(
                "cannot install the nftables rule that keeps containers off this host's IP stack \
                 (netdev datapath): {}",
                e.msg
            ),
        )
        .with_details(&e.details)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_drops_by_host_end_prefix_before_conntrack() {
        let s = script();
        assert!(s.contains("table inet weft-hostends {"));
        assert!(s.contains("hook prerouting priority -300; policy accept;"));
        assert!(s.contains("iifname \"wft*\" drop"));
        assert!(s.starts_with("table inet weft-hostends {}\ndelete table"));
    }
}
