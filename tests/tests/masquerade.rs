//! The masquerade module against the real kernel, inside throwaway
//! namespaces, read back with `nft -j`. Nothing here runs in (or sends
//! traffic from) the root namespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cni_kernel::masquerade::{self, MasqOwner};
use cni_kernel::{KernelError, sysctl};
use cni_tests::nft::{self, ips, nets, nft, nft_json, pairs, root_snapshot, within};
use cni_tests::{Netns as TestNs, TempDir, must};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

fn owner<'a>(network: &'a str, container_id: &'a str, ifname: &'a str) -> MasqOwner<'a> {
    MasqOwner {
        network,
        container_id,
        ifname,
    }
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

fn chain(ns: &TestNs, name: &str) -> Option<Value> {
    nft::chain(nft::table(ns)?, name)
}

/// The base chain that masquerades through the maps.
const BASE: &str = "masquerading";

/// Its two rules, as nft shows them.
const DISPATCH: [&str; 2] = [
    "ip saddr == @masq4 ip saddr . ip daddr != @masq4-local ip daddr != 224.0.0.0/4 masquerade",
    "ip6 saddr == @masq6 ip6 saddr . ip6 daddr != @masq6-local ip6 daddr != ff00::/8 masquerade",
];

/// The owners' chains (`masq/...`), sorted.
fn chain_names(ns: &TestNs) -> Vec<String> {
    nft::chain_names(&nft::table(ns).unwrap_or_default(), "masq/")
}

/// The elements of map `masq4` or `masq6` as (key, owner's record chain),
/// sorted, each checked to carry that owner's tag.
fn elements(ns: &TestNs, map: &str) -> Vec<(String, String)> {
    nft::tagged(&nft::table(ns).unwrap_or_default(), map, "masq")
}

/// The ranges of set `masq4-local` or `masq6-local`, as `addr . net/len`,
/// sorted.
fn locals(ns: &TestNs, set: &str) -> Vec<String> {
    let objs = nft::table(ns).unwrap_or_default();
    let mut out: Vec<String> = objs
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|s| s["name"] == set)
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["concat"];
            let net = &c[1]["prefix"];
            let net = if net.is_null() {
                c[1].as_str().unwrap().to_owned()
            } else {
                format!("{}/{}", net["addr"].as_str().unwrap(), net["len"])
            };
            format!("{} . {net}", c[0].as_str().unwrap())
        })
        .collect();
    out.sort();
    out
}

fn elems(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(k, c)| (k.to_string(), c.to_string()))
        .collect();
    v.sort();
    v
}

/// What stays once every owner is gone: the table, the empty maps and sets
/// and the base chain with its two rules.
fn assert_only_the_setup(ns: &TestNs) {
    assert!(chain_names(ns).is_empty(), "{:?}", chain_names(ns));
    assert!(elements(ns, "masq4").is_empty());
    assert!(elements(ns, "masq6").is_empty());
    assert!(locals(ns, "masq4-local").is_empty());
    assert!(locals(ns, "masq6-local").is_empty());
    let base = chain(ns, BASE).expect("base chain");
    assert_eq!(base["hook"], "postrouting");
    assert_eq!(rendered(ns, BASE), DISPATCH);
}

