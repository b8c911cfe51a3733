//! The ptp plugin (with host-local) in real namespaces: a throwaway "host"
//! namespace where the host ends, their routes and the masquerade land, and
//! container namespaces attached to it. Kernel state is read back with
//! `ip -j` and `nft -j`; connectivity is checked with ping between the
//! namespaces.

use std::sync::atomic::{AtomicU8, Ordering};

use cni_tests::nft::{chain_names, objects};
use cni_tests::{Call, Netns, TempDir};
use serde_json::{Value, json};

struct World {
    host: Netns,
    store: TempDir,
    /// Third octet of 10.230.N.0/24 (and fd30:N::/64).
    n: u8,
}

impl World {
    fn new() -> World {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        World {
            host: Netns::new("pth"),
            store: TempDir::new("ptstore"),
            n: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn ip(&self, last: u8) -> String {
        format!("10.230.{}.{last}", self.n)
    }

    fn ip6(&self, last: u8) -> String {
        format!("fd30:{}::{last:x}", self.n)
    }

    /// kindnet's shape: ptp with host-local and a default route, both families.
    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version, "name": "ptpnet", "type": "ptp", "mtu": 1400,
            "ipam": {
                "type": "host-local", "dataDir": self.store.path(),
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "ranges": [
                    [{"subnet": format!("10.230.{}.0/24", self.n)}],
                    [{"subnet": format!("fd30:{}::/64", self.n)}]
                ]
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn call(&self, verb: &str, id: &str, c: &Value) -> Call {
        Call::new("ptp", verb)
            .in_host(&self.host)
            .var("CNI_CONTAINERID", Some(id))
            .conf(c)
    }

    fn add(&self, ns: &Netns, id: &str, c: &Value) -> Value {
        self.call("ADD", id, c).netns(ns).run().success()
    }

    fn with_prev(c: &Value, prev: &Value) -> Value {
        let mut c = c.clone();
        c["prevResult"] = prev.clone();
        c
    }

    fn reservations(&self) -> usize {
        cni_tests::reservations_in(&self.store.path().join("ptpnet")).len()
    }

    fn veths(&self) -> Vec<Value> {
        self.host
            .ip_json(&["-d", "link", "show", "type", "veth"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// `ip -j route show` of a family in `ns`, as (dst, gateway, scope, prefsrc).
    fn routes(ns: &Netns, family: &str) -> Vec<(String, String, String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        ns.ip_json(&[family, "route", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    s(&r["dst"]),
                    s(&r["gateway"]),
                    s(&r["scope"]),
                    s(&r["prefsrc"]),
                )
            })
            .collect()
    }

    fn masq_chains(&self) -> Vec<String> {
        chain_names(&objects(&self.host, "inet"), "masq/")
    }
}

#[test]
fn pods_reach_each_other_and_the_host_through_the_reference_route_layout() {
    let w = World::new();
    let (a, b) = (Netns::new("pta"), Netns::new("ptb"));
    let c = w.conf("0.3.1", json!({}));
    let ra = w.add(&a, "ctr-a", &c);
    w.add(&b, "ctr-b", &c);

    // The result: host end, then the container end in its sandbox; the
    // addresses on interface 1, IPAM's routes.
    let ifs = ra["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{ra}");
    assert!(ifs[0]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(ifs[0].get("sandbox"), None);
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], a.path_str());
    assert_eq!(ra["ips"][0]["address"], format!("{}/24", w.ip(2)));
    assert_eq!(ra["ips"][0]["gateway"], w.ip(1));
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["ips"][0]["version"], "4");
    assert_eq!(ra["ips"][1]["address"], format!("{}/64", w.ip6(2)));
    assert_eq!(ra["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));

    // The container: its gateway on-link, its subnet via the gateway, the
    // default via the gateway; no on-link route to the subnet.
    let v4 = World::routes(&a, "-4");
    let subnet = format!("10.230.{}.0/24", w.n);
    assert!(
        v4.contains(&("default".into(), w.ip(1), String::new(), String::new())),
        "{v4:?}"
    );
    assert!(
        v4.contains(&(w.ip(1), String::new(), "link".into(), w.ip(2))),
        "{v4:?}"
    );
    assert!(
        v4.contains(&(subnet.clone(), w.ip(1), String::new(), w.ip(2))),
        "{v4:?}"
    );
    assert!(
        !v4.iter().any(|r| r.0 == subnet && r.1.is_empty()),
        "{v4:?}"
    );
    let v6 = World::routes(&a, "-6");
    assert!(
        v6.iter().any(|r| r.0 == "default" && r.1 == w.ip6(1)),
        "{v6:?}"
    );
    assert!(
        v6.iter()
            .any(|r| r.0 == format!("fd30:{}::/64", w.n) && r.1 == w.ip6(1)),
        "{v6:?}"
    );
    // Gratuitous ARP on up (set through netlink, not /proc/sys).
    assert_eq!(a.sysctl("net.ipv4.conf.eth0.arp_notify"), "1");
    // The MTU of both ends.
    assert_eq!(a.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1400);

    // The host: each host end holds the gateways alone, and a route to each
    // container address goes to its own end.
    let host_end = ifs[0]["name"].as_str().unwrap();
    let addrs = w.host.addrs(host_end);
    assert!(addrs.contains(&format!("{}/32", w.ip(1))), "{addrs:?}");
    assert!(addrs.contains(&format!("{}/128", w.ip6(1))), "{addrs:?}");
    let hr = World::routes(&w.host, "-4");
    assert!(hr.iter().any(|r| r.0 == w.ip(2) && r.2 == "host"), "{hr:?}");
    assert_eq!(
        w.host.ip_json(&["-d", "link", "show", host_end])[0]["ifalias"],
        "cni-rs ptpnet/ctr-a/eth0"
    );
    assert_eq!(w.host.ip_json(&["link", "show", host_end])[0]["mtu"], 1400);

    // Traffic: pod to pod in both families, pod to its gateway, host to pod.
    assert!(a.ping(&w.ip(3)), "a cannot reach b");
    assert!(b.ping(&w.ip(2)), "b cannot reach a");
    assert!(a.ping(&w.ip6(3)), "a cannot reach b over IPv6");
    assert!(a.ping(&w.ip(1)), "a cannot reach its gateway");
    assert!(w.host.ping(&w.ip(2)), "the host cannot reach a");
    assert!(w.host.ping(&w.ip6(3)), "the host cannot reach b over IPv6");
    assert_eq!(w.host.sysctl("net.ipv4.ip_forward"), "1");

    // DEL leaves nothing: no host end, no route, no reservation.
    for (ns, id) in [(&a, "ctr-a"), (&b, "ctr-b")] {
        w.call("DEL", id, &c).netns(ns).run().silent_success();
    }
    assert!(w.veths().is_empty());
    assert!(
        !World::routes(&w.host, "-4")
            .iter()
            .any(|r| r.0.starts_with("10.230."))
    );
    assert_eq!(w.reservations(), 0);
}

#[test]
fn masquerade_is_installed_and_removed_even_without_a_namespace() {
    let w = World::new();
    let a = Netns::new("pta");
    let c = w.conf("1.0.0", json!({"ipMasq": true}));
    let ra = w.add(&a, "ctr-a", &c);
    assert_eq!(w.masq_chains(), ["masq/ptpnet/ctr-a/eth0"]);
    let text = serde_json::to_string(&objects(&w.host, "inet")).unwrap();
    assert!(text.contains(&w.ip(2)), "{text}");
    // DEL with an empty CNI_NETNS (containerd after the task exited): the
    // reference leaks the masquerade here; the owner's record finds it.
    w.call("DEL", "ctr-a", &World::with_prev(&c, &ra))
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert!(w.masq_chains().is_empty());
    assert_eq!(w.reservations(), 0);
    // Its host end carried its owner, so it went too.
    assert!(w.veths().is_empty());
    // Again: idempotent.
    w.call("DEL", "ctr-a", &c)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
}

#[test]
fn check_catches_drift() {
    let w = World::new();
    let a = Netns::new("pta");
    let c = w.conf("1.0.0", json!({"ipMasq": true}));
    let ra = w.add(&a, "ctr-a", &c);
    let prev = World::with_prev(&c, &ra);
    let check = || w.call("CHECK", "ctr-a", &prev).netns(&a).run();
    check().silent_success();
    // Without prevResult CHECK cannot work.
    w.call("CHECK", "ctr-a", &c).netns(&a).run().error(7);

    // The host's route to the container, gone.
    let host_end = ra["interfaces"][0]["name"].as_str().unwrap().to_string();
    w.host.ip(&["route", "del", &format!("{}/32", w.ip(2))]);
    let e = check().error(101);
    assert!(e["msg"].as_str().unwrap().contains("routes"), "{e}");
    w.host
        .ip(&["route", "add", &format!("{}/32", w.ip(2)), "dev", &host_end]);
    check().silent_success();

    // The container's route via the gateway, gone.
    let subnet = format!("10.230.{}.0/24", w.n);
    a.ip(&["route", "del", &subnet]);
    check().error(101);
    a.ip(&[
        "route",
        "add",
        &subnet,
        "via",
        &w.ip(1),
        "dev",
        "eth0",
        "src",
        &w.ip(2),
    ]);
    check().silent_success();

    // The masquerade, flushed behind its back.
    cni_tests::must(
        "ip",
        &[
            "netns",
            "exec",
            &w.host.name,
            "nft",
            "flush",
            "map",
            "inet",
            "cni-rs",
            "masq4",
        ],
    );
    let e = check().error(101);
    assert!(e["msg"].as_str().unwrap().contains("masquerade"), "{e}");

    // An address, gone.
    a.ip(&["addr", "del", &format!("{}/24", w.ip(2)), "dev", "eth0"]);
    check().error(101);
    w.call("DEL", "ctr-a", &prev)
        .netns(&a)
        .run()
        .silent_success();
}

#[test]
fn del_variants_are_idempotent_and_delete_only_their_own() {
    let w = World::new();
    let c = w.conf("1.0.0", json!({}));
    let (x, y) = (Netns::new("ptx"), Netns::new("pty"));
    w.add(&x, "ctr-x", &c);
    let ry = w.add(&y, "ctr-y", &c);
    // X's DEL fed Y's result: X's address goes, Y keeps its host end.
    w.call("DEL", "ctr-x", &World::with_prev(&c, &ry))
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert!(y.ping(&w.ip(1)), "Y lost its network");
    assert_eq!(w.reservations(), 2, "Y's two addresses");
    // A namespace that is gone: its veth went with it.
    let path = x.path_str();
    drop(x);
    for _ in 0..2 {
        w.call("DEL", "ctr-x", &c)
            .var("CNI_NETNS", Some(&path))
            .run()
            .silent_success();
    }
    // Y's own DEL, twice.
    for _ in 0..2 {
        w.call("DEL", "ctr-y", &c).netns(&y).run().silent_success();
    }
    assert_eq!(w.reservations(), 0);
    assert!(
        cni_tests::wait_for(|| w.veths().is_empty()),
        "a veth was left"
    );
}

#[test]
fn a_failed_add_rolls_back_everything() {
    let w = World::new();
    let a = Netns::new("pta");
    // A route whose gateway is unreachable fails in the container, after
    // IPAM, the pair, the host routes and the masquerade.
    let mut c = w.conf("1.0.0", json!({"ipMasq": true}));
    c["ipam"]["routes"] = json!([{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}]);
    let e = w.call("ADD", "ctr-a", &c).netns(&a).run();
    assert!(!e.ok(), "{}", e.stdout());
    // The container's requests go in one datagram; the refusal still names
    // the request it refused.
    assert!(e.stdout().contains("add route"), "{}", e.stdout());
    assert!(w.veths().is_empty());
    assert_eq!(a.link_names(), ["lo"]);
    assert_eq!(w.reservations(), 0);
    assert!(w.masq_chains().is_empty());
    assert!(
        !World::routes(&w.host, "-4")
            .iter()
            .any(|r| r.0.starts_with("10.230."))
    );
    // An interface name that exists: 100, nothing made.
    let ok = w.conf("1.0.0", json!({}));
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth9",
    ]);
    w.call("ADD", "ctr-a", &ok).netns(&a).run().error(100);
    assert!(w.veths().is_empty());
    assert_eq!(w.reservations(), 0);
}

#[test]
fn gc_and_status() {
    let w = World::new();
    let (a, b) = (Netns::new("pta"), Netns::new("ptb"));
    let c = w.conf("1.1.0", json!({"ipMasq": true}));
    w.add(&a, "ctr-a", &c);
    w.add(&b, "ctr-b", &c);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    Call::new("ptp", "GC")
        .in_host(&w.host)
        .conf(&gc)
        .run()
        .silent_success();
    assert_eq!(w.masq_chains(), ["masq/ptpnet/ctr-a/eth0"]);
    assert_eq!(w.reservations(), 2, "one address per family of ctr-a");

    Call::new("ptp", "STATUS")
        .in_host(&w.host)
        .conf(&c)
        .run()
        .silent_success();
    // A full range: not available (50), as host-local says.
    let mut full = w.conf("1.1.0", json!({}));
    full["ipam"]["ranges"] = json!([[{"subnet": "10.231.0.0/30"}]]);
    full["ipam"]["dataDir"] = json!(w.store.path().join("full"));
    let f = Netns::new("ptf");
    w.add(&f, "ctr-f", &full);
    Call::new("ptp", "STATUS")
        .in_host(&w.host)
        .conf(&full)
        .run()
        .error(50);
    w.call("DEL", "ctr-f", &full)
        .netns(&f)
        .run()
        .silent_success();
    w.call("DEL", "ctr-a", &c).netns(&a).run().silent_success();
    w.call("DEL", "ctr-b", &c).netns(&b).run().silent_success();
    assert!(w.masq_chains().is_empty());
}

#[test]
fn results_in_every_version() {
    let w = World::new();
    for (i, v) in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ]
    .iter()
    .enumerate()
    {
        let ns = Netns::new("ptv");
        let mut c = w.conf(v, json!({"dns": {"nameservers": ["10.96.0.10"]}}));
        if v.starts_with("0.1") || v.starts_with("0.2") {
            // One address per family before 0.3.0.
            c["ipam"]["ranges"] = json!([[{"subnet": format!("10.230.{}.0/24", w.n)}]]);
            c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        }
        let id = format!("ctr-{i}");
        let r = w.add(&ns, &id, &c);
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.10"]), "{v}");
        if v.starts_with("0.1") || v.starts_with("0.2") {
            assert!(
                r["ip4"]["ip"].as_str().unwrap().starts_with("10.230."),
                "{r}"
            );
            assert_eq!(r.get("interfaces"), None, "{r}");
        } else {
            assert_eq!(r["interfaces"].as_array().unwrap().len(), 2, "{r}");
            assert_eq!(r["ips"][0]["interface"], 1, "{r}");
            let has_version = r["ips"][0].get("version").is_some();
            assert_eq!(has_version, v.starts_with("0."), "{v}: {r}");
        }
        if *v == "1.1.0" {
            assert_eq!(r["interfaces"][1]["mtu"], 1400, "{r}");
        }
        if v >= &"0.4.0" {
            w.call("CHECK", &id, &World::with_prev(&c, &r))
                .netns(&ns)
                .run()
                .silent_success();
        }
        w.call("DEL", &id, &c).netns(&ns).run().silent_success();
    }
    assert_eq!(w.reservations(), 0);
    assert!(w.veths().is_empty());
}
