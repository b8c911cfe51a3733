//! The portmap module against the real kernel, inside throwaway namespaces,
//! read back with `nft`, and real traffic between namespaces the tests
//! create. Nothing here runs in (or sends traffic from) the root namespace.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ::portmap::rules::{self as portmap, Cond, Mapping, NftOwner, Proto, Setup};
use cni_kernel::{KernelError, sysctl};
use cni_tests::nft::{self, nets, nft, objects, pairs, root_snapshot, within};
use cni_tests::{Netns as TestNs, TempDir, cmd, wait_for};
use ipnetwork::IpNetwork;
use serde_json::Value;

fn owner<'a>(network: &'a str, container_id: &'a str, ifname: &'a str) -> NftOwner<'a> {
    NftOwner {
        network,
        container_id,
        ifname,
    }
}

fn map(proto: Proto, host_port: u16, host_ip: Option<&str>, to: &str, port: u16) -> Mapping {
    Mapping {
        proto,
        host_port,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        container_ip: to.parse().unwrap(),
        container_port: port,
    }
}

fn tcp(host_port: u16, to: &str, port: u16) -> Mapping {
    map(Proto::Tcp, host_port, None, to, port)
}

/// The options of a setup besides its owner and mappings.
#[derive(Clone, Default)]
struct Opts {
    no_snat: bool,
    masq_all: bool,
    hairpin: Vec<IpNetwork>,
    v4: Vec<Cond>,
    v6: Vec<Cond>,
}

fn try_add(
    ns: &TestNs,
    o: &NftOwner,
    mappings: &[Mapping],
    opts: &Opts,
) -> Result<(), KernelError> {
    within(ns, || {
        portmap::add(&Setup {
            owner: *o,
            mappings,
            snat: !opts.no_snat,
            masq_all: opts.masq_all,
            hairpin_from: &opts.hairpin,
            conditions_v4: &opts.v4,
            conditions_v6: &opts.v6,
        })
    })
}

fn add_with(ns: &TestNs, o: &NftOwner, mappings: &[Mapping], opts: &Opts) {
    try_add(ns, o, mappings, opts).unwrap_or_else(|e| panic!("add {o:?}: {e}"));
}

fn add(ns: &TestNs, o: &NftOwner, mappings: &[Mapping]) {
    add_with(ns, o, mappings, &Opts::default());
}

fn del(ns: &TestNs, o: &NftOwner) {
    within(ns, || portmap::del(o)).unwrap_or_else(|e| panic!("del {o:?}: {e}"));
}

fn installed(ns: &TestNs, o: &NftOwner) -> Option<Vec<Mapping>> {
    within(ns, || portmap::installed(o)).unwrap()
}

fn owners(ns: &TestNs, network: &str) -> Vec<(String, String)> {
    within(ns, || portmap::owners(network)).unwrap()
}

