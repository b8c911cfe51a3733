#!/bin/sh
# Build the install image from the static release binaries, offline:
#   deploy/kubernetes/build-image.sh [IMAGE]   (default localhost/cni-rs-install:<version>)
# Run from anywhere; needs podman (or set PODMAN=buildah-compatible command).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
make release >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image=${1:-localhost/cni-rs-install:$version}
release=$(make -s -f Makefile print-release-dir)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in bridge host-local loopback portmap ptp cni-install; do
  install -m 0755 "$release/$b" "$ctx/$b"
done
cp "$here/Containerfile" "$ctx/Containerfile"
${PODMAN:-podman} build --network none -t "$image" -f "$ctx/Containerfile" "$ctx" >&2
echo "$image"
