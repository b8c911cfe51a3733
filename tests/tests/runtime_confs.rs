//! The default network configs of containerd, CRI-O and podman, as shipped in
//! conf/ for our plugins, run by the real `cni-run` the way the runtime
//! would: from inside a throwaway "host" namespace (so the bridge, the host
//! veths and the nftables rules land there), two containers per file, with
//! only `ipam.dataDir` patched so that no state lands in /var/lib/cni.
//!
//! Per file: ADD (result and kernel state), ping between the containers and
//! to the gateway in every family of the file, the masquerade chains, port
//! mappings with real TCP for the files that chain portmap, CHECK, then DEL
//! (twice) and nothing left.
//!
//! cniVersion of 11-crio-ipv4-bridge.conflist: "1.0.0", not "0.3.1".
//! CRI-O's contrib/cni has carried this file with both (its configs moved to
//! 1.0.0 in cri-o#6289; copies with 0.3.1 are still around), and the
//! dual-stack 10-crio-bridge.conflist beside it says "1.0.0". What decides
//! is behaviour, not bytes: CRI-O itself speaks 1.0.0, and a 0.3.1 list
//! can neither be CHECKed nor hands DEL its prevResult, so a runtime could
//! not verify or cleanly tear down what ADD made. Names, bridge, subnet and
//! options are upstream's exactly.
//!
//! The reference plugins (Debian's 1.1.1) give the same ADD results for
//! these files, but their portmap fails CHECK whenever a port is mapped: it
//! looks for the IPv4 rules in ip6tables too (containernetworking/plugins
//! #819). Ours passes, which is asserted below.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cni_tests::nft::{self, objects};
use cni_tests::{
    Netns, Server, TempDir, bin_dir, binary, must, reservations_in, tcp_fetch, wait_for,
};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// What one shipped config file promises, as the test checks it.
struct Runtime {
    file: &'static str,
    network: &'static str,
    version: &'static str,
    bridge: &'static str,
    /// One subnet per range set, in order; the gateway is the first address.
    subnets: &'static [&'static str],
    promisc: bool,
    hairpin: bool,
    portmap: bool,
    /// Reference plugins (from Debian's containernetworking-plugins) added
    /// at the end of the chain, as the runtime's stock file lists them.
    reference_tail: &'static [&'static str],
}

/// Where Debian installs the reference plugins.
const REFERENCE: &str = "/usr/lib/cni";

/// The host's own address on its uplink, for each family, and its
/// neighbour's on that LAN.
const UPLINK4: &str = "192.0.2.10";
const UPLINK6: &str = "2001:db8:ffff::10";
const LAN4: &str = "192.0.2.20";
const LAN6: &str = "2001:db8:ffff::20";

/// `n`th address of `subnet` (1 is the gateway host-local picks).
fn nth(subnet: &str, n: u32) -> IpAddr {
    match subnet.parse::<IpNetwork>().unwrap() {
        IpNetwork::V4(net) => net.nth(n).unwrap().into(),
        IpNetwork::V6(net) => net.nth(n.into()).unwrap().into(),
    }
}

fn prefix(subnet: &str) -> u8 {
    subnet.parse::<IpNetwork>().unwrap().prefix()
}

fn default_dst(subnet: &str) -> &'static str {
    if subnet.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    }
}

/// `host:port`, bracketed for IPv6.
fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

/// cnitool's (and cni-run's) container id for a netns path.
fn container_id(netns: &str) -> String {
    let sum = must("sh", &["-c", &format!("printf %s '{netns}' | sha512sum")]);
    format!("cnitool-{}", &sum[..20])
}

fn ok(out: &Output) -> String {
    cni_tests::succeeded(out.clone(), "cni-run")
}

/// One file's world: the host namespace, a neighbour on its LAN, the config
/// directory holding only that file, the IPAM store and cni-run's cache.
struct World {
    rt: &'static Runtime,
    host: Netns,
    lan: Netns,
    confs: TempDir,
    store: TempDir,
    cache: TempDir,
}

