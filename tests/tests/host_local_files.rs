//! host-local against what others can put in its files: symlinks planted in
//! the store, holder texts that look like paths, FIFOs and devices where a
//! file is expected, a hostile umask, failures after a reservation, and a
//! store shared with the reference plugin. The store is root's; the names in
//! it must never lead root to write, read or delete anything else.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_tests::{Call, TempDir};
use serde_json::{Value, json};

const NETWORK: &str = "hlf-net";
const NETNS: &str = "/run/netns/cnirs-unused";
const REFERENCE: &str = "/usr/lib/cni/host-local";
const PRECIOUS: &str = "precious\n";

fn conf(data: &Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(data);
    json!({"cniVersion": "1.1.0", "name": NETWORK, "type": "bridge", "ipam": ipam})
}

fn call(verb: &str, id: &str, conf: &Value) -> Call {
    Call::new("host-local", verb)
        .var("CNI_CONTAINERID", Some(id))
        .var("CNI_NETNS", Some(NETNS))
        .conf(conf)
        .within(Duration::from_secs(10))
}

fn gc(conf: &Value, keep: Value) -> Call {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = keep;
    Call::new("host-local", "GC")
        .conf(&c)
        .within(Duration::from_secs(10))
}

/// A data directory and, beside it, a victim directory with one file that
/// must survive whatever the store holds.
struct Scene {
    _tmp: TempDir,
    data: PathBuf,
    victim: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = TempDir::new("hlf");
        let data = tmp.path().join("data");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(data.join(NETWORK).join(".cnirs/owners")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("file"), PRECIOUS).unwrap();
        Scene {
            data,
            victim,
            _tmp: tmp,
        }
    }

    fn store(&self) -> PathBuf {
        self.data.join(NETWORK)
    }

    fn victim_file(&self) -> PathBuf {
        self.victim.join("file")
    }

    /// The victim directory holds exactly its one file, unchanged.
    fn assert_untouched(&self, what: &str) {
        let names: Vec<String> = fs::read_dir(&self.victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["file"],
            "{what}: something was written beside the victim"
        );
        assert_eq!(
            fs::read_to_string(self.victim_file()).unwrap(),
            PRECIOUS,
            "{what}: the victim was written through"
        );
    }
}

/// Either success or a spec-shaped I/O error (5): never a write elsewhere.
fn success_or_io_error(reply: &cni_tests::Reply, what: &str) {
    if !reply.ok() {
        let e = reply.error(5);
        assert!(!e["msg"].as_str().unwrap().is_empty(), "{what}: {e}");
    }
}

#[test]
fn a_symlink_planted_anywhere_in_the_store_is_never_followed() {
    // (where, link target: a file or the victim directory)
    let cases: [(&str, bool); 9] = [
        ("lock", true),
        ("last_reserved_ip.0", true),
        ("10.40.0.2", true),
        (".cnirs/last_reserved_ip.0.tmp", true),
        (".cnirs/seen", true),
        (".cnirs/seen.tmp", true),
        (".cnirs/owners/c1:eth0", false),
        (".cnirs/owners", false),
        (".cnirs", false),
    ];
    for (at, to_file) in cases {
        let s = Scene::new();
        let c = conf(&s.data, json!({"subnet": "10.40.0.0/24"}));
        let link = s.store().join(at);
        if link.is_dir() {
            fs::remove_dir_all(&link).unwrap();
        }
        let target = if to_file {
            s.victim_file()
        } else {
            s.victim.clone()
        };
        symlink(&target, &link).unwrap();
        let add = call("ADD", "c1", &c).run();
        success_or_io_error(&add, at);
        s.assert_untouched(&format!("ADD with a symlink at {at}"));
        if add.ok() {
            assert_ne!(add.json()["ips"][0]["address"], "", "{at}");
        }
        success_or_io_error(&call("DEL", "c1", &c).run(), at);
        s.assert_untouched(&format!("DEL with a symlink at {at}"));
        success_or_io_error(&gc(&c, json!([])).run(), at);
        s.assert_untouched(&format!("GC with a symlink at {at}"));
        // STATUS says "not available" (50) instead of an I/O error.
        let status = Call::new("host-local", "STATUS").conf(&c).run();
        if !status.ok() {
            status.error(50);
        }
        s.assert_untouched(&format!("STATUS with a symlink at {at}"));
    }
    // The network's directory itself, and a symlink into it from elsewhere.
    let s = Scene::new();
    fs::remove_dir_all(s.store()).unwrap();
    symlink(&s.victim, s.store()).unwrap();
    let c = conf(&s.data, json!({"subnet": "10.40.0.0/24"}));
    let e = call("ADD", "c1", &c).run().error(5);
    assert!(e["msg"].as_str().unwrap().contains(NETWORK), "{e}");
    s.assert_untouched("a symlinked network directory");

    // dataDir itself is the admin's choice: a symlink there is followed.
    let s = Scene::new();
    let link = s.data.with_file_name("data-link");
    symlink(&s.data, &link).unwrap();
    let c = conf(&link, json!({"subnet": "10.40.0.0/24"}));
    call("ADD", "c1", &c).run().success();
    assert_eq!(cni_tests::reservations_in(&s.store()).len(), 1);
    call("DEL", "c1", &c).run().silent_success();
}

