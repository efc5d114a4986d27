//! weft-ipam: cluster-wide IPAM on etcd: the validated config, the address
//! arithmetic, the allocator and its upkeep, the store it runs on, and the
//! per-attachment turns that keep a killed ADD from outliving its DEL.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod alloc;
pub mod config;
pub mod etcd;
pub mod space;
pub mod store;
pub mod turns;
mod upkeep;
