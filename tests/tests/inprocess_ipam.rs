//! In-process IPAM: bridge and ptp run host-local's code in their own
//! process when the `host-local` found on `CNI_PATH` is the same build of
//! ours (the build stamp of `scripts/stamp.sh`), and exec any other one.
//! Both paths must leave the same store and give the same results.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cni_tests::{Call, Netns, TempDir, bin_dir};
use serde_json::{Value, json};

const PLUGINS: [&str; 5] = ["bridge", "host-local", "loopback", "portmap", "ptp"];

/// The workspace's plugins copied into a directory of their own, stamped
/// as one build when `stamp`.
fn plugin_dir(stamp: bool) -> TempDir {
    let d = TempDir::new("inproc");
    for p in PLUGINS {
        std::fs::copy(bin_dir().join(p), d.path().join(p)).unwrap();
    }
    if stamp {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stamp.sh");
        cni_tests::must(script.to_str().unwrap(), &[d.path().to_str().unwrap()]);
    }
    d
}

fn conf(plugin: &str, store: &Path, n: u8) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "ipnet", "type": plugin,
        "ipam": {"type": "host-local", "dataDir": store,
                 "ranges": [[{"subnet": format!("10.240.{n}.0/24")}], [{"subnet": format!("fd40:{n}::/64")}]]}
    });
    if plugin == "bridge" {
        c["bridge"] = json!(format!("cnip{n}"));
        c["isGateway"] = json!(true);
    }
    c
}

/// ADD of two containers (one asking for an address), CHECK, DEL of one;
/// the results (names and MACs aside) and the store's files.
fn scenario(dir: &Path, plugin: &str, n: u8) -> (Vec<Value>, Vec<(String, String)>) {
    let host = Netns::new("iph");
    let store = TempDir::new("ipstore");
    let c = conf(plugin, store.path(), n);
    let call = |verb: &str, id: &str, ns: &Netns, c: &Value| {
        Call::new(plugin, verb)
            .binary(dir.join(plugin))
            .in_host(&host)
            .var("CNI_PATH", Some(dir.to_str().unwrap()))
            .var("CNI_CONTAINERID", Some(id))
            .netns(ns)
            .conf(c)
            .run()
    };
    let (a, b) = (Netns::new("ipa"), Netns::new("ipb"));
    let mut results = Vec::new();
    let ra = call("ADD", "ctr-a", &a, &c).success();
    let rb = Call::new(plugin, "ADD")
        .binary(dir.join(plugin))
        .in_host(&host)
        .var("CNI_PATH", Some(dir.to_str().unwrap()))
        .var("CNI_CONTAINERID", Some("ctr-b"))
        .var("CNI_ARGS", Some(&format!("IP=10.240.{n}.77")))
        .netns(&b)
        .conf(&c)
        .run()
        .success();
    let mut prev = c.clone();
    prev["prevResult"] = ra.clone();
    call("CHECK", "ctr-a", &a, &prev).silent_success();
    call("DEL", "ctr-a", &a, &c).silent_success();
    // An exhausted request answers the same code both ways.
    let mut taken = c.clone();
    taken["args"] = json!({"cni": {"ips": [format!("10.240.{n}.77")]}});
    let e = call("ADD", "ctr-c", &Netns::new("ipc"), &taken).error(101);
    for r in [ra, rb] {
        let mut r = r;
        for i in r["interfaces"].as_array_mut().unwrap() {
            i["mac"] = json!("<mac>");
            i["sandbox"] = json!(if i.get("sandbox").is_some() {
                "<netns>"
            } else {
                ""
            });
            if i["name"].as_str().unwrap().starts_with("veth") {
                i["name"] = json!("<veth>");
            }
        }
        results.push(r);
    }
    results.push(json!({"code": e["code"], "msg": e["msg"]}));
    let mut files: Vec<(String, String)> = cni_tests::reservations_in(&store.path().join("ipnet"));
    for f in ["last_reserved_ip.0", "last_reserved_ip.1"] {
        let body = std::fs::read_to_string(store.path().join("ipnet").join(f)).unwrap_or_default();
        files.push((f.into(), body));
    }
    (results, files)
}

#[test]
fn our_own_host_local_runs_in_process_and_changes_nothing() {
    let stamped = plugin_dir(true);
    let plain = plugin_dir(false);
    for (i, plugin) in ["bridge", "ptp"].iter().enumerate() {
        // In-process: host-local there cannot even be executed.
        let hl = stamped.path().join("host-local");
        std::fs::set_permissions(&hl, std::fs::Permissions::from_mode(0o644)).unwrap();
        let inproc = scenario(stamped.path(), plugin, 10 + i as u8);
        std::fs::set_permissions(&hl, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Exec'd: unstamped binaries.
        let exec = scenario(plain.path(), plugin, 10 + i as u8);
        assert_eq!(inproc.0, exec.0, "{plugin}: results differ");
        assert_eq!(inproc.1, exec.1, "{plugin}: stores differ");
    }
}

#[test]
fn another_host_local_is_executed() {
    let d = plugin_dir(true);
    // A different host-local on CNI_PATH: a wrapper that leaves a mark and
    // runs ours (a stamp is the build's, not the file name's).
    let mark = d.path().join("ran");
    std::fs::rename(d.path().join("host-local"), d.path().join("hl-real")).unwrap();
    let wrapper = format!(
        "#!/bin/sh\ntouch {}\nexec {} \"$@\"\n",
        mark.display(),
        d.path().join("hl-real").display()
    );
    std::fs::write(d.path().join("host-local"), wrapper).unwrap();
    std::fs::set_permissions(
        d.path().join("host-local"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (results, files) = scenario(d.path(), "bridge", 12);
    assert!(mark.exists(), "the other host-local was not executed");
    assert_eq!(results.len(), 3);
    assert_eq!(files.len(), 4, "{files:?}");
    // A stamped host-local of another build is exec'd too: made
    // unexecutable, it fails the ADD, where our own build would not.
    let other = plugin_dir(true);
    let mut bytes = std::fs::read(other.path().join("host-local")).unwrap();
    let n = bytes.len();
    bytes[n - 52] ^= 1; // one hex digit of the build id
    std::fs::write(d.path().join("host-local"), bytes).unwrap();
    std::fs::set_permissions(
        d.path().join("host-local"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let host = Netns::new("iph");
    let store = TempDir::new("ipstore");
    let e = Call::new("bridge", "ADD")
        .binary(d.path().join("bridge"))
        .in_host(&host)
        .var("CNI_PATH", Some(d.path().to_str().unwrap()))
        .netns(&Netns::new("ipa"))
        .conf(&conf("bridge", store.path(), 13))
        .run();
    assert!(!e.ok(), "ADD ran another build's host-local in-process");
    assert!(e.stdout().contains("Permission denied"), "{}", e.stdout());
}
