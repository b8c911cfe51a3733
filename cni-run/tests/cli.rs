//! End-to-end runs of the `cni-run` binary against fake plugins: small shell
//! scripts in a temp dir that record their environment, stdin and call order,
//! and answer with canned replies. Nothing touches the machine's network.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

/// A file being written to stays open in any child forked meanwhile by
/// another test thread until that child execs; executing the file then fails
/// with ETXTBSY. Scripts are written under the write lock and processes are
/// spawned (spawn returns once the child has exec'd) under the read lock.
static EXEC_LOCK: RwLock<()> = RwLock::new(());

/// What a fake plugin answers.
struct Fake {
    /// JSON list for the VERSION reply.
    versions: &'static str,
    /// stdout for ADD.
    add: String,
    /// (CNI_COMMAND, error JSON): fail that verb with that error.
    fail: Option<(&'static str, String)>,
}

impl Fake {
    fn ok(add: Value) -> Fake {
        Fake {
            versions: r#"["0.3.1","0.4.0","1.0.0","1.1.0"]"#,
            add: add.to_string(),
            fail: None,
        }
    }

    fn failing(mut self, command: &'static str, error: Value) -> Fake {
        self.fail = Some((command, error.to_string()));
        self
    }
}

fn result_of(addr: &str) -> Value {
    json!({"cniVersion": "1.0.0", "ips": [{"address": addr}]})
}

struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "cni-run-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "net.d", "cache", "rec"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // cni-run sees the cwd as getcwd reports it, symlinks resolved.
        Fixture {
            root: root.canonicalize().unwrap(),
        }
    }

    fn plugin(&self, name: &str, fake: Fake) -> &Self {
        let rec = self.root.join("rec");
        let fail = match &fake.fail {
            Some((cmd, err)) => {
                format!("if [ \"$CNI_COMMAND\" = {cmd} ]; then printf '%s' '{err}'; exit 1; fi")
            }
            None => String::new(),
        };
        let script = format!(
            r#"#!/bin/sh
rec='{rec}'
cat > "$rec/{name}.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$rec/{name}.$CNI_COMMAND.env"
echo "{name} $CNI_COMMAND" >> "$rec/calls"
{fail}
case "$CNI_COMMAND" in
VERSION) printf '%s' '{{"cniVersion":"1.1.0","supportedVersions":{versions}}}' ;;
ADD) printf '%s' '{add}' ;;
esac
"#,
            rec = rec.display(),
            versions = fake.versions,
            add = fake.add,
        );
        let path = self.root.join("bin").join(name);
        let _guard = EXEC_LOCK.write().unwrap();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    fn conf(&self, file: &str, doc: &Value) -> &Self {
        std::fs::write(self.root.join("net.d").join(file), doc.to_string()).unwrap();
        self
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cni-run"));
        cmd.args(args)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NETCONFPATH", self.root.join("net.d"))
            .env("CNI_PATH", self.root.join("bin"))
            .env("CNI_CACHE_DIR", self.root.join("cache"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = {
            let _guard = EXEC_LOCK.read().unwrap();
            cmd.spawn().unwrap()
        };
        child.wait_with_output().unwrap()
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and require failure (exit 1); returns stderr.
    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("rec/calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.root.join("rec/calls"));
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        let p = self.root.join(format!("rec/{plugin}.{command}.stdin"));
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    fn env(&self, plugin: &str, command: &str) -> HashMap<String, String> {
        let p = self.root.join(format!("rec/{plugin}.{command}.env"));
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn netns(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn cache_file(&self, network: &str, netns: &str, ifname: &str) -> PathBuf {
        self.root.join("cache/results").join(format!(
            "{network}-{}-{ifname}",
            container_id(&self.netns(netns))
        ))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn container_id(netns: &Path) -> String {
    let d = Sha512::digest(netns.to_str().unwrap().as_bytes());
    format!(
        "cnitool-{}",
        d[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn list(version: &str, plugins: Value) -> Value {
    json!({"cniVersion": version, "name": "net", "plugins": plugins})
}

/// Two plugins: `a` answers in 1.0.0 with an interface, `b` in 0.4.0.
fn two_plugin_fixture(tag: &str) -> Fixture {
    let f = Fixture::new(tag);
    f.plugin(
        "a",
        Fake::ok(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}]
        })),
    )
    .plugin(
        "b",
        Fake::ok(json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.0.0.3/24"}]
        })),
    )
    .conf(
        "10-net.conflist",
        &list("1.1.0", json!([{"type": "a"}, {"type": "b", "opt": 1}])),
    );
    f
}

#[test]
fn add_passes_each_result_on_and_caches_the_last() {
    let f = two_plugin_fixture("add");
    let args = "K8S_POD_NAME=web;IgnoreUnknown=1";
    let out = f.ok(
        &["add", "net", "ns1"],
        &[("CNI_ARGS", args), ("CNI_IFNAME", "net1")],
    );
    // b's 0.4.0 result, converted to the list's 1.1.0, pretty-printed
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        result,
        json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.3/24"}], "dns": {}})
    );
    assert!(out.contains("\n    \"ips\""), "{out}");
    assert_eq!(
        f.calls(),
        ["a VERSION", "b VERSION", "a ADD", "b ADD"],
        "VERSION is asked before any ADD"
    );
    let a = f.stdin("a", "ADD");
    assert_eq!(
        a,
        json!({"type": "a", "name": "net", "cniVersion": "1.1.0"})
    );
    let b = f.stdin("b", "ADD");
    assert_eq!(b["opt"], 1);
    assert_eq!(
        b["prevResult"],
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}],
            "dns": {}
        })
    );
    assert_eq!(f.stdin("a", "VERSION"), json!({"cniVersion": "1.1.0"}));

    let netns = f.netns("ns1");
    let cid = container_id(&netns);
    let env = f.env("b", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], cid);
    assert_eq!(env["CNI_NETNS"], netns.to_str().unwrap());
    assert_eq!(env["CNI_IFNAME"], "net1");
    assert_eq!(env["CNI_ARGS"], args);
    assert_eq!(env["CNI_PATH"], f.root.join("bin").to_str().unwrap());

    let file = f.cache_file("net", "ns1", "net1");
    let cached: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let config = base64::engine::general_purpose::STANDARD
        .decode(cached["config"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        config,
        std::fs::read(f.root.join("net.d/10-net.conflist")).unwrap()
    );
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], cid);
    assert_eq!(cached["ifName"], "net1");
    assert_eq!(cached["networkName"], "net");
    assert_eq!(cached["netns"], netns.to_str().unwrap());
    assert_eq!(
        cached["cniArgs"],
        json!([["K8S_POD_NAME", "web"], ["IgnoreUnknown", "1"]])
    );
    assert!(cached.get("capabilityArgs").is_none());
    assert_eq!(cached["result"], result);
}

