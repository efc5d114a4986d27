//! `weftctl doctor`: checks what weft depends on, on this host, and says
//! what to fix. Exit status 1 when something is broken.

use anyhow::Result;
use serde_json::json;
use weft_host::config::{kernel_datapath_available, Config, DatapathType};
use weft_host::link::Netlink;
use weft_host::overlay::config::Overlay;
use weft_host::overlay::registry;
use weft_host::overlay::underlay::Underlay;
use weft_host::overlay::{self, tunnels, underlay};
use weft_host::ovs::Ovs;
use weft_store::etcd::EtcdStore;

use crate::conf::Loaded;
use crate::table::{emit, Table};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Checks {
    rows: Vec<(String, Status, String)>,
}

impl Checks {
    fn put(&mut self, name: &str, s: Status, detail: impl Into<String>) {
        self.rows.push((name.into(), s, detail.into()));
    }
}

/// Returns whether every check passed (warnings allowed).
pub fn run(l: &Loaded, json: bool) -> Result<bool> {
    let mut c = Checks { rows: Vec::new() };
    let cfg = &l.weft;
    c.put(
        "config",
        Status::Ok,
        format!("network {}, bridge {}", cfg.network, cfg.bridge),
    );
    let module = kernel_datapath_available();
    let wanted = cfg.datapath.resolve(|| module);
    let mut ovs = ovs_check(cfg, &mut c);
    datapath_check(cfg, wanted, module, ovs.as_mut(), &mut c);
    firewall(cfg, module, ovs.as_mut(), &mut c);

    let Some(o) = cfg.overlay.as_ref() else {
        c.put(
            "overlay",
            Status::Ok,
            "no etcd in the config: single-host network",
        );
        if let Some(o) = ovs.as_mut() {
            vlans(o, &cfg.bridge, &std::collections::HashMap::new(), &mut c);
        }
        return Ok(finish(c, json));
    };
    let nl = Netlink::new().map_err(crate::conf::cni)?;
    let u = underlay_check(&nl, o, &mut c);
    if let Some(u) = &u {
        mtu_check(cfg, o, u, &mut c);
        if wanted == DatapathType::Netdev {
            userspace_tunnels_check(u, ovs.as_mut(), &mut c);
        }
    }
    let mut store = match l.store() {
        Ok(s) => {
            c.put(
                "etcd",
                Status::Ok,
                format!("answers at {}", o.etcd.endpoints.join(",")),
            );
            s
        }
        Err(e) => {
            c.put("etcd", Status::Fail, format!("{e:#}"));
            return Ok(finish(c, json));
        }
    };
    registration_check(&mut store, o, u.as_ref(), &mut c);
    if let Some(ovs) = ovs.as_mut() {
        tunnel_checks(&mut store, o, ovs, &cfg.bridge, &mut c);
    }
    Ok(finish(c, json))
}

fn ovs_check(cfg: &Config, c: &mut Checks) -> Option<Ovs> {
    match Ovs::connect(&cfg.ovsdb_socket).and_then(|mut o| o.ping().map(|_| o)) {
        Ok(o) => {
            c.put(
                "ovs",
                Status::Ok,
                format!("OVSDB answers at {}", cfg.ovsdb_socket.display()),
            );
            Some(o)
        }
        Err(e) => {
            c.put(
                "ovs",
                Status::Fail,
                format!("{}; start openvswitch-switch or fix ovsdbSocket", e.msg),
            );
            None
        }
    }
}

fn datapath_check(
    cfg: &Config,
    wanted: DatapathType,
    module: bool,
    ovs: Option<&mut Ovs>,
    c: &mut Checks,
) {
    match (wanted, module) {
        (DatapathType::System, false) => c.put(
            "datapath",
            Status::Fail,
            "datapath system needs the openvswitch kernel module: modprobe openvswitch, or set datapath netdev",
        ),
        _ => c.put(
            "datapath",
            Status::Ok,
            format!("{wanted} (kernel module {})", if module { "loaded" } else { "absent" }),
        ),
    }
    if let Some(o) = ovs {
        if let Ok(Some(dp)) = o.bridge_datapath(&cfg.bridge) {
            if dp != wanted {
                c.put(
                    "bridge",
                    Status::Warn,
                    format!("{} uses datapath {dp}, config resolves to {wanted}; weftctl cleanup recreates it", cfg.bridge),
                );
            }
        }
    }
}

