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
import csv
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time

from cnibench import HERE, OURS_DIR, REF_DIR, build_launcher, median, p90, run

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

    stamp = time.strftime("%Y-%m-%d")
    raw = os.path.join(HERE, "results", f"host-local-{stamp}.csv")
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["existing", "round", "impl", "command", "wall_ms", "maxrss_kib"])
        w.writerows(rows)

    def pick(n, impl, cmd, col=4):
        return [r[col] for r in rows if r[0] == n and r[2] == impl and r[3] == cmd]

    out = [f"host-local: {ROUNDS} rounds of ADD+DEL per store size, alternating; raw: {os.path.relpath(raw, HERE)}",
           f"{'':22}{'cni-rs':>12}{'reference':>12}{'ours/ref':>10}"]
    for n in SIZES:
        for cmd in ("ADD", "DEL"):
            a, b = pick(n, "cni-rs", cmd), pick(n, "reference", cmd)
            out.append(f"{cmd + ' median ms @' + str(n):22}{median(a):12.3f}{median(b):12.3f}{median(a) / median(b):10.2f}")
            out.append(f"{cmd + ' p90 ms @' + str(n):22}{p90(a):12.3f}{p90(b):12.3f}{p90(a) / p90(b):10.2f}")
    lo, hi = SIZES[0], SIZES[-1]
    for cmd in ("ADD", "DEL"):
        for impl in ("cni-rs", "reference"):
            grow = median(pick(hi, impl, cmd)) / median(pick(lo, impl, cmd))
            out.append(f"{impl} {cmd} median @{hi} / @{lo}: {grow:.2f}x")
    out.append(f"peak RSS KiB @{hi}: cni-rs {max(pick(hi, 'cni-rs', 'ADD', 5))}, reference {max(pick(hi, 'reference', 'ADD', 5))}")
    summary = "\n".join(out)
    print(summary)
    with open(os.path.join(HERE, "results", f"host-local-{stamp}.txt"), "w") as f:
        f.write(summary + "\n")


if __name__ == "__main__":
    main()