#[test]
fn capabilities_go_only_to_plugins_that_declare_them() {
    let f = Fixture::new("caps");
    for p in ["a", "b", "c"] {
        f.plugin(p, Fake::ok(result_of("10.0.0.2/24")));
    }
    f.conf(
        "net.conflist",
        &list(
            "1.0.0",
            json!([
                {"type": "a", "capabilities": {"portMappings": true, "mac": false}},
                {"type": "b", "capabilities": {"mac": true, "bandwidth": true}},
                {"type": "c"}
            ]),
        ),
    );
    let caps = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "mac": "c2:00:00:00:00:01",
        "ips": ["10.0.0.9/24"]
    });
    f.ok(&["add", "net", "ns"], &[("CAP_ARGS", &caps.to_string())]);
    assert_eq!(
        f.stdin("a", "ADD")["runtimeConfig"],
        json!({"portMappings": caps["portMappings"]})
    );
    assert_eq!(
        f.stdin("b", "ADD")["runtimeConfig"],
        json!({"mac": "c2:00:00:00:00:01"})
    );
    assert!(f.stdin("c", "ADD").get("runtimeConfig").is_none());
    // the cache keeps every capability arg, as libcni does
    let cached: Value =
        serde_json::from_slice(&std::fs::read(f.cache_file("net", "ns", "eth0")).unwrap()).unwrap();
    assert_eq!(cached["capabilityArgs"], caps);
    // DEL filters the same way
    f.ok(&["del", "net", "ns"], &[("CAP_ARGS", &caps.to_string())]);
    assert_eq!(
        f.stdin("b", "DEL")["runtimeConfig"],
        json!({"mac": "c2:00:00:00:00:01"})
    );
    assert!(f.stdin("c", "DEL").get("runtimeConfig").is_none());
}

