//! containerd 1.6 runs containers on our plugins with containerd's
//! documented default network, `conf/10-containerd-net.conflist` (dual
//! stack, promiscuous bridge, port mappings), our plugins installed in
//! /opt/cni/bin, and everything in a sandbox (a throwaway host network
//! namespace and a private mount namespace). Two clients:
//!
//! - `ctr run --cni` passes the netns as `/proc/<pid>/ns/net` on ADD, and
//!   calls DEL with an empty `CNI_NETNS` after the task has exited: that DEL
//!   alone must release the addresses and remove the rules.
//! - The CRI plugin, which is what kubelet drives, here through
//!   `tests/tools/cri.py` (Debian 12 has no kubelet or crictl): it runs
//!   loopback and the network for each pod sandbox, passes the pod's port
//!   mappings, and calls DEL when the sandbox stops.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use cni_tests::nft::map_len;
use cni_tests::nft::{chain_names, objects};
use cni_tests::runtime::{IMAGE, PAGE, Sandbox, conf_file, wait_for_runtime};
use cni_tests::{reservations_in, succeeded};

const NET: &str = "containerd-net";
const BRIDGE: &str = "cni0";
const STORE: &str = "/var/lib/cni/networks/containerd-net";
/// The CRI plugin's pod sandbox ("pause") image: here busybox's httpd, so
/// the sandbox itself serves the page.
const PAUSE: &str = "localhost/cnirs-pause:latest";

struct Containerd {
    sb: Sandbox,
}

impl Containerd {
    /// A sandbox with our plugins installed, containerd's default network
    /// as the only file in /etc/cni/net.d, a containerd of its own running
    /// (with its CRI plugin when `cri`), and the image imported.
    fn new(cri: bool) -> Containerd {
        Containerd::with_network(cri, "10-containerd-net.conflist")
    }

    /// As [`Containerd::new`], with `conflist` (a file of conf/) as the
    /// only network config.
    fn with_network(cri: bool, conflist: &str) -> Containerd {
        let mut sb = Sandbox::new("ctrd");
        let t = sb.dir.path().join("containerd");
        std::fs::create_dir_all(&t).unwrap();
        let plugins = if cri {
            format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  enable_selinux = false
  disable_apparmor = true
  # This machine refuses a negative oom_score_adj (the sandbox default).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
"#
            )
        } else {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#.to_owned()
        };
        let config = format!(
            r#"version = 2
root = "{t}/root"
state = "{t}/state"
{plugins}
[grpc]
  address = "{t}/containerd.sock"
[ttrpc]
  address = "{t}/containerd.sock.ttrpc"
[debug]
  address = "{t}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
"#,
            t = t.display()
        );
        std::fs::write(t.join("config.toml"), config).unwrap();
        let from = sb.install_plugins();
        eprintln!("plugins from {from}");
        // Alone in the directory: ctr takes the lexically first file.
        sb.must("sh", &["-c", "rm -f /etc/cni/net.d/*"]);
        sb.write(
            &format!("/etc/cni/net.d/{conflist}"),
            &std::fs::read_to_string(conf_file(conflist)).unwrap(),
        );
        let cfg = t.join("config.toml");
        sb.spawn(
            "containerd",
            &["--config", cfg.to_str().unwrap()],
            "containerd.log",
        );
        let c = Containerd { sb };
        // containerd answers once its plugins are loaded.
        let up = wait_for_runtime(|| c.ctr(&["version"]).status.success());
        assert!(
            up,
            "containerd did not start: {}",
            c.sb.log("containerd.log")
        );
        if cri {
            let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
            let archive = c.sb.oci_archive(PAUSE, &httpd);
            let a = archive.to_str().unwrap();
            c.ok(&["--namespace", "k8s.io", "image", "import", a]);
        } else {
            let archive = c.sb.oci_archive(IMAGE, &["/bin/sh"]);
            c.ok(&["image", "import", archive.to_str().unwrap()]);
        }
        c
    }

    /// A call of the CRI's RuntimeService, as kubelet would make it; the
    /// JSON `tests/tools/cri.py` prints.
    fn cri(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/cri.py");
        let out = Command::new("/usr/bin/python3")
            .arg(tool)
            .arg(self.socket())
            .args(args)
            .output()
            .expect("python3");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn socket(&self) -> PathBuf {
        self.sb.dir.path().join("containerd/containerd.sock")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        // The sandbox's tag as the containerd namespace also names the
        // containers' cgroups (/<namespace>/<id>), for clean-up. A later
        // --namespace in `args` wins.
        let mut c = self.sb.command("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.sb.tag])
            .args(args);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(self.ctr(args), &format!("ctr {args:?}"))
    }

    /// `ctr run --rm --cni` in the foreground (the only way ctr calls DEL),
    /// as a process of the sandbox; its handle.
    fn run(&mut self, id: &str, argv: &[&str]) -> usize {
        let (sock, ns) = (self.socket(), self.sb.tag.clone());
        let mut args = vec!["--address", sock.to_str().unwrap(), "--namespace", &ns];
        args.extend_from_slice(&["run", "--rm", "--cni", IMAGE, id]);
        args.extend_from_slice(argv);
        self.sb.spawn("ctr", &args, &format!("{id}.log"))
    }

    /// The PID of a running task.
    fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id && f[2] == "RUNNING").then(|| f[1].parse().ok())?
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Best effort before the sandbox kills the daemon and what is left.
        for l in String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout).lines() {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", l.trim()]);
        }
    }
}

