//! What every plugin binary must do with the protocol itself: VERSION, the
//! "about" line, and the bad-input table (right code, spec-shaped error on
//! stdout and nothing else, no panic, no partial state).

use cni_tests::{Call, Netns, PLUGINS};
use serde_json::{Value, json};

/// host-local's data dir in these tests: rejected input must never create it.
fn untouched_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cnirs-protocol-{}", std::process::id()))
}

/// A config each plugin accepts as valid.
fn valid_conf(plugin: &str) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "testnet", "type": plugin});
    match plugin {
        "bridge" => c["bridge"] = json!("cnirs0"),
        "host-local" | "ptp" => {
            c["ipam"] =
                json!({"type": "host-local", "subnet": "10.99.0.0/24", "dataDir": untouched_dir()})
        }
        _ => {}
    }
    c
}

/// Configs that are valid JSON but not a valid config for `plugin`.
fn invalid_confs(plugin: &str) -> Vec<Value> {
    let base = valid_conf(plugin);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let mut bad = vec![
        with("name", json!("")),
        with("name", json!("bad name")),
        with("name", json!(42)),
        with("capabilities", json!("all")),
        with("runtimeConfig", json!({"portMappings": "8080:80"})),
    ];
    match plugin {
        "bridge" => {
            bad.push(with("mtu", json!("big")));
            bad.push(with("vlan", json!(5000)));
            bad.push(with("bridge", json!("name/with/slash")));
            let mut both = with("hairpinMode", json!(true));
            both["promiscMode"] = json!(true);
            bad.push(both);
        }
        "host-local" => {
            bad.push(with(
                "ipam",
                json!({"type": "host-local", "subnet": "10.0.0.0/99"}),
            ));
            bad.push(with("ipam", json!({"type": "host-local"})));
            bad.push(with(
                "ipam",
                json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "x"}]}),
            ));
            let mut no_ipam = base.clone();
            no_ipam.as_object_mut().unwrap().remove("ipam");
            bad.push(no_ipam);
        }
        "ptp" => {
            bad.push(with("mtu", json!("big")));
            bad.push(with("mtu", json!(20)));
            bad.push(with("ipMasq", json!("yes")));
            bad.push(with("ipam", json!({})));
        }
        "portmap" => {
            bad.push(with("snat", json!("yes")));
            bad.push(with("markMasqBit", json!(40)));
            bad.push(with(
                "runtimeConfig",
                json!({"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]}),
            ));
            bad.push(with(
                "runtimeConfig",
                json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}),
            ));
        }
        _ => {}
    }
    bad
}

#[test]
fn version_lists_all_seven_versions() {
    for p in PLUGINS {
        // Also with no stdin and with a version we do not know on stdin.
        for stdin in ["", r#"{"cniVersion":"1.1.0"}"#, r#"{"cniVersion":"9.9.9"}"#] {
            let v = Call::new(p, "VERSION").stdin(stdin).run().success();
            assert_eq!(v["cniVersion"], "1.1.0", "{p}");
            assert_eq!(
                v["supportedVersions"],
                json!([
                    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
                ]),
                "{p}"
            );
        }
    }
}

