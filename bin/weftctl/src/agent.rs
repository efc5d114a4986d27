//! `weftctl agent`: keeps this host registered under an etcd lease and its
//! tunnels in step with the registry. A watch on the registry wakes it the
//! moment a host joins or leaves; a periodic pass repairs anything else
//! (a restarted ovs-vswitchd, a hand-deleted port).
//!
//! It also keeps this host's nftables tables in place (the gateway firewall
//! and the host-end rule): at every pass, and within moments of anyone
//! changing the ruleset (`nft flush ruleset`, a firewall service starting),
//! which it hears of on nftables' netlink multicast group. Without `etcd`
//! that is all it does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{PutOptions, WatchOptions};
use tokio::signal::unix::{signal, SignalKind};
use weft_host::link::Netlink;
use weft_host::overlay::registry::{self, NodeRecord};
use weft_host::overlay::tunnels::{self, Prune};
use weft_host::overlay::{self, underlay, vnis};
use weft_host::ovs::Ovs;
use weft_store::etcd::EtcdStore;
use weft_store::{Compare, Read, Store, Write};

use crate::conf::{cni, Loaded};

const RESYNC: Duration = Duration::from_secs(30);
/// How long after a registry change the agent waits for the rest of a burst.
const COALESCE: Duration = Duration::from_millis(100);

enum Wake {
    /// Registry events arrived (this many, in one burst); `lost`: our own
    /// registration among the deletions.
    Watch {
        lost: bool,
        events: usize,
    },
    WatchLost,
    Tick,
    Stop,
}

/// Brings every network this node belongs to in line with the registry, and
/// drops tunnels of networks it no longer belongs to. Returns ports changed.
///
/// The ports are read before the registry, so every tunnel seen was made
/// after its peer's record was written and a view that lacks the peer is
/// newer than the tunnel: only such tunnels are removed (an ADD running
/// now may add more, for peers newer than the view). `prune` limits the
/// removals further while peers register again after a wipe.
pub fn reconcile_all(l: &Loaded, store: &mut EtcdStore, prune: Prune) -> Result<usize> {
    let me = &l.overlay()?.node;
    let bridge = &l.weft.bridge;
    store.renew();
    let mut ovs = Ovs::connect(&l.weft.ovsdb_socket).map_err(cni)?;
    if !ovs.bridge_exists(bridge).map_err(cni)? {
        // No container has been attached here yet; the first ADD makes the
        // bridge and its tunnels.
        return Ok(0);
    }
    let ports = ovs.port_tags(&[]).map_err(cni)?;
    let mut vnis = reassert(store, &ports, me, &l.weft.network, l.overlay()?)?;
    let nets = registry::networks_of(store, me).map_err(cni)?;
    let tunnels_of = |net: &str| -> Vec<tunnels::Existing> {
        ports
            .iter()
            .filter(|p| p.id(weft_host::ids::TUNNEL_FOR) == Some(net))
            .filter_map(|p| {
                Some(tunnels::Existing {
                    uuid: p.uuid.clone(),
                    name: p.name.clone(),
                    spec: p.id(weft_host::ids::SPEC)?.to_string(),
                })
            })
            .collect()
    };
    let mut changed = 0;
    for net in &nets {
        if let Some(view) = registry::view(store, net, me).map_err(cni)? {
            let have = tunnels_of(net);
            changed +=
                overlay::reconcile(&mut ovs, bridge, net, &view, &have, prune).map_err(cni)?;
            vnis.insert(net.clone(), view.network.vni);
        }
    }
    changed += fix_vlans(&mut ovs, bridge, &vnis)?;
    if prune == Prune::Superseded {
        return Ok(changed);
    }
    let orphans: Vec<String> = ports
        .iter()
        .filter(|p| {
            p.id(weft_host::ids::TUNNEL_FOR)
                .is_some_and(|n| !nets.iter().any(|x| x == n))
        })
        .map(|p| p.uuid.clone())
        .collect();
    if !orphans.is_empty() {
        changed += orphans.len();
        ovs.change_ports(bridge, &[], &orphans).map_err(cni)?;
    }
    Ok(changed)
}

