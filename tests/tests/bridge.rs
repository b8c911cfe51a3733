//! The bridge plugin (with host-local) in real namespaces: a throwaway "host"
//! namespace where the bridge, host veths and rules land, and container
//! namespaces attached to it. Kernel state is read back with ip/bridge/nft -j
//! and connectivity is checked with ping between the namespaces.

use std::sync::atomic::{AtomicU8, Ordering};

use cni_tests::nft::{self, objects};
use cni_tests::{Call, Netns, TempDir, must, unique};
use serde_json::{Value, json};

/// One test's world: a host namespace, a bridge name, an IPAM store and a
/// subnet of its own so tests can run in parallel.
struct World {
    host: Netns,
    bridge: String,
    store: TempDir,
    /// Third octet of 10.200.N.0/24 (and fd00:N::/64).
    n: u8,
}

impl World {
    fn new() -> World {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        World {
            host: Netns::new("brh"),
            bridge: unique("cnb"),
            store: TempDir::new("brstore"),
            n: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn subnet(&self) -> String {
        format!("10.200.{}.0/24", self.n)
    }

    fn ip(&self, last: u8) -> String {
        format!("10.200.{}.{last}", self.n)
    }

    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": "brnet",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": self.subnet(), "dataDir": self.store.path()}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn call(&self, verb: &str, id: &str, c: &Value) -> Call {
        Call::new("bridge", verb)
            .in_host(&self.host)
            .var("CNI_CONTAINERID", Some(id))
            .conf(c)
    }

    fn add(&self, ns: &Netns, id: &str, c: &Value) -> Value {
        self.call("ADD", id, c).netns(ns).run().success()
    }

    fn links_of_type(&self, kind: &str) -> Vec<Value> {
        self.host
            .ip_json(&["-d", "link", "show", "type", kind])
            .as_array()
            .unwrap()
            .clone()
    }

    fn bridge_ports(&self) -> Vec<Value> {
        self.host
            .bridge_json(&["-d", "link", "show"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn reservations(&self) -> usize {
        cni_tests::reservations_in(&self.store.path().join("brnet")).len()
    }
}

#[test]
fn two_containers_reach_each_other_and_the_gateway() {
    let w = World::new();
    let (a, b) = (Netns::new("bra"), Netns::new("brb"));
    let c = w.conf("1.1.0", json!({"isDefaultGateway": true}));
    let ra = w.add(&a, "ctr-a", &c);
    let rb = w.add(&b, "ctr-b", &c);

    // The result: bridge, host veth, container interface; ips point at it.
    let ifs = ra["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3);
    assert_eq!(ifs[0]["name"], w.bridge);
    assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], a.path_str());
    assert_eq!(
        ra["ips"][0],
        json!({"address": format!("{}/24", w.ip(2)), "gateway": w.ip(1), "interface": 2})
    );
    assert_eq!(ra["routes"], json!([{"dst": "0.0.0.0/0", "gw": w.ip(1)}]));
    assert_eq!(rb["ips"][0]["address"], format!("{}/24", w.ip(3)));

    // Kernel state: the bridge holds the gateway, both host ends are its ports.
    let br = w.host.ip_json(&["-j", "addr", "show", "dev", &w.bridge]);
    assert!(
        br[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == w.ip(1))
    );
    let ports: Vec<String> = w
        .bridge_ports()
        .iter()
        .map(|p| p["ifname"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ports.contains(&ifs[1]["name"].as_str().unwrap().to_owned()),
        "{ports:?}"
    );
    assert_eq!(
        a.addrs("eth0")
            .iter()
            .filter(|x| x.starts_with("10."))
            .count(),
        1
    );
    let default = a.ip_json(&["route", "show", "default"]);
    assert_eq!(default[0]["gateway"], w.ip(1));
    // The mac reported is the interface's.
    let mac = a.ip_json(&["link", "show", "eth0"])[0]["address"].clone();
    assert_eq!(ifs[2]["mac"], mac);

    assert!(a.ping(&w.ip(3)), "a cannot reach b");
    assert!(b.ping(&w.ip(2)), "b cannot reach a");
    assert!(a.ping(&w.ip(1)), "a cannot reach the gateway");
    assert_eq!(
        must(
            "ip",
            &[
                "netns",
                "exec",
                &w.host.name,
                "sysctl",
                "-n",
                "net.ipv4.ip_forward"
            ]
        )
        .trim(),
        "1"
    );

    // CHECK with the result, then DEL.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra.clone();
    w.call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();
    w.call("DEL", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();
    assert!(!a.link_names().contains(&"eth0".to_string()));
    assert_eq!(w.reservations(), 1);
    assert_eq!(w.links_of_type("veth").len(), 1);
    // The bridge stays.
    assert_eq!(w.links_of_type("bridge").len(), 1);
}

#[test]
fn check_catches_a_removed_address_and_a_removed_route() {
    let w = World::new();
    let a = Netns::new("bra");
    let c = w.conf("1.0.0", json!({"isDefaultGateway": true}));
    let mut with_prev = c.clone();
    with_prev["prevResult"] = w.add(&a, "ctr-a", &c);
    w.call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();

    a.ip(&["route", "del", "default"]);
    let e = w
        .call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .error(101);
    assert!(e["msg"].as_str().unwrap().contains("0.0.0.0/0"), "{e}");
    a.ip(&["route", "add", "default", "via", &w.ip(1)]);
    w.call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();

    a.ip(&["addr", "del", &format!("{}/24", w.ip(2)), "dev", "eth0"]);
    let e = w
        .call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .error(101);
    assert!(e["msg"].as_str().unwrap().contains(&w.ip(2)), "{e}");

    // Without prevResult CHECK cannot work.
    w.call("CHECK", "ctr-a", &c).netns(&a).run().error(7);
}

#[test]
fn del_variants_are_idempotent_and_release_everything() {
    let w = World::new();
    let c = w.conf("1.0.0", json!({"ipMasq": true}));

    // Empty CNI_NETNS (containerd after the task exited): address and rules go.
    let a = Netns::new("bra");
    let ra = w.add(&a, "ctr-a", &c);
    assert!(w.host.nft_table("inet", "cni-rs").is_some());
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra;
    w.call("DEL", "ctr-a", &with_prev)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert_eq!(w.reservations(), 0);
    let t = w.host.nft_table("inet", "cni-rs").unwrap();
    assert!(!t.to_string().contains("ctr-a"), "{t}");
    // Its host veth carried its owner, so it went too (and the pair with it).
    assert!(w.links_of_type("veth").is_empty());
    assert!(a.link_names().iter().all(|l| l != "eth0"));

    // A namespace that is gone: its veth went with it.
    let b = Netns::new("brb");
    w.add(&b, "ctr-b", &c);
    let path = b.path_str();
    drop(b);
    w.call("DEL", "ctr-b", &c)
        .var("CNI_NETNS", Some(&path))
        .run()
        .silent_success();
    w.call("DEL", "ctr-b", &c)
        .var("CNI_NETNS", Some(&path))
        .run()
        .silent_success();
    assert_eq!(w.reservations(), 0);
    // The kernel destroys a deleted namespace's veth asynchronously.
    assert!(
        cni_tests::wait_for(|| w.links_of_type("veth").is_empty()),
        "veth left after its namespace went"
    );
}

/// DEL without a namespace trusts the prevResult for the host veth's name,
/// but deletes only a veth whose alias names this very attachment: a
/// prevResult naming another container's veth leaves that one alone.
#[test]
fn del_without_netns_deletes_only_its_own_veth() {
    let w = World::new();
    let c = w.conf("1.0.0", json!({}));
    let (x, y) = (Netns::new("brx"), Netns::new("bry"));
    w.add(&x, "ctr-x", &c);
    let ry = w.add(&y, "ctr-y", &c);
    let host_of = |r: &Value| r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let y_veth = host_of(&ry);
    let alias = |name: &str| w.host.ip_json(&["-d", "link", "show", name])[0]["ifalias"].clone();
    assert_eq!(alias(&y_veth), json!("cni-rs brnet/ctr-y/eth0"));
    // A bridge port has no IPv6 address of its own (addrgenmode none).
    let port = &w.host.ip_json(&["-d", "link", "show", &y_veth])[0];
    assert_eq!(port["inet6_addr_gen_mode"], "none", "{port}");
    assert!(
        w.host.addrs(&y_veth).is_empty(),
        "{:?}",
        w.host.addrs(&y_veth)
    );
    // X's DEL, fed Y's result: X's address goes, Y's veth stays.
    let mut forged = c.clone();
    forged["prevResult"] = ry.clone();
    w.call("DEL", "ctr-x", &forged)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert!(w.host.link_names().contains(&y_veth));
    assert_eq!(y.link_names().len(), 2, "{:?}", y.link_names());
    assert!(y.ping(&w.ip(1)), "Y lost its network");
    // The same for another interface name of Y, and another network name.
    let mut other = forged.clone();
    other["name"] = json!("othernet");
    w.call("DEL", "ctr-y", &other)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    w.call("DEL", "ctr-y", &forged)
        .var("CNI_NETNS", Some(""))
        .var("CNI_IFNAME", Some("eth1"))
        .run()
        .silent_success();
    assert!(w.host.link_names().contains(&y_veth));
    // Y's own DEL without a namespace deletes it.
    w.call("DEL", "ctr-y", &forged)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert!(!w.host.link_names().contains(&y_veth));
}

/// An IPAM type that is bridge itself (by name, or a link to the same
/// binary) would delegate without end: refused with 7 before anything is
/// created.
#[test]
fn ipam_naming_the_plugin_itself_is_refused() {
    let w = World::new();
    let bin = TempDir::new("brself");
    std::os::unix::fs::symlink(cni_tests::binary("bridge"), bin.path().join("mybridge")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        cni_tests::bin_dir().display()
    );
    let ns = Netns::new("brs");
    for ty in ["bridge", "mybridge"] {
        let mut c = w.conf("1.0.0", json!({}));
        c["ipam"]["type"] = json!(ty);
        let e = w
            .call("ADD", "ctr-s", &c)
            .var("CNI_PATH", Some(&path))
            .netns(&ns)
            .within(std::time::Duration::from_secs(10))
            .run()
            .error(7);
        assert!(e["msg"].as_str().unwrap().contains("itself"), "{e}");
        assert_eq!(w.host.link_names(), ["lo"]);
        assert_eq!(ns.link_names(), ["lo"]);
    }
}

#[test]
fn result_shapes_in_every_version() {
    let w = World::new();
    for (i, v) in ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let ns = Netns::new("brv");
        let r = w.add(&ns, &format!("v{i}"), &w.conf(v, json!({"mtu": 1400})));
        assert_eq!(r["cniVersion"], *v);
        match *v {
            "0.2.0" => {
                assert_eq!(r["ip4"]["ip"], format!("{}/24", w.ip(2 + i as u8)));
                assert!(r.get("interfaces").is_none());
            }
            _ => {
                assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
                assert_eq!(r["ips"][0]["interface"], 2);
                assert_eq!(
                    r["ips"][0].get("version").is_some(),
                    v.starts_with("0."),
                    "{v}"
                );
                // Interface MTU is a 1.1.0 field.
                assert_eq!(
                    r["interfaces"][2].get("mtu").is_some(),
                    *v == "1.1.0",
                    "{v}: {r}"
                );
            }
        }
    }
}

#[test]
fn mtu_hairpin_isolation_promisc() {
    let w = World::new();
    let a = Netns::new("bra");
    let r = w.add(
        &a,
        "ctr-a",
        &w.conf(
            "1.0.0",
            json!({"mtu": 1300, "hairpinMode": true, "portIsolation": true}),
        ),
    );
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    assert_eq!(a.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1300);
    assert_eq!(
        w.host.ip_json(&["link", "show", &host_veth])[0]["mtu"],
        1300
    );
    assert_eq!(w.host.ip_json(&["link", "show", &w.bridge])[0]["mtu"], 1300);
    let port = w
        .bridge_ports()
        .into_iter()
        .find(|p| p["ifname"] == host_veth)
        .unwrap();
    assert_eq!(port["hairpin"], true, "{port}");
    assert_eq!(port["isolated"], true, "{port}");

    let w2 = World::new();
    let b = Netns::new("brb");
    w2.add(&b, "ctr-b", &w2.conf("1.0.0", json!({"promiscMode": true})));
    let flags = w2.host.ip_json(&["link", "show", &w2.bridge])[0]["flags"].clone();
    assert!(
        flags.as_array().unwrap().contains(&json!("PROMISC")),
        "{flags}"
    );
}

/// Whether this kernel can filter VLANs on a bridge (some are built without
/// CONFIG_BRIDGE_VLAN_FILTERING, this project's CI VM among them).
fn kernel_has_vlan_filtering(host: &Netns) -> bool {
    let probe = unique("cnv");
    let ok = cni_tests::cmd(
        "ip",
        &[
            "-n",
            &host.name,
            "link",
            "add",
            &probe,
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ],
    )
    .status
    .success();
    if ok {
        host.ip(&["link", "del", &probe]);
    }
    ok
}

#[test]
fn vlans_on_the_bridge_port() {
    let w = World::new();
    let a = Netns::new("bra");
    let c = w.conf(
        "1.0.0",
        json!({"vlan": 100, "vlanTrunk": [{"id": 200}, {"minID": 300, "maxID": 302}], "preserveDefaultVlan": false}),
    );
    if !kernel_has_vlan_filtering(&w.host) {
        // Then ADD must say why, and leave nothing behind.
        let e = w.call("ADD", "ctr-a", &c).netns(&a).run().error(5);
        assert!(e["msg"].as_str().unwrap().contains("VLAN filtering"), "{e}");
        assert!(w.links_of_type("veth").is_empty());
        assert!(!a.link_names().contains(&"eth0".to_string()));
        assert_eq!(w.reservations(), 0);
        eprintln!(
            "note: this kernel has no bridge VLAN filtering; checked the clean refusal instead"
        );
        return;
    }
    let r = w.add(&a, "ctr-a", &c);
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let v = w.host.bridge_json(&["vlan", "show", "dev", &host_veth]);
    let vlans = v[0]["vlans"].as_array().unwrap();
    let ids: Vec<u64> = vlans.iter().map(|x| x["vlan"].as_u64().unwrap()).collect();
    assert_eq!(ids, [100, 200, 300, 301, 302], "{v}");
    let access = &vlans[0]["flags"];
    assert!(access.as_array().unwrap().contains(&json!("PVID")), "{v}");
    assert!(
        access
            .as_array()
            .unwrap()
            .contains(&json!("Egress Untagged")),
        "{v}"
    );
    assert!(
        vlans[1].get("flags").is_none(),
        "trunk VLANs are tagged: {v}"
    );
}

#[test]
fn mac_from_args_config_and_runtime() {
    let w = World::new();
    let sources = [
        ("env", json!({}), Some("MAC=0a:58:00:00:00:01")),
        (
            "args",
            json!({"args": {"cni": {"mac": "0a:58:00:00:00:02"}}}),
            None,
        ),
        (
            "rt",
            json!({"runtimeConfig": {"mac": "0a:58:00:00:00:03"}}),
            Some("MAC=0a:58:00:00:00:09"),
        ),
    ];
    for (i, (tag, extra, env)) in sources.into_iter().enumerate() {
        let ns = Netns::new("brm");
        let r = w
            .call("ADD", tag, &w.conf("1.0.0", extra))
            .netns(&ns)
            .var("CNI_ARGS", env)
            .run()
            .success();
        let want = format!("0a:58:00:00:00:0{}", i + 1);
        assert_eq!(r["interfaces"][2]["mac"], want);
        assert_eq!(ns.ip_json(&["link", "show", "eth0"])[0]["address"], want);
    }
    let ns = Netns::new("brm");
    w.call("ADD", "bad", &w.conf("1.0.0", json!({})))
        .netns(&ns)
        .var("CNI_ARGS", Some("MAC=nope"))
        .run()
        .error(4);
}

#[test]
fn force_address_replaces_a_foreign_gateway() {
    let w = World::new();
    // The bridge exists already with another IPv4 address.
    w.host.ip(&["link", "add", &w.bridge, "type", "bridge"]);
    w.host
        .ip(&["addr", "add", "192.168.77.1/24", "dev", &w.bridge]);
    let a = Netns::new("bra");
    let e = w
        .call("ADD", "ctr-a", &w.conf("1.0.0", json!({})))
        .netns(&a)
        .run()
        .error(7);
    assert!(e["msg"].as_str().unwrap().contains("forceAddress"), "{e}");
    // Rolled back: no veth, no interface, no reservation.
    assert!(w.links_of_type("veth").is_empty());
    assert!(!a.link_names().contains(&"eth0".to_string()));
    assert_eq!(w.reservations(), 0);

    w.add(&a, "ctr-a", &w.conf("1.0.0", json!({"forceAddress": true})));
    let addrs = w.host.addrs(&w.bridge);
    assert!(addrs.contains(&format!("{}/24", w.ip(1))), "{addrs:?}");
    assert!(!addrs.contains(&"192.168.77.1/24".to_string()), "{addrs:?}");
}

#[test]
fn a_link_that_is_not_a_bridge_is_refused() {
    let w = World::new();
    w.host.ip(&[
        "link",
        "add",
        &w.bridge,
        "type",
        "veth",
        "peer",
        "name",
        &unique("cnp"),
    ]);
    let a = Netns::new("bra");
    w.call("ADD", "ctr-a", &w.conf("1.0.0", json!({})))
        .netns(&a)
        .run()
        .error(7);
    assert_eq!(w.reservations(), 0);
}

#[test]
fn ipam_failure_rolls_back_the_veth() {
    let w = World::new();
    // A /30 has one usable address besides the gateway.
    let mut c = w.conf("1.0.0", json!({}));
    c["ipam"]["subnet"] = json!(format!("10.201.{}.0/30", w.n));
    let a = Netns::new("bra");
    w.add(&a, "ctr-a", &c);
    let b = Netns::new("brb");
    w.call("ADD", "ctr-b", &c).netns(&b).run().error(100);
    assert_eq!(
        w.links_of_type("veth").len(),
        1,
        "the failed ADD left a veth"
    );
    assert!(!b.link_names().contains(&"eth0".to_string()));
    // And when the interface name is taken in the container.
    w.call("ADD", "ctr-a2", &c).netns(&a).run().error(100);
    assert_eq!(w.links_of_type("veth").len(), 1);
}

#[test]
fn a_refused_container_route_rolls_back_everything() {
    let w = World::new();
    // The container's settings, address, up and routes go to the kernel in
    // one datagram; a route through an unreachable gateway is refused there,
    // after IPAM and the pair.
    let mut c = w.conf("1.0.0", json!({}));
    c["ipam"]["routes"] = json!([{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}]);
    let a = Netns::new("bra");
    let e = w.call("ADD", "ctr-a", &c).netns(&a).run();
    assert!(!e.ok(), "{}", e.stdout());
    assert!(e.stdout().contains("add route"), "{}", e.stdout());
    assert!(w.links_of_type("veth").is_empty());
    assert_eq!(a.link_names(), ["lo"]);
    assert_eq!(w.reservations(), 0);
}

#[test]
fn layer2_only_and_disabled_container_interface() {
    let w = World::new();
    let a = Netns::new("bra");
    let mut c = w.conf("1.0.0", json!({"isGateway": false}));
    c["ipam"] = json!({});
    let r = w.add(&a, "ctr-a", &c);
    assert!(r.get("ips").is_none(), "{r}");
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert!(a.link_flags("eth0").contains(&"UP".to_string()));
    w.call("DEL", "ctr-a", &c).netns(&a).run().silent_success();

    let mut c = c.clone();
    c["disableContainerInterface"] = json!(true);
    w.add(&a, "ctr-a", &c);
    assert!(!a.link_flags("eth0").contains(&"UP".to_string()));
    // With IPAM it is a config error.
    let mut bad = w.conf("1.0.0", json!({"disableContainerInterface": true}));
    bad["cniVersion"] = json!("1.0.0");
    w.call("ADD", "ctr-b", &bad)
        .netns(&Netns::new("brb"))
        .run()
        .error(7);
}

/// The reference's "3 subnets" case: two IPv6 range sets. One default route
/// per family, via the first gateway of that family; and a default route
/// IPAM sets itself is kept, not an error.
#[test]
fn is_default_gateway_with_two_sets_of_one_family() {
    let w = World::new();
    let a = Netns::new("bra");
    let mut c = w.conf("1.0.0", json!({"isDefaultGateway": true}));
    c["ipam"] = json!({
        "type": "host-local",
        "dataDir": w.store.path(),
        "ranges": [
            [{"subnet": w.subnet()}],
            [{"subnet": format!("fd00:{}::/64", w.n)}],
            [{"subnet": format!("2001:db8:{}::/64", w.n)}]
        ]
    });
    let r = w.add(&a, "ctr-a", &c);
    assert_eq!(
        r["routes"],
        json!([
            {"dst": "0.0.0.0/0", "gw": w.ip(1)},
            {"dst": "::/0", "gw": format!("fd00:{}::1", w.n)}
        ])
    );
    let v6 = a.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(v6.as_array().unwrap().len(), 1, "{v6}");
    assert_eq!(v6[0]["gateway"], format!("fd00:{}::1", w.n));
    w.call("DEL", "ctr-a", &c).netns(&a).run().silent_success();

    // IPAM's own default route wins.
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": w.ip(254)}]);
    let r = w.add(&a, "ctr-a", &c);
    assert_eq!(r["routes"][0], json!({"dst": "0.0.0.0/0", "gw": w.ip(254)}));
    assert_eq!(r["routes"].as_array().unwrap().len(), 2, "{r}");
    w.call("DEL", "ctr-a", &c).netns(&a).run().silent_success();
}

#[test]
fn dual_stack_with_ipv6_reachable_at_once() {
    let w = World::new();
    let (a, b) = (Netns::new("bra"), Netns::new("brb"));
    let mut c = w.conf("1.0.0", json!({"isDefaultGateway": true}));
    c["ipam"] = json!({
        "type": "host-local",
        "dataDir": w.store.path(),
        "ranges": [[{"subnet": w.subnet()}], [{"subnet": format!("fd00:{}::/64", w.n)}]]
    });
    let ra = w.add(&a, "ctr-a", &c);
    w.add(&b, "ctr-b", &c);
    assert_eq!(ra["ips"][1]["address"], format!("fd00:{}::2/64", w.n));
    let routes: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"]);
    // No DAD by default: usable without waiting.
    assert!(
        a.ping(&format!("fd00:{}::3", w.n)),
        "a cannot reach b over IPv6"
    );
    assert!(
        a.ping(&format!("fd00:{}::1", w.n)),
        "a cannot reach the IPv6 gateway"
    );
    assert_eq!(a.sysctl("net.ipv6.conf.eth0.accept_dad"), "0");
    // Gratuitous ARP on up (set through netlink, not /proc/sys).
    assert_eq!(a.sysctl("net.ipv4.conf.eth0.arp_notify"), "1");
}

#[test]
fn dns_from_the_config_overrides_ipam() {
    let w = World::new();
    let a = Netns::new("bra");
    let resolv = w.store.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.9.9.9\n").unwrap();
    let mut c = w.conf("1.0.0", json!({}));
    c["ipam"]["resolvConf"] = json!(resolv);
    assert_eq!(
        w.add(&a, "ctr-a", &c)["dns"]["nameservers"],
        json!(["10.9.9.9"])
    );
    c["dns"] = json!({"nameservers": ["1.1.1.1"], "search": ["x"]});
    let b = Netns::new("brb");
    assert_eq!(
        w.add(&b, "ctr-b", &c)["dns"],
        json!({"nameservers": ["1.1.1.1"], "search": ["x"]})
    );
}

#[test]
fn masquerade_rules_follow_the_container() {
    let w = World::new();
    let (a, b) = (Netns::new("bra"), Netns::new("brb"));
    let c = w.conf("1.1.0", json!({"ipMasq": true}));
    let ra = w.add(&a, "ctr-a", &c);
    w.add(&b, "ctr-b", &c);
    let t = w
        .host
        .nft_table("inet", "cni-rs")
        .expect("table inet cni-rs");
    let text = t.to_string();
    assert!(
        text.contains("masq/brnet/ctr-a/eth0") && text.contains("masq/brnet/ctr-b/eth0"),
        "{text}"
    );
    assert!(text.contains(&w.ip(2)), "{text}");
    // Each address is in the map with its owner's tag, and each owner has
    // its record chain.
    let (chain_a, chain_b) = ("masq/brnet/ctr-a/eth0", "masq/brnet/ctr-b/eth0");
    assert_eq!(
        masq_elements(&w),
        [(w.ip(2), chain_a.to_owned()), (w.ip(3), chain_b.to_owned())]
    );
    assert_eq!(chain_rules(&w, "inet", "masquerading").len(), 2);

    // CHECK notices a removed map element, and a flushed chain.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra;
    let check = |verdict: Option<u64>| {
        let run = w.call("CHECK", "ctr-a", &with_prev).netns(&a).run();
        match verdict {
            None => run.silent_success(),
            Some(code) => {
                run.error(code);
            }
        }
    };
    check(None);
    let element = format!("{{ {} }}", w.ip(2));
    host_nft(
        &w,
        &["delete", "element", "inet", "cni-rs", "masq4", &element],
    );
    check(Some(101));
    let element = nft::tagged_element(&w.ip(2), "cni-rs masquerade: brnet ctr-a eth0", chain_a);
    host_nft(&w, &["add", "element", "inet", "cni-rs", "masq4", &element]);
    check(None);
    host_nft(&w, &["flush", "chain", "inet", "cni-rs", chain_a]);
    check(Some(101));

    // GC removes the rules (and reservations) of attachments not listed.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    w.call("GC", "", &gc).run().silent_success();
    let text = w.host.nft_table("inet", "cni-rs").unwrap().to_string();
    assert!(!text.contains("ctr-b"), "{text}");
    assert_eq!(masq_elements(&w), [(w.ip(2), chain_a.to_owned())]);
    assert_eq!(w.reservations(), 1);
}

#[test]
fn status_forwards_to_ipam() {
    let w = World::new();
    let mut c = w.conf("1.1.0", json!({"ipMasq": true}));
    w.call("STATUS", "", &c).run().silent_success();
    c["ipam"]["subnet"] = json!(format!("10.202.{}.0/30", w.n));
    w.add(&Netns::new("bra"), "ctr-a", &c);
    w.call("STATUS", "", &c).run().error(50);
}

#[test]
fn twenty_concurrent_adds_on_a_new_bridge() {
    let w = World::new();
    let c = w.conf("1.0.0", json!({"ipMasq": true, "macspoofchk": true}));
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (w, c) = (&w, &c);
                s.spawn(move || {
                    let ns = Netns::new("brc");
                    let r = w.add(&ns, &format!("c{i}"), c);
                    (ns, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().1).collect()
    });
    let addrs: std::collections::HashSet<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addrs.len(), 20);
    assert_eq!(w.links_of_type("bridge").len(), 1);
    assert_eq!(spoof_chain_names(&w).len(), 20);
    // Every one dispatched through the maps, set up once.
    assert_eq!(spoof_elements(&w).len(), 20);
    assert_eq!(masq_elements(&w).len(), 20);
    assert_eq!(chain_rules(&w, "bridge", "spoofcheck").len(), 1);
    assert_eq!(chain_rules(&w, "inet", "masquerading").len(), 2);
}

/// The spoof check chains in `bridge cni-rs` of the host namespace, each as
/// (chain, its base-chain settings, its rules' expressions and comments).
fn spoof_chains(w: &World) -> Vec<(String, Value, Vec<Value>)> {
    let objs = objects(&w.host, "bridge");
    objs.iter()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c["name"].as_str().unwrap().starts_with("spoof/"))
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_owned();
            let rules = nft::rules(&objs, &name);
            (name, c.clone(), rules)
        })
        .collect()
}

