"""Shared pieces of the benchmarks: the C launcher that times a plugin run
and reads its own peak RSS, and the report of results by store/node size."""
import csv
import os
import statistics
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _release_dir():
    """Where `make release` puts our binaries: target/<static triple>/release."""
    script = os.path.join(HERE, "..", "scripts", "static-target.sh")
    triple = subprocess.run([script], capture_output=True, text=True, check=True).stdout.split()[0]
    return os.path.join(HERE, "..", "target", triple, "release")


# CNIRS_OURS / CNIRS_REF: other directories to compare (e.g. an older build
# of ours as the "reference", to measure a change).
OURS_DIR = os.environ.get("CNIRS_OURS") or _release_dir()
REF_DIR = os.environ.get("CNIRS_REF") or "/usr/lib/cni"


def build_launcher():
    """Compile spawn_rss.c; see its header for why a C launcher."""
    out = f"/tmp/cnirs-spawn-rss-{os.getpid()}"
    subprocess.run(["cc", "-O2", "-o", out, os.path.join(HERE, "spawn_rss.c")], check=True)
    return out


def run(launcher, binary, env, stdin, netns=None, args=()):
    """Run one plugin invocation (with `args`), inside `netns` if given;
    return (wall ms, peak RSS KiB, stdout)."""
    r, w = os.pipe()
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
    where = ["--netns", netns] if netns else []
    p = subprocess.run([launcher, str(w), *where, binary, *args], input=stdin, env=full_env, capture_output=True, pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        ns, rss = f.read().split()
    if p.returncode != 0:
        raise SystemExit(f"{binary} {env.get('CNI_COMMAND')} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return int(ns) / 1e6, int(rss), p.stdout


def median(xs):
    return statistics.median(xs)


def p90(xs):
    return statistics.quantiles(xs, n=10)[-1]


def report(name, title, rows, sizes):
    """Write the raw rows (existing, round, impl, command, wall_ms, maxrss_kib)
    to results/<name>-<date>.csv, and print and save a summary: medians and
    p90s per size with ours/reference ratios, growth from the smallest to the
    largest size, peak RSS."""
    stamp = time.strftime("%Y-%m-%d")
    raw = os.path.join(HERE, "results", f"{name}-{stamp}.csv")
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["existing", "round", "impl", "command", "wall_ms", "maxrss_kib"])
        w.writerows(rows)

    def pick(n, impl, cmd, col=4):
        return [r[col] for r in rows if r[0] == n and r[2] == impl and r[3] == cmd]

    out = [f"{title}; raw: {os.path.relpath(raw, HERE)}",
           f"cni-rs: {os.path.normpath(OURS_DIR)}; reference: {os.path.normpath(REF_DIR)}",
           f"{'':22}{'cni-rs':>12}{'reference':>12}{'ours/ref':>10}"]
    for n in sizes:
        for cmd in ("ADD", "DEL"):
            a, b = pick(n, "cni-rs", cmd), pick(n, "reference", cmd)
            out.append(f"{cmd + ' median ms @' + str(n):22}{median(a):12.3f}{median(b):12.3f}{median(a) / median(b):10.2f}")
            out.append(f"{cmd + ' p90 ms @' + str(n):22}{p90(a):12.3f}{p90(b):12.3f}{p90(a) / p90(b):10.2f}")
    lo, hi = sizes[0], sizes[-1]
    for cmd in ("ADD", "DEL"):
        for impl in ("cni-rs", "reference"):
            grow = median(pick(hi, impl, cmd)) / median(pick(lo, impl, cmd))
            out.append(f"{impl} {cmd} median @{hi} / @{lo}: {grow:.2f}x")
    out.append(f"peak RSS KiB @{hi}: cni-rs {max(pick(hi, 'cni-rs', 'ADD', 5))}, "
               f"reference {max(pick(hi, 'reference', 'ADD', 5))}")
    summary = "\n".join(out)
    print(summary)
    with open(os.path.join(HERE, "results", f"{name}-{stamp}.txt"), "w") as f:
        f.write(summary + "\n")
