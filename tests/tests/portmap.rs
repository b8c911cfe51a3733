//! The portmap plugin chained after bridge + host-local, with real traffic:
//! a host namespace H (standing in for the machine), containers on its
//! bridge, and a client namespace X beside H (another machine on the LAN).
//! Every connection is made from inside a namespace the test created.

use std::sync::atomic::{AtomicU8, Ordering};

use cni_tests::{Call, Netns, Server, TempDir, cmd, must, tcp_fetch, udp_ask, unique, wait_for};
use serde_json::{Value, json};

struct World {
    host: Netns,
    client: Netns,
    store: TempDir,
    bridge: String,
    /// 10.210.N.0/24 and fd21:N::/64 for containers.
    n: u8,
}

/// H's address on the LAN with X, and X's.
const H_LAN: &str = "198.51.100.1";
const X_LAN: &str = "198.51.100.2";
const H_LAN6: &str = "2001:db8:51::1";

impl World {
    fn new() -> World {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        let w = World {
            host: Netns::new("pmh"),
            client: Netns::new("pmx"),
            store: TempDir::new("pmstore"),
            bridge: unique("cnp"),
            n: NEXT.fetch_add(1, Ordering::Relaxed),
        };
        let (h_if, x_if) = (unique("ph"), unique("px"));
        w.host.ip(&[
            "link",
            "add",
            &h_if,
            "type",
            "veth",
            "peer",
            "name",
            &x_if,
            "netns",
            &w.client.name,
        ]);
        w.host
            .ip(&["addr", "add", &format!("{H_LAN}/24"), "dev", &h_if]);
        w.host.ip(&[
            "addr",
            "add",
            &format!("{H_LAN6}/64"),
            "dev",
            &h_if,
            "nodad",
        ]);
        w.host.ip(&["link", "set", &h_if, "up"]);
        w.host.ip(&["link", "set", "lo", "up"]);
        w.client
            .ip(&["addr", "add", &format!("{X_LAN}/24"), "dev", &x_if]);
        w.client
            .ip(&["addr", "add", "2001:db8:51::2/64", "dev", &x_if, "nodad"]);
        w.client.ip(&["link", "set", &x_if, "up"]);
        w.client.ip(&["link", "set", "lo", "up"]);
        w
    }

    fn ip(&self, last: u8) -> String {
        format!("10.210.{}.{last}", self.n)
    }

    fn bridge_conf(&self) -> Value {
        // hairpinMode: a container reaching its own mapping through the host
        // goes back out its own bridge port (as with the reference).
        json!({
            "cniVersion": "1.0.0", "name": "pmnet", "type": "bridge", "bridge": self.bridge,
            "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": self.store.path(), "ranges": [
                [{"subnet": format!("10.210.{}.0/24", self.n)}], [{"subnet": format!("fd21:{}::/64", self.n)}]
            ]}
        })
    }

    fn portmap_conf(&self, prev: &Value, mappings: Value, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": "pmnet", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn call(&self, plugin: &str, verb: &str, id: &str, conf: &Value) -> Call {
        Call::new(plugin, verb)
            .in_host(&self.host)
            .var("CNI_CONTAINERID", Some(id))
            .conf(conf)
    }

    /// bridge ADD, then portmap ADD with its result; returns (bridge result, portmap conf used).
    fn attach(&self, ns: &Netns, id: &str, mappings: Value, extra: Value) -> (Value, Value) {
        let prev = self
            .call("bridge", "ADD", id, &self.bridge_conf())
            .netns(ns)
            .run()
            .success();
        let pm = self.portmap_conf(&prev, mappings, extra);
        let out = self
            .call("portmap", "ADD", id, &pm)
            .netns(ns)
            .run()
            .success();
        assert_eq!(out, prev, "portmap returns the previous result unchanged");
        (prev, pm)
    }

    fn nft(&self) -> String {
        String::from_utf8(
            cmd(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.host.name,
                    "nft",
                    "list",
                    "table",
                    "inet",
                    "cni-rs",
                ],
            )
            .stdout,
        )
        .unwrap()
    }
}

fn tcp(host_port: u16, container_port: u16) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"})
}

