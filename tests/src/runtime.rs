//! A sandbox for driving real container runtimes (podman, containerd) with
//! our plugins, without touching the machine.
//!
//! A sandbox is a throwaway "host" network namespace plus a pinned private
//! mount namespace in which `/run` is an empty tmpfs and `/etc`, `/var/lib`
//! and `/opt` are overlays whose upper layers live in the sandbox's temp
//! dir. Every runtime command runs through `nsenter --mount=PIN --net=HOST`,
//! so the bridge, veths and nftables rules land in the host namespace, and
//! the paths runtimes hard-code (`/run/netns`, `/run/runc`,
//! `/run/containerd`, `/var/lib/cni`, `/etc/cni/net.d`, `/opt/cni/bin`) stay
//! inside the sandbox. `ip netns exec` is not used for runtimes: it remounts
//! /sys and gives every call a fresh mount namespace.
//!
//! Dropping the sandbox kills what is left of what it started (processes in
//! its mount namespace or in its cgroup), unmounts the pin, deletes the host
//! namespace and the temp dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::{Netns, PLUGINS, TempDir, bin_dir, cmd, must, succeeded, unique, wait_for, wait_up_to};

/// The image every runtime test runs: busybox with a page to serve.
pub const IMAGE: &str = "localhost/cnirs-busybox:latest";
/// What `/www/index.html` of [`IMAGE`] holds.
pub const PAGE: &str = "hello from a cni-rs container\n";

/// Wait for something a runtime does (a daemon answering, a container's
/// process starting): up to 30 s, since a runtime under load is much slower
/// than the kernel. Returns whether it held.
pub fn wait_for_runtime(cond: impl FnMut() -> bool) -> bool {
    wait_up_to(std::time::Duration::from_secs(30), cond)
}

/// A file of the repository's conf/ directory.
pub fn conf_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../conf")
        .join(name)
}

