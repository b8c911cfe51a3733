#!/usr/bin/env python3
"""Time one plugin's ADD and DEL, ours against the Go reference, in one run.

Method: one throwaway network namespace; for each of N rounds, run ADD then
DEL with our binary and with the reference binary, alternating which goes
first, so both see the same machine noise. Each invocation is timed from
fork to exit (wall clock) by a small C launcher (spawn_rss.c), which reads
the child's peak RSS from wait4's rusage; the launcher's own floor is
measured on /bin/true and printed. Reported: medians, 90th percentiles and ratios. Raw
numbers go to a CSV beside the summary.

Usage: bench/plugin_bench.py PLUGIN [ROUNDS]   (as root)
"""
import csv
import json
import os
import statistics
import subprocess
import sys
import time

from cnibench import OURS_DIR, REF_DIR, build_launcher, run

PLUGIN = sys.argv[1] if len(sys.argv) > 1 else "loopback"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
HERE = os.path.dirname(os.path.abspath(__file__))
OURS = os.path.join(OURS_DIR, PLUGIN)
REF = os.path.join(REF_DIR, PLUGIN)
CONF = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": PLUGIN}).encode()


def run_one(launcher, binary, command, netns):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "bench-1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(binary)}
    ms, rss, _ = run(launcher, binary, env, CONF)
    return ms, rss


def main():
    for b in (OURS, REF):
        if not os.path.isfile(b):
            sys.exit(f"missing {b} (make release; apt-get install containernetworking-plugins)")
    launcher = build_launcher()
    ns = f"cnirs-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows = []
    try:
        netns = f"/run/netns/{ns}"
        for i in range(ROUNDS):
            order = [("cni-rs", OURS), ("reference", REF)]
            if i % 2:
                order.reverse()
            for name, binary in order:
                for command in ("ADD", "DEL"):
                    ms, rss = run_one(launcher, binary, command, netns)
                    rows.append((i, name, command, round(ms, 4), rss))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    floor_ms, floor_rss = run_one(launcher, "/bin/true", "VERSION", "")
    os.unlink(launcher)

    stamp = time.strftime("%Y-%m-%d")
    raw = os.path.join(HERE, "results", f"{PLUGIN}-{stamp}.csv")
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "impl", "command", "wall_ms", "maxrss_kib"])
        w.writerows(rows)

    def pick(impl, cmd, col):
        return [r[col] for r in rows if r[1] == impl and r[2] == cmd]

    def p90(xs):
        return statistics.quantiles(xs, n=10)[-1]

    lines = [f"{PLUGIN}: {ROUNDS} rounds, ADD+DEL each, alternating; raw: {os.path.relpath(raw, HERE)}",
             f"{'':14}{'cni-rs':>20}{'reference':>20}{'ratio':>8}"]
    for cmd in ("ADD", "DEL"):
        a, b = pick("cni-rs", cmd, 3), pick("reference", cmd, 3)
        lines.append(f"{cmd + ' median ms':14}{statistics.median(a):20.3f}{statistics.median(b):20.3f}"
                     f"{statistics.median(a) / statistics.median(b):8.2f}")
        lines.append(f"{cmd + ' p90 ms':14}{p90(a):20.3f}{p90(b):20.3f}{p90(a) / p90(b):8.2f}")
    ra, rb = max(pick("cni-rs", "ADD", 4)), max(pick("reference", "ADD", 4))
    lines.append(f"{'peak RSS KiB':14}{ra:20d}{rb:20d}{ra / rb:8.2f}")
    lines.append(f"{'(launcher floor: /bin/true peaks at ' + str(floor_rss) + ' KiB, ' + format(floor_ms, '.3f') + ' ms)'}")
    sa, sb = os.path.getsize(OURS), os.path.getsize(REF)
    lines.append(f"{'binary bytes':14}{sa:20d}{sb:20d}{sa / sb:8.2f}")
    summary = "\n".join(lines)
    print(summary)
    with open(os.path.join(HERE, "results", f"{PLUGIN}-{stamp}.txt"), "w") as f:
        f.write(summary + "\n")


if __name__ == "__main__":
    main()
