//! The ptp plugin's binary: see the library for what it does.

fn main() {
    cni_types::plugin::run(&ptp::plugin::Ptp)
}
