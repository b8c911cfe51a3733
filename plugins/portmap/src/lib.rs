//! The portmap plugin: host ports forwarded to a container, as nftables
//! rules in our own table, chained after a plugin that gave the container its
//! addresses (bridge). `plugin` holds the verbs, `rules` the nftables layout.

pub mod conditions;
pub mod config;
pub mod error;
pub mod mappings;
pub mod plugin;
pub mod rules;
