//! Test harness: throwaway network namespaces that remove themselves on drop
//! (also when a test fails or panics), running the real plugin binaries with
//! a CNI environment, and kernel state read back as JSON.
//!
//! Everything a test creates lives inside namespaces it made; nothing touches
//! the machine's root network namespace.

pub mod nft;
pub mod runtime;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// A name unique to this process and call, short enough for a link name
/// (15 bytes) when `prefix` is at most 4 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id())
}

/// Wait for the kernel to reach a state: re-check `cond` every 10 ms for up
/// to 5 s. Returns whether it held.
pub fn wait_for(cond: impl FnMut() -> bool) -> bool {
    wait_up_to(std::time::Duration::from_secs(5), cond)
}

/// Re-check `cond` every 10 ms until it holds or `limit` has passed.
/// Returns whether it held.
pub fn wait_up_to(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The stdout of a finished command, which must have succeeded (else panic
/// with `what` and its output).
pub fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command; panic with its output if it cannot start.
pub fn cmd(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Run a command that must succeed.
pub fn must(program: &str, args: &[&str]) -> String {
    let out = cmd(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("cnirs-{tag}-{}", unique(""));
        must("ip", &["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A sysctl's value as this namespace sees it (`sysctl -n KEY`).
    pub fn sysctl(&self, key: &str) -> String {
        must("ip", &["netns", "exec", &self.name, "sysctl", "-n", key])
            .trim()
            .to_owned()
    }

    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    /// `ip -n NS -j ARGS...`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = must("ip", &full);
        if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: {e}: {out}"))
        }
    }

    /// `bridge -j ARGS...` inside the namespace, parsed.
    pub fn bridge_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["netns", "exec", &self.name, "bridge", "-j"];
        full.extend_from_slice(args);
        let out = must("ip", &full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bridge {args:?}: {e}: {out}"))
    }

    /// Run a command inside the namespace (`ip netns exec`), e.g. ping.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd("ip", &full)
    }

    /// `ping` from inside the namespace; true if answered.
    pub fn ping(&self, addr: &str) -> bool {
        let ping = if addr.contains(':') {
            vec!["ping", "-6"]
        } else {
            vec!["ping"]
        };
        let mut args = ping;
        args.extend_from_slice(&["-c", "1", "-W", "2", addr]);
        self.exec(&args).status.success()
    }

    /// `nft -j list table FAMILY NAME` inside the namespace; None if absent.
    pub fn nft_table(&self, family: &str, name: &str) -> Option<Value> {
        let out = self.exec(&["nft", "-j", "list", "table", family, name]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `ip -n NS ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        must("ip", &full);
    }

    /// The flags of a link, e.g. `["LOOPBACK", "UP", "LOWER_UP"]`.
    pub fn link_flags(&self, link: &str) -> Vec<String> {
        let v = self.ip_json(&["link", "show", "dev", link]);
        v[0]["flags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Addresses on a link as `addr/prefix` strings.
    pub fn addrs(&self, link: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", link]);
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every link name in the namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = cmd("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: cannot delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cnirs-{tag}-{}", unique("")));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reservations in a host-local network store directory: files named
/// by an address, with what they hold, sorted.
pub fn reservations_in(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
                })
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every index entry is a hard link of a current reservation, every
/// reservation has one, no owner directory is empty, and no temporary file
/// is left (host-local's store, after an operation that tidies).
pub fn assert_store_tidy(store: &Path) {
    let owners = store.join(".cnirs/owners");
    let mut indexed = 0;
    for odir in std::fs::read_dir(&owners).unwrap() {
        let odir = odir.unwrap().path();
        let entries: Vec<_> = std::fs::read_dir(&odir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert!(
            !entries.is_empty(),
            "empty owner directory {}",
            odir.display()
        );
        for e in entries {
            let res = store.join(e.file_name());
            let (a, b) = (e.metadata().unwrap(), std::fs::metadata(&res));
            assert!(
                b.is_ok_and(|b| std::os::unix::fs::MetadataExt::ino(&b)
                    == std::os::unix::fs::MetadataExt::ino(&a)),
                "stale entry {}",
                e.path().display()
            );
            indexed += 1;
        }
    }
    assert_eq!(indexed, reservations_in(store).len());
    for e in std::fs::read_dir(store.join(".cnirs")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".tmp"), "{n} left");
    }
}

/// Where the workspace's binaries are: `CNIRS_BIN_DIR`, else the target
/// directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNIRS_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The path of a workspace binary, which must have been built
/// (`cargo build --workspace --bins`, done by `make test`).
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// The plugin binaries.
pub const PLUGINS: [&str; 5] = ["loopback", "bridge", "host-local", "portmap", "ptp"];

/// One plugin invocation, built up then run.
#[derive(Clone)]
pub struct Call {
    bin: PathBuf,
    vars: Vec<(String, std::ffi::OsString)>,
    stdin: Vec<u8>,
    /// Run inside this namespace (as a runtime in a "host" namespace would).
    host: Option<PathBuf>,
    /// Kill the plugin if it has not exited by then (a hang is then a failed
    /// assertion, not a stuck test run).
    limit: Option<std::time::Duration>,
}

impl Call {
    /// `command` with a valid container id and interface name, no netns.
    pub fn new(plugin: &str, command: &str) -> Call {
        Call {
            bin: binary(plugin),
            vars: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_CONTAINERID".into(), "ctr-1".into()),
                ("CNI_IFNAME".into(), "eth0".into()),
                ("CNI_PATH".into(), bin_dir().into_os_string()),
            ],
            stdin: Vec::new(),
            host: None,
            limit: None,
        }
    }

    /// Fail (panic) if the plugin runs longer than `limit`.
    pub fn within(mut self, limit: std::time::Duration) -> Call {
        self.limit = Some(limit);
        self
    }

    /// Run another binary with the same environment (e.g. a reference plugin).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Call {
        self.bin = path.into();
        self
    }

    /// Run the plugin inside `host`, the throwaway namespace standing in for
    /// the machine's own: the bridge, host veths and rules land there.
    pub fn in_host(mut self, host: &Netns) -> Call {
        self.host = Some(host.path());
        self
    }

    /// Set (or with `None`, unset) one variable.
    pub fn var(mut self, key: &str, value: Option<&str>) -> Call {
        self.vars.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.vars.push((key.into(), v.into()));
        }
        self
    }

    /// Set one variable to bytes that need not be text.
    pub fn var_bytes(mut self, key: &str, value: &[u8]) -> Call {
        use std::os::unix::ffi::OsStrExt;
        self.vars.retain(|(k, _)| k != key);
        self.vars
            .push((key.into(), std::ffi::OsStr::from_bytes(value).to_owned()));
        self
    }

    pub fn netns(self, ns: &Netns) -> Call {
        let p = ns.path_str();
        self.var("CNI_NETNS", Some(&p))
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Call {
        self.stdin = bytes.into();
        self
    }

    pub fn conf(self, conf: &Value) -> Call {
        self.stdin(conf.to_string())
    }

    pub fn run(&self) -> Reply {
        let mut p = match &self.host {
            // nsenter, not `ip netns exec`, which also remounts /sys.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        p.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in &self.vars {
            p.env(k, v);
        }
        match self.limit {
            None => Reply(fed(&mut p, &self.stdin)),
            Some(limit) => Reply(
                fed_within(&mut p, &self.stdin, limit)
                    .unwrap_or_else(|| panic!("{} ran longer than {limit:?}", self.bin.display())),
            ),
        }
    }
}

/// As [`fed`], but the child is killed if it has not exited within `limit`:
/// `None` then. stdin is written and the output read on helper threads, so
/// neither a plugin that never reads nor one that writes a lot blocks us.
pub fn fed_within(cmd: &mut Command, stdin: &[u8], limit: std::time::Duration) -> Option<Output> {
    let mut child = spawn_piped(cmd);
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|r| Box::new(r) as _));
    let err = read(child.stderr.take().map(|r| Box::new(r) as _));
    let exited = wait_up_to(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let _ = writer.join();
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    exited.then_some(output)
}

fn spawn_piped(cmd: &mut Command) -> std::process::Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run `cmd` with `stdin` on its standard input; its output, both streams
/// captured.
pub fn fed(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = spawn_piped(cmd);
    // A plugin that fails early may not read its input: not an error here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// What a plugin printed and how it exited.
pub struct Reply(pub Output);

impl Reply {
    pub fn ok(&self) -> bool {
        self.0.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// stdout as JSON; panics if it is anything else.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.0.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout(),
                self.stderr()
            )
        })
    }

    /// Assert success and return the result JSON.
    pub fn success(&self) -> Value {
        assert!(
            self.ok(),
            "plugin failed: stdout {} stderr {}",
            self.stdout(),
            self.stderr()
        );
        if self.0.stdout.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Assert success with nothing on stdout (DEL, CHECK, GC, STATUS).
    pub fn silent_success(&self) {
        assert!(
            self.ok(),
            "plugin failed: stdout {} stderr {}",
            self.stdout(),
            self.stderr()
        );
        assert!(
            self.0.stdout.is_empty(),
            "unexpected stdout: {}",
            self.stdout()
        );
    }

    /// Assert a spec-shaped error with `code` (non-zero exit, stdout exactly the
    /// error object, no panic) and return it.
    pub fn error(&self, code: u64) -> Value {
        assert!(
            !self.ok(),
            "expected error {code}, got success: {}",
            self.stdout()
        );
        let v = self.json();
        let obj = v.as_object().expect("error is an object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["cniVersion", "code", "details", "msg"],
            "error shape: {v}"
        );
        assert_eq!(
            v["code"],
            code,
            "wrong code: {v}; stderr: {}",
            self.stderr()
        );
        assert!(!v["msg"].as_str().unwrap().is_empty());
        assert!(
            !self.stderr().contains("panicked"),
            "plugin panicked: {}",
            self.stderr()
        );
        v
    }
}

/// Run `f` on a new thread that has entered `ns`: sockets it opens live there.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP and a UDP server inside a namespace, answering `reply` on `port`
/// (both families), until dropped.
pub struct Server {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, port: u16, reply: &str) -> Server {
        use std::io::Write;
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        let (s1, r1, tx1) = (stop.clone(), reply.to_owned(), ready_tx.clone());
        threads.push(in_netns(ns, move || {
            // [::] takes IPv4 too (v4-mapped).
            let l = std::net::TcpListener::bind(("::", port)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            tx1.send(()).unwrap();
            while !s1.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(r1.as_bytes());
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        }));
        let (s2, r2) = (stop.clone(), reply.to_owned());
        threads.push(in_netns(ns, move || {
            let u = std::net::UdpSocket::bind(("::", port)).expect("bind udp");
            u.set_read_timeout(Some(std::time::Duration::from_millis(20)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(r2.as_bytes(), from);
                }
            }
        }));
        // Both sockets are bound before anyone connects.
        ready_rx.recv().unwrap();
        ready_rx.recv().unwrap();
        Server { stop, threads }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connect over TCP from inside `ns` and read the reply; None if refused or silent.
pub fn tcp_fetch(ns: &Netns, addr: &str) -> Option<String> {
    tcp_fetch_within(ns, addr, std::time::Duration::from_secs(2))
}

/// [`tcp_fetch`] with its own timeout for the connection and the reply.
pub fn tcp_fetch_within(ns: &Netns, addr: &str, limit: std::time::Duration) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    in_netns(ns, move || {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect_timeout(&addr, limit).ok()?;
        c.set_read_timeout(Some(limit)).ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    })
    .join()
    .unwrap()
}

/// Send one UDP datagram from inside `ns` (from `src_port` if given) and
/// wait for a reply; None if none comes.
pub fn udp_ask(ns: &Netns, addr: &str, src_port: u16) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    in_netns(ns, move || {
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], src_port).into()
        } else {
            ([0u16; 8], src_port).into()
        };
        let u = std::net::UdpSocket::bind(local).ok()?;
        u.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .ok()?;
        u.send_to(b"ping", addr).ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = u.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .unwrap()
}