pub struct Sandbox {
    /// Unique per sandbox; also the cgroup parent/namespace of its
    /// containers, so clean-up can find their processes.
    pub tag: String,
    pub host: Netns,
    pub dir: TempDir,
    pin: PathBuf,
    spawned: Vec<Child>,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        let host = Netns::new(tag);
        let dir = TempDir::new(tag);
        let tag = format!("cnirs-{}", unique(tag));
        let mut sb = Sandbox {
            tag,
            host,
            dir,
            pin: PathBuf::new(),
            spawned: Vec::new(),
        };
        sb.host.ip(&["link", "set", "lo", "up"]);
        let t = sb.dir.path().to_path_buf();
        // The file that pins the namespace must sit on a private mount, or
        // the bind would propagate (and be refused).
        let pin_dir = t.join("pin");
        std::fs::create_dir_all(&pin_dir).unwrap();
        let pd = pin_dir.to_str().unwrap();
        must("mount", &["--bind", pd, pd]);
        sb.pin = pin_dir.join("mnt");
        must("mount", &["--make-private", pd]);
        std::fs::write(&sb.pin, b"").unwrap();
        let mut script = String::from("set -e\nmount -t tmpfs -o mode=755 cnirs-run /run\n");
        for (lower, name) in [("/etc", "etc"), ("/var/lib", "varlib"), ("/opt", "opt")] {
            let (up, work) = (t.join("up").join(name), t.join("work").join(name));
            std::fs::create_dir_all(&up).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            script += &format!(
                "mount -t overlay cnirs-{name} -o lowerdir={lower},upperdir={},workdir={} {lower}\n",
                up.display(),
                work.display()
            );
        }
        let pin_arg = format!("--mount={}", sb.pin.display());
        must(
            "unshare",
            &[&pin_arg, "--propagation", "private", "sh", "-c", &script],
        );
        sb
    }

    /// `program` run inside the sandbox (its mount and host namespaces).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount={}", self.pin.display()))
            .arg(format!("--net={}", self.host.path_str()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Run a command inside the sandbox and return its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Run a command inside the sandbox that must succeed; its stdout.
    pub fn must(&self, program: &str, args: &[&str]) -> String {
        succeeded(self.run(program, args), &format!("{program} {args:?}"))
    }

    /// An HTTP GET with curl from inside the host namespace; the body, or
    /// None when it failed.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self
            .host
            .exec(&["curl", "-sS", "-g", "--max-time", "1", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The host ends of the veths enslaved to `bridge` (`ip -d link`).
    pub fn bridge_ports(&self, bridge: &str) -> Vec<serde_json::Value> {
        self.host
            .ip_json(&["-d", "link", "show", "master", bridge])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Write a file at a path as the sandbox sees it (e.g. /etc/cni/net.d/x).
    pub fn write(&self, path: &str, contents: &str) {
        let mut child = self
            .command("sh")
            .args([
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                path,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "cannot write {path}");
    }

    /// Where a path under /var/lib, /etc or /opt of the sandbox can be read
    /// from outside (the overlay's upper layer: what the sandbox changed).
    pub fn changed(&self, path: &str) -> PathBuf {
        for (lower, name) in [("/etc/", "etc"), ("/var/lib/", "varlib"), ("/opt/", "opt")] {
            if let Some(rest) = path.strip_prefix(lower) {
                return self.dir.path().join("up").join(name).join(rest);
            }
        }
        panic!("{path} is not on an overlay of the sandbox");
    }

    /// Install our plugins into the sandbox's /opt/cni/bin the way users
    /// install a release: by unpacking the `make dist` tarball named by
    /// `CNI_RS_DIST` (which `make test` sets), else by copying the workspace's
    /// build. Returns where they came from.
    pub fn install_plugins(&self) -> String {
        if let Some(tgz) = std::env::var_os("CNI_RS_DIST") {
            let tgz = PathBuf::from(tgz);
            let t = tgz.to_str().unwrap();
            self.must(
                "sh",
                &[
                    "-c",
                    "mkdir -p /opt/cni/bin && tar -C /opt/cni/bin -xzf \"$1\"",
                    "sh",
                    t,
                ],
            );
            return format!("release tarball {}", tgz.display());
        }
        let mut script = String::from("set -e\nmkdir -p /opt/cni/bin\n");
        for p in PLUGINS {
            let src = bin_dir().join(p);
            assert!(src.is_file(), "{} is not built", src.display());
            script += &format!("cp {} /opt/cni/bin/{p}\n", src.display());
        }
        self.must("sh", &["-c", &script]);
        format!("build directory {}", bin_dir().display())
    }

    /// A root filesystem tarball of busybox (Debian's busybox-static) with
    /// /www/index.html holding [`PAGE`]; built once per sandbox.
    pub fn rootfs_tar(&self) -> PathBuf {
        let t = self.dir.path();
        let root = t.join("rootfs");
        let tar = t.join("rootfs.tar");
        if tar.exists() {
            return tar;
        }
        for d in ["bin", "etc", "www", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let applets = must("/bin/busybox", &["--list"]);
        for a in applets.lines().filter(|a| *a != "busybox" && !a.is_empty()) {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(root.join("www/index.html"), PAGE).unwrap();
        tar_dir(&root, &tar);
        tar
    }

    /// [`Self::rootfs_tar`] as an OCI image archive named `name` that runs
    /// `cmd`, written by hand (one uncompressed layer), for `ctr image
    /// import`.
    pub fn oci_archive(&self, name: &str, cmd: &[&str]) -> PathBuf {
        let layer = std::fs::read(self.rootfs_tar()).unwrap();
        let t = self.dir.path();
        let oci = t.join(format!("oci-{}", unique("")));
        let blobs = oci.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| -> (String, usize) {
            let p = t.join("blob.tmp");
            std::fs::write(&p, bytes).unwrap();
            let sum = must("sha256sum", &[p.to_str().unwrap()]);
            let hex = sum.split_whitespace().next().unwrap().to_owned();
            std::fs::rename(&p, blobs.join(&hex)).unwrap();
            (format!("sha256:{hex}"), bytes.len())
        };
        let (layer_digest, layer_size) = put(&layer);
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Cmd": cmd, "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        });
        let (config_digest, config_size) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": "latest",
                },
            }],
        });
        std::fs::write(oci.join("index.json"), index.to_string()).unwrap();
        std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = oci.with_extension("tar");
        tar_dir(&oci, &archive);
        archive
    }

    /// Start a long-running process (a daemon, or a foreground `ctr run`)
    /// inside the sandbox, its output to `log` in the temp dir. It is killed
    /// when the sandbox drops, if it has not ended by then.
    pub fn spawn(&mut self, program: &str, args: &[&str], log: &str) -> usize {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = self
            .command(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.spawned.push(child);
        self.spawned.len() - 1
    }

    /// Wait (bounded, 20 s) for a process started by [`Self::spawn`] to end;
    /// its exit status, or None if it is still running.
    pub fn wait_exit(&mut self, handle: usize) -> Option<std::process::ExitStatus> {
        let child = &mut self.spawned[handle];
        let mut status = None;
        wait_up_to(std::time::Duration::from_secs(20), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status
    }

    /// The contents of a log written by a process from [`Self::spawn`].
    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    /// PIDs of processes this sandbox started that are still alive: those in
    /// its mount namespace (runtimes, daemons, shims) and those in a cgroup
    /// named after its tag (the containers, which runc puts in mount
    /// namespaces of their own).
    pub fn leftover_processes(&self) -> Vec<i32> {
        let Ok(pin_ns) = std::fs::metadata(&self.pin).map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("mnt:[{}]", m.ino())
        }) else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let p = entry.path();
            // Zombies have nothing left to kill; their parent reaps them.
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
            if zombie {
                continue;
            }
            let in_mnt = std::fs::read_link(p.join("ns/mnt"))
                .map(|l| l.to_string_lossy() == pin_ns)
                .unwrap_or(false);
            let in_cgroup = std::fs::read_to_string(p.join("cgroup"))
                .map(|c| c.contains(&self.tag))
                .unwrap_or(false);
            if in_mnt || in_cgroup {
                pids.push(pid);
            }
        }
        pids
    }

    fn kill_leftovers(&mut self) {
        for c in &mut self.spawned {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.leftover_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !wait_for(|| self.leftover_processes().is_empty()) {
            eprintln!(
                "warning: sandbox {}: processes still alive: {:?}",
                self.tag,
                self.leftover_processes()
            );
        }
    }

    /// Remove the (empty) cgroups the runtimes made under the sandbox's tag.
    fn remove_cgroups(&self) {
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for c in controllers.flatten() {
            let top = c.path().join(&self.tag);
            if top.is_dir() {
                // Deepest first: rmdir only works on an empty cgroup.
                let out = cmd(
                    "find",
                    &[top.to_str().unwrap(), "-depth", "-type", "d", "-print"],
                );
                for d in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
    }
}

/// `tar -C dir -cf archive .`
fn tar_dir(dir: &Path, archive: &Path) {
    let (d, a) = (dir.to_str().unwrap(), archive.to_str().unwrap());
    must("tar", &["-C", d, "-cf", a, "."]);
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_leftovers();
        self.remove_cgroups();
        let pin_dir = self.pin.parent().map(Path::to_path_buf);
        let _ = cmd("umount", &[self.pin.to_str().unwrap()]);
        if let Some(d) = pin_dir {
            let _ = cmd("umount", &[d.to_str().unwrap()]);
        }
        // Then `host` and `dir` drop: the namespace (and any link left in
        // it) goes, then the files.
    }
}

/// podman in a sandbox, with its storage, run root and logs in the
/// sandbox's directory and the settings these machines need (no systemd,
/// cgroupfs, low hard limits), the CNI backend reading `/etc/cni/net.d` with
/// plugins from `plugin_dirs` (a TOML list body).
pub struct PodmanIn {
    pub sb: Sandbox,
}

impl PodmanIn {
    pub fn new(sb: Sandbox, plugin_dirs: &str) -> PodmanIn {
        let t = sb.dir.path().to_path_buf();
        for d in ["storage", "runroot", "tmp", "vartmp"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{t}/events.log"
runtime = "runc"
tmp_dir = "{t}/tmp"
lock_type = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = [{plugin_dirs}]
network_config_dir = "/etc/cni/net.d"
"#,
            t = t.display()
        );
        std::fs::write(t.join("containers.conf"), conf).unwrap();
        PodmanIn { sb }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let t = self.sb.dir.path();
        let mut c = self.sb.command("podman");
        c.env("CONTAINERS_CONF", t.join("containers.conf"))
            .env("TMPDIR", t.join("vartmp"))
            .arg("--root")
            .arg(t.join("storage"))
            .arg("--runroot")
            .arg(t.join("runroot"))
            .args(["--storage-driver", "overlay"])
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("podman")
    }

    /// podman ARGS, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), &format!("podman {args:?}"))
    }

    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.sb.tag)
    }
}

impl Drop for PodmanIn {
    fn drop(&mut self) {
        // Let podman tear down what it still holds (CNI DEL included) before
        // the sandbox kills whatever is left.
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
    }
}