impl World {
    fn new(rt: &'static Runtime) -> World {
        let w = World {
            rt,
            host: Netns::new("rch"),
            lan: Netns::new("rcl"),
            confs: TempDir::new("rcconf"),
            store: TempDir::new("rcstore"),
            cache: TempDir::new("rccache"),
        };
        // The file as shipped, with only the store moved.
        let text = std::fs::read_to_string(conf_dir().join(rt.file)).unwrap();
        let mut conf: Value = serde_json::from_str(&text).unwrap();
        conf["plugins"][0]["ipam"]["dataDir"] = json!(w.store.path());
        for ty in rt.reference_tail {
            conf["plugins"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": ty}));
        }
        std::fs::write(
            w.confs.path().join(rt.file),
            serde_json::to_string_pretty(&conf).unwrap(),
        )
        .unwrap();
        // The host's loopback (local delivery), and its uplink: a veth to a
        // neighbour on the LAN (this kernel has no dummy links).
        w.host.ip(&["link", "set", "lo", "up"]);
        w.host.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &w.lan.name,
        ]);
        for (ns, link, v4, v6) in [
            (&w.host, "uplink", UPLINK4, UPLINK6),
            (&w.lan, "lan0", LAN4, LAN6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", link]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", link, "nodad"]);
            ns.ip(&["link", "set", link, "up"]);
        }
        w
    }

    /// `cni-run VERB <network> <container netns>` run inside the host
    /// namespace, with `CAP_ARGS` when given.
    fn cni_run(&self, verb: &str, netns: &str, cap_args: Option<&Value>) -> Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.host.path().display()))
            .arg(binary("cni-run"))
            .args([verb, self.rt.network, netns])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NETCONFPATH", self.confs.path())
            .env("CNI_PATH", self.cni_path())
            .env("CNI_CACHE_DIR", self.cache.path());
        if let Some(caps) = cap_args {
            c.env("CAP_ARGS", caps.to_string());
        }
        c.output().unwrap()
    }

    /// Ours first; the reference's directory after them when the chain
    /// needs plugins only it has.
    fn cni_path(&self) -> String {
        let ours = bin_dir().display().to_string();
        if self.rt.reference_tail.is_empty() {
            return ours;
        }
        assert!(
            Path::new(REFERENCE).join("firewall").is_file(),
            "the reference plugins are missing: make test installs containernetworking-plugins"
        );
        format!("{ours}:{REFERENCE}")
    }

    /// The reference firewall plugin's accept rules (iptables), as
    /// `iptables -S CNI-FORWARD` prints them.
    fn firewall_rules(&self) -> String {
        let out = cni_tests::cmd(
            "ip",
            &[
                "netns",
                "exec",
                &self.host.name,
                "iptables",
                "-S",
                "CNI-FORWARD",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn gateways(&self) -> Vec<IpAddr> {
        self.rt.subnets.iter().map(|s| nth(s, 1)).collect()
    }

    /// The host's links of `kind`, but its uplink.
    fn links_of_type(&self, kind: &str) -> Vec<String> {
        self.host
            .ip_json(&["link", "show", "type", kind])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .filter(|l| l != "uplink")
            .collect()
    }

    /// The bridge port `port` as `bridge -j -d link show` sees it.
    fn bridge_port(&self, port: &str) -> Value {
        self.host.bridge_json(&["-d", "link", "show", "dev", port])[0].clone()
    }

    /// Our chains in the host namespace whose names start with `prefix`.
    fn chains(&self, prefix: &str) -> Vec<String> {
        nft::chain_names(&objects(&self.host, "inet"), prefix)
    }

    fn reservations(&self) -> Vec<(String, String)> {
        reservations_in(&self.store.path().join(self.rt.network))
    }
}

/// A container: its namespace, cni-run's id for it, the host port mapped to
/// its TCP server (when the file has portmap), and what ADD returned.
struct Container {
    ns: Netns,
    id: String,
    host_port: u16,
    _server: Option<Server>,
    /// The address it got in each range set, in order.
    addrs: Vec<IpAddr>,
    result: Value,
}

impl Container {
    fn caps(&self, rt: &Runtime) -> Option<Value> {
        rt.portmap.then(|| {
            json!({"portMappings": [
                {"hostPort": self.host_port, "containerPort": 80, "protocol": "tcp"}
            ]})
        })
    }

    fn reply(&self) -> String {
        format!("from {}", self.id)
    }
}

/// ADD one container (the `n`th, from 0) and check what the result says.
fn add(w: &World, tag: &str, n: u32) -> Container {
    let rt = w.rt;
    let ns = Netns::new(tag);
    let id = container_id(&ns.path_str());
    let mut c = Container {
        _server: None,
        host_port: 8080 + n as u16,
        addrs: rt.subnets.iter().map(|s| nth(s, 2 + n)).collect(),
        id,
        ns,
        result: Value::Null,
    };
    if rt.portmap {
        c._server = Some(Server::start(&c.ns, 80, &c.reply()));
    }
    let out = ok(&w.cni_run("add", &c.ns.path_str(), c.caps(rt).as_ref()));
    let r: Value = serde_json::from_str(&out).unwrap();

    // The result comes in the file's version, and names the bridge, the host
    // end and the container's eth0 in its namespace.
    assert_eq!(r["cniVersion"], rt.version, "{r}");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(ifs[0]["name"], rt.bridge);
    assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"), "{r}");
    assert_eq!(ifs[1].get("sandbox"), None, "{r}");
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], c.ns.path_str());
    // One address per range set, each with its gateway, on eth0.
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), rt.subnets.len(), "{r}");
    for ((ip, subnet), addr) in ips.iter().zip(rt.subnets).zip(&c.addrs) {
        assert_eq!(ip["address"], format!("{addr}/{}", prefix(subnet)), "{r}");
        assert_eq!(ip["gateway"], nth(subnet, 1).to_string(), "{r}");
        assert_eq!(ip["interface"], 2, "{r}");
        // 0.3.x/0.4.0 results carry the family.
        if rt.version == "0.4.0" {
            let family = if addr.is_ipv4() { "4" } else { "6" };
            assert_eq!(ip["version"], family, "{r}");
        } else {
            assert_eq!(ip.get("version"), None, "{r}");
        }
    }
    // A default route per family, from IPAM's routes or isDefaultGateway.
    let mut dsts: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    dsts.sort();
    let mut want: Vec<&str> = rt.subnets.iter().map(|s| default_dst(s)).collect();
    want.sort();
    assert_eq!(dsts, want, "{r}");
    c.result = r;
    c
}

