#!/usr/bin/env bash
# Fail if a test left anything behind: namespaces it named, or any bridge,
# veth or nftables table in the root network namespace.
set -euo pipefail
left=$(ip netns list 2>/dev/null | awk '/^cnirs-/ {print $1}')
br=$(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}')
veth=$(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}')
tables=$( (command -v nft >/dev/null && nft list tables 2>/dev/null) || true)
if [[ -n "$left$br$veth$tables" ]]; then
  echo "leakcheck: state left behind:" >&2
  [[ -n "$left" ]] && echo "  namespaces: $left" >&2
  [[ -n "$br" ]] && echo "  root-namespace bridges: $br" >&2
  [[ -n "$veth" ]] && echo "  root-namespace veths: $veth" >&2
  [[ -n "$tables" ]] && echo "  root-namespace nftables: $tables" >&2
  exit 1
fi
echo "leakcheck: nothing left behind"