/// `nft list table inet cni-rs` in `ns`, or None when there is no table.
fn listing(ns: &TestNs) -> Option<String> {
    let out = cmd(
        "ip",
        &[
            "netns", "exec", &ns.name, "nft", "list", "table", "inet", "cni-rs",
        ],
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file or directory"), "nft: {err}");
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn chain(ns: &TestNs, name: &str) -> Option<Value> {
    nft::chain(objects(ns, "inet"), name)
}

/// The owners' chains (`pm/...`), sorted.
fn chain_names(ns: &TestNs) -> Vec<String> {
    nft::chain_names(&objects(ns, "inet"), "pm/")
}

/// The elements of `pm-tcp`, `pm-udp` or `pm-sctp` as (port, chain), sorted.
fn elements(ns: &TestNs, map: &str) -> Vec<(u64, String)> {
    nft::jumps(&objects(ns, "inet"), map, |k| k.as_u64().unwrap())
}

/// A value of nft's JSON: a concatenation joined with " . ".
fn text(v: &Value) -> String {
    match v {
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(" . "),
        // An element with a comment.
        Value::Object(o) if o.contains_key("elem") => text(&o["elem"]["val"]),
        Value::Object(o) if o.contains_key("prefix") => {
            format!("{}/{}", text(&o["prefix"]["addr"]), o["prefix"]["len"])
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The elements of a data map (`pm4-any`, ...) as "key : data", or of a
/// set as "key", sorted.
fn data_elements(ns: &TestNs, name: &str) -> Vec<String> {
    let mut elems: Vec<String> = objects(ns, "inet")
        .iter()
        .filter_map(|o| {
            let m = o.get("map").or_else(|| o.get("set"))?;
            (m["name"] == name).then(|| m["elem"].as_array().cloned().unwrap_or_default())
        })
        .flatten()
        .map(|e| match &e {
            Value::Array(kv) => format!("{} : {}", text(&kv[0]), text(&kv[1])),
            Value::Object(o) if o.contains_key("elem") => {
                let v = &o["elem"]["val"];
                match v {
                    Value::Array(kv) => format!("{} : {}", text(&kv[0]), text(&kv[1])),
                    other => text(other),
                }
            }
            other => text(other),
        })
        .collect();
    elems.sort();
    elems
}

fn strs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn elems(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(k, c)| (*k, c.to_string())).collect()
}

/// The number of rules in a chain.
fn rule_count(ns: &TestNs, chain: &str) -> usize {
    nft::rules(&objects(ns, "inet"), chain).len()
}

/// The lines of a chain in the text listing, trimmed (rules, and for a base
/// chain its `type ... hook ...` line), without the `meta nfproto` match
/// that nft shows or leaves implicit.
fn chain_lines(ns: &TestNs, name: &str) -> Vec<String> {
    let text = listing(ns).unwrap_or_default();
    let start = format!("chain {name} {{");
    let mut lines = text.lines().map(str::trim).skip_while(|l| *l != start);
    lines.next();
    lines
        .take_while(|l| *l != "}")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let l = l.strip_prefix("meta nfproto ipv4 ").unwrap_or(l);
            l.strip_prefix("meta nfproto ipv6 ").unwrap_or(l).to_owned()
        })
        .collect()
}

const DISPATCH: [&str; 11] = [
    "fib daddr type local tcp dport vmap @pm-tcp",
    "fib daddr type local udp dport vmap @pm-udp",
    "fib daddr type local sctp dport vmap @pm-sctp",
    "fib daddr type local ip saddr @pm4-src meta l4proto . th dport @pm4-snat meta mark set meta mark | 0x00002000",
    "fib daddr type local meta nfproto ipv4 meta l4proto . th dport @pm4-masqall meta mark set meta mark | 0x00002000",
    "fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @pm4-addr",
    "fib daddr type local meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pm4-any",
    "fib daddr type local ip6 saddr @pm6-src meta l4proto . th dport @pm6-snat meta mark set meta mark | 0x00002000",
    "fib daddr type local meta nfproto ipv6 meta l4proto . th dport @pm6-masqall meta mark set meta mark | 0x00002000",
    "fib daddr type local dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6-addr",
    "fib daddr type local meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pm6-any",
];

/// The data maps and the port sets, emptied when their owners go (the
/// source sets keep what they were given).
const DATA: [&str; 8] = [
    "pm4-any",
    "pm4-addr",
    "pm4-snat",
    "pm4-masqall",
    "pm6-any",
    "pm6-addr",
    "pm6-snat",
    "pm6-masqall",
];

/// What stays once every owner is gone: the maps, empty, and the three
/// base chains with their rules.
fn assert_only_the_setup(ns: &TestNs) {
    assert!(chain_names(ns).is_empty(), "{:?}", chain_names(ns));
    for m in ["pm-tcp", "pm-udp", "pm-sctp"] {
        assert!(elements(ns, m).is_empty(), "{m}: {:?}", elements(ns, m));
    }
    for m in DATA {
        let e = data_elements(ns, m);
        assert!(e.is_empty(), "{m}: {e:?}");
    }
    assert_eq!(
        chain_lines(ns, "portmap-prerouting"),
        [
            &["type nat hook prerouting priority dstnat; policy accept;"][..],
            &DISPATCH
        ]
        .concat()
    );
    assert_eq!(
        chain_lines(ns, "portmap-output"),
        [
            &["type nat hook output priority -100; policy accept;"][..],
            &DISPATCH
        ]
        .concat()
    );
    assert_eq!(
        chain_lines(ns, "portmap-masq"),
        [
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x00002000 == 0x00002000 masquerade",
        ]
    );
}

#[test]
fn add_installs_an_owner_chain_dispatched_through_the_maps() {
    let root = root_snapshot();
    let ns = TestNs::new("pmk");
    assert!(listing(&ns).is_none());
    let o = owner("net1", "ctr-1", "eth0");
    let name = "pm/net1/ctr-1/eth0";
    let mappings = [
        tcp(8080, "10.66.0.2", 80),
        tcp(8080, "fd66::2", 80),
        map(Proto::Udp, 5353, Some("198.51.100.1"), "10.66.0.2", 53),
        map(Proto::Sctp, 9000, None, "10.66.0.2", 9000),
    ];
    let opts = Opts {
        hairpin: nets(&["10.66.0.0/24", "fd66::/64"]),
        v4: vec![Cond::Iifname {
            negate: true,
            name: "cni0".into(),
        }],
        ..Opts::default()
    };
    add_with(&ns, &o, &mappings, &opts);

    // The base chains, once per namespace.
    for (base, hook, prio) in [
        ("portmap-prerouting", "prerouting", -100),
        ("portmap-output", "output", -100),
        ("portmap-masq", "postrouting", 100),
    ] {
        let c = chain(&ns, base).unwrap_or_else(|| panic!("no {base}"));
        assert_eq!(
            (&c["type"], &c["hook"], &c["prio"], &c["policy"]),
            (&"nat".into(), &hook.into(), &prio.into(), &"accept".into()),
            "{c}"
        );
    }
    let maps: Vec<Value> = objects(&ns, "inet")
        .into_iter()
        .filter_map(|o| o.get("map").cloned())
        .collect();
    let names: Vec<&str> = maps.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "pm-tcp", "pm-udp", "pm-sctp", "pm4-any", "pm4-addr", "pm6-any", "pm6-addr"
        ]
    );
    for m in &maps[..3] {
        assert_eq!(
            (&m["type"], &m["map"]),
            (&"inet_service".into(), &"verdict".into())
        );
    }
    let text = listing(&ns).unwrap();
    for decl in [
        "map pm4-any {\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n",
        "map pm4-addr {\n\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n",
        "map pm6-any {\n\t\ttype inet_proto . inet_service : ipv6_addr . inet_service\n",
        "map pm6-addr {\n\t\ttype ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service\n",
        "set pm4-src {\n\t\ttype ipv4_addr\n\t\tflags interval\n",
        "set pm4-snat {\n\t\ttype inet_proto . inet_service\n",
    ] {
        assert!(text.contains(decl), "{decl} in {text}");
    }

    // The owner's chain is a regular chain, reached through its elements.
    let c = chain(&ns, name).expect("owner chain");
    assert!(c.get("hook").is_none(), "{c}");
    assert_eq!(elements(&ns, "pm-tcp"), elems(&[(8080, name)]));
    assert_eq!(elements(&ns, "pm-udp"), elems(&[(5353, name)]));
    assert_eq!(elements(&ns, "pm-sctp"), elems(&[(9000, name)]));
    // With IPv4 conditions, the IPv4 mappings are rules reached through
    // the verdict maps; the IPv6 one (no IPv6 conditions) is an element of
    // `pm6-any`, and its rules in the chain only its record.
    let comment = "comment \"cni-rs portmap: net1 ctr-1 eth0\"";
    let record = "comment \"cni-rs portmap record: net1 ctr-1 eth0\"";
    let cond = "iifname != \"cni0\"";
    let expected: Vec<String> = [
        format!("{cond} tcp dport 8080 ip saddr 10.66.0.0/24 meta mark set meta mark | 0x00002000"),
        format!("{cond} tcp dport 8080 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000"),
        format!("{cond} tcp dport 8080 dnat ip to 10.66.0.2:80"),
        format!("tcp dport 8080 ip6 saddr fd66::/64 meta mark set meta mark | 0x00002000 {record}"),
        format!("tcp dport 8080 dnat ip6 to [fd66::2]:80 {record}"),
        format!("{cond} udp dport 5353 ip daddr 198.51.100.1 ip saddr 10.66.0.0/24 meta mark set meta mark | 0x00002000"),
        format!("{cond} udp dport 5353 ip daddr 198.51.100.1 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000"),
        format!("{cond} udp dport 5353 ip daddr 198.51.100.1 dnat ip to 10.66.0.2:53"),
        format!("{cond} sctp dport 9000 ip saddr 10.66.0.0/24 meta mark set meta mark | 0x00002000"),
        format!("{cond} sctp dport 9000 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000"),
        format!("{cond} sctp dport 9000 dnat ip to 10.66.0.2:9000"),
    ]
    .into_iter()
    .map(|r| {
        if r.contains(record) {
            r
        } else {
            format!("{r} {comment}")
        }
    })
    .collect();
    assert_eq!(chain_lines(&ns, name), expected);
    assert_eq!(
        data_elements(&ns, "pm6-any"),
        strs(&["tcp . 8080 : fd66::2 . 80"])
    );
    assert_eq!(data_elements(&ns, "pm6-snat"), strs(&["tcp . 8080"]));
    assert_eq!(data_elements(&ns, "pm6-src"), strs(&["fd66::/64"]));
    assert!(data_elements(&ns, "pm4-any").is_empty());
    assert!(
        text.contains("tcp . 8080 comment \"cni-rs portmap: net1 ctr-1 eth0\" : fd66::2 . 80"),
        "{text}"
    );
    assert!(
        listing(&ns)
            .unwrap()
            .contains("8080 : jump pm/net1/ctr-1/eth0"),
        "{}",
        listing(&ns).unwrap()
    );
    // nft's listing loads back.
    let dir = TempDir::new("pmlist");
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, listing(&ns).unwrap()).unwrap();
    let file = file.display().to_string();
    nft(&ns, &["-c", "-f", &file]);

    assert_eq!(installed(&ns, &o), Some(mappings.to_vec()));
    assert_eq!(owners(&ns, "net1"), pairs(&[("ctr-1", "eth0")]));

    del(&ns, &o);
    assert_eq!(installed(&ns, &o), None);
    assert!(owners(&ns, "net1").is_empty());
    assert_only_the_setup(&ns);
    assert_eq!(root_snapshot(), root, "the root namespace was touched");
}