#[test]
fn del_runs_in_reverse_with_the_cached_result_and_forgets_it() {
    let f = two_plugin_fixture("del");
    let added: Value = serde_json::from_str(&f.ok(&["add", "net", "ns1"], &[])).unwrap();
    assert!(f.cache_file("net", "ns1", "eth0").exists());
    f.clear_calls();
    f.ok(&["del", "net", "ns1"], &[]);
    assert_eq!(f.calls(), ["b DEL", "a DEL"]);
    for p in ["a", "b"] {
        assert_eq!(f.stdin(p, "DEL")["prevResult"], added, "{p}");
    }
    let env = f.env("a", "DEL");
    assert_eq!(env["CNI_NETNS"], f.netns("ns1").to_str().unwrap());
    assert_eq!(env["CNI_CONTAINERID"], container_id(&f.netns("ns1")));
    assert!(!f.cache_file("net", "ns1", "eth0").exists());
}

#[test]
fn del_without_cache_omits_prev_result() {
    let f = two_plugin_fixture("del-nocache");
    // the netns does not exist either: its path is still passed on
    f.ok(&["del", "net", "gone/../gone/ns"], &[]);
    assert_eq!(f.calls(), ["b DEL", "a DEL"]);
    assert!(f.stdin("a", "DEL").get("prevResult").is_none());
    assert_eq!(
        f.env("a", "DEL")["CNI_NETNS"],
        f.netns("gone/ns").to_str().unwrap()
    );
}

#[test]
fn failed_del_keeps_the_cache_entry() {
    let f = Fixture::new("del-fail");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .plugin(
            "b",
            Fake::ok(result_of("10.0.0.3/24")).failing("DEL", json!({"code": 11, "msg": "busy"})),
        )
        .conf(
            "n.conflist",
            &list("1.0.0", json!([{"type": "a"}, {"type": "b"}])),
        );
    f.ok(&["add", "net", "ns"], &[]);
    f.clear_calls();
    let err = f.fails(&["del", "net", "ns"], &[]);
    assert!(
        err.contains("plugin type=\"b\" failed (del): busy (code 11)"),
        "{err}"
    );
    assert_eq!(f.calls(), ["b DEL"]);
    assert!(f.cache_file("net", "ns", "eth0").exists());
}

#[test]
fn check_uses_the_cached_result() {
    let f = two_plugin_fixture("check");
    let added: Value = serde_json::from_str(&f.ok(&["add", "net", "ns1"], &[])).unwrap();
    f.clear_calls();
    f.ok(&["check", "net", "ns1"], &[]);
    assert_eq!(f.calls(), ["a VERSION", "b VERSION", "a CHECK", "b CHECK"]);
    assert_eq!(f.stdin("a", "CHECK")["prevResult"], added);
    assert_eq!(f.stdin("b", "CHECK")["prevResult"], added);
}

#[test]
fn check_without_cache_fails() {
    let f = two_plugin_fixture("check-nocache");
    let err = f.fails(&["check", "net", "ns1"], &[]);
    assert!(err.contains("no cached result"), "{err}");
    assert!(f.calls().iter().all(|c| !c.ends_with("CHECK")));
}

#[test]
fn check_needs_0_4_0_and_honours_disable_check() {
    let f = Fixture::new("check-version");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .conf("a.conflist", &list("0.3.1", json!([{"type": "a"}])))
        .conf(
            "b.conflist",
            &json!({"cniVersion": "1.0.0", "name": "off", "disableCheck": true,
                    "plugins": [{"type": "a"}]}),
        );
    let err = f.fails(&["check", "net", "ns"], &[]);
    assert!(err.contains("does not support the CHECK command"), "{err}");
    assert!(err.contains("(code 1)"), "{err}");
    f.ok(&["check", "off", "ns"], &[]);
    assert!(f.calls().is_empty());
}