#[test]
fn holder_texts_never_become_paths() {
    let s = Scene::new();
    let c = conf(&s.data, json!({"subnet": "10.41.0.0/24"}));
    // A reservation whose holder, joined into the index path, climbs out
    // of the store to <data>/victim2/10.41.0.5.
    let outside = s.data.join("victim2");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("10.41.0.5"), PRECIOUS).unwrap();
    fs::create_dir_all(s.store().join(".cnirs/owners/x:")).unwrap();
    fs::write(s.store().join("10.41.0.5"), "x\r\n/../../../../victim2").unwrap();
    // And ones naming the victim directory by absolute and relative paths.
    let abs = format!("{}\r\neth0", s.victim_file().display());
    fs::write(s.store().join("10.41.0.6"), abs).unwrap();
    fs::write(s.store().join("10.41.0.7"), "../../../victim\r\nfile").unwrap();
    // DEL of a container named like nothing there, then GC keeping nobody.
    call("DEL", "x", &c).run().silent_success();
    gc(&c, json!([])).run().silent_success();
    assert!(cni_tests::reservations_in(&s.store()).is_empty());
    assert_eq!(
        fs::read_to_string(outside.join("10.41.0.5")).unwrap(),
        PRECIOUS
    );
    s.assert_untouched("GC of path-like holders");
    // The index holds no directory named by them.
    let owners: Vec<String> = fs::read_dir(s.store().join(".cnirs/owners"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(owners.is_empty(), "{owners:?}");
}

#[test]
fn resolv_conf_must_be_a_small_regular_file() {
    let s = Scene::new();
    let fifo = s.victim.join("fifo");
    cni_tests::must("mkfifo", &[fifo.to_str().unwrap()]);
    let big = s.victim.join("big");
    fs::write(&big, "nameserver 10.0.0.1\n".repeat(10_000)).unwrap();
    for (path, needle) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (Path::new("/proc/self"), "not a regular file"),
        (big.as_path(), "larger than"),
    ] {
        let c = conf(
            &s.data,
            json!({"subnet": "10.42.0.0/24", "resolvConf": path}),
        );
        let e = call("ADD", "c1", &c).run().error(5);
        assert!(e["msg"].as_str().unwrap().contains(needle), "{path:?}: {e}");
        // Nothing was reserved.
        assert!(cni_tests::reservations_in(&s.store()).is_empty());
    }
}

#[test]
fn modes_ignore_the_umask() {
    let s = Scene::new();
    fs::remove_dir_all(&s.data).unwrap();
    let c = conf(&s.data, json!({"subnet": "10.43.0.0/24"}));
    let bin = cni_tests::binary("host-local");
    let out = cni_tests::fed(
        std::process::Command::new("sh")
            .args(["-c", "umask 0; exec \"$0\""])
            .arg(&bin)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", NETNS)
            .env("CNI_IFNAME", "eth0"),
        c.to_string().as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    let mut seen = 0;
    let mut stack = vec![s.data.clone()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode & 0o022, 0, "{} is {mode:o}", p.display());
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
            seen += 1;
        }
    }
    // lock, the reservation, last_reserved_ip.0, its index entry, seen
    assert!(seen >= 4, "{seen}");
}

