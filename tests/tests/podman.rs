//! podman (4.x, CNI backend) runs containers on our plugins, in a sandbox (a
//! throwaway host network namespace and a private mount namespace):
//! - with podman's default network rewritten for us,
//!   `conf/87-podman-bridge.conflist`, and only our plugins in its path;
//! - with Debian's stock file unchanged, our plugins first in the path and
//!   the reference `firewall` and `tuning` (which cni-rs does not provide)
//!   found after them.

use cni_tests::nft::map_len;
use cni_tests::nft::objects;
use cni_tests::reservations_in;
use cni_tests::runtime::{IMAGE, PAGE, PodmanIn, Sandbox, conf_file, wait_for_runtime};

const NET: &str = "podman";
const BRIDGE: &str = "cni-podman0";
const STORE: &str = "/var/lib/cni/networks/podman";
/// Where podman's CNI backend reads its default network (the package
/// installs it there).
const STOCK: &str = "/etc/cni/net.d/87-podman-bridge.conflist";

/// Where Debian's reference plugins are.
const REFERENCE: &str = "/usr/lib/cni";

/// Which `87-podman-bridge.conflist` podman gets.
#[derive(PartialEq)]
enum Network {
    /// Ours from conf/, with only our plugins in podman's path.
    Ours,
    /// The one the podman package installed, unchanged; plugins from our
    /// directory first, then the reference's.
    Stock,
}

struct Podman {
    p: PodmanIn,
}

impl std::ops::Deref for Podman {
    type Target = PodmanIn;
    fn deref(&self) -> &PodmanIn {
        &self.p
    }
}

impl Podman {
    /// A sandbox with our plugins installed, podman's default network,
    /// and the busybox image imported.
    fn new(network: Network) -> Podman {
        let sb = Sandbox::new("podman");
        let plugin_dirs = match network {
            Network::Ours => r#""/opt/cni/bin""#.to_owned(),
            Network::Stock => format!(r#""/opt/cni/bin", "{REFERENCE}""#),
        };
        let from = sb.install_plugins();
        eprintln!("plugins from {from}");
        let stock = std::path::Path::new(STOCK);
        match network {
            // Replaces the stock file in the sandbox's /etc.
            Network::Ours => sb.write(
                STOCK,
                &std::fs::read_to_string(conf_file("87-podman-bridge.conflist")).unwrap(),
            ),
            Network::Stock => assert!(
                stock.is_file() && std::path::Path::new(REFERENCE).join("firewall").is_file(),
                "{STOCK} or the reference plugins are missing: make test installs podman and containernetworking-plugins"
            ),
        }
        let p = PodmanIn::new(sb, &plugin_dirs);
        let tar = p.sb.rootfs_tar();
        p.ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            tar.to_str().unwrap(),
            IMAGE,
        ]);
        Podman { p }
    }

    /// `podman run -d` of busybox's httpd serving the page on port 80,
    /// published on the host's port 8080, on podman's default network or
    /// `network`; the container id.
    fn run_web(&self, name: &str, network: Option<&str>) -> String {
        let cgroup = self.cgroup_parent();
        let net = format!("--network={}", network.unwrap_or(NET));
        let id = self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            &net,
            "--cgroup-parent",
            &cgroup,
            "-p",
            "8080:80",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        id.trim().to_owned()
    }
}

fn chains_of(sb: &Sandbox, kind: &str, id: &str) -> Vec<String> {
    chains_in(sb, kind, NET, id)
}

fn chains_in(sb: &Sandbox, kind: &str, net: &str, id: &str) -> Vec<String> {
    let prefix = format!("{kind}/{net}/{id}/");
    cni_tests::nft::chain_names(&objects(&sb.host, "inet"), &prefix)
}

