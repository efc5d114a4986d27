//! Netlink work on the host and in the container, through rtnetlink.
//!
//! One current-thread runtime drives a connection per namespace; every call
//! blocks on it, so the ADD/DEL logic stays plain sequential code and the undo
//! stack can run from `Drop`.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use weft_cni::error::{self, Error, Result};
use weft_cni::result::Route;

use crate::netns;

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    host: Handle,
}

/// A connection opened inside a container's namespace.
pub struct Container {
    pub handle: Handle,
    /// For ethtool ioctls, which act in the namespace of the socket.
    pub ioctl: OwnedFd,
    /// For deletions that must not wait on the kernel (see `fastdel`).
    pub raw: netlink_sys::Socket,
    /// For gratuitous ARPs (see `garp`); ADD only, as closing one is slow.
    pub packet: Option<OwnedFd>,
}

/// Facts about a link that CHECK and the result need.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<String>,
    pub up: bool,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::new(error::NETLINK_FAILURE, what).with_details(e)
}

impl Netlink {
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::unexpected("cannot start runtime").with_details(e))?;
        let host = {
            let _ctx = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| nl_err("cannot open netlink", e))?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, host })
    }

    pub fn host(&self) -> &Handle {
        &self.host
    }

    /// Opens netlink and ioctl sockets inside the namespace at `ns`, and
    /// with `packet` a packet socket.
    pub fn enter(&self, ns: &File, packet: bool) -> Result<Container> {
        let rt = self.rt.handle().clone();
        let (conn, handle, ioctl, raw, packet) = netns::run_in(ns, move || {
            let _ctx = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| nl_err("cannot open netlink in netns", e))?;
            Ok((
                conn,
                handle,
                crate::ethtool::socket()?,
                crate::fastdel::socket()?,
                packet.then(crate::garp::socket).transpose()?,
            ))
        })?;
        self.rt.spawn(conn);
        Ok(Container {
            handle,
            ioctl,
            raw,
            packet,
        })
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Creates the pair inside the container, so it dies with the namespace,
    /// with the peer born straight in `host_ns`: moving a link between
    /// namespaces afterwards costs the kernel an RCU grace period (10-25 ms).
    pub fn create_veth(
        &self,
        c: &Container,
        ifname: &str,
        peer: &str,
        host_ns: &File,
        mtu: u32,
        mac: Option<[u8; 6]>,
    ) -> Result<()> {
        // No ARP on the host end: the kernel would answer for every host
        // address on it (see `hostend`).
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .arp(false)
            .setns_by_fd(host_ns.as_raw_fd())
            .build();
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(ifname.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
        if let Some(mac) = mac {
            msg = msg.address(mac.to_vec());
        }
        match self.block(c.handle.link().add(msg.build()).execute()) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                if self.link(&c.handle, ifname)?.is_some() {
                    Err(Error::new(
                        error::IFNAME_TAKEN,
                        format!("an interface named {ifname} already exists in the container"),
                    ))
                } else {
                    Err(Error::new(
                        error::NETLINK_FAILURE,
                        format!("host already has a link named {peer}; an earlier ADD for this container was not deleted"),
                    ))
                }
            }
            Err(e) => Err(nl_err(format!("cannot create veth {ifname}/{peer}"), e)),
        }
    }

    pub fn link(&self, h: &Handle, name: &str) -> Result<Option<LinkInfo>> {
        let found = self.block(async {
            h.link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("cannot look up link {name}"), e)),
        }
    }

    pub fn link_by_index(&self, h: &Handle, index: u32) -> Result<Option<LinkInfo>> {
        let found =
            self.block(async { h.link().get().match_index(index).execute().try_next().await });
        match found {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("cannot look up link {index}"), e)),
        }
    }

    /// Deletes the link `name` seen through `h`/`sock` without sitting out
    /// the kernel's RCU barrier (see `fastdel`): returns once it is unlisted.
    /// Ok(false) when there was no such link.
    pub fn delete_unwaited(
        &self,
        h: &Handle,
        sock: &netlink_sys::Socket,
        name: &str,
    ) -> Result<bool> {
        let Some(info) = self.link(h, name)? else {
            return Ok(false);
        };
        let pending = crate::fastdel::start(sock, info.index)?;
        let started = std::time::Instant::now();
        loop {
            // The child finished first: the request failed fast, or the barrier was quick.
            if let Some(done) = pending.finished() {
                return done.map_err(|errno| {
                    nl_err(
                        format!("cannot delete link {name}"),
                        std::io::Error::from_raw_os_error(errno),
                    )
                });
            }
            if self.link_by_index(h, info.index)?.is_none() {
                // Unlisted; the child is left to finish the kernel's cleanup alone.
                return Ok(true);
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                return Err(Error::new(
                    error::NETLINK_FAILURE,
                    format!("deleting link {name} did not finish"),
                ));
            }
        }
    }

    pub fn set_up(&self, h: &Handle, index: u32) -> Result<()> {
        self.block(
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute(),
        )
        .map_err(|e| nl_err("cannot set link up", e))
    }

    /// Deletes a link by name; a missing link is success.
    pub fn delete(&self, h: &Handle, name: &str) -> Result<bool> {
        let Some(info) = self.link(h, name)? else {
            return Ok(false);
        };
        match self.block(h.link().del(info.index).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("cannot delete link {name}"), e)),
        }
    }

    pub fn add_address(&self, h: &Handle, index: u32, addr: IpNet) -> Result<()> {
        self.block(
            h.address()
                .add(index, addr.addr(), addr.prefix_len())
                .execute(),
        )
        .map_err(|e| nl_err(format!("cannot add address {addr}"), e))
    }

    /// The name and MTU of the host link holding `ip`.
    pub fn link_of_address(&self, ip: IpAddr) -> Result<Option<(String, u32)>> {
        let msgs: Vec<_> = self
            .block(self.host.address().get().execute().try_collect())
            .map_err(|e| nl_err("cannot list addresses", e))?;
        let index = msgs.iter().find_map(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(x) if *x == ip))
                .then_some(m.header.index)
        });
        let Some(index) = index else { return Ok(None) };
        let found = self.block(async {
            self.host
                .link()
                .get()
                .match_index(index)
                .execute()
                .try_next()
                .await
        });
        let msg = found.map_err(|e| nl_err(format!("cannot look up link {index}"), e))?;
        Ok(msg.map(|m| {
            let name = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            (name.unwrap_or_default(), link_info(&m).mtu)
        }))
    }

    pub fn addresses(&self, h: &Handle, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<_> = self
            .block(
                h.address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| nl_err("cannot list addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNet::new(addr, m.header.prefix_len).ok()
            })
            .collect())
    }

    pub fn add_route(
        &self,
        h: &Handle,
        index: u32,
        route: &Route,
        gw: Option<IpAddr>,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .map_err(|e| nl_err(format!("bad route {}", route.dst), e))?
            .output_interface(index);
        if let Some(gw) = gw {
            b = b
                .gateway(gw)
                .map_err(|e| nl_err(format!("bad gateway {gw}"), e))?;
        }
        if let Some(p) = route.priority {
            b = b.priority(p);
        }
        if let Some(t) = route.table {
            b = b.table_id(t);
        }
        self.block(h.route().add(b.build()).execute())
            .map_err(|e| nl_err(format!("cannot add route to {}", route.dst), e))
    }

    /// (destination, gateway) of routes through `index` in the main table.
    pub fn routes(&self, h: &Handle, index: u32) -> Result<Vec<(IpNet, Option<IpAddr>)>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = family;
            let msgs: Vec<RouteMessage> = self
                .block(h.route().get(q).execute().try_collect())
                .map_err(|e| nl_err("cannot list routes", e))?;
            out.extend(msgs.iter().filter_map(|m| route_of(m, index)));
        }
        Ok(out)
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage, index: u32) -> Option<(IpNet, Option<IpAddr>)> {
    let mut oif = None;
    let mut dst = None;
    let mut gw = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let dst = dst.unwrap_or(match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    Some((
        IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
    ))
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(b) if b.len() == 6 => {
                info.mac = Some(
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            }
            _ => {}
        }
    }
    info
}
