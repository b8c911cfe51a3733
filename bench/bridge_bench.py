#!/usr/bin/env python3
"""bridge (+ host-local) ADD and DEL latency at 0 and N existing containers,
ours against the Go reference, in one run.

Method: each implementation gets its own throwaway "host" namespace, bridge
and address store, and N containers already attached to it (each in its own
namespace). Then ROUNDS rounds: a fresh container namespace, ADD, DEL, with
both implementations, alternating which goes first. Only the plugin runs are
timed (fork to exit, by spawn_rss.c, which enters the host namespace itself).
Config: isGateway, host-local on a /16; ipMasq off, because the reference
masquerades by running iptables, which is not what we compare here.

Usage: bench/bridge_bench.py [ROUNDS] [N ...]   (as root)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from cnibench import OURS_DIR, REF_DIR, build_launcher, report, run

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
SIZES = [int(x) for x in sys.argv[2:]] or [0, 200]
TAG = os.getpid()
IMPLS = [("cni-rs", OURS_DIR), ("reference", REF_DIR)]


def ns(name):
    subprocess.run(["ip", "netns", "add", name], check=True)
    return f"/run/netns/{name}"


# BENCH_MASQ=1: also ipMasq and macspoofchk (nftables rules on ADD and DEL).
# The reference masquerades by running iptables, so this is for comparing
# builds of ours (CNIRS_REF=<an older build>), not ours against the reference.
MASQ = os.environ.get("BENCH_MASQ") == "1"


def conf(impl, store):
    c = {
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": f"cnb{impl[0]}",
        "isGateway": True,
        "ipam": {"type": "host-local", "subnet": "10.129.0.0/16", "dataDir": store},
    }
    if MASQ:
        c.update({"ipMasq": True, "macspoofchk": True})
    return json.dumps(c).encode()


def main():
    launcher = build_launcher()
    made = []
    root = tempfile.mkdtemp(prefix="cnirs-brbench-", dir="/var/tmp")
    rows = []
    try:
        for n in SIZES:
            worlds = {}
            for name, bindir in IMPLS:
                host = f"cnirs-bb-{TAG}-{name}-{n}"
                made.append(host)
                worlds[name] = (ns(host), os.path.join(root, f"{name}-{n}"), bindir)
            for name, (host, store, bindir) in worlds.items():
                for i in range(n):
                    c = f"cnirs-bb-{TAG}-{name[0]}{n}-{i}"
                    made.append(c)
                    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"pre-{i}", "CNI_NETNS": ns(c),
                           "CNI_IFNAME": "eth0", "CNI_PATH": bindir}
                    run(launcher, os.path.join(bindir, "bridge"), env, conf(name, store), netns=host)
            for i in range(ROUNDS):
                order = list(worlds.items()) if i % 2 == 0 else list(worlds.items())[::-1]
                for name, (host, store, bindir) in order:
                    c = f"cnirs-bb-{TAG}-r-{name[0]}"
                    path = ns(c)
                    env = {"CNI_CONTAINERID": f"round-{i}", "CNI_NETNS": path, "CNI_IFNAME": "eth0", "CNI_PATH": bindir}
                    for cmd in ("ADD", "DEL"):
                        ms, rss, _ = run(launcher, os.path.join(bindir, "bridge"), {**env, "CNI_COMMAND": cmd},
                                         conf(name, store), netns=host)
                        rows.append((n, i, name, cmd, round(ms, 4), rss))
                    subprocess.run(["ip", "netns", "del", c], check=True)
            for name in worlds:
                for nsname in [m for m in made if m.startswith(f"cnirs-bb-{TAG}-{name[0]}{n}-")]:
                    subprocess.run(["ip", "netns", "del", nsname], check=False)
                    made.remove(nsname)
    finally:
        for m in made:
            subprocess.run(["ip", "netns", "del", m], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
        os.unlink(launcher)

    report("bridge-masq" if MASQ else "bridge", f"bridge+host-local{' (ipMasq, macspoofchk)' if MASQ else ''}: {ROUNDS} rounds of ADD+DEL per size, alternating", rows, SIZES)

if __name__ == "__main__":
    main()
