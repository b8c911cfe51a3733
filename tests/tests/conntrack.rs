//! Stale UDP conntrack entries removed through ctnetlink, inside throwaway
//! namespaces. The `conntrack` CLI only sets up and inspects entries here;
//! the code under test never runs it.

use cni_kernel::Netns;
use cni_kernel::conntrack::{Family, flush_udp_dport};
use cni_tests::{Netns as TestNs, must};

/// The original direction of one entry as `conntrack -L` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Orig {
    proto: String,
    src: String,
    sport: u16,
    dport: u16,
    zone: Option<u16>,
}

/// Every entry of `family` ("ipv4" or "ipv6") in the namespace.
fn entries(ns: &TestNs, family: &str) -> Vec<Orig> {
    must(
        "ip",
        &["netns", "exec", &ns.name, "conntrack", "-L", "-f", family],
    )
    .lines()
    .map(|line| {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        Orig {
            proto: line.split_whitespace().next().unwrap().to_owned(),
            src: field("src=").unwrap(),
            sport: field("sport=").unwrap().parse().unwrap(),
            dport: field("dport=").unwrap().parse().unwrap(),
            zone: field("zone=").map(|z| z.parse().unwrap()),
        }
    })
    .collect()
}

/// Insert an entry with `conntrack -I`; `extra` adds e.g. a zone.
fn insert(ns: &TestNs, proto: &str, src: &str, dst: &str, sport: u16, dport: u16, extra: &[&str]) {
    let (sport, dport) = (sport.to_string(), dport.to_string());
    let mut args = vec![
        "netns",
        "exec",
        &ns.name,
        "conntrack",
        "-I",
        "-p",
        proto,
        "-s",
        src,
        "-d",
        dst,
        "--sport",
        &sport,
        "--dport",
        &dport,
        "-t",
        "120",
    ];
    if proto == "tcp" {
        args.extend_from_slice(&["--state", "ESTABLISHED"]);
    } else {
        args.extend_from_slice(&["-u", "SEEN_REPLY"]);
    }
    args.extend_from_slice(extra);
    must("ip", &args);
}

/// The flush run inside the namespace, on a thread of its own.
fn flush(ns: &TestNs, family: Family, port: u16) -> usize {
    Netns::open(ns.path())
        .unwrap()
        .run(|| flush_udp_dport(family, port))
        .unwrap()
        .unwrap()
}

fn udp_to(list: &[Orig], port: u16) -> usize {
    list.iter()
        .filter(|e| e.proto == "udp" && e.dport == port)
        .count()
}

/// Populate a namespace with the same mix of entries in both families.
fn populate(ns: &TestNs, addrs: &[&str; 4]) {
    let [a, b, c, dst] = *addrs;
    // To be deleted: UDP to 5353 from several sources and ports, one in a zone.
    insert(ns, "udp", a, dst, 1000, 5353, &[]);
    insert(ns, "udp", b, dst, 1000, 5353, &[]);
    insert(ns, "udp", a, dst, 1001, 5353, &[]);
    insert(ns, "udp", c, dst, 1002, 5353, &["-w", "7"]);
    // To stay: other ports, TCP to the same port, UDP *from* 5353 (its
    // reply direction goes to 5353, its original one does not).
    insert(ns, "udp", a, dst, 1000, 5354, &[]);
    insert(ns, "udp", a, dst, 5353, 53, &[]);
    insert(ns, "tcp", a, dst, 1000, 5353, &[]);
}

#[test]
fn udp_entries_to_the_port_are_deleted_and_counted_v4() {
    let ns = TestNs::new("ct4");
    let other = TestNs::new("ct4o");
    populate(&ns, &["10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.2"]);
    // Other family and other namespace: untouched.
    insert(&ns, "udp", "fd00::1", "fd00::2", 1000, 5353, &[]);
    insert(&other, "udp", "10.0.0.1", "10.0.0.2", 1000, 5353, &[]);

    assert_eq!(udp_to(&entries(&ns, "ipv4"), 5353), 4);
    assert_eq!(flush(&ns, Family::V4, 5353), 4);

    let left = entries(&ns, "ipv4");
    assert_eq!(udp_to(&left, 5353), 0, "{left:#?}");
    assert_eq!(left.len(), 3, "{left:#?}");
    assert_eq!(udp_to(&left, 5354), 1);
    assert_eq!(udp_to(&left, 53), 1);
    assert!(left.iter().any(|e| e.proto == "tcp" && e.dport == 5353));
    assert!(left.iter().all(|e| e.zone.is_none()), "zone 7 entry stayed");
    assert_eq!(udp_to(&entries(&ns, "ipv6"), 5353), 1);
    assert_eq!(udp_to(&entries(&other, "ipv4"), 5353), 1);

    // Nothing left to delete.
    assert_eq!(flush(&ns, Family::V4, 5353), 0);
}

