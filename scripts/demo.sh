#!/usr/bin/env bash
# What cni-rs does, shown to someone who has never seen CNI.
#
# Everything happens inside throwaway network namespaces that are removed at
# the end, also on failure: one stands in for the machine ("host"), two for
# containers. The machine's own network is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "the demo needs root (it creates network namespaces)" >&2; exit 1; }

bin=$PWD/target/debug
tag=$$
host=cnirs-demo-host-$tag
ctr_a=cnirs-demo-a-$tag
ctr_b=cnirs-demo-b-$tag
work=$(mktemp -d /tmp/cnirs-demo.XXXXXX)
web_pid=
cleanup() {
  # Never stop half-way: every step may fail harmlessly.
  if [[ -n "$web_pid" ]]; then kill "$web_pid" 2>/dev/null || true; wait "$web_pid" 2>/dev/null || true; fi
  for ns in "$ctr_a" "$ctr_b" "$host"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
in_host() { nsenter --net="/run/netns/$host" "$@"; }

# The shipped config, with its address store moved into our temp dir.
mkdir -p "$work/net.d"
jq --arg d "$work/ipam" '.plugins[0].ipam.dataDir = $d' conf/10-cni-rs-bridge.conflist >"$work/net.d/10-cni-rs-bridge.conflist"
export NETCONFPATH=$work/net.d CNI_PATH=$bin CNI_CACHE_DIR=$work/cache

say "A container runtime gives each container its own network namespace. We make two, plus one standing in for the host"
run ip netns add "$host"
run ip -n "$host" link set lo up   # as on a real host
run ip netns add "$ctr_a"
run ip netns add "$ctr_b"

say "The network config (conf/10-cni-rs-bridge.conflist): a bridge with addresses from host-local, port mappings, then loopback"
jq . "$work/net.d/10-cni-rs-bridge.conflist"

say "ADD: cni-run runs each plugin of the list as a runtime would, and prints the result"
printf '$ CAP_ARGS='"'"'{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}'"'"' cni-run add cni-rs-bridge /run/netns/%s\n' "$ctr_a"
CAP_ARGS='{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}' \
  in_host "$bin/cni-run" add cni-rs-bridge "/run/netns/$ctr_a" | tee "$work/a.json"
printf '$ cni-run add cni-rs-bridge /run/netns/%s   (result not shown)\n' "$ctr_b"
in_host "$bin/cni-run" add cni-rs-bridge "/run/netns/$ctr_b" >"$work/b.json"
ip_a=$(jq -r '.ips[0].address | split("/")[0]' "$work/a.json")
ip_b=$(jq -r '.ips[0].address | split("/")[0]' "$work/b.json")
gw=$(jq -r '.ips[0].gateway' "$work/a.json")

say "Inside container A: eth0 with its address, lo up, a default route via the bridge"
run ip -n "$ctr_a" -br addr show
run ip -n "$ctr_a" route show

say "On the host: the bridge cni0 holds the gateway $gw, and one veth per container is plugged into it"
run ip -n "$host" -br addr show type bridge
run ip -n "$host" -br link show type veth

say "The containers reach each other and the gateway"
run ip netns exec "$ctr_a" ping -c 1 -W 2 "$ip_b"
run ip netns exec "$ctr_b" ping -c 1 -W 2 "$ip_a"
run ip netns exec "$ctr_a" ping -c 1 -W 2 "$gw"

say "Port mapping: a web server in container A answers on the host's port 8080"
mkdir -p "$work/www" && echo "hello from container A" >"$work/www/index.html"
ip netns exec "$ctr_a" python3 -m http.server 80 --bind 0.0.0.0 --directory "$work/www" >/dev/null 2>&1 &
web_pid=$!
# Wait for the server to listen (the kernel's socket table, bounded).
for _ in $(seq 100); do ip netns exec "$ctr_a" ss -ltn 2>/dev/null | grep -q ':80 ' && break; sleep 0.05; done
run ip netns exec "$host" curl -s --max-time 3 "http://$gw:8080/"
run ip netns exec "$host" curl -s --max-time 3 "http://127.0.0.1:8080/"
printf '(from container B, through the host:)\n'
run ip netns exec "$ctr_b" curl -s --max-time 3 "http://$gw:8080/"

say "ipMasq and the port mapping: nftables rules written over netlink (no iptables or nft process)"
run ip netns exec "$host" nft list table inet cni-rs

say "CHECK: the plugins verify the network still looks like the result (silence means yes)"
run in_host "$bin/cni-run" check cni-rs-bridge "/run/netns/$ctr_a" && echo "check passed"

say "If someone removes the container's address behind our back, CHECK notices"
run ip -n "$ctr_a" addr flush dev eth0
if in_host "$bin/cni-run" check cni-rs-bridge "/run/netns/$ctr_a"; then echo "check should have failed" >&2; exit 1; fi

say "DEL undoes ADD, in reverse order; it is idempotent"
run in_host "$bin/cni-run" del cni-rs-bridge "/run/netns/$ctr_a"
printf '(the mapped port no longer answers:)\n'
run ip netns exec "$host" curl -s --max-time 2 "http://127.0.0.1:8080/" || echo "curl: no answer, as expected"
run in_host "$bin/cni-run" del cni-rs-bridge "/run/netns/$ctr_b"
run in_host "$bin/cni-run" del cni-rs-bridge "/run/netns/$ctr_b"

say "Nothing is left: no veths, no masquerade chains, no address reservations (the bridge stays, as with the reference)"
run ip -n "$host" -br link show type veth
run ip netns exec "$host" nft list table inet cni-rs
printf '$ ls %s\n' "$work/ipam/cni-rs-bridge"
ls "$work/ipam/cni-rs-bridge"

say "Every plugin answers VERSION with the spec versions it speaks"
for p in loopback bridge host-local portmap ptp; do
  printf '%-11s ' "$p"; CNI_COMMAND=VERSION "$bin/$p" </dev/null | jq -c .supportedVersions
done

say "Bad input gets a spec-shaped error on stdout and a non-zero exit, never a crash"
printf '$ echo "{not json" | CNI_COMMAND=ADD ... bridge\n'
echo '{not json' | CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS="/run/netns/$ctr_a" CNI_IFNAME=eth0 in_host "$bin/bridge" || echo "(exit $?)"

say "Clean-up: the web server stops, the namespaces go away"
kill "$web_pid"; wait "$web_pid" 2>/dev/null || true; web_pid=
for ns in "$ctr_a" "$ctr_b" "$host"; do ip netns del "$ns"; done
if ip netns list | grep -q "cnirs-demo-.*-$tag"; then echo "namespaces left behind" >&2; exit 1; fi
echo "nothing left behind"
