//! The loopback plugin: brings `lo` up in the container's namespace.

mod error;
mod plugin;

fn main() {
    cni_types::plugin::run(&plugin::Loopback)
}