#[test]
fn udp_entries_to_the_port_are_deleted_and_counted_v6() {
    let ns = TestNs::new("ct6");
    populate(&ns, &["fd00::1", "fd00::3", "fd00::4", "fd00::2"]);
    insert(&ns, "udp", "10.0.0.1", "10.0.0.2", 1000, 5353, &[]);

    assert_eq!(flush(&ns, Family::V6, 5353), 4);
    let left = entries(&ns, "ipv6");
    assert_eq!(udp_to(&left, 5353), 0, "{left:#?}");
    assert_eq!(left.len(), 3, "{left:#?}");
    assert!(left.iter().any(|e| e.proto == "tcp" && e.dport == 5353));
    assert!(left.iter().all(|e| e.src == "fd00::1"));
    assert_eq!(udp_to(&entries(&ns, "ipv4"), 5353), 1);
    assert_eq!(flush(&ns, Family::V6, 5353), 0);
}

#[test]
fn no_entries_is_zero() {
    let ns = TestNs::new("ct0");
    assert_eq!(flush(&ns, Family::V4, 5353), 0);
    assert_eq!(flush(&ns, Family::V6, 5353), 0);
    // Entries, none of them a match.
    insert(&ns, "tcp", "10.0.0.1", "10.0.0.2", 1000, 5353, &[]);
    assert_eq!(flush(&ns, Family::V4, 5353), 0);
    assert_eq!(flush(&ns, Family::V4, 0), 0);
    assert_eq!(entries(&ns, "ipv4").len(), 1);
}

/// Entries the kernel created for real traffic (an nft rule using ct makes
/// conntrack track the namespace's packets), with every attribute a live
/// entry carries.
#[test]
fn entries_from_real_traffic_are_deleted() {
    let ns = TestNs::new("ctt");
    ns.ip(&["link", "set", "lo", "up"]);
    let nft = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &ns.name, "nft"];
        full.extend_from_slice(args);
        must("ip", &full);
    };
    nft(&["add", "table", "inet", "t"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "t",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    nft(&[
        "add", "rule", "inet", "t", "out", "ct", "state", "new", "accept",
    ]);
    let send = |addr: &str, port: u16| {
        // bash opens a UDP socket for /dev/udp/HOST/PORT and sends one datagram.
        let script = format!("echo x > /dev/udp/{addr}/{port}");
        must("ip", &["netns", "exec", &ns.name, "bash", "-c", &script]);
    };
    for _ in 0..3 {
        send("127.0.0.1", 5353);
        send("::1", 5353);
    }
    send("127.0.0.1", 5354);

    assert_eq!(udp_to(&entries(&ns, "ipv4"), 5353), 3);
    assert_eq!(flush(&ns, Family::V4, 5353), 3);
    let left = entries(&ns, "ipv4");
    assert_eq!(udp_to(&left, 5353), 0, "{left:#?}");
    assert_eq!(udp_to(&left, 5354), 1, "{left:#?}");
    assert_eq!(flush(&ns, Family::V6, 5353), 3);
    assert_eq!(udp_to(&entries(&ns, "ipv6"), 5353), 0);
}

#[test]
fn a_refusal_is_an_io_failure() {
    let e = cni_kernel::KernelError::Conntrack {
        op: "delete IPv4 UDP entries to port 5353".into(),
        source: std::io::Error::from_raw_os_error(nix::libc::EPERM),
    };
    assert_eq!(e.errno(), Some(nix::errno::Errno::EPERM));
    let cni: cni_types::CniError = e.into();
    assert_eq!(cni.code, cni_types::Code::IO_FAILURE);
    assert!(
        cni.msg.starts_with("conntrack delete IPv4 UDP"),
        "{}",
        cni.msg
    );
}
