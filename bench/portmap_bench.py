#!/usr/bin/env python3
"""portmap ADD and DEL cost against the number of mapped containers, ours
against the Go reference (Debian's 1.1.1, which writes iptables rules), in
one run.

Method: each implementation gets its own throwaway host namespace with N
containers already mapped (one TCP host port each, 10000+i). Portmap only
acts in the host namespace, so containers are given as previous results
(address 10.130.x.y on a sandboxed eth0), as the bridge would have passed
them. Then ROUNDS rounds: ADD a new container's mapping and DEL it, both
implementations, alternating. Timed fork to exit by spawn_rss.c inside the
host namespace. The issue's target: ours at 1,000 within 1.2x of ours at 0.

Usage: bench/portmap_bench.py [ROUNDS] [N ...]   (as root)
"""
import json
import os
import subprocess
import sys

from cnibench import OURS_DIR, REF_DIR, build_launcher, report, run

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
SIZES = [int(x) for x in sys.argv[2:]] or [0, 1000]
TAG = os.getpid()
IMPLS = [("cni-rs", OURS_DIR), ("reference", REF_DIR)]


def conf(i, host_port):
    addr = f"10.130.{i // 250}.{i % 250 + 2}/16"
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:82:00:02", "sandbox": f"/run/netns/c{i}"}],
            "ips": [{"address": addr, "gateway": "10.130.0.1", "interface": 0}]}
    return json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "portmap",
                       "capabilities": {"portMappings": True},
                       "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
                       "prevResult": prev}).encode()


def env(bindir, cmd, i):
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": f"ctr-{i}", "CNI_NETNS": f"/run/netns/none-{i}",
            "CNI_IFNAME": "eth0", "CNI_PATH": bindir}


def main():
    launcher = build_launcher()
    made = []
    rows = []
    try:
        for n in SIZES:
            hosts = {}
            for name, bindir in IMPLS:
                h = f"cnirs-pb-{TAG}-{name}-{n}"
                subprocess.run(["ip", "netns", "add", h], check=True)
                subprocess.run(["ip", "-n", h, "link", "set", "lo", "up"], check=True)
                made.append(h)
                hosts[name] = (f"/run/netns/{h}", bindir)
                for i in range(n):
                    run(launcher, os.path.join(bindir, "portmap"), env(bindir, "ADD", i), conf(i, 10000 + i),
                        netns=hosts[name][0])
            for r in range(ROUNDS):
                order = list(hosts.items()) if r % 2 == 0 else list(hosts.items())[::-1]
                for name, (host, bindir) in order:
                    i = 50000 + r
                    for cmd in ("ADD", "DEL"):
                        ms, rss, _ = run(launcher, os.path.join(bindir, "portmap"), env(bindir, cmd, i),
                                         conf(i, 30000 + r), netns=host)
                        rows.append((n, r, name, cmd, round(ms, 4), rss))
    finally:
        for h in made:
            subprocess.run(["ip", "netns", "del", h], check=False)
        os.unlink(launcher)
    report("portmap", f"portmap: {ROUNDS} rounds of ADD+DEL per size, alternating", rows, SIZES)


if __name__ == "__main__":
    main()