#[test]
fn tcp_reaches_the_container_by_every_path() {
    let w = World::new();
    let (c1, c2) = (Netns::new("pm1"), Netns::new("pm2"));
    let _s1 = Server::start(&c1, 80, "from c1");
    let (prev, pm) = w.attach(&c1, "c1", json!([tcp(8080, 80)]), json!({}));
    // IPv6 first, at once, from another machine, on the bridge that was just
    // created and through a container that has not sent a packet yet: the
    // first SYN is not held back a second while the bridge's link-local
    // address would be in DAD (the bridge is made without DAD).
    assert_eq!(
        cni_tests::tcp_fetch_within(
            &w.client,
            &format!("[{H_LAN6}]:8080"),
            std::time::Duration::from_millis(900)
        )
        .as_deref(),
        Some("from c1")
    );
    w.attach(&c2, "c2", json!([]), json!({}));
    let gw = w.ip(1);

    // From another machine, to the host's LAN address.
    assert_eq!(
        tcp_fetch(&w.client, &format!("{H_LAN}:8080")).as_deref(),
        Some("from c1")
    );
    // From the host itself: its bridge address and 127.0.0.1 (route_localnet).
    assert_eq!(
        tcp_fetch(&w.host, &format!("{gw}:8080")).as_deref(),
        Some("from c1")
    );
    assert_eq!(
        tcp_fetch(&w.host, "127.0.0.1:8080").as_deref(),
        Some("from c1")
    );
    // Hairpin: the container itself and its neighbour, through the host.
    assert_eq!(
        tcp_fetch(&c1, &format!("{H_LAN}:8080")).as_deref(),
        Some("from c1")
    );
    assert_eq!(
        tcp_fetch(&c2, &format!("{gw}:8080")).as_deref(),
        Some("from c1")
    );
    // CHECK passes, and catches the owner's chain flushed behind its back.
    w.call("portmap", "CHECK", "c1", &pm)
        .netns(&c1)
        .run()
        .silent_success();
    let chain = "pm/pmnet/c1/eth0";
    must(
        "ip",
        &[
            "netns",
            "exec",
            &w.host.name,
            "nft",
            "flush",
            "chain",
            "inet",
            "cni-rs",
            chain,
        ],
    );
    w.call("portmap", "CHECK", "c1", &pm)
        .netns(&c1)
        .run()
        .error(101);

    // DEL without portMappings (runtimes need not pass them again) and with
    // an empty CNI_NETNS: the mapping is gone.
    let mut bare = pm.clone();
    bare["runtimeConfig"] = json!({});
    bare["prevResult"] = prev;
    w.call("portmap", "DEL", "c1", &bare)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    w.call("portmap", "DEL", "c1", &bare)
        .var("CNI_NETNS", Some(""))
        .run()
        .silent_success();
    assert!(!w.nft().contains(chain), "{}", w.nft());
    assert_eq!(tcp_fetch(&w.client, &format!("{H_LAN}:8080")), None);
}

#[test]
fn forwarded_traffic_is_never_translated_and_host_ip_restricts() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    let _s80 = Server::start(&c1, 80, "port 80");
    let mut restricted = tcp(8081, 80);
    restricted["hostIP"] = json!(H_LAN);
    w.attach(&c1, "c1", json!([tcp(8080, 80), restricted]), json!({}));

    // X routes to the container subnet through H: a connection to the
    // container's own port 8080 is forwarded, not translated (nothing listens).
    w.client.ip(&[
        "route",
        "add",
        &format!("10.210.{}.0/24", w.n),
        "via",
        H_LAN,
    ]);
    assert_eq!(
        tcp_fetch(&w.client, &format!("{}:80", w.ip(2))).as_deref(),
        Some("port 80")
    );
    assert_eq!(tcp_fetch(&w.client, &format!("{}:8080", w.ip(2))), None);

    // hostIP: only that address answers.
    assert_eq!(
        tcp_fetch(&w.client, &format!("{H_LAN}:8081")).as_deref(),
        Some("port 80")
    );
    assert_eq!(tcp_fetch(&w.host, &format!("{}:8081", w.ip(1))), None);
}

