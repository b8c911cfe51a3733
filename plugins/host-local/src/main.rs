//! The host-local plugin's binary: see the library for what it does.

fn main() {
    cni_types::plugin::run(&host_local::plugin::HostLocal)
}
