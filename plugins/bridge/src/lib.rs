//! The bridge plugin: a veth pair per container, its host end on a Linux
//! bridge, addresses from the IPAM plugin, optional gateway, masquerade and
//! MAC spoof check. `plugin` holds the verbs; `spoofcheck` the bridge's own
//! nftables rules.

pub mod config;
pub mod container;
pub mod error;
pub mod host;
pub mod plugin;
pub mod spoofcheck;
