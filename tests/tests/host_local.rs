//! host-local driven as a binary, with its store in a temporary directory.
//! host-local touches no namespace, so these need none.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use cni_tests::{Call, TempDir};
use serde_json::{Value, json};

const NETWORK: &str = "hl-net";
/// ADD needs a CNI_NETNS; host-local never opens it.
const NETNS: &str = "/run/netns/cnirs-unused";
const REFERENCE: &str = "/usr/lib/cni/host-local";

fn conf(dir: &TempDir, version: &str, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(dir.path());
    json!({"cniVersion": version, "name": NETWORK, "type": "bridge", "ipam": ipam})
}

fn call(verb: &str, id: &str, conf: &Value) -> Call {
    Call::new("host-local", verb)
        .var("CNI_CONTAINERID", Some(id))
        .var("CNI_NETNS", Some(NETNS))
        .conf(conf)
}

fn store(dir: &TempDir) -> PathBuf {
    dir.path().join(NETWORK)
}

/// The reservation files (names that are addresses) and their contents.
fn reservations(dir: &TempDir) -> Vec<(String, String)> {
    cni_tests::reservations_in(&store(dir))
}

fn address(result: &Value, i: usize) -> String {
    result["ips"][i]["address"].as_str().unwrap().to_owned()
}

#[test]
fn add_writes_the_reference_layout_and_answers_in_each_version() {
    let dir = TempDir::new("hl");
    let resolv = dir.path().join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 10.9.0.1\nsearch svc.local\noptions ndots:2\n",
    )
    .unwrap();
    let ipam = json!({
        "subnet": "10.9.0.0/24",
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.9.0.254"}],
        "resolvConf": resolv,
    });

    let r = call("ADD", "ctr-a", &conf(&dir, "1.0.0", ipam.clone()))
        .run()
        .success();
    assert_eq!(
        r,
        json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.9.0.254"}],
            "dns": {"nameservers": ["10.9.0.1"], "search": ["svc.local"], "options": ["ndots:2"]}
        })
    );
    // The reference's files, byte for byte.
    assert_eq!(
        reservations(&dir),
        [("10.9.0.2".to_string(), "ctr-a\r\neth0".to_string())]
    );
    assert_eq!(
        fs::read_to_string(store(&dir).join("last_reserved_ip.0")).unwrap(),
        "10.9.0.2"
    );
    assert!(store(&dir).join("lock").is_file());

    let r = call("ADD", "ctr-b", &conf(&dir, "0.3.1", ipam.clone()))
        .run()
        .success();
    assert_eq!(
        r["ips"][0],
        json!({"version": "4", "address": "10.9.0.3/24", "gateway": "10.9.0.1"})
    );
    let r = call("ADD", "ctr-c", &conf(&dir, "0.2.0", ipam.clone()))
        .run()
        .success();
    assert_eq!(r["ip4"]["ip"], "10.9.0.4/24");
    assert_eq!(
        r["ip4"]["routes"][1],
        json!({"dst": "192.168.0.0/16", "gw": "10.9.0.254"})
    );
    let r = call("ADD", "ctr-d", &conf(&dir, "1.1.0", ipam))
        .run()
        .success();
    assert_eq!(address(&r, 0), "10.9.0.5/24");
}

