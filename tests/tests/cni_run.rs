//! cni-run driving the real plugins with the configs shipped in conf/, in
//! throwaway namespaces, exactly as a user of cnitool would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cni_tests::{Netns, TempDir, bin_dir, binary};
use serde_json::Value;

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

fn cni_run(cache: &TempDir, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut c = Command::new(binary("cni-run"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NETCONFPATH", conf_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", cache.path());
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    cni_tests::succeeded(out.clone(), "cni-run")
}

fn cache_files(cache: &TempDir) -> Vec<String> {
    std::fs::read_dir(cache.path().join("results"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn loopback_conflist_end_to_end() {
    let ns = Netns::new("run");
    let cache = TempDir::new("cache");
    let path = ns.path_str();

    let result: Value =
        serde_json::from_str(&ok(&cni_run(&cache, &["add", "cni-loopback", &path], &[]))).unwrap();
    // The list asks for 1.1.0 among its cniVersions; the result comes in it.
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "lo");
    assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
    assert!(ns.link_flags("lo").contains(&"UP".to_string()));

    // The cache is libcni's: results/<net>-<cnitool container id>-<ifname>.
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("cni-loopback-cnitool-") && files[0].ends_with("-eth0"),
        "{files:?}"
    );

    ok(&cni_run(&cache, &["check", "cni-loopback", &path], &[]));
    ok(&cni_run(&cache, &["status", "cni-loopback", &path], &[]));
    // GC keeps what this runner added: lo stays up.
    ok(&cni_run(&cache, &["gc", "cni-loopback", &path], &[]));
    assert!(ns.link_flags("lo").contains(&"UP".to_string()));

    // Drift: CHECK fails through the runner, with the plugin's error.
    ns.ip(&["link", "set", "lo", "down"]);
    let out = cni_run(&cache, &["check", "cni-loopback", &path], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback interface is down"));

    ok(&cni_run(&cache, &["del", "cni-loopback", &path], &[]));
    assert!(!ns.link_flags("lo").contains(&"UP".to_string()));
    assert!(cache_files(&cache).is_empty());
    // DEL again, and CHECK after DEL has nothing to check against.
    ok(&cni_run(&cache, &["del", "cni-loopback", &path], &[]));
    assert!(
        !cni_run(&cache, &["check", "cni-loopback", &path], &[])
            .status
            .success()
    );
}

#[test]
fn container_ids_follow_cnitool() {
    // cnitool: "cnitool-" + the first 10 bytes of sha512(netns path), in hex.
    let ns = Netns::new("run");
    let cache = TempDir::new("cache");
    let path = ns.path_str();
    ok(&cni_run(
        &cache,
        &["add", "cni-loopback", &path],
        &[("CNI_IFNAME", "lo0")],
    ));
    let sum = cni_tests::must("sh", &["-c", &format!("printf %s '{path}' | sha512sum")]);
    let expected = format!("cni-loopback-cnitool-{}-lo0", &sum[..20]);
    assert_eq!(cache_files(&cache), [expected]);
    ok(&cni_run(
        &cache,
        &["del", "cni-loopback", &path],
        &[("CNI_IFNAME", "lo0")],
    ));
}

#[test]
fn unknown_network_and_bad_args_fail_cleanly() {
    let ns = Netns::new("run");
    let cache = TempDir::new("cache");
    let path = ns.path_str();
    let out = cni_run(&cache, &["add", "no-such-net", &path], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-net"));
    let out = cni_run(
        &cache,
        &["add", "cni-loopback", &path],
        &[("CNI_ARGS", "broken")],
    );
    assert!(!out.status.success());
    // Nothing ran: lo is still down and nothing was cached.
    assert!(!ns.link_flags("lo").contains(&"UP".to_string()));
    assert!(cache_files(&cache).is_empty());
}
