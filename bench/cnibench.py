"""Shared pieces of the benchmarks: the C launcher that times a plugin run
and reads its own peak RSS, and summary statistics."""
import os
import statistics
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
OURS_DIR = os.path.join(HERE, "..", "target", "release")
REF_DIR = "/usr/lib/cni"


def build_launcher():
    """Compile spawn_rss.c; see its header for why a C launcher."""
    out = f"/tmp/cnirs-spawn-rss-{os.getpid()}"
    subprocess.run(["cc", "-O2", "-o", out, os.path.join(HERE, "spawn_rss.c")], check=True)
    return out


def run(launcher, binary, env, stdin, netns=None):
    """Run one plugin invocation, inside `netns` if given; return (wall ms,
    peak RSS KiB, stdout)."""
    r, w = os.pipe()
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
    where = ["--netns", netns] if netns else []
    p = subprocess.run([launcher, str(w), *where, binary], input=stdin, env=full_env, capture_output=True, pass_fds=(w,))
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
