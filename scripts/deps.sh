#!/usr/bin/env bash
# Install the Debian packages the tests need, and the Rust target the release
# binaries are built for (static, musl), only if missing. Idempotent and quiet
# when everything is there.
set -euo pipefail

packages=(
  nftables      # nft -j: the tests read back the rules our plugins install over netlink
  iproute2      # ip: the tests create namespaces and read kernel state with ip -j
  procps        # pgrep/ps for the runtime tests' clean-up checks
  jq            # the demo pretty-prints results
  iputils-ping  # connectivity tests between container namespaces
  conntrack     # the tests create and inspect conntrack entries (the plugins use netlink)
  iptables      # coexistence tests write kube-proxy/Docker-style rules; the reference portmap needs it
  curl          # the demo fetches a page through a mapped port
  containernetworking-plugins  # the Go reference plugins: peers in tests, baseline in benchmarks
  podman runc   # the podman end-to-end test (CNI backend; runc because crun 1.8 refuses hybrid cgroups)
  containerd    # the containerd end-to-end test (containerd + ctr)
  busybox-static  # the offline image both runtimes run
  python3-grpcio  # tests/tools/cri.py speaks the CRI to containerd as kubelet would (no kubelet or crictl in Debian 12)
  python3-yaml    # tests/tests/deploy.rs reads the kind config and the DaemonSet manifest
)
# `--bench`: also what `make bench` needs (the report's plots).
if [[ ${1:-} == --bench ]]; then
  packages+=(python3-matplotlib gcc libc6-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: need root to install ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Release binaries are static: the musl target when rustup can add it, else
# static glibc (scripts/static-target.sh picks whichever is there).
musl="$(uname -m)-unknown-linux-musl"
if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  echo "deps: adding the Rust target $musl" >&2
  rustup target add "$musl" >&2 || echo "deps: cannot add $musl; release builds fall back to static glibc" >&2
fi