/// RunPodSandbox with a hostPort, as kubelet sends for a pod with one,
/// retried while the CRI plugin has not loaded the network config yet; the
/// sandbox id and the pod's cgroup parent.
fn run_pod(c: &Containerd, name: &str) -> (String, String) {
    let sb = &c.sb;
    let cgroup = format!("/{}/pods", sb.tag);
    let uid = format!("{}-{name}", sb.tag);
    let mut id = String::new();
    let ran = wait_for_runtime(|| {
        match c.cri(&["runp", name, &uid, "default", &cgroup, "8080:80"]) {
            Ok(r) => {
                id = r["id"].as_str().unwrap().to_owned();
                true
            }
            Err(e) => {
                // Only "network not ready yet" is worth waiting out.
                assert!(e.contains("cni"), "RunPodSandbox: {e}");
                false
            }
        }
    });
    assert!(
        ran,
        "RunPodSandbox never succeeded: {}",
        sb.log("containerd.log")
    );
    assert_eq!(id.len(), 64, "{id}");
    (id, cgroup)
}

/// `nsenter --net=` of a pod sandbox's network namespace.
fn pod_netns(cgroup: &str, id: &str) -> String {
    let procs = format!("/sys/fs/cgroup/pids{cgroup}/{id}/cgroup.procs");
    let pid = std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{procs}: {e}"));
    format!("--net=/proc/{}/ns/net", pid.lines().next().unwrap())
}

/// After the last DEL: no reservation, bridge port, masquerade or
/// port-mapping chain or map element of the network.
fn assert_nothing_left(sb: &Sandbox) {
    let store = sb.changed(STORE);
    let held = reservations_in(&store);
    assert!(held.is_empty(), "{held:?}");
    assert!(sb.bridge_ports(BRIDGE).is_empty());
    let objs = objects(&sb.host, "inet");
    assert!(chain_names(&objs, &format!("masq/{NET}/")).is_empty());
    assert!(chain_names(&objs, &format!("pm/{NET}/")).is_empty());
    let maps = ["masq4", "masq6", "pm4-any", "pm6-any"];
    assert_eq!(maps.iter().map(|m| map_len(&objs, m)).sum::<usize>(), 0);
}