#[test]
fn re_add_replaces_rather_than_duplicates() {
    let ns = TestNs::new("pmk");
    let o = owner("net1", "ctr-1", "eth0");
    let name = "pm/net1/ctr-1/eth0";
    let first = [tcp(8080, "10.66.0.2", 80), tcp(8443, "10.66.0.2", 443)];
    add(&ns, &o, &first);
    add(&ns, &o, &first);
    assert_eq!(
        rule_count(&ns, name),
        2 * 2,
        "a localhost and a DNAT rule each"
    );
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&[
            "tcp . 8080 : 10.66.0.2 . 80",
            "tcp . 8443 : 10.66.0.2 . 443"
        ])
    );
    assert_eq!(
        data_elements(&ns, "pm4-snat"),
        strs(&["tcp . 8080", "tcp . 8443"])
    );
    assert_eq!(data_elements(&ns, "pm4-src"), strs(&["127.0.0.0/8"]));
    assert_eq!(installed(&ns, &o), Some(first.to_vec()));
    assert_eq!(
        chain_lines(&ns, "portmap-prerouting").len(),
        12,
        "setup made twice"
    );

    // The elements of ports it no longer maps go with their rules.
    let second = [map(Proto::Udp, 8080, None, "10.66.0.2", 80)];
    add(&ns, &o, &second);
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["udp . 8080 : 10.66.0.2 . 80"])
    );
    assert_eq!(data_elements(&ns, "pm4-snat"), strs(&["udp . 8080"]));
    // masqAll moves the port to the other set.
    add_with(
        &ns,
        &o,
        &second,
        &Opts {
            masq_all: true,
            ..Opts::default()
        },
    );
    assert!(data_elements(&ns, "pm4-snat").is_empty());
    assert_eq!(data_elements(&ns, "pm4-masqall"), strs(&["udp . 8080"]));
    add(&ns, &o, &second);
    assert_eq!(installed(&ns, &o), Some(second.to_vec()));
    assert_eq!(rule_count(&ns, name), 2);

    // Nothing usable (a host address of the other family): like del.
    add(
        &ns,
        &o,
        &[map(Proto::Tcp, 80, Some("fd99::1"), "10.66.0.2", 80)],
    );
    assert_eq!(installed(&ns, &o), None);
    add(&ns, &o, &[]);
    assert_only_the_setup(&ns);
}

