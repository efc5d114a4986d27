//! Address arithmetic for one range: which addresses may be handed out, the
//! blocks a range is cut into, and store keys that sort like addresses.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

fn first(net: &IpNet) -> u128 {
    to_u128(net.network())
}

fn last(net: &IpNet) -> u128 {
    to_u128(net.broadcast())
}

/// One validated range: a subnet, the part of it handed out, and its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    pub fn is_v6(&self) -> bool {
        self.subnet.addr().is_ipv6()
    }

    /// The subnet's own address and, for IPv4, its broadcast address.
    fn reserved(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        v == first(&self.subnet)
            || (!self.is_v6() && v == last(&self.subnet) && self.subnet.prefix_len() < 31)
    }

    fn in_span(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        ip.is_ipv6() == self.is_v6() && v >= to_u128(self.start) && v <= to_u128(self.end)
    }

    /// May `ip` be handed out without being asked for?
    pub fn auto_allowed(&self, ip: IpAddr, exclude: &[IpNet]) -> bool {
        self.in_span(ip)
            && !self.reserved(ip)
            && Some(ip) != self.gateway
            && !exclude.iter().any(|e| e.contains(&ip))
    }

    /// May `ip` be requested explicitly? The gateway may: a container can be
    /// the network's router.
    pub fn static_allowed(&self, ip: IpAddr, exclude: &[IpNet]) -> bool {
        (self.in_span(ip) || Some(ip) == self.gateway)
            && self.subnet.contains(&ip)
            && !self.reserved(ip)
            && !exclude.iter().any(|e| e.contains(&ip))
    }

    /// Aligned blocks of `prefix` that hold at least one address of the
    /// range, in order. Lazy: a /64 holds 2^58 blocks of /122.
    pub fn blocks(&self, prefix: u8) -> impl Iterator<Item = IpNet> + '_ {
        let prefix = prefix.max(self.subnet.prefix_len());
        let bits: u32 = if self.is_v6() { 128 } else { 32 };
        let size: u128 = 1u128.checked_shl(bits - prefix as u32).unwrap_or(0);
        let (lo, hi) = (to_u128(self.start), to_u128(self.end));
        let first_block = if size == 0 {
            None
        } else {
            Some(lo - lo % size)
        };
        std::iter::successors(first_block, move |at| {
            at.checked_add(size).filter(|n| *n <= hi)
        })
        .filter_map(move |at| IpNet::new(from_u128(at, self.is_v6()), prefix).ok())
    }

    /// The block of `prefix` that holds `ip`.
    pub fn block_of(&self, ip: IpAddr, prefix: u8) -> Option<IpNet> {
        IpNet::new(ip, prefix.max(self.subnet.prefix_len()))
            .ok()
            .map(|n| n.trunc())
    }

    /// The first address in `block`, at or after `from`, handed out
    /// automatically and not in `skip`. One step per skipped or special
    /// address, never one per address of the block: a /64 block costs what
    /// a /26 does.
    pub fn next_free_in(
        &self,
        block: &IpNet,
        from: IpAddr,
        exclude: &[IpNet],
        skip: &HashSet<IpAddr>,
    ) -> Option<IpAddr> {
        let end = last(block);
        let mut at = from_u128(to_u128(from).max(first(block)), self.is_v6());
        loop {
            let ip = self.next_usable(at, exclude)?;
            if to_u128(ip) > end {
                return None;
            }
            if !skip.contains(&ip) {
                return Some(ip);
            }
            at = from_u128(to_u128(ip).checked_add(1)?, self.is_v6());
        }
    }

    /// The first address at or after `from` handed out automatically; jumps
    /// over excluded spans, so it is quick however large they are.
    pub fn next_usable(&self, from: IpAddr, exclude: &[IpNet]) -> Option<IpAddr> {
        let v6 = self.is_v6();
        let mut at = to_u128(from).max(to_u128(self.start));
        let end = to_u128(self.end);
        while at <= end {
            if let Some(e) = exclude.iter().find(|e| e.contains(&from_u128(at, v6))) {
                at = last(e).checked_add(1)?;
                continue;
            }
            let ip = from_u128(at, v6);
            if self.auto_allowed(ip, exclude) {
                return Some(ip);
            }
            at = at.checked_add(1)?;
        }
        None
    }

    /// How many addresses this range hands out automatically.
    pub fn usable_count(&self, exclude: &[IpNet]) -> u128 {
        let (lo, hi) = (to_u128(self.start), to_u128(self.end));
        let mut spans: Vec<(u128, u128)> = exclude
            .iter()
            .filter(|e| e.addr().is_ipv6() == self.is_v6())
            .map(|e| (first(e).max(lo), last(e).min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        spans.sort();
        let mut excluded = 0u128;
        let mut covered_to: Option<u128> = None;
        for (a, b) in spans {
            let a = covered_to.map_or(a, |c| a.max(c.saturating_add(1)));
            if a <= b {
                excluded += b - a + 1;
            }
            covered_to = Some(covered_to.map_or(b, |c| c.max(b)));
        }
        let mut special: Vec<IpAddr> = vec![self.subnet.network()];
        if !self.is_v6() {
            special.push(self.subnet.broadcast());
        }
        special.extend(self.gateway);
        special.sort();
        special.dedup();
        let special = special
            .iter()
            .filter(|ip| self.in_span(**ip) && !exclude.iter().any(|e| e.contains(*ip)))
            .count() as u128;
        (hi - lo + 1)
            .saturating_sub(excluded)
            .saturating_sub(special)
    }

    /// Does any address of this range get handed out automatically?
    pub fn has_usable(&self, exclude: &[IpNet]) -> bool {
        self.next_usable(self.start, exclude).is_some()
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_v6() == other.is_v6()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

/// A store key for an address that sorts like the address: "4-0a000001",
/// "6-" and 32 hex digits. The range of a block is then a key range.
pub fn addr_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("4-{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("6-{:032x}", u128::from(v6)),
    }
}

/// A block's key: its first address's key and its prefix length.
pub fn block_key(block: &IpNet) -> String {
    format!("{}-{}", addr_key(block.network()), block.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: &str, end: &str, gw: Option<&str>) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    /// Every automatic address of `block`, walked with `next_free_in`.
    fn usable_in(r: &Range, block: &IpNet, excl: &[IpNet]) -> Vec<IpAddr> {
        let (mut out, none) = (Vec::new(), HashSet::new());
        let mut at = block.network();
        while let Some(ip) = r.next_free_in(block, at, excl, &none) {
            out.push(ip);
            at = from_u128(to_u128(ip) + 1, r.is_v6());
        }
        out
    }

    #[test]
    fn the_next_free_address_of_a_huge_block_is_found_without_walking_it() {
        let r = range(
            "fd00:1::/48",
            "fd00:1::1",
            "fd00:1::ffff:ffff:ffff:ffff:ffff",
            None,
        );
        let block: IpNet = "fd00:1:0:7::/64".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let skip: HashSet<IpAddr> = [ip("fd00:1:0:7::1"), ip("fd00:1:0:7::2")].into();
        // The subnet's own address (fd00:1::) is in another block; this
        // block's first address is usable.
        assert_eq!(
            r.next_free_in(&block, block.network(), &[], &skip),
            Some(ip("fd00:1:0:7::"))
        );
        assert_eq!(
            r.next_free_in(&block, ip("fd00:1:0:7::1"), &[], &skip),
            Some(ip("fd00:1:0:7::3"))
        );
        // An excluded /65 is jumped over in one step, and the block's end
        // is the end of the search.
        let excl: Vec<IpNet> = vec!["fd00:1:0:7:8000::/65".parse().unwrap()];
        assert_eq!(
            r.next_free_in(
                &block,
                ip("fd00:1:0:7:7fff:ffff:ffff:ffff"),
                &excl,
                &HashSet::new()
            ),
            Some(ip("fd00:1:0:7:7fff:ffff:ffff:ffff"))
        );
        assert_eq!(
            r.next_free_in(&block, ip("fd00:1:0:7:8000::"), &excl, &HashSet::new()),
            None
        );
    }

    #[test]
    fn network_broadcast_and_gateway_are_never_automatic() {
        let r = range("10.0.0.0/24", "10.0.0.0", "10.0.0.255", Some("10.0.0.1"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!r.auto_allowed(ip("10.0.0.0"), &[]));
        assert!(!r.auto_allowed(ip("10.0.0.255"), &[]));
        assert!(!r.auto_allowed(ip("10.0.0.1"), &[]));
        assert!(r.auto_allowed(ip("10.0.0.2"), &[]));
        // The gateway can still be asked for by name.
        assert!(r.static_allowed(ip("10.0.0.1"), &[]));
        assert!(!r.static_allowed(ip("10.0.0.255"), &[]));
        assert!(!r.static_allowed(ip("10.0.1.5"), &[]));
    }

    #[test]
    fn exclusions_and_span_limit_candidates() {
        let r = range("10.0.0.0/24", "10.0.0.10", "10.0.0.20", Some("10.0.0.1"));
        let excl: Vec<IpNet> = vec!["10.0.0.12/31".parse().unwrap()];
        let block: IpNet = "10.0.0.0/26".parse().unwrap();
        let got: Vec<String> = usable_in(&r, &block, &excl)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(got.first().map(String::as_str), Some("10.0.0.10"));
        assert!(!got.contains(&"10.0.0.12".to_string()) && !got.contains(&"10.0.0.13".to_string()));
        assert_eq!(got.len(), 9);
        assert!(!r.static_allowed("10.0.0.12".parse().unwrap(), &excl));
    }

    #[test]
    fn blocks_are_aligned_and_cover_the_span() {
        let r = range("10.244.0.0/16", "10.244.0.10", "10.244.1.200", None);
        let blocks: Vec<String> = r.blocks(26).map(|b| b.to_string()).collect();
        assert_eq!(blocks.first().map(String::as_str), Some("10.244.0.0/26"));
        assert_eq!(blocks.last().map(String::as_str), Some("10.244.1.192/26"));
        assert_eq!(blocks.len(), 8);
        // A subnet smaller than the block size is one block.
        let small = range("10.9.0.0/28", "10.9.0.1", "10.9.0.14", None);
        let small_blocks: Vec<IpNet> = small.blocks(26).collect();
        assert_eq!(small_blocks, vec!["10.9.0.0/28".parse::<IpNet>().unwrap()]);
        let v6 = range("fd00::/64", "fd00::1", "fd00::ffff", None);
        assert_eq!(v6.blocks(122).count(), 1024);
        let whole = range("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", None);
        let fourth = whole.blocks(122).nth(3).map(|b| b.to_string());
        assert_eq!(fourth.as_deref(), Some("fd00::c0/122"));
    }

    #[test]
    fn keys_sort_like_addresses() {
        let a = addr_key("10.0.0.9".parse().unwrap());
        let b = addr_key("10.0.0.10".parse().unwrap());
        let c = addr_key("10.0.1.0".parse().unwrap());
        assert!(a < b && b < c);
        assert_eq!(a, "4-0a000009");
        assert_eq!(block_key(&"10.0.0.0/26".parse().unwrap()), "4-0a000000-26");
        assert!(addr_key("fd00::1".parse().unwrap()).starts_with("6-fd00"));
    }

    #[test]
    fn usable_count_matches_enumeration() {
        let r = range("10.0.0.0/24", "10.0.0.0", "10.0.0.255", Some("10.0.0.1"));
        let excl: Vec<IpNet> = vec![
            "10.0.0.16/28".parse().unwrap(),
            "10.0.0.20/30".parse().unwrap(),
            "10.0.0.1/32".parse().unwrap(),
        ];
        let block: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(
            r.usable_count(&excl),
            usable_in(&r, &block, &excl).len() as u128
        );
        assert_eq!(r.usable_count(&[]), 253);
    }

    #[test]
    fn usable_and_overlap() {
        let tiny = range("10.0.0.0/30", "10.0.0.1", "10.0.0.1", Some("10.0.0.1"));
        assert!(!tiny.has_usable(&[]), "only the gateway");
        let r = range("10.0.0.0/24", "10.0.0.1", "10.0.0.254", None);
        assert!(!r.has_usable(&["10.0.0.0/24".parse().unwrap()]));
        // A large excluded head does not hide the free tail.
        let big = range("10.244.0.0/16", "10.244.0.1", "10.244.255.254", None);
        let head: Vec<IpNet> = vec![
            "10.244.0.0/17".parse().unwrap(),
            "10.244.128.0/18".parse().unwrap(),
        ];
        assert_eq!(
            big.next_usable(big.start, &head),
            Some("10.244.192.0".parse().unwrap())
        );
        assert!(big.has_usable(&head));
        let a = range("10.0.0.0/24", "10.0.0.1", "10.0.0.100", None);
        let b = range("10.0.0.0/24", "10.0.0.100", "10.0.0.200", None);
        let c = range("10.0.0.0/24", "10.0.0.101", "10.0.0.200", None);
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