#[test]
fn udp_maps_and_stale_conntrack_entries_are_flushed() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    let _s = Server::start(&c1, 53, "udp from c1");
    // Before the mapping exists, X's datagrams to H:5353 leave a conntrack
    // entry in H that would keep them away from the container afterwards.
    w.attach(&Netns::new("pm0"), "warm", json!([]), json!({})); // conntrack active in H
    assert_eq!(udp_ask(&w.client, &format!("{H_LAN}:5353"), 40000), None);
    let stale = || {
        let out = cmd(
            "ip",
            &[
                "netns",
                "exec",
                &w.host.name,
                "conntrack",
                "-L",
                "-p",
                "udp",
                "--dport",
                "5353",
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains("sport=40000")
    };
    assert!(wait_for(stale), "no conntrack entry to flush");
    let udp = json!({"hostPort": 5353, "containerPort": 53, "protocol": "udp"});
    let (prev, pm) = w.attach(&c1, "c1", json!([udp]), json!({}));
    // Same source port: without the flush the old entry would win.
    assert_eq!(
        udp_ask(&w.client, &format!("{H_LAN}:5353"), 40000).as_deref(),
        Some("udp from c1")
    );
    // DEL flushes too (the reference leaves them).
    let mut del = pm.clone();
    del["prevResult"] = prev;
    w.call("portmap", "DEL", "c1", &del)
        .netns(&c1)
        .run()
        .silent_success();
    assert!(!stale(), "DEL left the UDP conntrack entry");
}

#[test]
fn conditions_limit_who_is_translated() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    let _s = Server::start(&c1, 80, "from c1");
    let extra = json!({"conditionsV4": [format!("ip saddr != {X_LAN}")]});
    w.attach(&c1, "c1", json!([tcp(8080, 80)]), extra);
    assert_eq!(tcp_fetch(&w.client, &format!("{H_LAN}:8080")), None);
    assert_eq!(
        tcp_fetch(&w.host, "127.0.0.1:8080").as_deref(),
        Some("from c1")
    );
    // Outside the documented subset: refused with code 2, nothing installed.
    let c2 = Netns::new("pm2");
    let prev = w
        .call("bridge", "ADD", "c2", &w.bridge_conf())
        .netns(&c2)
        .run()
        .success();
    let pm = w.portmap_conf(
        &prev,
        json!([tcp(9090, 80)]),
        json!({"conditionsV4": ["tcp flags syn"]}),
    );
    w.call("portmap", "ADD", "c2", &pm)
        .netns(&c2)
        .run()
        .error(2);
    assert!(!w.nft().contains("pm/pmnet/c2/eth0"));
}

#[test]
fn chaining_rules_pass_through_and_gc() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    // Without prevResult portmap cannot know the container: code 7.
    let mut c = w.portmap_conf(&json!(null), json!([tcp(8080, 80)]), json!({}));
    c.as_object_mut().unwrap().remove("prevResult");
    w.call("portmap", "ADD", "c1", &c).netns(&c1).run().error(7);
    // Without mappings it passes the result through and installs nothing.
    let (_, _) = w.attach(&c1, "c1", json!([]), json!({}));
    assert!(!w.nft().contains("pm/"), "{}", w.nft());

    let (c2, c3) = (Netns::new("pm2"), Netns::new("pm3"));
    w.attach(&c2, "c2", json!([tcp(8082, 80)]), json!({}));
    w.attach(&c3, "c3", json!([tcp(8083, 80)]), json!({}));
    let gc = json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap",
                    "cni.dev/valid-attachments": [{"containerID": "c3", "ifname": "eth0"}]});
    Call::new("portmap", "GC")
        .in_host(&w.host)
        .conf(&gc)
        .run()
        .silent_success();
    let t = w.nft();
    assert!(
        !t.contains("pm/pmnet/c2/eth0") && t.contains("pm/pmnet/c3/eth0"),
        "{t}"
    );
    let status = json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap"});
    Call::new("portmap", "STATUS")
        .in_host(&w.host)
        .conf(&status)
        .run()
        .silent_success();
}