#[test]
fn owners_coexist_and_del_is_idempotent() {
    let ns = TestNs::new("pmk");
    let a = owner("net1", "ctr-1", "eth0");
    let b = owner("net1", "ctr-2", "eth0");
    let c = owner("net10", "ctr-1", "eth0");

    // No table at all.
    del(&ns, &a);
    del(&ns, &a);
    assert!(listing(&ns).is_none(), "del created something");
    assert_eq!(installed(&ns, &a), None);
    assert!(owners(&ns, "net1").is_empty());

    add(&ns, &a, &[tcp(8080, "10.66.0.2", 80)]);
    add(&ns, &b, &[tcp(8081, "10.66.0.3", 80)]);
    add(&ns, &c, &[tcp(8082, "10.67.0.2", 80)]);
    assert_eq!(
        owners(&ns, "net1"),
        pairs(&[("ctr-1", "eth0"), ("ctr-2", "eth0")])
    );
    assert_eq!(owners(&ns, "net10"), pairs(&[("ctr-1", "eth0")]));
    assert!(owners(&ns, "net").is_empty());
    assert_eq!(data_elements(&ns, "pm4-any").len(), 3);

    del(&ns, &a);
    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert_eq!(installed(&ns, &b), Some(vec![tcp(8081, "10.66.0.3", 80)]));
    assert_eq!(installed(&ns, &c), Some(vec![tcp(8082, "10.67.0.2", 80)]));
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["tcp . 8081 : 10.66.0.3 . 80", "tcp . 8082 : 10.67.0.2 . 80"])
    );
    assert_eq!(owners(&ns, "net1"), pairs(&[("ctr-2", "eth0")]));
    // Masquerade owners of the same names are another kind.
    within(&ns, || {
        cni_kernel::masquerade::add(&a, &nets(&["10.66.0.2/24"]))
    })
    .unwrap();
    assert_eq!(owners(&ns, "net1"), pairs(&[("ctr-2", "eth0")]));
    assert_eq!(installed(&ns, &a), None);
    del(&ns, &b);
    del(&ns, &c);
    assert_only_the_setup(&ns);
    assert_eq!(
        within(&ns, || cni_kernel::masquerade::installed(&a)).unwrap(),
        Some(vec!["10.66.0.2".parse().unwrap()])
    );
}

