#!/usr/bin/env python3
"""Two builds of ours side by side: bridge ADD (ipMasq, isGateway, host-local)
and portmap ADD (one port), builds alternating round by round in one
throwaway host namespace, each round in a fresh container namespace. For
measuring a change: build the old commit into another target directory,
stamp it (scripts/stamp.sh), and pass both release directories.

With --after-reference, each measured ADD follows a reference bridge chain
(ADD and DEL) in the same host namespace, as in `make bench`, where half of
the rounds run right after the reference.

Usage: bench/ab_bench.py DIR_A DIR_B [ROUNDS] [--after-reference]
       (as root; ROUNDS defaults to 30)
Prints, per build: median, minimum and mean ms of each ADD, and the peak RSS
of bridge. Nothing is written to disk outside a temporary directory.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from cnibench import REF_DIR, build_launcher, run

TAG = os.getpid()


def ns(name):
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def bridge_conf(name, bridge, subnet, store):
    return json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge,
                       "isGateway": True, "ipMasq": True,
                       "ipam": {"type": "host-local", "subnet": subnet, "dataDir": store}}).encode()


def portmap_conf(port, prev):
    return json.dumps({"cniVersion": "1.0.0", "name": "abnet", "type": "portmap",
                       "capabilities": {"portMappings": True},
                       "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
                       "prevResult": prev}).encode()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    after_ref = "--after-reference" in sys.argv
    if len(args) < 2:
        raise SystemExit(__doc__)
    dirs = {"A": os.path.abspath(args[0]), "B": os.path.abspath(args[1])}
    rounds = int(args[2]) if len(args) > 2 else 30
    launcher = build_launcher()
    root = tempfile.mkdtemp(prefix="cnirs-ab-", dir="/var/tmp")
    made = []
    try:
        host = ns(f"cnirs-ab-{TAG}-h")
        made.append(host)
        hpath = f"/run/netns/{host}"
        ours = bridge_conf("abnet", "cnirsab0", "10.131.0.0/16", os.path.join(root, "ours"))
        ref = bridge_conf("abref", "cnirsab1", "10.132.0.0/16", os.path.join(root, "ref"))
        res = {k: {"bridge": [], "portmap": [], "rss": []} for k in dirs}
        for i in range(rounds):
            for name, d in dirs.items():
                c = ns(f"cnirs-ab-{TAG}-{i}{name}")
                made.append(c)
                env = {"CNI_CONTAINERID": f"ab-{i}-{name}", "CNI_NETNS": f"/run/netns/{c}",
                       "CNI_IFNAME": "eth0", "CNI_PATH": d}
                if after_ref:
                    r = ns(f"cnirs-ab-{TAG}-{i}{name}r")
                    made.append(r)
                    renv = {**env, "CNI_CONTAINERID": f"ref-{i}-{name}", "CNI_NETNS": f"/run/netns/{r}",
                            "CNI_PATH": REF_DIR}
                    run(launcher, os.path.join(REF_DIR, "bridge"), {**renv, "CNI_COMMAND": "ADD"}, ref, netns=hpath)
                    run(launcher, os.path.join(REF_DIR, "bridge"), {**renv, "CNI_COMMAND": "DEL"}, ref, netns=hpath)
                ms, rss, out = run(launcher, os.path.join(d, "bridge"), {**env, "CNI_COMMAND": "ADD"}, ours, netns=hpath)
                res[name]["bridge"].append(ms)
                res[name]["rss"].append(rss)
                pm = portmap_conf(20000 + i, json.loads(out))
                ms, _, _ = run(launcher, os.path.join(d, "portmap"), {**env, "CNI_COMMAND": "ADD"}, pm, netns=hpath)
                res[name]["portmap"].append(ms)
                run(launcher, os.path.join(d, "portmap"), {**env, "CNI_COMMAND": "DEL"}, pm, netns=hpath)
                run(launcher, os.path.join(d, "bridge"), {**env, "CNI_COMMAND": "DEL"}, ours, netns=hpath)
        print(f"{rounds} rounds{', each after a reference chain' if after_ref else ''}")
        for name, d in dirs.items():
            print(f"{name} {d}: bridge peak RSS {max(res[name]['rss'])} KiB")
            for p in ("bridge", "portmap"):
                xs = res[name][p]
                print(f"  {p} ADD ms: median {statistics.median(xs):.2f}  min {min(xs):.2f}  "
                      f"mean {statistics.mean(xs):.2f}")
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
        os.unlink(launcher)


if __name__ == "__main__":
    main()
