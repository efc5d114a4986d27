//! Every external_ids key weft writes on OVS rows. Other processes (weftctl,
//! the agent, the firewall rebuild, GC, the next ADD) find weft's rows by
//! these, so they are part of weft's on-host format: never rename one.

/// What every key starts with: a port carrying one is weft's.
pub const PREFIX: &str = "weft.";

/// On a bridge weft created (`weftctl cleanup` removes only those).
pub const BRIDGE: &str = "weft.bridge";
/// On a bridge: `weft.vlan.<network>` = a single-host network's VLAN tag.
pub const VLAN_PREFIX: &str = "weft.vlan.";

/// On a container's port: whose attachment it is.
pub const NETWORK: &str = "weft.network";
pub const CONTAINER_ID: &str = "weft.container_id";
pub const IFNAME: &str = "weft.ifname";
pub const NETNS: &str = "weft.netns";
pub const POD_NAME: &str = "weft.k8s_pod_name";
pub const POD_NAMESPACE: &str = "weft.k8s_pod_namespace";

/// On a gateway port: the network it serves, and what the firewall needs to
/// know of it (`KIND` = `GATEWAY`, so one select finds every gateway).
pub const GATEWAY_FOR: &str = "weft.gateway_for";
pub const KIND: &str = "weft.kind";
pub const GATEWAY: &str = "gateway";
pub const ADDRESSES: &str = "weft.gateway.addresses";
pub const IP_MASQ: &str = "weft.gateway.ip_masq";
pub const HOST_ACCESS: &str = "weft.gateway.host_access";
pub const UNDERLAY: &str = "weft.gateway.underlay";

/// On a tunnel port: the network and peer it serves, and a fingerprint of
/// its settings, so a changed peer is seen without reading the Interface
/// table.
pub const TUNNEL_FOR: &str = "weft.tunnel_for";
pub const PEER: &str = "weft.peer";
pub const SPEC: &str = "weft.tunnel";