/// A host port whose owner's DEL never reached us is mapped by a new
/// container: the new owner takes the element over, and the old owner's
/// late DEL leaves it alone.
#[test]
fn a_second_owner_takes_a_port_over() {
    let ns = TestNs::new("pmk");
    let a = owner("net1", "ctr-a", "eth0");
    let b = owner("net1", "ctr-b", "eth0");
    let (ca, cb) = ("pm/net1/ctr-a/eth0", "pm/net1/ctr-b/eth0");
    add(
        &ns,
        &a,
        &[tcp(8080, "10.66.0.2", 80), tcp(8081, "10.66.0.2", 81)],
    );
    add(&ns, &b, &[tcp(8080, "10.66.0.3", 80)]);
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["tcp . 8080 : 10.66.0.3 . 80", "tcp . 8081 : 10.66.0.2 . 81"])
    );
    assert_eq!(installed(&ns, &b), Some(vec![tcp(8080, "10.66.0.3", 80)]));
    // A's chain still has the rules of 8080, but the port is not A's.
    assert_eq!(rule_count(&ns, ca), 4);
    assert_eq!(installed(&ns, &a), Some(vec![tcp(8081, "10.66.0.2", 81)]));

    del(&ns, &a);
    assert_eq!(installed(&ns, &a), None);
    assert_eq!(chain_names(&ns), [cb]);
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["tcp . 8080 : 10.66.0.3 . 80"])
    );
    // B's marking of the port stays.
    assert_eq!(data_elements(&ns, "pm4-snat"), strs(&["tcp . 8080"]));
    assert_eq!(installed(&ns, &b), Some(vec![tcp(8080, "10.66.0.3", 80)]));

    // Both ways: A takes it back, B re-added takes it again, A's DEL again
    // leaves B's element.
    add(&ns, &a, &[tcp(8080, "10.66.0.2", 80)]);
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["tcp . 8080 : 10.66.0.2 . 80"])
    );
    assert_eq!(installed(&ns, &b), Some(vec![]));
    add(&ns, &b, &[tcp(8080, "10.66.0.3", 80)]);
    del(&ns, &a);
    assert_eq!(
        data_elements(&ns, "pm4-any"),
        strs(&["tcp . 8080 : 10.66.0.3 . 80"])
    );
    assert_eq!(data_elements(&ns, "pm4-snat"), strs(&["tcp . 8080"]));
    del(&ns, &b);
    assert_only_the_setup(&ns);
}

#[test]
fn installed_follows_the_kernel() {
    let ns = TestNs::new("pmk");
    let o = owner("net1", "ctr-1", "eth0");
    let name = "pm/net1/ctr-1/eth0";
    let ms = [
        tcp(8080, "10.66.0.2", 80),
        map(Proto::Udp, 53, None, "10.66.0.2", 53),
    ];
    add(&ns, &o, &ms);
    // An element deleted behind its back: that mapping is not in force.
    nft(
        &ns,
        &[
            "delete",
            "element",
            "inet",
            "cni-rs",
            "pm4-any",
            "{ udp . 53 }",
        ],
    );
    assert_eq!(installed(&ns, &o), Some(vec![ms[0].clone()]));
    // A base chain gone: nothing is; ADD sets it up again.
    nft(&ns, &["flush", "chain", "inet", "cni-rs", "portmap-output"]);
    nft(
        &ns,
        &["delete", "chain", "inet", "cni-rs", "portmap-output"],
    );
    assert_eq!(installed(&ns, &o), Some(vec![]));
    add(&ns, &o, &ms);
    assert_eq!(installed(&ns, &o), Some(ms.to_vec()));
    assert_only_the_owner(&ns, name);
    // The record flushed: DEL still finds the elements by their comment.
    nft(&ns, &["flush", "chain", "inet", "cni-rs", name]);
    assert_eq!(installed(&ns, &o), Some(vec![]));
    del(&ns, &o);
    assert_only_the_setup(&ns);
    // The whole table gone.
    add(&ns, &o, &ms);
    nft(&ns, &["delete", "table", "inet", "cni-rs"]);
    assert_eq!(installed(&ns, &o), None);
    del(&ns, &o);
    add(&ns, &o, &ms);
    assert_eq!(installed(&ns, &o), Some(ms.to_vec()));
}