#[test]
fn coexists_with_iptables_nft_rules_and_a_drop_forward_policy() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    let _s = Server::start(&c1, 80, "from c1");
    let ipt = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &w.host.name, "iptables"];
        full.extend_from_slice(args);
        must("ip", &full);
    };
    // kube-proxy style: its own nat chain hooked from PREROUTING and OUTPUT.
    ipt(&["-t", "nat", "-N", "KUBE-SERVICES"]);
    ipt(&["-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"]);
    ipt(&["-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES"]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "KUBE-SERVICES",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-j",
        "DNAT",
        "--to-destination",
        "192.0.2.9:1",
    ]);
    // Docker style: FORWARD policy drop.
    ipt(&["-P", "FORWARD", "DROP"]);
    w.attach(&c1, "c1", json!([tcp(8080, 80)]), json!({}));

    // Local connections do not cross FORWARD: they work.
    assert_eq!(
        tcp_fetch(&w.host, "127.0.0.1:8080").as_deref(),
        Some("from c1")
    );
    // From another machine the DNATed connection is forwarded: dropped...
    assert_eq!(tcp_fetch(&w.client, &format!("{H_LAN}:8080")), None);
    // ...until the host accepts forwarding to and from the containers, as
    // docs/portmap.md says.
    let subnet = format!("10.210.{}.0/24", w.n);
    ipt(&["-A", "FORWARD", "-d", &subnet, "-j", "ACCEPT"]);
    ipt(&["-A", "FORWARD", "-s", &subnet, "-j", "ACCEPT"]);
    assert_eq!(
        tcp_fetch(&w.client, &format!("{H_LAN}:8080")).as_deref(),
        Some("from c1")
    );
    // Our table and theirs side by side.
    let ruleset = String::from_utf8(
        cmd(
            "ip",
            &["netns", "exec", &w.host.name, "nft", "list", "ruleset"],
        )
        .stdout,
    )
    .unwrap();
    assert!(
        ruleset.contains("KUBE-SERVICES") && ruleset.contains("table inet cni-rs"),
        "{ruleset}"
    );
}