/// After a wipe or a restore of etcd: re-reserves the VNIs of networks on
/// this bridge the registry has no record of, and re-homes those whose VNI
/// another network holds now (see `weft_host::overlay::vnis`). Returns the VNIs
/// networks moved to; their ports follow in [`fix_vlans`].
fn reassert(
    store: &mut EtcdStore,
    ports: &[weft_host::ovs::FoundPort],
    me: &str,
    own_net: &str,
    o: &weft_host::overlay::config::Overlay,
) -> Result<HashMap<String, u32>> {
    let local = vnis::on_bridge(ports);
    let mut moved = HashMap::new();
    if local.is_empty() {
        return Ok(moved);
    }
    let names: Vec<&String> = local.keys().collect();
    let mut reads = vec![Read::prefix(&registry::vnis_prefix())];
    reads.extend(names.iter().map(|n| Read::Key(registry::network_key(n))));
    let r = store.read(&reads).map_err(|e| anyhow::anyhow!("{e}"))?;
    let owners = vnis::owners(&r[0]);
    let records: HashMap<String, u32> = names
        .iter()
        .zip(&r[1..])
        .filter_map(|(n, rr)| {
            let rec: registry::NetworkRecord =
                serde_json::from_slice(&rr.kvs.first()?.value).ok()?;
            Some((n.to_string(), rec.vni))
        })
        .collect();
    for fix in vnis::plan(&local, &records, &owners) {
        let (net, vni) = match &fix {
            vnis::Fix::Reserve { net, vni } => (net, *vni),
            vnis::Fix::Rehome { net, to, .. } => (net, *to),
        };
        if owners.get(&vni) != Some(net) {
            let key = registry::vni_key(vni);
            let done = store
                .txn(
                    &[Compare::Absent(key.clone())],
                    &[Write::Put(key, net.as_bytes().to_vec())],
                    &[],
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .succeeded;
            // Someone took it a moment ago: the next pass plans again.
            if !done {
                continue;
            }
        }
        tracing::warn!(?fix, "the registry lacked a VNI in use on this bridge");
        if let vnis::Fix::Rehome { .. } = fix {
            moved.insert(net.clone(), vni);
        }
    }
    // The conflist's own network gets its record back too (its tunnel
    // settings are in the conflist), so tunnels return without waiting for
    // an ADD. Other networks' records come back at their next ADD.
    if let Some(vni) = moved.get(own_net).or(local.get(own_net)).copied() {
        if !records.contains_key(own_net) {
            let rec = registry::NetworkRecord {
                vni,
                tunnel: o.tunnel,
                port: o.port,
            };
            let put = store
                .txn(
                    &[
                        Compare::Absent(registry::network_key(own_net)),
                        Compare::ValueIs(registry::vni_key(vni), own_net.as_bytes().to_vec()),
                    ],
                    &[Write::Put(
                        registry::network_key(own_net),
                        registry::to_vec(&rec),
                    )],
                    &[],
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if put.succeeded {
                tracing::warn!(network = %own_net, vni, "network record was missing from the registry; restored");
            }
        }
    }
    // This host is still a member of every network it has ports of, so
    // peers build their tunnels here again without waiting for an ADD.
    for net in local.keys() {
        let key = registry::member_key(net, me);
        let put = store
            .txn(
                &[Compare::Absent(key.clone())],
                &[Write::Put(key, Vec::new())],
                &[],
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if put.succeeded {
            tracing::warn!(network = %net, "membership was missing from the registry; restored");
        }
    }
    Ok(moved)
}

/// Moves every weft port that is not on its network's VLAN back onto it:
/// `vnis` for overlay networks, the bridge's records for single-host ones.
/// Returns how many it moved.
pub fn fix_vlans(ovs: &mut Ovs, bridge: &str, vnis: &HashMap<String, u32>) -> Result<usize> {
    let local: HashMap<String, u32> = ovs.local_vlans(bridge).map_err(cni)?.into_iter().collect();
    let ports = ovs.port_tags(&[]).map_err(cni)?;
    let wrong =
        weft_host::vlan::misplaced(&ports, |n| vnis.get(n).or_else(|| local.get(n)).copied());
    for (port, tag) in &wrong {
        tracing::warn!(%port, tag, "port was not on its network's VLAN; moved back");
        ovs.set_port_tag(port, *tag).map_err(cni)?;
    }
    Ok(wrong.len())
}

/// Puts back what a flush or a hand edit took from this host's firewall:
/// the gateway table, the gateways' ARP settings, the host-end rule.
/// Returns how many of those it had to repair.
pub fn firewall_upkeep(l: &Loaded) -> Result<usize> {
    let Some(mut ovs) = Ovs::connect_if_running(&l.weft.ovsdb_socket).map_err(cni)? else {
        return Ok(0);
    };
    let mut fixed = 0;
    if weft_host::firewall::sync(&mut ovs).map_err(cni)? {
        fixed += 1;
    }
    for g in weft_host::firewall::from_ovs(&mut ovs).map_err(cni)? {
        let path = format!("/proc/sys/net/ipv4/conf/{}/arp_ignore", g.port);
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() != "1" => {
                weft_host::gateway::restrict_arp(&g.port).map_err(cni)?;
                fixed += 1;
            }
            _ => {}
        }
    }
    let netdev = ovs
        .bridge_datapath(&l.weft.bridge)
        .map_err(cni)?
        .is_some_and(|dp| dp == weft_host::config::DatapathType::Netdev);
    if (netdev || !weft_host::config::kernel_datapath_available())
        && ovs.bridge_exists(&l.weft.bridge).map_err(cni)?
        && !weft_host::hostend::input_drop_present().map_err(cni)?
    {
        weft_host::hostend::ensure_input_drop().map_err(cni)?;
        fixed += 1;
    }
    if fixed > 0 {
        tracing::info!(fixed, "firewall repaired");
    }
    Ok(fixed)
}

/// Repairs the firewall whenever the ruleset changes, on a thread of its
/// own: a burst of changes (one `nft -f` sends several) is one repair.
fn watch_firewall(l: &Loaded) -> Result<()> {
    let sock = weft_host::nft::watch_ruleset().context("listening for nftables changes")?;
    let l = l.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            if sock.recv(&mut &mut buf[..], 0).is_err() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
            while sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT).is_ok() {}
            // What arrives during the repair is not drained: it may be a
            // second flush, not only our own echo. The echo costs one more
            // pass that finds everything in place and writes nothing.
            if let Err(e) = firewall_upkeep(&l) {
                tracing::warn!(error = %format!("{e:#}"), "firewall repair failed");
            }
        }
    });
    Ok(())
}