fn assert_only_the_owner(ns: &TestNs, name: &str) {
    assert_eq!(chain_names(ns), [name]);
    assert_eq!(chain_lines(ns, "portmap-output").len(), 12);
}

#[test]
fn unusable_owners_and_mappings_change_nothing() {
    let ns = TestNs::new("pmk");
    within(&ns, portmap::available).unwrap();
    // A long network is named by its digest; an id this long still fails.
    let long = "n".repeat(240);
    let long_id = "c".repeat(240);
    let o = owner(&long, &long_id, "eth0");
    let e = try_add(&ns, &o, &[tcp(8080, "10.66.0.2", 80)], &Opts::default()).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::NftNameTooLong {
                what: "portmap",
                ..
            }
        ),
        "{e:?}"
    );
    let code = |e: KernelError| cni_types::CniError::from(e).code;
    assert_eq!(code(e), cni_types::Code::INVALID_CONFIG);
    del(&ns, &o);
    assert_eq!(installed(&ns, &o), None);

    let o = owner("net1", "ctr-1", "eth0");
    let e = try_add(&ns, &o, &[tcp(0, "10.66.0.2", 80)], &Opts::default()).unwrap_err();
    assert!(matches!(e, KernelError::InvalidPortMapping(_)), "{e:?}");
    assert_eq!(code(e), cni_types::Code::INVALID_CONFIG);
    let wrong_family = Opts {
        v6: vec![Cond::Daddr {
            negate: false,
            net: "10.0.0.0/8".parse().unwrap(),
        }],
        ..Opts::default()
    };
    let e = try_add(&ns, &o, &[tcp(80, "10.66.0.2", 80)], &wrong_family).unwrap_err();
    assert_eq!(code(e), cni_types::Code::INVALID_CONFIG);
    assert!(listing(&ns).is_none(), "a refused add created something");
}

#[test]
fn concurrent_adds_and_dels_of_different_owners() {
    let ns = TestNs::new("pmk");
    let ids: Vec<String> = (0..16).map(|i| format!("ctr-{i:02}")).collect();
    std::thread::scope(|s| {
        for (i, id) in ids.iter().enumerate() {
            let ns = &ns;
            s.spawn(move || {
                let o = owner("net1", id, "eth0");
                let ip = format!("10.66.0.{}", i + 2);
                add(ns, &o, &[tcp(8000 + i as u16, &ip, 80)]);
                if i % 2 == 1 {
                    del(ns, &o);
                }
            });
        }
    });
    let kept: Vec<(String, String)> = ids
        .iter()
        .step_by(2)
        .map(|id| (id.clone(), "eth0".to_owned()))
        .collect();
    assert_eq!(owners(&ns, "net1"), kept);
    assert_eq!(data_elements(&ns, "pm4-any").len(), kept.len());
    for base in ["portmap-prerouting", "portmap-output"] {
        assert_eq!(
            chain_lines(&ns, base).len(),
            12,
            "setup made more than once"
        );
    }
    assert_eq!(chain_lines(&ns, "portmap-masq").len(), 2);
}

// Traffic.

/// H stands for the host: a veth `vc` to the container C and a veth `vx`
/// to a client X on another network.
///
/// C: 10.66.0.2/24, fd66::2/64, default routes via H (10.66.0.1, fd66::1).
/// X: 198.51.100.2/24 and 203.0.113.2/24, fd99::2/64 (H has .1 and ::1 of
/// each); X reaches only H's addresses until a test gives it a route.
struct Topology {
    h: TestNs,
    c: TestNs,
    x: TestNs,
}

