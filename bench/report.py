#!/usr/bin/env python3
"""Turn the raw results of `make bench` into bench/results/<date>.md with
PNG plots: latency against existing containers (ours, reference, floor; ADD
and DEL, per chain), ratios ours/reference and ours/floor, growth, peak RSS,
processes per ADD, binary sizes, churn, host-local at 0 and 5,000
reservations.

Usage: bench/report.py [DATE]   (default today; reads results/*-DATE.*)
"""
import csv
import os
import statistics
import sys
import time
from collections import defaultdict

from cnibench import OURS_DIR, REF_DIR

HERE = os.path.dirname(os.path.abspath(__file__))
DATE = sys.argv[1] if len(sys.argv) > 1 else time.strftime("%Y-%m-%d")
RES = os.path.join(HERE, "results")


def p95(xs):
    return statistics.quantiles(xs, n=20)[-1] if len(xs) > 1 else xs[0]


def load_chains():
    data = defaultdict(list)  # (n, impl, chain, cmd) -> [(ms, rss, procs)]
    with open(os.path.join(RES, f"chains-{DATE}.csv")) as f:
        for r in csv.DictReader(f):
            key = (int(r["existing"]), r["impl"], r["chain"], r["command"])
            data[key].append((float(r["wall_ms"]), int(r["maxrss_kib"]), int(r["processes"])))
    return data


def plot(data, sizes, chains, out_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(chains), 2, figsize=(11, 3.6 * len(chains)), squeeze=False)
    for row, chain in enumerate(chains):
        for col, cmd in enumerate(("ADD", "DEL")):
            ax = axes[row][col]
            for impl, style in (("cni-rs", "o-"), ("reference", "s--"), ("floor", "^:")):
                ys = [statistics.median(x[0] for x in data[(n, impl, chain, cmd)]) for n in sizes]
                ax.plot(sizes, ys, style, label=impl)
            ax.set_title(f"{chain}: {cmd}")
            ax.set_xlabel("existing containers")
            ax.set_ylabel("median ms")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)


def main():
    data = load_chains()
    sizes = sorted({k[0] for k in data})
    chains = [c for c in ("bridge", "masq", "masq+portmap") if any(k[2] == c for k in data)]
    med = lambda k: statistics.median(x[0] for x in data[k])
    lines = [f"# Benchmark report {DATE}", "",
             "Produced by `make bench` (bench/chain_bench.py, bench/host_local_bench.py, bench/report.py).",
             f"cni-rs: `{os.path.normpath(OURS_DIR)}`; reference: `{os.path.normpath(REF_DIR)}` "
             "(Debian 12 containernetworking-plugins 1.1.1); floor: `cni-floor`, the same chain's kernel work in one "
             "process of ours. Raw data: "
             f"[chains-{DATE}.csv](chains-{DATE}.csv), [churn-{DATE}.csv](churn-{DATE}.csv).", "",
             f"![latency against existing containers](chains-{DATE}.png)", ""]
    for chain in chains:
        lines += [f"## {chain}", "",
                  "| existing | cmd | cni-rs median | p95 | reference median | p95 | floor median | ours/ref | ours/floor |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n in sizes:
            for cmd in ("ADD", "DEL"):
                o, r, f = (n, "cni-rs", chain, cmd), (n, "reference", chain, cmd), (n, "floor", chain, cmd)
                ox = [x[0] for x in data[o]]
                rx = [x[0] for x in data[r]]
                lines.append(f"| {n} | {cmd} | {med(o):.2f} | {p95(ox):.2f} | {med(r):.2f} | {p95(rx):.2f} | "
                             f"{med(f):.2f} | {med(o) / med(r):.3f} | {med(o) / med(f):.2f} |")
        lo, hi = sizes[0], sizes[-1]
        for cmd in ("ADD", "DEL"):
            g = {impl: med((hi, impl, chain, cmd)) / med((lo, impl, chain, cmd)) for impl in ("cni-rs", "reference", "floor")}
            lines.append("")
            lines.append(f"Growth {lo} → {hi} containers, {cmd}: cni-rs {g['cni-rs']:.2f}x, reference "
                         f"{g['reference']:.2f}x, floor {g['floor']:.2f}x.")
        rss = {impl: max(x[1] for n in sizes for cmd in ("ADD", "DEL") for x in data[(n, impl, chain, cmd)])
               for impl in ("cni-rs", "reference", "floor")}
        procs = {impl: statistics.median(x[2] for n in sizes for x in data[(n, impl, chain, "ADD")])
                 for impl in ("cni-rs", "reference", "floor")}
        lines += ["", f"Peak RSS of one process (KiB): cni-rs {rss['cni-rs']}, reference {rss['reference']}, "
                      f"floor {rss['floor']}. Processes started per ADD (median, /proc/stat): cni-rs {procs['cni-rs']:.0f}, "
                      f"reference {procs['reference']:.0f}, floor {procs['floor']:.0f}.", ""]
    churn_path = os.path.join(RES, f"churn-{DATE}.csv")
    if os.path.exists(churn_path):
        c = defaultdict(list)
        with open(churn_path) as f:
            for r in csv.DictReader(f):
                c[(r["impl"], r["what"])].append(float(r["value"]))
        lines += ["## Parallel churn (4 workers, masq+portmap chains)", "",
                  "| | chains | wall s | chains/s | ADD median ms | DEL median ms |", "|---|---|---|---|---|---|"]
        for impl in ("cni-rs", "reference"):
            n = len(c[(impl, "ADD")])
            wall = c[(impl, "wall_s")][0]
            lines.append(f"| {impl} | {n} | {wall:.1f} | {n / wall:.1f} | {statistics.median(c[(impl, 'ADD')]):.2f} | "
                         f"{statistics.median(c[(impl, 'DEL')]):.2f} |")
        lines.append("")
    hl = os.path.join(RES, f"host-local-{DATE}.txt")
    if os.path.exists(hl):
        lines += ["## host-local at 0 and 5,000 reservations", "", "```", open(hl).read().rstrip(), "```", ""]
    lines += ["## Binary sizes (bytes)", "", "| | cni-rs | reference |", "|---|---|---|"]
    for b in ("bridge", "host-local", "portmap", "ptp", "loopback"):
        size = lambda d: os.path.getsize(os.path.join(d, b)) if os.path.exists(os.path.join(d, b)) else 0
        lines.append(f"| {b} | {size(OURS_DIR)} | {size(REF_DIR)} |")
    lines.append("")
    # A hand-written analysis of the run (where the time goes), if any.
    analysis = os.path.join(RES, f"{DATE}-analysis.md")
    if os.path.exists(analysis):
        lines += [open(analysis).read().rstrip(), ""]
    plot(data, sizes, chains, os.path.join(RES, f"chains-{DATE}.png"))
    out = os.path.join(RES, f"{DATE}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
