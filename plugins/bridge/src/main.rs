//! The bridge plugin: a veth pair per container, its host end on a Linux
//! bridge, addresses from the IPAM plugin, optional gateway, masquerade and
//! MAC spoof check.

mod config;
mod container;
mod error;
mod host;
mod plugin;

fn main() {
    cni_types::plugin::run(&plugin::Bridge)
}