#[test]
fn add_failure_stops_the_chain_without_del_or_cache() {
    let f = Fixture::new("add-fail");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .plugin(
            "b",
            Fake::ok(result_of("10.0.0.3/24")).failing(
                "ADD",
                json!({"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "later"}),
            ),
        )
        .plugin("c", Fake::ok(result_of("10.0.0.4/24")))
        .conf(
            "n.conflist",
            &list(
                "1.0.0",
                json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
            ),
        );
    let out = f.run(&["add", "net", "ns"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("plugin type=\"b\" failed (add): busy (code 11): later"),
        "{err}"
    );
    assert_eq!(
        f.calls(),
        ["a VERSION", "b VERSION", "c VERSION", "a ADD", "b ADD"]
    );
    assert!(!f.root.join("cache/results").exists());
}

#[test]
fn version_mismatch_is_refused_before_any_add() {
    let f = Fixture::new("version");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .plugin(
            "b",
            Fake {
                versions: r#"["0.4.0","1.0.0"]"#,
                ..Fake::ok(result_of("10.0.0.3/24"))
            },
        )
        .conf(
            "n.conflist",
            &list("1.1.0", json!([{"type": "a"}, {"type": "b"}])),
        );
    let err = f.fails(&["add", "net", "ns"], &[]);
    assert!(err.contains("type=\"b\""), "{err}");
    assert!(err.contains("(code 1)"), "{err}");
    assert!(f.calls().iter().all(|c| c.ends_with("VERSION")));
}

#[test]
fn gc_keeps_what_was_added_and_not_deleted() {
    let f = two_plugin_fixture("gc");
    f.ok(&["add", "net", "ns1"], &[]);
    f.ok(&["add", "net", "ns2"], &[]);
    f.ok(&["add", "net", "ns2"], &[("CNI_IFNAME", "net1")]);
    // another network's attachment is not this network's to keep
    f.conf(
        "20-other.conflist",
        &json!({"cniVersion": "1.1.0", "name": "other", "plugins": [{"type": "a"}]}),
    );
    f.ok(&["add", "other", "ns3"], &[]);
    f.clear_calls();

    let caps = json!({"mac": "c2:00:00:00:00:01"}).to_string();
    f.ok(&["gc", "net"], &[("CAP_ARGS", &caps)]);
    assert_eq!(f.calls(), ["a GC", "b GC"]);
    let mut want = vec![
        json!({"containerID": container_id(&f.netns("ns1")), "ifname": "eth0"}),
        json!({"containerID": container_id(&f.netns("ns2")), "ifname": "eth0"}),
        json!({"containerID": container_id(&f.netns("ns2")), "ifname": "net1"}),
    ];
    let sorted = |v: &Value| {
        let mut v = v.as_array().unwrap().clone();
        v.sort_by_key(|a| a.to_string());
        v
    };
    want.sort_by_key(|a| a.to_string());
    for p in ["a", "b"] {
        let conf = f.stdin(p, "GC");
        assert_eq!(sorted(&conf["cni.dev/valid-attachments"]), want, "{p}");
        assert_eq!(sorted(&conf["cni.dev/attachments"]), want, "{p}");
        assert_eq!(
            (conf["name"].as_str(), conf["cniVersion"].as_str()),
            (Some("net"), Some("1.1.0"))
        );
        assert!(conf.get("prevResult").is_none() && conf.get("runtimeConfig").is_none());
        let env = f.env(p, "GC");
        assert_eq!(env["CNI_COMMAND"], "GC");
        assert!(!env.contains_key("CNI_CONTAINERID") && !env.contains_key("CNI_NETNS"));
    }

    f.ok(&["del", "net", "ns2"], &[]);
    f.ok(&["gc", "net", "ignored-netns"], &[]);
    let left = json!([
        {"containerID": container_id(&f.netns("ns1")), "ifname": "eth0"},
        {"containerID": container_id(&f.netns("ns2")), "ifname": "net1"},
    ]);
    assert_eq!(
        sorted(&f.stdin("a", "GC")["cni.dev/valid-attachments"]),
        sorted(&left)
    );
}

#[test]
fn gc_runs_every_plugin_and_reports_the_first_error() {
    let f = Fixture::new("gc-fail");
    f.plugin(
        "a",
        Fake::ok(result_of("10.0.0.2/24")).failing("GC", json!({"code": 5, "msg": "disk"})),
    )
    .plugin(
        "b",
        Fake::ok(result_of("10.0.0.3/24")).failing("GC", json!({"code": 7, "msg": "bad"})),
    )
    .plugin("c", Fake::ok(result_of("10.0.0.4/24")))
    .conf(
        "n.conflist",
        &list(
            "1.1.0",
            json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
        ),
    );
    let err = f.fails(&["gc", "net"], &[]);
    assert_eq!(f.calls(), ["a GC", "b GC", "c GC"]);
    assert!(
        err.contains("plugin type=\"a\" failed (gc): disk (code 5)"),
        "{err}"
    );
    assert!(
        err.contains("plugin type=\"b\" failed (gc): bad (code 7)"),
        "{err}"
    );
    assert_eq!(f.stdin("c", "GC")["cni.dev/valid-attachments"], json!([]));
}

#[test]
fn gc_and_status_do_nothing_before_1_1_0_or_when_disabled() {
    let f = Fixture::new("gc-old");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .conf("a.conflist", &list("1.0.0", json!([{"type": "a"}])))
        .conf(
            "b.conflist",
            &json!({"cniVersion": "1.1.0", "name": "nogc", "disableGC": true,
                    "plugins": [{"type": "a"}]}),
        );
    f.ok(&["gc", "net"], &[]);
    f.ok(&["status", "net"], &[]);
    f.ok(&["gc", "nogc", "ns"], &[]);
    assert!(f.calls().is_empty());
}

#[test]
fn status_asks_every_plugin_and_stops_at_the_first_failure() {
    let f = Fixture::new("status");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24")))
        .plugin(
            "b",
            Fake::ok(result_of("10.0.0.3/24"))
                .failing("STATUS", json!({"code": 50, "msg": "no addresses left"})),
        )
        .plugin("c", Fake::ok(result_of("10.0.0.4/24")))
        .conf("ok.conflist", &json!({"cniVersion": "1.1.0", "name": "ok", "plugins": [{"type": "a"}, {"type": "c"}]}))
        .conf("bad.conflist", &json!({"cniVersion": "1.1.0", "name": "bad", "plugins": [{"type": "a"}, {"type": "b"}, {"type": "c"}]}));
    f.ok(&["status", "ok"], &[]);
    assert_eq!(f.calls(), ["a STATUS", "c STATUS"]);
    assert_eq!(
        f.stdin("c", "STATUS"),
        json!({"type": "c", "name": "ok", "cniVersion": "1.1.0"})
    );
    assert!(!f.env("a", "STATUS").contains_key("CNI_CONTAINERID"));
    f.clear_calls();
    let err = f.fails(&["status", "bad"], &[]);
    assert!(err.contains("no addresses left (code 50)"), "{err}");
    assert_eq!(f.calls(), ["a STATUS", "b STATUS"]);
}

#[test]
fn single_conf_files_are_run_as_one_plugin_lists() {
    let f = Fixture::new("single");
    f.plugin("a", Fake::ok(result_of("10.0.0.2/24"))).conf(
        "10-a.conf",
        &json!({"cniVersion": "0.3.1", "name": "net", "type": "a", "x": 1}),
    );
    let out: Value = serde_json::from_str(&f.ok(&["add", "net", "ns"], &[])).unwrap();
    assert_eq!(
        out,
        json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/24"}], "dns": {}})
    );
    assert_eq!(f.stdin("a", "ADD")["x"], 1);
    // DEL of a 0.3.1 list passes no cached result, but still forgets it
    f.ok(&["del", "net", "ns"], &[]);
    assert!(f.stdin("a", "DEL").get("prevResult").is_none());
    assert!(!f.cache_file("net", "ns", "eth0").exists());
}

#[test]
fn usage_errors() {
    let f = Fixture::new("usage");
    for args in [
        &[][..],
        &["add"],
        &["add", "net"],
        &["frob", "net", "ns"],
        &["del", "net", "ns", "extra"],
    ] {
        let err = f.fails(args, &[]);
        assert!(err.contains("cni-run add"), "{args:?}: {err}");
    }
    let help = f.run(&["--help"], &[]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("CNI_PATH"));
}

#[test]
fn environment_and_config_errors() {
    let f = two_plugin_fixture("env");
    let err = f.fails(&["add", "net", "ns"], &[("CNI_ARGS", "A=1;B")]);
    assert!(
        err.contains("invalid CNI_ARGS pair \"B\"") && err.contains("(code 4)"),
        "{err}"
    );
    let err = f.fails(&["add", "net", "ns"], &[("CAP_ARGS", "[1]")]);
    assert!(err.contains("CAP_ARGS"), "{err}");
    let err = f.fails(&["add", "net", "ns"], &[("CNI_IFNAME", "../x")]);
    assert!(err.contains("interface name"), "{err}");
    let err = f.fails(&["add", "nope", "ns"], &[]);
    assert!(err.contains("no network named \"nope\""), "{err}");
    let err = f.fails(&["add", "net", "ns"], &[("CNI_PATH", "/nonexistent")]);
    assert!(err.contains("plugin type=\"a\" failed (version)"), "{err}");
    assert!(f.calls().is_empty());
    assert!(!f.root.join("cache/results").exists());
}
