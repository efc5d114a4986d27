//! ADD: veth into the container, host end onto the bridge, addresses from IPAM.
//!
//! IPAM runs as a child process while we build the link and the port, so its
//! exec cost overlaps ours. Every step pushes its inverse on the undo stack;
//! any failure unwinds them in reverse and reports the original error.

use std::cell::RefCell;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use weft_cni::delegate::{self, Pending};
use weft_cni::error::{self, Error, Result};
use weft_cni::result::{CniResult, Interface, IpConfig, Route};
use weft_cni::skel::Context;
use weft_cni::Command;

use weft_ovsdb::plan::{self, PortSpec};

use crate::config::{kernel_datapath_available, Config, DatapathType};
use crate::firewall::GatewayRules;
use crate::gateway::{self, Gateway};
use crate::ids::{self, TUNNEL_FOR};
use crate::link::Netlink;
use crate::names;
use crate::overlay::{self, underlay};
use crate::ovs::{self as ovs_mod, FoundPort, Ovs};
use crate::undo::Undo;
use crate::{ethtool, garp, hostend, netns, vlan};

/// A single-host network's VLAN from the bridge (claimed if it has none),
/// remembered for the next ADD.
fn resolve_local_vlan(
    ovs: &mut Ovs,
    question: weft_ovsdb::PendingRead,
    cfg: &Config,
    datapath: DatapathType,
) -> Result<u32> {
    let t = ovs.local_vlan(question, &cfg.bridge, &cfg.network, datapath)?;
    vlan::write_hint(&cfg.bridge, &cfg.network, t);
    Ok(t)
}

/// The selects that ride along in the attach transaction, and where each
/// one's answer sits among the transaction's extra results.
struct Lookups {
    ops: Vec<serde_json::Value>,
    /// This network's tunnels on the bridge.
    tunnels_at: usize,
    /// This network's gateway port, if it has one yet.
    gateway_port_at: usize,
    /// Every gateway on the host, when this network has one.
    gateways_at: Option<usize>,
    /// A port of another network on this network's VNI (overlay only).
    strangers_at: Option<usize>,
}

/// What the attach transaction's lookups found.
struct Found {
    tunnel_rows: serde_json::Value,
    gateway_port: Option<FoundPort>,
    gateways: Vec<FoundPort>,
    stranger: Option<FoundPort>,
}

impl Lookups {
    fn read(&self, results: &[serde_json::Value]) -> Found {
        let ports = |at: Option<usize>| {
            at.and_then(|i| results.get(i))
                .map(ovs_mod::found_ports)
                .unwrap_or_default()
        };
        Found {
            tunnel_rows: results.get(self.tunnels_at).cloned().unwrap_or_default(),
            gateway_port: ports(Some(self.gateway_port_at)).into_iter().next(),
            gateways: ports(self.gateways_at),
            stranger: ports(self.strangers_at).into_iter().next(),
        }
    }
}

/// The port to insert and the lookups that ride along in the attach
/// transaction.
fn attach_plan(
    cfg: &Config,
    host_name: &str,
    gw_name: &str,
    external_ids: &[(String, String)],
    view: Option<&overlay::registry::View>,
    local_tag: Option<u32>,
) -> (PortSpec, Lookups) {
    // An overlay network's VNI is also its VLAN on every host's bridge.
    let tag = view.map(|v| v.network.vni).or(local_tag);
    let spec = PortSpec {
        name: host_name.to_string(),
        tag,
        external_ids: external_ids.to_vec(),
        ..Default::default()
    };
    // The tunnels and the gateway are looked up in the attach transaction,
    // so reconciling them costs nothing when they are as they should be.
    let mut extra = Vec::new();
    let tunnels_at = extra.len();
    extra.extend(plan::find_ports(&[(TUNNEL_FOR, &cfg.network)]));
    let gateway_port_at = extra.len();
    extra.extend(plan::find_port_by_name(gw_name));
    let gateways_at = cfg.gateway.then_some(extra.len());
    if cfg.gateway {
        extra.extend(plan::find_ports(&[(ids::KIND, ids::GATEWAY)]));
    }
    // The VLAN must still be this network's when the port goes on it: GC
    // may forget an unused one at any moment.
    if let Some(t) = local_tag {
        extra.extend(plan::expect_bridge_id(
            &cfg.bridge,
            &vlan::key(&cfg.network),
            &t.to_string(),
        ));
    }
    // A VNI the registry handed out after a wipe or a restore may still be
    // on this bridge for another network: found in the same transaction.
    // (A single-host network's tag comes from the bridge's own record,
    // claimed atomically, and local tags never meet VNIs.)
    let strangers_at = view.map(|_| extra.len());
    if let Some(t) = view.map(|v| v.network.vni) {
        extra.extend(plan::strangers_on_vlan(
            t,
            &[
                (ids::NETWORK, &cfg.network),
                (TUNNEL_FOR, &cfg.network),
                (ids::GATEWAY_FOR, &cfg.network),
            ],
        ));
    }
    (
        spec,
        Lookups {
            ops: extra,
            tunnels_at,
            gateway_port_at,
            gateways_at,
            strangers_at,
        },
    )
}

