//! The host-local IPAM plugin: addresses from configured ranges, reserved in
//! files under `dataDir` in the reference plugin's layout. `plugin` holds the
//! verbs, `allocator` the pure allocation logic over the `store`.

pub mod allocator;
pub mod config;
pub mod dirfd;
pub mod dns;
pub mod error;
pub mod ip;
pub mod plugin;
pub mod store;