/// Without `etcd`: only the firewall, until SIGTERM or SIGINT.
fn run_local(l: &Loaded) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            if let Err(e) = firewall_upkeep(l) {
                tracing::warn!(error = %format!("{e:#}"), "firewall repair failed");
            }
            let vlans = Ovs::connect_if_running(&l.weft.ovsdb_socket)
                .map_err(cni)
                .and_then(|o| match o {
                    Some(mut o) => fix_vlans(&mut o, &l.weft.bridge, &HashMap::new()),
                    None => Ok(0),
                });
            if let Err(e) = vlans {
                tracing::warn!(error = %format!("{e:#}"), "VLAN repair failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(RESYNC) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping");
        Ok(())
    })
}

/// Runs until SIGTERM or SIGINT, then gives up the lease so peers drop this
/// host's tunnels at once rather than when the lease runs out.
/// How long the node-local reconciler waits before it releases.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    /// A reservation with no live attachment.
    pub orphan: Duration,
    /// A block of this node's with no reservation.
    pub block: Duration,
}

pub fn run(l: &Loaded, ttl: i64, graces: Graces) -> Result<()> {
    watch_firewall(l)?;
    if l.weft.overlay.is_none() {
        return run_local(l);
    }
    // Held while this process lives: weft-ipam's ADDs on this host see it
    // and wait for the ready key after a wipe (see `repair`).
    let _lock = match l.ipam(None) {
        Ok(ipam) => {
            let path = weft_alloc::keys::agent_lock(&ipam.data_dir);
            let open = |e| anyhow::Error::new(e).context(format!("opening {}", path.display()));
            match weft_cni::files::lock_within(&path, Duration::ZERO).map_err(open)? {
                Some(lock) => Some(lock),
                // A restart whose predecessor is still stopping.
                None => {
                    tracing::info!(lock = %path.display(), "waiting for the other agent of this host to stop");
                    Some(weft_cni::files::lock(&path).map_err(open)?)
                }
            }
        }
        // Not weft-ipam: nothing of IPAM's to keep in step.
        Err(_) => None,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(l, ttl, graces) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "agent session ended; starting again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn repair_reservations(l: &Loaded) {
    match crate::repair::run(l) {
        Ok(done) => {
            for r in done.iter().filter(|r| r.outcome != "present") {
                tracing::warn!(network = %r.network, container = %r.container_id,
                    ifname = %r.ifname, ips = ?r.ips, outcome = %r.outcome, "reservation repair");
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "reservation repair failed"),
    }
}

/// Tells this host's ADDs that the node's reservations are all in etcd
/// (weft-ipam waits for it while this agent runs), under the agent's lease
/// so it goes with the agent.
fn mark_ready(store: &mut EtcdStore, node: &str, lease: i64) -> Result<()> {
    store
        .txn(
            &[],
            &[Write::PutLeased(
                weft_alloc::keys::ready_key(node),
                Vec::new(),
                lease,
            )],
            &[],
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Writes when this node was last alive, without a lease: `weftctl gc`
/// measures a missing node's absence from it.
fn say_alive(store: &mut EtcdStore, node: &str) -> Result<()> {
    let now = crate::upkeep::unix_now().to_string().into_bytes();
    store
        .txn(&[], &[Write::Put(registry::seen_key(node), now)], &[])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn session(l: &Loaded, ttl: i64, graces: Graces) -> Result<()> {
    let o = l.overlay()?.clone();
    let nl = Netlink::new().map_err(cni)?;
    let u = underlay::detect(&nl, &o).map_err(cni)?;
    let mut store = l.store()?;
    let mut client = store.client();
    let (mut term, mut int) = store.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let lease = store
        .block_on(client.lease_grant(ttl, None))
        .context("granting a lease")?
        .id();
    let me = NodeRecord {
        name: o.node.clone(),
        ip: u.ip,
    };
    let key = registry::node_key(&me.name);
    let register = |store: &EtcdStore, client: &mut etcd_client::Client| {
        store.block_on(client.put(
            key.clone(),
            registry::to_vec(&me),
            Some(PutOptions::new().with_lease(lease)),
        ))
    };
    // Reservations first: a registration and the ready key say they are in.
    repair_reservations(l);
    register(&store, &mut client).context("registering")?;
    say_alive(&mut store, &me.name)?;
    mark_ready(&mut store, &me.name, lease)?;
    // The lease is kept alive on a thread of its own, with its own etcd
    // connection: a reconcile blocked on a stalled ovsdb-server (up to its
    // 10 s timeout) must not let a 5 s lease lapse.
    let keeper = Keeper::start(l, lease, ttl)?;
    // Only the registry's own prefixes: IPAM's writes (every reservation on
    // every host) and the alive-clocks never wake an agent.
    let mut events = store.block_on(client.watch(
        registry::nodes_prefix(),
        Some(WatchOptions::new().with_prefix()),
    ))?;
    for prefix in [
        registry::all_members_prefix(),
        registry::networks_prefix(),
        registry::vnis_prefix(),
    ] {
        store.block_on(events.watch(prefix, Some(WatchOptions::new().with_prefix())))?;
    }
    tracing::info!(node = %me.name, ip = %me.ip, lease, "registered");
    let n = reconcile_all(l, &mut store, Prune::Unwanted)?;
    tracing::info!(changed = n, "initial reconcile");
    // After a wipe every peer registers again, each when it hears of it:
    // until they have had the time, one missing from the registry is not
    // taken for gone, so containers never see their tunnels drop.
    let mut hold_until: Option<Instant> = None;
    firewall_upkeep(l)?;

    let mut next_resync = Instant::now() + RESYNC;
    let mut orphans = crate::upkeep::Orphans::default();
    let orphan_every =
        (graces.orphan.min(graces.block) / 2).clamp(Duration::from_millis(500), RESYNC);
    let mut next_orphans = Instant::now();
    loop {
        let until = tokio::time::Instant::from_std(
            next_resync.min(Instant::now() + Duration::from_millis(500)),
        );
        let mut lost_own = false;
        let wake = store.block_on(async {
            let first = tokio::select! {
                m = events.message() => m,
                _ = tokio::time::sleep_until(until) => return Wake::Tick,
                _ = term.recv() => return Wake::Stop,
                _ = int.recv() => return Wake::Stop,
            };
            // A burst of changes (a host joining writes several keys, a
            // wipe deletes many) is one reconcile: gather what arrives
            // within a moment of the first.
            let mut batch = vec![first];
            let settle = tokio::time::Instant::now() + COALESCE;
            while let Ok(m) = tokio::time::timeout_at(settle, events.message()).await {
                batch.push(m);
            }
            let mut events = 0;
            for m in batch {
                match m {
                    Ok(Some(resp)) if !resp.canceled() => {
                        // Our own registration deleted (an operator, or a
                        // lease that lapsed while we were stalled): put it back.
                        lost_own |= resp.events().iter().any(|e| {
                            e.event_type() == etcd_client::EventType::Delete
                                && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
                        });
                        events += resp.events().len();
                    }
                    _ => return Wake::WatchLost,
                }
            }
            if events > 0 {
                Wake::Watch {
                    lost: lost_own,
                    events,
                }
            } else {
                Wake::Tick
            }
        });
        if keeper.lost() {
            bail!("the lease lapsed or its keepalive stream broke");
        }
        match wake {
            Wake::Stop => {
                keeper.stop();
                let _ = store.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await
                });
                tracing::info!("lease revoked; stopping");
                return Ok(());
            }
            Wake::WatchLost => bail!("lost the watch"),
            Wake::Watch { lost, events } => {
                if lost {
                    // Our registration deleted: an operator, a lapsed
                    // lease, or a wiped etcd. The last takes the
                    // reservations too: put back those of live attachments
                    // before anyone is handed their addresses.
                    repair_reservations(l);
                    register(&store, &mut client).context("registering again")?;
                    mark_ready(&mut store, &me.name, lease)?;
                    hold_until = Some(Instant::now() + Duration::from_secs(ttl.max(1) as u64));
                }
                let n = reconcile_all(l, &mut store, prune_while(hold_until))?;
                // One line per reconcile the registry caused: the tests
                // count them.
                tracing::info!(events, changed = n, "registry changed; reconciled");
            }
            Wake::Tick => {}
        }
        let now = Instant::now();
        if hold_until.is_some_and(|t| now >= t) {
            hold_until = None;
            let n = reconcile_all(l, &mut store, Prune::Unwanted)?;
            tracing::info!(changed = n, "peers had their time to register again");
        }
        if now >= next_orphans {
            match orphans.pass(l, graces.orphan, graces.block) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    released = n,
                    "reservations without a live attachment released"
                ),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "orphan pass failed"),
            }
            next_orphans = now + orphan_every;
        }
        if now >= next_resync {
            say_alive(&mut store, &me.name)?;
            mark_ready(&mut store, &me.name, lease)?;
            reconcile_all(l, &mut store, prune_while(hold_until))?;
            firewall_upkeep(l)?;
            next_resync = now + RESYNC;
        }
    }
}

