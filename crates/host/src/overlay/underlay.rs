//! Finding this host's underlay: the address peers reach it on, and the MTU
//! of the link that carries it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use weft_cni::{Error, Result};

use super::config::Overlay;
use crate::link::Netlink;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ip: IpAddr,
    pub ifname: String,
    pub mtu: u32,
}

/// The address and port of an etcd endpoint URL.
pub fn endpoint_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::config(format!("etcd.endpoints: cannot resolve {url}")))
}

/// The source address the kernel would use toward `dst`: a connected UDP
/// socket asks the routing table and sends nothing.
pub fn source_toward(dst: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    Ok(s.local_addr()?.ip())
}

pub fn detect(nl: &Netlink, o: &Overlay) -> Result<Underlay> {
    let not_found = |what: String| {
        Error::config(format!(
            "{what}; set node.underlayInterface or node.underlayIP"
        ))
    };
    let ip = match (&o.underlay_ip, &o.underlay_interface) {
        (Some(ip), _) => *ip,
        (None, Some(ifname)) => {
            let link = nl.link(nl.host(), ifname)?.ok_or_else(|| {
                not_found(format!("node.underlayInterface {ifname} does not exist"))
            })?;
            let addrs = nl.addresses(nl.host(), link.index)?;
            // A global address, IPv4 first: link-local ones cannot be tunnel ends.
            addrs
                .iter()
                .map(|a| a.addr())
                .filter(|a| !is_link_local(a))
                .min_by_key(|a| a.is_ipv6())
                .ok_or_else(|| {
                    not_found(format!(
                        "node.underlayInterface {ifname} has no usable address"
                    ))
                })?
        }
        (None, None) => {
            let first = o
                .etcd
                .endpoints
                .first()
                .map(String::as_str)
                .unwrap_or_default();
            let dst = endpoint_addr(first)?;
            let ip = source_toward(dst)
                .map_err(|e| not_found(format!("no route toward etcd at {dst} ({e})")))?;
            if ip.is_loopback() {
                return Err(not_found(format!(
                    "etcd at {dst} is reached over loopback, which peers cannot use"
                )));
            }
            ip
        }
    };
    let (ifname, mtu) = nl
        .link_of_address(ip)?
        .ok_or_else(|| not_found(format!("no interface on this host has the address {ip}")))?;
    Ok(Underlay { ip, ifname, mtu })
}

/// The underlay's subnets: the prefixes of its address on its interface.
pub fn subnets(nl: &Netlink, u: &Underlay) -> Result<Vec<ipnet::IpNet>> {
    let Some(link) = nl.link(nl.host(), &u.ifname)? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .addresses(nl.host(), link.index)?
        .into_iter()
        .filter(|n| n.addr() == u.ip)
        .map(|n| n.trunc())
        .collect())
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_addr("http://10.1.2.3:2379").unwrap(),
            "10.1.2.3:2379".parse().unwrap()
        );
        assert_eq!(
            endpoint_addr("https://[fd00::1]:2379/").unwrap(),
            "[fd00::1]:2379".parse().unwrap()
        );
        assert_eq!(endpoint_addr("http://").unwrap_err().code, 7);
    }

    #[test]
    fn source_toward_loopback() {
        let ip = source_toward("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}
