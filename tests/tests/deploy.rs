//! deploy/: the kind cluster config and the install image.
//!
//! - `deploy/kind/cluster.yaml` is checked against kind's v1alpha4 schema
//!   for what it uses, and to mount every binary a kind node runs for pods.
//!   (kind itself cannot run on these machines: no registry, no kind.)
//! - The install image is built offline from the static release binaries
//!   (`CNI_RS_RELEASE_DIR`, which `make test` sets) with podman, from
//!   scratch, and run with host directories bind-mounted, as the DaemonSet
//!   runs it: the plugins land by rename and run from there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cni_tests::runtime::{PodmanIn, Sandbox};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A YAML file as JSON (python3-yaml: Debian's, installed by deps.sh).
fn yaml(path: &Path) -> Value {
    let out = cni_tests::must(
        "/usr/bin/python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            path.to_str().unwrap(),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_kind_config_mounts_every_pod_network_binary_on_every_node() {
    let c = yaml(&repo("deploy/kind/cluster.yaml"));
    assert_eq!(c["kind"], "Cluster");
    assert_eq!(c["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let known_node = ["role", "extraMounts"];
    let known_mount = [
        "hostPath",
        "containerPath",
        "readOnly",
        "selinuxRelabel",
        "propagation",
    ];
    let nodes = c["nodes"].as_array().unwrap();
    assert!(nodes.len() >= 2, "a control plane and a worker");
    for n in nodes {
        for k in n.as_object().unwrap().keys() {
            assert!(known_node.contains(&k.as_str()), "unknown node field {k}");
        }
        assert!(["control-plane", "worker"].contains(&n["role"].as_str().unwrap()));
        let mounts = n["extraMounts"].as_array().unwrap();
        for m in mounts {
            for k in m.as_object().unwrap().keys() {
                assert!(known_mount.contains(&k.as_str()), "unknown mount field {k}");
            }
            assert!(m["hostPath"].as_str().unwrap().starts_with('/'), "{m}");
        }
        // The four binaries of a kind node image, each over its own.
        for b in ["host-local", "loopback", "ptp", "portmap"] {
            let target = format!("/opt/cni/bin/{b}");
            let m = mounts
                .iter()
                .find(|m| m["containerPath"] == target.as_str())
                .unwrap_or_else(|| panic!("no mount for {target}"));
            assert!(m["hostPath"].as_str().unwrap().ends_with(&format!("/{b}")));
            assert_eq!(m["readOnly"], true);
        }
    }
    // The DaemonSet manifest parses and mounts the host's CNI directories.
    let ds = yaml(&repo("deploy/kubernetes/daemonset.yaml"));
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    let paths: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["hostPath"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/opt/cni/bin", "/etc/cni/net.d"]);
}

#[test]
fn the_install_image_installs_atomically_and_the_plugins_run() {
    let Some(release) = std::env::var_os("CNI_RS_RELEASE_DIR").map(PathBuf::from) else {
        eprintln!("skipped: CNI_RS_RELEASE_DIR is not set; `make test` sets it");
        return;
    };
    let p = PodmanIn::new(Sandbox::new("image"), r#""/opt/cni/bin""#);
    let sb = &p.sb;
    // The node's directories: an old ptp there (its inode must not be
    // written to), and a config to install beside.
    sb.must(
        "sh",
        &[
            "-c",
            "mkdir -p /opt/cni/bin /etc/cni/net.d && echo old > /opt/cni/bin/ptp",
        ],
    );
    // The build context: the static binaries and the Containerfile.
    let ctx = sb.dir.path().join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    for b in [
        "bridge",
        "host-local",
        "loopback",
        "portmap",
        "ptp",
        "cni-install",
    ] {
        std::fs::copy(release.join(b), ctx.join(b))
            .unwrap_or_else(|e| panic!("{}: {e}", release.join(b).display()));
    }
    std::fs::copy(
        repo("deploy/kubernetes/Containerfile"),
        ctx.join("Containerfile"),
    )
    .unwrap();
    let image = "localhost/cni-rs-install:test";
    p.ok(&[
        "build",
        "--network",
        "none",
        "-t",
        image,
        "-f",
        ctx.join("Containerfile").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);

    let old = std::fs::metadata(sb.changed("/opt/cni/bin/ptp"))
        .unwrap()
        .ino();
    sb.write(
        "/etc/cni-rs/10-kindnet.conflist",
        &std::fs::read_to_string(repo("conf/10-kindnet.conflist")).unwrap(),
    );
    // The image run as the DaemonSet runs it: host directories mounted.
    let cgroup = p.cgroup_parent();
    let install = |conflist: &str| {
        let conflist = format!("/config/{conflist}");
        p.run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--cgroup-parent",
            &cgroup,
            "-v",
            "/opt/cni/bin:/host/opt/cni/bin",
            "-v",
            "/etc/cni/net.d:/host/etc/cni/net.d",
            "-v",
            "/etc/cni-rs:/config:ro",
            image,
            "--conflist",
            &conflist,
        ])
    };
    let out = install("10-kindnet.conflist");
    assert!(out.status.success(), "{out:?}");
    let bin = sb.changed("/opt/cni/bin");
    let mut names: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["bridge", "host-local", "loopback", "portmap", "ptp"]
    );
    let ptp = std::fs::metadata(bin.join("ptp")).unwrap();
    assert_ne!(ptp.ino(), old, "ptp was written in place, not renamed over");
    assert_eq!(ptp.mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(bin.join("ptp")).unwrap(),
        std::fs::read(release.join("ptp")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(sb.changed("/etc/cni/net.d/10-kindnet.conflist")).unwrap(),
        std::fs::read_to_string(repo("conf/10-kindnet.conflist")).unwrap()
    );
    // The installed plugins run where the runtime finds them.
    for b in names {
        let out = sb
            .command(&format!("/opt/cni/bin/{b}"))
            .env("CNI_COMMAND", "VERSION")
            .output()
            .unwrap();
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{b}: {e}: {out:?}"));
        assert_eq!(v["cniVersion"], "1.1.0", "{b}");
    }
    // A bad config is refused, and nothing half-written is left.
    sb.write("/etc/cni-rs/bad.conflist", "not json");
    let out = install("bad.conflist");
    assert!(!out.status.success());
    assert!(!sb.changed("/etc/cni/net.d/bad.conflist").exists());
    let hidden = std::fs::read_dir(sb.changed("/etc/cni/net.d"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(hidden, 0);
}
