//! The masquerade module against the real kernel, inside throwaway
//! namespaces, read back with `nft -j`. Nothing here runs in (or sends
//! traffic from) the root namespace.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use cni_kernel::masquerade::{self, MasqOwner};
use cni_kernel::{KernelError, Netns, sysctl};
use cni_tests::{Netns as TestNs, cmd, must};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

fn owner<'a>(network: &'a str, container_id: &'a str, ifname: &'a str) -> MasqOwner<'a> {
    MasqOwner {
        network,
        container_id,
        ifname,
    }
}

fn nets(addrs: &[&str]) -> Vec<IpNetwork> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

/// Run `f` on a thread inside the test namespace.
fn within<T: Send>(ns: &TestNs, f: impl FnOnce() -> T + Send) -> T {
    Netns::open(ns.path()).unwrap().run(f).unwrap()
}

fn add(ns: &TestNs, o: &MasqOwner, addrs: &[&str]) {
    let addrs = nets(addrs);
    within(ns, || masquerade::add(o, &addrs)).unwrap_or_else(|e| panic!("add {o:?}: {e}"));
}

fn del(ns: &TestNs, o: &MasqOwner) {
    within(ns, || masquerade::del(o)).unwrap_or_else(|e| panic!("del {o:?}: {e}"));
}

fn installed(ns: &TestNs, o: &MasqOwner) -> Option<Vec<IpAddr>> {
    within(ns, || masquerade::installed(o)).unwrap()
}

fn owners(ns: &TestNs, network: &str) -> Vec<(String, String)> {
    within(ns, || masquerade::owners(network)).unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, i)| (c.to_string(), i.to_string()))
        .collect()
}

/// `nft -j list table inet cni-rs` in `ns`: the list of objects, or None when
/// there is no such table.
fn table(ns: &str) -> Option<Vec<Value>> {
    let out = cmd(
        "ip",
        &[
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "cni-rs",
        ],
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file or directory"), "nft: {err}");
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["nftables"].as_array().unwrap().clone())
}

fn chain(ns: &TestNs, name: &str) -> Option<Value> {
    table(&ns.name)?
        .into_iter()
        .find(|o| o["chain"]["name"] == name)
        .map(|o| o["chain"].clone())
}

