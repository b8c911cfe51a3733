//! The full chain (bridge + host-local + portmap, ipMasq) under load and
//! under kill -9, in a throwaway host namespace. Counts are fixed so that
//! the run is bounded and the same every time; what varies between runs is
//! only the interleaving the scheduler picks.
//!
//! - churn: 8 workers each add, check and delete containers in a loop while
//!   a ninth runs GC with the attachments the "runtime" knows (registered
//!   before ADD, unregistered after DEL, as a runtime must). No two live
//!   containers ever share an address or a host port, no call fails, and
//!   nothing is left.
//! - crashes: every plugin is killed at instants swept through its ADD and
//!   its DEL; the runtime's DEL after it and a final GC leave nothing (no
//!   reservation, veth, rule or temporary file), and the next ADD works.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use cni_tests::nft::{chain_names, objects};
use cni_tests::{Call, Netns, TempDir, unique};
use serde_json::{Value, json};

const NETWORK: &str = "churn";

struct Node {
    host: Netns,
    store: TempDir,
    bridge: String,
    subnet: &'static str,
    network: String,
}

impl Node {
    fn new(subnet: &'static str) -> Node {
        Node::named(subnet, NETWORK)
    }

    fn named(subnet: &'static str, network: &str) -> Node {
        Node {
            host: Netns::new("chh"),
            store: TempDir::new("chstore"),
            bridge: unique("chb"),
            subnet,
            network: network.to_owned(),
        }
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": self.network, "type": "bridge",
            "bridge": self.bridge, "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": self.store.path()}
        })
    }

    fn portmap_conf(&self, port: u16) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": self.network, "type": "portmap", "snat": true,
            "runtimeConfig": {"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"}
            ]}
        })
    }

    fn call(&self, plugin: &str, verb: &str, id: &str, conf: &Value) -> Call {
        Call::new(plugin, verb)
            .in_host(&self.host)
            .var("CNI_CONTAINERID", Some(id))
            .conf(conf)
            .within(Duration::from_secs(60))
    }

    /// The chain's ADD: bridge, then portmap with bridge's result. Returns
    /// the address, or the first error.
    fn add(&self, ns: &Netns, id: &str, port: u16) -> Result<(String, Value), String> {
        let r = self
            .call("bridge", "ADD", id, &self.bridge_conf())
            .netns(ns)
            .run();
        if !r.ok() {
            return Err(format!("bridge ADD: {}", r.stdout()));
        }
        let result = r.json();
        let mut pm = self.portmap_conf(port);
        pm["prevResult"] = result.clone();
        let p = self.call("portmap", "ADD", id, &pm).netns(ns).run();
        if !p.ok() {
            return Err(format!("portmap ADD: {}", p.stdout()));
        }
        let ip = result["ips"][0]["address"].as_str().unwrap().to_string();
        Ok((ip, result))
    }

    fn check(&self, ns: &Netns, id: &str, port: u16, result: &Value) -> Result<(), String> {
        let mut pm = self.portmap_conf(port);
        pm["prevResult"] = result.clone();
        let mut br = self.bridge_conf();
        br["prevResult"] = result.clone();
        for (plugin, conf) in [("portmap", pm), ("bridge", br)] {
            let r = self.call(plugin, "CHECK", id, &conf).netns(ns).run();
            if !r.ok() {
                return Err(format!("{plugin} CHECK: {}", r.stdout()));
            }
        }
        Ok(())
    }

    /// The chain's DEL, in reverse order; `result` is the ADD's if known.
    fn del(&self, netns: &str, id: &str, port: u16, result: Option<&Value>) -> Result<(), String> {
        let mut pm = self.portmap_conf(port);
        let mut br = self.bridge_conf();
        if let Some(r) = result {
            pm["prevResult"] = r.clone();
            br["prevResult"] = r.clone();
        }
        for (plugin, conf) in [("portmap", pm), ("bridge", br)] {
            let r = self
                .call(plugin, "DEL", id, &conf)
                .var("CNI_NETNS", Some(netns))
                .run();
            if !r.ok() {
                return Err(format!("{plugin} DEL: {}", r.stdout()));
            }
        }
        Ok(())
    }

    /// GC of both plugins, keeping `keep` (container ids on eth0).
    fn gc(&self, keep: &[String]) -> Result<(), String> {
        let valid: Vec<Value> = keep
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        for (plugin, mut conf) in [
            ("bridge", self.bridge_conf()),
            ("portmap", self.portmap_conf(1)),
        ] {
            conf["cni.dev/valid-attachments"] = json!(valid);
            let r = Call::new(plugin, "GC")
                .in_host(&self.host)
                .conf(&conf)
                .within(Duration::from_secs(60))
                .run();
            if !r.ok() {
                return Err(format!("{plugin} GC: {}", r.stdout()));
            }
        }
        Ok(())
    }

    /// Nothing of any container is left: no reservation, no index entry or
    /// temporary file, no host veth, no owner chain or element of ours.
    fn assert_empty(&self) {
        let store = self.store.path().join(&self.network);
        assert!(cni_tests::reservations_in(&store).is_empty());
        cni_tests::assert_store_tidy(&store);
        let veths = self.host.ip_json(&["link", "show", "type", "veth"]);
        assert_eq!(veths, json!([]), "veths left");
        let objs = objects(&self.host, "inet");
        for prefix in ["masq/", "pm/", "spoof/"] {
            assert!(
                chain_names(&objs, prefix).is_empty(),
                "{prefix} chains left"
            );
        }
        // Every owner's element goes; the hairpin source sets (subnets,
        // shared by all containers) stay, as the base chains do.
        for o in &objs {
            let set = o.get("set").or_else(|| o.get("map"));
            if let Some(set) = set
                && !set["name"].as_str().unwrap().ends_with("-src")
            {
                assert!(set.get("elem").is_none(), "elements left: {set}");
            }
        }
    }
}

