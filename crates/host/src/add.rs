//! ADD: veth into the container, host end onto the bridge, addresses from IPAM.
//!
//! IPAM runs as a child process while we build the link and the port, so its
//! exec cost overlaps ours. Every step pushes its inverse on the undo stack;
//! any failure unwinds them in reverse and reports the original error.

use std::cell::RefCell;

use weft_cni::delegate::{self, Pending};
use weft_cni::error::{self, Error, Result};
use weft_cni::result::{CniResult, Interface, IpConfig};
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
use crate::ovs::{self as ovs_mod, Ovs};
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

/// The port to insert and the operations that ride along in the attach
/// transaction, with the index of the select for strangers on the VLAN.
fn attach_plan(
    cfg: &Config,
    host_name: &str,
    gw_name: &str,
    external_ids: &[(String, String)],
    view: Option<&overlay::registry::View>,
    local_tag: Option<u32>,
) -> (PortSpec, Vec<serde_json::Value>, usize) {
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
    let mut extra: Vec<_> = plan::find_ports(&[(TUNNEL_FOR, &cfg.network)])
        .into_iter()
        .chain(plan::find_port_by_name(gw_name))
        .collect();
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
    let strangers_at = extra.len();
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
    (spec, extra, strangers_at)
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
    let mut tags: Vec<(&str, &str)> = vec![
        (ids::NETWORK, &cfg.network),
        (ids::CONTAINER_ID, cid),
        (ids::IFNAME, ifname),
        (ids::NETNS, &netns_str),
    ];
    if let Some(pod) = &ctx.env.args.k8s_pod_name {
        tags.push((ids::POD_NAME, pod));
    }
    if let Some(ns) = &ctx.env.args.k8s_pod_namespace {
        tags.push((ids::POD_NAMESPACE, ns));
    }
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
    let external_ids: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let gw_name = names::gateway_port(&cfg.network);
    let (mut spec, mut extra, mut strangers_at) = attach_plan(
        cfg,
        &host_name,
        &gw_name,
        &external_ids,
        view.as_ref(),
        local_tag,
    );
    // ovs-vswitchd opens the port while we bring the container end up.
    let attaching = ovs.borrow_mut().begin_attach(&cfg.bridge, &spec, &extra);
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

    let finished = ovs
        .borrow_mut()
        .finish_attach(attaching, &cfg.bridge, wanted_dp, &spec, &extra);
    let (datapath, found) = match (finished, hinted) {
        (Ok(done), _) => done,
        // The remembered tag is no longer this network's (GC forgot it, the
        // bridge was recreated): the transaction changed nothing, so ask the
        // bridge and attach again.
        (Err(e), Some(stale)) => {
            tracing::debug!(error = %e.msg, stale, "remembered VLAN refused; asking the bridge");
            vlan::forget_hint(&cfg.bridge, &cfg.network);
            let q = ovs.borrow_mut().begin_bridge_ids(&cfg.bridge)?;
            let t = resolve_local_vlan(&mut ovs.borrow_mut(), q, cfg, wanted_dp)?;
            (spec, extra, strangers_at) = attach_plan(
                cfg,
                &host_name,
                &gw_name,
                &external_ids,
                view.as_ref(),
                Some(t),
            );
            let again = ovs.borrow_mut().begin_attach(&cfg.bridge, &spec, &extra)?;
            ovs.borrow_mut()
                .finish_attach(again, &cfg.bridge, wanted_dp, &spec, &extra)?
        }
        (Err(e), None) => return Err(e),
    };
    phase("ovs attached");
    let null = serde_json::Value::Null;
    if let Some(view) = &view {
        let existing = ovs_mod::existing_tunnels(found.first().unwrap_or(&null));
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
        let tunnels = ovs_mod::found_ports(found.first().unwrap_or(&null));
        for (port, t) in vlan::misplaced(&tunnels, |_| Some(view.network.vni)) {
            tracing::warn!(%port, t, "tunnel on the wrong VLAN; moving it");
            o.set_port_tag(&port, t)?;
        }
        phase("tunnels reconciled");
    }
    if let Some(p) = found
        .get(strangers_at)
        .map(ovs_mod::found_ports)
        .and_then(|s| s.into_iter().next())
    {
        return Err(Error::new(
            error::VLAN_CONFLICT,
            format!(
                "VLAN {} on bridge {} is network {}'s, but port {} of network {} is on it too \
                 (etcd wiped or restored?); weftctl agent moves it, weftctl doctor shows it",
                spec.tag.unwrap_or_default(),
                cfg.bridge,
                cfg.network,
                p.name,
                crate::vlan::network_of(&p).unwrap_or("?")
            ),
        ));
    }
    let gw_found = found.get(1).map(ovs_mod::found_ports).unwrap_or_default();
    let gateways: Vec<GatewayRules> = found
        .get(2)
        .map(ovs_mod::found_ports)
        .unwrap_or_default()
        .iter()
        .map(GatewayRules::from_port)
        .collect();
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
    let ipam = CniResult::from_value(&ipam_out.ok_or_else(|| {
        Error::new(
            error::DELEGATE_FAILURE,
            format!("{} returned no result", cfg.ipam_type),
        )
    })?)?;
    if ipam.ips.is_empty() {
        return Err(Error::new(
            error::DELEGATE_FAILURE,
            format!("{} returned no addresses", cfg.ipam_type),
        ));
    }

    for ip in &ipam.ips {
        nl.add_address(&cont.handle, link.index, ip.address)?;
    }
    phase("addresses set");
    let mut routes = ipam.routes.clone();
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
            gw_found.first(),
            &gateways,
            &ipam.ips,
        )?;
        phase("gateway ready");
        // The gateway is the way out, as with the reference bridge plugin's
        // isDefaultGateway, unless IPAM already routes the default.
        for ip in &ipam.ips {
            let v4 = ip.address.addr().is_ipv4();
            let has_default = routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
            if let (Some(gw), false) = (ip.gateway, has_default) {
                let any: std::net::IpAddr = if v4 {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                routes.push(weft_cni::result::Route {
                    dst: ipnet::IpNet::new(any, 0)
                        .map_err(|e| Error::unexpected("default route").with_details(e))?,
                    gw: Some(gw),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                });
            }
        }
    }
    for route in &routes {
        // A route without a gateway goes through the gateway of its family, as
        // the reference plugins do; with none, it is on-link.
        let gw = route.gw.or_else(|| {
            ipam.ips
                .iter()
                .filter(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
                .find_map(|ip| ip.gateway)
        });
        nl.add_route(&cont.handle, link.index, route, gw)?;
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
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: host_name.clone(),
                mac: host_link.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: ifname.to_string(),
                mac: link.mac.clone(),
                mtu: Some(mtu),
                sandbox: Some(netns_str.clone()),
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
    };
    undo.commit();
    ipam_undo.commit();
    tracing::info!(container = cid, ifname, port = %host_name, bridge = %cfg.bridge, "attached");
    Ok(result)
}
