//! The portmap plugin: host ports forwarded to a container, as nftables
//! rules in our own table, chained after a plugin that gave the container its
//! addresses (bridge).

mod conditions;
mod config;
mod error;
mod mappings;
mod plugin;

fn main() {
    cni_types::plugin::run(&plugin::Portmap)
}