#[test]
fn churn_with_concurrent_gc() {
    const WORKERS: usize = 8;
    const ROUNDS: usize = 25;
    let node = Node::new("10.212.0.0/16");
    // What a runtime knows: attachments registered before ADD and until
    // their DEL is done. GC keeps these.
    let known: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    // Who holds which address and host port right now.
    let live_ips: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let gcs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (node, known, live_ips, failures, done) =
                (&node, &known, &live_ips, &failures, &done);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let id = format!("churn-{w}-{round}");
                    let port = 20000 + (w * 100 + round) as u16;
                    let ns = Netns::new("ch");
                    known.lock().unwrap().insert(id.clone());
                    let step = node.add(&ns, &id, port).and_then(|(ip, result)| {
                        if let Some(other) = live_ips.lock().unwrap().insert(ip.clone(), id.clone())
                        {
                            return Err(format!("{ip} given to {id} while {other} holds it"));
                        }
                        let checked = node.check(&ns, &id, port, &result);
                        live_ips.lock().unwrap().remove(&ip);
                        checked.map(|_| result)
                    });
                    let result = step.as_ref().ok();
                    let deleted = node.del(&ns.path_str(), &id, port, result);
                    known.lock().unwrap().remove(&id);
                    for e in [step.err(), deleted.err()].into_iter().flatten() {
                        failures.lock().unwrap().push(format!("{id}: {e}"));
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        s.spawn(|| {
            while done.load(std::sync::atomic::Ordering::SeqCst) < WORKERS {
                // Held while GC runs: an attachment registered meanwhile
                // would be one GC does not know of (a runtime serialises
                // the same way), while the ADDs of known ones run on.
                let guard = known.lock().unwrap();
                let keep: Vec<String> = guard.iter().cloned().collect();
                let collected = node.gc(&keep);
                drop(guard);
                if let Err(e) = collected {
                    failures.lock().unwrap().push(e);
                }
                gcs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "churn: {} containers by {WORKERS} workers, {} concurrent GCs, 0 failures",
        WORKERS * ROUNDS,
        gcs.into_inner()
    );
    node.gc(&[]).unwrap();
    node.assert_empty();
}

/// Start `plugin` with `verb` and kill it (SIGKILL) after `delay`.
fn start_and_kill(
    node: &Node,
    plugin: &str,
    verb: &str,
    env: &[(&str, &str)],
    conf: &Value,
    delay: Duration,
) {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", node.host.path().display()))
        .arg(cni_tests::binary(plugin))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", verb)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_tests::bin_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn killed_at_any_instant_leaves_nothing_after_del_and_gc() {
    const KILLS: u64 = 120;
    let node = Node::new("10.213.0.0/16");
    let mut survived = 0;
    for i in 0..KILLS {
        let id = format!("crash-{i}");
        let port = 21000 + i as u16;
        let ns = Netns::new("cr");
        let path = ns.path_str();
        let env = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", path.as_str()),
        ];
        // A delay swept over 0..12 ms in a scrambled order: before, during
        // and after each step of the plugin.
        let delay = Duration::from_micros((i * 7919) % 12_000);
        match i % 4 {
            // bridge killed in its ADD (its host-local child may finish).
            0 => start_and_kill(&node, "bridge", "ADD", &env, &node.bridge_conf(), delay),
            // portmap killed in its ADD, after a whole bridge ADD.
            1 => {
                let (_, result) = node.add(&ns, &id, port).unwrap();
                let mut pm = node.portmap_conf(port);
                pm["prevResult"] = result;
                start_and_kill(&node, "portmap", "ADD", &env, &pm, delay);
            }
            // bridge killed in its DEL after a whole chain ADD.
            2 => {
                let (_, result) = node.add(&ns, &id, port).unwrap();
                let mut br = node.bridge_conf();
                br["prevResult"] = result;
                start_and_kill(&node, "bridge", "DEL", &env, &br, delay);
            }
            // portmap killed in its DEL.
            _ => {
                let (_, result) = node.add(&ns, &id, port).unwrap();
                let mut pm = node.portmap_conf(port);
                pm["prevResult"] = result;
                start_and_kill(&node, "portmap", "DEL", &env, &pm, delay);
            }
        }
        // The runtime's DEL after a failed ADD or DEL: without a result.
        node.del(&path, &id, port, None)
            .unwrap_or_else(|e| panic!("DEL after kill {i}: {e}"));
        survived += 1;
    }
    // A killed bridge's host-local child may reserve after the DEL: GC is
    // the runtime's way to collect that.
    node.gc(&[]).unwrap();
    node.assert_empty();
    // And the next ADD works, with its port mapped.
    let ns = Netns::new("cr");
    let (ip, result) = node.add(&ns, "after", 22000).unwrap();
    assert!(ip.starts_with("10.213."), "{ip}");
    node.check(&ns, "after", 22000, &result).unwrap();
    node.del(&ns.path_str(), "after", 22000, Some(&result))
        .unwrap();
    node.assert_empty();
    eprintln!("crashes: {survived} plugin runs killed, nothing left after DEL and GC");
}

/// The reference accepts a 185-byte network name with 64-byte container
/// ids; so does the whole chain, with ipMasq and a port (nftables chain
/// names then carry a digest of the network).
#[test]
fn a_long_network_name_works_through_the_chain() {
    let node = Node::named("10.214.0.0/16", &"n".repeat(185));
    let ns = Netns::new("ln");
    let id = "0123456789abcdef".repeat(4);
    let (_, result) = node.add(&ns, &id, 23000).unwrap();
    node.check(&ns, &id, 23000, &result).unwrap();
    let objs = objects(&node.host, "inet");
    assert_eq!(chain_names(&objs, "masq//").len(), 1);
    assert_eq!(chain_names(&objs, "pm//").len(), 1);
    // GC keeps it (its owner is parsed back from the digest form) ...
    node.gc(std::slice::from_ref(&id)).unwrap();
    node.check(&ns, &id, 23000, &result).unwrap();
    // ... and DEL removes it.
    node.del(&ns.path_str(), &id, 23000, Some(&result)).unwrap();
    node.assert_empty();
}
