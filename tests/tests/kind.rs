//! A two-node kind cluster's pod network, in namespaces: two node
//! namespaces on a shared link (kind's docker network), each with its own
//! pod CIDR and the route to the other node's that kindnetd installs. Pods
//! are set up as containerd does on a kind node: loopback, then kindnet's
//! conflist (`conf/10-kindnet.conflist`: ptp + host-local, then portmap),
//! here through `cni-run`, with every binary ours.
//!
//! Only the node's pod CIDR and host-local's dataDir differ from the file
//! kindnetd writes: kindnetd renders the CIDR per node, and `/run` here is
//! the machine's, not a node's tmpfs (the CRI test in containerd.rs runs the
//! file unchanged in a sandbox with its own `/run`).

use std::process::{Command, Output};

use cni_tests::nft::{chain_names, objects};
use cni_tests::runtime::conf_file;
use cni_tests::{Netns, Server, TempDir, bin_dir, binary, tcp_fetch};
use serde_json::{Value, json};

const NODE_MTU: u32 = 1500;

struct Node {
    ns: Netns,
    /// Its address on the kind network.
    addr: String,
    pod_cidr: String,
    confs: TempDir,
    cache: TempDir,
    state: TempDir,
}

impl Node {
    fn new(tag: &str, addr: &str, pod_cidr: &str) -> Node {
        let node = Node {
            ns: Netns::new(tag),
            addr: addr.to_owned(),
            pod_cidr: pod_cidr.to_owned(),
            confs: TempDir::new("kindconf"),
            cache: TempDir::new("kindcache"),
            state: TempDir::new("kindstate"),
        };
        // kindnetd's file for this node, and containerd's loopback.
        let text = std::fs::read_to_string(conf_file("10-kindnet.conflist")).unwrap();
        let rendered = text
            .replace("10.244.0.0/24", pod_cidr)
            .replace("/run/cni-ipam-state", node.state.path().to_str().unwrap());
        std::fs::write(node.confs.path().join("10-kindnet.conflist"), rendered).unwrap();
        std::fs::copy(
            conf_file("99-loopback.conflist"),
            node.confs.path().join("99-loopback.conflist"),
        )
        .unwrap();
        node
    }

    /// `cni-run VERB <network> <pod netns>` on this node.
    fn cni_run(&self, verb: &str, network: &str, pod: &Netns, caps: Option<Value>) -> Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path().display()))
            .arg(binary("cni-run"))
            .args([verb, network, &pod.path_str()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NETCONFPATH", self.confs.path())
            .env("CNI_PATH", bin_dir())
            .env("CNI_CACHE_DIR", self.cache.path());
        if let Some(caps) = caps {
            c.env("CAP_ARGS", caps.to_string());
        }
        c.output().unwrap()
    }

    /// A pod as containerd sets one up on a kind node: loopback, then the
    /// pod network with its port mappings. Returns the pod's address.
    fn run_pod(&self, pod: &Netns, host_port: Option<u16>) -> String {
        ok(self.cni_run("add", "cni-loopback", pod, None));
        let caps = host_port.map(
            |p| json!({"portMappings": [{"hostPort": p, "containerPort": 80, "protocol": "tcp"}]}),
        );
        let r: Value =
            serde_json::from_str(&ok(self.cni_run("add", "kindnet", pod, caps))).unwrap();
        assert_eq!(r["cniVersion"], "0.3.1", "{r}");
        let ip = r["ips"][0]["address"].as_str().unwrap();
        ip.split('/').next().unwrap().to_owned()
    }

    fn stop_pod(&self, pod: &Netns) {
        ok(self.cni_run("del", "kindnet", pod, None));
        ok(self.cni_run("del", "cni-loopback", pod, None));
    }

    fn assert_nothing_left(&self) {
        let veths = self.ns.ip_json(&["link", "show", "type", "veth"]);
        let veths: Vec<&Value> = veths
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] != "eth0")
            .collect();
        assert!(veths.is_empty(), "{veths:?}");
        let held = cni_tests::reservations_in(&self.state.path().join("kindnet"));
        assert!(held.is_empty(), "{held:?}");
        let objs = objects(&self.ns, "inet");
        assert!(chain_names(&objs, "pm/kindnet/").is_empty());
        let routes = self.ns.ip_json(&["route", "show"]);
        let pod_routes: Vec<&Value> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dev"].as_str().is_some_and(|d| d.starts_with("veth")))
            .collect();
        assert!(pod_routes.is_empty(), "{pod_routes:?}");
    }
}