#[test]
fn podman_runs_a_web_server_on_our_network_and_rm_leaves_nothing() {
    let p = Podman::new(Network::Ours);
    let sb = &p.sb;
    let store = sb.changed(STORE);

    // podman validates every plugin of the network (VERSION) when it lists
    // networks: ours must be found and accepted.
    let out = p.run(&["network", "ls", "--format", "{{.Name}}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "network ls: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == NET)
    );
    assert!(!err.contains("plugin"), "podman complains: {err}");

    let name = format!("web-{}", sb.tag);
    let cgroup = p.cgroup_parent();
    let id = p.run_web(&name, None);
    assert_eq!(id.len(), 64, "container id: {id}");
    let ip = p
        .ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name])
        .trim()
        .to_owned();
    assert!(ip.starts_with("10.88."), "address {ip}");

    // Kernel state in the host namespace: the bridge with the gateway, one
    // port with hairpin mode, our masquerade and port-mapping chains.
    assert_eq!(sb.host.addrs(BRIDGE)[0], "10.88.0.1/16");
    let ports = sb.bridge_ports(BRIDGE);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(chains_of(sb, "masq", &id).len(), 1);
    assert_eq!(chains_of(sb, "pm", &id).len(), 1);
    assert_eq!(map_len(&objects(&sb.host, "inet"), "pm4-any"), 1);
    // host-local's store, with our owner index beside the reference layout.
    let held = reservations_in(&store);
    assert_eq!(held, vec![(ip.clone(), format!("{id}\r\neth0"))]);
    assert!(
        store
            .join(".cnirs/owners")
            .join(format!("{id}:eth0"))
            .is_dir()
    );
    // Inside the container: the address and the default route.
    let inside = p.ok(&["exec", &name, "ip", "-4", "addr", "show", "eth0"]);
    assert!(inside.contains(&format!("inet {ip}/16")), "{inside}");
    let routes = p.ok(&["exec", &name, "ip", "route"]);
    assert!(routes.contains("default via 10.88.0.1"), "{routes}");

    // The page, straight and through the mapped port on the host's address.
    let direct = format!("http://{ip}:80/");
    assert!(
        wait_for_runtime(|| sb.http_get(&direct).as_deref() == Some(PAGE)),
        "no page from {direct}"
    );
    assert_eq!(sb.http_get("http://10.88.0.1:8080/").as_deref(), Some(PAGE));

    // A second container with an address it asks for (podman passes
    // CNI_ARGS IP=...) fetches the page through the mapped port, then
    // `run --rm` releases its address.
    let client = p.ok(&[
        "run",
        "--rm",
        "--cgroup-parent",
        &cgroup,
        "--ip",
        "10.88.0.77",
        IMAGE,
        "sh",
        "-c",
        // busybox's wget needs glibc's NSS at run time, absent here; nc not.
        "ip -4 addr show eth0; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.88.0.1 8080",
    ]);
    assert!(client.contains("inet 10.88.0.77/16"), "{client}");
    assert!(client.ends_with(PAGE), "{client}");
    assert!(
        wait_for_runtime(
            || reservations_in(&store).len() == 1 && sb.bridge_ports(BRIDGE).len() == 1
        ),
        "the client's address or veth outlived it: {:?}",
        reservations_in(&store)
    );

    // podman rm -f: CNI DEL (with prevResult and the port mappings) removes
    // everything the ADD made.
    p.ok(&["rm", "-f", "-t", "0", &name]);
    assert!(
        sb.bridge_ports(BRIDGE).is_empty(),
        "{:?}",
        sb.bridge_ports(BRIDGE)
    );
    assert!(reservations_in(&store).is_empty());
    assert!(chains_of(sb, "masq", &id).is_empty());
    assert!(chains_of(sb, "pm", &id).is_empty());
    assert_eq!(map_len(&objects(&sb.host, "inet"), "pm4-any"), 0);
    assert_eq!(map_len(&objects(&sb.host, "inet"), "masq4"), 0);
    assert!(sb.http_get("http://10.88.0.1:8080/").is_none());
    let cache = sb.changed("/var/lib/cni/results");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "libcni cache left: {cached:?}");
}

