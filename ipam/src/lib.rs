//! weft-ipam: cluster-wide IPAM on etcd (issue 4, in progress). So far: the
//! validated config and the address arithmetic the allocator will stand on.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod alloc;
pub mod config;
pub mod etcd;
pub mod space;
pub mod store;
mod upkeep;
