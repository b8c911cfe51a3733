//! The loopback plugin's binary: see the library for what it does.

// musl's allocator maps and unmaps memory around each burst of allocations
// (71 of portmap's 152 system calls per ADD); dlmalloc keeps what it got.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    cni_types::plugin::run(&loopback::plugin::Loopback)
}
