//! `weftctl agent`: keeps this host registered under an etcd lease and its
//! tunnels in step with the registry. A watch on the registry wakes it the
//! moment a host joins or leaves; a periodic pass repairs anything else
//! (a restarted ovs-vswitchd, a hand-deleted port).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{PutOptions, WatchOptions};
use tokio::signal::unix::{signal, SignalKind};
use weft::link::Netlink;
use weft::overlay::registry::{self, NodeRecord};
use weft::overlay::{self, tunnels, underlay};
use weft::ovs::Ovs;
use weft_ipam::etcd::EtcdStore;

use crate::conf::{cni, Loaded};

const RESYNC: Duration = Duration::from_secs(30);

enum Wake {
    Watch(bool),
    KeepAliveLost,
    Tick,
    Stop,
}

/// Brings every network this node belongs to in line with the registry, and
/// drops tunnels of networks it no longer belongs to. Returns ports changed.
pub fn reconcile_all(l: &Loaded, store: &mut EtcdStore) -> Result<usize> {
    let me = &l.overlay()?.node;
    let bridge = &l.weft.bridge;
    store.renew();
    let mut ovs = Ovs::connect(&l.weft.ovsdb_socket).map_err(cni)?;
    if !ovs.bridge_exists(bridge).map_err(cni)? {
        // No container has been attached here yet; the first ADD makes the
        // bridge and its tunnels.
        return Ok(0);
    }
    let nets = registry::networks_of(store, me).map_err(cni)?;
    let mut changed = 0;
    for net in &nets {
        if let Some(view) = registry::view(store, net, me).map_err(cni)? {
            let have = ovs.tunnel_ports(net).map_err(cni)?;
            changed += overlay::reconcile(&mut ovs, bridge, net, &view, &have).map_err(cni)?;
        }
    }
    let orphans: Vec<String> = ovs
        .weft_ports()
        .map_err(cni)?
        .into_iter()
        .filter(|p| {
            p.id(tunnels::ids::TUNNEL_FOR)
                .is_some_and(|n| !nets.iter().any(|x| x == n))
        })
        .map(|p| p.uuid)
        .collect();
    if !orphans.is_empty() {
        changed += orphans.len();
        ovs.change_ports(bridge, &[], &orphans).map_err(cni)?;
    }
    Ok(changed)
}

/// Runs until SIGTERM or SIGINT, then gives up the lease so peers drop this
/// host's tunnels at once rather than when the lease runs out.
pub fn run(l: &Loaded, ttl: i64) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(l, ttl) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "agent session ended; starting again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn session(l: &Loaded, ttl: i64) -> Result<()> {
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
    register(&store, &mut client).context("registering")?;
    let (mut keeper, mut kept) = store.block_on(client.lease_keep_alive(lease))?;
    let mut events =
        store.block_on(client.watch(registry::ROOT, Some(WatchOptions::new().with_prefix())))?;
    tracing::info!(node = %me.name, ip = %me.ip, lease, "registered");
    let n = reconcile_all(l, &mut store)?;
    tracing::info!(changed = n, "initial reconcile");

    let every = Duration::from_millis((ttl as u64 * 1000) / 3);
    let mut next_keepalive = Instant::now() + every;
    let mut next_resync = Instant::now() + RESYNC;
    loop {
        let until = tokio::time::Instant::from_std(next_keepalive.min(next_resync));
        let wake = store.block_on(async {
            tokio::select! {
                m = events.message() => match m {
                    Ok(Some(resp)) if !resp.canceled() => {
                        // Our own registration deleted (an operator, or a
                        // lease that lapsed while we were stalled): put it back.
                        let lost = resp.events().iter().any(|e| {
                            e.event_type() == etcd_client::EventType::Delete
                                && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
                        });
                        Wake::Watch(lost)
                    }
                    _ => Wake::KeepAliveLost,
                },
                k = kept.message() => match k {
                    Ok(Some(r)) if r.ttl() > 0 => Wake::Tick,
                    _ => Wake::KeepAliveLost,
                },
                _ = tokio::time::sleep_until(until) => Wake::Tick,
                _ = term.recv() => Wake::Stop,
                _ = int.recv() => Wake::Stop,
            }
        });
        match wake {
            Wake::Stop => {
                let _ = store.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await
                });
                tracing::info!("lease revoked; stopping");
                return Ok(());
            }
            Wake::KeepAliveLost => bail!("lost the watch or the lease"),
            Wake::Watch(lost) => {
                if lost {
                    register(&store, &mut client).context("registering again")?;
                }
                let n = reconcile_all(l, &mut store)?;
                if n > 0 {
                    tracing::info!(changed = n, "registry changed");
                }
            }
            Wake::Tick => {}
        }
        let now = Instant::now();
        if now >= next_keepalive {
            store.block_on(keeper.keep_alive())?;
            next_keepalive = now + every;
        }
        if now >= next_resync {
            reconcile_all(l, &mut store)?;
            next_resync = now + RESYNC;
        }
    }
}