#[test]
fn ctr_run_cni_serves_on_our_network_and_the_empty_netns_del_cleans_up() {
    let mut c = Containerd::new(false);
    let store = c.sb.changed(STORE);

    let web = c.run("web", &["httpd", "-f", "-p", "80", "-h", "/www"]);
    assert!(
        wait_for_runtime(|| reservations_in(&store).len() == 2),
        "no addresses for the container: {}",
        c.sb.log("web.log")
    );
    // The reservations are made early in ADD; its last step is the
    // masquerade: wait for the whole ADD before reading the kernel state.
    assert!(
        wait_for_runtime(
            || !chain_names(&objects(&c.sb.host, "inet"), &format!("masq/{NET}/")).is_empty()
        ),
        "the container's ADD did not finish: {}",
        c.sb.log("web.log")
    );
    let held = reservations_in(&store);
    let addr = |v4: bool| -> String {
        held.iter()
            .map(|(ip, _)| ip.parse::<IpAddr>().unwrap())
            .find(|ip| ip.is_ipv4() == v4)
            .unwrap()
            .to_string()
    };
    let (ip4, ip6) = (addr(true), addr(false));
    assert!(ip4.starts_with("10.88."), "{held:?}");
    assert!(ip6.starts_with("2001:db8:4860::"), "{held:?}");
    // Both reservations name the same attachment: CNI_CONTAINERID and eth0.
    let owner = held[0].1.clone();
    assert!(held.iter().all(|(_, o)| *o == owner), "{held:?}");
    let (cid, ifname) = owner.split_once("\r\n").unwrap();
    assert_eq!(ifname, "eth0");

    // Kernel state in the host namespace: a promiscuous bridge holding
    // both gateways, one port, and our masquerade chain for the container.
    let sb = &c.sb;
    let bridge_addrs = sb.host.addrs(BRIDGE);
    assert!(
        bridge_addrs.contains(&"10.88.0.1/16".to_owned()),
        "{bridge_addrs:?}"
    );
    assert!(
        bridge_addrs.contains(&"2001:db8:4860::1/64".to_owned()),
        "{bridge_addrs:?}"
    );
    assert!(sb.host.link_flags(BRIDGE).contains(&"PROMISC".to_owned()));
    assert_eq!(sb.bridge_ports(BRIDGE).len(), 1);
    let masq = chain_names(&objects(&sb.host, "inet"), &format!("masq/{NET}/{cid}/"));
    assert_eq!(masq.len(), 1, "{masq:?}");

    // Inside the task's namespace (ctr gave the plugins /proc/<pid>/ns/net):
    // both addresses and both default routes.
    let pid = c.task_pid("web").expect("web is running");
    let netns = format!("--net=/proc/{pid}/ns/net");
    let addrs = cni_tests::must("nsenter", &[&netns, "ip", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip4}/16")), "{addrs}");
    assert!(addrs.contains(&format!("inet6 {ip6}/64")), "{addrs}");
    let r4 = cni_tests::must("nsenter", &[&netns, "ip", "-4", "route"]);
    let r6 = cni_tests::must("nsenter", &[&netns, "ip", "-6", "route"]);
    assert!(r4.contains("default via 10.88.0.1"), "{r4}");
    assert!(r6.contains("default via 2001:db8:4860::1"), "{r6}");

    // The page over both families from the host namespace.
    for url in [format!("http://{ip4}/"), format!("http://[{ip6}]/")] {
        assert!(
            wait_for_runtime(|| sb.http_get(&url).as_deref() == Some(PAGE)),
            "no page from {url}"
        );
    }

    // A second container fetches the page from the first over IPv6, exits,
    // and its DEL (empty CNI_NETNS) releases its addresses.
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip6} 80");
    let client = c.run("client", &["sh", "-c", &script]);
    let status = c.sb.wait_exit(client).expect("the client ended");
    let out = c.sb.log("client.log");
    assert!(status.success() && out.ends_with(PAGE), "{status}: {out}");
    let sb = &c.sb;
    assert_eq!(
        reservations_in(&store),
        held,
        "the client's addresses stayed"
    );
    assert_eq!(sb.bridge_ports(BRIDGE).len(), 1);

    // Kill the web task: ctr calls DEL with an empty netns, which must find
    // and remove everything by the attachment's identity alone.
    c.ok(&["task", "kill", "-s", "KILL", "web"]);
    let status = c.sb.wait_exit(web).expect("ctr run ended");
    assert!(!status.success(), "killed task: {status}");
    assert_nothing_left(&c.sb);
    // The bridge stays, as with the reference plugins.
    assert!(c.sb.host.link_names().contains(&BRIDGE.to_owned()));
    assert!(c.ok(&["container", "ls", "-q"]).trim().is_empty());
}