fn spoof_chain_names(w: &World) -> Vec<String> {
    let mut names: Vec<String> = spoof_chains(w).into_iter().map(|c| c.0).collect();
    names.sort();
    names
}

/// The elements of the spoof check's `spoof` map in the host namespace, as
/// (host interface, owner's record chain), sorted.
fn spoof_elements(w: &World) -> Vec<(String, String)> {
    nft::tagged(&objects(&w.host, "bridge"), "spoof", "spoof")
}

/// The elements of `masq4` in the host namespace, as (address, owner's
/// record chain), sorted.
fn masq_elements(w: &World) -> Vec<(String, String)> {
    nft::tagged(&objects(&w.host, "inet"), "masq4", "masq")
}

/// `nft ARGS...` in the host namespace, behind the plugin's back.
fn host_nft(w: &World, args: &[&str]) {
    nft::nft(&w.host, args);
}

/// The rules of a chain in the host namespace's `cni-rs` table of `family`.
fn chain_rules(w: &World, family: &str, chain: &str) -> Vec<Value> {
    nft::rules(&objects(&w.host, family), chain)
}

#[test]
fn spoof_check_drops_a_forged_source_mac() {
    let w = World::new();
    let (a, b) = (Netns::new("bra"), Netns::new("brb"));
    let c = w.conf("1.1.0", json!({"macspoofchk": true}));
    let ra = w.add(&a, "ctr-a", &c);
    w.add(&b, "ctr-b", &c);
    let veth_a = ra["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let mac_a = ra["interfaces"][2]["mac"].as_str().unwrap().to_owned();
    assert_eq!(a.ip_json(&["link", "show", "eth0"])[0]["address"], mac_a);

    // One base chain, hooked before the bridge decides anything, drops the
    // frames of each checked host veth whose source is not the container's:
    // the veths are in the map `spoof`, the allowed pairs in `spoof-ok`.
    // Each owner has its record chain.
    let t = w.host.nft_table("bridge", "cni-rs").unwrap();
    let base = t["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["chain"]["name"] == "spoofcheck")
        .map(|o| o["chain"].clone())
        .expect("base chain spoofcheck");
    assert_eq!(base["type"], "filter", "{base}");
    assert_eq!(base["hook"], "prerouting", "{base}");
    assert_eq!(base["prio"], -300, "{base}");
    assert_eq!(base["policy"], "accept", "{base}");
    let dispatch = chain_rules(&w, "bridge", "spoofcheck");
    assert_eq!(dispatch.len(), 1, "{dispatch:?}");
    assert_eq!(
        dispatch[0]["expr"][0]["match"],
        json!({"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@spoof"})
    );
    assert_eq!(
        dispatch[0]["expr"][1]["match"],
        json!({"op": "!=", "left": {"concat": [
            {"meta": {"key": "iifname"}},
            {"payload": {"protocol": "ether", "field": "saddr"}}
        ]}, "right": "@spoof-ok"})
    );
    assert!(dispatch[0]["expr"][3].get("drop").is_some(), "{dispatch:?}");
    assert_eq!(
        spoof_chain_names(&w),
        ["spoof/brnet/ctr-a/eth0", "spoof/brnet/ctr-b/eth0"]
    );
    let (_, chain, rules) = spoof_chains(&w)
        .into_iter()
        .find(|c| c.0 == "spoof/brnet/ctr-a/eth0")
        .unwrap();
    assert!(chain.get("hook").is_none(), "{chain}");
    assert!(spoof_elements(&w).contains(&(veth_a.clone(), "spoof/brnet/ctr-a/eth0".to_owned())));
    assert_eq!(spoof_elements(&w).len(), 2);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0]["comment"],
        "cni-rs macspoofchk record: brnet ctr-a eth0"
    );
    let expr = &rules[0]["expr"];
    assert_eq!(
        expr[0]["match"],
        json!({"op": "==", "left": {"meta": {"key": "iifname"}}, "right": veth_a}),
        "{expr}"
    );
    assert_eq!(
        expr[1]["match"],
        json!({"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": mac_a}),
        "{expr}"
    );
    assert!(expr[2].get("counter").is_some(), "{expr}");
    assert!(expr[3].get("drop").is_some(), "{expr}");
    let dropped = |w: &World| {
        chain_rules(w, "bridge", "spoofcheck")[0]["expr"][2]["counter"]["packets"]
            .as_u64()
            .unwrap()
    };

    assert!(a.ping(&w.ip(3)), "a cannot reach b");
    assert!(b.ping(&w.ip(2)), "b cannot reach a");
    assert_eq!(dropped(&w), 0);

    // A forged source MAC: A's frames are dropped at the bridge.
    a.ip(&["link", "set", "eth0", "address", "0a:58:de:ad:be:ef"]);
    assert!(cni_tests::wait_for(|| {
        a.ip_json(&["link", "show", "eth0"])[0]["address"] == "0a:58:de:ad:be:ef"
    }));
    assert!(!a.ping(&w.ip(3)), "a reached b with a forged MAC");
    assert!(dropped(&w) > 0, "nothing counted as dropped");
    // B is not affected by A's check.
    assert!(b.ping(&w.ip(1)), "b cannot reach the gateway");

    // The real MAC back: A gets through again.
    a.ip(&["link", "set", "eth0", "address", &mac_a]);
    assert!(
        cni_tests::wait_for(|| a.ping(&w.ip(3))),
        "a cannot reach b with its own MAC back"
    );

    // CHECK: as ADD left it; then a MAC the check does not enforce; then the
    // map element deleted, and the chain flushed, behind the plugin's back.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra.clone();
    w.call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();
    let mut other_mac = with_prev.clone();
    other_mac["prevResult"]["interfaces"][2]["mac"] = json!("0a:58:de:ad:be:ef");
    let e = w
        .call("CHECK", "ctr-a", &other_mac)
        .netns(&a)
        .run()
        .error(101);
    assert!(e["msg"].as_str().unwrap().contains("spoof check"), "{e}");
    let element = format!("{{ \"{veth_a}\" }}");
    host_nft(
        &w,
        &["delete", "element", "bridge", "cni-rs", "spoof", &element],
    );
    let e = w
        .call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .error(101);
    assert!(e["msg"].as_str().unwrap().contains("spoof check"), "{e}");
    let element = nft::tagged_element(
        &format!("\"{veth_a}\""),
        "cni-rs macspoofchk: brnet ctr-a eth0",
        "spoof/brnet/ctr-a/eth0",
    );
    host_nft(
        &w,
        &["add", "element", "bridge", "cni-rs", "spoof", &element],
    );
    w.call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .silent_success();
    host_nft(
        &w,
        &[
            "flush",
            "chain",
            "bridge",
            "cni-rs",
            "spoof/brnet/ctr-a/eth0",
        ],
    );
    let e = w
        .call("CHECK", "ctr-a", &with_prev)
        .netns(&a)
        .run()
        .error(101);
    assert!(e["msg"].as_str().unwrap().contains("spoof check"), "{e}");
    // The record is only what CHECK and DEL read: the elements still drop
    // a forged MAC.
    a.ip(&["link", "set", "eth0", "address", "0a:58:de:ad:be:ef"]);
    assert!(cni_tests::wait_for(|| {
        a.ip_json(&["link", "show", "eth0"])[0]["address"] == "0a:58:de:ad:be:ef"
    }));
    assert!(!a.ping(&w.ip(3)), "a reached b with a forged MAC");
    a.ip(&["link", "set", "eth0", "address", &mac_a]);

    // DEL with an empty CNI_NETNS removes the chain and its element, though
    // the flushed chain no longer names the key (and again: nothing to do).
    for _ in 0..2 {
        w.call("DEL", "ctr-a", &with_prev)
            .var("CNI_NETNS", Some(""))
            .run()
            .silent_success();
        assert_eq!(spoof_chain_names(&w), ["spoof/brnet/ctr-b/eth0"]);
        let elems = spoof_elements(&w);
        assert_eq!(elems.len(), 1, "{elems:?}");
        assert_eq!(elems[0].1, "spoof/brnet/ctr-b/eth0");
    }

    // GC removes the chains of attachments not listed.
    let c3 = Netns::new("brc");
    w.add(&c3, "ctr-c", &c);
    assert_eq!(
        spoof_chain_names(&w),
        ["spoof/brnet/ctr-b/eth0", "spoof/brnet/ctr-c/eth0"]
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-c", "ifname": "eth0"}]);
    w.call("GC", "", &gc).run().silent_success();
    assert_eq!(spoof_chain_names(&w), ["spoof/brnet/ctr-c/eth0"]);
    assert_eq!(w.reservations(), 1);

    // DEL with the namespace removes the interface and the chain.
    w.call("DEL", "ctr-c", &c).netns(&c3).run().silent_success();
    assert!(spoof_chain_names(&w).is_empty());
    assert!(spoof_elements(&w).is_empty());
    assert!(!c3.link_names().contains(&"eth0".to_string()));

    // An ADD failing (a foreign gateway on the bridge) leaves nothing: the
    // nftables rules are ADD's last step, one transaction, so here they
    // were never written.
    let w = World::new();
    w.host.ip(&["link", "add", &w.bridge, "type", "bridge"]);
    w.host
        .ip(&["addr", "add", "192.168.77.1/24", "dev", &w.bridge]);
    let c = w.conf("1.1.0", json!({"macspoofchk": true}));
    w.call("ADD", "ctr-a", &c).netns(&a).run().error(7);
    assert!(w.host.nft_table("bridge", "cni-rs").is_none());
    assert!(spoof_chain_names(&w).is_empty());
    assert!(w.links_of_type("veth").is_empty());
}