/// The reference firewall plugin's rules, as `iptables -S CNI-FORWARD`
/// prints them in the host namespace (empty if there is no such chain).
fn firewall_rules(sb: &Sandbox) -> String {
    let out = sb.host.exec(&["iptables", "-S", "CNI-FORWARD"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn podman_stock_network_file_works_unchanged_with_our_plugins_first() {
    let p = Podman::new(Network::Stock);
    let sb = &p.sb;
    let store = sb.changed(STORE);
    assert!(
        !sb.changed(STOCK).exists(),
        "the sandbox must use the stock file as the package installed it"
    );

    let name = format!("web-{}", sb.tag);
    let id = p.run_web(&name, None);
    let ip = reservations_in(&store)
        .first()
        .map(|(ip, _)| ip.clone())
        .expect("a reservation in our store layout");

    // Ours did bridge, host-local and portmap (nftables, our owner index);
    // the reference firewall, chained after, accepted the container.
    assert_eq!(chains_of(sb, "masq", &id).len(), 1);
    assert_eq!(chains_of(sb, "pm", &id).len(), 1);
    assert!(
        store
            .join(".cnirs/owners")
            .join(format!("{id}:eth0"))
            .is_dir()
    );
    let accept = format!("-A CNI-FORWARD -s {ip}/32 -j ACCEPT");
    let rules = firewall_rules(sb);
    assert!(rules.contains(&accept), "{accept} not in {rules}");
    assert!(
        wait_for_runtime(|| sb.http_get("http://10.88.0.1:8080/").as_deref() == Some(PAGE)),
        "no page through the mapped port"
    );

    p.ok(&["rm", "-f", "-t", "0", &name]);
    assert!(sb.bridge_ports(BRIDGE).is_empty());
    assert!(reservations_in(&store).is_empty());
    assert!(chains_of(sb, "masq", &id).is_empty());
    assert!(chains_of(sb, "pm", &id).is_empty());
    assert_eq!(map_len(&objects(&sb.host, "inet"), "pm4-any"), 0);
    assert!(!firewall_rules(sb).contains(&ip), "{}", firewall_rules(sb));
}

/// `podman network create` writes a conflist of its own (a new bridge with
/// host-local, portmap, firewall and tuning): containers on it work with
/// our plugins first and the reference firewall and tuning after them.
#[test]
fn podman_network_create_networks_work_with_our_plugins() {
    let p = Podman::new(Network::Stock);
    let sb = &p.sb;
    p.ok(&["network", "create", "--subnet", "10.89.7.0/24", "cnirs"]);
    let file = sb.changed("/etc/cni/net.d/cnirs.conflist");
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pl| pl["type"].as_str().unwrap())
        .collect();
    assert_eq!(&types[..2], ["bridge", "portmap"], "{conf}");
    let bridge = conf["plugins"][0]["bridge"].as_str().unwrap().to_owned();

    let name = format!("web-{}", sb.tag);
    let id = p.run_web(&name, Some("cnirs"));
    let store = sb.changed("/var/lib/cni/networks/cnirs");
    let held = reservations_in(&store);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].0.starts_with("10.89.7."), "{held:?}");
    assert_eq!(sb.bridge_ports(&bridge).len(), 1);
    assert_eq!(chains_in(sb, "masq", "cnirs", &id).len(), 1);
    assert_eq!(chains_in(sb, "pm", "cnirs", &id).len(), 1);
    assert!(
        wait_for_runtime(|| sb.http_get("http://10.89.7.1:8080/").as_deref() == Some(PAGE)),
        "no page through the mapped port"
    );

    p.ok(&["rm", "-f", "-t", "0", &name]);
    assert!(sb.bridge_ports(&bridge).is_empty());
    assert!(reservations_in(&store).is_empty());
    assert!(chains_in(sb, "masq", "cnirs", &id).is_empty());
    assert!(chains_in(sb, "pm", "cnirs", &id).is_empty());
    assert_eq!(map_len(&objects(&sb.host, "inet"), "pm4-any"), 0);
    p.ok(&["network", "rm", "cnirs"]);
    assert!(!file.exists());
}