/// What a reconcile may remove while peers may still be registering again.
fn prune_while(hold_until: Option<Instant>) -> Prune {
    if hold_until.is_some() {
        Prune::Superseded
    } else {
        Prune::Unwanted
    }
}

/// Keeps one lease alive from its own thread and runtime. Dropping it (or
/// `stop`) ends the thread within a keepalive period.
struct Keeper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Keeper {
    fn start(l: &Loaded, lease: i64, ttl: i64) -> Result<Keeper> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let store = l.store()?;
        let mut client = store.client();
        let (mut keeper, mut kept) = store
            .block_on(client.lease_keep_alive(lease))
            .context("starting the lease keepalive")?;
        let (stop, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (stop2, lost2) = (stop.clone(), lost.clone());
        let every = Duration::from_millis((ttl as u64 * 1000) / 3);
        let ttl_d = Duration::from_secs(ttl as u64);
        std::thread::spawn(move || {
            let mut last_ok = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let answer = store.block_on(async {
                    keeper.keep_alive().await.ok()?;
                    tokio::time::timeout(every, kept.message())
                        .await
                        .ok()?
                        .ok()?
                });
                match answer {
                    Some(r) if r.ttl() > 0 => {
                        last_ok = Instant::now();
                        std::thread::sleep(every);
                    }
                    // The lease itself is gone: the session must start anew.
                    Some(_) => break,
                    // A broken stream (the member we spoke to died, a
                    // leader election): the lease lives on in the cluster,
                    // so keep it on a new stream rather than register anew,
                    // until its TTL says it has lapsed.
                    None => {
                        if last_ok.elapsed() >= ttl_d {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                        if let Ok((k, s)) = store.block_on(async {
                            tokio::time::timeout(every, client.lease_keep_alive(lease))
                                .await
                                .map_err(|_| etcd_client::Error::InvalidArgs("timed out".into()))?
                        }) {
                            (keeper, kept) = (k, s);
                        }
                    }
                }
            }
            if !stop2.load(Ordering::Relaxed) {
                lost2.store(true, Ordering::Relaxed);
            }
        });
        Ok(Keeper { stop, lost })
    }

    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}