fn underlay_check(nl: &Netlink, o: &Overlay, c: &mut Checks) -> Option<Underlay> {
    match underlay::detect(nl, o) {
        Ok(u) => {
            c.put(
                "underlay",
                Status::Ok,
                format!("{} on {} (MTU {})", u.ip, u.ifname, u.mtu),
            );
            Some(u)
        }
        Err(e) => {
            c.put("underlay", Status::Fail, e.msg);
            None
        }
    }
}

fn mtu_check(cfg: &Config, o: &Overlay, u: &Underlay, c: &mut Checks) {
    let mtu = overlay::mtu(cfg, Some(u));
    let need = mtu + o.tunnel.overhead(u.ip.is_ipv6());
    if need > u.mtu {
        c.put(
            "mtu",
            Status::Fail,
            format!(
                "container MTU {mtu} + {} bytes of {} > underlay MTU {}; set mtu to {} or less",
                need - mtu,
                o.tunnel.as_str(),
                u.mtu,
                u.mtu.saturating_sub(need - mtu)
            ),
        );
    } else {
        c.put(
            "mtu",
            Status::Ok,
            format!(
                "containers {mtu}, underlay {} ({})",
                u.mtu,
                o.tunnel.as_str()
            ),
        );
    }
}

fn userspace_tunnels_check(u: &Underlay, ovs: Option<&mut Ovs>, c: &mut Checks) {
    match ovs.map(|x| x.interface_type(&u.ifname)) {
        Some(Ok(Some(t))) if t == "internal" => c.put(
            "userspace tunnels",
            Status::Ok,
            format!("underlay address is on OVS internal port {}", u.ifname),
        ),
        _ => c.put(
            "userspace tunnels",
            Status::Fail,
            format!(
                "with datapath netdev, OVS routes tunnels itself: put {} on an OVS internal port of a netdev bridge (ovs-vsctl add-br br-underlay -- set bridge br-underlay datapath_type=netdev -- add-port br-underlay {}; then move the address to br-underlay)",
                u.ip, u.ifname
            ),
        ),
    }
}

fn registration_check(store: &mut EtcdStore, o: &Overlay, u: Option<&Underlay>, c: &mut Checks) {
    let mut client = store.client();
    let me = store.block_on(client.get(registry::node_key(&o.node), None));
    match me
        .ok()
        .and_then(|r| r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease())))
    {
        None => c.put(
            "registration",
            Status::Warn,
            format!(
                "node {} is not registered; the next ADD or weftctl agent registers it",
                o.node
            ),
        ),
        Some((v, lease)) => {
            let ip = serde_json::from_slice::<serde_json::Value>(&v).unwrap_or_default()["ip"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if u.is_some_and(|u| u.ip.to_string() != ip) {
                c.put("registration", Status::Fail, format!("registered with {ip}, but this host's underlay is now different; restart weftctl agent or run an ADD"));
            } else if lease == 0 {
                c.put("registration", Status::Warn, format!("node {} at {ip}, no lease: run weftctl agent so peers learn when this host leaves", o.node));
            } else {
                c.put(
                    "registration",
                    Status::Ok,
                    format!("node {} at {ip}, held by the agent's lease", o.node),
                );
            }
        }
    }
}

/// Each of this node's networks: its tunnels as the registry wants them;
/// then every VLAN on the bridge.
fn tunnel_checks(store: &mut EtcdStore, o: &Overlay, ovs: &mut Ovs, bridge: &str, c: &mut Checks) {
    let Ok(nets) = registry::networks_of(store, &o.node) else {
        return;
    };
    let mut vnis = std::collections::HashMap::new();
    for net in nets {
        let Ok(Some(view)) = registry::view(store, &net, &o.node) else {
            continue;
        };
        vnis.insert(net.clone(), view.network.vni);
        let have = ovs.tunnel_ports(&net).unwrap_or_default();
        let plan = tunnels::plan(&tunnels::desired(&net, &view.network, &view.peers), &have);
        if plan.is_empty() {
            c.put(
                &format!("tunnels {net}"),
                Status::Ok,
                format!("{} peers, all connected", view.peers.len()),
            );
        } else {
            c.put(
                &format!("tunnels {net}"),
                Status::Warn,
                format!(
                    "{} to add, {} to remove; weftctl agent (or the next ADD) reconciles them",
                    plan.add.len(),
                    plan.remove.len()
                ),
            );
        }
    }
    vlans(ovs, bridge, &vnis, c);
}

