#!/usr/bin/env python3
"""host-local ADD and DEL cost against the number of existing reservations,
ours against the Go reference, in one run.

Method: for each store size N (default 0 and 5000), each implementation gets
its own data directory pre-filled with N reservations in the reference's
format (files `<ip>` holding `<id>\\r\\n<ifname>`, and last_reserved_ip.0 at
the last one), as a node that has run for a while would have. Then ROUNDS
rounds: ADD a new container and DEL it again, with both implementations,
alternating which goes first. Each invocation is timed fork to exit by the C
launcher (spawn_rss.c). The store lives on the disk under /var/tmp, like
/var/lib/cni. Reported: medians, p90s, and for each implementation the ratio
of its cost at N to its cost on an empty store (the issue's target: ours
within 1.5x).

Usage: bench/host_local_bench.py [ROUNDS] [N ...]   (as root)
"""
import ipaddress
import json
import os
import shutil
import sys
import tempfile

from cnibench import OURS_DIR, REF_DIR, build_launcher, report, run

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
SIZES = [int(x) for x in sys.argv[2:]] or [0, 5000]
NET = "bench"
SUBNET = ipaddress.ip_network("10.128.0.0/16")


def prefill(data_dir, n):
    d = os.path.join(data_dir, NET)
    os.makedirs(d, exist_ok=True)
    first = int(SUBNET.network_address) + 2
    for i in range(n):
        with open(os.path.join(d, str(ipaddress.ip_address(first + i))), "w") as f:
            f.write(f"prefill-{i}\r\neth0")
    if n:
        with open(os.path.join(d, "last_reserved_ip.0"), "w") as f:
            f.write(str(ipaddress.ip_address(first + n - 1)))


def conf(data_dir):
    return json.dumps({
        "cniVersion": "1.0.0", "name": NET, "type": "bridge",
        "ipam": {"type": "host-local", "subnet": str(SUBNET), "dataDir": data_dir},
    }).encode()


def main():
    launcher = build_launcher()
    impls = [("cni-rs", os.path.join(OURS_DIR, "host-local")), ("reference", os.path.join(REF_DIR, "host-local"))]
    for _, b in impls:
        if not os.path.isfile(b):
            sys.exit(f"missing {b}")
    rows = []
    root = tempfile.mkdtemp(prefix="cnirs-hlbench-", dir="/var/tmp")
    try:
        for n in SIZES:
            dirs = {}
            for name, _ in impls:
                dirs[name] = os.path.join(root, f"{name}-{n}")
                prefill(dirs[name], n)
            for i in range(ROUNDS):
                order = impls if i % 2 == 0 else impls[::-1]
                for name, binary in order:
                    env = {"CNI_CONTAINERID": f"bench-{i}", "CNI_NETNS": "/run/netns/none",
                           "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(binary)}
                    for cmd in ("ADD", "DEL"):
                        ms, rss, _ = run(launcher, binary, {**env, "CNI_COMMAND": cmd}, conf(dirs[name]))
                        rows.append((n, i, name, cmd, round(ms, 4), rss))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.unlink(launcher)

    report("host-local", f"host-local: {ROUNDS} rounds of ADD+DEL per store size, alternating", rows, SIZES)

if __name__ == "__main__":
    main()