#[test]
fn no_command_prints_about_on_stderr_only() {
    for p in PLUGINS {
        let r = Call::new(p, "ADD").var("CNI_COMMAND", None).run();
        assert!(r.ok(), "{p}");
        assert!(r.stdout().is_empty(), "{p}: {}", r.stdout());
        assert!(
            r.stderr().contains(&format!("cni-rs {p} plugin")),
            "{p}: {}",
            r.stderr()
        );
        assert!(
            r.stderr()
                .contains("0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
        );
    }
}

/// Run `call` against a fresh namespace and check that nothing changed in it.
fn rejected_without_trace(call: Call, code: u64) -> Value {
    let ns = Netns::new("bad");
    let before = (ns.link_names(), ns.link_flags("lo"));
    let err = call.netns(&ns).run().error(code);
    assert_eq!(
        (ns.link_names(), ns.link_flags("lo")),
        before,
        "state changed: {err}"
    );
    err
}

#[test]
fn bad_input_table() {
    for p in PLUGINS {
        let conf = valid_conf(p);
        let add = || Call::new(p, "ADD").conf(&conf);

        // Malformed JSON -> 6
        for garbage in ["{", "", "[1,2]", "\"text\"", "{\"name\": }"] {
            rejected_without_trace(Call::new(p, "ADD").stdin(garbage), 6);
        }
        // Unknown cniVersion -> 1, answered in the newest version
        let mut v = conf.clone();
        v["cniVersion"] = json!("0.5.0");
        let e = rejected_without_trace(Call::new(p, "ADD").conf(&v), 1);
        assert_eq!(e["cniVersion"], "1.1.0");
        // Environment -> 4
        rejected_without_trace(add().var("CNI_CONTAINERID", None), 4);
        rejected_without_trace(add().var("CNI_CONTAINERID", Some("-starts-with-dash")), 4);
        rejected_without_trace(add().var("CNI_CONTAINERID", Some("has space")), 4);
        for ifname in ["eth/0", "sixteen-chars-xx", "..", ".", "eth:0", "eth 0"] {
            rejected_without_trace(add().var("CNI_IFNAME", Some(ifname)), 4);
        }
        rejected_without_trace(add().var("CNI_IFNAME", None), 4);
        rejected_without_trace(add().var("CNI_COMMAND", Some("UPDATE")), 4);
        rejected_without_trace(add().var("CNI_ARGS", Some("IgnoreUnknown")), 4);
        let e = add()
            .in_host(&Netns::new("badh"))
            .var("CNI_NETNS", None)
            .run()
            .error(4);
        assert!(e["msg"].as_str().unwrap().contains("CNI_NETNS"));
        // The plugin's own namespace is never a container's.
        let host = Netns::new("badh");
        add()
            .in_host(&host)
            .var("CNI_NETNS", Some("/proc/self/ns/net"))
            .run()
            .error(4);
        assert_eq!(host.link_names(), ["lo"]);
        // Invalid network config -> 7, errors in the config's version
        for bad in invalid_confs(p) {
            let e = rejected_without_trace(Call::new(p, "ADD").conf(&bad), 7);
            assert_eq!(e["cniVersion"], "1.0.0", "{p}: {bad}");
        }
    }
    assert!(
        !untouched_dir().exists(),
        "rejected input created host-local's store"
    );
}

/// What the runtime controls but an attacker may shape: the environment's
/// bytes, CNI_NETNS pointing at anything but a network namespace, names the
/// kernel would expand, and a config of absurd size. Each is refused up
/// front with its code, quickly, and leaves nothing behind.
#[test]
fn hostile_environment_and_input_table() {
    use std::time::Duration;
    let tmp = cni_tests::TempDir::new("hostile");
    let fifo = tmp.path().join("fifo");
    cni_tests::must("mkfifo", &[fifo.to_str().unwrap()]);
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let quick = Duration::from_secs(5);
    for p in PLUGINS {
        let conf = valid_conf(p);
        let add = || Call::new(p, "ADD").conf(&conf).within(quick);
        // Bytes that are not text, in every variable: one message naming it.
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            let mut bytes = b"IP=10.99.0.9\xff".to_vec();
            if var == "CNI_ARGS" {
                bytes = b"IP=10.99.0.\xff9".to_vec();
            }
            let e = if var == "CNI_NETNS" {
                add().var_bytes(var, &bytes).run().error(4)
            } else {
                rejected_without_trace(add().var_bytes(var, &bytes), 4)
            };
            assert_eq!(e["msg"], format!("{var} is not valid UTF-8"), "{p}");
        }
        // The kernel expands %d in a new link's name.
        for ifname in ["eth%d", "%d"] {
            rejected_without_trace(add().var("CNI_IFNAME", Some(ifname)), 4);
        }
        // Too large, or too many values for its size: decoding is refused.
        let mut huge = conf.clone();
        huge["junk"] = json!("x".repeat(9 << 20));
        let e = rejected_without_trace(add().conf(&huge), 6);
        assert!(e["msg"].as_str().unwrap().contains("larger than"), "{e}");
        let mut many = conf.clone();
        many["junk"] = json!(vec![1; 300_000]);
        let e = rejected_without_trace(add().conf(&many), 6);
        assert!(e["msg"].as_str().unwrap().contains("JSON values"), "{e}");
    }
    // CNI_NETNS that is not a network namespace, for the plugins that enter
    // it: 4, at once (a FIFO must not hang them, a device is not opened).
    for p in ["bridge", "loopback", "ptp"] {
        let mut conf = valid_conf(p);
        if p == "ptp" {
            // Its DEL releases IPAM first: a store of this test's own.
            conf["ipam"]["dataDir"] = json!(tmp.path().join("store"));
        }
        for ns in [
            fifo.to_str().unwrap(),
            file.to_str().unwrap(),
            tmp.path().to_str().unwrap(),
            "/dev/null",
            "/dev/zero",
            "/proc/version",
            "/proc/self/ns/mnt",
            "/proc/self/ns/uts",
        ] {
            let host = Netns::new("hosth");
            for verb in ["ADD", "DEL"] {
                let e = Call::new(p, verb)
                    .in_host(&host)
                    .conf(&conf)
                    .var("CNI_NETNS", Some(ns))
                    .within(quick)
                    .run()
                    .error(4);
                assert!(e["msg"].as_str().unwrap().contains(ns), "{p} {ns}: {e}");
            }
            assert_eq!(host.link_names(), ["lo"], "{p} {ns}");
        }
    }
    // Config names the kernel would expand, and a MAC no interface can have.
    let host = Netns::new("hosth");
    for (key, value) in [
        ("bridge", json!("br%d")),
        ("runtimeConfig", json!({"mac": "00:00:00:00:00:00"})),
    ] {
        let mut c = valid_conf("bridge");
        c[key] = value;
        Call::new("bridge", "ADD")
            .in_host(&host)
            .conf(&c)
            .netns(&Netns::new("bad"))
            .run()
            .error(7);
        assert_eq!(host.link_names(), ["lo"], "{key}");
    }
}

#[test]
fn verbs_refuse_config_versions_that_predate_them() {
    for p in PLUGINS {
        let mut c = valid_conf(p);
        for (verb, too_old) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")] {
            c["cniVersion"] = json!(too_old);
            let (host, ns) = (Netns::new("verh"), Netns::new("ver"));
            let e = Call::new(p, verb)
                .in_host(&host)
                .netns(&ns)
                .conf(&c)
                .run()
                .error(1);
            assert!(e["msg"].as_str().unwrap().contains(verb), "{p}: {e}");
        }
    }
}