/// The number of elements of set or map `name` in H's table.
fn elements_in(w: &World, name: &str) -> usize {
    cni_tests::nft::objects(&w.host, "inet")
        .iter()
        .filter_map(|o| o.get("map").or_else(|| o.get("set")))
        .filter(|s| s["name"] == name)
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

/// `n` TCP mappings from host ports `first..` to port 80.
fn many(first: u16, n: u16) -> Value {
    Value::Array((first..first + n).map(|p| tcp(p, 80)).collect())
}

#[test]
fn a_thousand_mappings_ipv4_and_dual_stack() {
    let w = World::new();
    let (c1, c2) = (Netns::new("pm1"), Netns::new("pm2"));
    let _s1 = Server::start(&c1, 80, "from c1");
    let _s2 = Server::start(&c2, 80, "from c2");

    // c1 with its IPv4 address only (portmap maps the families of prevResult).
    let mut prev1 = w
        .call("bridge", "ADD", "c1", &w.bridge_conf())
        .netns(&c1)
        .run()
        .success();
    let ips: Vec<Value> = prev1["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ip| ip["address"].as_str().unwrap().contains('.'))
        .cloned()
        .collect();
    prev1["ips"] = Value::Array(ips);
    let pm1 = w.portmap_conf(&prev1, many(20000, 1000), json!({}));
    w.call("portmap", "ADD", "c1", &pm1)
        .netns(&c1)
        .run()
        .success();
    assert_eq!(elements_in(&w, "pm4-any"), 1000);
    assert_eq!(elements_in(&w, "pm4-snat"), 1000);
    for port in [20000, 20500, 20999] {
        assert_eq!(
            tcp_fetch(&w.client, &format!("{H_LAN}:{port}")).as_deref(),
            Some("from c1"),
            "{port}"
        );
    }
    w.call("portmap", "CHECK", "c1", &pm1)
        .netns(&c1)
        .run()
        .silent_success();

    // c2 dual stack: 1,000 mappings in each family, one transaction.
    let (_, pm2) = w.attach(&c2, "c2", many(30000, 1000), json!({}));
    assert_eq!(elements_in(&w, "pm4-any"), 2000);
    assert_eq!(elements_in(&w, "pm6-any"), 1000);
    assert_eq!(
        tcp_fetch(&w.client, &format!("{H_LAN}:30999")).as_deref(),
        Some("from c2")
    );
    assert_eq!(
        cni_tests::tcp_fetch_within(
            &w.client,
            &format!("[{H_LAN6}]:30999"),
            std::time::Duration::from_millis(900)
        )
        .as_deref(),
        Some("from c2")
    );
    w.call("portmap", "CHECK", "c2", &pm2)
        .netns(&c2)
        .run()
        .silent_success();

    // DEL removes every one of them and answers 0.
    for (id, ns, pm) in [("c1", &c1, &pm1), ("c2", &c2, &pm2)] {
        w.call("portmap", "DEL", id, pm)
            .netns(ns)
            .run()
            .silent_success();
    }
    for name in ["pm4-any", "pm6-any", "pm4-snat", "pm6-snat"] {
        assert_eq!(elements_in(&w, name), 0, "{name}");
    }
    assert!(!w.nft().contains("pm/pmnet/"), "{}", w.nft());
    assert_eq!(tcp_fetch(&w.client, &format!("{H_LAN}:20000")), None);
}

#[test]
fn a_refused_batch_installs_nothing() {
    let w = World::new();
    let c1 = Netns::new("pm1");
    // A map that holds only 10 elements, made before our first ADD: the
    // kernel refuses the 11th element, so the whole ADD is refused.
    cni_tests::nft::nft(
        &w.host,
        &[
            "add table inet cni-rs; add map inet cni-rs pm4-any { type inet_proto . inet_service : ipv4_addr . inet_service; size 10; }",
        ],
    );
    let prev = w
        .call("bridge", "ADD", "c1", &w.bridge_conf())
        .netns(&c1)
        .run()
        .success();
    let pm = w.portmap_conf(&prev, many(20000, 50), json!({}));
    let e = w
        .call("portmap", "ADD", "c1", &pm)
        .netns(&c1)
        .run()
        .error(5);
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("set pm4-any"), "names what was refused: {e}");
    // Nothing of it: no owner chain, no element, no port, no source.
    assert!(!w.nft().contains("pm/pmnet/"), "{}", w.nft());
    for name in [
        "pm4-any", "pm6-any", "pm4-snat", "pm6-snat", "pm4-src", "pm6-src",
    ] {
        assert_eq!(elements_in(&w, name), 0, "{name}");
    }
    assert_eq!(tcp_fetch(&w.client, &format!("{H_LAN}:20000")), None);
    // Within the limit it works, and DEL cleans up.
    let pm = w.portmap_conf(&prev, many(20000, 10), json!({}));
    w.call("portmap", "ADD", "c1", &pm)
        .netns(&c1)
        .run()
        .success();
    assert_eq!(elements_in(&w, "pm4-any"), 10);
    w.call("portmap", "DEL", "c1", &pm)
        .netns(&c1)
        .run()
        .silent_success();
    assert_eq!(elements_in(&w, "pm4-any"), 0);
}

/// Three containers map the same host port. The latest ADD takes it; an
/// earlier one going changes nothing; when the holder goes, the last earlier
/// owner still there has it back with its marking (the reference hands a
/// port on the same way), and CHECK follows.
#[test]
fn a_host_port_taken_over_is_handed_back() {
    let w = World::new();
    let (c1, c2, c3) = (Netns::new("pm1"), Netns::new("pm2"), Netns::new("pm3"));
    let _s1 = Server::start(&c1, 80, "from c1");
    let _s2 = Server::start(&c2, 80, "from c2");
    let _s3 = Server::start(&c3, 80, "from c3");
    let (_, pm1) = w.attach(&c1, "c1", json!([tcp(8090, 80)]), json!({}));
    let (_, pm2) = w.attach(&c2, "c2", json!([tcp(8090, 80)]), json!({}));
    let (_, pm3) = w.attach(&c3, "c3", json!([tcp(8090, 80)]), json!({}));
    let fetch = || tcp_fetch(&w.client, &format!("{H_LAN}:8090"));
    assert_eq!(fetch().as_deref(), Some("from c3"));
    w.call("portmap", "CHECK", "c1", &pm1)
        .netns(&c1)
        .run()
        .error(101);

    // c2 goes while c3 holds the port: nothing changes.
    w.call("portmap", "DEL", "c2", &pm2)
        .netns(&c2)
        .run()
        .silent_success();
    assert_eq!(fetch().as_deref(), Some("from c3"));
    // c3 goes: c1 has the port back, in both families, with its hairpin
    // marking (a container reaching its own port through the host).
    w.call("portmap", "DEL", "c3", &pm3)
        .netns(&c3)
        .run()
        .silent_success();
    assert_eq!(fetch().as_deref(), Some("from c1"));
    assert_eq!(
        tcp_fetch(&w.client, &format!("[{H_LAN6}]:8090")).as_deref(),
        Some("from c1")
    );
    assert_eq!(
        tcp_fetch(&c1, &format!("{H_LAN}:8090")).as_deref(),
        Some("from c1")
    );
    w.call("portmap", "CHECK", "c1", &pm1)
        .netns(&c1)
        .run()
        .silent_success();
    w.call("portmap", "DEL", "c1", &pm1)
        .netns(&c1)
        .run()
        .silent_success();
    assert_eq!(fetch(), None);
    for name in ["pm4-any", "pm6-any", "pm4-snat", "pm6-snat"] {
        assert_eq!(elements_in(&w, name), 0, "{name}");
    }
}
