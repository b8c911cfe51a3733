//! The release tarball (`make dist`) installs and works: unpacked the way the
//! README installs it (`tar -C DIR -xzf`), it holds exactly the expected
//! files with the right modes and checksums, its binaries are static (no
//! library, no interpreter: they run in an empty chroot), and the plugins in
//! it answer VERSION and run a loopback ADD and DEL in a throwaway namespace.
//!
//! Runs only when `CNI_RS_DIST` names the tarball; `make test` builds it and
//! sets that. Without it each test says why it is skipped and passes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cni_tests::{Call, Netns, PLUGINS, TempDir, must};
use serde_json::{Value, json};

/// Every entry of the tarball, in its order (sorted by name).
const ENTRIES: [&str; 8] = [
    "./LICENSE",
    "./README.md",
    "./SHA256SUMS",
    "./bridge",
    "./host-local",
    "./loopback",
    "./portmap",
    "./ptp",
];

fn tarball() -> Option<PathBuf> {
    match std::env::var_os("CNI_RS_DIST") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "CNI_RS_DIST={} is not a file", p.display());
            Some(p)
        }
        None => {
            eprintln!(
                "skipped: CNI_RS_DIST is not set; `make test` sets it to the tarball `make dist` built"
            );
            None
        }
    }
}

/// The tarball unpacked into a fresh directory, as the README installs it.
fn unpacked(tgz: &Path) -> TempDir {
    let dir = TempDir::new("dist");
    must("tar", &["-C", s(dir.path()), "-xzf", s(tgz)]);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run a command in `dir`, which must succeed; its stdout.
fn must_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn name_layout_and_modes() {
    let Some(tgz) = tarball() else { return };

    // cni-rs-linux-<Go arch>-v<workspace version>.tgz, like the reference's.
    let machine = must("uname", &["-m"]);
    let arch = match machine.trim() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let version = env!("CARGO_PKG_VERSION"); // the workspace's, inherited
    assert_eq!(
        tgz.file_name().unwrap().to_str().unwrap(),
        format!("cni-rs-linux-{arch}-v{version}.tgz")
    );

    // Exactly these entries: no "./" entry that would reset the mode and
    // owner of the directory it is unpacked into, nothing nested.
    let listing = must("tar", &["--numeric-owner", "-tvzf", s(&tgz)]);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(names, ENTRIES, "{listing}");
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "0/0", "owner and group 0: {line}");
        assert!(f[0].starts_with('-'), "a regular file: {line}");
    }

    let dir = unpacked(&tgz);
    let mut found: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| format!("./{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    found.sort();
    assert_eq!(found, ENTRIES);
    for entry in ENTRIES {
        let name = &entry[2..];
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        let want = if PLUGINS.contains(&name) {
            0o755
        } else {
            0o644
        };
        assert_eq!(mode, want, "{name}: {mode:o}");
    }

    let license = std::fs::read_to_string(dir.path().join("LICENSE")).unwrap();
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache 2.0 text"
    );
}

#[test]
fn checksums_verify() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);

    // SHA256SUMS inside lists exactly the plugins, and they match.
    let sums = std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
    let listed: BTreeSet<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(listed, BTreeSet::from(PLUGINS), "{sums}");
    must_in(dir.path(), "sha256sum", &["--strict", "-c", "SHA256SUMS"]);

    // The .sha256 and .sha512 published beside the tarball.
    let name = tgz.file_name().unwrap().to_str().unwrap();
    let beside = tgz.parent().unwrap();
    for (tool, ext) in [("sha256sum", "sha256"), ("sha512sum", "sha512")] {
        let file = format!("{name}.{ext}");
        let text = std::fs::read_to_string(beside.join(&file))
            .unwrap_or_else(|e| panic!("{file} beside the tarball: {e}"));
        assert_eq!(text.lines().count(), 1, "{file}: {text}");
        assert!(text.trim_end().ends_with(&format!("  {name}")), "{text}");
        must_in(beside, tool, &["--strict", "-c", &file]);
    }
}