#[test]
fn dual_stack_ranges_and_range_limits() {
    let dir = TempDir::new("hl");
    let c = conf(
        &dir,
        "1.0.0",
        json!({"ranges": [
            [{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.100", "rangeEnd": "10.10.0.101"}],
            [{"subnet": "fd10::/64", "gateway": "fd10::ff"}]
        ]}),
    );
    let r = call("ADD", "a", &c).run().success();
    assert_eq!(address(&r, 0), "10.10.0.100/24");
    assert_eq!(address(&r, 1), "fd10::1/64");
    assert_eq!(r["ips"][1]["gateway"], "fd10::ff");
    let r = call("ADD", "b", &c).run().success();
    assert_eq!(address(&r, 0), "10.10.0.101/24");
    // The IPv4 range is used up: code 100, and b2's IPv6 address is not kept.
    let e = call("ADD", "c", &c).run().error(100);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("10.10.0.100-10.10.0.101"),
        "{e}"
    );
    assert_eq!(reservations(&dir).len(), 4);
    // The same container and interface cannot get a second address.
    call("ADD", "a", &c).run().error(102);
    // Another interface of it can.
    let mut c2 = c.clone();
    c2["ipam"]["ranges"][0][0]["rangeEnd"] = json!("10.10.0.102");
    call("ADD", "a", &c2)
        .var("CNI_IFNAME", Some("net1"))
        .run()
        .success();
}

#[test]
fn requested_addresses_from_args_config_and_runtime() {
    let dir = TempDir::new("hl");
    let base = conf(
        &dir,
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.11.0.0/24"}], [{"subnet": "fd11::/64"}]]}),
    );

    let r = call("ADD", "a", &base)
        .var("CNI_ARGS", Some("IgnoreUnknown=1;IP=10.11.0.50,fd11::50"))
        .run()
        .success();
    assert_eq!(
        (address(&r, 0), address(&r, 1)),
        ("10.11.0.50/24".into(), "fd11::50/64".into())
    );

    let mut c = base.clone();
    c["args"] = json!({"cni": {"ips": ["10.11.0.51"]}});
    assert_eq!(
        address(&call("ADD", "b", &c).run().success(), 0),
        "10.11.0.51/24"
    );

    let mut c = base.clone();
    c["runtimeConfig"] = json!({"ips": ["10.11.0.52/24"]});
    assert_eq!(
        address(&call("ADD", "c", &c).run().success(), 0),
        "10.11.0.52/24"
    );

    let before = reservations(&dir);
    // Taken, the gateway, or fitting no range: each is refused (101) and leaves nothing.
    for ip in ["10.11.0.50", "10.11.0.1", "192.168.1.1"] {
        let e = call("ADD", "d", &base)
            .var("CNI_ARGS", Some(&format!("IP={ip}")))
            .run()
            .error(101);
        assert!(e["msg"].as_str().unwrap().contains(ip), "{e}");
        assert_eq!(reservations(&dir), before);
    }
    // Unknown CNI_ARGS keys need IgnoreUnknown, as in the reference.
    call("ADD", "d", &base)
        .var("CNI_ARGS", Some("FOO=bar"))
        .run()
        .error(4);
}

#[test]
fn runtime_ip_ranges_come_first() {
    let dir = TempDir::new("hl");
    let mut c = conf(&dir, "1.0.0", json!({"subnet": "10.12.0.0/24"}));
    c["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.13.0.0/24"}]]});
    let r = call("ADD", "a", &c).run().success();
    assert_eq!(
        (address(&r, 0), address(&r, 1)),
        ("10.13.0.2/24".into(), "10.12.0.2/24".into())
    );
}

/// containerd's CRI plugin (go-cni) sends ipRanges with Go's field names
/// and empty strings for unset fields; Go's JSON decoding in the reference
/// accepts that, and so must we.
#[test]
fn runtime_ip_ranges_as_go_cni_sends_them() {
    let dir = TempDir::new("hl");
    let mut c = conf(&dir, "1.0.0", json!({"subnet": "10.15.0.0/24"}));
    c["runtimeConfig"] = json!({"ipRanges": [[{
        "Subnet": "10.16.0.0/24", "RangeStart": "10.16.0.40", "RangeEnd": "", "Gateway": ""
    }]]});
    let r = call("ADD", "a", &c).run().success();
    assert_eq!(address(&r, 0), "10.16.0.40/24");
    assert_eq!(r["ips"][0]["gateway"], "10.16.0.1");
}

#[test]
fn del_check_and_old_formats() {
    let dir = TempDir::new("hl");
    let c = conf(&dir, "1.0.0", json!({"subnet": "10.14.0.0/24"}));
    let r = call("ADD", "a", &c).run().success();
    let mut with_prev = c.clone();
    with_prev["prevResult"] = r.clone();
    call("CHECK", "a", &with_prev).run().silent_success();
    call("CHECK", "zzz", &with_prev).run().error(103);

    // Someone removed the reservation: CHECK notices.
    fs::remove_file(store(&dir).join("10.14.0.2")).unwrap();
    call("CHECK", "a", &with_prev).run().error(103);
    call("DEL", "a", &c).run().silent_success();

    // Files written by old versions of the reference hold only the id.
    fs::write(store(&dir).join("10.14.0.77"), "old-ctr").unwrap();
    // And ones the reference wrote, which our index does not know.
    fs::write(store(&dir).join("10.14.0.78"), "go-ctr\r\neth0").unwrap();
    fs::write(store(&dir).join("10.14.0.79"), "go-ctr2\r\neth0").unwrap();
    call("DEL", "old-ctr", &c).run().silent_success();
    call("DEL", "go-ctr", &c).run().silent_success();
    let mut prev = c.clone();
    prev["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.14.0.79/24"}]});
    call("CHECK", "go-ctr2", &prev).run().silent_success();
    call("DEL", "go-ctr2", &prev).run().silent_success();
    assert!(reservations(&dir).is_empty(), "{:?}", reservations(&dir));
    // DEL is idempotent.
    call("DEL", "a", &c).run().silent_success();
    call("DEL", "never-added", &c).run().silent_success();
}