/// One rule's expressions the way nft writes them, e.g.
/// `ip saddr == 10.1.0.5 ip daddr != 10.1.0.0/16 ... masquerade`, with the
/// `meta nfproto` match that nft may show or leave implicit dropped.
fn render(rule: &Value) -> String {
    let one = |e: &Value| -> Option<String> {
        if e.get("masquerade").is_some() {
            return Some("masquerade".into());
        }
        if let Some(v) = e.get("vmap") {
            let p = &v["key"]["payload"];
            return Some(format!(
                "{} {} vmap {}",
                p["protocol"].as_str()?,
                p["field"].as_str()?,
                v["data"].as_str()?
            ));
        }
        let m = &e["match"];
        let left = &m["left"];
        let field = |p: &Value| -> Option<String> {
            let p = &p["payload"];
            Some(format!(
                "{} {}",
                p["protocol"].as_str()?,
                p["field"].as_str()?
            ))
        };
        let left = if let Some(parts) = left.get("concat") {
            let parts: Option<Vec<String>> = parts.as_array()?.iter().map(field).collect();
            parts?.join(" . ")
        } else if let Some(p) = left.get("payload") {
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
    nft::rules(&nft::table(ns).unwrap_or_default(), chain)
        .iter()
        .map(|r| {
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

#[test]
fn add_installs_elements_and_a_record() {
    let root = root_snapshot();
    let ns = TestNs::new("msq");
    assert!(nft::table(&ns).is_none());
    let o = owner("net1", "ctr-1", "eth0");
    let name = "masq/net1/ctr-1/eth0";
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64", "10.2.0.9/32"]);

    // One nat base chain for everyone, looking the packet up in the maps.
    let base = chain(&ns, BASE).expect("base chain created");
    assert_eq!(base["family"], "inet");
    assert_eq!(base["table"], "cni-rs");
    assert_eq!(base["type"], "nat");
    assert_eq!(base["hook"], "postrouting");
    assert_eq!(base["prio"], 100);
    assert_eq!(base["policy"], "accept");
    assert_eq!(rendered(&ns, BASE), DISPATCH);
    let maps: Vec<Value> = nft::table(&ns)
        .unwrap()
        .into_iter()
        .filter_map(|o| o.get("map").cloned())
        .collect();
    assert_eq!(maps.len(), 2, "{maps:?}");
    for (m, ty) in maps.iter().zip(["ipv4_addr", "ipv6_addr"]) {
        assert_eq!(m["type"], ty, "{m}");
        assert_eq!(m["map"], "mark", "{m}");
    }

    // The owner's record is a regular chain nothing jumps to; its elements
    // carry its tag and comment, and each address its own network's range.
    let c = chain(&ns, name).expect("owner chain created");
    assert!(c.get("hook").is_none() && c.get("type").is_none(), "{c}");
    assert_eq!(
        elements(&ns, "masq4"),
        elems(&[("10.1.0.5", name), ("10.2.0.9", name)])
    );
    assert_eq!(elements(&ns, "masq6"), elems(&[("fd00:1::5", name)]));
    assert_eq!(
        locals(&ns, "masq4-local"),
        ["10.1.0.5 . 10.1.0.0/16", "10.2.0.9 . 10.2.0.9"]
    );
    assert_eq!(locals(&ns, "masq6-local"), ["fd00:1::5 . fd00:1::/64"]);

    let rules = rules(&ns, name);
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
        assert_eq!(comment, "cni-rs masquerade record: net1 ctr-1 eth0");
    }
    // nft itself reads the rules back as the design writes them, and its
    // listing loads back (no chain is named after an nft keyword).
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
    assert!(
        text.contains("10.1.0.5 comment \"cni-rs masquerade: net1 ctr-1 eth0\" : 0x"),
        "{text}"
    );
    let dir = TempDir::new("msqlist");
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, &text).unwrap();
    let file = file.display().to_string();
    must("ip", &["netns", "exec", &ns.name, "nft", "-c", "-f", &file]);
    // It loads into an empty namespace, too.
    let other = TestNs::new("msq");
    must("ip", &["netns", "exec", &other.name, "nft", "-f", &file]);

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
    assert_eq!(rendered(&ns, BASE).len(), 2);
    assert_eq!(elements(&ns, "masq4"), elems(&[("10.1.0.5", name)]));
    assert_eq!(elements(&ns, "masq6"), elems(&[("fd00:1::5", name)]));
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5", "fd00:1::5"])));

    // The elements of addresses it no longer has go with their rules.
    add(&ns, &o, &["10.1.0.6/24"]);
    assert_eq!(
        rendered(&ns, name),
        ["ip saddr == 10.1.0.6 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade"]
    );
    assert_eq!(elements(&ns, "masq4"), elems(&[("10.1.0.6", name)]));
    assert!(elements(&ns, "masq6").is_empty());
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.6"])));
    assert_eq!(chain_names(&ns), [name]);

    // No addresses: like del.
    add(&ns, &o, &[]);
    assert_eq!(installed(&ns, &o), None);
    assert_only_the_setup(&ns);
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

    assert_eq!(elements(&ns, "masq4").len(), 5);
    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert!(!elements(&ns, "masq4").contains(&("10.1.0.5".into(), "masq/net1/ctr-1/eth0".into())));
    assert_eq!(elements(&ns, "masq4").len(), 4);
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
    assert!(nft::table(&ns).is_none(), "del created something");
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

    // A rule whose map element is gone does not masquerade.
    nft(
        &ns,
        &[
            "delete",
            "element",
            "inet",
            "cni-rs",
            "masq6",
            "{ fd00:1::5 }",
        ],
    );
    assert_eq!(installed(&ns, &o), Some(vec![]));

    // Nor does an element whose rules were flushed.
    add(&ns, &o, &["10.1.0.5/16", "fd00:1::5/64"]);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5", "fd00:1::5"])));
    nft(&ns, &["flush", "chain", "inet", "cni-rs", name]);
    assert_eq!(installed(&ns, &o), Some(vec![]));

    // Without the base chain nothing is dispatched; ADD sets it up again.
    add(&ns, &o, &["10.1.0.5/16"]);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5"])));
    nft(&ns, &["flush", "chain", "inet", "cni-rs", BASE]);
    nft(&ns, &["delete", "chain", "inet", "cni-rs", BASE]);
    assert_eq!(installed(&ns, &o), Some(vec![]));
    add(&ns, &o, &["10.1.0.5/16"]);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5"])));
    assert_eq!(rendered(&ns, BASE).len(), 2);

    // And the whole table.
    add(&ns, &o, &["10.1.0.5/16"]);
    nft(&ns, &["delete", "table", "inet", "cni-rs"]);
    assert_eq!(installed(&ns, &o), None);
    del(&ns, &o);
    // ADD sets everything up again.
    add(&ns, &o, &["10.1.0.5/16"]);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5"])));
    assert_eq!(elements(&ns, "masq4"), elems(&[("10.1.0.5", name)]));
}

/// The owner's rules flushed behind its back lose the keys of its elements,
/// which still reference its chain: DEL finds them in the maps.
#[test]
fn del_after_the_chain_was_flushed_behind_its_back() {
    let ns = TestNs::new("msq");
    let a = owner("net1", "ctr-1", "eth0");
    let b = owner("net1", "ctr-2", "eth0");
    add(&ns, &a, &["10.1.0.5/16", "fd00:1::5/64"]);
    add(&ns, &b, &["10.1.0.6/16"]);
    nft(
        &ns,
        &["flush", "chain", "inet", "cni-rs", "masq/net1/ctr-1/eth0"],
    );
    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert_eq!(chain_names(&ns), ["masq/net1/ctr-2/eth0"]);
    assert_eq!(
        elements(&ns, "masq4"),
        elems(&[("10.1.0.6", "masq/net1/ctr-2/eth0")])
    );
    assert!(elements(&ns, "masq6").is_empty());
    assert_eq!(installed(&ns, &b), Some(ips(&["10.1.0.6"])));
    del(&ns, &b);
    assert_only_the_setup(&ns);
}

/// An address released by a DEL that never reached us (its chain and
/// element left behind) is handed to a new container: the new owner takes
/// the element over, and the old owner's later DEL leaves it alone.
#[test]
fn a_reused_address_is_taken_over() {
    let ns = TestNs::new("msq");
    let a = owner("net1", "ctr-a", "eth0");
    let b = owner("net1", "ctr-b", "eth0");
    add(&ns, &a, &["10.1.0.5/16", "10.1.0.7/16"]);
    add(&ns, &b, &["10.1.0.5/16"]);
    let (ca, cb) = ("masq/net1/ctr-a/eth0", "masq/net1/ctr-b/eth0");
    assert_eq!(
        elements(&ns, "masq4"),
        elems(&[("10.1.0.5", cb), ("10.1.0.7", ca)])
    );
    assert_eq!(installed(&ns, &b), Some(ips(&["10.1.0.5"])));
    // A's chain still names the address, but it is not A's any more.
    assert_eq!(rules(&ns, ca).len(), 2);
    assert_eq!(installed(&ns, &a), Some(ips(&["10.1.0.7"])));
    // Re-adding A takes it back, and B again.
    add(&ns, &a, &["10.1.0.5/16", "10.1.0.7/16"]);
    assert_eq!(installed(&ns, &a), Some(ips(&["10.1.0.5", "10.1.0.7"])));
    assert_eq!(installed(&ns, &b), Some(vec![]));
    add(&ns, &b, &["10.1.0.5/16"]);
    assert_eq!(installed(&ns, &b), Some(ips(&["10.1.0.5"])));

    // A's late DEL removes its chain and its own element only.
    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert_eq!(chain_names(&ns), [cb]);
    assert_eq!(elements(&ns, "masq4"), elems(&[("10.1.0.5", cb)]));
    assert_eq!(installed(&ns, &b), Some(ips(&["10.1.0.5"])));
    assert_eq!(
        rendered(&ns, cb),
        ["ip saddr == 10.1.0.5 ip daddr != 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade"]
    );
    // Re-adding with another address drops the owner's old element only.
    add(&ns, &a, &["10.1.0.9/16"]);
    add(&ns, &b, &["10.1.0.6/16"]);
    assert_eq!(
        elements(&ns, "masq4"),
        elems(&[("10.1.0.6", cb), ("10.1.0.9", ca)])
    );
}

/// The kernel allows 1024 hook entries per hook and namespace; with one
/// base chain per owner, the 1025th owner failed (E2BIG). Through the maps,
/// the number of owners is not limited that way.
#[test]
fn beyond_the_hook_limit() {
    const N: u32 = 1500;
    let ns = TestNs::new("msq");
    let ids: Vec<String> = (0..N).map(|i| format!("ctr-{i:04}")).collect();
    let first = u32::from(Ipv4Addr::new(10, 64, 0, 2));
    let addr = |i: u32| IpNetwork::new(Ipv4Addr::from(first + i).into(), 16).unwrap();
    let added = within(&ns, || {
        let start = Instant::now();
        for (i, id) in (0..N).zip(&ids) {
            let o = owner("net1", id, "eth0");
            masquerade::add(&o, &[addr(i)]).unwrap_or_else(|e| panic!("add {id}: {e}"));
        }
        start.elapsed()
    });
    assert_eq!(owners(&ns, "net1").len(), N as usize);
    for i in [0, N / 2, N - 1] {
        let o = owner("net1", &ids[i as usize], "eth0");
        assert_eq!(installed(&ns, &o), Some(vec![addr(i).ip()]));
    }
    let elems = elements(&ns, "masq4");
    assert_eq!(elems.len(), N as usize);
    assert!(elems.contains(&("10.64.5.221".into(), "masq/net1/ctr-1499/eth0".into())));
    assert_eq!(rendered(&ns, BASE).len(), 2);

    // Each DEL's transaction frees what it deleted after an RCU grace
    // period, and the kernel waits for that when the netlink socket closes
    // (~10 ms here, as with the old layout): four at a time, as a runtime
    // would, overlap a little of that.
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in ids.chunks(ids.len().div_ceil(4)) {
            let ns = &ns;
            s.spawn(move || {
                within(ns, || {
                    for id in part {
                        let o = owner("net1", id, "eth0");
                        masquerade::del(&o).unwrap_or_else(|e| panic!("del {id}: {e}"));
                    }
                })
            });
        }
    });
    let deleted = start.elapsed();
    eprintln!(
        "{N} owners: added in {:.2} s, deleted in {:.2} s",
        added.as_secs_f64(),
        deleted.as_secs_f64()
    );
    assert!(owners(&ns, "net1").is_empty());
    assert_only_the_setup(&ns);
}

#[test]
fn available_and_unusable_owners() {
    let ns = TestNs::new("msq");
    within(&ns, masquerade::available).unwrap();

    // A long network (the reference accepts 185 bytes with 64-byte ids)
    // is named by its digest in chain names: it works like any other.
    let long = "n".repeat(240);
    let id = "f".repeat(64);
    let o = owner(&long, &id, "eth0");
    within(&ns, || masquerade::add(&o, &nets(&["10.1.0.5/16"]))).unwrap();
    assert!(installed(&ns, &o).is_some());
    assert_eq!(owners(&ns, &long), [(id.clone(), "eth0".to_string())]);
    del(&ns, &o);
    assert_eq!(installed(&ns, &o), None);
    // An id too long even then cannot be installed.
    let long_id = "c".repeat(240);
    let o = owner(&long, &long_id, "eth0");
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
    // Only the setup the long-named owner's ADD made is left.
    assert_only_the_setup(&ns);
}

/// A batch the kernel refuses part way changes nothing: the owner's chain
/// exists (holding a foreign counter) and a filter base chain jumps to it,
/// so the kernel refuses a masquerade rule in it when it validates the
/// batch, after the flush was queued; the flush is rolled back with the rest.
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
            }}},
            {"add": {"chain": {
                "family": "inet", "table": "cni-rs", "name": "filter",
                "type": "filter", "hook": "input", "prio": 0, "policy": "accept"
            }}},
            {"add": {"rule": {
                "family": "inet", "table": "cni-rs", "chain": "filter",
                "expr": [{"jump": {"target": name}}]
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
    assert!(elements(&ns, "masq4").is_empty());
    // The setup was part of the refused transaction: not made either.
    assert!(chain(&ns, BASE).is_none());
    // del takes it away all the same, once nothing else jumps to it.
    nft(&ns, &["flush", "chain", "inet", "cni-rs", "filter"]);
    nft(&ns, &["delete", "chain", "inet", "cni-rs", "filter"]);
    del(&ns, &o);
    assert!(chain_names(&ns).is_empty());
    assert!(elements(&ns, "masq4").is_empty());
    // And the next ADD works.
    add(&ns, &o, &["10.1.0.5/16"]);
    assert_eq!(installed(&ns, &o), Some(ips(&["10.1.0.5"])));
    del(&ns, &o);
    assert_only_the_setup(&ns);
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
    assert_eq!(elements(&ns, "masq4").len(), expected.len());
    assert_eq!(rendered(&ns, BASE).len(), 2, "setup made more than once");
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