fn topology() -> Topology {
    let (h, c, x) = (TestNs::new("pmh"), TestNs::new("pmc"), TestNs::new("pmx"));
    // No duplicate address detection: addresses, link-local ones included,
    // are usable at once.
    for ns in [&h, &c, &x] {
        within(ns, || {
            sysctl::write("net.ipv6.conf.default.accept_dad", "0")?;
            sysctl::write("net.ipv6.conf.all.accept_dad", "0")
        })
        .unwrap();
    }
    h.ip(&[
        "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", &c.name,
    ]);
    h.ip(&[
        "link", "add", "vx", "type", "veth", "peer", "name", "eth0", "netns", &x.name,
    ]);
    for (ns, dev, addrs) in [
        (&h, "vc", &["10.66.0.1/24", "fd66::1/64"][..]),
        (
            &h,
            "vx",
            &["198.51.100.1/24", "203.0.113.1/24", "fd99::1/64"][..],
        ),
        (&c, "eth0", &["10.66.0.2/24", "fd66::2/64"][..]),
        (
            &x,
            "eth0",
            &["198.51.100.2/24", "203.0.113.2/24", "fd99::2/64"][..],
        ),
    ] {
        for a in addrs {
            if a.contains(':') {
                ns.ip(&["addr", "add", a, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", a, "dev", dev]);
            }
        }
    }
    for (ns, links) in [
        (&h, &["lo", "vc", "vx"][..]),
        (&c, &["lo", "eth0"][..]),
        (&x, &["lo", "eth0"][..]),
    ] {
        for link in links {
            ns.ip(&["link", "set", link, "up"]);
        }
    }
    c.ip(&["route", "add", "default", "via", "10.66.0.1"]);
    c.ip(&["-6", "route", "add", "default", "via", "fd66::1"]);
    within(&h, || {
        sysctl::write("net.ipv4.ip_forward", "1")?;
        sysctl::write("net.ipv6.conf.all.forwarding", "1")?;
        // 127.0.0.1 may leave towards C (after DNAT), as the plugin sets it.
        sysctl::write("net.ipv4.conf.vc.route_localnet", "1")
    })
    .unwrap();
    // Resolve the neighbours first: the first packet H forwards over IPv6
    // to a neighbour not yet resolved is lost (a SYN then waits a second
    // for its retransmission). Links that were just set up may take a
    // moment to carry (seen under load): retry, bounded.
    for (ns, addr) in [
        (&h, "10.66.0.2"),
        (&h, "fd66::2"),
        (&h, "198.51.100.2"),
        (&h, "fd99::2"),
    ] {
        assert!(wait_for(|| ns.ping(addr)), "no answer from {addr}");
    }
    Topology { h, c, x }
}

/// How a TCP connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Accepted by the listener, which saw it come from this address.
    From(IpAddr),
    Refused,
    TimedOut,
}

/// Connect from inside `from` to `to`; if it gets through, it must reach
/// `listener`.
fn connect(from: &TestNs, listener: &TcpListener, to: &str) -> Outcome {
    let to: SocketAddr = to.parse().unwrap();
    let stream = within(from, || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500))
    });
    match stream {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if e.kind() == ErrorKind::TimedOut => return Outcome::TimedOut,
        Err(e) => panic!("connect to {to}: {e}"),
        Ok(_) => {}
    }
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match listener.accept() {
            Ok((_, peer)) => return Outcome::From(peer.ip()),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connected to {to}, but not to the listener: {e}"),
        }
    }
}

fn from(ip: &str) -> Outcome {
    Outcome::From(ip.parse().unwrap())
}

/// A datagram from `from` to `to` answered by `server`: the address the
/// server saw it come from, or None when it did not get there.
fn udp_echo(from: &TestNs, server: &UdpSocket, to: &str) -> Option<IpAddr> {
    let to: SocketAddr = to.parse().unwrap();
    let client = within(from, || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        UdpSocket::bind(bind)
    })
    .unwrap();
    client.connect(to).unwrap();
    client.send(b"ping").unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = server.recv_from(&mut buf).ok()?;
    assert_eq!(&buf[..n], b"ping");
    server.send_to(b"pong", peer).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let n = client
        .recv(&mut buf)
        .expect("no answer through the mapping");
    assert_eq!(&buf[..n], b"pong");
    Some(peer.ip())
}