fn vlans(
    ovs: &mut Ovs,
    bridge: &str,
    vnis: &std::collections::HashMap<String, u32>,
    c: &mut Checks,
) {
    let local: std::collections::HashMap<String, u32> = ovs
        .local_vlans(bridge)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let Ok(ports) = ovs.port_tags(&[]) else {
        return;
    };
    let wrong =
        weft_host::vlan::misplaced(&ports, |n| vnis.get(n).or_else(|| local.get(n)).copied());
    if wrong.is_empty() {
        c.put(
            "vlans",
            Status::Ok,
            "every weft port is on its network's VLAN",
        );
    } else {
        let list: Vec<String> = wrong
            .iter()
            .map(|(p, t)| format!("{p} (should be {t})"))
            .collect();
        c.put(
            "vlans",
            Status::Fail,
            format!(
                "not on their network's VLAN: {}; weftctl agent moves them back",
                list.join(", ")
            ),
        );
    }
}

/// This host's nftables: the host-end rule, nft itself, the gateway table.
fn firewall(
    cfg: &weft_host::config::Config,
    module: bool,
    mut ovs: Option<&mut Ovs>,
    c: &mut Checks,
) {
    let netdev_bridge = ovs
        .as_mut()
        .and_then(|o| o.bridge_datapath(&cfg.bridge).ok().flatten())
        .is_some_and(|dp| dp == DatapathType::Netdev);
    if !module || netdev_bridge {
        let (status, msg) = match weft_host::hostend::input_drop_present() {
            Ok(true) => (Status::Ok, "the IP stack ignores host ends (inet weft-hostends)".to_string()),
            Ok(false) => (
                Status::Fail,
                "nftables table inet weft-hostends is missing (flushed?): containers can reach this host's IP stack until weftctl agent or the next ADD puts it back".to_string(),
            ),
            Err(e) => (Status::Fail, format!("cannot read nftables: {}", e.msg)),
        };
        c.put("host ends", status, msg);
    }
    if cfg.gateway {
        let ok = std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        c.put(
            "nftables",
            if ok { Status::Ok } else { Status::Fail },
            if ok {
                "nft available for gateway rules".to_string()
            } else {
                "gateway: true needs nft: apt-get install nftables".to_string()
            },
        );
    }
    if let Some(o) = ovs {
        gateways(o, c);
    }
}

/// The gateway firewall matches the gateways OVS records, and each gateway
/// answers ARP only for its own address.
fn gateways(o: &mut Ovs, c: &mut Checks) {
    let gws = match weft_host::firewall::from_ovs(o) {
        Ok(g) => g,
        Err(e) => return c.put("gateway firewall", Status::Fail, e.msg),
    };
    if gws.is_empty() {
        return;
    }
    let (status, msg) = match weft_host::firewall::current(&gws) {
        Ok(true) => (
            Status::Ok,
            format!("inet {} holds the rules of {} gateways", weft_host::firewall::TABLE, gws.len()),
        ),
        Ok(false) => (
            Status::Fail,
            format!(
                "inet {} is missing or stale (flushed, or a gateway changed): weftctl agent or the next ADD rebuilds it",
                weft_host::firewall::TABLE
            ),
        ),
        Err(e) => (Status::Fail, format!("cannot read nftables: {}", e.msg)),
    };
    c.put("gateway firewall", status, msg);
    for g in &gws {
        let knob = |k: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{}/{k}", g.port))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let (ignore, filter) = (knob("arp_ignore"), knob("arp_filter"));
        if ignore.is_empty() {
            continue;
        }
        if ignore != "1" || filter != "1" {
            c.put(
                &format!("gateway {}", g.port),
                Status::Fail,
                format!("arp_ignore={ignore} arp_filter={filter}: it answers ARP for other host addresses; weftctl agent fixes it"),
            );
        }
    }
}

fn finish(c: Checks, json: bool) -> bool {
    let word = |s: Status| match s {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    };
    let mut t = Table::new(&["CHECK", "STATUS", "DETAIL"]);
    let mut doc = Vec::new();
    for (name, s, d) in &c.rows {
        t.row(vec![name.clone(), word(*s).into(), d.clone()]);
        doc.push(json!({"check": name, "status": word(*s).to_lowercase(), "detail": d}));
    }
    let ok = !c.rows.iter().any(|(_, s, _)| *s == Status::Fail);
    emit(json, &json!({"ok": ok, "checks": doc}), None, &t);
    ok
}