#[test]
fn binaries_are_static() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    // The README shipped in the tarball is the one that must say so.
    let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(
        readme.contains("no run-time\ndependencies") || readme.contains("no run-time dependencies")
    );
    for plugin in PLUGINS {
        let bin = dir.path().join(plugin);
        let dynamic = must("readelf", &["-d", s(&bin)]);
        let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
        assert!(needed.is_empty(), "{plugin} needs {needed:?}");
        let headers = must("readelf", &["-l", s(&bin)]);
        assert!(!headers.contains("interpreter"), "{plugin}: {headers}");
        // Built by the release profile, which strips.
        let sections = must("readelf", &["-S", s(&bin)]);
        assert!(!sections.contains(".symtab"), "{plugin} is not stripped");
    }
}

/// Run `plugin` from the tarball inside `root` (an empty directory but for
/// the tarball's files) with `chroot`, with `netns` bound at `/netns` in a
/// private mount namespace that ends with the command: no /lib, /usr or
/// /proc to lean on.
fn in_chroot(
    root: &Path,
    plugin: &str,
    verb: &str,
    netns: Option<&Netns>,
    conf: &str,
) -> (bool, String) {
    let mut script = String::new();
    if let Some(ns) = netns {
        std::fs::write(root.join("netns"), "").unwrap();
        script.push_str(&format!(
            "mount --bind {} {}/netns && ",
            ns.path().display(),
            root.display()
        ));
    }
    script.push_str(&format!("exec chroot {} /{plugin}", root.display()));
    let out = cni_tests::fed(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", "dist-chroot")
            .env("CNI_NETNS", if netns.is_some() { "/netns" } else { "" })
            .env("CNI_IFNAME", "lo")
            .env("CNI_PATH", "/")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        conf.as_bytes(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn plugins_run_in_an_empty_chroot() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries
            .iter()
            .any(|e| ["lib", "lib64", "usr", "proc"].contains(&e.as_str()))
    );
    for plugin in PLUGINS {
        let (ok, out) = in_chroot(
            dir.path(),
            plugin,
            "VERSION",
            None,
            r#"{"cniVersion":"1.1.0"}"#,
        );
        assert!(ok, "{plugin}: {out}");
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{plugin}: {e}: {out}"));
        assert_eq!(v["cniVersion"], "1.1.0", "{plugin}: {v}");
    }
    let ns = Netns::new("dist-chroot");
    let conf = r#"{"cniVersion":"1.1.0","name":"lo-net","type":"loopback"}"#;
    let (ok, out) = in_chroot(dir.path(), "loopback", "ADD", Some(&ns), conf);
    assert!(ok, "loopback ADD: {out}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    assert!(ns.link_flags("lo").contains(&"UP".to_owned()));
    let (ok, out) = in_chroot(dir.path(), "loopback", "DEL", Some(&ns), conf);
    assert!(ok, "loopback DEL: {out}");
    assert!(!ns.link_flags("lo").contains(&"UP".to_owned()));
}

#[test]
fn every_plugin_answers_version() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    let want = [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ];
    for plugin in PLUGINS {
        let v = Call::new(plugin, "VERSION")
            .binary(dir.path().join(plugin))
            .var("CNI_PATH", Some(s(dir.path())))
            .stdin(r#"{"cniVersion":"1.1.0"}"#)
            .run()
            .success();
        assert_eq!(v["cniVersion"], "1.1.0", "{plugin}: {v}");
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("{plugin}: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for version in want {
            assert!(
                supported.contains(&version),
                "{plugin} lacks {version}: {v}"
            );
        }
    }
}

#[test]
fn loopback_from_the_tarball_adds_and_deletes() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    let ns = Netns::new("dist");
    let conf = json!({"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback"});
    let call = |verb: &str| {
        Call::new("loopback", verb)
            .binary(dir.path().join("loopback"))
            .var("CNI_PATH", Some(s(dir.path())))
            .netns(&ns)
            .conf(&conf)
    };

    let result: Value = call("ADD").run().success();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    assert!(ns.link_flags("lo").contains(&"UP".to_owned()));
    assert_eq!(ns.addrs("lo"), ["127.0.0.1/8", "::1/128"]);

    call("DEL").run().silent_success();
    assert!(!ns.link_flags("lo").contains(&"UP".to_owned()));
}