#[test]
fn mapped_ports_carry_traffic() {
    let root = root_snapshot();
    let t = topology();
    let (h, c, x) = (&t.h, &t.c, &t.x);
    let l4 = within(c, || TcpListener::bind("0.0.0.0:80")).unwrap();
    let l6 = within(c, || TcpListener::bind("[fd66::2]:80")).unwrap();
    let udp = within(c, || UdpSocket::bind("0.0.0.0:53")).unwrap();
    // Before any mapping, the host port is the host's own (closed).
    assert_eq!(connect(x, &l4, "198.51.100.1:8080"), Outcome::Refused);

    let o = owner("net1", "ctr-1", "eth0");
    let mappings = [
        tcp(8080, "10.66.0.2", 80),
        tcp(8080, "fd66::2", 80),
        map(Proto::Udp, 8053, None, "10.66.0.2", 53),
        map(Proto::Tcp, 8081, Some("198.51.100.1"), "10.66.0.2", 80),
    ];
    let opts = Opts {
        hairpin: nets(&["10.66.0.0/24", "fd66::/64"]),
        ..Opts::default()
    };
    add_with(h, &o, &mappings, &opts);
    let start = Instant::now();

    // From another machine, on any address of the host: not masqueraded.
    assert_eq!(connect(x, &l4, "198.51.100.1:8080"), from("198.51.100.2"));
    assert_eq!(connect(x, &l4, "203.0.113.1:8080"), from("203.0.113.2"));
    // From the host itself, to localhost (masqueraded, route_localnet) and
    // to its own address.
    assert_eq!(connect(h, &l4, "127.0.0.1:8080"), from("10.66.0.1"));
    assert_eq!(connect(h, &l4, "198.51.100.1:8080"), from("198.51.100.1"));
    // Hairpin: the container through its own mapping, masqueraded.
    assert_eq!(connect(c, &l4, "198.51.100.1:8080"), from("10.66.0.1"));
    // IPv6, from the other machine and hairpin.
    assert_eq!(connect(x, &l6, "[fd99::1]:8080"), from("fd99::2"));
    assert_eq!(connect(c, &l6, "[fd99::1]:8080"), from("fd66::1"));
    // UDP.
    assert_eq!(
        udp_echo(x, &udp, "198.51.100.1:8053"),
        Some("198.51.100.2".parse().unwrap())
    );
    // A mapping on one host address answers only there.
    assert_eq!(connect(x, &l4, "198.51.100.1:8081"), from("198.51.100.2"));
    assert_eq!(connect(x, &l4, "203.0.113.1:8081"), Outcome::Refused);

    // Traffic forwarded through the host is never translated: port 8080 of
    // C itself is closed, port 80 open.
    x.ip(&["route", "add", "10.66.0.0/24", "via", "198.51.100.1"]);
    assert_eq!(connect(x, &l4, "10.66.0.2:8080"), Outcome::Refused);
    assert_eq!(connect(x, &l4, "10.66.0.2:80"), from("198.51.100.2"));

    // A condition excludes a source network (X's 203.0.113.2).
    let excluding = Opts {
        v4: vec![Cond::Saddr {
            negate: true,
            net: "203.0.113.0/24".parse().unwrap(),
        }],
        ..opts.clone()
    };
    add_with(h, &o, &mappings, &excluding);
    assert_eq!(connect(x, &l4, "203.0.113.1:8080"), Outcome::Refused);
    assert_eq!(connect(x, &l4, "198.51.100.1:8080"), from("198.51.100.2"));
    assert_eq!(connect(x, &l6, "[fd99::1]:8080"), from("fd99::2"));

    // masqAll: every source is masqueraded.
    let all = Opts {
        masq_all: true,
        ..opts.clone()
    };
    add_with(h, &o, &mappings, &all);
    assert_eq!(connect(x, &l4, "198.51.100.1:8080"), from("10.66.0.1"));
    assert_eq!(installed(h, &o), Some(mappings.to_vec()));

    // After del, the host ports are the host's own again.
    del(h, &o);
    assert_eq!(connect(x, &l4, "198.51.100.1:8080"), Outcome::Refused);
    assert_eq!(connect(x, &l6, "[fd99::1]:8080"), Outcome::Refused);
    assert_eq!(connect(h, &l4, "127.0.0.1:8080"), Outcome::Refused);
    assert_eq!(connect(c, &l4, "198.51.100.1:8080"), Outcome::Refused);
    assert_eq!(udp_echo(x, &udp, "198.51.100.1:8053"), None);
    eprintln!("traffic checks took {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(root_snapshot(), root, "the root namespace was touched");
}

/// Two containers: the port taken over by the second one's mapping goes to
/// the second one, also after the first one's late DEL.
#[test]
fn a_port_taken_over_carries_traffic_to_the_new_owner() {
    let t = topology();
    let (h, c, x) = (&t.h, &t.c, &t.x);
    let l80 = within(c, || TcpListener::bind("0.0.0.0:80")).unwrap();
    let l81 = within(c, || TcpListener::bind("0.0.0.0:81")).unwrap();
    let a = owner("net1", "ctr-a", "eth0");
    let b = owner("net1", "ctr-b", "eth0");
    add(h, &a, &[tcp(8080, "10.66.0.2", 80)]);
    assert_eq!(connect(x, &l80, "198.51.100.1:8080"), from("198.51.100.2"));
    add(h, &b, &[tcp(8080, "10.66.0.2", 81)]);
    assert_eq!(connect(x, &l81, "198.51.100.1:8080"), from("198.51.100.2"));
    del(h, &a);
    assert_eq!(connect(x, &l81, "198.51.100.1:8080"), from("198.51.100.2"));
    del(h, &b);
    assert_eq!(connect(x, &l81, "198.51.100.1:8080"), Outcome::Refused);
}
