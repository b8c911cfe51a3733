#!/usr/bin/env bash
# Print the cargo target triple the release binaries are built for, and the
# RUSTFLAGS that make them fully static (no NEEDED entries, no interpreter):
#   <triple> <rustflags>
# musl when its Rust target is installed (static by default, and its start-up
# runs no CPUID, which traps in VMs); otherwise glibc with crt-static.
set -euo pipefail
musl="$(uname -m)-unknown-linux-musl"
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  echo "$musl"
else
  echo "$(uname -m)-unknown-linux-gnu -Ctarget-feature=+crt-static"
fi
