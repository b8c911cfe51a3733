#!/usr/bin/env bash
# Stamp the plugin binaries of one build with a shared build id, so that a
# plugin can tell that the IPAM plugin it would exec is its own build and
# run it in-process instead (cni_types::invoke, "in-process IPAM").
#
# The stamp is a 64-byte trailer after the ELF file's last byte (the kernel
# and the loader never read past the sections): "CNIRS-BUILD1", the id as
# 32 hex digits, the plugin's name NUL-padded to 20 bytes. The id is a hash
# of all the unstamped binaries, so the same build gives the same bytes
# (the release tarball stays reproducible). Stamping again first removes an
# old stamp.
#
#   scripts/stamp.sh DIR [EXTRA ...]
#     stamp DIR/{bridge,host-local,loopback,portmap,ptp}, and DIR/EXTRA
#     (e.g. the benchmarks' cni-floor) with the same id
set -euo pipefail
dir=${1:?usage: stamp.sh DIR [EXTRA ...]}
shift
plugins=(bridge host-local loopback portmap ptp)
extras=("$@")
magic=CNIRS-BUILD1

for p in "${plugins[@]}" "${extras[@]}"; do
  f=$dir/$p
  [[ -f $f ]] || { echo "stamp: $f missing" >&2; exit 1; }
  if [[ $(tail -c 64 "$f" | head -c 12 | tr -d '\000') == "$magic" ]]; then
    truncate -s -64 "$f"
  fi
done
id=$(for p in "${plugins[@]}"; do cat "$dir/$p"; done | sha256sum | cut -c1-32)
for p in "${plugins[@]}" "${extras[@]}"; do
  printf '%s%s%s' "$magic" "$id" "$p" >>"$dir/$p"
  head -c $((20 - ${#p})) /dev/zero >>"$dir/$p"
done
echo "stamp: build $id" >&2