#[test]
fn cri_pod_sandbox_gets_our_network_and_stop_releases_it() {
    let c = Containerd::new(true);
    let sb = &c.sb;
    let store = sb.changed(STORE);
    let v = c.cri(&["version"]).expect("the CRI answers");
    assert_eq!(v["runtime_name"], "containerd", "{v}");

    // RunPodSandbox with a hostPort, as kubelet sends for a pod with one.
    let (id, cgroup) = run_pod(&c, "web");

    // The CRI reports both addresses; host-local holds them for the sandbox.
    let status = c.cri(&["status", &id]).unwrap();
    assert_eq!(status["state"], 0, "{status}");
    let ips: Vec<String> = status["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 2, "{status}");
    let held = reservations_in(&store);
    let mut want: Vec<(String, String)> = ips
        .iter()
        .map(|ip| (ip.clone(), format!("{id}\r\neth0")))
        .collect();
    want.sort();
    assert_eq!(held, want);

    // Inside the pod: the CRI plugin ran loopback (ours: its only plugin
    // directory is /opt/cni/bin) before the network.
    let netns = pod_netns(&cgroup, &id);
    let lo = cni_tests::must("nsenter", &[&netns, "ip", "-j", "addr", "show", "lo"]);
    let lo: serde_json::Value = serde_json::from_str(&lo).unwrap();
    assert_eq!(lo[0]["operstate"], "UNKNOWN", "lo is up: {lo}");
    assert_eq!(lo[0]["addr_info"][0]["local"], "127.0.0.1", "{lo}");
    let eth0 = cni_tests::must("nsenter", &[&netns, "ip", "addr", "show", "eth0"]);
    assert!(eth0.contains(&format!("inet {}/16", ips[0])), "{eth0}");

    // Our masquerade and port-mapping chains for the sandbox; the page
    // through the mapped port on both families of the gateway.
    let objs = objects(&sb.host, "inet");
    assert_eq!(chain_names(&objs, &format!("masq/{NET}/{id}/")).len(), 1);
    assert_eq!(chain_names(&objs, &format!("pm/{NET}/{id}/")).len(), 1);
    for url in ["http://10.88.0.1:8080/", "http://[2001:db8:4860::1]:8080/"] {
        assert!(
            wait_for_runtime(|| sb.http_get(url).as_deref() == Some(PAGE)),
            "no page from {url}"
        );
    }

    // StopPodSandbox: the CRI plugin calls DEL (netns still there), which
    // removes everything; RemovePodSandbox then finds nothing to do.
    c.cri(&["stopp", &id]).unwrap();
    assert_nothing_left(sb);
    assert!(sb.http_get("http://10.88.0.1:8080/").is_none());
    c.cri(&["rmp", &id]).unwrap();
}

/// A kind node's pod network: kindnet's conflist exactly as kindnetd writes
/// it (ptp + host-local in /run/cni-ipam-state, then portmap) under the CRI
/// plugin with kind's CNI settings (/opt/cni/bin, /etc/cni/net.d), and
/// loopback, all four binaries ours. A pod sandbox with a hostPort gets its
/// address, its page answers through the port, and StopPodSandbox leaves
/// nothing.
#[test]
fn cri_pod_sandbox_on_the_kindnet_conflist() {
    let c = Containerd::with_network(true, "10-kindnet.conflist");
    let sb = &c.sb;
    let (id, cgroup) = run_pod(&c, "kindpod");
    let status = c.cri(&["status", &id]).unwrap();
    let ips = status["ips"].as_array().unwrap().clone();
    assert_eq!(ips.len(), 1, "{status}");
    let ip = ips[0].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.244.0."), "{status}");
    // host-local's store is on the node's tmpfs /run, as on kind.
    let held = sb.must("sh", &["-c", "cat /run/cni-ipam-state/kindnet/10.244.0.*"]);
    assert_eq!(held, format!("{id}\r\neth0"));

    // ptp's layout in the pod: the address without its subnet route, the
    // gateway on-link, the default via the gateway; lo up.
    let netns = pod_netns(&cgroup, &id);
    let routes =
        cni_tests::must("nsenter", &[&netns, "ip", "route", "show"]).replace(" proto static", "");
    assert!(
        routes.contains("default via 10.244.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.0.1 dev eth0 scope link"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.0.0/24 via 10.244.0.1 dev eth0"),
        "{routes}"
    );
    let lo = cni_tests::must("nsenter", &[&netns, "ip", "-j", "addr", "show", "lo"]);
    assert!(lo.contains("127.0.0.1"), "{lo}");
    // The node: a host end with the gateway, a route to the pod, no bridge.
    let veths = sb.host.ip_json(&["-d", "link", "show", "type", "veth"]);
    assert_eq!(veths.as_array().unwrap().len(), 1, "{veths}");
    assert!(sb.host.ip_json(&["link", "show", "type", "bridge"]) == serde_json::json!([]));
    let page = || sb.http_get("http://10.244.0.1:8080/");
    assert!(
        wait_for_runtime(|| page().as_deref() == Some(PAGE)),
        "no page through the hostPort"
    );
    let objs = objects(&sb.host, "inet");
    assert_eq!(chain_names(&objs, &format!("pm/kindnet/{id}/")).len(), 1);

    c.cri(&["stopp", &id]).unwrap();
    let left = sb.must("sh", &["-c", "ls /run/cni-ipam-state/kindnet"]);
    assert!(!left.contains("10.244."), "{left}");
    let objs = objects(&sb.host, "inet");
    assert!(chain_names(&objs, "pm/kindnet/").is_empty());
    assert!(
        cni_tests::wait_for(
            || sb.host.ip_json(&["link", "show", "type", "veth"]) == serde_json::json!([])
        ),
        "the pod's veth was left"
    );
    assert!(page().is_none());
    c.cri(&["rmp", &id]).unwrap();
}
