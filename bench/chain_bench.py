#!/usr/bin/env python3
"""The chains a runtime runs, ours against the Go reference and against the
floor, at growing numbers of existing containers; parallel churn; a report
with plots. `make bench` runs it; see bench/README.md for the method.

Chains (what one pod's ADD and DEL run):
  bridge        bridge + host-local (isGateway)
  masq          the same with ipMasq
  masq+portmap  the same, then portmap with one port
Implementations:
  cni-rs     our release binaries (host-local in-process: a stamped build)
  reference  Debian's containernetworking-plugins 1.1.1 (/usr/lib/cni)
  floor      cni-floor: the same chain's kernel work in one process of ours

Each implementation gets its own throwaway host namespace, bridge and store,
grown to each size with full chains (masq+portmap). Then ROUNDS rounds per
size and chain: a fresh container namespace, ADD, DEL, implementations
alternating. Every plugin process is launched by spawn_rss.c, which enters
the host namespace itself (no `ip netns exec` per call) and reports the
process's wall time and peak RSS; a chain's time is the sum of its
processes. Processes started per ADD come from /proc/stat's counter.

Usage: bench/chain_bench.py [ROUNDS] [SIZES] [CHURN_ROUNDS]
       (as root; defaults 20, 0,100,500,1000, 25)
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from cnibench import OURS_DIR, REF_DIR, build_launcher, run

HERE = os.path.dirname(os.path.abspath(__file__))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SIZES = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0, 100, 500, 1000]
CHURN = int(sys.argv[3]) if len(sys.argv) > 3 else 25
TAG = os.getpid()
CHAINS = ["bridge", "masq", "masq+portmap"]
IMPLS = ["cni-rs", "reference", "floor"]
SUBNET = "10.130.0.0/16"


def bindir(impl):
    return REF_DIR if impl == "reference" else OURS_DIR


def procs_started():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


class World:
    """One implementation's host namespace, bridge and store."""

    def __init__(self, impl, root):
        self.impl = impl
        self.host_name = f"cnirs-cb-{TAG}-{impl}"
        subprocess.run(["ip", "netns", "add", self.host_name], check=True)
        self.host = f"/run/netns/{self.host_name}"
        subprocess.run(["ip", "netns", "exec", self.host_name, "ip", "link", "set", "lo", "up"], check=True)
        self.store = os.path.join(root, impl)
        self.files = os.path.join(root, f"{impl}-conf")
        os.makedirs(self.files)
        self.containers = []  # (netns name, id, port, result)

    def bridge_conf(self, chain):
        c = {"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cb0", "isGateway": True,
             "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": self.store}}
        if chain != "bridge":
            c["ipMasq"] = True
        return c

    @staticmethod
    def portmap_conf(port, prev=None):
        c = {"cniVersion": "1.0.0", "name": "bench", "type": "portmap",
             "capabilities": {"portMappings": True},
             "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}}
        if prev is not None:
            c["prevResult"] = prev
        return c

    def env(self, cmd, cid, netns):
        return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                "CNI_PATH": bindir(self.impl)}

    def chain(self, launcher, cmd, chain, cid, netns, port, result=None, impl=None):
        """One chain ADD or DEL; returns (wall ms, peak RSS KiB, processes, ADD result)."""
        impl = impl or self.impl
        d = bindir(impl)
        env = self.env(cmd, cid, netns)
        br = self.bridge_conf(chain)
        pm = self.portmap_conf(port) if chain == "masq+portmap" else None
        before = procs_started()
        if impl == "floor":
            bpath = os.path.join(self.files, "bridge.json")
            with open(bpath, "w") as f:
                json.dump(br, f)
            args = [bpath]
            if pm is not None:
                ppath = os.path.join(self.files, "portmap.json")
                with open(ppath, "w") as f:
                    json.dump({**pm, **({"prevResult": result} if result else {})}, f)
                args.append(ppath)
            ms, rss, _ = run(launcher, os.path.join(d, "cni-floor"), env, b"", netns=self.host, args=args)
            return ms, rss, procs_started() - before, None
        total, peak = 0.0, 0
        if cmd == "ADD":
            ms, rss, out = run(launcher, os.path.join(d, "bridge"), env, json.dumps(br).encode(), netns=self.host)
            total, peak, result = total + ms, max(peak, rss), json.loads(out)
            if pm is not None:
                pm["prevResult"] = result
                ms, rss, _ = run(launcher, os.path.join(d, "portmap"), env, json.dumps(pm).encode(), netns=self.host)
                total, peak = total + ms, max(peak, rss)
        else:
            if pm is not None:
                if result:
                    pm["prevResult"] = result
                ms, rss, _ = run(launcher, os.path.join(d, "portmap"), env, json.dumps(pm).encode(), netns=self.host)
                total, peak = total + ms, max(peak, rss)
            if result:
                br["prevResult"] = result
            ms, rss, _ = run(launcher, os.path.join(d, "bridge"), env, json.dumps(br).encode(), netns=self.host)
            total, peak = total + ms, max(peak, rss)
        return total, peak, procs_started() - before, result

    def grow(self, launcher, n):
        """Existing containers up to `n`, each with a full chain (the floor's
        world is grown with our binaries: the same kernel state)."""
        impl = "cni-rs" if self.impl == "floor" else self.impl
        while len(self.containers) < n:
            i = len(self.containers)
            name = f"cnirs-cb-{TAG}-{self.impl[0]}-{i}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            cid, port = f"pre-{i}", 20000 + i
            _, _, _, res = self.chain(launcher, "ADD", "masq+portmap", cid, f"/run/netns/{name}", port, impl=impl)
            self.containers.append(name)

    def remove(self):
        for name in self.containers:
            subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", self.host_name], check=False, stderr=subprocess.DEVNULL)