/// The routes ADD installs: IPAM's, and with a gateway a default route
/// through each family's gateway address, as the reference bridge plugin's
/// isDefaultGateway does, unless IPAM already routes that family's default.
fn routes_with_defaults(ips: &[IpConfig], ipam_routes: &[Route], gateway: bool) -> Vec<Route> {
    let mut routes = ipam_routes.to_vec();
    if !gateway {
        return routes;
    }
    for ip in ips {
        let v4 = ip.address.addr().is_ipv4();
        let has_default = routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
        if let (Some(gw), false) = (ip.gateway, has_default) {
            let dst = if v4 {
                IpNet::V4(Ipv4Net::default())
            } else {
                IpNet::V6(Ipv6Net::default())
            };
            routes.push(Route {
                dst,
                gw: Some(gw),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
    }
    routes
}

/// A route without a gateway goes through the gateway of its family, as the
/// reference plugins do; with none, it is on-link (None).
fn next_hop(route: &Route, ips: &[IpConfig]) -> Option<IpAddr> {
    route.gw.or_else(|| {
        ips.iter()
            .filter(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
            .find_map(|ip| ip.gateway)
    })
}

/// The external_ids of a container's port: whose attachment it is.
fn port_ids(
    network: &str,
    cid: &str,
    ifname: &str,
    netns: &str,
    pod_name: Option<&str>,
    pod_namespace: Option<&str>,
) -> Vec<(String, String)> {
    let mut ids = vec![
        (ids::NETWORK, network),
        (ids::CONTAINER_ID, cid),
        (ids::IFNAME, ifname),
        (ids::NETNS, netns),
    ];
    ids.extend(pod_name.map(|p| (ids::POD_NAME, p)));
    ids.extend(pod_namespace.map(|n| (ids::POD_NAMESPACE, n)));
    ids.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the IPAM plugin printed, as a result with at least one address.
fn ipam_result(out: Option<&serde_json::Value>, ipam_type: &str) -> Result<CniResult> {
    let out = out.ok_or_else(|| {
        Error::new(
            error::DELEGATE_FAILURE,
            format!("{ipam_type} returned no result"),
        )
    })?;
    let ipam = CniResult::from_value(out)?;
    if ipam.ips.is_empty() {
        return Err(Error::new(
            error::DELEGATE_FAILURE,
            format!("{ipam_type} returned no addresses"),
        ));
    }
    Ok(ipam)
}

/// ADD's result: the host end, then the container end (which IPAM's
/// addresses name), IPAM's addresses and DNS, and the routes installed.
fn assemble(
    host: (&str, Option<String>),
    container: (&str, Option<String>),
    mtu: u32,
    sandbox: &str,
    ipam: &CniResult,
    routes: Vec<Route>,
) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: host.0.to_string(),
                mac: host.1,
                ..Default::default()
            },
            Interface {
                name: container.0.to_string(),
                mac: container.1,
                mtu: Some(mtu),
                sandbox: Some(sandbox.to_string()),
            },
        ],
        ips: ipam
            .ips
            .iter()
            .map(|ip| IpConfig {
                interface: Some(1),
                ..ip.clone()
            })
            .collect(),
        routes,
        dns: ipam.dns.clone(),
    }
}

pub fn add(ctx: &Context, cfg: &Config) -> Result<CniResult> {
    let t0 = *crate::STARTED.get_or_init(std::time::Instant::now);
    let phase = |what: &str| tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1000.0, "{what}");
    let (cid, ifname) = (ctx.env.container_id(), ctx.env.ifname());
    let netns_path = ctx
        .env
        .netns
        .as_ref()
        .ok_or_else(|| Error::env("CNI_NETNS is required for ADD"))?;
    let host_name = names::host_veth(cid, ifname);
    let mac = ctx.conf.requested_mac.or(ctx.env.args.mac);
    let ipam_bin = delegate::find(&cfg.ipam_type, &ctx.env.path)?;

    // Everything that can be checked without changing anything comes first.
    let container_ns = netns::open(netns_path)?;
    let host_ns = netns::current()?;

    // IPAM is the slowest step (an exec), so it starts first and runs while we
    // build the link and the port. Its guard is declared before the handles
    // the other steps borrow, so on failure it is dropped (run) last.
    phase("spawning ipam");
    let pending: RefCell<Option<Pending>> =
        RefCell::new(Some(delegate::spawn(&ipam_bin, Command::Add, &cfg.raw)?));
    phase("ipam spawned");
    let mut ipam_undo = Undo::new();
    ipam_undo.push("ipam", || {
        if let Some(p) = pending.borrow_mut().take() {
            let _ = p.wait();
        }
        delegate::exec(&ipam_bin, Command::Del, &cfg.raw)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let nl = Netlink::new()?;
    let underlay = cfg
        .overlay
        .as_ref()
        .map(|o| underlay::detect(&nl, o))
        .transpose()?;
    let mtu = overlay::mtu(cfg, underlay.as_ref());
    // The registry is asked on a thread while the veth is made.
    let joining = match (&cfg.overlay, &underlay) {
        (Some(o), Some(u)) => {
            let (cfg, o, u) = (cfg.clone(), o.clone(), u.clone());
            Some(std::thread::spawn(move || overlay::join(&cfg, &o, &u)))
        }
        _ => None,
    };
    // A packet socket for the gratuitous ARP: overlay networks only, where
    // an address can move between hosts of one L2 segment. It costs a fork
    // at the end of ADD, which single-host networks need not pay.
    let mut cont = nl.enter(&container_ns, cfg.overlay.is_some())?;
    let ovs = RefCell::new(Ovs::connect(&cfg.ovsdb_socket)?);
    let wanted_dp = cfg.datapath.resolve(kernel_datapath_available);
    // A single-host network's VLAN is recorded on the bridge: remembered
    // from the last ADD, or asked now and read once the veth is made.
    let hinted = match cfg.overlay {
        None => vlan::read_hint(&cfg.bridge, &cfg.network),
        Some(_) => None,
    };
    let vlan_question = match (&cfg.overlay, hinted) {
        (None, None) => Some(ovs.borrow_mut().begin_bridge_ids(&cfg.bridge)?),
        _ => None,
    };
    let mut undo = Undo::new();
    phase("ipam started, connected");
    let created = nl.create_veth(&cont, ifname, &host_name, &host_ns, mtu, mac.map(|m| m.0));
    if let Err(e) = created {
        // Our own host end for this container and ifname exists: this is a
        // repeated ADD of a live attachment, and the address IPAM just
        // returned is that attachment's. Releasing it would cut it off.
        if e.code == error::IFNAME_TAKEN && matches!(nl.link(nl.host(), &host_name), Ok(Some(_))) {
            if let Some(p) = pending.borrow_mut().take() {
                let _ = p.wait();
            }
            ipam_undo.commit();
            return Err(Error::new(
                error::IFNAME_TAKEN,
                format!("{ifname} of container {cid} is already attached; DEL it before adding it again"),
            ));
        }
        return Err(e);
    }
    phase("veth created");
    // Deleting the container end removes the pair wherever the peer lives.
    undo.push("veth", || {
        nl.delete(&cont.handle, ifname)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let host_link = nl.link(nl.host(), &host_name)?.ok_or_else(|| {
        Error::new(
            error::NETLINK_FAILURE,
            format!("{host_name} is missing from the host right after creation"),
        )
    })?;

    let netns_str = netns_path.display().to_string();
    // Before it is up, so it never gets a link-local address (`hostend`).
    hostend::disable_ipv6(&host_name)?;
    // Without the openvswitch module the datapath can only be netdev, whose
    // host ends the IP stack must ignore: make sure before the link is up.
    let input_dropped = !kernel_datapath_available();
    if input_dropped {
        hostend::ensure_input_drop()?;
    }
    // Up before ovs-vswitchd opens it: with the port opened while its link
    // was still down, traffic sometimes never flowed (1 in ~36 test runs).
    nl.set_up(nl.host(), host_link.index)?;
    let view = match joining {
        Some(j) => Some(
            j.join()
                .map_err(|_| Error::unexpected("the registry thread panicked"))??,
        ),
        None => None,
    };
    phase("registry read");
    let local_tag = match (vlan_question, hinted) {
        (Some(q), _) => Some(resolve_local_vlan(
            &mut ovs.borrow_mut(),
            q,
            cfg,
            wanted_dp,
        )?),
        (None, hint) => hint,
    };
    let external_ids = port_ids(
        &cfg.network,
        cid,
        ifname,
        &netns_str,
        ctx.env.args.k8s_pod_name.as_deref(),
        ctx.env.args.k8s_pod_namespace.as_deref(),
    );
    let gw_name = names::gateway_port(&cfg.network);
    let (mut spec, mut lookups) = attach_plan(
        cfg,
        &host_name,
        &gw_name,
        &external_ids,
        view.as_ref(),
        local_tag,
    );
    // ovs-vswitchd opens the port while we bring the container end up.
    let attaching = ovs
        .borrow_mut()
        .begin_attach(&cfg.bridge, &spec, &lookups.ops);
    undo.push("ovs port", || {
        ovs.borrow_mut()
            .detach(&host_name)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let attaching = attaching?;

    // Up before it has addresses, so link-up work (addrconf, notifiers)
    // overlaps the IPAM wait instead of following it.
    let link = nl.link(&cont.handle, ifname)?.ok_or_else(|| {
        Error::new(
            error::NETLINK_FAILURE,
            format!("{ifname} vanished from the container"),
        )
    })?;
    nl.set_up(&cont.handle, link.index)?;
    phase("both ends up");

    let finished =
        ovs.borrow_mut()
            .finish_attach(attaching, &cfg.bridge, wanted_dp, &spec, &lookups.ops);
    let (datapath, results) = match (finished, hinted) {
        (Ok(done), _) => done,
        // The remembered tag is no longer this network's (GC forgot it, the
        // bridge was recreated): the transaction changed nothing, so ask the
        // bridge and attach again.
        (Err(e), Some(stale)) => {
            tracing::debug!(error = %e.msg, stale, "remembered VLAN refused; asking the bridge");
            vlan::forget_hint(&cfg.bridge, &cfg.network);
            let q = ovs.borrow_mut().begin_bridge_ids(&cfg.bridge)?;
            let t = resolve_local_vlan(&mut ovs.borrow_mut(), q, cfg, wanted_dp)?;
            (spec, lookups) = attach_plan(
                cfg,
                &host_name,
                &gw_name,
                &external_ids,
                view.as_ref(),
                Some(t),
            );
            let again = ovs
                .borrow_mut()
                .begin_attach(&cfg.bridge, &spec, &lookups.ops)?;
            ovs.borrow_mut()
                .finish_attach(again, &cfg.bridge, wanted_dp, &spec, &lookups.ops)?
        }
        (Err(e), None) => return Err(e),
    };
    phase("ovs attached");
    let found = lookups.read(&results);
    if let Some(view) = &view {
        let existing = ovs_mod::existing_tunnels(&found.tunnel_rows);
        let mut o = ovs.borrow_mut();
        overlay::reconcile(
            &mut o,
            &cfg.bridge,
            &cfg.network,
            view,
            &existing,
            // This view was read before the ports: a tunnel it does not
            // want may serve a peer that joined since. The agent, when
            // there is one, removes those of peers that left.
            if view.agent_alive {
                overlay::tunnels::Prune::Superseded
            } else {
                overlay::tunnels::Prune::Unwanted
            },
        )?;
        // A tunnel moved to another VLAN by hand would carry this network's
        // VNI into that VLAN.
        let tunnels = ovs_mod::found_ports(&found.tunnel_rows);
        for (port, t) in vlan::misplaced(&tunnels, |_| Some(view.network.vni)) {
            tracing::warn!(%port, t, "tunnel on the wrong VLAN; moving it");
            o.set_port_tag(&port, t)?;
        }
        phase("tunnels reconciled");
    }
    if let Some(p) = &found.stranger {
        return Err(Error::new(
            error::VLAN_CONFLICT,
            format!(
                "VLAN {} on bridge {} is network {}'s, but port {} of network {} is on it too \
                 (etcd wiped or restored?); weftctl agent moves it, weftctl doctor shows it",
                spec.tag.unwrap_or_default(),
                cfg.bridge,
                cfg.network,
                p.name,
                crate::vlan::network_of(p).unwrap_or("?")
            ),
        ));
    }
    let gateways: Vec<GatewayRules> = found.gateways.iter().map(GatewayRules::from_port).collect();
    if datapath == DatapathType::Netdev {
        ethtool::disable_tx_checksum(&cont.ioctl, ifname)?;
        // A netdev bridge on a host that has the module: known only now,
        // still before the container has an address to use.
        if !input_dropped {
            hostend::ensure_input_drop()?;
        }
    }

    let ipam_out = pending
        .borrow_mut()
        .take()
        .map(Pending::wait)
        .transpose()?
        .flatten();
    phase("ipam done");
    let ipam = ipam_result(ipam_out.as_ref(), &cfg.ipam_type)?;

    for ip in &ipam.ips {
        nl.add_address(&cont.handle, link.index, ip.address)?;
    }
    phase("addresses set");
    if cfg.gateway {
        let underlay = match &underlay {
            Some(u) => underlay::subnets(&nl, u)?,
            None => Vec::new(),
        };
        let g = Gateway {
            network: &cfg.network,
            bridge: &cfg.bridge,
            tag: spec.tag,
            mtu,
            ip_masq: cfg.ip_masq,
            host_access: cfg.host_access,
            underlay,
        };
        gateway::ensure(
            &nl,
            &mut ovs.borrow_mut(),
            &g,
            found.gateway_port.as_ref(),
            &gateways,
            &ipam.ips,
        )?;
        phase("gateway ready");
    }
    let routes = routes_with_defaults(&ipam.ips, &ipam.routes, cfg.gateway);
    for route in &routes {
        nl.add_route(&cont.handle, link.index, route, next_hop(route, &ipam.ips))?;
    }

    phase("addresses and routes set");
    let v4: Vec<_> = ipam
        .ips
        .iter()
        .filter_map(|ip| match ip.address.addr() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    // Best effort: the address works without it, peers just learn later.
    let mac = link.mac.as_deref().and_then(garp::parse_mac);
    if let (Some(mac), Some(sock)) = (mac, cont.packet.take()) {
        if let Err(e) = garp::announce(sock, link.index, mac, &v4) {
            tracing::warn!(error = %e, "gratuitous ARP not sent");
        }
    }
    let result = assemble(
        (&host_name, host_link.mac.clone()),
        (ifname, link.mac.clone()),
        mtu,
        &netns_str,
        &ipam,
        routes,
    );
    undo.commit();
    ipam_undo.commit();
    tracing::info!(container = cid, ifname, port = %host_name, bridge = %cfg.bridge, "attached");
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(addr: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            address: addr.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gw: gw.map(|g| g.parse().unwrap()),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    #[test]
    fn a_gateway_adds_one_default_per_family_unless_ipam_routes_it() {
        let ips = [
            ip("10.1.0.5/16", Some("10.1.0.1")),
            ip("10.2.0.5/16", Some("10.2.0.1")),
            ip("fd00::5/64", Some("fd00::1")),
        ];
        let got = routes_with_defaults(&ips, &[], true);
        assert_eq!(
            got,
            vec![
                route("0.0.0.0/0", Some("10.1.0.1")),
                route("::/0", Some("fd00::1"))
            ]
        );
        let ipam = [route("0.0.0.0/0", Some("10.9.0.9"))];
        assert_eq!(
            routes_with_defaults(&ips, &ipam, true),
            vec![ipam[0].clone(), route("::/0", Some("fd00::1"))]
        );
        assert_eq!(routes_with_defaults(&ips, &ipam, false), ipam.to_vec());
        assert!(routes_with_defaults(&[ip("10.1.0.5/16", None)], &[], true).is_empty());
    }

    #[test]
    fn a_route_without_a_gateway_goes_through_its_familys() {
        let ips = [ip("10.1.0.5/16", Some("10.1.0.1")), ip("fd00::5/64", None)];
        let hop = |r: Route| next_hop(&r, &ips).map(|a| a.to_string());
        assert_eq!(hop(route("10.8.0.0/16", None)), Some("10.1.0.1".into()));
        assert_eq!(
            hop(route("10.8.0.0/16", Some("10.1.0.7"))),
            Some("10.1.0.7".into())
        );
        // No gateway of its family: on-link.
        assert_eq!(hop(route("fd01::/64", None)), None);
    }

    #[test]
    fn the_result_names_both_ends_and_ipam_addresses_point_at_the_container() {
        let ipam = CniResult {
            ips: vec![ip("10.1.0.5/16", Some("10.1.0.1"))],
            dns: weft_cni::result::Dns {
                nameservers: vec!["10.1.0.1".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let routes = vec![route("0.0.0.0/0", Some("10.1.0.1"))];
        let r = assemble(
            ("wft0123", Some("aa:aa:aa:aa:aa:aa".into())),
            ("eth0", Some("bb:bb:bb:bb:bb:bb".into())),
            1450,
            "/run/netns/c1",
            &ipam,
            routes.clone(),
        );
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[0].name, "wft0123");
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.interfaces[1].name, "eth0");
        assert_eq!(r.interfaces[1].mtu, Some(1450));
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/c1"));
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[0].address, ipam.ips[0].address);
        assert_eq!(r.routes, routes);
        assert_eq!(r.dns, ipam.dns);
    }

    #[test]
    fn port_ids_name_the_attachment_and_the_pod_when_known() {
        let ids = port_ids("blue", "c1", "eth0", "/run/netns/x", Some("p"), None);
        let keys: Vec<&str> = ids.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "weft.network",
                "weft.container_id",
                "weft.ifname",
                "weft.netns",
                "weft.k8s_pod_name"
            ]
        );
        assert_eq!(ids[3].1, "/run/netns/x");
        assert_eq!(port_ids("blue", "c1", "eth0", "/n", None, None).len(), 4);
    }

    #[test]
    fn an_ipam_result_needs_an_address() {
        let e = ipam_result(None, "host-local").unwrap_err();
        assert_eq!(e.code, error::DELEGATE_FAILURE);
        let none = json!({"cniVersion": "1.0.0", "ips": []});
        assert!(ipam_result(Some(&none), "host-local")
            .unwrap_err()
            .msg
            .contains("no addresses"));
        let one = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/16"}]});
        assert_eq!(ipam_result(Some(&one), "host-local").unwrap().ips.len(), 1);
    }

    #[test]
    fn lookups_read_each_answer_from_its_own_place() {
        let row = |name: &str| {
            json!({"rows": [{"_uuid": ["uuid", format!("u-{name}")], "name": name,
                             "external_ids": ["map", []], "tag": ["set", []]}]})
        };
        let none = json!({"rows": []});
        let with_all = Lookups {
            ops: Vec::new(),
            tunnels_at: 0,
            gateway_port_at: 1,
            gateways_at: Some(2),
            strangers_at: Some(4),
        };
        let results = [row("t"), row("gw"), row("gw-a"), none.clone(), row("x")];
        let f = with_all.read(&results);
        assert_eq!(ovs_mod::found_ports(&f.tunnel_rows)[0].name, "t");
        assert_eq!(f.gateway_port.map(|p| p.name).as_deref(), Some("gw"));
        assert_eq!(f.gateways.len(), 1);
        assert_eq!(f.stranger.map(|p| p.name).as_deref(), Some("x"));
        // Without a gateway or a VNI, what sits at index 2 is something else
        // (the VLAN's expectation): never read as gateways or strangers.
        let plain = Lookups {
            ops: Vec::new(),
            tunnels_at: 0,
            gateway_port_at: 1,
            gateways_at: None,
            strangers_at: None,
        };
        let f = plain.read(&[none.clone(), none, row("expect")]);
        assert!(f.gateway_port.is_none() && f.gateways.is_empty() && f.stranger.is_none());
    }
}
