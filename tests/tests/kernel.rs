//! The kernel layer used directly, inside a throwaway namespace.

use cni_kernel::{Netns, RouteSpec, sysctl};
use cni_tests::Netns as TestNs;
use ipnetwork::IpNetwork;

#[test]
fn links_addresses_routes_sysctls_inside_a_namespace() {
    let test_ns = TestNs::new("krn");
    // This kernel has veth and bridge but no dummy links; the peer stays up
    // so dummy0 gets a carrier and routes through it are usable.
    test_ns.ip(&[
        "link", "add", "dummy0", "type", "veth", "peer", "name", "peer0",
    ]);
    test_ns.ip(&["link", "set", "peer0", "up"]);
    let ns = Netns::open(test_ns.path()).unwrap();
    let mut nl = ns.netlink().unwrap();

    let dummy = nl.require_link("dummy0").unwrap();
    assert!(!dummy.is_up());
    assert!(nl.link_by_name("nope0").unwrap().is_none());
    assert_eq!(
        nl.link_by_index(dummy.index).unwrap().unwrap().name,
        "dummy0"
    );
    assert!(nl.links().unwrap().iter().any(|l| l.name == "lo"));

    nl.set_link_up(dummy.index, true).unwrap();
    assert!(test_ns.link_flags("dummy0").contains(&"UP".to_string()));

    let a: IpNetwork = "10.44.0.2/24".parse().unwrap();
    nl.add_address(dummy.index, a).unwrap();
    // A second add is EEXIST, with the errno kept.
    let e = nl.add_address(dummy.index, a).unwrap_err();
    assert_eq!(e.errno(), Some(nix::errno::Errno::EEXIST));
    let v6: IpNetwork = "fd00:44::2/64".parse().unwrap();
    nl.add_address(dummy.index, v6).unwrap();
    let listed: Vec<IpNetwork> = nl
        .addresses(Some(dummy.index))
        .unwrap()
        .into_iter()
        .map(|a| a.addr)
        .collect();
    assert!(listed.contains(&a) && listed.contains(&v6), "{listed:?}");
    assert!(
        test_ns
            .addrs("dummy0")
            .contains(&"10.44.0.2/24".to_string())
    );

    let mut route = RouteSpec::new(
        "10.45.0.0/16".parse().unwrap(),
        Some("10.44.0.1".parse().unwrap()),
        Some(dummy.index),
    );
    route.mtu = Some(1300);
    nl.add_route(&route).unwrap();
    let r = test_ns.ip_json(&["route", "show", "10.45.0.0/16"]);
    assert_eq!(r[0]["gateway"], "10.44.0.1");
    assert!(
        nl.routes()
            .unwrap()
            .iter()
            .any(|x| x.dst == route.dst && x.gw == route.gw && x.mtu == Some(1300))
    );
    nl.del_route(&route).unwrap();
    assert_eq!(
        test_ns.ip_json(&["route", "show", "10.45.0.0/16"]),
        serde_json::json!([])
    );

    nl.del_address(dummy.index, a).unwrap();
    assert!(
        !test_ns
            .addrs("dummy0")
            .contains(&"10.44.0.2/24".to_string())
    );

    // sysctls follow the namespace of the thread that opens them.
    let host_value = sysctl::read("net.ipv4.conf.all.arp_notify").unwrap();
    ns.run(|| sysctl::write("net/ipv4/conf/dummy0/arp_notify", "1"))
        .unwrap()
        .unwrap();
    assert_eq!(
        ns.run(|| sysctl::read("net.ipv4.conf.dummy0.arp_notify"))
            .unwrap()
            .unwrap(),
        "1"
    );
    assert_eq!(
        sysctl::read("net.ipv4.conf.all.arp_notify").unwrap(),
        host_value
    );

    nl.delete_link(dummy.index).unwrap();
    assert!(nl.link_by_name("dummy0").unwrap().is_none());
    let e = nl.delete_link(dummy.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn missing_and_wrong_namespaces() {
    let e = Netns::open("/run/netns/cnirs-does-not-exist").unwrap_err();
    assert!(e.is_not_found());
    assert!(
        Netns::open_if_exists("/run/netns/cnirs-does-not-exist")
            .unwrap()
            .is_none()
    );
    let e = Netns::open("/etc/hostname").unwrap_err();
    assert_eq!(
        cni_types::CniError::from(e).code,
        cni_types::Code::INVALID_ENV
    );
}

/// The namespace a path or the calling thread is in, by inode.
fn ns_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn run_enters_on_the_calling_thread_and_always_returns() {
    let a = TestNs::new("runa");
    let b = TestNs::new("runb");
    let (na, nb) = (
        Netns::open(a.path()).unwrap(),
        Netns::open(b.path()).unwrap(),
    );
    let own = ns_ino("/proc/thread-self/ns/net");
    let (a_ino, b_ino) = (
        ns_ino(a.path().to_str().unwrap()),
        ns_ino(b.path().to_str().unwrap()),
    );
    let caller = std::thread::current().id();

    // Inside, on this very thread; nested, and back out level by level.
    let seen = na
        .run(|| {
            assert_eq!(std::thread::current().id(), caller);
            let inner = nb.run(|| ns_ino("/proc/thread-self/ns/net")).unwrap();
            (ns_ino("/proc/thread-self/ns/net"), inner)
        })
        .unwrap();
    assert_eq!(seen, (a_ino, b_ino));
    assert_eq!(ns_ino("/proc/thread-self/ns/net"), own);

    // A panic inside still brings the thread home.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        na.run(|| panic!("inside")).unwrap();
    }));
    assert!(panicked.is_err());
    assert_eq!(ns_ino("/proc/thread-self/ns/net"), own);

    // Sysctls opened inside are the namespace's own.
    na.run(|| sysctl::write("net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    assert_eq!(a.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(b.sysctl("net.ipv4.ip_forward"), "0");
}

#[test]
fn forwarding_is_read_through_netconf_and_switched_on() {
    use cni_kernel::netlink::NetConf;
    let t = TestNs::new("fwd");
    let ns = Netns::open(t.path()).unwrap();
    let mut nl = ns.netlink().unwrap();
    let forwarding = |nl: &mut cni_kernel::Netlink, family: i32| {
        nl.netconf_all(family as u8)
            .unwrap()
            .expect("this kernel answers RTM_GETNETCONF")
            .value(NetConf::FORWARDING)
    };
    assert_eq!(forwarding(&mut nl, nix::libc::AF_INET), Some(0));
    assert_eq!(forwarding(&mut nl, nix::libc::AF_INET6), Some(0));
    // IPv4 only: IPv6 stays as it was.
    ns.run(|| sysctl::enable_forwarding(&mut nl, true, false))
        .unwrap()
        .unwrap();
    assert_eq!(t.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(t.sysctl("net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(forwarding(&mut nl, nix::libc::AF_INET), Some(1));
    ns.run(|| sysctl::enable_forwarding(&mut nl, true, true))
        .unwrap()
        .unwrap();
    assert_eq!(t.sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(forwarding(&mut nl, nix::libc::AF_INET6), Some(1));
}

#[test]
fn a_links_ipv6_settings_come_with_it() {
    let t = TestNs::new("v6c");
    t.ip(&["link", "add", "v6a", "type", "veth", "peer", "name", "v6b"]);
    let ns = Netns::open(t.path()).unwrap();
    let mut nl = ns.netlink().unwrap();
    let conf = nl.require_link("v6a").unwrap().ipv6.expect("inet6 conf");
    assert_eq!((conf.accept_dad, conf.keep_addr_on_down), (1, 0));
    ns.run(|| sysctl::prepare_container_iface_v6("v6a", false, Some(conf)))
        .unwrap()
        .unwrap();
    let after = nl.require_link("v6a").unwrap().ipv6.unwrap();
    assert_eq!(
        (
            after.disable_ipv6,
            after.accept_dad,
            after.keep_addr_on_down
        ),
        (0, 0, 1)
    );
    assert_eq!(t.sysctl("net.ipv6.conf.v6a.accept_dad"), "0");
}
