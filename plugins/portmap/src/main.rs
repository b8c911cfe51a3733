//! The portmap plugin's binary: see the library for what it does.

fn main() {
    cni_types::plugin::run(&portmap::plugin::Portmap)
}
