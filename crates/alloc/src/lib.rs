//! weft-ipam's allocator: the validated config, the address arithmetic, and
//! the allocator with its upkeep (GC, repair, CHECK), on any
//! [`weft_store::Store`]. The `weft-ipam` binary and `weftctl` drive it.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod alloc;
pub mod config;
pub mod hints;
pub mod keys;
mod pick;
pub mod space;
mod upkeep;
