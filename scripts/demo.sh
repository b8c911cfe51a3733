#!/usr/bin/env bash
# A walk through what cni-rs does today, for someone who has never seen CNI.
# Everything happens inside a throwaway network namespace that is removed at
# the end, also on failure; the machine's own network is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "the demo needs root (it creates a network namespace)" >&2; exit 1; }

bin=$PWD/target/debug
ns=cnirs-demo-$$
work=$(mktemp -d /tmp/cnirs-demo.XXXXXX)
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

export NETCONFPATH=$PWD/conf CNI_PATH=$bin CNI_CACHE_DIR=$work/cache

say "A container runtime gives each container a network namespace. We make one: $ns"
run ip netns add "$ns"
run ip -n "$ns" -br addr show

say "Its loopback interface starts DOWN. The network config we will apply (conf/99-loopback.conflist):"
cat conf/99-loopback.conflist

say "cni-run does what a runtime does: run every plugin of the list with the CNI environment (ADD)"
run "$bin/cni-run" add cni-loopback "/run/netns/$ns" | tee "$work/result.json"

say "lo is now UP with its addresses, as the result above says"
run ip -n "$ns" -br addr show

say "CHECK: the plugin verifies the container still looks like the result (silence means yes)"
run "$bin/cni-run" check cni-loopback "/run/netns/$ns" && echo "check passed"

say "If someone takes lo down behind our back, CHECK notices"
run ip -n "$ns" link set lo down
if "$bin/cni-run" check cni-loopback "/run/netns/$ns"; then echo "check should have failed" >&2; exit 1; fi

say "DEL undoes ADD; DEL is idempotent, so a second one also succeeds"
run "$bin/cni-run" del cni-loopback "/run/netns/$ns"
run "$bin/cni-run" del cni-loopback "/run/netns/$ns"
run ip -n "$ns" -br addr show

say "Every plugin answers VERSION with the spec versions it speaks"
for p in loopback bridge host-local portmap; do
  printf '%-11s ' "$p"; CNI_COMMAND=VERSION "$bin/$p" </dev/null | jq -c .supportedVersions
done

say "Bad input gets a spec-shaped error on stdout and a non-zero exit, never a crash"
printf '$ echo "{not json" | CNI_COMMAND=ADD ... loopback\n'
echo '{not json' | CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS=/run/netns/$ns CNI_IFNAME=eth0 "$bin/loopback" || echo "(exit $?)"

say "Clean-up: the namespace goes away"
ip netns del "$ns"
ip netns list | grep -q "^$ns" && { echo "namespace left behind" >&2; exit 1; }
echo "nothing left behind"
