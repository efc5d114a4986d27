//! The tunnel ports a host should have for a network, and the change from
//! what OVS has now. Pure: the caller reads OVS and applies the plan.
//!
//! One port per (peer, network): an access port on the network's VLAN tag,
//! keyed with its VNI, and `protected`, so OVS's NORMAL action never forwards
//! from one tunnel to another. That split horizon is what keeps the full mesh
//! loop-free: a broadcast crosses each tunnel once and stops at the far end.

use weft_ovsdb::plan::PortSpec;

use super::registry::{NetworkRecord, NodeRecord};
use crate::{ids, names};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub peer: String,
    pub spec: String,
    pub port: PortSpec,
}

/// A tunnel port OVS has now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub uuid: String,
    pub name: String,
    pub spec: String,
}

pub fn desired(net: &str, rec: &NetworkRecord, peers: &[NodeRecord]) -> Vec<Tunnel> {
    peers
        .iter()
        .map(|p| {
            let name = names::tunnel_port(net, &p.name);
            let mut options = vec![
                ("remote_ip".to_string(), p.ip.to_string()),
                ("key".to_string(), rec.vni.to_string()),
            ];
            if let Some(port) = rec.port {
                options.push(("dst_port".to_string(), port.to_string()));
            }
            let spec = format!(
                "{}/{}/{}/{}",
                rec.tunnel.as_str(),
                p.ip,
                rec.port.map(|x| x.to_string()).unwrap_or_default(),
                rec.vni
            );
            Tunnel {
                name: name.clone(),
                peer: p.name.clone(),
                spec: spec.clone(),
                port: PortSpec {
                    name,
                    kind: rec.tunnel.as_str().to_string(),
                    options,
                    tag: Some(rec.vni),
                    protected: true,
                    external_ids: vec![
                        (ids::TUNNEL_FOR.into(), net.into()),
                        (ids::PEER.into(), p.name.clone()),
                        (ids::SPEC.into(), spec),
                    ],
                    ..Default::default()
                },
            }
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<PortSpec>,
    /// UUIDs of ports to remove: peers gone, or settings changed.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Which of the tunnels a view no longer wants a reconcile may remove.
///
/// A view read from the registry before the ports were read from OVS can
/// be older than a tunnel another process (an ADD, the agent) has just
/// made for a peer that joined in between; removing that tunnel would cut
/// the new peer off until the next resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Every unwanted tunnel. Only for a caller that read the ports before
    /// the registry: every tunnel it saw was made after its peer's record
    /// was written, so a view that lacks the peer is newer than the tunnel.
    Unwanted,
    /// Only a tunnel that a wanted one of the same name replaces (the
    /// peer's address or the network's settings changed). For ADD, whose
    /// view precedes the ports it finds, and for an agent while its peers
    /// register again after a wipe.
    Superseded,
}

/// [`plan`], removing only what `prune` allows.
pub fn plan_pruning(desired: &[Tunnel], existing: &[Existing], prune: Prune) -> Plan {
    let mut p = plan(desired, existing);
    if prune == Prune::Superseded {
        p.remove.retain(|uuid| {
            existing
                .iter()
                .any(|e| &e.uuid == uuid && desired.iter().any(|d| d.name == e.name))
        });
    }
    p
}

pub fn plan(desired: &[Tunnel], existing: &[Existing]) -> Plan {
    let mut p = Plan::default();
    for e in existing {
        if !desired.iter().any(|d| d.name == e.name && d.spec == e.spec) {
            p.remove.push(e.uuid.clone());
        }
    }
    for d in desired {
        if !existing
            .iter()
            .any(|e| e.name == d.name && e.spec == d.spec)
        {
            p.add.push(d.port.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::config::TunnelKind;

    fn rec() -> NetworkRecord {
        NetworkRecord {
            vni: 7,
            tunnel: TunnelKind::Vxlan,
            port: Some(4789),
        }
    }

    fn peer(name: &str, ip: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn existing(t: &Tunnel, uuid: &str) -> Existing {
        Existing {
            uuid: uuid.into(),
            name: t.name.clone(),
            spec: t.spec.clone(),
        }
    }

    #[test]
    fn one_protected_access_port_per_peer() {
        let d = desired(
            "blue",
            &rec(),
            &[peer("b", "10.0.0.3"), peer("c", "10.0.0.4")],
        );
        assert_eq!(d.len(), 2);
        assert_ne!(d[0].name, d[1].name);
        let p = &d[0].port;
        assert_eq!(p.kind, "vxlan");
        assert_eq!(p.tag, Some(7));
        assert!(p.protected);
        assert!(p.options.contains(&("remote_ip".into(), "10.0.0.3".into())));
        assert!(p.options.contains(&("key".into(), "7".into())));
        assert!(weft_cni::env::valid_ifname(&d[0].name).is_ok());
        // Another network to the same peer gets its own port.
        assert_ne!(
            desired("red", &rec(), &[peer("b", "10.0.0.3")])[0].name,
            d[0].name
        );
        let gre = NetworkRecord {
            tunnel: TunnelKind::Gre,
            port: None,
            ..rec()
        };
        let g = desired("blue", &gre, &[peer("b", "10.0.0.3")]);
        assert!(!g[0].port.options.iter().any(|(k, _)| k == "dst_port"));
    }

    #[test]
    fn plan_adds_missing_removes_gone_and_replaces_changed() {
        let now = desired(
            "blue",
            &rec(),
            &[peer("b", "10.0.0.3"), peer("c", "10.0.0.4")],
        );
        let have = vec![existing(&now[0], "u-b"), existing(&now[1], "u-c")];
        assert!(plan(&now, &have).is_empty());

        // c left, d joined, b moved.
        let next = desired(
            "blue",
            &rec(),
            &[peer("b", "10.0.0.9"), peer("d", "10.0.0.5")],
        );
        let p = plan(&next, &have);
        assert_eq!(p.remove, vec!["u-b".to_string(), "u-c".to_string()]);
        assert_eq!(p.add.len(), 2);
        assert!(plan(&[], &have).add.is_empty());
    }

    #[test]
    fn superseded_pruning_replaces_a_changed_peer_but_keeps_one_the_view_lacks() {
        let old = desired(
            "blue",
            &rec(),
            &[peer("h1", "192.0.2.1"), peer("h2", "192.0.2.2")],
        );
        let have: Vec<Existing> = old
            .iter()
            .enumerate()
            .map(|(i, t)| existing(t, &format!("u{i}")))
            .collect();
        // h1 moved; h2 is missing from this (older) view.
        let view = desired("blue", &rec(), &[peer("h1", "192.0.2.9")]);
        let some = plan_pruning(&view, &have, Prune::Superseded);
        assert_eq!(some.remove, vec!["u0".to_string()]);
        assert_eq!(some.add.len(), 1);
        let all = plan_pruning(&view, &have, Prune::Unwanted);
        assert_eq!(all.remove, vec!["u0".to_string(), "u1".to_string()]);
    }
}