#[test]
fn a_failure_after_reserving_releases_the_address() {
    let s = Scene::new();
    let c = conf(&s.data, json!({"subnet": "10.44.0.0/24"}));
    // last_reserved_ip.N is written in place only while it is a file of
    // its own: one with a second link is replaced through its temporary
    // name, and a directory there makes that step fail after the address
    // was linked.
    let hinted = |set: usize| {
        let name = s.store().join(format!("last_reserved_ip.{set}"));
        fs::write(&name, "").unwrap();
        fs::hard_link(&name, s.data.join(format!("other-link-{set}"))).unwrap();
        fs::create_dir(s.store().join(format!(".cnirs/last_reserved_ip.{set}.tmp"))).unwrap();
    };
    hinted(0);
    let e = call("ADD", "c1", &c).run().error(5);
    assert!(
        e["msg"].as_str().unwrap().contains("last_reserved_ip"),
        "{e}"
    );
    assert!(cni_tests::reservations_in(&s.store()).is_empty());
    // A two-family ADD that fails in its second set releases the first.
    fs::remove_dir(s.store().join(".cnirs/last_reserved_ip.0.tmp")).unwrap();
    hinted(1);
    let c2 = conf(
        &s.data,
        json!({"ranges": [[{"subnet": "10.44.0.0/24"}], [{"subnet": "fd44::/64"}]]}),
    );
    call("ADD", "c2", &c2).run().error(5);
    assert!(cni_tests::reservations_in(&s.store()).is_empty());
    fs::remove_dir(s.store().join(".cnirs/last_reserved_ip.1.tmp")).unwrap();
    call("ADD", "c2", &c2).run().success();
    assert_eq!(cni_tests::reservations_in(&s.store()).len(), 2);
    // The other links were never written through.
    for set in [0, 1] {
        assert_eq!(
            fs::read_to_string(s.data.join(format!("other-link-{set}"))).unwrap(),
            ""
        );
    }
}

#[test]
fn last_reserved_ip_is_written_in_place() {
    use std::os::unix::fs::MetadataExt;
    let s = Scene::new();
    let c = conf(&s.data, json!({"subnet": "10.45.0.0/24"}));
    let hint = s.store().join("last_reserved_ip.0");
    let mut inodes = Vec::new();
    // 10.45.0.2 ... 10.45.0.10: the value grows a byte.
    for i in 2..=10 {
        call("ADD", &format!("c{i}"), &c).run().success();
        assert_eq!(fs::read_to_string(&hint).unwrap(), format!("10.45.0.{i}"));
        inodes.push(fs::metadata(&hint).unwrap().ino());
    }
    fs::write(&hint, "10.45.0.100").unwrap();
    call("ADD", "c11", &c).run().success();
    assert_eq!(fs::read_to_string(&hint).unwrap(), "10.45.0.101");
    inodes.push(fs::metadata(&hint).unwrap().ino());
    // Round-robin wraps past the end to the first free address: a shorter
    // value over a longer one.
    fs::write(&hint, "10.45.0.254").unwrap();
    call("ADD", "c12", &c).run().success();
    assert_eq!(fs::read_to_string(&hint).unwrap(), "10.45.0.11");
    inodes.push(fs::metadata(&hint).unwrap().ino());
    inodes.dedup();
    assert_eq!(inodes.len(), 1, "the hint was replaced, not overwritten");
    cni_tests::assert_store_tidy(&s.store());
}

#[test]
fn a_store_shared_with_the_reference_is_seen_whole() {
    assert!(Path::new(REFERENCE).is_file(), "{REFERENCE} missing");
    let s = Scene::new();
    // The reference (1.1.1) speaks up to 1.0.0.
    let mut c = conf(&s.data, json!({"subnet": "10.45.0.0/24"}));
    c["cniVersion"] = json!("1.0.0");
    let reference = |verb: &str, id: &str| call(verb, id, &c).binary(REFERENCE).run();
    // The reference reserves for c1: our ADD for c1 is a duplicate, as the
    // reference would say, and our DEL releases the reference's address.
    reference("ADD", "c1").success();
    call("ADD", "c1", &c).run().error(102);
    assert_eq!(cni_tests::reservations_in(&s.store()).len(), 1);
    call("DEL", "c1", &c).run().silent_success();
    assert!(cni_tests::reservations_in(&s.store()).is_empty());
    // We reserve for c2 and c3, the reference releases c2: our next
    // operation tidies the index it left stale.
    call("ADD", "c2", &c).run().success();
    call("ADD", "c3", &c).run().success();
    assert!(
        !reference("ADD", "c2").ok(),
        "the reference saw no duplicate"
    );
    reference("DEL", "c2")
        .0
        .status
        .success()
        .then_some(())
        .unwrap();
    assert_eq!(cni_tests::reservations_in(&s.store()).len(), 1);
    call("ADD", "c4", &c).run().success();
    cni_tests::assert_store_tidy(&s.store());
    call("DEL", "c3", &c).run().silent_success();
    call("DEL", "c4", &c).run().silent_success();
    assert!(cni_tests::reservations_in(&s.store()).is_empty());
    cni_tests::assert_store_tidy(&s.store());
}