fn ok(out: Output) -> String {
    cni_tests::succeeded(out, "cni-run")
}

/// Two nodes on one link (kind's docker network), each routing the other's
/// pod CIDR to it, as kindnetd does.
fn cluster() -> (Node, Node) {
    let a = Node::new("kn1", "172.18.0.2", "10.244.1.0/24");
    let b = Node::new("kn2", "172.18.0.3", "10.244.2.0/24");
    a.ns.ip(&[
        "link",
        "add",
        "eth0",
        "mtu",
        &NODE_MTU.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "kpeer",
        "netns",
        &b.ns.name,
    ]);
    b.ns.ip(&["link", "set", "kpeer", "name", "eth0"]);
    for (n, other) in [(&a, &b), (&b, &a)] {
        n.ns.ip(&["addr", "add", &format!("{}/16", n.addr), "dev", "eth0"]);
        n.ns.ip(&["link", "set", "eth0", "up"]);
        n.ns.ip(&["link", "set", "lo", "up"]);
        n.ns.ip(&["route", "add", &other.pod_cidr, "via", &other.addr]);
    }
    (a, b)
}

#[test]
fn two_nodes_pods_reach_each_other_their_nodes_and_host_ports() {
    let (n1, n2) = cluster();
    let (p1, p2, p3) = (Netns::new("kp1"), Netns::new("kp2"), Netns::new("kp3"));
    let _s1 = Server::start(&p1, 80, "from pod 1");
    let _s3 = Server::start(&p3, 80, "from pod 3");
    let ip1 = n1.run_pod(&p1, Some(8081));
    let ip2 = n1.run_pod(&p2, None);
    let ip3 = n2.run_pod(&p3, Some(8082));
    assert!(
        ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.1."),
        "{ip1} {ip2}"
    );
    assert!(ip3.starts_with("10.244.2."), "{ip3}");
    // loopback is up in each pod.
    for p in [&p1, &p2, &p3] {
        assert!(p.link_flags("lo").contains(&"UP".to_string()));
    }

    // Pod to pod on one node and across nodes, both ways.
    assert!(p1.ping(&ip2), "pod 1 cannot reach pod 2 on its node");
    assert!(p1.ping(&ip3), "pod 1 cannot reach pod 3 on the other node");
    assert!(p3.ping(&ip2), "pod 3 cannot reach pod 2 on the other node");
    // Pod to its node and to the other node.
    assert!(p1.ping(&n1.addr), "pod 1 cannot reach its node");
    assert!(p1.ping(&n2.addr), "pod 1 cannot reach the other node");
    assert!(p3.ping(&n1.addr), "pod 3 cannot reach the other node");
    // A hostPort on each node, from the other node and from a pod.
    assert_eq!(
        tcp_fetch(&n2.ns, &format!("{}:8081", n1.addr)).as_deref(),
        Some("from pod 1")
    );
    assert_eq!(
        tcp_fetch(&n1.ns, &format!("{}:8082", n2.addr)).as_deref(),
        Some("from pod 3")
    );
    assert_eq!(
        tcp_fetch(&p2, &format!("{}:8082", n2.addr)).as_deref(),
        Some("from pod 3")
    );
    // Stopping the pods leaves nothing on either node.
    n1.stop_pod(&p1);
    n1.stop_pod(&p2);
    n2.stop_pod(&p3);
    n1.assert_nothing_left();
    n2.assert_nothing_left();
    assert!(tcp_fetch(&n2.ns, &format!("{}:8081", n1.addr)).is_none());
}