def churn(launcher, world, workers=4, rounds=CHURN):
    """`workers` threads, each `rounds` full chains (ADD+DEL) on fresh
    namespaces; returns (wall s, per-chain ADD ms, DEL ms)."""
    adds, dels, errors = [], [], []
    lock = threading.Lock()

    def worker(w):
        for r in range(rounds):
            name = f"cnirs-cb-{TAG}-{world.impl[0]}c{w}-{r}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            try:
                cid, port = f"churn-{w}-{r}", 30000 + w * 1000 + r
                a, _, _, res = world.chain(launcher, "ADD", "masq+portmap", cid, f"/run/netns/{name}", port)
                d, _, _, _ = world.chain(launcher, "DEL", "masq+portmap", cid, f"/run/netns/{name}", port, result=res)
                with lock:
                    adds.append(a)
                    dels.append(d)
            except SystemExit as e:
                with lock:
                    errors.append(str(e))
            finally:
                subprocess.run(["ip", "netns", "del", name], check=False)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"churn failed: {errors[:3]}")
    return time.monotonic() - start, adds, dels


def main():
    launcher = build_launcher()
    root = tempfile.mkdtemp(prefix="cnirs-chainbench-", dir="/var/tmp")
    worlds = {}
    fresh = []
    rows, churn_rows = [], []
    try:
        for impl in IMPLS:
            worlds[impl] = World(impl, root)
        for n in SIZES:
            for w in worlds.values():
                t0 = time.monotonic()
                w.grow(launcher, n)
                print(f"{w.impl}: {n} containers ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            # The rounds' namespaces are made before and removed after the
            # measurements: the kernel tears a namespace down asynchronously,
            # and that work must not land inside the next measurement.
            for i in range(ROUNDS):
                for chain in CHAINS:
                    for impl in IMPLS:
                        name = f"cnirs-cb-{TAG}-r{i}-{CHAINS.index(chain)}-{impl[0]}"
                        subprocess.run(["ip", "netns", "add", name], check=True)
                        fresh.append(name)
            for i in range(ROUNDS):
                for chain in CHAINS:
                    order = IMPLS if i % 2 == 0 else IMPLS[::-1]
                    for impl in order:
                        w = worlds[impl]
                        netns = f"/run/netns/cnirs-cb-{TAG}-r{i}-{CHAINS.index(chain)}-{impl[0]}"
                        cid, port = f"round-{i}-{CHAINS.index(chain)}", 40000 + i * 10 + CHAINS.index(chain)
                        a, arss, aprocs, res = w.chain(launcher, "ADD", chain, cid, netns, port)
                        d, drss, dprocs, _ = w.chain(launcher, "DEL", chain, cid, netns, port, result=res)
                        rows.append((n, i, impl, chain, "ADD", round(a, 4), arss, aprocs))
                        rows.append((n, i, impl, chain, "DEL", round(d, 4), drss, dprocs))
            for name in fresh:
                subprocess.run(["ip", "netns", "del", name], check=True)
            fresh.clear()
        for impl in ("cni-rs", "reference"):
            wall, adds, dels = churn(launcher, worlds[impl])
            churn_rows += [(impl, "ADD", round(x, 4)) for x in adds] + [(impl, "DEL", round(x, 4)) for x in dels]
            churn_rows.append((impl, "wall_s", round(wall, 3)))
    finally:
        for name in fresh:
            subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)
        for w in worlds.values():
            w.remove()
        shutil.rmtree(root, ignore_errors=True)
        os.unlink(launcher)
    stamp = time.strftime("%Y-%m-%d")
    out = os.path.join(HERE, "results", f"chains-{stamp}.csv")
    with open(out, "w", newline="") as f:
        c = csv.writer(f)
        c.writerow(["existing", "round", "impl", "chain", "command", "wall_ms", "maxrss_kib", "processes"])
        c.writerows(rows)
    with open(os.path.join(HERE, "results", f"churn-{stamp}.csv"), "w", newline="") as f:
        c = csv.writer(f)
        c.writerow(["impl", "what", "value"])
        c.writerows(churn_rows)
    print(out)


if __name__ == "__main__":
    main()