/// Everything ADD should have left in the kernel for container `c`.
fn check_kernel(w: &World, c: &Container) {
    let rt = w.rt;
    let host_veth = c.result["interfaces"][1]["name"].as_str().unwrap();
    // The bridge holds every gateway; its promisc flag is the file's.
    let br = w.host.addrs(rt.bridge);
    for (gw, subnet) in w.gateways().iter().zip(rt.subnets) {
        let want = format!("{gw}/{}", prefix(subnet));
        assert!(br.contains(&want), "{want} not on {}: {br:?}", rt.bridge);
    }
    let flags = w.host.link_flags(rt.bridge);
    assert_eq!(flags.contains(&"PROMISC".into()), rt.promisc, "{flags:?}");
    // The host end is a port of the bridge, hairpin as the file says.
    let port = w.bridge_port(host_veth);
    assert_eq!(port["master"], rt.bridge, "{port}");
    assert_eq!(port["hairpin"], rt.hairpin, "{port}");
    // eth0 holds the addresses; the default route of each family goes via
    // its gateway.
    let eth0 = c.ns.addrs("eth0");
    for (addr, subnet) in c.addrs.iter().zip(rt.subnets) {
        let want = format!("{addr}/{}", prefix(subnet));
        assert!(eth0.contains(&want), "{want} not on eth0: {eth0:?}");
    }
    for (gw, addr) in w.gateways().iter().zip(&c.addrs) {
        let family = if addr.is_ipv4() { "-4" } else { "-6" };
        let routes = c.ns.ip_json(&[family, "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], gw.to_string(), "{routes}");
        assert_eq!(routes[0]["dev"], "eth0", "{routes}");
    }
}

/// ipMasq: each container's record chain, and its addresses in the maps.
fn check_masquerade(w: &World, cs: &[&Container]) {
    let chain = |c: &Container| format!("masq/{}/{}/eth0", w.rt.network, c.id);
    let mut want: Vec<String> = cs.iter().map(|c| chain(c)).collect();
    want.sort();
    assert_eq!(w.chains("masq/"), want);
    let objs = objects(&w.host, "inet");
    for map in ["masq4", "masq6"] {
        let mut want: Vec<(String, String)> = cs
            .iter()
            .flat_map(|c| {
                c.addrs
                    .iter()
                    .filter(|a| a.is_ipv4() == (map == "masq4"))
                    .map(|a| (a.to_string(), chain(c)))
            })
            .collect();
        want.sort();
        assert_eq!(nft::tagged(&objs, map, "masq"), want, "{map}");
    }
}

/// Run one shipped file through ADD, traffic, CHECK and DEL.
fn exercise(rt: &'static Runtime) {
    let w = World::new(rt);
    let a = add(&w, "rca", 0);
    let b = add(&w, "rcb", 1);
    for c in [&a, &b] {
        check_kernel(&w, c);
    }
    // Two host ends, both on the one bridge the file names.
    assert_eq!(w.links_of_type("bridge"), [rt.bridge]);
    assert_eq!(w.links_of_type("veth").len(), 2);

    // The containers reach each other and the gateway in every family.
    for (i, gw) in w.gateways().iter().enumerate() {
        let (ta, tb, gw) = (
            a.addrs[i].to_string(),
            b.addrs[i].to_string(),
            gw.to_string(),
        );
        assert!(wait_for(|| a.ns.ping(&tb)), "a cannot reach b at {tb}");
        assert!(wait_for(|| b.ns.ping(&ta)), "b cannot reach a at {ta}");
        assert!(
            wait_for(|| a.ns.ping(&gw)),
            "a cannot reach the gateway {gw}"
        );
        assert!(
            wait_for(|| b.ns.ping(&gw)),
            "b cannot reach the gateway {gw}"
        );
    }

    check_masquerade(&w, &[&a, &b]);
    // The reference firewall, chained after ours, accepts what the
    // containers send.
    if rt.reference_tail.contains(&"firewall") {
        let rules = w.firewall_rules();
        for c in [&a, &b] {
            let accept = format!("-A CNI-FORWARD -s {}/32 -j ACCEPT", c.addrs[0]);
            assert!(rules.contains(&accept), "{accept} not in {rules}");
        }
    }

    // Port mappings: each container's server through its host port, in
    // every family of the file: from the host itself at its uplink address
    // and at the gateway, and from the neighbour on the LAN.
    if rt.portmap {
        let mut want: Vec<String> = [&a, &b]
            .iter()
            .map(|c| format!("pm/{}/{}/eth0", rt.network, c.id))
            .collect();
        want.sort();
        assert_eq!(w.chains("pm/"), want);
        for c in [&a, &b] {
            for (gw, subnet) in w.gateways().iter().zip(rt.subnets) {
                let uplink = if subnet.contains(':') {
                    UPLINK6
                } else {
                    UPLINK4
                };
                let gw = gw.to_string();
                for (from, dst) in [(&w.host, uplink), (&w.host, &gw), (&w.lan, uplink)] {
                    let to = sock(dst, c.host_port);
                    assert!(
                        wait_for(|| tcp_fetch(from, &to) == Some(c.reply())),
                        "{to} from {} does not reach {}",
                        from.name,
                        c.id
                    );
                }
            }
        }
    } else {
        assert_eq!(w.chains("pm/"), Vec::<String>::new());
    }

    for c in [&a, &b] {
        ok(&w.cni_run("check", &c.ns.path_str(), c.caps(rt).as_ref()));
    }
    // From 1.1.0 on: STATUS is ready, and GC keeps both live attachments
    // (cni-run passes the ones it has cached as valid).
    if rt.version == "1.1.0" {
        ok(&w.cni_run("status", &a.ns.path_str(), None));
        ok(&w.cni_run("gc", &a.ns.path_str(), None));
        assert_eq!(w.reservations().len(), 2 * rt.subnets.len());
        assert_eq!(w.chains("masq/").len(), 2);
        assert_eq!(w.chains("pm/").len(), 2);
        for c in [&a, &b] {
            ok(&w.cni_run("check", &c.ns.path_str(), None));
        }
    }

    // DEL: a as a runtime does, with its port mappings; b once its netns
    // is gone (a runtime that crashed, a node that rebooted) and without
    // them (a runtime need not pass them again). Then both again, which
    // finds nothing and succeeds.
    let host_ports = [a.host_port, b.host_port];
    let (a_path, b_path) = (a.ns.path_str(), b.ns.path_str());
    ok(&w.cni_run("del", &a_path, a.caps(rt).as_ref()));
    assert!(!a.ns.link_names().contains(&"eth0".to_string()));
    drop(b);
    assert!(!Path::new(&b_path).exists());
    ok(&w.cni_run("del", &b_path, None));
    ok(&w.cni_run("del", &a_path, a.caps(rt).as_ref()));
    ok(&w.cni_run("del", &b_path, None));
    // b's host end goes with its namespace, which the kernel tears down in
    // the background.
    assert!(
        wait_for(|| w.links_of_type("veth").is_empty()),
        "{:?} left after DEL",
        w.links_of_type("veth")
    );
    assert!(
        w.reservations().is_empty(),
        "reservations left: {:?}",
        w.reservations()
    );
    assert!(w.chains("masq/").is_empty(), "{:?}", w.chains("masq/"));
    assert!(w.chains("pm/").is_empty(), "{:?}", w.chains("pm/"));
    let rules = w.firewall_rules();
    assert!(!rules.contains("-s 10."), "firewall rules left: {rules}");
    if rt.portmap {
        for port in host_ports {
            let to = sock(UPLINK4, port);
            assert_eq!(tcp_fetch(&w.host, &to), None, "{to} still mapped");
        }
    }
    // The cache forgot both attachments; the bridge stays, as with the
    // reference.
    let cached = std::fs::read_dir(w.cache.path().join("results"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0);
    assert_eq!(w.links_of_type("bridge"), [rt.bridge]);
}

/// containerd's documented default (script/setup/install-cni): dual stack,
/// promiscuous bridge, portmap.
#[test]
fn containerd_net() {
    exercise(&Runtime {
        file: "10-containerd-net.conflist",
        network: "containerd-net",
        version: "1.0.0",
        bridge: "cni0",
        subnets: &["10.88.0.0/16", "2001:db8:4860::/64"],
        promisc: true,
        hairpin: false,
        portmap: true,
        reference_tail: &[],
    });
}

/// CRI-O's contrib/cni IPv4 bridge.
#[test]
fn crio_ipv4_bridge() {
    exercise(&Runtime {
        file: "11-crio-ipv4-bridge.conflist",
        network: "crio",
        version: "1.0.0",
        bridge: "cni0",
        subnets: &["10.85.0.0/16"],
        promisc: false,
        hairpin: true,
        portmap: false,
        reference_tail: &[],
    });
}

/// CRI-O's contrib/cni dual-stack bridge.
#[test]
fn crio_bridge_dual_stack() {
    exercise(&Runtime {
        file: "10-crio-bridge.conflist",
        network: "crio",
        version: "1.0.0",
        bridge: "cni0",
        subnets: &["10.85.0.0/16", "1100:200::/24"],
        promisc: false,
        hairpin: true,
        portmap: false,
        reference_tail: &[],
    });
}

/// podman 4.x's CNI default, without the reference-only firewall and tuning.
#[test]
fn podman_bridge() {
    exercise(&Runtime {
        file: "87-podman-bridge.conflist",
        network: "podman",
        version: "0.4.0",
        bridge: "cni-podman0",
        subnets: &["10.88.0.0/16"],
        promisc: false,
        hairpin: true,
        portmap: true,
        reference_tail: &[],
    });
}

/// Our own example (the demo's): isDefaultGateway, portmap, then loopback,
/// which passes the bridge's result through.
#[test]
fn cni_rs_bridge() {
    exercise(&Runtime {
        file: "10-cni-rs-bridge.conflist",
        network: "cni-rs-bridge",
        version: "1.1.0",
        bridge: "cni0",
        subnets: &["10.88.0.0/16"],
        promisc: false,
        hairpin: true,
        portmap: true,
        reference_tail: &[],
    });
}

/// The stock podman file unchanged, firewall and tuning included, for a
/// node that replaces only bridge, host-local and portmap by ours and keeps
/// the reference's firewall and tuning: they chain after ours.
#[test]
fn podman_stock_file_with_reference_firewall_and_tuning() {
    exercise(&Runtime {
        file: "87-podman-bridge.conflist",
        network: "podman",
        version: "0.4.0",
        bridge: "cni-podman0",
        subnets: &["10.88.0.0/16"],
        promisc: false,
        hairpin: true,
        portmap: true,
        reference_tail: &["firewall", "tuning"],
    });
}