#[test]
fn gc_keeps_valid_attachments_only() {
    let dir = TempDir::new("hl");
    let c = conf(&dir, "1.1.0", json!({"subnet": "10.15.0.0/24"}));
    for id in ["a", "b", "c"] {
        call("ADD", id, &c).run().success();
    }
    let last = fs::read_to_string(store(&dir).join("last_reserved_ip.0")).unwrap();

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "c", "ifname": "eth0"}]);
    Call::new("host-local", "GC")
        .conf(&gc)
        .run()
        .silent_success();
    let held: Vec<String> = reservations(&dir).into_iter().map(|(_, h)| h).collect();
    assert_eq!(held, ["a\r\neth0", "c\r\neth0"]);

    // Older runtimes send cni.dev/attachments.
    let mut gc = c.clone();
    gc["cni.dev/attachments"] = json!([{"containerID": "c", "ifname": "eth0"}]);
    Call::new("host-local", "GC")
        .conf(&gc)
        .run()
        .silent_success();
    assert_eq!(reservations(&dir).len(), 1);

    // An empty list removes every reservation, never the lock or last_reserved_ip.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("host-local", "GC")
        .conf(&gc)
        .run()
        .silent_success();
    assert!(reservations(&dir).is_empty());
    assert!(store(&dir).join("lock").is_file());
    assert_eq!(
        fs::read_to_string(store(&dir).join("last_reserved_ip.0")).unwrap(),
        last
    );
    // Our index is tidied too.
    let owners = store(&dir).join(".cnirs/owners");
    assert_eq!(fs::read_dir(&owners).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn status_reports_exhaustion_and_unwritable_stores() {
    let dir = TempDir::new("hl");
    let c = conf(&dir, "1.1.0", json!({"subnet": "10.16.0.0/30"})); // one usable address: .2
    Call::new("host-local", "STATUS")
        .conf(&c)
        .run()
        .silent_success();
    call("ADD", "a", &c).run().success();
    let e = Call::new("host-local", "STATUS").conf(&c).run().error(50);
    assert!(
        e["msg"].as_str().unwrap().contains("no free address"),
        "{e}"
    );
    call("DEL", "a", &c).run().silent_success();
    Call::new("host-local", "STATUS")
        .conf(&c)
        .run()
        .silent_success();

    // A data dir that cannot be created (its parent is a file).
    let file = dir.path().join("not-a-dir");
    fs::write(&file, "").unwrap();
    let mut bad = c.clone();
    bad["ipam"]["dataDir"] = json!(file);
    Call::new("host-local", "STATUS").conf(&bad).run().error(50);
    call("ADD", "a", &bad).run().error(5);
}

/// Run `n` ADDs at once, each from its own thread and process.
fn parallel_adds(
    binary_for: impl Fn(usize) -> Option<&'static str> + Sync,
    c: &Value,
    n: usize,
) -> Vec<Value> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let bin = binary_for(i);
                s.spawn(move || {
                    let call = call("ADD", &format!("par-{i}"), c);
                    match bin {
                        None => call.run().success(),
                        Some(reference) => cni_tests::Reply(run_reference(
                            reference,
                            "ADD",
                            &format!("par-{i}"),
                            c,
                        ))
                        .success(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn run_reference(bin: &str, verb: &str, id: &str, c: &Value) -> std::process::Output {
    cni_tests::fed(
        std::process::Command::new(bin)
            .env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", NETNS)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni"),
        c.to_string().as_bytes(),
    )
}

fn distinct(results: &[Value]) -> usize {
    results
        .iter()
        .map(|r| address(r, 0))
        .collect::<HashSet<_>>()
        .len()
}

#[test]
fn hundreds_of_concurrent_adds_get_distinct_addresses() {
    let dir = TempDir::new("hl");
    let c = conf(&dir, "1.0.0", json!({"subnet": "10.17.0.0/22"}));
    let results = parallel_adds(|_| None, &c, 200);
    assert_eq!(distinct(&results), 200);
    assert_eq!(reservations(&dir).len(), 200);
}

#[test]
fn concurrent_with_the_reference_plugin_on_one_store() {
    assert!(
        Path::new(REFERENCE).is_file(),
        "{REFERENCE} missing: make test installs containernetworking-plugins"
    );
    let dir = TempDir::new("hl");
    // The reference (1.1.1) speaks up to 1.0.0.
    let c = conf(&dir, "1.0.0", json!({"subnet": "10.18.0.0/22"}));
    let results = parallel_adds(|i| (i % 2 == 1).then_some(REFERENCE), &c, 120);
    assert_eq!(distinct(&results), 120);
    assert_eq!(reservations(&dir).len(), 120);
    // Each releases what the other reserved: the store is shared for real.
    for i in 0..120 {
        let id = format!("par-{i}");
        if i % 2 == 1 {
            call("DEL", &id, &c).run().silent_success();
        } else {
            let out = run_reference(REFERENCE, "DEL", &id, &c);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert!(reservations(&dir).is_empty(), "{:?}", reservations(&dir));
}

#[test]
fn killed_mid_add_leaves_only_whole_reservations() {
    let dir = TempDir::new("hl");
    let c = conf(&dir, "1.1.0", json!({"subnet": "10.19.0.0/20"}));
    let stdin = c.to_string();
    let bin = cni_tests::binary("host-local");
    // Start ADDs and kill each after a delay that sweeps through its run.
    for i in 0..150u64 {
        use std::io::Write;
        let mut child = std::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("k{i}"))
            .env("CNI_NETNS", NETNS)
            .env("CNI_IFNAME", "eth0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        std::thread::sleep(std::time::Duration::from_micros((i * 37) % 2500));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Every reservation is complete; last_reserved_ip is a whole address.
    let held = reservations(&dir);
    for (ip, holder) in &held {
        let (id, ifname) = holder
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("{ip} holds {holder:?}"));
        assert!(
            id.starts_with('k') && ifname == "eth0",
            "{ip} holds {holder:?}"
        );
    }
    if let Ok(last) = fs::read_to_string(store(&dir).join("last_reserved_ip.0")) {
        last.parse::<std::net::IpAddr>()
            .unwrap_or_else(|_| panic!("corrupt last_reserved_ip: {last:?}"));
    }
    // The next ADD tidies what the killed ones left: stale index entries
    // and temporary files.
    call("ADD", "after-kills", &c).run().success();
    cni_tests::assert_store_tidy(&store(&dir));
    call("DEL", "after-kills", &c).run().silent_success();
    // DEL of every container, then GC with nothing valid, leaves a clean store.
    for i in 0..150 {
        call("DEL", &format!("k{i}"), &c).run().silent_success();
    }
    assert!(reservations(&dir).is_empty());
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("host-local", "GC")
        .conf(&gc)
        .run()
        .silent_success();
    let owners = store(&dir).join(".cnirs/owners");
    assert_eq!(fs::read_dir(&owners).map(|d| d.count()).unwrap_or(0), 0);
    // And the store still works.
    assert_eq!(
        address(&call("ADD", "after", &c).run().success(), 0)
            .split('/')
            .count(),
        2
    );
}

#[test]
fn disk_full_is_a_clean_io_error() {
    let dir = TempDir::new("hl");
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let c = conf(&dir, "1.0.0", json!({"subnet": "10.20.0.0/24"}));
    let mut c = c;
    c["ipam"]["dataDir"] = json!(data);
    // A tiny tmpfs, filled up, in a private mount namespace (nothing is
    // mounted on the machine itself); the plugin runs inside it.
    let bin = cni_tests::binary("host-local");
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {d} && mkdir -p {d}/{n} && (dd if=/dev/zero of={d}/fill bs=4k count=64 2>/dev/null; true) && \
         printf '%s' '{conf}' | CNI_COMMAND=ADD CNI_CONTAINERID=full CNI_NETNS={ns} CNI_IFNAME=eth0 {bin}; echo \"exit=$?\"; ls -A {d}/{n}",
        d = data.display(),
        n = NETWORK,
        conf = c,
        ns = NETNS,
        bin = bin.display()
    );
    let out = cni_tests::cmd(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (json_part, rest) = text
        .split_once("exit=")
        .unwrap_or_else(|| panic!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    let err: Value = serde_json::from_str(json_part).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(err["code"], 5, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("No space left"),
        "{err}"
    );
    assert!(rest.starts_with('1'), "{rest}");
    // No reservation or half-written file is left in the full store.
    let files: Vec<&str> = rest.lines().skip(1).collect();
    assert!(
        files.iter().all(|f| ["lock", ".cnirs"].contains(f)),
        "{files:?}"
    );
}
