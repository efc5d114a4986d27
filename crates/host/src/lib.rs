//! weft's plugin logic as a library, so `weftctl` drives the same OVS,
//! netlink and registry code the plugin does.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod add;
pub mod check;
pub mod config;
pub mod del;
pub mod ethtool;
pub mod fastdel;
pub mod firewall;
pub mod forked;
pub mod garp;
pub mod gateway;
pub mod gc;
pub mod hostend;
pub mod ids;
pub mod link;
pub mod names;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod ovs;
pub mod undo;
pub mod vlan;

/// When the process started, for the debug log's phase timings.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
