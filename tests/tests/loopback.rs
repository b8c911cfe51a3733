//! The loopback plugin in real network namespaces.

use cni_tests::{Call, Netns};
use serde_json::{Value, json};

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "lo-net", "type": "loopback"})
}

fn call(verb: &str, ns: &Netns, conf: &Value) -> Call {
    Call::new("loopback", verb).netns(ns).conf(conf)
}

fn assert_lo_up(ns: &Netns) {
    assert!(
        ns.link_flags("lo").contains(&"UP".to_string()),
        "{:?}",
        ns.link_flags("lo")
    );
    assert_eq!(ns.addrs("lo"), ["127.0.0.1/8", "::1/128"]);
}

fn assert_lo_down(ns: &Netns) {
    assert!(
        !ns.link_flags("lo").contains(&"UP".to_string()),
        "{:?}",
        ns.link_flags("lo")
    );
}

#[test]
fn add_check_del_in_every_modern_version() {
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let ns = Netns::new("lo");
        let c = conf(version);
        assert_lo_down(&ns);
        let result = call("ADD", &ns, &c).run().success();
        assert_lo_up(&ns);

        assert_eq!(result["cniVersion"], version);
        assert_eq!(
            result["interfaces"],
            json!([{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ns.path_str()}])
        );
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips[0]["address"], "127.0.0.1/8");
        assert_eq!(ips[1]["address"], "::1/128");
        assert_eq!(ips[0]["interface"], 0);
        // 0.3.x and 0.4.0 tag each address with its family; 1.x does not.
        let tagged = version.starts_with("0.");
        assert_eq!(ips[0].get("version").is_some(), tagged, "{version}");
        if tagged {
            assert_eq!(ips[1]["version"], "6");
        }

        if version != "0.3.1" {
            let mut with_prev = c.clone();
            with_prev["prevResult"] = result.clone();
            call("CHECK", &ns, &with_prev).run().silent_success();
        }

        call("DEL", &ns, &c).run().silent_success();
        assert_lo_down(&ns);
        // DEL is idempotent.
        call("DEL", &ns, &c).run().silent_success();
    }
}

#[test]
fn legacy_versions_get_the_ip4_ip6_shape() {
    for version in ["0.1.0", "0.2.0"] {
        let ns = Netns::new("lo");
        let r = call("ADD", &ns, &conf(version)).run().success();
        assert_eq!(
            r,
            json!({"cniVersion": version, "ip4": {"ip": "127.0.0.1/8"}, "ip6": {"ip": "::1/128"}, "dns": {}})
        );
        assert_lo_up(&ns);
    }
}

#[test]
fn check_catches_drift() {
    let ns = Netns::new("lo");
    let c = conf("1.0.0");
    let mut with_prev = c.clone();
    with_prev["prevResult"] = call("ADD", &ns, &c).run().success();
    call("CHECK", &ns, &with_prev).run().silent_success();

    // An address the result reported is gone.
    ns.ip(&["addr", "del", "::1/128", "dev", "lo"]);
    let e = call("CHECK", &ns, &with_prev).run().error(100);
    assert!(e["msg"].as_str().unwrap().contains("::1/128"), "{e}");

    // The interface is down.
    ns.ip(&["link", "set", "lo", "down"]);
    let e = call("CHECK", &ns, &with_prev).run().error(100);
    assert!(e["msg"].as_str().unwrap().contains("down"), "{e}");
}

#[test]
fn chained_loopback_passes_prev_result_through() {
    let ns = Netns::new("lo");
    let mut c = conf("1.0.0");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:05", "sandbox": ns.path_str()}],
        "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.0.0.1"]}
    });
    c["prevResult"] = prev.clone();
    assert_eq!(call("ADD", &ns, &c).run().success(), prev);
    assert_lo_up(&ns);
}

#[test]
fn del_without_a_namespace_succeeds() {
    let c = conf("1.0.0");
    // Empty CNI_NETNS (containerd after the task exited).
    Call::new("loopback", "DEL")
        .var("CNI_NETNS", Some(""))
        .conf(&c)
        .run()
        .silent_success();
    // A namespace that is already gone.
    let ns = Netns::new("lo");
    let path = ns.path_str();
    drop(ns);
    Call::new("loopback", "DEL")
        .var("CNI_NETNS", Some(&path))
        .conf(&c)
        .run()
        .silent_success();
    // ADD on a vanished namespace is "unknown container".
    Call::new("loopback", "ADD")
        .var("CNI_NETNS", Some(&path))
        .conf(&c)
        .run()
        .error(3);
}

#[test]
fn add_refuses_a_path_that_is_not_a_namespace() {
    let c = conf("1.0.0");
    Call::new("loopback", "ADD")
        .var("CNI_NETNS", Some("/etc/hostname"))
        .conf(&c)
        .run()
        .error(4);
}

#[test]
fn bad_prev_result_changes_nothing() {
    let ns = Netns::new("lo");
    let mut c = conf("1.0.0");
    c["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]});
    call("ADD", &ns, &c).run().error(6);
    assert_lo_down(&ns);
}

#[test]
fn gc_and_status() {
    let ns = Netns::new("lo");
    let mut c = conf("1.1.0");
    Call::new("loopback", "STATUS")
        .conf(&c)
        .run()
        .silent_success();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-1", "ifname": "eth0"}]);
    Call::new("loopback", "GC").conf(&c).run().silent_success();
    // GC touches no container: lo stays as ADD left it.
    call("ADD", &ns, &conf("1.1.0")).run().success();
    Call::new("loopback", "GC")
        .conf(&conf("1.1.0"))
        .run()
        .silent_success();
    assert_lo_up(&ns);
}

#[test]
fn runs_in_parallel() {
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let ns = Netns::new("lop");
                call("ADD", &ns, &conf("1.0.0")).run().success();
                assert_lo_up(&ns);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