fn chain_names(ns: &TestNs) -> Vec<String> {
    let mut names: Vec<String> = table(&ns.name)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// One rule's expressions the way nft writes them, e.g.
/// `ip saddr == 10.1.0.5 ip daddr != 10.1.0.0/16 ... masquerade`, with the
/// `meta nfproto` match that nft may show or leave implicit dropped.
fn render(rule: &Value) -> String {
    let one = |e: &Value| -> Option<String> {
        if e.get("masquerade").is_some() {
            return Some("masquerade".into());
        }
        let m = &e["match"];
        let left = &m["left"];
        let left = if let Some(p) = left.get("payload") {
            format!("{} {}", p["protocol"].as_str()?, p["field"].as_str()?)
        } else if let Some(meta) = left.get("meta") {
            if meta["key"] == "nfproto" {
                return None;
            }
            format!("meta {}", meta["key"].as_str()?)
        } else {
            left.to_string()
        };
        let right = match &m["right"] {
            Value::String(s) => s.clone(),
            v if v.get("prefix").is_some() => {
                format!("{}/{}", v["prefix"]["addr"].as_str()?, v["prefix"]["len"])
            }
            v => v.to_string(),
        };
        Some(format!("{left} {} {right}", m["op"].as_str()?))
    };
    rule["expr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(one)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rules of a chain: (handle, rendered expressions, comment).
fn rules(ns: &TestNs, chain: &str) -> Vec<(u64, String, String)> {
    table(&ns.name)
        .unwrap_or_default()
        .iter()
        .filter(|o| o["rule"]["chain"] == chain)
        .map(|o| {
            let r = &o["rule"];
            (
                r["handle"].as_u64().unwrap(),
                render(r),
                r["comment"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn rendered(ns: &TestNs, chain: &str) -> Vec<String> {
    rules(ns, chain).into_iter().map(|(_, r, _)| r).collect()
}

/// Change the ruleset behind the module's back. nft 1.0.6 cannot name a
/// chain with ':' on its command line, so this speaks JSON.
fn nft_json(ns: &TestNs, commands: Value) {
    let doc = json!({ "nftables": commands }).to_string();
    must("ip", &["netns", "exec", &ns.name, "nft", "-j", &doc]);
}

/// The root namespace's `inet cni-rs` table (or its absence), to compare
/// before and after a test.
fn root_snapshot() -> (bool, String) {
    let out = cmd("nft", &["-j", "list", "table", "inet", "cni-rs"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn add_installs_a_nat_base_chain_with_one_rule_per_address() {
    let root = root_snapshot();
    let ns = TestNs::new("msq");
    assert!(table(&ns.name).is_none());
    let o = owner("net1", "ctr-1", "eth0");
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64", "10.2.0.9/32"]);

    let c = chain(&ns, "masq/net1/ctr-1/eth0").expect("chain created");
    assert_eq!(c["family"], "inet");
    assert_eq!(c["table"], "cni-rs");
    assert_eq!(c["type"], "nat");
    assert_eq!(c["hook"], "postrouting");
    assert_eq!(c["prio"], 100);
    assert_eq!(c["policy"], "accept");

    let rules = rules(&ns, "masq/net1/ctr-1/eth0");
    let exprs: Vec<&str> = rules.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(
        exprs,
        [
            "ip saddr == 10.1.0.5 ip daddr != 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
            "ip6 saddr == fd00:1::5 ip6 daddr != fd00:1::/64 ip6 daddr != ff00::/8 masquerade",
            "ip saddr == 10.2.0.9 ip daddr != 10.2.0.9 ip daddr != 224.0.0.0/4 masquerade",
        ]
    );
    for (_, _, comment) in &rules {
        assert_eq!(comment, "cni-rs masquerade: net1 ctr-1 eth0");
    }
    // nft itself reads the rules back as the design writes them.
    let text = must(
        "ip",
        &[
            "netns", "exec", &ns.name, "nft", "list", "table", "inet", "cni-rs",
        ],
    );
    assert!(
        text.contains(
            "ip saddr 10.1.0.5 ip daddr != 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade"
        ),
        "{text}"
    );
    assert_eq!(
        installed(&ns, &o),
        Some(ips(&["10.1.0.5", "fd00:1::5", "10.2.0.9"]))
    );
    assert_eq!(owners(&ns, "net1"), pairs(&[("ctr-1", "eth0")]));
    assert_eq!(root_snapshot(), root, "the root namespace was touched");
}

#[test]
fn re_add_replaces_rather_than_duplicates() {
    let ns = TestNs::new("msq");
    let o = owner("net1", "ctr-1", "eth0");
    let name = "masq/net1/ctr-1/eth0";
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64"]);
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64"]);
    assert_eq!(rules(&ns, name).len(), 2);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5", "fd00:1::5"])));

    add(&ns, &o, &["10.1.0.6/24"]);
    assert_eq!(
        rendered(&ns, name),
        ["ip saddr == 10.1.0.6 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade"]
    );
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.6"])));
    assert_eq!(chain_names(&ns), [name]);

    // No addresses: like del.
    add(&ns, &o, &[]);
    assert_eq!(installed(&ns, &o), None);
    assert!(chain_names(&ns).is_empty());
}

#[test]
fn owners_coexist_and_del_removes_only_its_own() {
    let ns = TestNs::new("msq");
    let a = owner("net1", "ctr-1", "eth0");
    let b = owner("net1", "ctr-2", "eth0");
    let c = owner("net1", "ctr-1", "eth1");
    // Other networks, one a prefix of the other, are not net1's.
    let d = owner("net10", "ctr-1", "eth0");
    let e = owner("net", "ctr-9", "eth0");
    add(&ns, &a, &["10.1.0.5/16"]);
    add(&ns, &b, &["10.1.0.6/16"]);
    add(&ns, &c, &["10.3.0.5/24", "fd00:3::5/64"]);
    add(&ns, &d, &["10.10.0.5/16"]);
    add(&ns, &e, &["10.20.0.5/16"]);
    assert_eq!(
        owners(&ns, "net1"),
        pairs(&[("ctr-1", "eth0"), ("ctr-1", "eth1"), ("ctr-2", "eth0")])
    );
    assert_eq!(owners(&ns, "net10"), pairs(&[("ctr-1", "eth0")]));
    assert_eq!(owners(&ns, "net"), pairs(&[("ctr-9", "eth0")]));
    assert!(owners(&ns, "other").is_empty());

    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert_eq!(installed(&ns, &b), Some(ips(&["10.1.0.6"])));
    assert_eq!(installed(&ns, &c), Some(ips(&["10.3.0.5", "fd00:3::5"])));
    assert_eq!(installed(&ns, &d), Some(ips(&["10.10.0.5"])));
    assert_eq!(
        owners(&ns, "net1"),
        pairs(&[("ctr-1", "eth1"), ("ctr-2", "eth0")])
    );
    assert_eq!(
        chain_names(&ns),
        [
            "masq/net/ctr-9/eth0",
            "masq/net1/ctr-1/eth1",
            "masq/net1/ctr-2/eth0",
            "masq/net10/ctr-1/eth0",
        ]
    );
    // A foreign table in the namespace is left alone.
    nft_json(
        &ns,
        json!([{"add": {"table": {"family": "ip", "name": "other"}}}]),
    );
    del(&ns, &b);
    assert!(
        must("ip", &["netns", "exec", &ns.name, "nft", "list", "tables"])
            .contains("table ip other")
    );
}

#[test]
fn del_is_idempotent() {
    let ns = TestNs::new("msq");
    let o = owner("net1", "ctr-1", "eth0");
    // No table at all.
    del(&ns, &o);
    del(&ns, &o);
    assert!(table(&ns.name).is_none(), "del created something");
    assert_eq!(installed(&ns, &o), None);
    assert!(owners(&ns, "net1").is_empty());

    // The table, but not this chain.
    add(&ns, &owner("net1", "ctr-2", "eth0"), &["10.1.0.6/16"]);
    del(&ns, &o);
    add(&ns, &o, &["10.1.0.5/16"]);
    del(&ns, &o);
    del(&ns, &o);
    assert_eq!(installed(&ns, &o), None);
    assert_eq!(chain_names(&ns), ["masq/net1/ctr-2/eth0"]);
}

#[test]
fn installed_detects_changes_behind_its_back() {
    let ns = TestNs::new("msq");
    let o = owner("net1", "ctr-1", "eth0");
    let name = "masq/net1/ctr-1/eth0";
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64"]);
    let (handle, ..) = rules(&ns, name)[0].clone();
    nft_json(
        &ns,
        json!([{"delete": {"rule": {
            "family": "inet", "table": "cni-rs", "chain": name, "handle": handle
        }}}]),
    );
    assert_eq!(installed(&ns, &o), Some(ips(&["fd00:1::5"])));

    // A rule someone else put in our chain is no address of ours.
    nft_json(
        &ns,
        json!([{"add": {"rule": {
            "family": "inet", "table": "cni-rs", "chain": name, "expr": [{"counter": null}]
        }}}]),
    );
    assert_eq!(installed(&ns, &o), Some(ips(&["fd00:1::5"])));

    nft_json(
        &ns,
        json!([
            {"flush": {"chain": {"family": "inet", "table": "cni-rs", "name": name}}},
            {"delete": {"chain": {"family": "inet", "table": "cni-rs", "name": name}}}
        ]),
    );
    assert_eq!(installed(&ns, &o), None);
    // And the whole table.
    add(&ns, &o, &["10.1.0.5/16"]);
    nft_json(
        &ns,
        json!([{"delete": {"table": {"family": "inet", "name": "cni-rs"}}}]),
    );
    assert_eq!(installed(&ns, &o), None);
    del(&ns, &o);
}

#[test]
fn available_and_unusable_owners() {
    let ns = TestNs::new("msq");
    within(&ns, masquerade::available).unwrap();

    let long = "n".repeat(240);
    let o = owner(&long, "0123456789abcdef", "eth0");
    let e = within(&ns, || masquerade::add(&o, &nets(&["10.1.0.5/16"]))).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::NftNameTooLong {
                what: "masquerade",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("too long for masquerade"), "{e}");
    assert_eq!(
        cni_types::CniError::from(e).code,
        cni_types::Code::INVALID_CONFIG
    );
    // It cannot have been installed, so there is nothing to delete or check.
    del(&ns, &o);
    assert_eq!(installed(&ns, &o), None);

    let colon = owner("net1", "ctr/1", "eth0");
    let e = within(&ns, || masquerade::add(&colon, &nets(&["10.1.0.5/16"]))).unwrap_err();
    assert!(matches!(e, KernelError::NftOwner { .. }), "{e:?}");
    del(&ns, &colon);
    assert!(table(&ns.name).is_none());
}

/// A batch the kernel refuses part way changes nothing: the chain exists as
/// a regular chain, so making it a base chain fails after the flush was
/// queued, and the flush is rolled back with the rest.
#[test]
fn a_refused_batch_changes_nothing() {
    let ns = TestNs::new("msq");
    let name = "masq/net1/ctr-1/eth0";
    nft_json(
        &ns,
        json!([
            {"add": {"table": {"family": "inet", "name": "cni-rs"}}},
            {"add": {"chain": {"family": "inet", "table": "cni-rs", "name": name}}},
            {"add": {"rule": {
                "family": "inet", "table": "cni-rs", "chain": name, "expr": [{"counter": null}]
            }}}
        ]),
    );
    let before = rules(&ns, name);
    assert_eq!(before.len(), 1);
    let o = owner("net1", "ctr-1", "eth0");
    let e = within(&ns, || masquerade::add(&o, &nets(&["10.1.0.5/16"]))).unwrap_err();
    assert!(matches!(e, KernelError::Nftables { .. }), "{e:?}");
    assert!(e.errno().is_some(), "{e:?}");
    assert!(e.to_string().contains(name), "{e}");
    assert_eq!(
        cni_types::CniError::from(e).code,
        cni_types::Code::IO_FAILURE
    );
    assert_eq!(rules(&ns, name), before);
    // del takes it away all the same.
    del(&ns, &o);
    assert!(chain_names(&ns).is_empty());
}

#[test]
fn concurrent_adds_and_dels_of_different_owners() {
    let ns = TestNs::new("msq");
    let ids: Vec<String> = (0..16).map(|i| format!("ctr-{i:02}")).collect();
    std::thread::scope(|s| {
        for (i, id) in ids.iter().enumerate() {
            let ns = &ns;
            s.spawn(move || {
                let o = owner("net1", id, "eth0");
                add(ns, &o, &[&format!("10.1.0.{}/16", i + 2)]);
                if i % 2 == 1 {
                    del(ns, &o);
                }
            });
        }
    });
    let expected: Vec<(String, String)> = ids
        .iter()
        .step_by(2)
        .map(|id| (id.clone(), "eth0".to_owned()))
        .collect();
    assert_eq!(owners(&ns, "net1"), expected);
    for (i, id) in ids.iter().enumerate().step_by(2) {
        let addr = format!("10.1.0.{}", i + 2);
        assert_eq!(
            installed(&ns, &owner("net1", id, "eth0")),
            Some(ips(&[&addr]))
        );
    }
}

/// Try a TCP connection from inside `from` to `to`; the address the listener
/// saw it come from, or None when it did not get through.
fn connect(from: &TestNs, listener: &TcpListener, to: SocketAddr) -> Option<IpAddr> {
    let stream = within(from, || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500))
    });
    let _stream = stream.ok()?;
    let (_, peer) = listener.accept().unwrap();
    Some(peer.ip())
}

/// C (10.77.0.2/24) reaches O (192.0.2.2/24) through H, which forwards. O has
/// no route back to 10.77.0.0/24, so a connection only completes when H
/// masquerades it, and O then sees H's address as the source.
#[test]
fn masquerade_rewrites_the_source_of_forwarded_traffic() {
    let root = root_snapshot();
    let h = TestNs::new("msqh");
    let c = TestNs::new("msqc");
    let o = TestNs::new("msqo");
    h.ip(&[
        "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", &c.name,
    ]);
    h.ip(&[
        "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", &o.name,
    ]);
    h.ip(&["addr", "add", "10.77.0.1/24", "dev", "vc"]);
    h.ip(&["addr", "add", "192.0.2.1/24", "dev", "vo"]);
    c.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    o.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    for (ns, links) in [
        (&h, &["lo", "vc", "vo"][..]),
        (&c, &["lo", "eth0"][..]),
        (&o, &["lo", "eth0"][..]),
    ] {
        for link in links {
            ns.ip(&["link", "set", link, "up"]);
        }
    }
    c.ip(&["route", "add", "default", "via", "10.77.0.1"]);
    within(&h, || sysctl::write("net.ipv4.ip_forward", "1")).unwrap();

    let listener = within(&o, || TcpListener::bind("192.0.2.2:0")).unwrap();
    let to = listener.local_addr().unwrap();
    assert_eq!(
        connect(&c, &listener, to),
        None,
        "O can answer C without NAT"
    );

    let owner = owner("net1", "ctr-1", "eth0");
    add(&h, &owner, &["10.77.0.2/24"]);
    assert_eq!(
        connect(&c, &listener, to),
        Some("192.0.2.1".parse().unwrap()),
        "not masqueraded to H's address"
    );
    // A destination inside the container's network is not masqueraded; with
    // a /0 prefix every destination is.
    add(&h, &owner, &["10.77.0.2/0"]);
    assert_eq!(
        connect(&c, &listener, to),
        None,
        "masqueraded within its network"
    );
    add(&h, &owner, &["10.77.0.2/24"]);
    assert_eq!(
        connect(&c, &listener, to),
        Some("192.0.2.1".parse().unwrap())
    );

    del(&h, &owner);
    assert_eq!(
        connect(&c, &listener, to),
        None,
        "still masqueraded after del"
    );
    assert_eq!(root_snapshot(), root, "the root namespace was touched");
}
