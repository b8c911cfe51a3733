#!/usr/bin/env python3
"""What a podman user sees: `podman run -d` of a web server, time until its
page is served, `podman rm -f`, with our plugins and with the Go reference,
in one run, alternating.

Method. Two sandboxes, one per implementation, built the same way as the
runtime tests (tests/src/runtime.rs): a throwaway host network namespace and
a pinned private mount namespace in which /run is a tmpfs and /etc, /var/lib,
/opt are overlays whose upper layers live in the sandbox's temp dir. Each
sandbox has both plugin directories, /opt/cni/ours (our release build) and
/opt/cni/ref (a copy of /usr/lib/cni/{bridge,host-local,portmap,loopback}),
the same network file (conf/87-podman-bridge.conflist: bridge with ipMasq
and hairpin, host-local, portmap) in /etc/cni/net.d, its own podman storage
with the same busybox image, and a containers.conf that differs from the
other sandbox's only in cni_plugin_dirs (and its own temp paths). Separate
sandboxes mean the two implementations never share live network state (a
bridge, a store, firewall rules), so both can hold N existing containers
at the same time and every case is measured alternating.

Per round, for each case, for each implementation (which goes first
alternates between rounds):
  run    `podman run -d --cgroup-parent /TAG [-p 8080:80] IMAGE httpd ...`
         until it returns;
  page   from then until the page is fetched from inside the host
         namespace (10.88.0.1:8080 with -p, the container's address:80
         without), retrying every 5 ms; a prober process that lives in the
         host namespace does the fetching, so no process start is counted;
  ready  run + page: from the command to the first page;
  rm     `podman rm -f -t 0 NAME` until it returns.
Cases: with -p (bridge + host-local + portmap) and without (bridge +
host-local; portmap is still in the chain and called, with no mappings);
at 0 existing also `--network none`: podman's own floor, no CNI ADD/DEL.
"N existing": before those rounds each sandbox gets N `sleep` containers,
each publishing one port (like a node of web services), removed after.
Both sandboxes are filled at the same time, so both measure on a machine
carrying 2N idle containers.

Usage: bench/runtime_bench.py [--rounds 40] [--existing 0 200] [--ours DIR]
(as root; builds with cargo unless --ours is given). Raw numbers:
results/runtime_<date>.csv; summary: results/runtime.txt.
"""
import argparse
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REF_DIR = "/usr/lib/cni"
PLUGINS = ["bridge", "host-local", "portmap", "loopback"]
IMAGE = "localhost/cnirs-busybox:latest"
PAGE = "hello from a cni-rs container\n"
NETFILE = "/etc/cni/net.d/87-podman-bridge.conflist"
STORE = "varlib/cni/networks/podman"  # under the sandbox's overlay upper dir
IMPLS = ("cni-rs", "reference")
PLUGIN_DIR = {"cni-rs": "/opt/cni/ours", "reference": "/opt/cni/ref"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Fetches the page from inside the host namespace: one line "ip port" in,
# "OK tries" or "FAIL tries" out, retrying every 5 ms for up to 10 s.
PROBER = r"""
import socket, sys, time
page = sys.argv[1].encode()
for line in sys.stdin:
    ip, port = line.split()
    deadline = time.monotonic() + 10
    tries, ok = 0, False
    while not ok and time.monotonic() < deadline:
        tries += 1
        try:
            with socket.create_connection((ip, int(port)), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            ok = data.endswith(page)
        except OSError:
            pass
        if not ok:
            time.sleep(0.005)
    print("OK" if ok else "FAIL", tries, flush=True)
"""


def sh(args, check=True, **kw):
    kw.setdefault("capture_output", True)
    p = subprocess.run(args, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{args} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


class Sandbox:
    """One implementation's throwaway host: netns + pinned mount namespace.
    Every step that needs undoing is recorded, so close() undoes exactly
    what was done, also after a failure half-way."""

    def __init__(self, impl, root, tag):
        self.impl = impl
        self.t = os.path.join(root, impl[0])  # short: podman wants a runroot under 50 bytes
        self.tag = f"{tag}-{impl[0]}"          # netns name and cgroup parent
        self.netns = f"/run/netns/{self.tag}"
        self.pin_dir = os.path.join(self.t, "pin")
        self.pin = os.path.join(self.pin_dir, "mnt")
        self.done = set()
        self.prober = None
        os.makedirs(self.t)

    # -- set up ---------------------------------------------------------
    def create(self):
        sh(["ip", "netns", "add", self.tag])
        self.done.add("netns")
        sh(["ip", "-n", self.tag, "link", "set", "lo", "up"])
        os.makedirs(self.pin_dir)
        sh(["mount", "--bind", self.pin_dir, self.pin_dir])
        self.done.add("pin_dir")
        sh(["mount", "--make-private", self.pin_dir])
        open(self.pin, "w").close()
        script = "set -e\nmount -t tmpfs -o mode=755 cnirs-run /run\n"
        for lower, name in (("/etc", "etc"), ("/var/lib", "varlib"), ("/opt", "opt")):
            up, work = (os.path.join(self.t, d, name) for d in ("up", "work"))
            os.makedirs(up)
            os.makedirs(work)
            script += f"mount -t overlay cnirs-{name} -o lowerdir={lower},upperdir={up},workdir={work} {lower}\n"
        self.done.add("pin")  # even a failed unshare may have bound the file
        sh(["unshare", f"--mount={self.pin}", "--propagation", "private", "sh", "-c", script])
        for d in ("storage", "runroot", "tmp", "vartmp"):
            os.makedirs(os.path.join(self.t, d))
        # Identical for both sandboxes but for cni_plugin_dirs (and paths in T).
        with open(os.path.join(self.t, "containers.conf"), "w") as f:
            f.write(f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.t}/events.log"
runtime = "runc"
tmp_dir = "{self.t}/tmp"
lock_type = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{PLUGIN_DIR[self.impl]}"]
network_config_dir = "/etc/cni/net.d"
""")

    def install(self, ours_dir, netfile):
        script = "set -e\nmkdir -p /opt/cni/ours /opt/cni/ref /etc/cni/net.d\nrm -f /etc/cni/net.d/*\n"
        for p in PLUGINS:
            script += f"cp {ours_dir}/{p} /opt/cni/ours/{p}\ncp {REF_DIR}/{p} /opt/cni/ref/{p}\n"
        script += f"cp {netfile} {NETFILE}\n"
        self.sh(["sh", "-c", script])

    def start_prober(self):
        self.prober = subprocess.Popen(
            ["nsenter", f"--net={self.netns}", "--", sys.executable, "-c", PROBER, PAGE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    # -- use ------------------------------------------------------------
    def enter(self, args):
        return ["nsenter", f"--mount={self.pin}", f"--net={self.netns}", "--", *args]

    def sh(self, args, check=True):
        return sh(self.enter(args), check=check, stdin=subprocess.DEVNULL)

    def podman(self, *args, check=True, timeout=120):
        env = {"PATH": PATH, "CONTAINERS_CONF": os.path.join(self.t, "containers.conf"),
               "TMPDIR": os.path.join(self.t, "vartmp")}
        cmd = self.enter(["podman", "--root", os.path.join(self.t, "storage"),
                          "--runroot", os.path.join(self.t, "runroot"), "--storage-driver", "overlay", *args])
        self.done.add("podman")
        return sh(cmd, check=check, env=env, stdin=subprocess.DEVNULL, timeout=timeout)

    def run_args(self, name, ports, cmd):
        return ["run", "-d", "--name", name, "--cgroup-parent", f"/{self.tag}", *ports, IMAGE, *cmd]

    def probe(self, ip, port):
        self.prober.stdin.write(f"{ip} {port}\n")
        self.prober.stdin.flush()
        status, tries = self.prober.stdout.readline().split()
        return status == "OK", int(tries)

    def last_reserved(self):
        """The address host-local handed out last (its store is the
        overlay's upper layer, read from outside: no process started)."""
        with open(os.path.join(self.t, "up", STORE, "last_reserved_ip.0")) as f:
            return f.read().strip()

    def owner(self, ip):
        with open(os.path.join(self.t, "up", STORE, ip)) as f:
            return f.read().split()[0]

    # -- tear down ------------------------------------------------------
    def pin_inode(self):
        try:
            return f"mnt:[{os.stat(self.pin).st_ino}]"
        except OSError:
            return None

    def leftover_processes(self):
        pin = self.pin_inode() if "pin" in self.done else None
        me, pids = os.getpid(), []
        for e in os.listdir("/proc"):
            if not e.isdigit() or int(e) == me:
                continue
            try:
                with open(f"/proc/{e}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
                with open(f"/proc/{e}/cgroup") as f:
                    in_cg = f"/{self.tag}" in f.read()
                in_mnt = pin is not None and os.readlink(f"/proc/{e}/ns/mnt") == pin
            except (OSError, IndexError):
                continue
            if in_cg or in_mnt:
                pids.append(int(e))
        return pids

    def cgroups(self):
        base = "/sys/fs/cgroup"
        return [os.path.join(base, c, self.tag) for c in os.listdir(base)
                if os.path.isdir(os.path.join(base, c, self.tag))]

    def close(self):
        """Undo everything; returns a list of problems (empty when clean)."""
        problems = []
        if "podman" in self.done and "pin" in self.done:
            try:
                self.podman("rm", "-a", "-f", "-t", "0", check=False, timeout=300)
            except Exception as e:  # keep going: kill what is left below
                problems.append(f"podman rm -a: {e}")
        if self.prober is not None:
            self.prober.kill()
            self.prober.wait()
        deadline = time.monotonic() + 10
        while (left := self.leftover_processes()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if left:
            problems.append(f"processes still alive: {left}")
        for top in self.cgroups():
            for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(d)
                except OSError as e:
                    problems.append(f"cgroup {d}: {e}")
        if "pin" in self.done:
            sh(["umount", self.pin], check=False)
        if "pin_dir" in self.done:
            sh(["umount", self.pin_dir], check=False)
        if "netns" in self.done:
            sh(["ip", "netns", "del", self.tag], check=False)
        return problems


def rootfs_tar(root):
    """busybox-static with /www/index.html, as a tarball for podman import."""
    rfs = os.path.join(root, "rootfs")
    for d in ("bin", "etc", "www", "tmp", "root"):
        os.makedirs(os.path.join(rfs, d))
    shutil.copy("/bin/busybox", os.path.join(rfs, "bin/busybox"))
    for a in sh(["/bin/busybox", "--list"]).stdout.split():
        if a != "busybox":
            os.symlink("busybox", os.path.join(rfs, "bin", a))
    with open(os.path.join(rfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rfs, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    with open(os.path.join(rfs, "www/index.html"), "w") as f:
        f.write(PAGE)
    tar = os.path.join(root, "rootfs.tar")
    sh(["tar", "-C", rfs, "-cf", tar, "."])
    return tar


def one_round(sb, name, case):
    """run, page, rm of one web server container; the times in ms. case:
    "port" (-p 8080:80), "noport", or "none" (--network none: podman's
    floor, no CNI ADD/DEL, no page)."""
    opts = {"port": ["-p", "8080:80"], "noport": [], "none": ["--network", "none"]}[case]
    t0 = time.perf_counter()
    cid = sb.podman(*sb.run_args(name, opts, ["httpd", "-f", "-p", "80", "-h", "/www"])).stdout.strip()
    t1 = time.perf_counter()
    res = {"run": (t1 - t0) * 1e3, "tries": 0}
    if case != "none":
        # host-local allocates in order and one container is created at a
        # time: the last reserved address is this container's (checked below,
        # out of the timed window).
        ip, port = ("10.88.0.1", 8080) if case == "port" else (sb.last_reserved(), 80)
        ok, res["tries"] = sb.probe(ip, port)
        t2 = time.perf_counter()
        if not ok:
            raise RuntimeError(f"{sb.impl}: no page from {ip}:{port} after {res['tries']} tries")
        if case == "noport" and sb.owner(ip) != cid:
            raise RuntimeError(f"{sb.impl}: {ip} is not {cid}'s")
        res["page"], res["ready"] = (t2 - t1) * 1e3, (t2 - t0) * 1e3
    t2 = time.perf_counter()
    sb.podman("rm", "-f", "-t", "0", name)
    res["rm"] = (time.perf_counter() - t2) * 1e3
    return res


def check_backend(sb):
    """Prove which plugins served the sandbox: our nftables table, or the
    reference's iptables chains (with a container mapped)."""
    tables = sb.sh(["nft", "list", "tables"]).stdout
    nat = sb.sh(["iptables-nft", "-t", "nat", "-S"], check=False).stdout
    ours, ref = "cni-rs" in tables, "CNI-HOSTPORT-DNAT" in nat
    want = (True, False) if sb.impl == "cni-rs" else (False, True)
    if (ours, ref) != want:
        raise RuntimeError(f"{sb.impl} sandbox: nft tables {tables!r}, iptables nat has CNI-HOSTPORT-DNAT: {ref}")


def fill(sb, n, stop, errors):
    """N idle containers, each publishing one port; stops early when told."""
    try:
        for i in range(n):
            if stop.is_set():
                return
            sb.podman(*sb.run_args(f"idle-{i}", ["-p", f"{20000 + i}:80"], ["sleep", "1000000"]))
    except Exception as e:
        errors.append(f"{sb.impl}: {e}")
        stop.set()


def host_snapshot():
    """What the real host shows in the places a runtime writes to."""
    snap = {}
    for d in ("/var/lib/cni", "/run/cni", "/run/containers", "/run/libpod", "/run/runc",
              "/run/crun", "/etc/cni/net.d", "/opt/cni", "/var/lib/containers"):
        entries = []
        for top, dirs, files in os.walk(d):
            entries += [os.path.join(top, x) for x in dirs + files]
        snap[d] = sorted(entries) if os.path.exists(d) else None
    snap["/run (top level)"] = sorted(os.listdir("/run"))
    # The root network namespace, read only: its links and its ruleset.
    snap["root netns links"] = sorted(l.split(":")[1].strip() for l in sh(["ip", "-o", "link", "show"]).stdout.splitlines())
    snap["root netns nft ruleset"] = sh(["nft", "list", "ruleset"]).stdout
    return snap


def versions(ours_dir, label):
    def first(args):
        p = sh(args, check=False)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"
    pkgs = sh(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "podman", "runc", "conmon",
               "containernetworking-plugins", "iptables"], check=False).stdout.strip().replace("\n", ", ")
    commit = sh(["git", "-C", REPO, "describe", "--always", "--dirty"], check=False).stdout.strip()
    if label:
        commit = label
    elif not ours_dir.startswith(REPO + "/"):
        commit = "an outside build (see --label)"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [f"machine: {os.cpu_count()} cores ({cpu}), kernel {os.uname().release}",
            f"{first(['podman', '--version'])}; {first(['runc', '--version'])}",
            f"packages: {pkgs}",
            f"cni-rs: {ours_dir} at {commit}; reference: {REF_DIR}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--existing", type=int, nargs="+", default=[0, 200])
    ap.add_argument("--noport-at", type=int, nargs="*", default=None,
                    help="sizes that also get the case without -p (default: all)")
    ap.add_argument("--none-at", type=int, nargs="*", default=[0],
                    help="sizes that also get --network none, podman's floor (default: 0)")
    ap.add_argument("--ours", help="directory with our release binaries (default: make release)")
    ap.add_argument("--label", help="what --ours was built from, for the report (e.g. a commit)")
    args = ap.parse_args()
    noport_at = args.noport_at if args.noport_at is not None else args.existing
    if os.geteuid() != 0:
        sys.exit("run as root")
    if args.ours:
        ours_dir = os.path.abspath(args.ours)
    else:
        subprocess.run(["make", "release"], cwd=REPO, check=True)
        triple = subprocess.run([os.path.join(REPO, "scripts", "static-target.sh")],
                                capture_output=True, text=True, check=True).stdout.split()[0]
        ours_dir = os.path.join(REPO, "target", triple, "release")
    for d in (ours_dir, REF_DIR):
        for p in PLUGINS:
            if not os.access(os.path.join(d, p), os.X_OK):
                sys.exit(f"{d}/{p} missing")

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    started = time.monotonic()
    before = host_snapshot()
    tag = f"cnirs-rtb-{os.getpid()}"
    root = tempfile.mkdtemp(prefix="cnirs-rtb-", dir="/var/tmp")
    boxes = {impl: Sandbox(impl, root, tag) for impl in IMPLS}
    rows, setup_s, problems = [], {}, []
    stop, threads = threading.Event(), []
    try:
        tar = rootfs_tar(root)
        netfile = os.path.join(REPO, "conf", "87-podman-bridge.conflist")
        for sb in boxes.values():
            sb.create()
            sb.install(ours_dir, netfile)
            sb.podman("import", "--change", 'CMD ["/bin/sh"]', tar, IMAGE)
            sb.start_prober()
            # Warm-up, not recorded: creates the bridge and the firewall
            # tables, fills caches; and proves which plugins ran.
            sb.podman(*sb.run_args("warm", ["-p", "8080:80"], ["httpd", "-f", "-p", "80", "-h", "/www"]))
            if not sb.probe("10.88.0.1", 8080)[0]:
                raise RuntimeError(f"{sb.impl}: warm-up container serves no page")
            check_backend(sb)
            sb.podman("rm", "-f", "-t", "0", "warm")
        print(f"sandboxes ready in {time.monotonic() - started:.1f} s", flush=True)

        for n in args.existing:
            if n:
                t = time.monotonic()
                # Both sandboxes fill at the same time (2 cores, 2 podmans).
                errors = []
                threads = [threading.Thread(target=fill, args=(sb, n, stop, errors)) for sb in boxes.values()]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                if errors:
                    raise RuntimeError("; ".join(errors))
                for sb in boxes.values():
                    got = len(sb.podman("ps", "-q").stdout.split())
                    if got != n:
                        raise RuntimeError(f"{sb.impl}: {got} containers running, wanted {n}")
                setup_s[n] = time.monotonic() - t
                print(f"{n} existing containers per sandbox started in {setup_s[n]:.1f} s", flush=True)
            # Cases interleave within a round too, so a drift of the machine
            # over time (e.g. settling after the fill) hits every case alike.
            for r in range(args.rounds):
                order = IMPLS if r % 2 == 0 else IMPLS[::-1]
                for case in cases_at(n, args, noport_at):
                    for pos, impl in enumerate(order):
                        res = one_round(boxes[impl], f"web-{n}-{case}-{r}", case)
                        for step in ("run", "page", "ready", "rm"):
                            if step in res:
                                rows.append((n, case, r, impl, pos, step, round(res[step], 3), res["tries"]))
            print(f"@{n}: {args.rounds} rounds of {', '.join(cases_at(n, args, noport_at))} done at "
                  f"{time.monotonic() - started:.0f} s", flush=True)
            if n:
                t = time.monotonic()
                for sb in boxes.values():
                    sb.podman("rm", "-a", "-f", "-t", "0", timeout=600)
                print(f"removed in {time.monotonic() - t:.1f} s", flush=True)
    except KeyboardInterrupt as e:
        problems.append(f"interrupted ({e})")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()  # no fill thread may start a container once clean-up begins
        for th in threads:
            th.join()
        for sb in boxes.values():
            problems += [f"{sb.impl}: {p}" for p in sb.close()]
        shutil.rmtree(root, ignore_errors=True)
        problems += verify_clean(boxes.values(), root, before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    wall = time.monotonic() - started
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems), file=sys.stderr)
    if rows and not any(p.startswith("interrupted") for p in problems):
        report(rows, args, noport_at, versions(ours_dir, args.label), setup_s, wall, problems)
    sys.exit(1 if problems else 0)


def cases_at(n, args, noport_at):
    return ["port"] + (["noport"] if n in noport_at else []) + (["none"] if n in args.none_at else [])


def verify_clean(boxes, root, before):
    """Nothing of ours left on the real host: namespaces, mounts, processes,
    cgroups, files; and the places runtimes write to look as before."""
    out = []
    netns = sh(["ip", "netns", "list"], check=False).stdout
    with open("/proc/self/mountinfo") as f:
        mounts = [l for l in f if root in l]
    for sb in boxes:
        if sb.tag in netns or os.path.exists(sb.netns):
            out.append(f"netns {sb.tag} still there")
        if sb.leftover_processes():
            out.append(f"processes left: {sb.leftover_processes()}")
        if sb.cgroups():
            out.append(f"cgroups left: {sb.cgroups()}")
    if mounts:
        out.append(f"mounts left: {mounts}")
    if os.path.exists(root):
        out.append(f"{root} still there")
    after = host_snapshot()
    for d in before:
        if before[d] != after[d]:
            out.append(f"{d} changed on the host: before {before[d]}, after {after[d]}")
    if not out:
        print("clean: no netns, mounts, processes, cgroups or files left; "
              "/var/lib/cni, /run, /etc/cni/net.d, /opt/cni, the root netns' links and ruleset as before", flush=True)
    return out


def report(rows, args, noport_at, machine, setup_s, wall, problems):
    stamp = time.strftime("%Y-%m-%d")
    raw = os.path.join(HERE, "results", f"runtime_{stamp}.csv")
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["existing", "case", "round", "impl", "position", "step", "wall_ms", "page_tries"])
        w.writerows(rows)

    def pick(n, case, impl, step):
        return [r[6] for r in rows if r[0] == n and r[1] == case and r[3] == impl and r[5] == step]

    def p90(xs):
        return statistics.quantiles(xs, n=10)[-1]

    out = [f"podman run/rm of a web server: {args.rounds} rounds per case, ours and reference alternating; "
           f"raw: {os.path.relpath(raw, HERE)}",
           f"{'':28}{'cni-rs':>10}{'reference':>11}{'ours/ref':>10}"]
    for n in args.existing:
        for case in cases_at(n, args, noport_at):
            label = {"port": "-p 8080:80", "noport": "no -p", "none": "--network none (no CNI)"}[case]
            out.append(f"@{n} existing, {label}")
            for step in ("run", "page", "ready", "rm"):
                a, b = pick(n, case, "cni-rs", step), pick(n, case, "reference", step)
                if not a or not b:
                    continue
                for stat, fn in (("median", statistics.median), ("p90", p90)):
                    if step == "page" and stat == "p90":
                        continue
                    x, y = fn(a), fn(b)
                    out.append(f"  {step + ' ' + stat + ' ms':26}{x:10.1f}{y:11.1f}{x / y:10.2f}")
    for n in args.none_at:
        if n not in args.existing:
            continue
        for step in ("run", "rm"):
            parts = []
            for case in cases_at(n, args, noport_at)[:-1]:
                d = [statistics.median(pick(n, case, impl, step)) - statistics.median(pick(n, "none", impl, step))
                     for impl in IMPLS]
                parts.append(f"{'-p' if case == 'port' else 'no -p'}: cni-rs {d[0]:+.1f}, reference {d[1]:+.1f}")
            out.append(f"{step} median over the --network none floor @{n}, ms: " + "; ".join(parts))
    for n, s in setup_s.items():
        out.append(f"starting {n} existing containers in each sandbox (both at once): {s:.0f} s")
    out.append(f"total wall time: {wall:.0f} s")
    out += machine
    if problems:
        out.append("PROBLEMS: " + "; ".join(problems))
    summary = "\n".join(out)
    print(summary)
    with open(os.path.join(HERE, "results", "runtime.txt"), "w") as f:
        f.write(summary + "\n")


if __name__ == "__main__":
    main()
