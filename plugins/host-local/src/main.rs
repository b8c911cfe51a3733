//! The host-local IPAM plugin: addresses from configured ranges, reserved in
//! files under `dataDir` in the reference plugin's layout.

mod allocator;
mod config;
mod dns;
mod error;
mod ip;
mod plugin;
mod store;

fn main() {
    cni_types::plugin::run(&plugin::HostLocal)
}
