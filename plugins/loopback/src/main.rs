//! The loopback plugin's binary: see the library for what it does.

fn main() {
    cni_types::plugin::run(&loopback::plugin::Loopback)
}
