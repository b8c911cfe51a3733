#!/usr/bin/env bash
# Fail if a test left anything behind: namespaces it named, or any bridge,
# veth or nftables table in the root network namespace; and from the runtime
# tests' sandboxes (all named cnirs-*): a mount, a cgroup, or a live process.
set -euo pipefail
left=$(ip netns list 2>/dev/null | awk '/^cnirs-/ {print $1}')
br=$(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}')
veth=$(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}')
tables=$( (command -v nft >/dev/null && nft list tables 2>/dev/null) || true)
mounts=$(awk '$2 ~ /cnirs-/ {print $2}' /proc/self/mounts)
cgroups=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name 'cnirs-*' 2>/dev/null || true)
# Runtimes, shims and conmons started for a sandbox name its paths in their
# arguments. Exited ones linger as zombies under PID 1 for a while: only live
# ones count. ([-] keeps awk from matching its own command line.)
procs=$(ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && /cnirs[-]/ {print $1}')
if [[ -n "$left$br$veth$tables$mounts$cgroups$procs" ]]; then
  echo "leakcheck: state left behind:" >&2
  [[ -n "$left" ]] && echo "  namespaces: $left" >&2
  [[ -n "$br" ]] && echo "  root-namespace bridges: $br" >&2
  [[ -n "$veth" ]] && echo "  root-namespace veths: $veth" >&2
  [[ -n "$tables" ]] && echo "  root-namespace nftables: $tables" >&2
  [[ -n "$mounts" ]] && echo "  mounts: $mounts" >&2
  [[ -n "$cgroups" ]] && echo "  cgroups: $cgroups" >&2
  [[ -n "$procs" ]] && echo "  processes: $(echo $procs)" >&2
  exit 1
fi
echo "leakcheck: nothing left behind"
